"""proxy.flags: flags shared by replicas through a real Redis, changed by the real CLI."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from proxy.core.model import Mode, RuleId, SurfaceId
from proxy.core.rollout import FlagSnapshot, bucket
from proxy.errors import FlagStoreUnavailable, InvalidFlagChange
from proxy.flags import AUDIT_KEY, RedisFlagStore, StaticFlags, export_snapshot
from proxy.metrics import ProxyMetrics
from proxy.policyfile import load_policy
from proxy.tasks import Tasks

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from tests.fixtures_redis import RedisServer


RULE = RuleId("taobao-cutoff-2022")
LIVE = SurfaceId("livestream_cart")
VIDEO = SurfaceId("short_video_cart")
AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CLI = shutil.which("cart-link-proxy")


def fixed_clock() -> datetime:
    return AT


@pytest.fixture
def policy():
    return load_policy()


@pytest.fixture
async def make_store(redis_server: RedisServer, policy) -> AsyncIterator[Callable[..., RedisFlagStore]]:
    """Builds started stores (each with its own client, like separate replicas)."""
    tasks = Tasks()
    made: list[tuple[RedisFlagStore, Redis]] = []

    def build(cls: type[RedisFlagStore] = RedisFlagStore, **options) -> RedisFlagStore:
        client = Redis.from_url(redis_server.url, socket_timeout=0.2, socket_connect_timeout=0.2)
        store = cls.for_policy(
            client, policy, clock=fixed_clock, spawn=tasks.spawn, **options
        )
        made.append((store, client))
        return store

    yield build
    for store, client in made:
        await store.stop()
        await client.aclose()
    await tasks.aclose()


async def wait_for(predicate: Callable[[], bool], seconds: float) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < seconds:
        if predicate():
            return loop.time() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"not true within {seconds} s")


def run_cli(url: str, *args: str, actor: str = "release-manager") -> subprocess.CompletedProcess[str]:
    command = [CLI] if CLI else [sys.executable, "-m", "proxy"]
    return subprocess.run(
        [*command, "flags", *args, "--redis-url", url, "--actor", actor],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "REDIS_URL": ""},
    )


def test_console_script_is_installed():
    assert CLI is not None, "install the package (pip install -e .) to get cart-link-proxy"


def test_static_flags_are_the_policy_defaults(policy):
    assert StaticFlags(policy).snapshot() == FlagSnapshot.from_policy(policy.rollout)


async def test_cli_change_reaches_two_replicas_within_a_second(redis_server, make_store):
    first, second = make_store(), make_store()
    await first.start()
    await second.start()
    assert first.snapshot().mode_for(RULE, LIVE, "s1") is Mode.ENFORCE
    done = await asyncio.to_thread(
        run_cli, redis_server.url, "set", "--surface", "livestream_cart", "--mode", "shadow",
        "--percent", "0",
    )
    assert done.returncode == 0, done.stderr
    for store in (first, second):
        elapsed = await wait_for(
            lambda s=store: s.snapshot().mode_for(RULE, LIVE, "s1") is Mode.SHADOW, 1.0
        )
        assert elapsed < 1.0
    assert first.snapshot().mode_for(RULE, VIDEO, "s1") is Mode.ENFORCE


class DeafStore(RedisFlagStore):
    """A replica whose pub/sub subscription never works: only the periodic refresh is left."""

    async def _subscribe(self):
        return None


async def test_change_reaches_a_replica_without_pubsub_by_refresh(make_store):
    writer, reader = make_store(), make_store(DeafStore, refresh_interval=0.5)
    await reader.start()
    started = time.monotonic()
    await writer.set_kill_switch(True, actor="oncall")
    await wait_for(lambda: reader.snapshot().kill_switch, 1.0)
    assert time.monotonic() - started < 1.0


async def test_sticky_percentage_over_ten_thousand_sellers(make_store):
    store = make_store()
    sellers = [f"seller-{i}" for i in range(10_000)]
    await store.set_flag(surface="livestream_cart", rule=None, mode="enforce", percent=10,
                         actor="rm")
    at_10 = {s for s in sellers if store.snapshot().mode_for(RULE, LIVE, s) is Mode.ENFORCE}
    assert 850 <= len(at_10) <= 1150
    await store.set_flag(surface="livestream_cart", rule=None, mode="enforce", percent=20,
                         actor="rm")
    at_20 = {s for s in sellers if store.snapshot().mode_for(RULE, LIVE, s) is Mode.ENFORCE}
    assert 1850 <= len(at_20) <= 2150
    assert at_10 <= at_20
    assert all(bucket(RULE, s) <= 10 for s in at_10)


async def test_kill_switch_shadows_everything_then_restores(make_store):
    store = make_store()
    await store.list_sellers("force", ["vip"], actor="rm")
    await store.set_kill_switch(True, actor="oncall")
    snapshot = store.snapshot()
    assert snapshot.kill_switch
    assert snapshot.mode_for(RULE, LIVE, "vip") is Mode.SHADOW
    assert snapshot.mode_for(RULE, LIVE, None) is Mode.SHADOW
    await store.set_kill_switch(False, actor="oncall")
    assert store.snapshot().mode_for(RULE, LIVE, "vip") is Mode.ENFORCE


async def test_allow_force_and_unlist(make_store):
    store = make_store()
    await store.set_flag(surface=None, rule="taobao-cutoff-2022", mode="enforce", percent=0,
                         actor="rm")
    await store.list_sellers("force", ["a", "b"], actor="rm")
    await store.list_sellers("allow", ["b", "c"], actor="rm")  # b moves from force to allow
    snapshot = store.snapshot()
    assert snapshot.force_sellers == {"a"}
    assert snapshot.allow_sellers == {"b", "c"}
    assert snapshot.mode_for(RULE, LIVE, "a") is Mode.ENFORCE
    assert snapshot.mode_for(RULE, LIVE, "b") is Mode.SHADOW
    assert snapshot.mode_for(RULE, LIVE, "z") is Mode.SHADOW  # 0 %
    await store.list_sellers("unlist", ["a", "b"], actor="rm")
    assert store.snapshot().force_sellers == frozenset()
    assert store.snapshot().allow_sellers == {"c"}


async def test_rule_and_surface_pair_and_clear(make_store, policy):
    store = make_store()
    await store.set_flag(surface="livestream_cart", rule="taobao-cutoff-2022", mode="off",
                         percent=100, actor="rm")
    assert store.snapshot().mode_for(RULE, LIVE, "s") is Mode.OFF
    assert store.snapshot().mode_for(RULE, VIDEO, "s") is Mode.ENFORCE
    await store.clear_flag(surface="livestream_cart", rule="taobao-cutoff-2022", actor="rm")
    assert store.snapshot() == FlagSnapshot.from_policy(policy.rollout)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"surface": "nowhere", "rule": None, "mode": "shadow", "percent": 1}, "unknown surface"),
        ({"surface": None, "rule": "no-such-rule", "mode": "shadow", "percent": 1},
         "unknown rule"),
        ({"surface": "livestream_cart", "rule": None, "mode": "loud", "percent": 1}, "mode"),
        ({"surface": "livestream_cart", "rule": None, "mode": "enforce", "percent": 101},
         "percent"),
    ],
    ids=["surface", "rule", "mode", "percent"],
)
async def test_invalid_changes_are_refused_and_not_recorded(make_store, redis_server, change,
                                                            message):
    store = make_store()
    with pytest.raises(InvalidFlagChange, match=message):
        await store.set_flag(**change, actor="rm")
    assert redis_server.command("XLEN", AUDIT_KEY) == ":0\r\n"


async def test_every_change_is_audited(make_store, caplog):
    store = make_store()
    with caplog.at_level("INFO", logger="cart_link_proxy.flags"):
        await store.set_flag(surface="livestream_cart", rule=None, mode="shadow", percent=0,
                             actor="alice")
        await store.set_kill_switch(True, actor="bob")
    entries = await store.audit()
    assert [(e.actor, e.action) for e in entries] == [("bob", "kill"), ("alice", "set")]
    assert entries[0].detail == {"on": True}
    assert entries[1].detail == {"mode": "shadow", "percent": 0, "rule": None,
                                 "surface": "livestream_cart"}
    assert entries[1].at == AT.isoformat()
    logged = [r.getMessage() for r in caplog.records if r.name == "cart_link_proxy.flags"]
    assert any("alice" in line and "set" in line for line in logged)
    assert any("bob" in line and "kill" in line for line in logged)


async def test_redis_down_serves_the_last_good_snapshot_and_recovers(redis_server, make_store):
    store, writer = make_store(), make_store()
    await store.start()
    await writer.set_flag(surface="livestream_cart", rule=None, mode="shadow", percent=0,
                          actor="rm")
    await wait_for(lambda: store.snapshot().mode_for(RULE, LIVE, "s") is Mode.SHADOW, 1.0)
    good = store.snapshot()
    redis_server.stop()
    await asyncio.sleep(1.2)  # several refresh periods with Redis gone
    assert store.snapshot() is good
    assert await store.refresh() is False
    with pytest.raises(FlagStoreUnavailable):
        await writer.set_kill_switch(True, actor="oncall")
    redis_server.start()  # comes back empty (no persistence): the policy's flags again
    await wait_for(lambda: store.snapshot() != good, 3.0)
    await writer.set_kill_switch(True, actor="oncall")
    await wait_for(lambda: store.snapshot().kill_switch, 1.0)


async def test_starting_with_redis_down_serves_the_policy(redis_server, make_store, policy):
    store = make_store()
    redis_server.stop()
    await store.start()
    assert store.snapshot() == FlagSnapshot.from_policy(policy.rollout)
    assert store.revision is None


async def test_flags_on_a_redis_cluster(redis_cluster, policy):
    from proxy.redisconn import connect, parse_redis_url

    tasks = Tasks()
    clients = [connect(parse_redis_url(redis_cluster.url, socket_timeout=1, connect_timeout=1))
               for _ in range(2)]
    writer, reader = (RedisFlagStore.for_policy(c, policy, clock=fixed_clock, spawn=tasks.spawn)
                      for c in clients)
    try:
        await reader.start()
        await writer.set_kill_switch(True, actor="oncall")
        await writer.list_sellers("force", ["s1"], actor="oncall")
        await wait_for(lambda: reader.snapshot().force_sellers == {"s1"}, 1.0)
        assert reader.snapshot().kill_switch
        assert [e.action for e in await writer.audit()] == ["force", "kill"]
    finally:
        await reader.stop()
        await tasks.aclose()
        for client in clients:
            await client.aclose()


def _gauges(registry: CollectorRegistry, surface: str) -> tuple[str | None, float | None]:
    modes = [m for m in ("off", "shadow", "enforce") if registry.get_sample_value(
        "cart_link_proxy_rollout_mode", {"surface": surface, "mode": m}) == 1]
    percent = registry.get_sample_value("cart_link_proxy_rollout_percent", {"surface": surface})
    return (modes[0] if len(modes) == 1 else None), percent


def test_export_snapshot_covers_every_surface(policy):
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry, surfaces=list(policy.surfaces))
    export_snapshot(metrics, StaticFlags(policy).snapshot(), policy.surfaces)
    for surface in policy.surfaces:
        assert _gauges(registry, surface) == ("enforce", 100)
    assert registry.get_sample_value("cart_link_proxy_kill_switch") == 0


async def test_store_exports_changes_and_cleared_flags_fall_back(make_store, policy):
    registry = CollectorRegistry()
    store = make_store(metrics=ProxyMetrics(registry, surfaces=list(policy.surfaces)))
    await store.start()
    await store.set_flag(surface="livestream_cart", rule=None, mode="shadow", percent=10,
                         actor="rm")
    assert _gauges(registry, "livestream_cart") == ("shadow", 10)
    assert _gauges(registry, "short_video_cart") == ("enforce", 100)
    await store.set_kill_switch(True, actor="oncall")
    assert registry.get_sample_value("cart_link_proxy_kill_switch") == 1
    await store.clear_flag(surface="livestream_cart", rule=None, actor="rm")
    assert _gauges(registry, "livestream_cart") == ("enforce", 100)
    assert registry.get_sample_value("cart_link_proxy_flag_changes_total") == 3
