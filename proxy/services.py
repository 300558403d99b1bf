"""The application's services in one typed container, and the typed app/request keys.

Modules read what they need from ``request.app[SERVICES]`` and per-request values from the
``web.RequestKey``s below, so nothing imports ``proxy.app`` for its keys. The seams other parts
plug into are Protocols defined next to their implementations: ``proxy.flags.FlagSource``
(``StaticFlags`` serves the policy file's rollout, the Redis-backed ``RedisFlagStore`` replaces
it) and ``proxy.resolver.LinkResolver`` (short-link resolution; None means short links are
judged as written).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from proxy.cache import DecisionCache
from proxy.config import Settings
from proxy.core.engine import Engine
from proxy.core.routes import RouteMatch, RouteTable
from proxy.flags import FlagSource
from proxy.health import Health
from proxy.inspection import Inspector
from proxy.metrics import ProxyMetrics
from proxy.redisconn import RedisClient
from proxy.resolver import LinkResolver
from proxy.tasks import Tasks
from proxy.upstream import Upstream

__all__ = [
    "REQUEST_ID",
    "ROUTE",
    "SERVICES",
    "Clock",
    "Services",
    "system_clock",
]

Clock = Callable[[], datetime]
"""Returns the current aware instant; injected so tests can stand before or after a cutoff."""


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Services:
    settings: Settings
    engine: Engine
    inspector: Inspector
    routes: RouteTable
    upstream: Upstream
    flags: FlagSource
    """``RedisFlagStore`` with ``REDIS_URL`` (the admin API can change it), else ``StaticFlags``."""
    metrics: ProxyMetrics
    clock: Clock
    health: Health
    tasks: Tasks = field(default_factory=Tasks)
    resolver: LinkResolver | None = None
    """Resolves short links of the hosts it ``handles``; None: links are judged as written."""
    cache: DecisionCache | None = None
    """Resolved short links: local LRU, then Redis when configured (``TieredCache``)."""
    redis: RedisClient | None = None
    """The one Redis client (flags and cache share its pool); closed on cleanup."""


SERVICES = web.AppKey("cart_link_proxy.services", Services)
REQUEST_ID = web.RequestKey("cart_link_proxy.request_id", str)
ROUTE = web.RequestKey("cart_link_proxy.route", RouteMatch)
