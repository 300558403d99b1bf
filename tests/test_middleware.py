"""``policy_middleware`` inside a cart service: same decisions and errors as the proxy."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.demo import create_demo_app
from proxy.metrics import ProxyMetrics
from proxy.middleware import policy_middleware
from tests.conftest import fixed_clock

TAOBAO = "https://item.taobao.com/item.htm?id=1"
JD = "https://item.jd.com/1.html"


async def _client(aiohttp_client: Any, engine: Any, at: str = "after", **kw: Any) -> Any:
    app = create_demo_app()
    app.middlewares.append(policy_middleware(engine=engine, clock=fixed_clock(at), **kw))
    return await aiohttp_client(app)


async def test_block_allow_and_response_rewrite(aiohttp_client: Any, engine: Any) -> None:
    registry = CollectorRegistry()
    client = await _client(aiohttp_client, engine, metrics=ProxyMetrics(registry))
    items = {"items": [{"item_id": "1", "title": "t", "url": TAOBAO}]}
    response = await client.post("/v1/live/r1/cart/items", json=items)
    assert response.status == 422
    problem = await response.json(content_type="application/problem+json")
    assert problem["links"][0]["pointer"] == "/items/0/url"
    items["items"][0]["url"] = JD
    response = await client.post("/v1/videos/v1/cart/items", json=items)
    assert response.status == 201
    cart = orjson.loads(await response.read())
    assert cart["items"][0]["url"] == JD
    response = await client.get("/v1/live/r1/cart")
    cart = orjson.loads(await response.read())
    assert "notice/external-link" in cart["items"][0]["url"]
    assert response.headers["Link-Policy-Rewritten"] == 'count=1; pointers="#/items/0/url"'
    assert registry.get_sample_value("cart_link_proxy_links_total", {
        "surface": "livestream_cart", "platform": "taobao", "kind": "item", "action": "block",
        "mode": "enforce"}) == 1


async def test_before_cutoff_headers_and_bad_input(aiohttp_client: Any, engine: Any) -> None:
    client = await _client(aiohttp_client, engine, at="before")
    items = {"items": [{"item_id": "1", "title": "t", "url": TAOBAO}]}
    response = await client.post("/v1/live/r1/cart/items", json=items)
    assert response.status == 201
    assert "Sunset" in response.headers
    response = await client.post("/v1/live/r1/cart/items", data=b'{"a":1,"a":2}',
                                 headers={"Content-Type": "application/json"})
    assert response.status == 400
    response = await client.post("/v1/live/r1/cart/items", data=b"x",
                                 headers={"Content-Type": "text/plain"})
    assert response.status == 415


async def test_gzip_body_decoded_by_the_host_server(aiohttp_client: Any, engine: Any) -> None:
    client = await _client(aiohttp_client, engine)
    body = gzip.compress(orjson.dumps({"items": [{"item_id": "1", "url": TAOBAO}]}))
    response = await client.post("/v1/videos/v1/cart/items", data=body, headers={
        "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status == 422


async def test_unrouted_requests_are_untouched(aiohttp_client: Any, engine: Any) -> None:
    client = await _client(aiohttp_client, engine)
    response = await client.get("/")
    assert response.status == 200
    assert await response.json() == {"service": "cart-link-proxy demo cart"}


async def test_strip_edits_the_body_the_handler_reads(aiohttp_client: Any, engine: Any) -> None:
    from dataclasses import replace

    from proxy.core.model import Action
    from proxy.policyfile import build_engine

    policy = engine.policy
    custom = replace(policy, rules=(replace(policy.rules[0], action=Action.STRIP),
                                    policy.rules[1]))
    seen: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({})

    app = web.Application(middlewares=[policy_middleware(engine=build_engine(custom),
                                                         clock=fixed_clock("after"))])
    app.router.add_post("/v1/videos/{video_id}/cart/items", handler)
    client = await aiohttp_client(app)
    response = await client.post("/v1/videos/v1/cart/items", json={"items": [
        {"url": TAOBAO}, {"url": JD}]})
    assert response.status == 200
    assert seen == [{"items": [{"url": JD}]}]
    assert response.headers["Link-Policy-Stripped"] == 'count=1; pointers="#/items/0"'


def _recording_cart(engine: Any, seen: list[Any], stored: list[str]) -> web.Application:
    """A cart service behind the middleware that records the headers its handlers get; its live
    cart holds ``stored`` URLs and is served with a validator and a digest."""

    async def read(request: web.Request) -> web.Response:
        seen.append(request.headers.copy())
        items = [{"item_id": str(i), "url": url} for i, url in enumerate(stored)]
        return web.json_response({"items": items}, headers={
            "ETag": '"v7"', "Content-Digest": "sha-256=:AAAA:",
            "Last-Modified": "Tue, 01 Mar 2022 00:00:00 GMT"})

    async def write(request: web.Request) -> web.Response:
        seen.append(request.headers.copy())
        return web.json_response(await request.json())

    app = web.Application(middlewares=[policy_middleware(engine=engine, clock=fixed_clock("after"))])
    app.router.add_get("/v1/live/{room_id}/cart", read)
    app.router.add_post("/v1/live/{room_id}/cart/items", write)
    return app


async def test_routed_read_handler_sees_no_range_or_condition(aiohttp_client: Any,
                                                              engine: Any) -> None:
    """As in the proxy: the handler answers with the whole current document to inspect."""
    seen: list[Any] = []
    client = await aiohttp_client(_recording_cart(engine, seen, [TAOBAO]))
    conditional = {"Range": "bytes=0-5", "If-Range": '"v7"', "If-None-Match": '"v7"',
                   "If-Modified-Since": "Tue, 01 Mar 2022 00:00:00 GMT", "If-Match": '"v7"'}
    response = await client.get("/v1/live/r1/cart", headers=conditional)
    assert response.status == 200
    assert [name for name in conditional if name in seen[0]] == ["If-Match"]


async def test_routed_read_validators_follow_the_body(aiohttp_client: Any, engine: Any) -> None:
    edited = await aiohttp_client(_recording_cart(engine, [], [TAOBAO]))
    response = await edited.get("/v1/live/r1/cart")
    assert "Link-Policy-Rewritten" in response.headers
    assert ("ETag" in response.headers, "Content-Digest" in response.headers,
            "Last-Modified" in response.headers) == (False, False, True)
    unchanged = await aiohttp_client(_recording_cart(engine, [], ["https://example.org/x"]))
    response = await unchanged.get("/v1/live/r1/cart")
    assert (response.headers["ETag"], response.headers["Content-Digest"]) == \
        ('"v7"', "sha-256=:AAAA:")


async def test_edited_write_drops_the_request_digests(aiohttp_client: Any, engine: Any) -> None:
    from dataclasses import replace

    from proxy.core.model import Action
    from proxy.policyfile import build_engine

    policy = engine.policy
    stripping = build_engine(replace(policy, rules=(replace(policy.rules[0], action=Action.STRIP),
                                                    *policy.rules[1:])))
    seen: list[Any] = []
    client = await aiohttp_client(_recording_cart(stripping, seen, []))
    digests = {"Content-Digest": "sha-256=:AAAA:", "Repr-Digest": "sha-256=:AAAA:",
               "Digest": "md5=AAAA", "Content-MD5": "AAAA"}
    for urls, kept in (([TAOBAO, "https://example.org/x"], []),
                       (["https://example.org/x"], list(digests))):
        response = await client.post("/v1/live/r1/cart/items", headers=digests,
                                     json={"items": [{"url": u} for u in urls]})
        assert response.status == 200
        assert [name for name in digests if name in seen[-1]] == kept


async def test_proxy_middleware_is_the_three_in_one(aiohttp_client: Any) -> None:
    """Request id, metrics and problem rendering as ``request_id_middleware``,
    ``metrics_middleware`` and ``problem_middleware`` do them, outermost first."""
    from proxy.errors import MalformedJSON
    from proxy.middleware import proxy_middleware

    registry = CollectorRegistry()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def bad(request: web.Request) -> web.Response:
        raise MalformedJSON("nope")

    async def bug(request: web.Request) -> web.Response:
        raise RuntimeError("bug")

    async def gone(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    app = web.Application(middlewares=[proxy_middleware(ProxyMetrics(registry))])
    for path, handler in (("/ok", ok), ("/bad", bad), ("/bug", bug), ("/gone", gone)):
        app.router.add_get(path, handler)
    client = await aiohttp_client(app)
    response = await client.get("/ok", headers={"X-Request-Id": "rid-1"})
    assert (response.status, response.headers["X-Request-Id"]) == (200, "rid-1")
    response = await client.get("/bad")
    problem = await response.json(content_type="application/problem+json")
    assert response.status == 400
    assert problem["request_id"] == response.headers["X-Request-Id"]
    assert len(problem["request_id"]) == 32
    response = await client.get("/bug")
    assert response.status == 500
    assert (await response.json(content_type=None))["type"].endswith("internal-error")
    assert (await client.get("/gone")).status == 404

    def requests(status_class: str) -> float | None:
        return registry.get_sample_value("cart_link_proxy_requests_total", {
            "route": "passthrough", "surface": "none", "method": "GET",
            "status_class": status_class})

    assert (requests("2xx"), requests("4xx"), requests("5xx")) == (1, 2, 1)
    assert registry.get_sample_value("cart_link_proxy_bad_input_total",
                                     {"reason": "malformed-json"}) == 1
    assert registry.get_sample_value("cart_link_proxy_in_flight_requests") == 0
