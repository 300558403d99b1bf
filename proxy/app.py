"""``create_app``: the proxy as an ``aiohttp.web.Application``, and its operations and admin apps.

Everything is built here, once, without I/O: the engine (unless injected), the route table, the
inspector, the metrics, and — when ``Settings.redis`` is set — the Redis client, the guard with
its circuit breaker, the flag store and the tiered short-link cache. ``cleanup_ctx`` then opens
what needs the running loop (the upstream connection pool, the resolver's own session, the flag
watcher) and closes all of it, in reverse, on shutdown. The server never decompresses request
bodies (``handler_args={"auto_decompress": False}``): they are inspected decoded but forwarded as
sent.

What is shared through Redis and what stays local (``docs/rollout.md`` has the numbers): flags and
resolved short links go through Redis; classification and decisions stay in the engine's
in-process memo, because deciding locally is cheaper than one loopback round trip.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.admin import create_admin_app
from proxy.breaker import CircuitBreaker, RedisGuard
from proxy.cache import DecisionCache, LocalCache, RedisCache, TieredCache
from proxy.config import Settings
from proxy.core.engine import Engine
from proxy.core.routes import RouteTable
from proxy.flags import FlagSource, RedisFlagStore, StaticFlags, export_snapshot
from proxy.forwarding import forward
from proxy.health import Health, add_health_routes
from proxy.inspection import Inspector
from proxy.metrics import ProxyMetrics, make_metrics_app
from proxy.middleware import proxy_middleware
from proxy.policyfile import build_engine
from proxy.redisconn import RedisClient, connect
from proxy.resolver import LinkResolver, ResolverSettings, ShortLinkResolver
from proxy.services import SERVICES, Clock, Services
from proxy.tasks import Tasks
from proxy.upstream import Upstream

__all__ = ["create_admin", "create_app", "create_ops_app"]


@dataclass(frozen=True, slots=True)
class _Owned:
    """What ``create_app`` built and so must start and stop (injected parts are the caller's)."""

    store: RedisFlagStore | None
    resolver: ShortLinkResolver | None
    redis: RedisClient | None


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
    starts (``cleanup_ctx``). ``flags`` and ``resolver``, when given, belong to the caller."""
    policy = settings.policy
    engine = engine if engine is not None else build_engine(policy)
    metrics = ProxyMetrics(
        registry,
        routes=[r.id for r in policy.routes],
        surfaces=list(policy.surfaces),
        platforms=list(policy.platforms),
    )
    metrics.set_policy_info(version=policy.version, name=policy.name)
    tasks = Tasks()
    client = connect(settings.redis) if settings.redis is not None else None
    local = LocalCache(maxsize=settings.cache_local_size, clock=time.monotonic, metrics=metrics)
    cache: DecisionCache = local
    store: RedisFlagStore | None = None
    if client is not None:
        guard = RedisGuard(CircuitBreaker(clock=time.monotonic, metrics=metrics), metrics=metrics)
        cache = TieredCache(local, RedisCache(client, guard, metrics=metrics), spawn=tasks.spawn,
                            local_ttl=settings.cache_local_ttl)
        if flags is None:
            store = flags = RedisFlagStore.for_policy(client, policy, clock=clock,
                                                      spawn=tasks.spawn, metrics=metrics)
    flags = flags if flags is not None else StaticFlags(policy)
    # The gauges exist from the start, even if Redis is down and the store never reads.
    export_snapshot(metrics, flags.snapshot(), policy.surfaces)
    owned_resolver: ShortLinkResolver | None = None
    if resolver is None and policy.shorteners:
        resolver = owned_resolver = ShortLinkResolver(
            settings.resolver or ResolverSettings.build(shorteners=policy.shorteners),
            clock=time.monotonic, cache=cache, metrics=metrics, known=_known_platform(engine),
        )
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
        tasks=tasks,
        resolver=resolver,
        cache=cache,
        redis=client,
    )
    # One middleware (proxy_middleware): the request id exists before anything can log or fail;
    # metrics wrap the problem renderer so they count the status actually sent, errors included;
    # the renderer is innermost so every error of the handler becomes problem+json once.
    app = web.Application(
        middlewares=[proxy_middleware(metrics)],
        handler_args={"auto_decompress": False},
        client_max_size=settings.limits.max_body_bytes,
    )
    app[SERVICES] = services
    app.cleanup_ctx.append(_lifecycle(_Owned(store, owned_resolver, client)))
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def _known_platform(engine: Engine) -> Callable[[str], bool]:
    """A redirect target the engine can judge as it stands: a page of a platform the policy
    names (and not itself a shortener), so the resolver need not fetch it."""

    def known(url: str) -> bool:
        return any(link.matches and not engine.needs_resolution(link)
                   for link in engine.links(url))

    return known


def _lifecycle(owned: _Owned) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        services = app[SERVICES]
        # Each part is closed once it has started, in reverse order, even when a later start
        # fails (aiohttp then never resumes this generator) or an earlier close raises.
        async with AsyncExitStack() as stack:
            if owned.redis is not None:
                stack.push_async_callback(owned.redis.aclose)
            await services.upstream.start()
            stack.push_async_callback(services.upstream.close)
            stack.push_async_callback(services.tasks.aclose)
            if owned.resolver is not None:
                await owned.resolver.start()
                stack.push_async_callback(owned.resolver.aclose)
            if owned.store is not None:
                # One bounded read (the policy's flags serve if Redis is down), then the watcher.
                await owned.store.start()
                stack.push_async_callback(owned.store.stop)
            yield

    return lifecycle


def create_ops_app(app: web.Application) -> web.Application:
    """``/metrics``, ``/healthz`` and ``/readyz`` for the proxy ``app``, served on its own port."""
    services = app[SERVICES]
    ops = make_metrics_app(services.metrics)
    add_health_routes(ops, services.health)
    return ops


def create_admin(app: web.Application) -> web.Application:
    """The admin API over the proxy ``app``'s flags and engine; needs ``Settings.admin_token``.

    Serve it on its own port, after ``app`` has started (its flag store is started there).
    """
    services = app[SERVICES]
    token = services.settings.admin_token
    if not token:
        raise ValueError("the admin API needs CART_PROXY_ADMIN_TOKEN")
    return create_admin_app(flags=services.flags, engine=services.engine, token=token,
                            clock=services.clock)
