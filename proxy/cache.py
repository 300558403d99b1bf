"""The decision cache: a bounded in-process LRU, Redis shared by the fleet, and the two in tiers.

What is cached where, and why (numbers from ``bench/redis_bench.py``, see ``docs/rollout.md``):

* **Resolved short links go to both tiers** (``TieredCache``: local LRU, then Redis). Resolving
  costs one to five HTTP round trips to a third party, tens to thousands of milliseconds; a Redis
  MGET on the same network costs well under a millisecond, so the fleet resolves each link once.
* **Pure classification and decisions stay local** (``LocalCache`` only). The engine decides a
  typical cart item in tens of microseconds, which is cheaper than one loopback Redis round trip
  (about 100–200 µs for 10 keys), let alone one across a network. Putting decisions in Redis would
  make the common path slower and add a failure mode.

Keys are built by ``cache_key(scope, link)``: ``clp:v1:<scope>:<sha256(link)[:16]>``. For decisions
the scope is the policy version (``Policy.version``), so a new policy never reads an old decision;
for resolutions it is ``resolve``, since where a redirect leads does not depend on the policy (a
policy rollout must not make the fleet re-resolve every link). ``link`` is the normalised link (the
canonical serialisation from ``proxy.core.urls``). Values are bytes; what they mean is the caller's.

``RedisCache`` makes exactly one round trip per ``get_many`` (MGET; on a cluster ``mget_nonatomic``,
one pipeline per master holding keys) and per ``set_many`` (one non-transactional pipeline of
``SET ... PX``), and none when given no keys. Every call goes through ``RedisGuard``: a slow or
dead Redis raises ``CacheUnavailable`` within the guard's timeout, which ``TieredCache`` treats as
a miss. ``TieredCache.set_many`` writes the local tier at once and hands the Redis write to a
background task, so a request never waits for a write-back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Final, Protocol

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from proxy.breaker import MonotonicClock, RedisGuard
from proxy.errors import CacheUnavailable

__all__ = [
    "CacheMetrics",
    "DecisionCache",
    "LocalCache",
    "RedisCache",
    "Spawn",
    "TieredCache",
    "cache_key",
]

KEY_PREFIX: Final = "clp:v1"
RESOLVE_SCOPE: Final = "resolve"
"""Scope of resolved short links: independent of the policy version (see the module docstring)."""


def cache_key(scope: str, link: str) -> str:
    """The cache key of a normalised link within a scope (a policy version, or ``resolve``).

    >>> key = cache_key("3f2a9c0d1e4b", "https://m.tb.cn/h.abc")
    >>> key.startswith("clp:v1:3f2a9c0d1e4b:"), len(key.rsplit(":", 1)[1])
    (True, 16)
    """
    digest = hashlib.sha256(link.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{KEY_PREFIX}:{scope}:{digest}"


class DecisionCache(Protocol):
    """The seam the proxy uses: ``LocalCache``, ``RedisCache`` and ``TieredCache`` implement it."""

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The cached values of the keys that are present (missing keys are absent)."""
        ...

    async def set_many(self, mapping: Mapping[str, bytes], ttl: float) -> None:
        """Store every value for ``ttl`` seconds."""
        ...


class CacheMetrics(Protocol):
    def observe_cache(self, *, tier: str, hit: bool) -> None: ...


class Spawn(Protocol):
    """``proxy.tasks.spawn``: start a named background task the app keeps a reference to."""

    def __call__(
        self, coro: Coroutine[Any, Any, Any], *, name: str
    ) -> asyncio.Task[Any]: ...


class LocalCache:
    """A bounded LRU with a TTL per entry over an injected monotonic clock; not shared."""

    def __init__(
        self,
        *,
        maxsize: int,
        clock: MonotonicClock,
        metrics: CacheMetrics | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self._clock = clock
        self._metrics = metrics
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, keys: Sequence[str]) -> dict[str, bytes]:
        """``get_many`` without the coroutine, for callers already on the event loop."""
        now = self._clock()
        found: dict[str, bytes] = {}
        entries = self._entries
        for key in keys:
            entry = entries.get(key)
            if entry is not None and entry[0] > now:
                entries.move_to_end(key)
                found[key] = entry[1]
            elif entry is not None:
                del entries[key]
        if self._metrics is not None:
            for key in keys:
                self._metrics.observe_cache(tier="local", hit=key in found)
        return found

    def store(self, mapping: Mapping[str, bytes], ttl: float) -> None:
        if ttl <= 0:
            return
        expires = self._clock() + ttl
        entries = self._entries
        for key, value in mapping.items():
            entries[key] = (expires, value)
            entries.move_to_end(key)
        while len(entries) > self.maxsize:
            entries.popitem(last=False)

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        return self.lookup(keys)

    async def set_many(self, mapping: Mapping[str, bytes], ttl: float) -> None:
        self.store(mapping, ttl)


class RedisCache:
    """Redis as a cache: one round trip per call, every call guarded (see the module docstring)."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        guard: RedisGuard,
        *,
        metrics: CacheMetrics | None = None,
    ) -> None:
        self._client = client
        self._guard = guard
        self._metrics = metrics

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Raises ``CacheUnavailable`` when Redis fails, is slow, or its circuit is open."""
        if not keys:
            return {}
        unique = list(dict.fromkeys(keys))
        client = self._client
        if isinstance(client, RedisCluster):
            # Keys hash to different slots; mget_nonatomic sends one pipeline per master.
            values = await self._guard.call("mget", lambda: client.mget_nonatomic(unique))
        else:
            values = await self._guard.call("mget", lambda: client.mget(unique))
        found = {
            key: value
            for key, value in zip(unique, values, strict=True)
            if isinstance(value, bytes)
        }
        if self._metrics is not None:
            for key in unique:
                self._metrics.observe_cache(tier="redis", hit=key in found)
        return found

    async def set_many(self, mapping: Mapping[str, bytes], ttl: float) -> None:
        """Raises ``CacheUnavailable`` when Redis fails, is slow, or its circuit is open."""
        if not mapping or ttl <= 0:
            return
        milliseconds = max(1, int(ttl * 1000))
        pipe = self._client.pipeline(transaction=False)
        for key, value in mapping.items():
            pipe.set(key, value, px=milliseconds)
        await self._guard.call("set", pipe.execute)


class TieredCache:
    """Local first; Redis for the local misses (one round trip); writes go local now, Redis later.

    Redis keeps an entry for the ``ttl`` given to ``set_many``; ``local_ttl`` caps the local copy
    (and is the lifetime of an entry copied from Redis, whose remaining TTL is not fetched), so a
    replica sees a fleet-wide change, such as an entry deleted in Redis, within that time.
    """

    def __init__(
        self,
        local: LocalCache,
        remote: DecisionCache,
        *,
        spawn: Spawn,
        local_ttl: float = 60.0,
    ) -> None:
        if local_ttl <= 0:
            raise ValueError(f"local_ttl must be positive seconds, got {local_ttl}")
        self.local = local
        self.remote = remote
        self._spawn = spawn
        self._local_ttl = local_ttl

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        found = self.local.lookup(keys)
        missing = [key for key in keys if key not in found]
        if not missing:
            return found
        try:
            remote = await self.remote.get_many(missing)
        except CacheUnavailable:
            return found
        if remote:
            self.local.store(remote, self._local_ttl)
            found.update(remote)
        return found

    async def set_many(self, mapping: Mapping[str, bytes], ttl: float) -> None:
        if not mapping:
            return
        self.local.store(mapping, min(ttl, self._local_ttl))
        self._spawn(self._write_back(dict(mapping), ttl), name="cache-write-back")

    async def _write_back(self, mapping: dict[str, bytes], ttl: float) -> None:
        # Already counted by the guard; the local tier has the value.
        with contextlib.suppress(CacheUnavailable):
            await self.remote.set_many(mapping, ttl)
