"""End to end through the real proxy app against a recording upstream."""

from __future__ import annotations

import asyncio
import gzip
import io
import zlib
from typing import Any

import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from yarl import URL

from proxy.config import NonJSON
from proxy.core.rollout import Flag, FlagSnapshot
from tests.conftest import CUTOFF

JSON = {"Content-Type": "application/json"}
TAOBAO = "https://item.taobao.com/item.htm?id=520000001"
JD = "https://item.jd.com/100012043978.html"
OWN = "https://app.kwaixiaodian.com/merchant/shop/detail?id=8"
TOKEN = "复制 ￥AbCdEfGh1234￥ 打开手机淘宝"


def cart(*urls: str, seller: str = "s1") -> bytes:
    items = [{"item_id": str(i), "title": f"商品 {i}", "url": u} for i, u in enumerate(urls)]
    return orjson.dumps({"seller_id": seller, "items": items})


# (surface write path, links, moment) -> expected status; every action on every surface.
WRITES = [
    ("/v1/live/r1/cart/items", TAOBAO, "before", 200),
    ("/v1/live/r1/cart/items", TAOBAO, "at", 422),
    ("/v1/live/r1/cart/items", TAOBAO, "after", 422),
    ("/v1/live/r1/cart/items", JD, "before", 200),
    ("/v1/live/r1/cart/items", JD, "after", 422),
    ("/v1/live/r1/cart/items", OWN, "after", 200),
    ("/v1/videos/v1/cart/items", TAOBAO, "before", 200),
    ("/v1/videos/v1/cart/items", TAOBAO, "after", 422),
    ("/v1/videos/v1/cart/items", JD, "after", 200),
    ("/v1/videos/v1/cart/items", OWN, "after", 200),
]


@pytest.mark.parametrize(("path", "url", "at", "status"), WRITES,
                         ids=[f"{p.split('/')[2]}-{u.split('/')[2]}-{a}" for p, u, a, _ in WRITES])
async def test_cart_writes(make_proxy: Any, upstream: Any, path: str, url: str, at: str,
                           status: int) -> None:
    recorder, _ = upstream
    client = await make_proxy(at=at)
    body = cart(url)
    response = await client.post(path, data=body, headers=JSON)
    assert response.status == status
    if status == 422:
        problem = await response.json()
        assert response.content_type == "application/problem+json"
        assert problem["links"][0]["pointer"] == "/items/0/url"
        assert problem["links"][0]["url"] == url
        assert problem["links"][0]["surface"] in ("livestream_cart", "short_video_cart")
        assert recorder.requests == []
    else:
        assert recorder.last.body == body  # the original bytes
    pending = response.headers.get("Link-Policy-Pending")
    if at == "before" and url in (TAOBAO, JD):
        assert pending is not None
        assert "effective=2022-03-01T00:00:00+08:00" in pending
        assert response.headers["Sunset"] == "Mon, 28 Feb 2022 16:00:00 GMT"
        assert response.headers["Deprecation"] == f"@{int(CUTOFF.timestamp())}"
    else:
        assert pending is None


@pytest.mark.parametrize("at", ["before", "after"])
async def test_product_update_token_in_free_text(make_proxy: Any, upstream: Any, at: str) -> None:
    recorder, _ = upstream
    client = await make_proxy(at=at)
    body = orjson.dumps({"seller_id": "s1", "title": "x", "description": TOKEN, "detail_url": JD})
    response = await client.put("/v1/products/p1", data=body, headers=JSON)
    if at == "after":
        assert response.status == 422
        problem = await response.json()
        assert [link["pointer"] for link in problem["links"]] == ["/description"]
        assert problem["links"][0]["kind"] == "password_token"
    else:
        assert response.status == 200
        assert recorder.last.body == body


async def test_live_update_is_blocked(make_proxy: Any, upstream: Any) -> None:
    client = await make_proxy()
    body = orjson.dumps({"seller_id": "s1", "title": f"看这里 {JD}"})
    response = await client.put("/v1/live/r1/cart/items/9", data=body, headers=JSON)
    assert response.status == 422
    assert (await response.json())["links"][0]["pointer"] == "/title"


def rollout(policy: Any, **changes: Any) -> Any:
    class Flags:
        def snapshot(self) -> FlagSnapshot:
            return FlagSnapshot(**changes)

    return Flags()


async def test_shadow_mode_forwards_unchanged_with_header(make_proxy: Any, upstream: Any,
                                                          policy: Any) -> None:
    recorder, _ = upstream
    client = await make_proxy(flags=rollout(policy, default=Flag(mode=_mode("shadow"))))
    body = cart(OWN, TAOBAO)
    response = await client.post("/v1/live/r1/cart/items", data=body, headers=JSON)
    assert response.status == 200
    assert recorder.last.body == body
    shadow = response.headers["Link-Policy-Shadow"]
    assert "action=block" in shadow
    assert "rule=taobao-cutoff-2022" in shadow
    assert 'pointers="#/items/1/url"' in shadow


async def test_off_mode_ignores_rule(make_proxy: Any, upstream: Any, policy: Any) -> None:
    client = await make_proxy(flags=rollout(policy, default=Flag(mode=_mode("off"))))
    response = await client.post("/v1/live/r1/cart/items", data=cart(TAOBAO), headers=JSON)
    assert response.status == 200
    assert "Link-Policy-Shadow" not in response.headers


def _mode(name: str) -> Any:
    from proxy.core.model import Mode

    return Mode(name)


async def test_strip_and_rewrite_with_a_custom_policy(
    aiohttp_client: Any, upstream: Any, engine: Any, registry: Any, make_settings: Any
) -> None:
    """strip (element and field) and rewrite on writes, from a policy edited as data."""
    from dataclasses import replace

    from proxy.app import create_app
    from proxy.core.model import Action
    from proxy.policyfile import build_engine
    from tests.conftest import fixed_clock

    recorder, server = upstream
    policy = engine.policy
    rules = (replace(policy.rules[0], action=Action.STRIP),
             replace(policy.rules[1], action=Action.REWRITE))
    custom = replace(policy, rules=rules)
    settings = replace(make_settings(upstream=server.make_url("/")), policy=custom)
    app = create_app(settings, clock=fixed_clock("after"), registry=registry,
                     engine=build_engine(custom))
    client = await aiohttp_client(app)
    response = await client.post("/v1/live/r1/cart/items", data=cart(OWN, TAOBAO, JD),
                                 headers={**JSON, "Content-Encoding": "identity"})
    assert response.status == 200
    sent = orjson.loads(recorder.last.body)
    assert [i["item_id"] for i in sent["items"]] == ["0", "2"]
    assert sent["items"][1]["url"].startswith("https://www.kuaishou.com/notice/external-link")
    assert response.headers["Link-Policy-Stripped"] == 'count=1; pointers="#/items/1"'
    assert response.headers["Link-Policy-Rewritten"] == 'count=1; pointers="#/items/2/url"'
    # strip: field on the PUT route drops the field only
    body = orjson.dumps({"seller_id": "s1", "title": "t", "url": TAOBAO})
    response = await client.put("/v1/live/r1/cart/items/1", data=body, headers=JSON)
    assert orjson.loads(recorder.last.body) == {"seller_id": "s1", "title": "t"}
    assert response.headers["Link-Policy-Stripped"] == 'count=1; pointers="#/url"'


async def test_routed_read_rewrites_published_links(make_proxy: Any, upstream: Any) -> None:
    recorder, _ = upstream
    stored = {"room_id": "r1", "items": [{"item_id": "1", "title": "旧", "url": TAOBAO},
                                         {"item_id": "2", "title": "ok", "url": OWN}]}

    async def reply(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response(stored, headers={"X-Cart-Version": "7"})

    recorder.reply = reply
    client = await make_proxy(at="after")
    response = await client.get("/v1/live/r1/cart")
    assert response.status == 200
    data = await response.read()
    assert int(response.headers["Content-Length"]) == len(data)
    doc = orjson.loads(data)
    assert doc["items"][0]["url"].startswith("https://www.kuaishou.com/notice/external-link")
    assert doc["items"][1]["url"] == OWN
    assert response.headers["X-Cart-Version"] == "7"
    before = await make_proxy(at="before")
    response = await before.get("/v1/live/r1/cart")
    assert orjson.loads(await response.read()) == stored


async def test_routed_read_of_gzip_response(make_proxy: Any, upstream: Any) -> None:
    recorder, _ = upstream
    stored = orjson.dumps({"items": [{"url": JD}, {"url": OWN}]})

    async def reply(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(body=gzip.compress(stored), content_type="application/json",
                            headers={"Content-Encoding": "gzip"})

    recorder.reply = reply
    client = await make_proxy(at="after")
    response = await client.get("/v1/videos/v1/cart", auto_decompress=False)
    assert response.headers["Content-Encoding"] == "gzip"  # nothing to change: as sent
    assert gzip.decompress(await response.read()) == stored
    response = await client.get("/v1/live/r1/cart", auto_decompress=False)
    assert "Content-Encoding" not in response.headers  # edited: sent decoded
    assert orjson.loads(await response.read())["items"][0]["url"].startswith("https://www.k")


async def test_passthrough_is_byte_exact(make_proxy: Any, upstream: Any) -> None:
    recorder, _ = upstream
    payload = bytes(range(256)) * 1000

    async def reply(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(body=body[::-1], status=207, headers={"X-Up": "1",
                                                                  "Connection": "X-Up"})

    recorder.reply = reply
    client = await make_proxy()
    response = await client.post(URL("/upload/r%C3%A9w?x=1&y=%2F", encoded=True), data=payload,
                                 headers={"Content-Type": "application/octet-stream",
                                          "X-Request-Id": "req-42", "Connection": "X-Drop",
                                          "X-Drop": "secret", "X-Forwarded-For": "10.1.1.1"})
    assert response.status == 207
    assert await response.read() == payload[::-1]
    assert recorder.last.body == payload
    assert recorder.last.path_qs == "/upload/r%C3%A9w?x=1&y=%2F"
    sent = recorder.last.headers
    assert "X-Drop" not in sent
    assert sent["X-Request-Id"] == "req-42"
    assert sent["X-Forwarded-For"] == "10.1.1.1, 127.0.0.1"
    assert sent["X-Forwarded-Proto"] == "http"
    assert response.headers["X-Request-Id"] == "req-42"
    assert "X-Up" not in response.headers  # named by the upstream's Connection header


@pytest.mark.parametrize(
    ("body", "headers", "status", "slug"),
    [
        (b'{"items": [', JSON, 400, "malformed-json"),
        (b'{"items": ["\xff"]}', JSON, 400, "invalid-encoding"),
        (b"items=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415,
         "unsupported-media-type"),
        (b'{"a":' * 70 + b"1" + b"}" * 70, JSON, 400, "json-too-deep"),
        (b'{"items": [], "items": [{"url": "x"}]}', JSON, 400, "malformed-json"),
        (b'{"x": "' + b"a" * (1024 * 1024 + 10) + b'"}', JSON, 413, "body-too-large"),
        (gzip.compress(b'{"x": "' + b"0" * (20 * 1024 * 1024) + b'"}'),
         {**JSON, "Content-Encoding": "gzip"}, 413, "body-too-large"),
        (b"\x00\x01", {**JSON, "Content-Encoding": "gzip"}, 400, "invalid-encoding"),
        (b"{}", {**JSON, "Content-Encoding": "br"}, 400, "invalid-encoding"),
    ],
    ids=["malformed", "utf8", "not-json", "too-deep", "duplicate-keys", "too-large",
         "gzip-bomb", "bad-gzip", "unknown-encoding"],
)
async def test_bad_input(make_proxy: Any, upstream: Any, registry: Any, body: bytes,
                         headers: dict[str, str], status: int, slug: str) -> None:
    recorder, _ = upstream
    client = await make_proxy()
    response = await client.post("/v1/live/r1/cart/items", data=io.BytesIO(body),
                                 headers=headers)
    assert response.status == status
    problem = await response.json(content_type=None)
    assert problem["type"].endswith(slug)
    assert problem["detail"]
    assert recorder.requests == []
    assert registry.get_sample_value("cart_link_proxy_bad_input_total", {"reason": slug}) == 1


async def test_chunked_body_over_limit(make_proxy: Any) -> None:
    client = await make_proxy(limits={"max_body_bytes": 1000})

    async def chunks() -> Any:
        for _ in range(20):
            yield b" " * 100

    response = await client.post("/v1/live/r1/cart/items", data=chunks(), headers=JSON)
    assert response.status == 413


async def test_non_json_pass_setting(make_proxy: Any, upstream: Any) -> None:
    recorder, _ = upstream
    client = await make_proxy(limits={"non_json": NonJSON.PASS})
    response = await client.post("/v1/live/r1/cart/items", data=b"url=" + TAOBAO.encode(),
                                 headers={"Content-Type": "text/plain"})
    assert response.status == 200
    assert recorder.last.body == b"url=" + TAOBAO.encode()


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_compressed_body_inspected_and_forwarded_compressed(
    make_proxy: Any, upstream: Any, coding: str
) -> None:
    recorder, _ = upstream
    client = await make_proxy()
    compress = gzip.compress if coding == "gzip" else zlib.compress
    allowed = compress(cart(JD))
    response = await client.post("/v1/videos/v1/cart/items", data=allowed,
                                 headers={**JSON, "Content-Encoding": coding})
    assert response.status == 200
    assert recorder.last.body == allowed
    assert recorder.last.headers["Content-Encoding"] == coding
    response = await client.post("/v1/live/r1/cart/items", data=compress(cart(TAOBAO)),
                                 headers={**JSON, "Content-Encoding": coding})
    assert response.status == 422


async def test_upstream_refused_is_502(make_proxy: Any, unused_tcp_port: int) -> None:
    client = await make_proxy(upstream=f"http://127.0.0.1:{unused_tcp_port}")
    for path in ("/anything", "/v1/videos/v1/cart"):
        response = await client.get(path)
        assert response.status == 502
        assert (await response.json(content_type=None))["type"].endswith("upstream-unavailable")


async def test_upstream_slow_is_504(make_proxy: Any, upstream: Any) -> None:
    recorder, _ = upstream

    async def slow(request: web.Request, body: bytes) -> web.StreamResponse:
        await asyncio.sleep(2)
        return web.json_response({})

    recorder.reply = slow
    client = await make_proxy(timeouts={"read": 0.2, "total": 0.3})
    response = await client.post("/v1/videos/v1/cart/items", data=cart(JD), headers=JSON)
    assert response.status == 504
    assert (await response.json(content_type=None))["type"].endswith("upstream-timeout")
    response = await client.get("/slow/passthrough")
    assert response.status == 504


async def test_metrics_and_request_id(make_proxy: Any, registry: Any) -> None:
    client = await make_proxy()
    await client.post("/v1/live/r1/cart/items", data=cart(TAOBAO, OWN), headers=JSON)
    labels = {"route": "live-cart-add", "surface": "livestream_cart", "method": "POST",
              "status_class": "4xx"}
    assert registry.get_sample_value("cart_link_proxy_requests_total", labels) == 1
    assert registry.get_sample_value("cart_link_proxy_links_total", {
        "surface": "livestream_cart", "platform": "taobao", "kind": "item", "action": "block",
        "mode": "enforce"}) == 1


class FakeResolver:
    """Our ``LinkResolver`` protocol over a fixed table; None: not resolved in time."""

    def __init__(self, table: dict[str, str | None]) -> None:
        self.table = table
        self.calls: list[list[str]] = []

    def handles(self, url: str) -> bool:
        return URL(url).host in {"t.cn", "bit.ly"}

    async def resolve_many(self, urls: Any) -> dict[str, str | None]:
        self.calls.append(list(urls))
        return {url: self.table.get(url, url) for url in urls}


SHORT_TB = "https://t.cn/A6tb"
SHORT_OWN = "https://bit.ly/own"
SHORT_LOST = "https://t.cn/A6lost"
RESOLVES = {SHORT_TB: TAOBAO, SHORT_OWN: OWN, SHORT_LOST: None}


@pytest.mark.parametrize(
    ("path", "url", "at", "status", "rule"),
    [
        ("/v1/live/r1/cart/items", SHORT_TB, "after", 422, "taobao-cutoff-2022"),
        ("/v1/live/r1/cart/items", SHORT_OWN, "after", 200, None),
        ("/v1/live/r1/cart/items", SHORT_LOST, "after", 422, "unresolved-short-link"),
        ("/v1/videos/v1/cart/items", SHORT_LOST, "after", 200, None),
        ("/v1/videos/v1/cart/items", SHORT_TB, "before", 200, None),
    ],
    ids=["live-to-taobao", "live-to-own", "live-unresolved-blocks", "video-unresolved-allows",
         "video-to-taobao-before-cutoff"],
)
async def test_short_links_are_judged_by_where_they_lead(
    make_proxy: Any, upstream: Any, registry: Any, caplog: Any, path: str, url: str, at: str,
    status: int, rule: str | None,
) -> None:
    recorder, _ = upstream
    resolver = FakeResolver(RESOLVES)
    client = await make_proxy(at=at, resolver=resolver)
    body = cart(OWN, url, JD if "videos" in path else OWN)
    with caplog.at_level("INFO", logger="cart_link_proxy.audit"):
        response = await client.post(path, data=body, headers=JSON)
    assert response.status == status
    assert resolver.calls == [[url]]  # one batch per message, only the short link
    if status == 422:
        problem = await response.json()
        assert [(link["pointer"], link["url"], link["rule"]) for link in problem["links"]] == \
            [("/items/1/url", url, rule)]
        assert recorder.requests == []
    else:
        assert recorder.last.body == body
    if at == "before":
        assert "rule=taobao-cutoff-2022" in response.headers["Link-Policy-Pending"]
    if url == SHORT_LOST and status == 200:  # allowed, but on record
        lines = [r for r in caplog.records if getattr(r, "fields", {}).get("event")
                 == "unresolved_short_link"]
        assert [(r.fields["pointer"], r.fields["host"], r.fields["action"]) for r in lines] == \
            [("/items/1/url", "t.cn", "allow")]
        assert registry.get_sample_value("cart_link_proxy_links_total", {
            "surface": "short_video_cart", "platform": "none", "kind": "page",
            "action": "allow", "mode": "enforce"}) == 1


async def test_no_resolution_without_short_links(make_proxy: Any, upstream: Any) -> None:
    resolver = FakeResolver(RESOLVES)
    client = await make_proxy(resolver=resolver)
    response = await client.post("/v1/videos/v1/cart/items", data=cart(JD, OWN), headers=JSON)
    assert response.status == 200
    assert resolver.calls == []


@pytest.mark.parametrize("number", [b"1" * 100, b"-" + b"9" * 400, b"18446744073709551616"],
                         ids=["100-digits", "400-digits", "2**64"])
async def test_big_integers_are_valid_json(make_proxy: Any, upstream: Any, engine: Any,
                                           registry: Any, make_settings: Any,
                                           aiohttp_client: Any, number: bytes) -> None:
    """Allowed: forwarded byte for byte. Edited: every other number kept exactly."""
    recorder, server = upstream
    client = await make_proxy()
    body = b'{"seller_id":"s1","stock":' + number + b',"items":[{"item_id":"1","url":"' + \
        JD.encode() + b'"}]}'
    response = await client.post("/v1/videos/v1/cart/items", data=body, headers=JSON)
    assert response.status == 200
    assert recorder.last.body == body
    from dataclasses import replace

    from proxy.app import create_app
    from proxy.core.model import Action
    from proxy.policyfile import build_engine
    from tests.conftest import fixed_clock

    custom = replace(engine.policy, rules=(replace(engine.policy.rules[0], action=Action.STRIP),))
    settings = replace(make_settings(upstream=server.make_url("/")), policy=custom)
    stripping = await aiohttp_client(create_app(settings, clock=fixed_clock("after"),
                                                registry=CollectorRegistry(),
                                                engine=build_engine(custom)))
    body = b'{"seller_id":"s1","stock":' + number + b',"items":[{"url":"' + \
        TAOBAO.encode() + b'"},{"url":"' + JD.encode() + b'"}]}'
    response = await stripping.post("/v1/live/r1/cart/items", data=body, headers=JSON)
    assert response.status == 200
    assert recorder.last.body == b'{"seller_id":"s1","stock":' + number + b',"items":[{"url":"' \
        + JD.encode() + b'"}]}'
