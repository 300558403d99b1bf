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
