"""The catch-all handler: routed writes are inspected, routed reads rewritten, all else streamed.

- Routed write: the body is read under the limits (``proxy.intake``), inspected
  (``proxy.inspection``) and then refused (422), forwarded edited (strip/rewrite, re-serialised,
  ``Content-Encoding`` dropped) or forwarded as the **original bytes** (allow, shadow, pending).
- Routed read: the upstream's 2xx JSON answer is read, inspected as a response and, when edited,
  re-serialised with a new ``Content-Length``; status and other headers are kept.
- Everything else: request and response bodies are streamed chunk by chunk in both directions,
  so memory does not grow with the body size; only a body of known length up to 64 KiB is
  read whole and passed on in one piece (fewer loop turns than a streamed copy).
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from proxy import headers as hdr
from proxy import intake
from proxy.config import NonJSON
from proxy.core.model import Direction
from proxy.core.policy import RouteSpec
from proxy.errors import UpstreamError
from proxy.inspection import not_json, published_body
from proxy.metrics import PASSTHROUGH_ROUTE
from proxy.services import REQUEST_ID, ROUTE, SERVICES, Services
from proxy.upstream import Body, Response

__all__ = ["forward"]

_log: Final = logging.getLogger("cart_link_proxy.forwarding")
_NO_BODY_STATUS: Final = frozenset({204, 304})
_SMALL: Final = 64 * 1024
"""Upstream answers up to this size (with a Content-Length) are relayed in one piece."""
# Constant tuples: headers.upstream_fields builds each skip set once per tuple. The upstream
# client frames every body itself, so Content-Length is never passed on as received.
_AS_SENT: Final = ("Expect", "Content-Length")
_NEW_BODY: Final = (*_AS_SENT, *hdr.EDITED_BODY)
_WHOLE_ANSWER: Final = (*_AS_SENT, *hdr.PARTIAL_OR_CACHED)
_ANSWER_AS_SENT: Final = ("Content-Length",)
_NEW_ANSWER: Final = (*_ANSWER_AS_SENT, *hdr.EDITED_ANSWER)


async def forward(request: web.Request) -> web.StreamResponse:
    """Handle any request the proxy receives (registered for every method and path)."""
    services = request.app[SERVICES]
    match = services.routes.match(request.method, request.path)
    if match is None:
        return await stream_through(request, services, PASSTHROUGH_ROUTE)
    request[ROUTE] = match
    if match.route.direction is Direction.REQUEST:
        return await _routed_write(request, services, match.route)
    return await _routed_read(request, services, match.route)


def _upstream_headers(request: web.Request, drop: tuple[str, ...] = _AS_SENT
                      ) -> list[tuple[str, str]]:
    return hdr.upstream_fields(
        request.headers, peer=request.remote, scheme=request.scheme, host=request.host,
        request_id=request[REQUEST_ID], drop=drop,
    )


async def stream_through(
    request: web.Request, services: Services, route: str
) -> web.StreamResponse:
    """Forward ``request`` as it is, streaming its body, and stream the answer back.

    A small body of known length is read whole and sent as bytes: one read costs fewer loop
    turns than a streamed copy, and nothing large is ever held.
    """
    data: Body = None
    length = request.content_length
    if request.body_exists:
        data = (await request.content.read() if length is not None and length <= _SMALL
                else request.content)
    response = await services.upstream.send(
        request.method, request.raw_path, _upstream_headers(request), data,
        route=route, streaming=True, length=length,
    )
    try:
        return await _relay(request, services, response, ())
    finally:
        response.release()


def _answer_fields(request: web.Request, response: Response,
                   extra: tuple[tuple[str, str], ...], drop: tuple[str, ...] = ()
                   ) -> list[tuple[str, str]]:
    """The client's answer fields: the cart service's end-to-end ones less ``drop``, then
    ``extra`` (the policy's reports) and the proxy's own ``X-Request-Id``."""
    headers = hdr.downstream_fields(response.headers, drop=drop)
    headers += extra
    headers.append((hdr.REQUEST_ID, request[REQUEST_ID]))
    return headers


async def _relay(
    request: web.Request,
    services: Services,
    response: Response,
    extra: tuple[tuple[str, str], ...],
) -> web.StreamResponse:
    headers = _answer_fields(request, response, extra)
    length = response.content_length
    if length is not None and length <= _SMALL and request.method != "HEAD":
        # A small body of known length: one read and one plain response cost fewer loop turns
        # than a streamed copy, and nothing large is ever held.
        body = await services.upstream.read(response, limit=_SMALL)
        return web.Response(status=response.status, reason=response.reason, body=body,
                            headers=headers)
    out = web.StreamResponse(status=response.status, reason=response.reason, headers=headers)
    try:
        await out.prepare(request)
        async for chunk in services.upstream.chunks(response):
            await out.write(chunk)
    except UpstreamError as exc:
        # The status line is gone already: the only honest signal left is to cut the
        # connection, so the client sees a truncated body and not a complete-looking one.
        _log.warning("upstream broke off a streamed response: %s", exc.detail,
                     extra={"fields": {"request_id": request[REQUEST_ID]}})
        if request.transport is not None:
            request.transport.close()
        return out
    except ConnectionError:
        if request.transport is not None and not request.transport.is_closing():
            raise
        return out  # the client went away; aiohttp finishes quietly
    await out.write_eof()
    return out


async def _routed_write(
    request: web.Request, services: Services, route: RouteSpec
) -> web.StreamResponse:
    limits = services.settings.limits
    content_type = request.headers.get("Content-Type")
    if not intake.is_json(content_type):
        if limits.non_json == NonJSON.PASS:
            return await stream_through(request, services, route.id)
        raise not_json(route, content_type)
    passage = await services.inspector.judge(
        route,
        await intake.read_json(
            request.content, length=hdr.content_length(request.headers),
            encoding=request.headers.get("Content-Encoding"),
            max_body_bytes=limits.max_body_bytes, max_decoded_bytes=limits.max_decoded_bytes,
            max_json_depth=limits.max_json_depth,
        ),
        headers=request.headers, at=services.clock(), request_id=request[REQUEST_ID],
    )
    response = await services.upstream.send(
        request.method, request.raw_path,
        _upstream_headers(request, _NEW_BODY if passage.edited else _AS_SENT), passage.data,
        route=route.id, streaming=False,
    )
    try:
        return await _relay(request, services, response, passage.headers)
    finally:
        response.release()


async def _routed_read(
    request: web.Request, services: Services, route: RouteSpec
) -> web.StreamResponse:
    limits = services.settings.limits
    data = request.content if request.body_exists else None
    response = await services.upstream.send(
        request.method, request.raw_path, _upstream_headers(request, _WHOLE_ANSWER), data,
        route=route.id, streaming=False, length=request.content_length,
    )
    try:
        if (request.method == "HEAD" or not 200 <= response.status < 300
                or response.status in _NO_BODY_STATUS
                or not intake.is_json(response.headers.get("Content-Type"))):
            return await _relay(request, services, response, ())
        raw = await services.upstream.read(response, limit=limits.max_body_bytes)
    finally:
        response.release()
    passage = await services.inspector.judge(
        route,
        published_body(raw, encoding=response.headers.get("Content-Encoding"), limits=limits),
        headers=request.headers, at=services.clock(), request_id=request[REQUEST_ID],
    )
    headers = _answer_fields(request, response, passage.headers,
                             drop=_NEW_ANSWER if passage.edited else _ANSWER_AS_SENT)
    return web.Response(status=response.status, reason=response.reason, body=passage.data,
                        headers=headers)
