"""``DomainIndex``: which platform a canonical host belongs to, by registrable domain.

The public-suffix split is injected (``split``: host -> (public suffix, registrable domain)), so
this module stays pure; ``proxy.policyfile`` builds it from an offline ``tldextract.TLDExtract``.
Matching walks from the host up to its registrable domain and never past it: ``taobao.com``
matches ``item.taobao.com`` but not ``taobao.com.example.net`` (registrable ``example.net``) nor
``faketaobao.com``. A platform may also own a public suffix itself (the brand TLD ``.taobao``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from proxy.core.model import PlatformId
from proxy.core.policy import Platform

__all__ = ["DomainIndex", "DomainMatch", "SuffixSplit"]

SuffixSplit = Callable[[str], tuple[str, str]]
"""host -> (public suffix, registrable domain); both '' when the host has no known suffix."""


@dataclass(frozen=True, slots=True)
class DomainMatch:
    host: str
    suffix: str
    registrable: str
    platform: PlatformId | None
    matched: str
    """The listed domain or suffix that matched ('' when none did)."""


class DomainIndex:
    """Host -> platform lookups with a bounded LRU per host.

    >>> index = DomainIndex(lambda h: ("com", ".".join(h.split(".")[-2:])), {"taobao.com": "taobao"})
    >>> index.lookup("item.taobao.com").platform
    'taobao'
    >>> index.lookup("faketaobao.com").platform is None
    True
    """

    def __init__(
        self,
        split: SuffixSplit,
        domains: Mapping[str, str],
        suffixes: Mapping[str, str] | None = None,
        *,
        cache_size: int = 65536,
    ) -> None:
        self._split = split
        self._domains = {d: PlatformId(p) for d, p in domains.items()}
        self._suffixes = {s: PlatformId(p) for s, p in (suffixes or {}).items()}
        self.lookup: Callable[[str], DomainMatch] = lru_cache(maxsize=cache_size)(self._lookup)

    @classmethod
    def for_platforms(
        cls, split: SuffixSplit, platforms: Mapping[PlatformId, Platform], *, cache_size: int = 65536
    ) -> DomainIndex:
        domains = {d: p.id for p in platforms.values() for d in p.domains}
        suffixes = {s: p.id for p in platforms.values() for s in p.suffixes}
        return cls(split, domains, suffixes, cache_size=cache_size)

    def _lookup(self, host: str) -> DomainMatch:
        suffix, registrable = self._split(host) if host else ("", "")
        if registrable:
            # Walk item.shop.taobao.com -> shop.taobao.com -> taobao.com, never above it.
            candidate = host
            while True:
                platform = self._domains.get(candidate)
                if platform is not None:
                    return DomainMatch(host, suffix, registrable, platform, candidate)
                if candidate == registrable or "." not in candidate:
                    break
                candidate = candidate.split(".", 1)[1]
        platform = self._suffixes.get(suffix) if suffix else None
        return DomainMatch(host, suffix, registrable, platform, suffix if platform else "")
