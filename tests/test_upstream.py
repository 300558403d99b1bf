from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
import trustme
from aiohttp import web
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
        response = await upstream.send("POST", "/a%2Fb?q=%20", [("X-A", "1")], b"{}",
                                       route="r", streaming=False)
        assert await upstream.read(response, limit=10) == b"x" * 10
        response.release()
        assert received["path"] == "/a%2Fb?q=%20"
        assert set(received["headers"]) == {"Host", "X-A", "Content-Length"}
        assert upstream.seen[0][0::2] == ("r", "ok")  # type: ignore[attr-defined]
        response = await upstream.send("GET", "/", [], None, route="r", streaming=True)
        with pytest.raises(UpstreamError, match="inspection limit"):
            await upstream.read(response, limit=5)
        response.release()
    finally:
        await upstream.close()


async def test_refused_and_timeout(aiohttp_server: Any, unused_tcp_port: int) -> None:
    upstream = await _started(URL(f"http://127.0.0.1:{unused_tcp_port}"))
    with pytest.raises(UpstreamUnavailable):
        await upstream.send("GET", "/", [], None, route="r", streaming=True)
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
        await upstream.send("GET", "/", [], None, route="r", streaming=True)
    assert upstream.seen[-1][2] == "timeout"  # type: ignore[attr-defined]
    await upstream.close()


async def test_not_started() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        Upstream(URL("http://x"), Timeouts()).pool  # noqa: B018


async def test_post_without_body_says_so(aiohttp_server: Any) -> None:
    received: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(dict(request.headers))
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/", handle)
    server = await aiohttp_server(app)
    upstream = await _started(server.make_url("/"))
    try:
        for method in ("POST", "GET"):
            response = await upstream.send(method, "/", [], None, route="r", streaming=False)
            await upstream.read(response, limit=10)
            response.release()
        assert received[0]["Content-Length"] == "0"  # servers may demand it (411)
        assert "Content-Length" not in received[1]
    finally:
        await upstream.close()


async def test_not_http_is_502_naming_why() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/9 OK\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = await _started(URL(f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(UpstreamUnavailable, match=r"not valid HTTP/1\.1"):
            await upstream.send("GET", "/p?q", [], None, route="r", streaming=False)
        assert upstream.seen[-1][2] == "unavailable"  # type: ignore[attr-defined]
    finally:
        await upstream.close()
        server.close()


async def test_stale_keep_alive_connection_is_retried_for_idempotent_methods() -> None:
    answered: list[int] = []

    async def one_answer_per_connection(reader: asyncio.StreamReader,
                                        writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            answered.append(1)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # then it times the connection out
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    server = await asyncio.start_server(one_answer_per_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = await _started(URL(f"http://127.0.0.1:{port}"))
    try:
        for method, body in (("GET", None), ("PUT", b"{}"), ("GET", None)):
            response = await upstream.send(method, "/", [], body, route="r", streaming=False)
            assert await upstream.read(response, limit=10) == b"ok"
            response.release()
        with pytest.raises(UpstreamUnavailable, match="POST /: ConnectionResetError"):
            await upstream.send("POST", "/", [], b"{}", route="r", streaming=False)
        assert len(answered) == 3
    finally:
        await upstream.close()
        server.close()


async def test_untrusted_https_upstream_is_502(aiohttp_server: Any) -> None:
    served = trustme.CA().issue_cert("localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.configure_cert(context)
    async def never_reached(request: web.Request) -> web.Response:
        raise AssertionError("the handshake must fail first")

    app = web.Application()
    app.router.add_get("/", never_reached)
    server = await aiohttp_server(app, ssl=context)
    upstream = await _started(URL(f"https://localhost:{server.port}"))
    try:
        with pytest.raises(UpstreamUnavailable, match="SSLCertVerificationError"):
            await upstream.send("GET", "/", [], None, route="r", streaming=False)
    finally:
        await upstream.close()
