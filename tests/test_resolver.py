"""proxy.resolver against a real redirector on loopback (which the test config allows)."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from redis.asyncio import Redis

from proxy.breaker import CircuitBreaker, RedisGuard
from proxy.cache import RESOLVE_SCOPE, LocalCache, RedisCache, TieredCache, cache_key
from proxy.errors import ConfigError, ResolveError, ResolveRefused
from proxy.resolver import ResolverSettings, ShortLinkResolver, address_refusal, build_session
from proxy.tasks import Tasks

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from tests.fixtures_redis import RedisServer



class Redirector:
    """Counts requests by method and path; every route is a small redirect scenario."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append((request.method, request.path))
        path = request.path
        if path.startswith("/chain/"):
            left = int(path.rsplit("/", 1)[1])
            target = f"/chain/{left - 1}" if left > 1 else "/final"
            return web.Response(status=302, headers={"Location": target})
        if path == "/final":
            return web.Response(text="landing")
        if path == "/absolute":
            return web.Response(status=301, headers={
                "Location": "https://item.taobao.com/item.htm?id=42"})
        if path == "/head-refused":
            if request.method == "HEAD":
                return web.Response(status=405)
            return web.Response(status=302, headers={"Location": "/final"})
        if path == "/loop-a":
            return web.Response(status=307, headers={"Location": "/loop-b"})
        if path == "/loop-b":
            return web.Response(status=308, headers={"Location": "/loop-a"})
        if path == "/slow":
            await asyncio.sleep(1.0)
            return web.Response(status=302, headers={"Location": "/final"})
        if path == "/to-private":
            return web.Response(status=302, headers={"Location": "http://10.0.0.1/admin"})
        if path == "/to-metadata":
            return web.Response(status=302, headers={
                "Location": "http://169.254.169.254/latest/meta-data/"})
        if path == "/to-app":
            return web.Response(status=302, headers={"Location": "tbopen://m.taobao.com/x?id=7"})
        if path.startswith("/to-closed/"):
            port = path.rsplit("/", 1)[1]
            return web.Response(status=302, headers={"Location": f"http://127.0.0.1:{port}/x"})
        if path == "/big":
            return web.Response(body=b"x" * (4 * 1024 * 1024))
        return web.Response(status=404)


@pytest.fixture
async def redirector(aiohttp_server) -> tuple[Redirector, str, int]:
    target = Redirector()
    server = await aiohttp_server(target.app(), host="127.0.0.1")
    return target, f"http://127.0.0.1:{server.port}", server.port


class Outcomes:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def observe_resolve(self, *, outcome: str, seconds: float) -> None:
        self.seen.append(outcome)


@pytest.fixture
async def make_resolver() -> AsyncIterator[Callable[..., ShortLinkResolver]]:
    sessions = []

    def build(*, port: int, loopback: bool = True, cache=None, metrics=None, allow_ports=None,
              **options):
        settings = ResolverSettings.build(
            shorteners=["127.0.0.1", "localhost", "t.cn"],
            allow_ports=allow_ports or [port],
            allow_networks=["127.0.0.0/8"] if loopback else [],
            **options,
        )
        session = build_session(settings)
        sessions.append(session)
        return ShortLinkResolver(settings, session, clock=time.monotonic, cache=cache,
                                 metrics=metrics)

    yield build
    for session in sessions:
        await session.close()


# Pure parts -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("10.0.0.1", "private address"),
        ("192.168.1.1", "private address"),
        ("172.16.0.1", "private address"),
        ("127.0.0.1", "loopback address"),
        ("::1", "loopback address"),
        ("169.254.169.254", "link-local address"),
        ("fe80::1", "link-local address"),
        ("0.0.0.0", "unspecified address"),
        ("::", "unspecified address"),
        ("224.0.0.1", "multicast address"),
        ("ff02::1", "multicast address"),
        ("240.0.0.1", "reserved address"),
        ("100.64.0.1", "non-public address"),
        ("::ffff:127.0.0.1", "loopback address"),
        ("::ffff:10.1.2.3", "private address"),
        ("fd00::1", "private address"),
    ],
    ids=lambda v: str(v),
)
def test_address_refusal(address, reason):
    assert address_refusal(ipaddress.ip_address(address)) == reason


def test_allow_networks_exempt_only_what_they_cover():
    allow = (ipaddress.ip_network("127.0.0.0/8"),)
    assert address_refusal(ipaddress.ip_address("127.0.0.1"), allow) is None
    assert address_refusal(ipaddress.ip_address("10.0.0.1"), allow) == "private address"


@pytest.mark.parametrize(("host", "listed"), [
    ("t.cn", True), ("T.CN.", True), ("a.t.cn", True), ("nott.cn", False),
    ("t.cn.evil.com", False), ("", False), (None, False),
], ids=["exact", "case-dot", "subdomain", "suffix-not-label", "prefix", "empty", "none"])
def test_shortener_hosts_match_by_label(host, listed):
    assert ResolverSettings.build(shorteners=["t.cn"]).is_shortener(host) is listed


@pytest.mark.parametrize(("options", "message"), [
    ({"allow_ports": [0]}, "allow_ports"),
    ({"allow_networks": ["not-a-net"]}, "allow_networks"),
    ({"max_hops": 0}, "max_hops"),
], ids=["port", "network", "hops"])
def test_settings_are_validated(options, message):
    with pytest.raises(ConfigError, match=f"links.shorteners: {message}"):
        ResolverSettings.build(shorteners=["t.cn"], **options)


# Following redirects ---------------------------------------------------------------------------

async def test_follows_hops_to_the_final_url(redirector, make_resolver):
    target, base, port = redirector
    resolution = await make_resolver(port=port).resolve(f"{base}/chain/3")
    assert resolution.final == f"{base}/final"
    assert resolution.chain == (f"{base}/chain/3", f"{base}/chain/2", f"{base}/chain/1",
                                f"{base}/final")
    assert {method for method, _ in target.hits} == {"HEAD"}


async def test_ends_at_an_external_destination_without_fetching_app_links(redirector,
                                                                          make_resolver):
    _, base, port = redirector
    resolver = make_resolver(port=port)
    assert (await resolver.resolve(f"{base}/to-app")).final == "tbopen://m.taobao.com/x?id=7"


async def test_an_unreachable_destination_is_where_the_link_leads(redirector, make_resolver):
    from tests.local import free_port

    _, base, port = redirector
    closed = free_port()
    resolver = make_resolver(port=port, allow_ports=[port, closed])
    resolution = await resolver.resolve(f"{base}/to-closed/{closed}")
    assert resolution.final == f"http://127.0.0.1:{closed}/x"
    assert resolution.complete is False
    assert (await resolver.resolve(f"{base}/final")).complete is True


async def test_head_refused_falls_back_to_get(redirector, make_resolver):
    target, base, port = redirector
    resolution = await make_resolver(port=port).resolve(f"{base}/head-refused")
    assert resolution.final == f"{base}/final"
    assert target.hits[:2] == [("HEAD", "/head-refused"), ("GET", "/head-refused")]


async def test_redirect_loop(redirector, make_resolver):
    _, base, port = redirector
    with pytest.raises(ResolveError, match="redirect loop"):
        await make_resolver(port=port).resolve(f"{base}/loop-a")


async def test_five_hops_pass_six_are_too_many(redirector, make_resolver):
    _, base, port = redirector
    resolver = make_resolver(port=port)
    assert (await resolver.resolve(f"{base}/chain/5")).final == f"{base}/final"
    with pytest.raises(ResolveError, match="more than 5 redirects"):
        await resolver.resolve(f"{base}/chain/6")


async def test_timeout_within_the_budget(redirector, make_resolver):
    _, base, port = redirector
    resolver = make_resolver(port=port, budget=0.2)
    started = time.monotonic()
    with pytest.raises(ResolveError, match="not resolved within"):
        await resolver.resolve(f"{base}/slow")
    assert time.monotonic() - started < 0.5
    assert (await resolver.resolve_many([f"{base}/slow"])) == {f"{base}/slow": None}


async def test_big_bodies_are_read_to_the_bound_only(redirector, make_resolver):
    _, base, port = redirector
    resolution = await make_resolver(port=port, max_body=1024).resolve(f"{base}/big")
    assert resolution.final == f"{base}/big"


# SSRF guard ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://10.0.0.1/x", "private address"),
        ("http://169.254.169.254/latest/meta-data/", "link-local address"),
        ("http://[::1]/", "loopback address"),
        ("http://0.0.0.0/", "unspecified address"),
        ("http://224.0.0.1/", "multicast address"),
        ("http://[::ffff:169.254.169.254]/", "link-local address"),
        ("ftp://t.cn/x", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("http://user:secret@t.cn/x", "credentials"),
        ("http://t.cn:22/x", "port 22 is not allowed"),
    ],
    ids=["private", "metadata", "ipv6-loopback", "unspecified", "multicast", "mapped-metadata",
         "ftp", "file", "credentials", "port"],
)
async def test_refused_before_connecting(make_resolver, url, message):
    resolver = make_resolver(port=8080, loopback=False)
    with pytest.raises(ResolveRefused, match=message):
        await resolver.resolve(url)


async def test_credentials_refused_even_on_an_allowed_host(redirector, make_resolver):
    target, base, port = redirector
    with pytest.raises(ResolveRefused, match="credentials"):
        await make_resolver(port=port).resolve(base.replace("http://", "http://u:p@") + "/final")
    assert target.hits == []


async def test_hostname_resolving_to_loopback_is_refused(redirector, make_resolver):
    target, _, port = redirector
    resolver = make_resolver(port=port, loopback=False)
    with pytest.raises(ResolveRefused, match="resolves to no public address"):
        await resolver.resolve(f"http://localhost:{port}/final")
    assert target.hits == []


async def test_loopback_literal_refused_unless_allowed(redirector, make_resolver):
    target, base, port = redirector
    with pytest.raises(ResolveRefused, match="loopback"):
        await make_resolver(port=port, loopback=False).resolve(f"{base}/final")
    assert target.hits == []


@pytest.mark.parametrize("path", ["/to-private", "/to-metadata"])
async def test_redirect_into_a_private_network_is_refused(redirector, make_resolver, path):
    _, base, port = redirector
    with pytest.raises(ResolveRefused):
        await make_resolver(port=port).resolve(f"{base}{path}")


async def test_owns_its_session_when_none_is_given(redirector):
    _, base, port = redirector
    settings = ResolverSettings.build(shorteners=["127.0.0.1"], allow_ports=[port],
                                      allow_networks=["127.0.0.0/8"])
    resolver = ShortLinkResolver(settings, clock=time.monotonic)
    assert await resolver.resolve_many([f"{base}/chain/1"]) == {f"{base}/chain/1": None}
    await resolver.start()
    try:
        assert (await resolver.resolve(f"{base}/chain/1")).final == f"{base}/final"
    finally:
        await resolver.aclose()


# resolve_many and the cache --------------------------------------------------------------------

async def test_resolve_many_maps_each_url(redirector, make_resolver):
    _, base, port = redirector
    outcomes = Outcomes()
    resolver = make_resolver(port=port, metrics=outcomes)
    plain = "https://www.kuaishou.com/item/1"
    result = await resolver.resolve_many(
        [f"{base}/chain/2", f"{base}/to-private", plain, f"{base}/chain/2"]
    )
    assert result == {
        f"{base}/chain/2": f"{base}/final",
        f"{base}/to-private": None,
        plain: plain,  # not on a shortener: no I/O
    }
    assert sorted(outcomes.seen) == ["refused", "resolved"]


async def test_results_are_cached_locally(redirector, make_resolver):
    target, base, port = redirector
    cache = LocalCache(maxsize=100, clock=time.monotonic)
    resolver = make_resolver(port=port, cache=cache)
    await resolver.resolve_many([f"{base}/chain/1"])
    hits = len(target.hits)
    assert await resolver.resolve_many([f"{base}/chain/1"]) == {
        f"{base}/chain/1": f"{base}/final"
    }
    assert len(target.hits) == hits


async def test_results_are_shared_through_redis(redirector, make_resolver,
                                                redis_server: RedisServer):
    target, base, port = redirector
    tasks = Tasks()
    client = Redis.from_url(redis_server.url)
    try:
        def tiered() -> TieredCache:
            breaker = CircuitBreaker(clock=time.monotonic)
            return TieredCache(LocalCache(maxsize=100, clock=time.monotonic),
                               RedisCache(client, RedisGuard(breaker)), spawn=tasks.spawn)

        first = make_resolver(port=port, cache=tiered())
        await first.resolve_many([f"{base}/chain/2"])
        await asyncio.sleep(0.05)  # the write-back task
        key = cache_key(RESOLVE_SCOPE, f"{base}/chain/2")
        assert await client.get(key) == f"{base}/final".encode()
        hits = len(target.hits)
        second = make_resolver(port=port, cache=tiered())  # another replica, cold local tier
        assert await second.resolve_many([f"{base}/chain/2"]) == {
            f"{base}/chain/2": f"{base}/final"
        }
        assert len(target.hits) == hits
        assert 0 < await client.ttl(key) <= 24 * 3600
    finally:
        await tasks.aclose()
        await client.aclose()
