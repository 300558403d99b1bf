"""Metrics and audit logs of the real proxy after real traffic.

The proxy serves traffic (allowed, blocked, rewritten on read, bad input, pass-through); then its
own ``/metrics`` endpoint is scraped and every metric name that the Grafana dashboard and the
Prometheus alerts query must be there, and the traffic must show in the samples.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import create_ops_app
from proxy.logs import AUDIT_LOGGER

ROOT = Path(__file__).resolve().parents[2]
METRIC_NAME = re.compile(r"\bcart_link_proxy_[a-z0-9_]+")
SUFFIXES = ("_total", "_created", "_bucket", "_sum", "_count", "_info")


def queried_names() -> set[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "cart-link-proxy.json").read_text("utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text("utf-8"))
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    # Recording rules define names of their own (level:metric:operation); those are not exported.
    recorded = {rule["record"] for group in rules["groups"] for rule in group["rules"]
                if "record" in rule}
    return {name for expr in exprs for name in METRIC_NAME.findall(expr)} - recorded


def family_of(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


CART_ITEM = {"item_id": "i1", "title": "好物", "url": "https://app.kwaixiaodian.com/item/1"}
TAOBAO_ITEM = {"item_id": "i2", "title": "同款", "url": "https://item.taobao.com/item.htm?id=1"}


async def cart_with_taobao(request: web.Request, body: bytes) -> web.StreamResponse:
    if request.method == "GET":
        return web.json_response({"room_id": "r1", "items": [CART_ITEM, TAOBAO_ITEM]})
    return web.json_response({"ok": True})


@pytest.fixture
async def scraped(
    make_proxy: Any, upstream: Any, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> tuple[dict[str, Any], list[logging.LogRecord]]:
    recorder, _ = upstream
    recorder.reply = cart_with_taobao
    proxy = await make_proxy(at="after")
    headers = {"X-Seller-Id": "seller-1", "Content-Type": "application/json"}
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        allowed = await proxy.post("/v1/live/r1/cart/items", headers=headers,
                                   data=json.dumps({"items": [CART_ITEM]}))
        blocked = await proxy.post("/v1/live/r1/cart/items", headers=headers,
                                   data=json.dumps({"items": [TAOBAO_ITEM]}))
        rewritten = await proxy.get("/v1/live/r1/cart", headers=headers)
        bad = await proxy.post("/v1/live/r1/cart/items", headers=headers, data=b"{not json")
        passthrough = await proxy.get("/v1/other/thing")
    assert [allowed.status, blocked.status, rewritten.status, bad.status, passthrough.status] == [
        200, 422, 200, 400, 200]
    ops = await aiohttp_client(create_ops_app(proxy.app))
    response = await ops.get("/metrics")
    assert response.status == 200
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    audits = [r for r in caplog.records if r.name == AUDIT_LOGGER]
    return families, audits


def sample(families: dict[str, Any], family: str, name: str, **labels: str) -> float:
    return sum(
        s.value for s in families[family].samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_every_queried_metric_is_served(scraped: tuple[dict[str, Any], Any]) -> None:
    families, _ = scraped
    names = queried_names()
    assert len(names) >= 15
    missing = sorted(n for n in names if n not in families and family_of(n) not in families)
    assert missing == [], f"dashboard/alerts query metrics the proxy does not serve: {missing}"


async def test_traffic_shows_in_the_samples(scraped: tuple[dict[str, Any], Any]) -> None:
    families, _ = scraped
    requests = "cart_link_proxy_requests"
    assert sample(families, requests, f"{requests}_total", route="live-cart-add",
                  status_class="4xx") == 2
    assert sample(families, requests, f"{requests}_total", route="live-cart-read",
                  status_class="2xx") == 1
    links = "cart_link_proxy_links"
    assert sample(families, links, f"{links}_total", platform="taobao", action="block",
                  mode="enforce") == 1
    assert sample(families, links, f"{links}_total", platform="taobao", action="rewrite") == 1
    assert sample(families, links, f"{links}_total", platform="own", action="allow") >= 2
    bad = "cart_link_proxy_bad_input"
    assert sample(families, bad, f"{bad}_total", reason="malformed-json") == 1
    inspection = "cart_link_proxy_inspection_duration_seconds"
    assert sample(families, inspection, f"{inspection}_count") >= 3
    info = "cart_link_proxy_policy_info"  # the text format serves an Info as a gauge "<name>_info"
    assert any(s.labels.get("version") for s in families[info].samples)


async def test_one_audit_line_per_decision_that_is_not_a_plain_allow(
    scraped: tuple[dict[str, Any], list[logging.LogRecord]],
) -> None:
    _, audits = scraped
    fields = [getattr(r, "fields", {}) for r in audits]
    actions = sorted(f.get("action") for f in fields)
    assert actions == ["block", "rewrite"]
    for entry in fields:
        assert entry["seller"] == "seller-1"
        assert entry["platform"] == "taobao"
        assert entry["host"] == "item.taobao.com"
        assert entry["rule"] == "taobao-cutoff-2022"
        assert entry["request_id"]
