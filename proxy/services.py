"""The application's services in one typed container, and the typed app/request keys.

Modules read what they need from ``request.app[SERVICES]`` and per-request values from the
``web.RequestKey``s below, so nothing imports ``proxy.app`` for its keys. The seams other parts
plug into are Protocols: ``FlagSource`` (rollout flags; ``StaticFlags`` serves the policy file's
defaults, a Redis-backed store replaces it) and ``LinkResolver`` (short-link resolution; None
means short links are judged as written).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from aiohttp import web

from proxy.config import Settings
from proxy.core.engine import Engine
from proxy.core.policy import Policy
from proxy.core.rollout import FlagSnapshot
from proxy.core.routes import RouteMatch, RouteTable
from proxy.health import Health
from proxy.inspection import Inspector
from proxy.metrics import ProxyMetrics
from proxy.tasks import Tasks
from proxy.upstream import Upstream

__all__ = [
    "REQUEST_ID",
    "ROUTE",
    "SERVICES",
    "Clock",
    "FlagSource",
    "LinkResolver",
    "Services",
    "StaticFlags",
    "system_clock",
]

Clock = Callable[[], datetime]
"""Returns the current aware instant; injected so tests can stand before or after a cutoff."""


def system_clock() -> datetime:
    return datetime.now(UTC)


class FlagSource(Protocol):
    def snapshot(self) -> FlagSnapshot:
        """The current rollout flags; cheap, called once per inspected message."""
        ...


class LinkResolver(Protocol):
    def handles(self, url: str) -> bool:
        """True for a link of a listed shortener host."""
        ...

    async def resolve_many(self, urls: Sequence[str]) -> Mapping[str, str | None]:
        """Where each short link leads (None: unknown); must not raise."""
        ...


class StaticFlags:
    """The rollout defaults written in the policy file, fixed for the process lifetime."""

    def __init__(self, policy: Policy) -> None:
        self._snapshot = FlagSnapshot.from_policy(policy.rollout)

    def snapshot(self) -> FlagSnapshot:
        return self._snapshot


@dataclass(slots=True)
class Services:
    settings: Settings
    engine: Engine
    inspector: Inspector
    routes: RouteTable
    upstream: Upstream
    flags: FlagSource
    metrics: ProxyMetrics
    clock: Clock
    health: Health
    tasks: Tasks = field(default_factory=Tasks)
    resolver: LinkResolver | None = None
    """Resolves short links of the hosts it ``handles``; None: links are judged as written."""


SERVICES = web.AppKey("cart_link_proxy.services", Services)
REQUEST_ID = web.RequestKey("cart_link_proxy.request_id", str)
ROUTE = web.RequestKey("cart_link_proxy.route", RouteMatch)
