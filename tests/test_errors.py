"""proxy.errors: the one exception tree, as its docstring draws it and as ``proxy.problem`` renders it.

Every class is found by walking the module, so a class added without a row in ``CLIENT_FACING``
(or without its place in the docstring tree) fails here rather than escaping the tables.
"""

from __future__ import annotations

import ast
import gc
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

import proxy
from proxy import errors
from proxy.errors import (
    BadResponse,
    BodyTooLarge,
    CacheUnavailable,
    ClientFacingError,
    ConfigError,
    FlagStoreUnavailable,
    InputError,
    InvalidEncoding,
    InvalidFlagChange,
    JSONTooDeep,
    MalformedJSON,
    PolicyBlocked,
    ProxyError,
    ResolveError,
    ResolveRefused,
    Unauthorized,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.problem import CONTENT_TYPE, TYPE_BASE, render

ErrorClass = type[ProxyError]


def module_classes() -> list[ErrorClass]:
    """Every exception class defined in ``proxy.errors``, in source order."""
    found: list[ErrorClass] = []
    for _, obj in inspect.getmembers(errors, inspect.isclass):
        if obj.__module__ == errors.__name__:
            assert issubclass(obj, ProxyError), f"{obj.__name__} is outside the tree"
            found.append(obj)
    return sorted(found, key=lambda cls: inspect.getsourcelines(cls)[1])


# class -> (direct base, status, slug, title): what the module documents, written out once more.
CLIENT_FACING: dict[type[ClientFacingError], tuple[ErrorClass, int, str, str]] = {
    InputError: (ClientFacingError, 400, "bad-input", "The request body cannot be inspected"),
    MalformedJSON: (InputError, 400, "malformed-json", "Malformed JSON"),
    InvalidEncoding: (InputError, 400, "invalid-encoding", "Invalid body encoding"),
    JSONTooDeep: (InputError, 400, "json-too-deep", "JSON nested too deeply"),
    UnsupportedMediaType: (InputError, 415, "unsupported-media-type", "Unsupported media type"),
    BodyTooLarge: (InputError, 413, "body-too-large", "Body too large"),
    InvalidFlagChange: (InputError, 400, "invalid-flag-change", "Invalid rollout flag change"),
    PolicyBlocked: (ClientFacingError, 422, "link-policy-violation",
                    "Links to a forbidden platform"),
    Unauthorized: (ClientFacingError, 401, "unauthorized", "Missing or wrong bearer token"),
    FlagStoreUnavailable: (ClientFacingError, 503, "flag-store-unavailable",
                           "The rollout flag store (Redis) is unavailable"),
    UpstreamError: (ClientFacingError, 502, "upstream-error", "The upstream cart service failed"),
    UpstreamUnavailable: (UpstreamError, 502, "upstream-unavailable",
                          "The upstream cart service is unreachable"),
    UpstreamTimeout: (UpstreamError, 504, "upstream-timeout",
                      "The upstream cart service did not answer in time"),
}
# Errors that never reach a client: they have no status and are not rendered.
INTERNAL: dict[ErrorClass, ErrorClass] = {
    ConfigError: ProxyError,
    BadResponse: ProxyError,
    CacheUnavailable: ProxyError,
    ResolveError: ProxyError,
    ResolveRefused: ResolveError,
}
# Which status class each family answers with: the client's fault, or ours/the upstream's.
STATUS_CLASS: dict[ErrorClass, range] = {
    InputError: range(400, 500),
    PolicyBlocked: range(400, 500),
    Unauthorized: range(400, 500),
    FlagStoreUnavailable: range(500, 600),
    UpstreamError: range(500, 600),
}

CLIENT_CLASSES: list[type[ClientFacingError]] = [
    cls for cls in module_classes()
    if issubclass(cls, ClientFacingError) and cls is not ClientFacingError
]
CLIENT_IDS = [cls.__name__ for cls in CLIENT_CLASSES]


def missing_members(cls: type[ClientFacingError]) -> list[str]:
    """What a concrete client-facing error fails to define for itself (inherited from
    ``ClientFacingError``, they would render as the 500 ``internal-error`` of a bug)."""
    below_base = cls.__mro__[:cls.__mro__.index(ClientFacingError)]
    return [name for name in ("status", "slug", "title")
            if not any(name in vars(klass) for klass in below_base)
            or (name != "status" and name not in vars(cls))]


# --- the tree is complete and documented --------------------------------------------------------

def test_every_class_of_the_module_is_in_a_table_and_exported() -> None:
    classes = module_classes()
    assert set(classes) == {ProxyError, ClientFacingError} | set(CLIENT_FACING) | set(INTERNAL)
    assert sorted(errors.__all__) == sorted(cls.__name__ for cls in classes)
    assert all(issubclass(cls, ProxyError) for cls in classes)


def _docstring_tree() -> dict[str, tuple[str | None, int | None]]:
    """``name -> (parent, documented status)`` from the tree drawn in the module docstring."""
    doc = errors.__doc__ or ""
    lines = doc.splitlines()
    root = next(i for i, line in enumerate(lines) if line.strip() == ProxyError.__name__)
    root_column = lines[root].index(ProxyError.__name__)
    tree: dict[str, tuple[str | None, int | None]] = {ProxyError.__name__: (None, None)}
    stack = [ProxyError.__name__]
    for line in lines[root + 1:]:
        match = re.match(r"^[\s│├└─]*?(?P<name>[A-Z]\w+)(?:\s+(?P<status>\d{3})\s)?", line)
        if "──" not in line or match is None:
            continue
        depth = (match.start("name") - root_column) // 4
        del stack[depth:]
        status = match.group("status")
        tree[match["name"]] = (stack[-1], int(status) if status else None)
        stack.append(match["name"])
    return tree


def test_the_docstring_tree_is_the_class_tree() -> None:
    tree = _docstring_tree()
    classes = module_classes()
    assert set(tree) == {cls.__name__ for cls in classes}
    for cls in classes:
        parent, status = tree[cls.__name__]
        assert len(cls.__bases__) == 1, cls
        expected_parent = None if cls is ProxyError else cls.__bases__[0].__name__
        assert parent == expected_parent, cls
        if status is not None:
            assert issubclass(cls, ClientFacingError)
            assert cls.status == status, cls
    documented = {name for name, (_, status) in tree.items() if status is not None}
    # Every leaf client-facing error names its status in the drawing; a base may too, when it
    # is raised itself (UpstreamError: an answer that cannot be inspected).
    leaves = {cls.__name__ for cls in CLIENT_CLASSES if not cls.__subclasses__()}
    assert leaves <= documented


def test_docs_problem_table_agrees_with_the_classes() -> None:
    """docs/proxy.md's table of problem types: every slug it lists has the status it says."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "proxy.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z-]+)` \| (\d{3}) \|", text, flags=re.MULTILINE)
    assert len(rows) >= 8
    every: list[type[ClientFacingError]] = [ClientFacingError, *CLIENT_CLASSES]
    by_slug = {cls.slug: cls for cls in every}
    for slug, status in rows:
        assert slug in by_slug, slug
        assert by_slug[slug].status == int(status), slug


def test_no_other_module_extends_the_tree() -> None:
    """The tree lives in errors.py only: no ``proxy`` module defines its own ``ProxyError``."""
    for info in pkgutil.walk_packages(proxy.__path__, prefix="proxy."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    strays: list[str] = []
    pending: list[type[ProxyError]] = [ProxyError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("proxy.") and cls.__module__ != errors.__name__:
            strays.append(f"{cls.__module__}.{cls.__qualname__}")
    assert strays == []


def test_the_module_imports_only_the_standard_library() -> None:
    """The pure core imports it, so it must not pull in aiohttp (or anything else)."""
    source = Path(inspect.getfile(errors)).read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            imported.add((node.module or "").split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


# --- each client-facing error: status, slug, title, base -----------------------------------------

@pytest.mark.parametrize("cls", CLIENT_CLASSES, ids=CLIENT_IDS)
def test_status_slug_title_and_base(cls: type[ClientFacingError]) -> None:
    assert cls in CLIENT_FACING, f"{cls.__name__}: add it to CLIENT_FACING (and the docs)"
    base, status, slug, title = CLIENT_FACING[cls]
    assert cls.__bases__ == (base,)
    assert (cls.status, cls.slug, cls.title) == (status, slug, title)


@pytest.mark.parametrize("cls", CLIENT_CLASSES, ids=CLIENT_IDS)
def test_defines_its_own_status_slug_and_title(cls: type[ClientFacingError]) -> None:
    assert missing_members(cls) == []
    assert cls.slug != ClientFacingError.slug
    assert cls.status != ClientFacingError.status  # 500 means a bug (problem.render_unexpected)
    assert re.fullmatch(r"[a-z]+(-[a-z]+)*", cls.slug), cls.slug
    assert cls.title
    assert cls.title == cls.title.strip()
    assert not cls.title.endswith(".")


def test_missing_members_catches_an_undeclared_subclass() -> None:
    """The check above can fail: a subclass that declares nothing is reported."""
    bare = type("Bare", (ClientFacingError,), {})
    slug_only = type("SlugOnly", (ClientFacingError,), {"slug": "slug-only"})
    inherited_slug = type("InheritedSlug", (InputError,), {"title": "Own title"})
    assert missing_members(bare) == ["status", "slug", "title"]
    assert missing_members(slug_only) == ["status", "title"]
    assert missing_members(inherited_slug) == ["slug"]
    assert missing_members(MalformedJSON) == []  # the status may come from its family
    del bare, slug_only, inherited_slug
    gc.collect()  # leave no stray subclass for later walks of the tree


@pytest.mark.parametrize("cls", CLIENT_CLASSES, ids=CLIENT_IDS)
def test_status_is_in_the_class_of_its_family(cls: type[ClientFacingError]) -> None:
    families = [family for family in STATUS_CLASS if issubclass(cls, family)]
    assert len(families) == 1, f"{cls.__name__} belongs to no (or several) status families"
    assert cls.status in STATUS_CLASS[families[0]]


def test_client_and_server_faults_are_told_apart() -> None:
    client = {cls for cls in CLIENT_CLASSES if 400 <= cls.status < 500}
    server = {cls for cls in CLIENT_CLASSES if 500 <= cls.status < 600}
    assert client | server == set(CLIENT_CLASSES)
    assert all(issubclass(cls, InputError) for cls in client - {PolicyBlocked, Unauthorized})
    assert all(issubclass(cls, UpstreamError) for cls in server - {FlagStoreUnavailable})


def test_slugs_and_titles_are_unique() -> None:
    every: list[type[ClientFacingError]] = [ClientFacingError, *CLIENT_CLASSES]
    slugs = [cls.slug for cls in every]
    titles = [cls.title for cls in every]
    assert len(set(slugs)) == len(slugs), slugs
    assert len(set(titles)) == len(titles), titles


@pytest.mark.parametrize("cls", [c for c in module_classes() if not issubclass(c, ClientFacingError)],
                         ids=lambda cls: cls.__name__)
def test_internal_errors_carry_no_status(cls: ErrorClass) -> None:
    """They never reach a client, so nothing could render them by mistake."""
    assert not hasattr(cls, "status")
    assert not hasattr(cls, "slug")


# --- detail, extensions and rendering ------------------------------------------------------------

@pytest.mark.parametrize("cls", CLIENT_CLASSES, ids=CLIENT_IDS)
def test_detail_and_extensions_as_given(cls: type[ClientFacingError]) -> None:
    extensions = {"limit": 10, "links": [{"pointer": "/items/0/url"}]}
    error = cls("what went wrong", extensions=extensions)
    assert error.detail == "what went wrong"
    assert str(error) == "what went wrong"
    assert error.args == ("what went wrong",)
    assert error.extensions == extensions
    extensions["limit"] = 11  # the raiser's mapping, changed after the raise
    assert error.extensions["limit"] == 10
    plain = cls("plain")
    assert plain.extensions == {}
    assert plain.extensions is not cls("other").extensions  # no shared mutable default
    with pytest.raises(TypeError):
        cls("detail", {"positional": "extensions"})  # type: ignore[call-arg]


@pytest.mark.parametrize("cls", CLIENT_CLASSES, ids=CLIENT_IDS)
def test_renders_as_rfc9457_problem(cls: type[ClientFacingError]) -> None:
    extensions: dict[str, Any] = {"limit": 7, "surface": "livestream_cart"}
    try:
        raise cls("it failed", extensions=extensions)
    except ClientFacingError as error:  # as the middleware catches it
        response = render(error, instance="/v1/live/r1/cart/items", request_id="rid-9")
    assert response.status == cls.status
    assert response.content_type == CONTENT_TYPE == "application/problem+json"
    assert response.headers["X-Request-Id"] == "rid-9"
    assert isinstance(response.body, bytes)
    assert orjson.loads(response.body) == {
        "type": f"{TYPE_BASE}{cls.slug}", "title": cls.title, "status": cls.status,
        "detail": "it failed", "instance": "/v1/live/r1/cart/items", "request_id": "rid-9",
        **extensions,
    }


@pytest.mark.parametrize("cls", CLIENT_CLASSES, ids=CLIENT_IDS)
def test_renders_without_extensions_instance_or_request_id(cls: type[ClientFacingError]) -> None:
    response = render(cls("bare"))
    assert response.status == cls.status
    assert "X-Request-Id" not in response.headers
    assert isinstance(response.body, bytes)
    assert orjson.loads(response.body) == {
        "type": f"{TYPE_BASE}{cls.slug}", "title": cls.title, "status": cls.status,
        "detail": "bare",
    }


def test_type_uris_are_tag_uris() -> None:
    """RFC 4151 tag URIs: stable names that no one is tempted to dereference."""
    assert re.fullmatch(r"tag:[a-z0-9.-]+,\d{4}:[a-z:]+:", TYPE_BASE)


@pytest.mark.parametrize(
    ("given", "messages"),
    [
        ("proxy.yaml: rules.0.id: missing", ("proxy.yaml: rules.0.id: missing",)),
        (["a: one", "b: two"], ("a: one", "b: two")),
        ([], ()),
    ],
    ids=["one-string", "a-list", "empty"],
)
def test_config_error_keeps_every_problem(given: list[str] | str, messages: tuple[str, ...]) -> None:
    error = ConfigError(given)
    assert error.errors == messages
    assert str(error) == "\n".join(messages)
    assert isinstance(error, ProxyError)
    assert not isinstance(error, ClientFacingError)


def test_catching_a_base_catches_the_family() -> None:
    """What the edges rely on: ``except UpstreamError`` (forwarding), ``except InputError``
    (inspection), ``except ResolveError`` (resolver), ``except ClientFacingError`` (middleware)."""
    for family, member in [(UpstreamError, UpstreamTimeout), (UpstreamError, UpstreamUnavailable),
                           (InputError, BodyTooLarge), (ResolveError, ResolveRefused),
                           (ClientFacingError, PolicyBlocked), (ProxyError, CacheUnavailable)]:
        with pytest.raises(family):
            raise member("x")
