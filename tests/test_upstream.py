from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.config import Timeouts
from proxy.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from proxy.upstream import Upstream


async def _started(origin: URL, **timeouts: float) -> Upstream:
    seen: list[tuple[str, float, str]] = []
    upstream = Upstream(origin, Timeouts(**timeouts), pool_size=4,
                        observe=lambda r, s, o: seen.append((r, s, o)))
    upstream.seen = seen  # type: ignore[attr-defined]
    await upstream.start()
    return upstream


async def test_adds_no_headers_and_keeps_raw_path(aiohttp_server: Any) -> None:
    received: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.Response:
        received.update(headers=dict(request.headers), path=request.raw_path)
        return web.Response(body=b"x" * 10)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    upstream = await _started(server.make_url("/"))
    try:
        response = await upstream.send("POST", "/a%2Fb?q=%20", CIMultiDict({"X-A": "1"}), b"{}",
                                       route="r", streaming=False)
        assert await upstream.read(response, limit=10) == b"x" * 10
        response.release()
        assert received["path"] == "/a%2Fb?q=%20"
        assert set(received["headers"]) == {"Host", "X-A", "Content-Length"}
        assert upstream.seen[0][0::2] == ("r", "ok")  # type: ignore[attr-defined]
        response = await upstream.send("GET", "/", CIMultiDict(), None, route="r",
                                       streaming=True)
        with pytest.raises(UpstreamError, match="inspection limit"):
            await upstream.read(response, limit=5)
        response.release()
    finally:
        await upstream.close()


async def test_refused_and_timeout(aiohttp_server: Any, unused_tcp_port: int) -> None:
    upstream = await _started(URL(f"http://127.0.0.1:{unused_tcp_port}"))
    with pytest.raises(UpstreamUnavailable):
        await upstream.send("GET", "/", CIMultiDict(), None, route="r", streaming=True)
    assert upstream.seen[-1][2] == "unavailable"  # type: ignore[attr-defined]
    await upstream.close()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response()

    app = web.Application()
    app.router.add_get("/", slow)
    server = await aiohttp_server(app)
    upstream = await _started(server.make_url("/"), read=0.1)
    with pytest.raises(UpstreamTimeout):
        await upstream.send("GET", "/", CIMultiDict(), None, route="r", streaming=True)
    assert upstream.seen[-1][2] == "timeout"  # type: ignore[attr-defined]
    await upstream.close()


async def test_not_started() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        Upstream(URL("http://x"), Timeouts()).session  # noqa: B018
