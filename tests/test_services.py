"""proxy.services: the system clock, the ``Services`` container's defaults, and the typed keys."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import MISSING, fields
from datetime import UTC, datetime, timedelta
from typing import Any, assert_type

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpClient

from proxy import services as services_module
from proxy.config import Settings
from proxy.core.engine import Engine
from proxy.core.routes import RouteMatch, RouteTable
from proxy.flags import StaticFlags
from proxy.health import Health
from proxy.inspection import Inspector
from proxy.metrics import ProxyMetrics
from proxy.services import REQUEST_ID, ROUTE, SERVICES, Clock, Services, system_clock
from proxy.tasks import Tasks
from proxy.upstream import Upstream


def test_system_clock_is_aware_utc_now() -> None:
    before = datetime.now(UTC)
    now = system_clock()
    after = datetime.now(UTC)
    assert isinstance(now, datetime)
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)
    assert before <= now <= after


def test_system_clock_is_a_clock() -> None:
    clock: Clock = system_clock  # checked by mypy: the injected seam accepts it
    first, second = clock(), clock()
    assert second - first < timedelta(seconds=1)
    assert first.tzinfo is UTC


def make_services(settings: Settings, engine: Engine, **optional: Any) -> Services:
    """A container of real parts with only the required fields given (plus ``optional``)."""
    flags = StaticFlags(settings.policy)
    return Services(
        settings=settings,
        engine=engine,
        inspector=Inspector(engine, flags),
        routes=RouteTable(settings.policy.routes),
        upstream=Upstream(settings.upstream, settings.timeouts),
        flags=flags,
        metrics=ProxyMetrics(CollectorRegistry()),
        clock=system_clock,
        health=Health(),
        **optional,
    )


def test_services_optional_fields_and_their_defaults() -> None:
    optional = {f.name: f for f in fields(Services)
                if f.default is not MISSING or f.default_factory is not MISSING}
    assert sorted(optional) == ["cache", "redis", "resolver", "tasks"]
    assert all(optional[name].default is None for name in ("cache", "redis", "resolver"))
    assert optional["tasks"].default_factory is Tasks


def test_services_defaults(make_settings: Callable[..., Settings], engine: Engine) -> None:
    settings = make_settings()
    first = make_services(settings, engine)
    second = make_services(settings, engine)
    assert first.resolver is None  # short links are judged as written
    assert first.cache is None
    assert first.redis is None
    assert isinstance(first.tasks, Tasks)
    assert first.tasks is not second.tasks  # each application owns its background tasks
    assert len(first.tasks) == 0


def test_services_has_slots(make_settings: Callable[..., Settings], engine: Engine) -> None:
    """A misspelt field is an error, not a silently added attribute."""
    services = make_services(make_settings(), engine)
    with pytest.raises(AttributeError):
        services.resolvers = None  # type: ignore[attr-defined]


def test_keys_are_typed_and_namespaced() -> None:
    keys: list[web.AppKey[Any] | web.RequestKey[Any]] = [SERVICES, REQUEST_ID, ROUTE]
    assert isinstance(SERVICES, web.AppKey)
    assert isinstance(REQUEST_ID, web.RequestKey)
    assert isinstance(ROUTE, web.RequestKey)
    # The middleware runs inside a host's application, beside the host's own keys.
    names = [re.sub(r"^<\w+Key\((.*), type=.*$", r"\1", repr(key)) for key in keys]
    assert all(name.endswith((".cart_link_proxy.services", ".cart_link_proxy.request_id",
                              ".cart_link_proxy.route")) for name in names), names
    assert len(set(names)) == len(names), names
    assert "Services" in repr(SERVICES)
    assert "str" in repr(REQUEST_ID)
    assert "RouteMatch" in repr(ROUTE)
    assert set(services_module.__all__) >= {"SERVICES", "REQUEST_ID", "ROUTE", "Clock", "Services",
                                             "system_clock"}


async def test_keys_carry_values_through_an_application(
    aiohttp_client: AiohttpClient, make_settings: Callable[..., Settings], engine: Engine
) -> None:
    """Typed storage on a real app and request; no string keys (``NotAppKeyWarning`` is an
    error under this suite's warning filter)."""
    services = make_services(make_settings(), engine)
    seen: list[tuple[Services, str, RouteMatch | None]] = []

    @web.middleware
    async def tag(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        request[REQUEST_ID] = "rid-1"
        match = request.app[SERVICES].routes.match(request.method, request.path)
        if match is not None:  # as forwarding does: unrouted requests carry no ROUTE
            request[ROUTE] = match
        response: web.StreamResponse = await handler(request)
        return response

    async def handle(request: web.Request) -> web.Response:
        found = request.app[SERVICES]
        assert_type(found, Services)
        assert_type(request[REQUEST_ID], str)
        seen.append((found, request[REQUEST_ID], request.get(ROUTE)))
        return web.Response(text="ok")

    app = web.Application(middlewares=[tag])
    app[SERVICES] = services
    app.router.add_route("*", "/{tail:.*}", handle)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    assert (await client.post("/v1/live/r1/cart/items")).status == 200
    assert (await client.get("/not/a/route")).status == 200
    (first, rid, route), (_, _, unrouted) = seen
    assert first is services
    assert rid == "rid-1"
    assert route is not None
    assert route.route.id == "live-cart-add"
    assert route.params == {"room_id": "r1"}
    assert unrouted is None


def test_importing_services_does_not_import_the_app() -> None:
    """Modules read their keys from here, so ``proxy.app`` (which imports them all) stays out."""
    code = "import sys, proxy.services; print('proxy.app' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "False"
