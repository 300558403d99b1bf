from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from proxy.app import create_app, create_ops_app
from proxy.services import SERVICES
from tests.conftest import fixed_clock


async def test_health_and_readiness(aiohttp_client: Any, engine: Any,
                                    make_settings: Any) -> None:
    app = create_app(make_settings(), clock=fixed_clock("after"), registry=CollectorRegistry(),
                     engine=engine)
    client = await aiohttp_client(create_ops_app(app))
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    app[SERVICES].health.draining = True
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200
    metrics = await client.get("/metrics")
    assert "cart_link_proxy_policy_info" in await metrics.text()
