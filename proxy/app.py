"""``create_app``: the proxy as an ``aiohttp.web.Application``, and its operations app.

Everything is built here, once: the engine (unless injected), the route table, the inspector,
the metrics; ``cleanup_ctx`` opens the one upstream ``ClientSession`` and closes it (and the
background tasks) on shutdown. The server never decompresses request bodies
(``handler_args={"auto_decompress": False}``): they are inspected decoded but forwarded as sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.config import Settings
from proxy.core.engine import Engine
from proxy.core.routes import RouteTable
from proxy.forwarding import forward
from proxy.health import Health, add_health_routes
from proxy.inspection import Inspector
from proxy.metrics import ProxyMetrics, make_metrics_app
from proxy.middleware import metrics_middleware, problem_middleware, request_id_middleware
from proxy.policyfile import build_engine
from proxy.services import SERVICES, Clock, FlagSource, LinkResolver, Services, StaticFlags
from proxy.upstream import Upstream

__all__ = ["create_app", "create_ops_app"]


def create_app(
    settings: Settings,
    *,
    clock: Clock,
    registry: CollectorRegistry,
    engine: Engine | None = None,
    flags: FlagSource | None = None,
    resolver: LinkResolver | None = None,
    health: Health | None = None,
) -> web.Application:
    """The proxy application for ``settings``; nothing here touches the network until the app
    starts (``cleanup_ctx``)."""
    policy = settings.policy
    engine = engine if engine is not None else build_engine(policy)
    metrics = ProxyMetrics(
        registry,
        routes=[r.id for r in policy.routes],
        surfaces=list(policy.surfaces),
        platforms=list(policy.platforms),
    )
    metrics.set_policy_info(version=policy.version, name=policy.name)
    flags = flags if flags is not None else StaticFlags(policy)
    upstream = Upstream(
        settings.upstream, settings.timeouts, pool_size=settings.pool_size,
        observe=lambda route, seconds, outcome: metrics.observe_upstream(
            route=route, seconds=seconds, outcome=outcome),
    )
    services = Services(
        settings=settings,
        engine=engine,
        inspector=Inspector(engine, flags, metrics=metrics, resolver=resolver),
        routes=RouteTable(policy.routes),
        upstream=upstream,
        flags=flags,
        metrics=metrics,
        clock=clock,
        health=health if health is not None else Health(),
        resolver=resolver,
    )
    # Order, outermost first: the request id exists before anything can log or fail; metrics
    # wrap the problem renderer so they count the status actually sent, errors included; the
    # renderer is innermost so every error of the handler becomes problem+json once.
    app = web.Application(
        middlewares=[request_id_middleware, metrics_middleware(metrics),
                     problem_middleware(metrics)],
        handler_args={"auto_decompress": False},
        client_max_size=settings.limits.max_body_bytes,
    )
    app[SERVICES] = services
    app.cleanup_ctx.append(_upstream_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    await services.upstream.start()
    yield
    await services.tasks.aclose()
    await services.upstream.close()


def create_ops_app(app: web.Application) -> web.Application:
    """``/metrics``, ``/healthz`` and ``/readyz`` for the proxy ``app``, served on its own port."""
    services = app[SERVICES]
    ops = make_metrics_app(services.metrics)
    add_health_routes(ops, services.health)
    return ops
