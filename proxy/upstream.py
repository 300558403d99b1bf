"""The upstream client: one pooled ``ClientSession`` per application, and the only place that
translates aiohttp's client errors (``TimeoutError`` -> ``UpstreamTimeout`` 504, any other
``aiohttp.ClientError`` -> ``UpstreamUnavailable`` 502).

The session never decompresses (bodies are forwarded as received), ignores proxy environment
variables, keeps no cookies, follows no redirects and adds no headers of its own (no
``User-Agent``, ``Accept``, ``Accept-Encoding`` or ``Content-Type`` the client did not send).
Errors are mapped around upstream operations only, so a failure writing to the downstream client
is never reported as the upstream's.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Final

import aiohttp
from aiohttp.typedefs import LooseHeaders
from multidict import CIMultiDict
from yarl import URL

from proxy.config import Timeouts
from proxy.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

__all__ = ["Upstream"]

_SKIP_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")

_SKIP: Final[CIMultiDict[None]] = CIMultiDict((name, None) for name in _SKIP_AUTO_HEADERS)


class _AsSentRequest(aiohttp.ClientRequest):
    """A client request that adds no header of its own, like ``skip_auto_headers`` for every
    default, but with one shared skip set: aiohttp 3.14 sorts and copies the session's set
    into two new multidicts per request (1.6 % of the proxy's samples, py-spy)."""

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        # No Accept, Accept-Encoding or User-Agent (the base class adds them here); the skip
        # set is read again when aiohttp copies payload headers (the payload's Content-Type).
        self._skip_auto_headers = _SKIP


Observer = Callable[[str, float, str], None]
"""(route label, seconds, outcome) -> None; outcome is ok | unavailable | timeout | error."""


class Upstream:
    """Sends requests to one cart service origin over a keep-alive pool."""

    def __init__(
        self, origin: URL, timeouts: Timeouts, *, pool_size: int = 256,
        observe: Observer | None = None,
    ) -> None:
        self.origin = str(origin).rstrip("/")
        self._bounded = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, connect=timeouts.connect,
            sock_read=timeouts.read,
        )
        self._streaming = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, connect=timeouts.connect,
            sock_read=timeouts.read,
        )
        self._pool_size = pool_size
        self._observe = observe
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._pool_size, limit_per_host=self._pool_size, keepalive_timeout=30,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=_SKIP_AUTO_HEADERS,
            timeout=self._bounded, request_class=_AsSentRequest,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the upstream client is not started (app not running)")
        return self._session

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: LooseHeaders,
        data: Any,
        *,
        route: str,
        streaming: bool,
    ) -> aiohttp.ClientResponse:
        """Send one request; the caller must ``release()`` the response when done with it.

        ``path_qs`` is the raw (still percent-encoded) path and query of the client's request.
        ``streaming`` drops the total timeout, so long transfers are bounded by idleness only.
        """
        started = time.perf_counter()
        outcome = "error"
        try:
            response = await self.session.request(
                method, URL(self.origin + path_qs, encoded=True), headers=headers, data=data,
                allow_redirects=False, timeout=self._streaming if streaming else self._bounded,
                compress=None, chunked=None, auto_decompress=False,
            )
            outcome = "ok"
            return response
        except TimeoutError as exc:
            outcome = "timeout"
            raise UpstreamTimeout(f"the cart service did not answer {method} {_path(path_qs)} "
                                  "in time") from exc
        except aiohttp.ClientError as exc:
            outcome = "unavailable"
            raise UpstreamUnavailable(f"the cart service could not be reached for {method} "
                                      f"{_path(path_qs)}: {type(exc).__name__}") from exc
        finally:
            if self._observe is not None:
                self._observe(route, time.perf_counter() - started, outcome)

    async def read(self, response: aiohttp.ClientResponse, *, limit: int) -> bytes:
        """The whole response body, refusing (502) one larger than ``limit`` bytes."""
        declared = response.content_length
        if declared is not None and declared > limit:
            raise UpstreamError(f"the cart service's response ({declared} bytes) exceeds the "
                                f"inspection limit of {limit} bytes")
        if declared is not None:  # known and within the limit: one read, not a loop
            try:
                return await response.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
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

    async def chunks(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """The response body as it arrives, errors mapped."""
        content = response.content
        while True:
            try:
                chunk = await content.readany()
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _reading_error(exc) from exc
            if not chunk:
                return
            yield chunk


def _reading_error(exc: TimeoutError | aiohttp.ClientError) -> UpstreamError:
    """The error for a failure while reading a response body: timeouts 504, the rest 502."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("the cart service stopped sending its response")
    return UpstreamUnavailable(f"the cart service's response broke off: {type(exc).__name__}")


def _path(path_qs: str) -> str:
    return path_qs.partition("?")[0]
