"""The upstream HTTP/1.1 client against real sockets: aiohttp upstreams that record what they
receive, and raw asyncio servers scripted byte by byte where an upstream must misbehave."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trustme
from aiohttp import StreamReader, web
from aiohttp.base_protocol import BaseProtocol

from proxy.errors import BadResponse
from proxy.http1 import HIGH_WATER, MAX_HEAD, Pool, Response, framing, may_retry, request_head

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
_ONE_READ = 256 * 1024
"""The most one socket read hands over, in asyncio's loops and in uvloop."""


class Scripted:
    """A raw TCP server; ``script(reader, writer, n)`` runs for its n-th connection (0-based)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            index = self.connections
            self.connections += 1
            try:
                await self.script(reader, writer, index)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request head (and a Content-Length body) as sent."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return head + await reader.readexactly(int(line.split(b":")[1]))
    return head


async def exchange(pool: Pool, method: str = "GET", body: Any = None, *, path: str = "/x",
                   read_timeout: float = 5.0, deadline: float | None = None,
                   length: int | None = None) -> tuple[Response, bool]:
    connection, reused = await pool.acquire(5.0)
    head = request_head(method, path, f"127.0.0.1:{pool.port}", [("X-A", "1")],
                        framing(method, body, length))
    try:
        response = await connection.exchange(head, body, stream_length=length,
                                             head_request=method == "HEAD",
                                             read_timeout=read_timeout, deadline=deadline)
    except BaseException:
        connection.close()
        raise
    return response, reused


@pytest.fixture
async def recording(aiohttp_server: Any) -> tuple[Any, list[dict[str, Any]]]:
    """An aiohttp upstream recording each request's connection, head and body."""
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append({"peer": request.transport.get_extra_info("peername")  # type: ignore[union-attr]
                     if request.transport else None,
                     "headers": dict(request.headers), "body": body, "method": request.method,
                     "path": request.raw_path})
        if request.path == "/close":
            return web.Response(body=b"bye", headers={"Connection": "close"})
        if request.path == "/chunked":
            out = web.StreamResponse()
            out.enable_chunked_encoding()
            await out.prepare(request)
            for piece in (b"a" * 10, b"b" * 20, b"c"):
                await out.write(piece)
            await out.write_eof()
            return out
        return web.Response(body=b"ok:" + hashlib.sha256(body).hexdigest().encode())

    app = web.Application(client_max_size=2**26)
    app.router.add_route("*", "/{tail:.*}", handle)
    return await aiohttp_server(app), seen


PoolFactory = Callable[..., Pool]


@pytest.fixture
async def make_pool() -> AsyncIterator[PoolFactory]:
    """``make_pool(port, **options)``: a pool to 127.0.0.1:port, closed after the test."""
    pools: list[Pool] = []

    def make(port: int, host: str = "127.0.0.1", **options: Any) -> Pool:
        pools.append(Pool(host, port, **options))
        return pools[-1]

    yield make
    for pool in pools:
        await pool.close()


# --- the request head ---------------------------------------------------------------------
@pytest.mark.parametrize(("target", "fields"), [
    ("/a\r\nX-Evil: 1", []),
    ("/a\nb", []),
    ("/a", [("X-A", "1\r\nX-Evil: 1")]),
    ("/a", [("X-A", "1\nX-Evil: 1")]),
    ("/a", [("X-A", "1\rX-Evil: 1")]),
    ("/a", [("X-A\r\nX-Evil", "1")]),
])
def test_request_head_refuses_line_breaks(target: str, fields: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError, match="line break"):
        request_head("GET", target, "up", fields, "")


@pytest.mark.parametrize(("method", "body", "length", "expected"), [
    ("GET", None, None, ""),
    ("POST", None, None, "Content-Length: 0\r\n"),
    ("PUT", None, None, "Content-Length: 0\r\n"),
    ("POST", b"abc", None, "Content-Length: 3\r\n"),
    ("POST", b"", None, "Content-Length: 0\r\n"),
])
def test_framing_of_whole_bodies(method: str, body: bytes | None, length: int | None,
                                 expected: str) -> None:
    assert framing(method, body, length) == expected


async def test_framing_of_streams() -> None:
    stream = _stream([])
    assert framing("POST", stream, 10) == "Content-Length: 10\r\n"
    assert framing("POST", stream, None) == "Transfer-Encoding: chunked\r\n"


def test_request_head_bytes_survive_surrogate_escapes() -> None:
    # aiohttp hands over non-UTF-8 header bytes as surrogate escapes; they go out as received.
    value = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert b"X-A: caf\xe9\r\n" in request_head("GET", "/", "up", [("X-A", value)], "")


# --- keep-alive -------------------------------------------------------------------------------
async def test_keep_alive_reuses_one_connection(recording: Any, make_pool: PoolFactory) -> None:
    server, seen = recording
    pool = make_pool(server.port)
    for i in range(3):
        response, reused = await exchange(pool, "POST", b'{"n":%d}' % i)
        assert response.status == 200
        assert await response.read() == b"ok:" + hashlib.sha256(
            b'{"n":%d}' % i).hexdigest().encode()
        response.release()
        assert reused is (i > 0)
    assert len({s["peer"] for s in seen}) == 1
    assert pool.open_connections == pool.idle_connections == 1
    assert seen[0]["headers"]["Content-Length"] == "7"
    assert seen[0]["headers"]["Host"] == f"127.0.0.1:{server.port}"


async def test_connection_close_is_not_reused(recording: Any, make_pool: PoolFactory) -> None:
    server, seen = recording
    pool = make_pool(server.port)
    response, _ = await exchange(pool, path="/close")
    assert await response.read() == b"bye"
    response.release()
    assert pool.idle_connections == 0
    response, reused = await exchange(pool)
    response.release()
    assert not reused
    assert len({s["peer"] for s in seen}) == 2


async def test_unread_body_closes_the_connection(recording: Any, make_pool: PoolFactory) -> None:
    server, _ = recording
    pool = make_pool(server.port)
    response, _ = await exchange(pool, path="/chunked")
    response.release()  # before reading: the rest of the body would poison the next answer
    assert pool.idle_connections == 0
    with pytest.raises(RuntimeError, match="released"):
        await response.read()


async def test_idle_connections_expire(recording: Any, make_pool: PoolFactory) -> None:
    server, seen = recording
    pool = make_pool(server.port, keepalive=0.05)
    response, _ = await exchange(pool)
    await response.read()
    response.release()
    await asyncio.sleep(0.1)
    response, reused = await exchange(pool)
    await response.read()
    response.release()
    assert not reused
    assert len({s["peer"] for s in seen}) == 2


async def test_pool_limit_waits_for_a_free_connection(recording: Any, make_pool: PoolFactory) -> None:
    server, _ = recording
    pool = make_pool(server.port, limit=1)
    first, _ = await exchange(pool)
    second = asyncio.ensure_future(exchange(pool))
    await asyncio.sleep(0.05)
    assert not second.done()  # the only connection is busy
    await first.read()
    first.release()
    response, reused = await second
    assert reused
    assert await response.read()
    response.release()
    busy, _ = await exchange(pool)
    with pytest.raises(TimeoutError):
        await pool.acquire(0.05)
    await busy.read()
    busy.release()
    assert pool.open_connections == pool.idle_connections == 1


# --- response framing ---------------------------------------------------------------------------
async def test_chunked_response(recording: Any, make_pool: PoolFactory) -> None:
    server, _ = recording
    pool = make_pool(server.port)
    response, _ = await exchange(pool, path="/chunked")
    assert response.content_length is None
    assert await response.read() == b"a" * 10 + b"b" * 20 + b"c"
    response.release()
    assert pool.idle_connections == 1


async def _http10(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
    await writer.drain()


async def _head_with_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            n: int) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(1)


async def _early_hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       n: int) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                 b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-B: 2\r\n\r\nok")
    await writer.drain()
    await read_request(reader)


async def _not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    await read_request(reader)
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
    await writer.drain()


@pytest.mark.parametrize(("script", "method", "status", "body", "kept"), [
    (_http10, "GET", 200, b"until the end", False),  # delimited by the end of the connection
    (_head_with_length, "HEAD", 200, b"", False),  # llhttp would wait for the 1000 bytes
    (_early_hints, "GET", 201, b"ok", True),  # the 103 is skipped, its Link field with it
], ids=["until-eof", "head", "early-hints"])
async def test_response_framing(script: Script, method: str, status: int, body: bytes,
                                kept: bool, make_pool: PoolFactory) -> None:
    async with Scripted(script) as server:
        pool = make_pool(server.port)
        response, _ = await exchange(pool, method)
        assert response.status == status
        assert "Link" not in response.headers
        assert await asyncio.wait_for(response.read(), 0.5) == body
        response.release()
        assert pool.idle_connections == pool.open_connections == int(kept)


async def _endless_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        n: int) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nX-Big: ")
    for _ in range(64):  # 64 x 4 KiB of one header value, never ended
        writer.write(b"v" * 4096)
        await writer.drain()
    await asyncio.sleep(1)


@pytest.mark.parametrize(("script", "why"), [
    (_endless_head, f"head exceeds {MAX_HEAD} bytes"),
    (_not_http, r"not valid HTTP/1\.1"),
], ids=["endless-head", "not-http"])
async def test_bad_responses_are_refused(script: Script, why: str,
                                         make_pool: PoolFactory) -> None:
    async with Scripted(script) as server:
        pool = make_pool(server.port)
        with pytest.raises(BadResponse, match=why):
            await exchange(pool)
        assert pool.open_connections == 0


# --- timeouts -----------------------------------------------------------------------------------
async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    await read_request(reader)
    await asyncio.sleep(5)


async def _dripping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while True:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            await asyncio.sleep(0.02)
            writer.write(b"x")
            await writer.drain()


async def test_read_timeout_is_the_longest_silence(make_pool: PoolFactory) -> None:
    async with Scripted(_silent) as server:
        pool = make_pool(server.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await exchange(pool, read_timeout=0.1)
        assert 0.09 <= loop.time() - started < 1.0


async def test_dripping_body_keeps_the_read_timeout_but_not_the_deadline(make_pool: PoolFactory) -> None:
    async with Scripted(_dripping) as server:
        pool = make_pool(server.port)
        response, _ = await exchange(pool, read_timeout=0.3)  # every byte within 0.3 s
        assert await response.read() == b"x" * 100
        response.release()
        loop = asyncio.get_running_loop()
        response, _ = await exchange(pool, read_timeout=0.3, deadline=loop.time() + 0.3)
        with pytest.raises(TimeoutError):
            await response.read()
        response.release()


# --- flow control -------------------------------------------------------------------------------
async def test_large_response_is_not_buffered(aiohttp_server: Any, make_pool: PoolFactory) -> None:
    size = 16 * 1024 * 1024
    block = bytes(range(256)) * 256

    async def big(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Length": str(size)})
        await out.prepare(request)
        for _ in range(size // len(block)):
            await out.write(block)
        return out

    app = web.Application()
    app.router.add_get("/", big)
    server = await aiohttp_server(app)
    pool = make_pool(server.port)
    connection, _ = await pool.acquire(5.0)
    response = await connection.exchange(request_head("GET", "/", "up", [], ""), None,
                                         stream_length=None, head_request=False,
                                         read_timeout=5, deadline=None)
    await asyncio.sleep(0.3)  # a consumer that does not read
    # Reading stops once over the mark: at most one more socket read (256 KiB in asyncio and
    # uvloop) can land on top of it.
    assert connection.buffered <= HIGH_WATER + _ONE_READ
    digest, total, peak = hashlib.sha256(), 0, 0
    while chunk := await response.readany():
        digest.update(chunk)
        total += len(chunk)
        peak = max(peak, connection.buffered)
    assert total == size
    assert peak <= HIGH_WATER + _ONE_READ
    assert digest.digest() == hashlib.sha256(block * (size // len(block))).digest()
    response.release()


def _stream(chunks: list[bytes]) -> StreamReader:
    loop = asyncio.get_running_loop()
    stream = StreamReader(BaseProtocol(loop), 2**24, loop=loop)
    for chunk in chunks:
        stream.feed_data(chunk)
    stream.feed_eof()
    return stream


@pytest.mark.parametrize("declared", [True, False])
async def test_streamed_request_body(recording: Any, declared: bool, make_pool: PoolFactory) -> None:
    server, seen = recording
    chunks = [b"x" * 70000, b"y" * 5, b"z" * 300000]
    body = b"".join(chunks)
    pool = make_pool(server.port)
    response, _ = await exchange(pool, "POST", _stream(chunks),
                                 length=len(body) if declared else None)
    assert await response.read() == b"ok:" + hashlib.sha256(body).hexdigest().encode()
    response.release()
    assert seen[0]["body"] == body
    headers = seen[0]["headers"]
    if declared:
        assert headers["Content-Length"] == str(len(body))
    else:
        assert headers["Transfer-Encoding"] == "chunked"
    assert pool.idle_connections == 1


async def test_short_streamed_body_is_not_sent_as_complete(recording: Any, make_pool: PoolFactory) -> None:
    server, _ = recording
    pool = make_pool(server.port)
    with pytest.raises(ConnectionResetError, match="ended after 3 of its 10 bytes"):
        await exchange(pool, "POST", _stream([b"abc"]), length=10, read_timeout=1)
    assert pool.open_connections == 0


# --- stale connections and cancellation -------------------------------------------------------
async def _answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()


async def _closes_on_second_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                    n: int) -> None:
    await _answer_ok(reader, writer)
    await read_request(reader)  # the upstream timed the connection out as this came in


@pytest.mark.parametrize(("method", "body", "retried"), [
    ("GET", None, True),
    ("PUT", b"{}", True),
    ("POST", b"{}", False),
])
async def test_stale_connection_is_retried_only_when_safe(method: str, body: bytes | None,
                                                          retried: bool, make_pool: PoolFactory) -> None:
    async with Scripted(_closes_on_second_request) as server:
        pool = make_pool(server.port)
        response, _ = await exchange(pool)
        await response.read()
        response.release()
        connection, reused = await pool.acquire(5.0)
        assert reused
        head = request_head(method, "/", "up", [], framing(method, body, None))
        with pytest.raises(ConnectionResetError):
            await connection.exchange(head, body, stream_length=None, head_request=False,
                                      read_timeout=5, deadline=None)
        assert may_retry(method, body, reused, connection) is retried


async def test_cancelled_exchange_closes_the_connection(make_pool: PoolFactory) -> None:
    async with Scripted(_silent) as server:
        pool = make_pool(server.port)
        task = asyncio.ensure_future(exchange(pool))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        assert pool.open_connections == 0


async def _talks_out_of_turn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             n: int) -> None:
    await _answer_ok(reader, writer)
    await asyncio.sleep(0.05)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(1)


async def test_idle_connection_that_talks_is_dropped(make_pool: PoolFactory) -> None:
    async with Scripted(_talks_out_of_turn) as server:
        pool = make_pool(server.port)
        response, _ = await exchange(pool)
        await response.read()
        response.release()
        assert pool.idle_connections == 1
        await asyncio.sleep(0.2)
        assert pool.idle_connections == pool.open_connections == 0


async def test_one_timer_serves_many_exchanges(recording: Any, monkeypatch: pytest.MonkeyPatch,
                                               make_pool: PoolFactory) -> None:
    server, _ = recording
    pool = make_pool(server.port)
    armed: list[float] = []
    call_at = pool.loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kw: Any) -> asyncio.TimerHandle:
        if getattr(callback, "__self__", None).__class__.__name__ == "Connection":
            armed.append(when)  # the upstream server in this loop arms its own timers
        return call_at(when, callback, *args, **kw)

    monkeypatch.setattr(pool.loop, "call_at", counting)
    for _ in range(5):
        response, _ = await exchange(pool, read_timeout=30)
        await response.read()
        response.release()
    assert len(armed) == 1
    # A sooner deadline than the armed timer's re-arms it, so the deadline still holds.
    loop = asyncio.get_running_loop()
    response, _ = await exchange(pool, read_timeout=30, deadline=loop.time() + 1)
    await response.read()
    response.release()
    assert len(armed) == 2


# --- TLS ------------------------------------------------------------------------------------------
async def test_https_upstream(aiohttp_server: Any, make_pool: PoolFactory) -> None:
    authority = trustme.CA()
    served = authority.issue_cert("localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.configure_cert(server_context)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=b"over tls")

    app = web.Application()
    app.router.add_get("/x", hello)
    server = await aiohttp_server(app, ssl=server_context)
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    pool = make_pool(server.port, "localhost", tls=trusting)
    response, _ = await exchange(pool)
    assert await response.read() == b"over tls"
    response.release()
    assert pool.idle_connections == 1
    # The default context trusts the system's authorities only: a certificate from elsewhere
    # is refused before any request goes out.
    untrusting = make_pool(server.port, "localhost", tls=ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        await exchange(untrusting)
