"""proxy.app: what ``create_app`` builds (and what it does not touch before start), who owns what
on cleanup, and the operations and admin apps built over a proxy app.

Real parts only: the recording upstream and a redirector on loopback (``aiohttp_server``), a real
``redis-server`` (tests/fixtures_redis.py) where Redis is wired, a plain TCP listener where only
"was anything connected?" matters.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient, AiohttpServer
from redis.asyncio import Redis
from yarl import URL

from proxy.app import create_admin, create_app, create_ops_app
from proxy.cache import LocalCache, RedisCache, TieredCache
from proxy.config import Settings
from proxy.core.engine import Engine
from proxy.core.policy import Policy
from proxy.core.rollout import FlagSnapshot
from proxy.flags import RedisFlagStore, StaticFlags
from proxy.health import Health
from proxy.redisconn import parse_redis_url
from proxy.resolver import ResolverSettings, ShortLinkResolver
from proxy.services import SERVICES
from proxy.tasks import Tasks
from tests.conftest import MOMENTS, Recorder, fixed_clock
from tests.fixtures_redis import RedisServer
from tests.local import free_port

JSON = {"Content-Type": "application/json"}
TAOBAO = "https://item.taobao.com/item.htm?id=1"
TOKEN = "test-admin-token-0123456789"
MakeSettings = Callable[..., Settings]
Upstream = tuple[Recorder, TestServer]
Client = TestClient[web.Request, web.Application]


def live_cart(url: str) -> bytes:
    return orjson.dumps({"seller_id": "s1", "items": [{"item_id": "1", "url": url}]})


@asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[Client]:
    """``app`` started on loopback for the block, then shut down and cleaned up."""
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def watchers() -> list[asyncio.Task[Any]]:
    """Live flag-watcher tasks (``RedisFlagStore.start`` names its task so)."""
    return [t for t in asyncio.all_tasks() if t.get_name() == "flag-watcher" and not t.done()]


@contextmanager
def network_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record (and refuse) every outgoing connection or name lookup made inside the block."""
    attempts: list[str] = []

    def refuse(what: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{what}{args[1:] if what.startswith('socket.') else args}")
            raise OSError(f"network use during create_app: {what}")

        return call

    with monkeypatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse("socket.connect"))
        patch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
        patch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
        patch.setattr(socket, "create_connection", refuse("create_connection"))
        yield attempts


class Listener:
    """A loopback TCP port that counts connections and hangs up at once."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class Redirector:
    """A shortener on loopback: ``/s/<n>`` redirects to ``/final``."""

    async def handle(self, request: web.Request) -> web.Response:
        if request.path.startswith("/s/"):
            return web.Response(status=302, headers={"Location": "/final"})
        return web.Response(text="landing")


@pytest.fixture
async def shortener(aiohttp_server: AiohttpServer) -> tuple[str, ResolverSettings]:
    """The redirector's base URL and resolver settings that allow it (loopback, its port)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", Redirector().handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    assert server.port is not None
    settings = ResolverSettings.build(shorteners=["127.0.0.1", "t.cn"], allow_ports=[server.port],
                                      allow_networks=["127.0.0.0/8"])
    return f"http://127.0.0.1:{server.port}", settings


async def connected_clients(client: Redis) -> int:
    info = await client.info("clients")
    return int(info["connected_clients"])


# --- nothing before start ------------------------------------------------------------------------

async def test_building_touches_no_network(make_settings: MakeSettings, policy: Policy,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An unresolvable upstream and Redis on a closed port still build, without a connection,
    a lookup or a background task."""
    settings = make_settings(upstream=URL("http://cart-upstream.invalid:8081"),
                             redis=parse_redis_url(f"redis://127.0.0.1:{free_port()}/0"))
    with network_guard(monkeypatch) as attempts:
        app = create_app(settings, clock=fixed_clock("after"), registry=CollectorRegistry())
        await asyncio.sleep(0.05)  # anything scheduled by create_app would run now
    services = app[SERVICES]
    try:
        assert attempts == []
        assert len(services.tasks) == 0
        assert watchers() == []
        assert isinstance(services.flags, RedisFlagStore)
        assert services.flags.revision is None  # never read
        assert services.flags.snapshot() == FlagSnapshot.from_policy(policy.rollout)
        with pytest.raises(RuntimeError, match="not started"):
            services.upstream.pool  # noqa: B018 - the pool exists only once the app runs
    finally:
        assert services.redis is not None
        await services.redis.aclose()


async def test_redis_is_first_contacted_at_start_and_its_absence_fails_nothing(
    make_settings: MakeSettings, upstream: Upstream
) -> None:
    recorder, server = upstream
    listener = Listener()
    async with listener as redis_port:
        settings = make_settings(upstream=server.make_url("/"),
                                 redis=parse_redis_url(f"redis://127.0.0.1:{redis_port}/0"))
        app = create_app(settings, clock=fixed_clock("after"), registry=CollectorRegistry())
        await asyncio.sleep(0.05)
        assert listener.connections == 0
        async with running(app) as client:
            assert listener.connections >= 1  # the store's first read, at start
            assert len(watchers()) == 1
            response = await client.post("/v1/live/r1/cart/items", data=live_cart(TAOBAO),
                                         headers=JSON)
            assert response.status == 422  # the policy's flags serve while Redis is away
            assert (await client.get("/plain")).status == 200
        assert watchers() == []
    assert [r.path_qs for r in recorder.requests] == ["/plain"]


# --- what is wired ------------------------------------------------------------------------------

def example_path(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", template)


async def test_services_without_redis(make_settings: MakeSettings, policy: Policy,
                                      upstream: Upstream) -> None:
    _, server = upstream
    settings = make_settings(upstream=server.make_url("/"))
    registry, health, clock = CollectorRegistry(), Health(), fixed_clock("before")
    app = create_app(settings, clock=clock, registry=registry, health=health)
    services = app[SERVICES]
    assert services.settings is settings
    assert isinstance(services.engine, Engine)
    assert services.engine.policy is policy
    assert isinstance(services.flags, StaticFlags)
    assert services.flags.snapshot() == FlagSnapshot.from_policy(policy.rollout)
    assert services.redis is None
    assert isinstance(services.cache, LocalCache)
    assert isinstance(services.resolver, ShortLinkResolver)  # the policy lists shorteners
    assert services.resolver.settings is settings.resolver
    assert (services.inspector.engine, services.inspector.flags, services.inspector.resolver) == (
        services.engine, services.flags, services.resolver)
    assert services.clock is clock
    assert services.health is health
    assert services.metrics.registry is registry
    assert isinstance(services.tasks, Tasks)
    for route in policy.routes:
        match = services.routes.match(route.method, example_path(route.path))
        assert match is not None, route.id
        assert match.route.id == route.id
    assert services.routes.match("GET", "/healthz") is None
    # Gauges exist from the start: the policy's identity and its rollout.
    assert registry.get_sample_value("cart_link_proxy_policy_info",
                                     {"version": policy.version, "name": policy.name}) == 1
    assert registry.get_sample_value("cart_link_proxy_kill_switch") == 0
    for surface in policy.surfaces:
        assert registry.get_sample_value("cart_link_proxy_rollout_mode",
                                         {"surface": surface, "mode": "enforce"}) == 1


async def test_each_app_gets_its_own_health_and_tasks(make_settings: MakeSettings) -> None:
    one = create_app(make_settings(), clock=fixed_clock("after"), registry=CollectorRegistry())
    two = create_app(make_settings(), clock=fixed_clock("after"), registry=CollectorRegistry())
    assert one[SERVICES].health is not two[SERVICES].health
    assert one[SERVICES].tasks is not two[SERVICES].tasks


async def test_no_resolver_without_shorteners(make_settings: MakeSettings, policy: Policy) -> None:
    quiet = replace(policy, shorteners=frozenset())
    app = create_app(make_settings(policy=quiet), clock=fixed_clock("after"),
                     registry=CollectorRegistry())
    assert app[SERVICES].resolver is None
    assert app[SERVICES].inspector.resolver is None


async def test_services_with_redis(make_settings: MakeSettings, policy: Policy, upstream: Upstream,
                                   redis_server: RedisServer) -> None:
    """A RedisFlagStore (read at start, not before) and a tiered cache on the one client;
    all of it closed on cleanup."""
    _, server = upstream
    other = Redis.from_url(redis_server.url)
    try:
        # Another replica turned the kill switch on before this one starts.
        writer = RedisFlagStore.for_policy(other, policy, clock=fixed_clock("after"))
        await writer.set_kill_switch(True, actor="test")
        settings = make_settings(upstream=server.make_url("/"),
                                 redis=parse_redis_url(redis_server.url))
        registry = CollectorRegistry()
        app = create_app(settings, clock=fixed_clock("after"), registry=registry)
        services = app[SERVICES]
        assert isinstance(services.redis, Redis)
        assert isinstance(services.flags, RedisFlagStore)
        assert services.inspector.flags is services.flags
        assert isinstance(services.cache, TieredCache)
        assert isinstance(services.cache.local, LocalCache)
        assert isinstance(services.cache.remote, RedisCache)
        assert services.flags.snapshot().kill_switch is False  # the policy's, until start
        assert registry.get_sample_value("cart_link_proxy_kill_switch") == 0
        async with running(app) as client:
            assert services.flags.snapshot().kill_switch is True
            assert services.flags.revision == 1
            assert registry.get_sample_value("cart_link_proxy_kill_switch") == 1
            assert len(watchers()) == 1
            response = await client.post("/v1/live/r1/cart/items", data=live_cart(TAOBAO),
                                         headers=JSON)
            assert response.status == 200  # killed: allowed, and recorded as shadow
            assert "Link-Policy-Shadow" in response.headers
            assert await connected_clients(other) >= 2
        assert watchers() == []
        deadline = time.monotonic() + 5
        while await connected_clients(other) > 1:  # only ours is left once the app's are closed
            assert time.monotonic() < deadline, "the app left Redis connections open"
            await asyncio.sleep(0.02)
    finally:
        await other.aclose()


# --- who owns what ------------------------------------------------------------------------------

async def test_owned_parts_are_started_and_closed(
    make_settings: MakeSettings, upstream: Upstream, shortener: tuple[str, ResolverSettings]
) -> None:
    _, server = upstream
    base, resolver_settings = shortener
    settings = make_settings(upstream=server.make_url("/"), resolver=resolver_settings)
    app = create_app(settings, clock=fixed_clock("after"), registry=CollectorRegistry())
    services = app[SERVICES]
    resolver = services.resolver
    assert isinstance(resolver, ShortLinkResolver)
    assert await resolver.resolve_many([f"{base}/s/0"]) == {f"{base}/s/0": None}  # no session yet
    async with running(app) as client:
        assert await resolver.resolve_many([f"{base}/s/1"]) == {f"{base}/s/1": f"{base}/final"}
        assert (await client.get("/through")).status == 200
        assert services.upstream.pool is not None
    assert await resolver.resolve_many([f"{base}/s/2"]) == {f"{base}/s/2": None}  # closed
    with pytest.raises(RuntimeError, match="not started"):
        services.upstream.pool  # noqa: B018 - the pool is closed and dropped
    with pytest.raises(RuntimeError, match="closed"):
        services.tasks.spawn(asyncio.sleep(0), name="after-cleanup")


@pytest.mark.parametrize("fails", ["resolver start", "resolver close"])
async def test_a_failing_part_does_not_keep_the_others_open(
    make_settings: MakeSettings, upstream: Upstream, shortener: tuple[str, ResolverSettings],
    monkeypatch: pytest.MonkeyPatch, fails: str,
) -> None:
    """A part that fails to start or to close (injected here) leaves no other part open: the
    upstream pool and the task set are closed all the same."""
    _, server = upstream
    settings = make_settings(upstream=server.make_url("/"), resolver=shortener[1])
    app = create_app(settings, clock=fixed_clock("after"), registry=CollectorRegistry())
    services = app[SERVICES]

    async def broken(self: ShortLinkResolver) -> None:
        raise OSError(f"injected: {fails}")

    monkeypatch.setattr(ShortLinkResolver, "start" if fails == "resolver start" else "aclose",
                        broken)
    runner = web.AppRunner(app)

    async def start_and_stop() -> None:
        await runner.setup()  # the app's startup: cleanup_ctx up to its yield
        assert services.upstream.pool is not None
        await runner.cleanup()

    with pytest.raises(OSError, match="injected"):
        await start_and_stop()
    with pytest.raises(RuntimeError, match="not started"):
        services.upstream.pool  # noqa: B018 - closed although the resolver failed
    with pytest.raises(RuntimeError, match="closed"):
        services.tasks.spawn(asyncio.sleep(0), name="after-cleanup")
    monkeypatch.undo()
    assert isinstance(services.resolver, ShortLinkResolver)
    await services.resolver.aclose()  # the session the broken close left open


async def test_injected_parts_are_used_and_left_open(
    make_settings: MakeSettings, policy: Policy, engine: Engine, upstream: Upstream,
    redis_server: RedisServer, shortener: tuple[str, ResolverSettings],
) -> None:
    """The caller's engine, flag store and resolver are used as given; the app neither builds
    its own nor stops or closes the caller's, even with Redis configured."""
    _, server = upstream
    base, resolver_settings = shortener
    mine = Redis.from_url(redis_server.url)
    tasks = Tasks()
    flags = RedisFlagStore.for_policy(mine, policy, clock=fixed_clock("after"), spawn=tasks.spawn)
    resolver = ShortLinkResolver(resolver_settings, clock=time.monotonic)
    await flags.start()
    await resolver.start()
    try:
        settings = make_settings(upstream=server.make_url("/"),
                                 redis=parse_redis_url(redis_server.url))
        app = create_app(settings, clock=fixed_clock("after"), registry=CollectorRegistry(),
                         engine=engine, flags=flags, resolver=resolver)
        services = app[SERVICES]
        assert services.engine is engine
        assert services.inspector.engine is engine
        assert services.flags is flags
        assert services.inspector.flags is flags
        assert services.resolver is resolver
        assert services.inspector.resolver is resolver
        assert isinstance(services.cache, TieredCache)  # the app's own client still serves it
        async with running(app) as client:
            assert len(watchers()) == 1  # the caller's; the app started no store of its own
            assert (await client.get("/through")).status == 200
        assert len(watchers()) == 1  # still watching after the app's cleanup
        other = Redis.from_url(redis_server.url)
        try:
            await RedisFlagStore.for_policy(other, policy, clock=fixed_clock("after")) \
                .set_kill_switch(True, actor="test")
        finally:
            await other.aclose()
        deadline = time.monotonic() + 3
        while not flags.snapshot().kill_switch:  # the caller's store still follows Redis
            assert time.monotonic() < deadline, "the injected store stopped watching"
            await asyncio.sleep(0.02)
        assert await mine.ping()
        assert await resolver.resolve_many([f"{base}/s/9"]) == {f"{base}/s/9": f"{base}/final"}
    finally:
        await flags.stop()
        await tasks.aclose()
        await resolver.aclose()
        await mine.aclose()


# --- the operations and admin apps --------------------------------------------------------------

def requests_total(text: str) -> float:
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == "cart_link_proxy_requests_total")


async def test_ops_app_serves_its_own_proxys_metrics_and_health(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, upstream: Upstream
) -> None:
    recorder, server = upstream
    settings = make_settings(upstream=server.make_url("/"))
    health = Health()
    app = create_app(settings, clock=fixed_clock("after"), registry=CollectorRegistry(),
                     health=health)
    neighbour = create_app(settings, clock=fixed_clock("after"), registry=CollectorRegistry())
    ops = await aiohttp_client(create_ops_app(app))
    neighbour_ops = await aiohttp_client(create_ops_app(neighbour))
    proxy = await aiohttp_client(app)
    assert (await proxy.get("/v1/other")).status == 200
    response = await ops.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    assert requests_total(await response.text()) == 1
    assert requests_total(await (await neighbour_ops.get("/metrics")).text()) == 0
    health.draining = True  # the Health given to create_app is the one served
    assert (await ops.get("/readyz")).status == 503
    assert (await ops.get("/healthz")).status == 200
    assert (await neighbour_ops.get("/readyz")).status == 200
    for path in ("/", "/v1/live/r1/cart", "/flags"):  # nothing else, and nothing proxied
        assert (await ops.get(path)).status == 404
    assert [r.path_qs for r in recorder.requests] == ["/v1/other"]


async def test_admin_needs_the_settings_token(make_settings: MakeSettings) -> None:
    app = create_app(make_settings(), clock=fixed_clock("after"), registry=CollectorRegistry())
    with pytest.raises(ValueError, match="CART_PROXY_ADMIN_TOKEN"):
        create_admin(app)
    empty = create_app(make_settings(admin_token=""), clock=fixed_clock("after"),
                       registry=CollectorRegistry())
    with pytest.raises(ValueError, match="CART_PROXY_ADMIN_TOKEN"):
        create_admin(empty)


async def test_admin_serves_the_proxys_flags_engine_and_clock(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, policy: Policy, engine: Engine
) -> None:
    killed = StaticFlags(replace(policy, rollout=replace(policy.rollout, kill_switch=True)))
    app = create_app(make_settings(admin_token=TOKEN), clock=fixed_clock("before"),
                     registry=CollectorRegistry(), engine=engine, flags=killed)
    admin = await aiohttp_client(create_admin(app))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await admin.get("/flags", headers={"Authorization": "Bearer wrong"})).status == 401
    response = await admin.get("/flags", headers=auth)
    assert response.status == 200
    document = await response.json()
    assert document["source"] == "policy"
    assert document["flags"] == killed.snapshot().to_json()
    assert document["flags"]["kill_switch"] is True
    response = await admin.post("/explain", headers=auth,
                                json={"text": TAOBAO, "surface": "livestream_cart"})
    record = await response.json()
    # No "at": the proxy's clock, which stands before the cutoff.
    assert record["at"] == MOMENTS["before"].isoformat()
    assert record["action"] == "allow"
    assert [p["rule"] for p in record["pending"]] == ["taobao-cutoff-2022"]
    assert record["rollout"]["kill_switch"] is True
    assert (await admin.put("/flags/kill", headers=auth, json={"on": False})).status == 503

