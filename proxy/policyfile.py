"""Reading the policy file and building the engine: the edge around ``proxy.core``.

This is the one place that reads the policy YAML and the public suffix list. YAML errors and
duplicate keys become ``ConfigError`` naming the file and the line; the suffix list is the one
bundled with tldextract (or a PSL file named in config), never a download.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import requests
import requests.adapters
import tldextract
import yaml

from proxy.core.domains import DomainIndex
from proxy.core.engine import DEFAULT_MEMO_SIZE, Engine
from proxy.core.policy import Policy, parse_policy
from proxy.errors import ConfigError

__all__ = ["build_engine", "default_policy_path", "load_policy", "suffix_splitter"]


def default_policy_path() -> Path:
    """The policy shipped inside the package (a copy of config/policy.yaml)."""
    return Path(str(resources.files("proxy") / "data" / "policy.yaml"))


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_policy(path: str | os.PathLike[str] | None = None) -> Policy:
    """Read and validate a policy file (the shipped one when ``path`` is None)."""
    source = Path(path) if path is not None else default_policy_path()
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from exc
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else str(source)
        raise ConfigError(f"{where}: invalid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
    return parse_policy(data, str(source))


def suffix_splitter(psl_file: str | os.PathLike[str] | None = None) -> Any:
    """host -> (public suffix, registrable domain), from an offline public suffix list.

    With ``psl_file`` that file is the list; otherwise tldextract's bundled snapshot. Either way
    nothing is downloaded (``suffix_list_urls`` names no remote URL) and nothing is cached on disk.
    """
    session: requests.Session | None = None
    if psl_file is not None:
        path = Path(psl_file)
        if not path.is_file():
            raise ConfigError(f"public suffix list {path}: no such file")
        extractor = tldextract.TLDExtract(
            suffix_list_urls=(path.resolve().as_uri(),), cache_dir=None, fallback_to_snapshot=False
        )
        session = requests.Session()
        session.mount("file://", _LocalFileAdapter())
    else:
        extractor = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    # The first call reads the list and builds the suffix trie: now, not on the first request.
    extractor.extract_str("warm.example.com", session=session)
    if session is not None:
        session.close()

    def split(host: str) -> tuple[str, str]:
        result = extractor.extract_str(host)
        return result.suffix, result.top_domain_under_public_suffix

    return split


class _LocalFileAdapter(requests.adapters.BaseAdapter):
    """Serves ``file://`` URLs for tldextract's one read of a configured suffix list.

    requests-file (tldextract's default for file URLs) leaves the file open; this reads it whole
    and closes it.
    """

    def send(  # type: ignore[override]  # the transport options do not apply to a file
        self, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        response = requests.Response()
        response.url = request.url or ""
        try:
            response._content = Path(url2pathname(urlsplit(response.url).path)).read_bytes()
            response.status_code = 200
        except OSError as exc:
            raise ConfigError(f"public suffix list {response.url}: cannot read: {exc}") from exc
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        """Nothing is held open."""


def build_engine(
    policy: Policy, *, psl_file: str | os.PathLike[str] | None = None,
    memo_size: int = DEFAULT_MEMO_SIZE,
) -> Engine:
    """An engine for ``policy`` over the offline suffix list, warmed and ready to share."""
    domains = DomainIndex.for_platforms(suffix_splitter(psl_file), policy.platforms,
                                        cache_size=memo_size)
    return Engine(policy, domains, memo_size=memo_size)
