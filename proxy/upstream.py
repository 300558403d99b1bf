"""The upstream client: one keep-alive ``proxy.http1.Pool`` per application, and the only place
that translates the client's errors (``TimeoutError`` -> ``UpstreamTimeout`` 504; a refused,
reset or closed connection, or an answer that is not HTTP/1.1 -> ``UpstreamUnavailable`` 502).

Requests go out as the proxy built them: no header of the client's own (no ``User-Agent``,
``Accept``, ``Accept-Encoding`` or ``Content-Type`` the client did not send), no cookies, no
redirects followed, no decompression. Errors are mapped around upstream operations only, so a
failure writing to the downstream client is never reported as the upstream's.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final

from aiohttp import StreamReader
from yarl import URL

from proxy.config import Timeouts
from proxy.errors import BadResponse, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from proxy.http1 import Pool, Response, framing, may_retry, request_head

__all__ = ["Body", "Response", "Upstream"]

Body = bytes | StreamReader | None
"""A request body: whole (sent with ``Content-Length``), streamed, or none."""

Observer = Callable[[str, float, str], None]
"""(route label, seconds, outcome) -> None; outcome is ok | unavailable | timeout | error."""

_KEEPALIVE: Final = 30.0
"""Seconds an idle upstream connection is kept (below the usual 60-75 s of servers, so the
proxy, not the upstream, closes it: fewer requests race a closing connection)."""
_UNAVAILABLE: Final = (OSError, BadResponse)


class Upstream:
    """Sends requests to one cart service origin over a keep-alive pool."""

    def __init__(
        self, origin: URL | str, timeouts: Timeouts, *, pool_size: int = 256,
        observe: Observer | None = None,
    ) -> None:
        origin = URL(str(origin))
        self._host, self._port = origin.raw_host or "", origin.port or 80
        self._host_field = origin.host_port_subcomponent or self._host
        self._tls = origin.scheme == "https"
        self._timeouts = timeouts
        self._pool_size = pool_size
        self._observe = observe
        self._pool: Pool | None = None

    async def start(self) -> None:
        self._pool = Pool(
            self._host, self._port, limit=self._pool_size, keepalive=_KEEPALIVE,
            tls=ssl.create_default_context() if self._tls else None,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("the upstream client is not started (app not running)")
        return self._pool

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: Iterable[tuple[str, str]],
        data: Body,
        *,
        route: str,
        streaming: bool,
        length: int | None = None,
    ) -> Response:
        """Send one request; the caller must ``release()`` the response when done with it.

        ``path_qs`` is the raw (still percent-encoded) path and query of the client's request;
        ``headers`` must not frame the body (no ``Content-Length``, ``Transfer-Encoding``):
        bytes go with their length, a stream with ``length`` when known, else chunked.
        ``streaming`` drops the total timeout, so long transfers are bounded by idleness only.
        """
        pool = self.pool
        started = time.perf_counter()
        outcome = "error"
        timeouts = self._timeouts
        head = request_head(method, path_qs, self._host_field, headers,
                            framing(method, data, length))
        deadline = None if streaming or timeouts.total is None \
            else pool.loop.time() + timeouts.total
        try:
            retried = False
            while True:
                connection, reused = await pool.acquire(timeouts.connect)
                try:
                    response = await connection.exchange(
                        head, data, stream_length=length, head_request=method == "HEAD",
                        read_timeout=timeouts.read, deadline=deadline,
                    )
                except BaseException as exc:
                    connection.close()
                    if (isinstance(exc, ConnectionError) and not retried
                            and may_retry(method, data, reused, connection)):
                        retried = True
                        continue
                    raise
                outcome = "ok"
                return response
        except TimeoutError as exc:
            outcome = "timeout"
            raise UpstreamTimeout(f"the cart service did not answer {method} {_path(path_qs)} "
                                  "in time") from exc
        except _UNAVAILABLE as exc:
            outcome = "unavailable"
            raise UpstreamUnavailable(f"the cart service could not be reached for {method} "
                                      f"{_path(path_qs)}: {_reason(exc)}") from exc
        finally:
            if self._observe is not None:
                self._observe(route, time.perf_counter() - started, outcome)

    async def read(self, response: Response, *, limit: int) -> bytes:
        """The whole response body, refusing (502) one larger than ``limit`` bytes."""
        declared = response.content_length
        if declared is not None and declared > limit:
            raise UpstreamError(f"the cart service's response ({declared} bytes) exceeds the "
                                f"inspection limit of {limit} bytes")
        if declared is not None:  # known and within the limit: no counting needed
            try:
                return await response.read()
            except (TimeoutError, *_UNAVAILABLE) as exc:
                raise _reading_error(exc) from exc
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.chunks(response):
            size += len(chunk)
            if size > limit:
                raise UpstreamError(f"the cart service's response exceeds the inspection limit "
                                    f"of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def chunks(self, response: Response) -> AsyncIterator[bytes]:
        """The response body as it arrives, errors mapped."""
        while True:
            try:
                chunk = await response.readany()
            except (TimeoutError, *_UNAVAILABLE) as exc:
                raise _reading_error(exc) from exc
            if not chunk:
                return
            yield chunk


def _reason(exc: BaseException) -> str:
    """A short cause for a problem ``detail``: the error's kind, and what it says when it is
    ours (a bad response names what was wrong)."""
    if isinstance(exc, BadResponse):
        return str(exc)
    return type(exc).__name__


def _reading_error(exc: BaseException) -> UpstreamError:
    """The error for a failure while reading a response body: timeouts 504, the rest 502."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("the cart service stopped sending its response")
    return UpstreamUnavailable(f"the cart service's response broke off: {_reason(exc)}")


def _path(path_qs: str) -> str:
    return path_qs.partition("?")[0]
