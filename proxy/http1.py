"""An HTTP/1.1 client for one upstream origin: keep-alive connections on asyncio protocols,
responses parsed by ``httptools`` (llhttp, the parser Node.js uses).

Why not ``aiohttp.ClientSession``: the proxy sends every request to one origin it knows, with
headers it has already validated, so most of what a general client does per request (URL and
cookie handling, tracing, default headers, a task per request body, two timers) is work the
proxy does not need, and it was the largest single cost of a proxied request (``bench/
proxy_bench.py``: 298 -> 220 microseconds of CPU per inspected request with 10 links).

What it does, and how:

- ``Pool`` keeps idle connections (most recently used first) up to ``limit`` open ones;
  acquiring waits for a free one when all are busy, within ``connect_timeout`` (as aiohttp's
  ``connect`` timeout does). Idle connections older than ``keepalive`` are closed when met; one
  the upstream closed drops out of the pool as soon as it does.
- A request body is bytes (sent with ``Content-Length``) or a ``StreamReader`` copied as it
  arrives, under flow control (``Content-Length`` when the client declared one, else chunked).
- A response body is handed over as it arrives. Above ``HIGH_WATER`` buffered bytes the
  connection stops reading from the socket until the consumer catches up, so a large download
  is never held in memory.
- Timeouts: ``read`` is the longest silence allowed while waiting for the upstream; ``total``,
  when given, bounds the exchange until its body is read. Both raise ``TimeoutError``. One timer
  per connection checks them, fires at most about once per read timeout and stays armed across
  exchanges (arriving chunks only move a timestamp), so an exchange schedules no timer of its own.
- A connection is reused only when the previous exchange ended cleanly: the whole response read,
  the whole request sent, keep-alive allowed by both sides (``Connection: close``, HTTP/1.0).
  Responses to HEAD and bodies delimited by the connection's end close it (llhttp cannot be told
  that a HEAD response carries no body).
- A request sent on a reused connection that the upstream closed before answering (it timed the
  connection out as we wrote) is retried once on a fresh one when the method is idempotent and
  the body is bytes, as aiohttp does.

Errors: ``TimeoutError``; ``ConnectionError`` (refused, reset, closed early); ``BadResponse``
for what the upstream sent that is not HTTP/1.1. ``proxy.upstream`` maps them to problems.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Final

import httptools
from aiohttp import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import BadResponse
from proxy.headers import content_length

__all__ = [
    "HIGH_WATER",
    "LOW_WATER",
    "MAX_HEAD",
    "Connection",
    "Pool",
    "Response",
    "framing",
    "may_retry",
    "request_head",
]

HIGH_WATER: Final = 256 * 1024
"""Buffered response bytes at which a connection stops reading from its socket."""
LOW_WATER: Final = 64 * 1024
"""...and at which it reads again."""
MAX_HEAD: Final = 64 * 1024
"""Bytes a response may take before its head is complete (status line, fields, 1xx answers):
aiohttp's client allowed 8 KiB per line; a head this large is a broken or hostile upstream."""
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_MAY_HAVE_BODY: Final = frozenset({"POST", "PUT", "PATCH"})
_NO_BODY_STATUS: Final = frozenset({204, 304})
_CHUNKED_END: Final = b"0\r\n\r\n"
_JOIN_MAX: Final = 64 * 1024


def _text(raw: bytes) -> str:
    # As aiohttp decodes header fields: the bytes survive a round trip through str.
    return raw.decode("utf-8", "surrogateescape")


def request_head(method: str, target: str, host: str, fields: Iterable[tuple[str, str]],
                 framing: str) -> bytes:
    """The request line and header block; ``framing`` is the body's framing field line(s),
    each ending in CRLF (``Content-Length: 12\\r\\n``, or empty for no body).

    >>> request_head("POST", "/a?b", "up:8080", [("X-A", "1")], "Content-Length: 2\\r\\n")
    b'POST /a?b HTTP/1.1\\r\\nHost: up:8080\\r\\nX-A: 1\\r\\nContent-Length: 2\\r\\n\\r\\n'
    """
    parts = [f"{name}: {value}\r\n" for name, value in fields]
    lines = "".join(parts)
    # aiohttp validated what the client sent, but a field the proxy adds could carry a line
    # break: each field line holds exactly one CR and one LF, which two C-level counts check.
    if ("\n" in target or "\r" in target or lines.count("\n") != len(parts)
            or lines.count("\r") != len(parts)):
        raise ValueError("a header field or the request target contains a line break")
    return f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{lines}{framing}\r\n".encode(
        "utf-8", "surrogateescape")


class Response:
    """An upstream response: its head at once, its body as it arrives.

    ``release()`` must follow, always: it returns the connection to the pool (when the
    exchange ended cleanly) or closes it.
    """

    __slots__ = ("_connection", "content_length", "headers", "reason", "status")

    def __init__(self, status: int, reason: str, headers: CIMultiDictProxy[str],
                 connection: Connection) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length(headers)
        self._connection: Connection | None = connection

    def _live(self) -> Connection:
        if self._connection is None:
            raise RuntimeError("the response was released")
        return self._connection

    async def readany(self) -> bytes:
        """The next piece of the body; ``b""`` once it is all read."""
        return await self._live().read_chunk()

    async def read(self) -> bytes:
        """The rest of the body."""
        return await self._live().read_body()

    def release(self) -> None:
        if self._connection is not None:
            self._connection.finish()
            self._connection = None


class Connection(asyncio.Protocol):
    """One keep-alive connection to the upstream, carrying one exchange at a time."""

    # The exchange in progress, set by _reset.
    _response: Response | None
    _buffered: int
    _complete: bool
    _keep_alive: bool
    _until_eof: bool
    _head_request: bool
    _informational: bool
    _error: BaseException | None
    answered: bool
    """Whether the upstream sent anything during the current exchange."""
    _head_size: int
    _sender: asyncio.Task[None] | None

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._head: asyncio.Future[Response] | None = None
        self._fields: list[tuple[str, str]] = []
        self._reason = b""
        self._chunks: deque[bytes] = deque()
        self._body_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._reset(head_request=False)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._deadline: float | None = None
        self._read_timeout = 0.0
        self._last_activity = 0.0

    @property
    def buffered(self) -> int:
        """Response body bytes received and not yet read."""
        return self._buffered

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        self.answered = True
        if self._head is None:  # nothing was asked: a server talking out of turn
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("the cart service switched protocols (Upgrade)"))
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"the cart service's response is not valid HTTP/1.1: {exc}"))
        else:
            if self._response is None:  # llhttp buffers a head without bound: this bounds it
                self._head_size += len(data)
                if self._head_size > MAX_HEAD:
                    self._fail(BadResponse(f"the cart service's response head exceeds "
                                           f"{MAX_HEAD} bytes"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost ends the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if self._head is not None and not self._complete:
            if self._until_eof and self._response is not None and exc is None:
                self._complete = True  # a body delimited by the end of the connection
                self._keep_alive = False
                self._wake()
            else:
                self._fail(exc if exc is not None else ConnectionResetError(
                    "the cart service closed the connection"))
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_exception(ConnectionResetError("the cart service closed the connection"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # --- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete:  # a second answer to one request: never reuse this connection
            self._keep_alive = False
        self._fields = []
        self._reason = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((_text(name), _text(value)))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._informational = True  # 100 Continue, 103 Early Hints: the answer follows
            return
        headers = CIMultiDictProxy(CIMultiDict(self._fields))
        response = self._response = Response(status, _text(self._reason), headers, self)
        if self._head_request:
            self._complete = True
            self._keep_alive = False  # llhttp would read the next answer as this body
        elif (status not in _NO_BODY_STATUS and "Content-Length" not in headers
              and "chunked" not in headers.get("Transfer-Encoding", "").lower()):
            self._until_eof = True
        head = self._head
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return  # the body of a HEAD response we chose not to wait for
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and self._transport:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if not self._complete:
            self._complete = True
            self._keep_alive = self._parser.should_keep_alive()
        self._wake()

    # --- the exchange -----------------------------------------------------------------------
    async def exchange(
        self,
        head: bytes,
        body: bytes | StreamReader | None,
        *,
        stream_length: int | None,
        head_request: bool,
        read_timeout: float,
        deadline: float | None,
    ) -> Response:
        """Send one request and wait for the response head."""
        transport = self._transport
        if transport is None or self.closed:
            raise ConnectionResetError("the connection to the cart service is closed")
        loop = self._loop
        self._begin(head_request, read_timeout, deadline)
        waiter: asyncio.Future[Response] = loop.create_future()
        self._head = waiter
        if body is None:
            transport.write(head)
        elif isinstance(body, bytes):
            if len(body) <= _JOIN_MAX:  # one send; copying a small body costs less than two
                transport.write(head + body)
            else:
                transport.writelines((head, body))
        else:
            transport.write(head)
            self._sender = loop.create_task(self._send_stream(body, stream_length))
        return await waiter

    def _reset(self, *, head_request: bool) -> None:
        """The state of one exchange, as it is before any byte is sent."""
        self._response = None
        self._chunks.clear()
        self._buffered = 0
        self._complete = False
        self._keep_alive = True
        self._until_eof = False
        self._head_request = head_request
        self._informational = False
        self._error = None
        self.answered = False
        self._head_size = 0
        self._sender = None

    def _begin(self, head_request: bool, read_timeout: float, deadline: float | None) -> None:
        self._reset(head_request=head_request)
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._last_activity = self._loop.time()
        self._arm(self._last_activity + read_timeout)

    def _arm(self, due: float) -> None:
        """Have ``_check_time`` run by ``due``, or by the exchange's deadline if sooner. A
        timer already due sooner is kept: it fires early, looks again and re-arms, so a busy
        connection schedules one timer per read timeout, not one per exchange."""
        if self._deadline is not None:
            due = min(due, self._deadline)
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(due, self._check_time)
        self._timer_due = due

    async def _send_stream(self, stream: StreamReader, length: int | None) -> None:
        transport = self._transport
        assert transport is not None
        sent = 0
        try:
            while chunk := await stream.readany():
                sent += len(chunk)
                if length is None:
                    transport.writelines((f"{len(chunk):x}\r\n".encode(), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                if self._write_paused:
                    await self._drain()
            if length is None:
                transport.write(_CHUNKED_END)
            elif sent != length:
                raise ConnectionResetError(f"the client's body ended after {sent} of its "
                                           f"{length} bytes")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client's body broke off: the upstream cannot be told
            self._fail(exc)

    async def _drain(self) -> None:
        self._drained = self._loop.create_future()
        try:
            await self._drained
        finally:
            self._drained = None

    def _check_time(self) -> None:
        self._timer = None
        if self._head is None or self._complete or self._error is not None:
            return  # nothing waits on the upstream now; the next exchange arms a timer
        now = self._loop.time()
        deadline = self._deadline
        if deadline is not None and now >= deadline:
            self._fail(TimeoutError("the exchange with the cart service took too long"))
            return
        waiting = not self._head.done() or (
            self._body_waiter is not None and not self._body_waiter.done())
        if not waiting:
            self._last_activity = now  # the consumer is busy: silence is not the upstream's
        elif now - self._last_activity >= self._read_timeout:
            self._fail(TimeoutError("the cart service went silent"))
            return
        self._arm(self._last_activity + self._read_timeout)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not self._complete:
            self._error = exc
        head = self._head
        if head is not None and not head.done():
            head.set_exception(exc)
        self._wake()
        self.close()

    def _wake(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read_chunk(self) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered <= LOW_WATER and self._transport:
                    self._reading_paused = False
                    self._transport.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            self._last_activity = self._loop.time()
            self._body_waiter = self._loop.create_future()
            try:
                await self._body_waiter
            finally:
                self._body_waiter = None

    async def read_body(self) -> bytes:
        pieces: list[bytes] = []
        while chunk := await self.read_chunk():
            pieces.append(chunk)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def finish(self) -> None:
        """End the exchange: back to the pool when it ended cleanly, else closed. The timer
        stays armed: the next exchange reuses it, and if none comes it finds nothing to do."""
        self._head = None
        sender = self._sender
        sent = sender is None or (sender.done() and not sender.cancelled())
        if (self._complete and self._keep_alive and self._error is None and sent
                and not self._chunks and not self.closed):
            self._response = None
            self._pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sender = self._sender
        if sender is not None and not sender.done() and sender is not asyncio.current_task():
            sender.cancel()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self.closed = True
        self._pool.forget(self)


class Pool:
    """Keep-alive connections to one origin, at most ``limit`` open at once."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        limit: int = 256,
        keepalive: float = 30.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._tls = tls
        self.limit = limit
        self.keepalive = keepalive
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    def _take_idle(self) -> Connection | None:
        stale = self.loop.time() - self.keepalive
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and connection.idle_since > stale:
                return connection
            connection.close()
        return None

    async def acquire(self, connect_timeout: float) -> tuple[Connection, bool]:
        """A connection for one exchange, and whether it was used before."""
        connection = self._take_idle()
        if connection is not None:  # the usual case: no timer needed
            return connection, True
        async with asyncio.timeout(connect_timeout):
            while True:
                if self._closed:
                    raise ConnectionResetError("the upstream client is closed")
                connection = self._take_idle()
                if connection is not None:
                    return connection, True
                if len(self._open) < self.limit:
                    return await self._connect(), False
                waiter = self.loop.create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if not waiter.done() or waiter.cancelled():
                        self._remove_waiter(waiter)

    def _remove_waiter(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    async def _connect(self) -> Connection:
        connection = Connection(self)
        self._open.add(connection)
        try:
            await self.loop.create_connection(
                lambda: connection, self.host, self.port, ssl=self._tls,
                server_hostname=self.host if self._tls is not None else None,
            )
        except BaseException:
            self.forget(connection)
            raise
        return connection

    def put(self, connection: Connection) -> None:
        if self._closed or connection.closed:
            connection.close()
            return
        connection.idle_since = self.loop.time()
        self._idle.append(connection)
        self._wake_one()

    def forget(self, connection: Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            self._wake_one()
        if connection in self._idle:
            self._idle.remove(connection)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        await asyncio.sleep(0)  # let the transports run their connection_lost


def may_retry(method: str, body: object, reused: bool, connection: Connection) -> bool:
    """Whether a failed send may go again on a fresh connection: the connection was reused,
    the upstream sent nothing back, the method is idempotent and the body can be sent again."""
    return (reused and not connection.answered and method in _IDEMPOTENT
            and (body is None or isinstance(body, bytes)))


def framing(method: str, body: bytes | StreamReader | None, stream_length: int | None) -> str:
    """The body framing field for a request (see ``request_head``)."""
    if body is None:
        return "Content-Length: 0\r\n" if method in _MAY_HAVE_BODY else ""
    if isinstance(body, bytes):
        return f"Content-Length: {len(body)}\r\n"
    if stream_length is not None:
        return f"Content-Length: {stream_length}\r\n"
    return "Transfer-Encoding: chunked\r\n"
