"""RFC 9457 problem details: the only code that builds error bodies.

A ``ClientFacingError`` becomes ``application/problem+json`` with ``type``, ``title``, ``status``,
``detail``, ``instance`` (the request path), ``request_id`` and the error's extensions (for a
blocked request: ``links``). Anything else is an internal error: logged once, with the request
id and traceback, and answered 500 without details.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import orjson
from aiohttp import web

from proxy.errors import ClientFacingError

__all__ = ["CONTENT_TYPE", "TYPE_BASE", "problem_body", "render", "render_unexpected"]

CONTENT_TYPE: Final = "application/problem+json"
TYPE_BASE: Final = "tag:cart-link-proxy,2022:problem:"
"""Problem type URIs are tag URIs (RFC 4151): stable names, documented in docs/proxy.md."""

_log = logging.getLogger("cart_link_proxy.problem")


def problem_body(
    *, slug: str, title: str, status: int, detail: str, instance: str | None,
    request_id: str | None, extensions: dict[str, Any] | None = None,
) -> bytes:
    body: dict[str, Any] = {
        "type": TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    if request_id is not None:
        body["request_id"] = request_id
    for key, value in (extensions or {}).items():
        body.setdefault(key, value)
    return orjson.dumps(body)


def _response(status: int, body: bytes, request_id: str | None) -> web.Response:
    response = web.Response(status=status, body=body, content_type=CONTENT_TYPE)
    if request_id is not None:
        response.headers["X-Request-Id"] = request_id
    return response


def render(
    error: ClientFacingError, *, instance: str | None = None, request_id: str | None = None
) -> web.Response:
    """The problem+json response for ``error``."""
    body = problem_body(
        slug=error.slug, title=error.title, status=error.status, detail=error.detail,
        instance=instance, request_id=request_id, extensions=dict(error.extensions),
    )
    return _response(error.status, body, request_id)


def render_unexpected(
    error: BaseException, *, instance: str | None = None, request_id: str | None = None
) -> web.Response:
    """Log ``error`` with its traceback and answer a detail-free 500 problem."""
    _log.error(
        "unexpected error handling %s", instance, exc_info=error,
        extra={"fields": {"request_id": request_id}},
    )
    body = problem_body(
        slug=ClientFacingError.slug, title=ClientFacingError.title, status=500,
        detail=f"The proxy failed unexpectedly; quote request id {request_id} when reporting it.",
        instance=instance, request_id=request_id,
    )
    return _response(500, body, request_id)
