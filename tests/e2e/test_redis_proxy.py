"""The proxy wired to a real ``redis-server``: flags shared by replicas and changed by the real CLI,
Redis killed mid-traffic, short links resolved through a loopback redirector and cached for the
fleet, and the admin API on the port ``serve`` opens.

Replicas are ``create_app`` instances (each with its own Redis client, registry and tasks, as
separate processes would have) in front of one recording upstream; the admin tests run the real
console script. Timing claims are measured from the audit record the CLI writes (its ``at`` is
taken just before the change is saved), so Python's start-up time is not counted in anyone's
favour.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from proxy.app import create_admin, create_app
from proxy.cache import RESOLVE_SCOPE, cache_key
from proxy.config import settings_from_policy
from proxy.core.engine import Engine
from proxy.core.policy import Policy
from proxy.core.rollout import bucket
from proxy.flags import AUDIT_KEY
from proxy.policyfile import build_engine, load_policy
from tests.conftest import Recorder, fixed_clock
from tests.fixtures_redis import RedisServer
from tests.local import console_command, free_port, wait_http

LIVE = "/v1/live/r1/cart/items"
VIDEO = "/v1/videos/v1/cart/items"
TAOBAO = "https://item.taobao.com/item.htm?id=1"
JD = "https://item.jd.com/100012043978.html"
OWN = "https://www.kuaishou.com/short-video/1"
RULE = "taobao-cutoff-2022"
SHADOW = "Link-Policy-Shadow"
TOKEN = "e2e-admin-token-0123456789"


def _free_pair() -> int:
    """A free port whose successor is free too (worker 1's metrics port)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


# --- the loopback redirector and the test policy ---------------------------------------------

class Redirector:
    """A shortener on loopback: ``/s/...`` 302s to a Taobao item, ``/loop-*`` never ends."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append((request.method, request.path))
        if request.path.startswith("/s/"):
            return web.Response(status=302, headers={"Location": TAOBAO})
        if request.path == "/loop-a":
            return web.Response(status=302, headers={"Location": "/loop-b"})
        if request.path == "/loop-b":
            return web.Response(status=302, headers={"Location": "/loop-a"})
        return web.Response(status=404)

    def count(self, path: str) -> int:
        return sum(1 for _, p in self.hits if p == path)


@dataclass
class Shortener:
    redirector: Redirector
    port: int

    def link(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def shortener(aiohttp_server: Any) -> Shortener:
    redirector = Redirector()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirector.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    return Shortener(redirector, server.port)


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped policy with 127.0.0.1 listed as a shortener (the redirector's host)."""
    text = Path("config/policy.yaml").read_text(encoding="utf-8")
    marker = "  shorteners: [t.cn,"
    assert marker in text
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(text.replace(marker, "  shorteners: [127.0.0.1, t.cn,"), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def test_policy(policy_file: Path) -> Policy:
    return load_policy(policy_file)


@pytest.fixture(scope="module")
def test_engine(test_policy: Policy) -> Engine:
    return build_engine(test_policy)


@dataclass
class Replica:
    client: TestClient[Any, Any]
    registry: CollectorRegistry
    app: web.Application

    async def post(self, path: str, url: str, seller: str = "s1") -> tuple[int, str | None]:
        body = {"items": [{"item_id": "1", "title": "t", "url": url}]}
        async with self.client.post(path, json=body, headers={"X-Seller-Id": seller}) as r:
            await r.read()
            return r.status, r.headers.get(SHADOW)

    def metric(self, name: str, /, **labels: str) -> float | None:
        return self.registry.get_sample_value(f"cart_link_proxy_{name}", labels)


MakeReplica = Callable[..., Awaitable[Replica]]


@pytest.fixture
def make_replica(
    aiohttp_client: Any,
    upstream: tuple[Recorder, TestServer],
    test_policy: Policy,
    test_engine: Engine,
    shortener: Shortener,
) -> MakeReplica:
    """``await make_replica(redis_url)``: a proxy as ``serve`` builds it from the environment."""
    _, server = upstream

    async def build(redis_url: str | None, **env: str) -> Replica:
        environ = {
            "CART_PROXY_UPSTREAM": str(server.make_url("/")),
            "CART_PROXY_RESOLVER_ALLOW_PORTS": str(shortener.port),
            "CART_PROXY_RESOLVER_ALLOW_NETS": "127.0.0.0/8",
            **({"REDIS_URL": redis_url} if redis_url else {}),
            **env,
        }
        settings = settings_from_policy(test_policy, env=environ)
        registry = CollectorRegistry()
        app = create_app(settings, clock=fixed_clock("after"), registry=registry,
                         engine=test_engine)
        return Replica(await aiohttp_client(app), registry, app)

    return build


async def run_cli(url: str, *args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *console_command(), "flags", *args, "--redis-url", url, "--actor", "e2e",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "REDIS_URL": ""},
    )
    out, err = await process.communicate()
    assert process.returncode == 0, (out + err).decode()


async def last_change_at(url: str) -> float:
    """Wall-clock instant (epoch seconds) of the latest audited flag change."""
    client = Redis.from_url(url)
    try:
        ((_, fields),) = await client.xrevrange(AUDIT_KEY, count=1)
    finally:
        await client.aclose()
    return datetime.fromisoformat(fields[b"at"].decode()).timestamp()


async def change_everywhere(
    url: str,
    cli_args: tuple[str, ...],
    replicas: list[Replica],
    changed: Callable[[Replica], Awaitable[bool]],
    within: float = 1.0,
) -> list[float]:
    """Run the CLI while polling every replica; seconds from the audited change to the first
    changed answer of each replica (asserted below ``within``)."""
    seen: dict[int, float] = {}

    async def poll(index: int, replica: Replica) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if await changed(replica):
                seen[index] = time.time()
                return
            await asyncio.sleep(0.01)

    pollers = asyncio.gather(*(poll(i, r) for i, r in enumerate(replicas)))
    await run_cli(url, *cli_args)
    await pollers
    at = await last_change_at(url)
    assert len(seen) == len(replicas), "a replica never changed"
    elapsed = [seen[i] - at for i in range(len(replicas))]
    assert all(0 <= e < within for e in elapsed), elapsed
    return elapsed


async def blocked(replica: Replica, path: str = LIVE, url: str = TAOBAO,
                  seller: str = "s1") -> bool:
    return (await replica.post(path, url, seller))[0] == 422


async def shadowed(replica: Replica, path: str = LIVE, url: str = TAOBAO,
                   seller: str = "s1", rule: str = RULE) -> bool:
    status, shadow = await replica.post(path, url, seller)
    return status == 200 and shadow is not None and f"rule={rule}" in shadow


# --- (a) flags shared by two replicas --------------------------------------------------------

async def test_cli_flag_change_reaches_both_replicas_within_a_second(
    redis_url: str, make_replica: MakeReplica, upstream: tuple[Recorder, TestServer]
) -> None:
    replicas = [await make_replica(redis_url), await make_replica(redis_url)]
    for replica in replicas:
        assert await blocked(replica)
    recorder, _ = upstream
    before = len(recorder.requests)
    elapsed = await change_everywhere(
        redis_url, ("set", "--surface", "livestream_cart", "--mode", "shadow", "--percent", "100"),
        replicas, shadowed)
    assert max(elapsed) < 1.0
    assert len(recorder.requests) > before  # shadow forwards the request upstream
    for replica in replicas:
        assert replica.metric("rollout_mode", surface="livestream_cart", mode="shadow") == 1
        assert replica.metric("rollout_percent", surface="livestream_cart") == 100
        assert replica.metric("flag_changes_total") == 1
        assert await blocked(replica, VIDEO)  # the other surface is untouched


async def test_kill_switch_through_the_cli_forwards_taobao_on_both(
    redis_url: str, make_replica: MakeReplica
) -> None:
    replicas = [await make_replica(redis_url), await make_replica(redis_url)]
    for replica in replicas:
        assert replica.metric("kill_switch") == 0
        assert await blocked(replica)
    await change_everywhere(redis_url, ("kill", "on"), replicas, shadowed)
    for replica in replicas:
        assert replica.metric("kill_switch") == 1
        assert await shadowed(replica, VIDEO)
        assert await shadowed(replica, LIVE, JD, rule="jd-livestream-cutoff-2022")  # every rule
    await change_everywhere(redis_url, ("kill", "off"), replicas, blocked)


def _sellers(n: int = 200) -> list[str]:
    return [f"seller-{i}" for i in range(n)]


async def _enforced(replica: Replica, sellers: list[str]) -> set[str]:
    results = await asyncio.gather(*(replica.post(LIVE, TAOBAO, s) for s in sellers))
    for status, shadow in results:
        assert status == 422 or (status == 200 and shadow), (status, shadow)
    return {s for s, (status, _) in zip(sellers, results, strict=True) if status == 422}


async def test_percentage_rollout_through_the_proxy_is_sticky(
    redis_url: str, make_replica: MakeReplica
) -> None:
    replicas = [await make_replica(redis_url), await make_replica(redis_url)]
    sellers = _sellers()
    expect = {p: {s for s in sellers if bucket(RULE, s) <= p} for p in (10, 30)}
    inside = min(expect[10])
    outside = next(s for s in sellers if s not in expect[10])
    await change_everywhere(
        redis_url, ("set", "--surface", "livestream_cart", "--mode", "enforce", "--percent", "10"),
        replicas, lambda r: shadowed(r, seller=outside))
    at_10 = [await _enforced(r, sellers) for r in replicas]
    assert at_10[0] == at_10[1] == expect[10]
    assert 5 <= len(expect[10]) <= 40  # about 10 % of 200
    await change_everywhere(
        redis_url, ("set", "--surface", "livestream_cart", "--mode", "enforce", "--percent", "30"),
        replicas, lambda r: _grew(r, sellers, len(expect[10])))
    at_30 = [await _enforced(r, sellers) for r in replicas]
    assert at_30[0] == at_30[1] == expect[30]
    assert at_10[0] <= at_30[0]  # sticky: in at 10 % stays in at 30 %
    assert inside in at_30[0]


async def _grew(replica: Replica, sellers: list[str], size: int) -> bool:
    return len(await _enforced(replica, sellers)) > size


async def test_allow_and_force_lists_through_the_proxy(
    redis_url: str, make_replica: MakeReplica
) -> None:
    replicas = [await make_replica(redis_url), await make_replica(redis_url)]
    await change_everywhere(
        redis_url, ("set", "--surface", "livestream_cart", "--mode", "enforce", "--percent", "0"),
        replicas, shadowed)
    await change_everywhere(redis_url, ("force", "vip"), replicas,
                            lambda r: blocked(r, seller="vip"))
    for replica in replicas:
        assert await shadowed(replica, seller="someone-else")
    await change_everywhere(
        redis_url, ("set", "--surface", "livestream_cart", "--mode", "enforce", "--percent", "100"),
        replicas, blocked)
    await change_everywhere(redis_url, ("allow", "migrating"), replicas,
                            lambda r: shadowed(r, seller="migrating"))
    for replica in replicas:
        assert await blocked(replica, seller="vip")
        assert await blocked(replica, seller="someone-else")
    await change_everywhere(redis_url, ("unlist", "migrating"), replicas,
                            lambda r: blocked(r, seller="migrating"))


# --- (b) Redis killed mid-traffic ------------------------------------------------------------

def _traffic(shortener: Shortener) -> list[tuple[str, Callable[[int], str], int]]:
    """(path, link for request i, the right status): the mix every request of the loop uses."""
    return [
        (LIVE, lambda i: TAOBAO, 422),
        (VIDEO, lambda i: JD, 200),
        (LIVE, lambda i: JD, 422),
        (VIDEO, lambda i: OWN, 200),
        # A new short link every time: a local miss, so the request asks Redis first.
        (LIVE, lambda i: shortener.link(f"/s/outage-{i}"), 422),
    ]


async def test_redis_killed_mid_traffic_and_restarted(
    redis_server: RedisServer, make_replica: MakeReplica, shortener: Shortener
) -> None:
    url = redis_server.url
    replicas = [await make_replica(url), await make_replica(url)]
    mix = _traffic(shortener)
    answers: list[tuple[int, int, float]] = []  # (expected, got, seconds)
    opened = []
    counter = 0

    async def traffic(seconds: float) -> None:
        nonlocal counter
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for replica in replicas:
                path, link, expected = mix[counter % len(mix)]
                started = time.monotonic()
                status, _ = await replica.post(path, link(counter))
                answers.append((expected, status, time.monotonic() - started))
                counter += 1
                if replica.metric("circuit_state", name="redis", state="open") == 1:
                    opened.append(replica)

    await traffic(0.5)
    redis_server.stop()
    await traffic(1.5)
    assert opened, "the circuit never opened while Redis was down"
    outage_errors = sum(r.metric("redis_errors_total", operation="mget") or 0 for r in replicas)
    assert outage_errors >= 5
    redis_server.start()  # same port, empty (no persistence)
    await traffic(3.0)  # past the 2 s cool-down: a probe closes the circuit again
    wrong = [(e, g) for e, g, _ in answers if e != g]
    assert not wrong, f"{len(wrong)} wrong answers of {len(answers)}: {wrong[:5]}"
    assert all(status < 500 for _, status, _ in answers)
    # Nothing waited on Redis for long: the guard's timeout is 50 ms and refused connections fail
    # at once; the slowest request includes one resolution on loopback.
    assert max(seconds for _, _, seconds in answers) < 0.5
    for replica in replicas:
        assert replica.metric("circuit_state", name="redis", state="closed") == 1
    # The flag watchers are back: a change reaches both replicas again.
    await change_everywhere(url, ("kill", "on"), replicas, shadowed, within=3.0)
    elapsed = await change_everywhere(url, ("kill", "off"), replicas, blocked)
    assert max(elapsed) < 1.0


# --- (c) short links in the request path -----------------------------------------------------

async def cached_resolution(client: Redis | RedisCluster, link: str) -> bytes | None:
    """Where the fleet's cache says ``link`` leads, once the background write-back has landed
    (waiting up to 2 s); closes ``client``."""
    key = cache_key(RESOLVE_SCOPE, link)
    try:
        for _ in range(200):
            found: bytes | None = await client.get(key)
            if found is not None:
                return found
            await asyncio.sleep(0.01)
        return None
    finally:
        await client.aclose()


async def test_short_link_is_resolved_blocked_and_cached_for_the_fleet(
    redis_url: str, make_replica: MakeReplica, shortener: Shortener
) -> None:
    first, second = await make_replica(redis_url), await make_replica(redis_url)
    link = shortener.link("/s/abc")
    assert await blocked(first, LIVE, link)
    assert shortener.redirector.count("/s/abc") == 1
    # The chain ends at the Taobao item page, which the engine can judge: never fetched.
    assert [p for _, p in shortener.redirector.hits] == ["/s/abc"]
    assert await cached_resolution(Redis.from_url(redis_url), link) == TAOBAO.encode()
    assert await blocked(second, LIVE, link)
    assert shortener.redirector.count("/s/abc") == 1  # the second replica asked Redis
    assert second.metric("cache_requests_total", tier="redis", result="hit") == 1
    assert await blocked(first, LIVE, link)  # the first one's own tier
    assert first.metric("cache_requests_total", tier="local", result="hit") == 1
    assert shortener.redirector.count("/s/abc") == 1


async def test_short_link_is_resolved_without_redis_too(
    make_replica: MakeReplica, shortener: Shortener
) -> None:
    replica = await make_replica(None)
    link = shortener.link("/s/local")
    assert await blocked(replica, LIVE, link)
    assert await blocked(replica, LIVE, link)
    assert shortener.redirector.count("/s/local") == 1
    assert await shadowed(replica, LIVE, link) is False


async def test_unresolvable_short_link_follows_the_surface_choice(
    redis_url: str, make_replica: MakeReplica, shortener: Shortener
) -> None:
    """``unresolved: block`` on the live cart, ``allow`` on the short-video cart."""
    replica = await make_replica(redis_url)
    link = shortener.link("/loop-a")
    assert (await replica.post(LIVE, link))[0] == 422
    assert (await replica.post(VIDEO, link))[0] == 200
    assert shortener.redirector.count("/loop-a") >= 1


# --- (d) the admin API on the port `serve` opens ---------------------------------------------

@asynccontextmanager
async def serving(*args: str, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        *console_command(), "serve", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **env},
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_admin_api_on_the_served_port_with_the_token_from_env(
    redis_url: str, upstream: tuple[Recorder, TestServer], policy_file: Path
) -> None:
    _, server = upstream
    port, metrics, admin = free_port(), free_port(), free_port()
    env = {"REDIS_URL": redis_url, "CART_PROXY_ADMIN_TOKEN": TOKEN}
    auth = {"Authorization": f"Bearer {TOKEN}", "X-Actor": "e2e"}
    base, admin_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
    body = {"items": [{"item_id": "1", "title": "t", "url": TAOBAO}]}
    async with serving("--config", str(policy_file), "--upstream", str(server.make_url("/")),
                       "--port", str(port), "--metrics-port", str(metrics),
                       "--admin-port", str(admin), env=env), aiohttp.ClientSession() as http:
        await wait_http(f"http://127.0.0.1:{metrics}/readyz")
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}):
            async with http.put(f"{admin_base}/flags/kill", json={"on": True},
                                headers=headers) as r:
                assert r.status == 401
                assert r.content_type == "application/problem+json"
        async with http.get(f"{admin_base}/flags", headers=auth) as r:
            assert r.status == 200
            document = await r.json()
            assert document["source"] == "redis"
            assert document["flags"]["kill_switch"] is False
        async with http.post(f"{base}{LIVE}", json=body) as r:
            assert r.status == 422
        async with http.put(f"{admin_base}/flags/kill", json={"on": True}, headers=auth) as r:
            assert r.status == 200
            assert (await r.json())["flags"]["kill_switch"] is True
        changed = time.monotonic()
        while True:  # the served proxy reads the change the admin API wrote
            async with http.post(f"{base}{LIVE}", json=body) as r:
                if r.status == 200:
                    assert RULE in r.headers[SHADOW]
                    break
            assert time.monotonic() - changed < 1.0
            await asyncio.sleep(0.01)
        async with http.post(f"{admin_base}/explain", headers=auth, json={
                "text": TAOBAO, "surface": "livestream_cart", "seller": "s1"}) as r:
            record = await r.json()
            assert record["action"] == "block"
            assert record["rollout"] == {"kill_switch": True, "modes": {RULE: "shadow"}}
        async with http.get(f"{admin_base}/flags", headers=auth) as r:
            audit = (await r.json())["audit"]
            assert (audit[0]["actor"], audit[0]["action"]) == ("e2e", "kill")
        async with http.get(f"http://127.0.0.1:{metrics}/metrics") as r:
            text = await r.text()
            assert "cart_link_proxy_kill_switch 1.0" in text
            assert 'cart_link_proxy_rollout_mode{mode="enforce",surface="livestream_cart"} 1.0' \
                in text
            assert "cart_link_proxy_policy_info{" in text


async def test_admin_without_redis_reads_and_refuses_changes(
    make_replica: MakeReplica, aiohttp_client: Any
) -> None:
    replica = await make_replica(None, CART_PROXY_ADMIN_PORT="9999",
                                 CART_PROXY_ADMIN_TOKEN=TOKEN)
    admin = await aiohttp_client(create_admin(replica.app))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    response = await admin.get("/flags", headers=auth)
    assert response.status == 200
    document = await response.json()
    assert (document["source"], document["revision"], document["audit"]) == ("policy", None, [])
    response = await admin.put("/flags/kill", json={"on": True}, headers=auth)
    assert response.status == 503
    assert response.content_type == "application/problem+json"
    assert (await response.json())["type"].endswith("flag-store-unavailable")
    response = await admin.post("/explain", headers=auth,
                                json={"text": TAOBAO, "surface": "livestream_cart"})
    assert (await response.json())["rollout"]["modes"] == {RULE: "enforce"}
    assert await blocked(replica)


async def test_with_two_workers_only_worker_0_serves_admin(
    upstream: tuple[Recorder, TestServer],
) -> None:
    _, server = upstream
    metrics = _free_pair()
    port, admin = free_port(), free_port()
    async with serving("--upstream", str(server.make_url("/")), "--port", str(port),
                       "--metrics-port", str(metrics), "--admin-port", str(admin),
                       "--workers", "2", env={"CART_PROXY_ADMIN_TOKEN": TOKEN}) as process, \
            aiohttp.ClientSession() as http:
        for ops in (metrics, metrics + 1):
            await wait_http(f"http://127.0.0.1:{ops}/readyz")
        await wait_http(f"http://127.0.0.1:{admin}/flags")
        async with http.get(f"http://127.0.0.1:{admin}/flags",
                            headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert (await r.json())["source"] == "policy"
        assert process.returncode is None  # no worker died on a port clash
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 20) == 0


async def test_serve_refuses_an_admin_port_without_a_token() -> None:
    env = {"CART_PROXY_ADMIN_TOKEN": ""}
    async with serving("--admin-port", str(free_port()), env=env) as process:
        _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert b"CART_PROXY_ADMIN_TOKEN" in err


async def test_serve_refuses_a_bad_redis_url() -> None:
    async with serving(env={"REDIS_URL": "redis://localhost:notaport/0"}) as process:
        _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert b"REDIS_URL" in err


# --- (e) the same on a Redis Cluster of three masters ---------------------------------------

async def test_flags_and_short_links_through_the_proxy_on_a_cluster(
    redis_cluster: Any, make_replica: MakeReplica, shortener: Shortener
) -> None:
    url = redis_cluster.url
    replicas = [await make_replica(url), await make_replica(url)]
    for replica in replicas:
        assert await blocked(replica)
    await run_cli(url, "kill", "on")
    changed_by = time.monotonic() + 1.0
    for replica in replicas:
        while not await shadowed(replica):
            assert time.monotonic() < changed_by, "the kill switch took over a second"
            await asyncio.sleep(0.01)
    await run_cli(url, "kill", "off")
    for replica in replicas:
        while not await blocked(replica):
            assert time.monotonic() < changed_by + 1.0, "kill off took over a second"
            await asyncio.sleep(0.01)
    # A short link resolved by one replica is found in the cluster by the other.
    link = shortener.link("/s/cluster")
    assert await blocked(replicas[0], LIVE, link)
    assert shortener.redirector.count("/s/cluster") == 1
    cluster = RedisCluster(host="127.0.0.1", port=redis_cluster.servers[0].port)
    assert await cached_resolution(cluster, link) == TAOBAO.encode()
    assert await blocked(replicas[1], LIVE, link)
    assert shortener.redirector.count("/s/cluster") == 1  # the second replica asked the cluster
    assert replicas[1].metric("cache_requests_total", tier="redis", result="hit") == 1
