"""aiohttp middlewares: the proxy's own (request id, metrics, error-to-problem, as one) and
``policy_middleware``, which applies the link policy inside an aiohttp cart service.

``proxy_middleware`` does three jobs in one middleware: each middleware costs an aiohttp call
layer and a coroutine per request, and the throughput target is set against a bare pass-through.

``policy_middleware`` runs the same ``proxy.inspection`` as the proxy over the same route table,
so a cart service gets the same decisions, the same headers and the same problem+json errors::

    from proxy.middleware import policy_middleware
    from proxy.policyfile import build_engine, load_policy

    engine = build_engine(load_policy("config/policy.yaml"))
    app = web.Application(middlewares=[policy_middleware(engine=engine)])

Handlers behind it must read bodies with ``await request.read()`` / ``json()`` / ``text()``
(the inspected, possibly edited body is handed over that way; ``request.content`` is consumed).
Routed responses are inspected when the handler returns a ``web.Response`` with a JSON body
(``web.json_response``); a ``StreamResponse`` is passed on as it is. As in the proxy, a routed
read reaches its handler without ``Range`` or cache conditions (``headers.PARTIAL_OR_CACHED``),
and an edited body loses the digests and ``ETag`` of the original.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict

from proxy import headers as hdr
from proxy import intake, problem
from proxy.config import Limits, NonJSON
from proxy.core.engine import Engine
from proxy.core.model import Direction
from proxy.core.policy import RouteSpec
from proxy.core.routes import RouteTable
from proxy.errors import ClientFacingError, InputError
from proxy.flags import FlagSource, StaticFlags
from proxy.inspection import Inspector, not_json, published_body
from proxy.metrics import PASSTHROUGH_ROUTE, ProxyMetrics
from proxy.services import REQUEST_ID, ROUTE, Clock, system_clock

__all__ = ["policy_middleware", "proxy_middleware"]

_NONE: Final = "none"


def _render(request: web.Request, exc: ClientFacingError,
            metrics: ProxyMetrics | None) -> web.Response:
    if metrics is not None and isinstance(exc, InputError):
        metrics.observe_bad_input(reason=exc.slug)
    return problem.render(exc, instance=request.path, request_id=request.get(REQUEST_ID))


def _unexpected(request: web.Request, exc: Exception) -> web.Response:
    """The one place that turns a bug into a 500 (logged)."""
    transport = request.transport
    if isinstance(exc, ConnectionError) and (transport is None or transport.is_closing()):
        # The client went away; nobody reads this answer (499, as nginx logs it).
        return web.Response(status=499)
    return problem.render_unexpected(exc, instance=request.path,
                                     request_id=request.get(REQUEST_ID))


def _without(headers: Mapping[str, str], names: Iterable[str]) -> CIMultiDict[str]:
    """A copy of ``headers`` without any field named in ``names``."""
    out = CIMultiDict(headers)
    for name in names:
        out.popall(name, None)
    return out


def _observe(metrics: ProxyMetrics, request: web.Request, status: int, started: float) -> None:
    match = request.get(ROUTE)
    metrics.observe_request(
        route=match.route.id if match else PASSTHROUGH_ROUTE,
        surface=match.route.surface if match else _NONE,
        method=request.method, status=status, seconds=time.perf_counter() - started,
    )


def proxy_middleware(metrics: ProxyMetrics) -> Middleware:
    """The proxy's one middleware, doing in this order (outermost first): take the client's
    ``X-Request-Id`` (or make one), store it and echo it; count the request by route, surface,
    method and the status actually sent (in-flight gauge, duration); turn every
    ``ClientFacingError`` into problem+json and anything unexpected into a logged 500, while
    aiohttp's own ``HTTPException``s and cancellation pass through. One middleware rather than
    three: each costs an aiohttp call layer on every request."""
    in_flight = metrics.in_flight()

    @web.middleware
    async def proxy(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request[REQUEST_ID] = hdr.request_id(request.headers)
        status = 500
        try:
            with in_flight:
                try:
                    response = await handler(request)
                except ClientFacingError as exc:
                    response = _render(request, exc, metrics)
                except web.HTTPException as exc:
                    status = exc.status
                    raise
                except asyncio.CancelledError:
                    status = 499  # client closed the connection (nginx's convention)
                    raise
                except Exception as exc:
                    response = _unexpected(request, exc)
            status = response.status
            if not response.prepared:
                response.headers[hdr.REQUEST_ID] = request_id
            return response
        finally:
            _observe(metrics, request, status, started)

    return proxy


def policy_middleware(
    *,
    engine: Engine,
    flags: FlagSource | None = None,
    metrics: ProxyMetrics | None = None,
    clock: Clock = system_clock,
    limits: Limits | None = None,
    routes: tuple[RouteSpec, ...] | None = None,
    server_decompresses: bool = True,
) -> Middleware:
    """The link policy as an aiohttp middleware for a cart service.

    ``routes`` defaults to the engine's policy routes and ``flags`` to the policy's rollout
    defaults. ``server_decompresses`` must match the host server's ``auto_decompress`` (aiohttp's
    default True: bodies arrive decoded, and the decoded size is what ``max_decoded_bytes``
    bounds).
    """
    limits = limits if limits is not None else Limits()
    table = RouteTable(routes if routes is not None else engine.policy.routes)
    inspector = Inspector(engine, flags or StaticFlags(engine.policy), metrics=metrics)

    async def write(request: web.Request, handler: Handler, route: RouteSpec,
                    request_id: str) -> web.StreamResponse:
        content_type = request.headers.get("Content-Type")
        if not intake.is_json(content_type):
            if limits.non_json == NonJSON.PASS:
                return await handler(request)
            raise not_json(route, content_type)
        encoding = request.headers.get("Content-Encoding")
        passage = await inspector.judge(
            route,
            await intake.read_json(
                request.content,
                length=None if server_decompresses else hdr.content_length(request.headers),
                encoding=None if server_decompresses else encoding,
                max_body_bytes=limits.max_decoded_bytes if server_decompresses
                else limits.max_body_bytes,
                max_decoded_bytes=limits.max_decoded_bytes,
                max_json_depth=limits.max_json_depth,
            ),
            headers=request.headers, at=clock(), request_id=request_id,
        )
        if passage.edited:
            edited = _without(request.headers, hdr.EDITED_BODY)
            edited["Content-Length"] = str(len(passage.data))
            request = request.clone(headers=edited)
        # aiohttp keeps a read body here; the handler's read()/json() return it.
        request._read_bytes = passage.data
        response = await handler(request)
        if not response.prepared:
            for name, value in passage.headers:
                response.headers.add(name, value)
        return response

    async def read(request: web.Request, handler: Handler, route: RouteSpec,
                   request_id: str) -> web.StreamResponse:
        if any(name in request.headers for name in hdr.PARTIAL_OR_CACHED):
            request = request.clone(headers=_without(request.headers, hdr.PARTIAL_OR_CACHED))
        response = await handler(request)
        if (not isinstance(response, web.Response) or response.prepared
                or not 200 <= response.status < 300
                or not intake.is_json(response.headers.get("Content-Type"))
                or not isinstance(response.body, bytes)):
            return response
        passage = await inspector.judge(
            route, published_body(response.body, encoding=None, limits=limits),
            headers=request.headers, at=clock(), request_id=request_id,
        )
        if passage.edited:
            response.body = passage.data
            for name in hdr.EDITED_ANSWER:
                response.headers.popall(name, None)
        for name, value in passage.headers:
            response.headers.add(name, value)
        return response

    @web.middleware
    async def link_policy(request: web.Request, handler: Handler) -> web.StreamResponse:
        match = table.match(request.method, request.path)
        if match is None:
            return await handler(request)
        request_id = request.get(REQUEST_ID) or hdr.request_id(request.headers)
        step: Callable[..., Awaitable[web.StreamResponse]] = (
            write if match.route.direction is Direction.REQUEST else read
        )
        try:
            return await step(request, handler, match.route, request_id)
        except ClientFacingError as exc:
            if metrics is not None and isinstance(exc, InputError):
                metrics.observe_bad_input(reason=exc.slug)
            return problem.render(exc, instance=request.path, request_id=request_id)

    return link_policy
