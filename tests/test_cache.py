"""proxy.cache: the local LRU, Redis (one round trip per call, counted by the server) and tiers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from proxy.breaker import CircuitBreaker, CircuitState, RedisGuard
from proxy.cache import LocalCache, RedisCache, TieredCache, cache_key
from proxy.errors import CacheUnavailable
from proxy.redisconn import connect, parse_redis_url
from proxy.tasks import Tasks

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.fixtures_redis import RedisClusterProcesses, RedisServer



class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CacheCounter:
    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def observe_cache(self, *, tier: str, hit: bool) -> None:
        self.seen.append((tier, hit))


async def command_calls(stats: Redis, command: str) -> int:
    info = await stats.info("commandstats")
    return int(info.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.fixture
async def stats(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A separate connection for INFO commandstats (its own calls are INFO, never counted)."""
    client = Redis.from_url(redis_server.url)
    await client.config_resetstat()
    yield client
    await client.aclose()


@pytest.fixture
async def tasks() -> AsyncIterator[Tasks]:
    task_set = Tasks()
    yield task_set
    await task_set.aclose()


def make_redis_cache(url: str, clock: FakeClock | None = None, **guard: float):
    client = connect(parse_redis_url(url))
    breaker = CircuitBreaker(clock=clock or FakeClock(), failure_threshold=3, reset_after=1.0)
    return client, breaker, RedisCache(client, RedisGuard(breaker, **guard))


# Keys -----------------------------------------------------------------------------------------

def test_key_shape_and_policy_version_scope():
    link = "https://m.tb.cn/h.abc"
    key = cache_key("v1digest", link)
    assert key.startswith("clp:v1:v1digest:")
    assert len(key.split(":")[-1]) == 16
    assert cache_key("v2digest", link) != key
    assert cache_key("v1digest", link) == key


# Local ----------------------------------------------------------------------------------------

async def test_local_hits_misses_and_ttl():
    clock = FakeClock()
    counter = CacheCounter()
    cache = LocalCache(maxsize=10, clock=clock, metrics=counter)
    await cache.set_many({"a": b"1", "b": b"2"}, ttl=5)
    assert await cache.get_many(["a", "b", "c"]) == {"a": b"1", "b": b"2"}
    assert counter.seen == [("local", True), ("local", True), ("local", False)]
    clock.now += 5
    assert await cache.get_many(["a"]) == {}
    assert len(cache) == 1  # the expired entry was dropped on read


async def test_local_is_bounded_and_least_recently_used_goes_first():
    cache = LocalCache(maxsize=2, clock=FakeClock())
    cache.store({"a": b"1", "b": b"2"}, 60)
    assert cache.lookup(["a"]) == {"a": b"1"}  # a is now the most recent
    cache.store({"c": b"3"}, 60)
    assert cache.lookup(["a", "b", "c"]) == {"a": b"1", "c": b"3"}


async def test_policy_version_invalidates_locally():
    cache = LocalCache(maxsize=10, clock=FakeClock())
    link = "https://s.click.taobao.com/x"
    cache.store({cache_key("old", link): b"block"}, 60)
    assert cache.lookup([cache_key("new", link)]) == {}


# Redis ----------------------------------------------------------------------------------------

async def test_redis_get_many_is_one_mget(redis_server: RedisServer, stats: Redis):
    client, _, cache = make_redis_cache(redis_server.url)
    try:
        keys = [cache_key("pv1", f"https://t.cn/{i}") for i in range(100)]
        await cache.set_many({k: k.encode() for k in keys[:60]}, ttl=30)
        assert await command_calls(stats, "set") == 60  # one pipeline round trip
        found = await cache.get_many(keys)
        assert found == {k: k.encode() for k in keys[:60]}
        assert await command_calls(stats, "mget") == 1
        assert await command_calls(stats, "get") == 0
        assert await cache.get_many([]) == {}
        assert await command_calls(stats, "mget") == 1  # no keys, no round trip
    finally:
        await client.aclose()


async def test_redis_ttl_and_policy_version(redis_server: RedisServer):
    client, _, cache = make_redis_cache(redis_server.url)
    try:
        key = cache_key("pv1", "https://t.cn/a")
        await cache.set_many({key: b"https://item.taobao.com/item.htm?id=1"}, ttl=2.5)
        ttl_ms = await client.pttl(key)
        assert 2000 < ttl_ms <= 2500
        assert await cache.get_many([cache_key("pv2", "https://t.cn/a")]) == {}
        assert await cache.get_many([key]) == {key: b"https://item.taobao.com/item.htm?id=1"}
    finally:
        await client.aclose()


async def test_redis_down_raises_cache_unavailable_fast(redis_server: RedisServer):
    client, breaker, cache = make_redis_cache(redis_server.url)
    redis_server.stop()
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        for _ in range(5):
            with pytest.raises(CacheUnavailable):
                await cache.get_many(["k"])
        assert breaker.state is CircuitState.OPEN
        assert loop.time() - started < 1.0
    finally:
        await client.aclose()


async def test_redis_cluster_round_trip(redis_cluster: RedisClusterProcesses):
    client, _, cache = make_redis_cache(redis_cluster.url, timeout=1.0)
    try:
        keys = [cache_key("pv1", f"https://url.cn/{i}") for i in range(50)]
        await cache.set_many({k: b"x" + k.encode() for k in keys}, ttl=30)
        assert await cache.get_many([*keys, "clp:v1:pv1:absent"]) == {
            k: b"x" + k.encode() for k in keys
        }
    finally:
        await client.aclose()


# Tiers ----------------------------------------------------------------------------------------

async def test_tiered_local_hit_makes_no_redis_call(
    redis_server: RedisServer, stats: Redis, tasks: Tasks
):
    client, _, remote = make_redis_cache(redis_server.url)
    counter = CacheCounter()
    local = LocalCache(maxsize=100, clock=FakeClock(), metrics=counter)
    tiered = TieredCache(local, remote, spawn=tasks.spawn)
    try:
        await tiered.set_many({"clp:v1:p:a": b"1"}, ttl=30)
        assert await tiered.get_many(["clp:v1:p:a"]) == {"clp:v1:p:a": b"1"}
        assert await command_calls(stats, "mget") == 0
        await asyncio.sleep(0.05)  # let the write-back task run
        assert await client.get("clp:v1:p:a") == b"1"
    finally:
        await client.aclose()


async def test_tiered_misses_go_to_redis_once_and_are_promoted(
    redis_server: RedisServer, stats: Redis, tasks: Tasks
):
    client, _, remote = make_redis_cache(redis_server.url)
    await client.set("clp:v1:p:b", b"2")
    await client.set("clp:v1:p:c", b"3")
    local = LocalCache(maxsize=100, clock=FakeClock())
    local.store({"clp:v1:p:a": b"1"}, 30)
    tiered = TieredCache(local, remote, spawn=tasks.spawn)
    try:
        wanted = ["clp:v1:p:a", "clp:v1:p:b", "clp:v1:p:c", "clp:v1:p:d"]
        assert await tiered.get_many(wanted) == {
            "clp:v1:p:a": b"1", "clp:v1:p:b": b"2", "clp:v1:p:c": b"3"
        }
        assert await command_calls(stats, "mget") == 1  # only b, c, d asked, in one MGET
        assert local.lookup(["clp:v1:p:b", "clp:v1:p:c"]) == {
            "clp:v1:p:b": b"2", "clp:v1:p:c": b"3"
        }
        await tiered.get_many(["clp:v1:p:b", "clp:v1:p:c"])
        assert await command_calls(stats, "mget") == 1  # now local hits
    finally:
        await client.aclose()


async def test_tiered_survives_redis_killed_mid_traffic_and_recovers(
    redis_server: RedisServer, tasks: Tasks
):
    clock = FakeClock()
    client, breaker, remote = make_redis_cache(redis_server.url, clock)
    local = LocalCache(maxsize=1000, clock=clock)
    tiered = TieredCache(local, remote, spawn=tasks.spawn, local_ttl=1.0)
    await remote.set_many({"clp:v1:p:shared": b"fleet"}, ttl=60)
    try:
        results = []
        for step in range(60):
            if step == 20:
                redis_server.stop()
            if step == 40:
                redis_server.start()  # empty: persistence is off
                clock.now += 2.0  # past the breaker's cool-down and the local TTL
                await remote.set_many({"clp:v1:p:shared": b"fleet-again"}, ttl=60)
            key = f"clp:v1:p:req-{step}"
            found = await tiered.get_many(["clp:v1:p:shared", key])  # never raises
            results.append(found.get("clp:v1:p:shared"))
            await tiered.set_many({key: b"local"}, ttl=30)
        assert results[:20] == [b"fleet"] * 20
        # Redis dead: the local copy (1 s TTL, not yet expired on the fake clock) serves.
        assert results[20:40] == [b"fleet"] * 20
        assert results[40:] == [b"fleet-again"] * 20
        assert breaker.state is CircuitState.CLOSED
    finally:
        await client.aclose()
