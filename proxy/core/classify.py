"""Link classification: which platform each layer of a link leads to, what kind of link it is,
and the evidence for it.

A layer belongs to a platform by its app scheme (``taobao://``), its Android package
(``intent://…;package=com.taobao.taobao``) or its host's registrable domain; the kind comes from the
platform's ``kinds`` patterns in the policy (first match wins, else ``page``; app links without a
more specific match are ``deep_link``). A password token belongs to the platform whose words
stand nearest to it in the text, else to the policy's default token platform.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import unquote_plus

from proxy.core.domains import DomainIndex
from proxy.core.model import (
    Candidate,
    CandidateKind,
    Evidence,
    Layer,
    LayerMatch,
    Link,
    LinkKind,
    PlatformId,
)
from proxy.core.policy import KindPattern, Platform, Policy
from proxy.core.urls import URLParser

__all__ = ["Classifier"]

_PACKAGE = re.compile(r"[;?&#]package=([A-Za-z0-9_.]+)")
_SPECIAL_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp"})
_CZ_MARK = re.compile("CZ[0-9]{4}")
_MAX_SHARED_MATCHES = 64
_MAX_SHARED_SINGLES = 65536


class Classifier:
    """Turns text candidates into ``Link`` values; pure, built once per policy."""

    def __init__(
        self, policy: Policy, domains: DomainIndex, parser: URLParser, *, host_cache_size: int = 16384
    ) -> None:
        self._platforms: Mapping[PlatformId, Platform] = policy.platforms
        self._domains = domains
        self._parser = parser
        self._schemes = {s: p.id for p in policy.platforms.values() for s in p.schemes}
        self._packages = {a: p.id for p in policy.platforms.values() for a in p.app_packages}
        self._token_default = policy.token_default_platform
        self._singles: dict[LayerMatch, tuple[LayerMatch]] = {}
        self._host_plan: Callable[[str], _HostPlan | None] = lru_cache(maxsize=host_cache_size)(
            self._plan_for
        )
        self._token_words = tuple(
            (word.casefold(), p.id) for p in policy.platforms.values() for word in p.token_words
        )

    def link(self, candidate: Candidate, text: str) -> Link | None:
        """The link ``candidate`` stands for, or None when no browser or app could follow it."""
        written = text[candidate.start : candidate.end]
        if candidate.kind is CandidateKind.TOKEN:
            token = self._token_match(candidate, text)
            if token is None:
                return None
            return Link(written, candidate.start, candidate.end, None, None, (token,))
        layers = self._parser.layers(candidate.value)
        if not layers or not self._followable(candidate.value, layers[0]):
            return None
        outer = layers[0]
        if len(layers) == 1:  # the usual link: its one-match tuple is shared, like the match
            matches = self._single(self.layer_match(outer))
        else:
            matches = tuple([m for m in map(self.layer_match, layers) if m is not None])
        return Link(written, candidate.start, candidate.end, outer.href, outer.host or None,
                    matches)

    def _single(self, match: LayerMatch | None) -> tuple[LayerMatch, ...]:
        if match is None:
            return ()
        shared = self._singles.get(match)
        if shared is None:
            shared = (match,)
            if len(self._singles) < _MAX_SHARED_SINGLES:
                self._singles[match] = shared
        return shared

    def _followable(self, value: str, outer: Layer) -> bool:
        # A scheme-less candidate ("report.pdf", "v1.2") is a link only if its host has a
        # real public suffix; written schemes are taken at their word.
        if "://" in value or value.startswith("//"):
            return True
        match = self._domains.lookup(outer.host)
        return bool(match.registrable) or match.platform is not None

    def layer_match(self, layer: Layer) -> LayerMatch | None:
        """The platform ``layer`` leads to, with its kind and evidence; None for other sites."""
        by_scheme = self._schemes.get(layer.scheme)
        if by_scheme is not None:
            kind = self._kind(self._platforms[by_scheme], layer) or LinkKind.DEEP_LINK
            return LayerMatch(by_scheme, kind,
                              Evidence(layer.depth, layer.host, f"app scheme {layer.scheme}://"))
        if layer.scheme not in _SPECIAL_SCHEMES:
            package = _PACKAGE.search(layer.href)
            if package and package.group(1) in self._packages:
                return LayerMatch(self._packages[package.group(1)], LinkKind.DEEP_LINK,
                                  Evidence(layer.depth, layer.host,
                                           f"app package {package.group(1)}"))
        plan = self._host_plan(layer.host)
        if plan is None:
            return None
        kind = _kind_in(plan.patterns, layer.href) or (
            LinkKind.PAGE if layer.scheme in _SPECIAL_SCHEMES else LinkKind.DEEP_LINK
        )
        key = (kind, layer.depth)
        match = plan.matches.get(key)
        if match is None:
            match = LayerMatch(plan.platform, kind, Evidence(layer.depth, layer.host, plan.reason))
            if len(plan.matches) < _MAX_SHARED_MATCHES:
                plan.matches[key] = match
        return match

    def _plan_for(self, host: str) -> _HostPlan | None:
        """What a host alone settles: its platform, the evidence, and the kind patterns left to
        try on the path and query (those whose host conditions hold, up to the first that has no
        other condition)."""
        found = self._domains.lookup(host)
        if found.platform is None:
            return None
        platform = self._platforms[found.platform]
        patterns: list[KindPattern] = []
        for pattern in platform.kinds:
            if _host_holds(pattern, host, found.registrable):
                patterns.append(pattern)
                if pattern.path is None and not pattern.query:
                    break  # always holds: the patterns after it can never be reached
        what = "public suffix" if found.matched == found.suffix else "registered domain"
        return _HostPlan(platform.id, f"{what} {found.matched}", tuple(patterns), {})

    def _kind(self, platform: Platform, layer: Layer) -> LinkKind | None:
        if not platform.kinds:
            return None
        path, query = _path_and_query(layer.href)
        registrable = self._domains.lookup(layer.host).registrable
        for pattern in platform.kinds:
            if _pattern_holds(pattern, layer.host, registrable, path, query):
                return pattern.kind
        return None

    def _token_match(self, candidate: Candidate, text: str) -> LayerMatch | None:
        folded = text.casefold()
        best: tuple[int, PlatformId, str] | None = None
        for word, platform in self._token_words:
            at = folded.find(word)
            while at != -1:
                distance = min(abs(at - candidate.start), abs(at - candidate.end))
                if best is None or distance < best[0]:
                    best = (distance, platform, word)
                at = folded.find(word, at + 1)
        if best is not None:
            return LayerMatch(best[1], LinkKind.PASSWORD_TOKEN,
                              Evidence(0, "", f"password token near {best[2]!r}"))
        # With no platform named nearby, only a code between currency signs or with a "CZ1234"
        # mark is taken for a token: "(iPhone15ProMax)" in a title is a model name.
        if self._token_default is None or not _has_token_mark(text[candidate.start : candidate.end]):
            return None
        return LayerMatch(self._token_default, LinkKind.PASSWORD_TOKEN,
                          Evidence(0, "", "password token shape (default token platform)"))


class _HostPlan(NamedTuple):
    platform: PlatformId
    reason: str
    patterns: tuple[KindPattern, ...]
    matches: dict[tuple[LinkKind, int], LayerMatch]
    """Equal matches are shared, so memoised links hold fewer objects (bounded per host)."""


def _kind_in(patterns: tuple[KindPattern, ...], href: str) -> LinkKind | None:
    """The first pattern whose path and query conditions hold (host conditions already did)."""
    if not patterns:
        return None
    first = patterns[0]
    if first.path is None and not first.query:
        return first.kind
    path, query = _path_and_query(href)
    for pattern in patterns:
        if _rest_holds(pattern, path, query):
            return pattern.kind
    return None


def _has_token_mark(written: str) -> bool:
    """Whether a token's span carries a currency-sign delimiter or a "CZ1234" mark."""
    return any(unicodedata.category(ch) == "Sc" for ch in written if not ch.isalnum()) or (
        _CZ_MARK.search(written) is not None
    )


def _path_and_query(href: str) -> tuple[str, str]:
    """Path and raw query of a canonical href, by slicing: ``urlsplit`` costs more than the
    whole classification of a typical link."""
    authority = href.find("//")
    start = href.find("/", authority + 2) if authority != -1 else href.find(":") + 1
    if start == -1:
        start = len(href)
    end = href.find("#", start)
    if end == -1:
        end = len(href)
    mark = href.find("?", start, end)
    if mark == -1:
        return href[start:end], ""
    return href[start:mark], href[mark + 1 : end]


def _query_value(query: str, name: str) -> str | None:
    """The first value of parameter ``name`` in a raw query, percent-decoded; None if absent."""
    if name not in query:  # cheap rejection: most links carry none of the listed parameters
        return None
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return unquote_plus(value)
    return None


def _pattern_holds(
    pattern: KindPattern, host: str, registrable: str, path: str, query: str
) -> bool:
    return _host_holds(pattern, host, registrable) and _rest_holds(pattern, path, query)


def _host_holds(pattern: KindPattern, host: str, registrable: str) -> bool:
    if pattern.hosts and host not in pattern.hosts:
        return False
    if pattern.domains and registrable not in pattern.domains and host not in pattern.domains:
        return False
    return pattern.host is None or pattern.host.search(host) is not None


def _rest_holds(pattern: KindPattern, path: str, query: str) -> bool:
    if pattern.path is not None and not pattern.path.search(path):
        return False
    if pattern.query:
        for name, regex in pattern.query:
            if name not in query:  # cheap rejection: most links carry none of the listed names
                continue
            value = _query_value(query, name)
            if value is not None and (regex is None or regex.search(value) is not None):
                return True
        return False
    return True
