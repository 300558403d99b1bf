"""Every metric the dashboard and the alerts query is one that ProxyMetrics really exports.

A ProxyMetrics on a fresh registry has each of its observe_*/set_* methods called once; the
exposition text then lists every sample name (``_total``, ``_bucket``, ``_count``, ``_info``, ...)
and every label the proxy exports. Each ``cart_link_proxy_*`` name in a dashboard or alert
expression must be among them, and so must each label it selects on.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import ProxyMetrics

ROOT = Path(__file__).resolve().parents[1]
METRIC_NAME = re.compile(r"\bcart_link_proxy_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(cart_link_proxy_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
TARGET_LABELS = frozenset({"instance", "job", "service"})
"""Labels Prometheus adds from the scrape target, not from the proxy."""


def exercise(metrics: ProxyMetrics) -> None:
    """Call every observe_*/set_* method once, so every metric has at least one sample."""
    calls: dict[str, Callable[[], object]] = {
        "observe_request": lambda: metrics.observe_request(
            route="live-cart-add",
            surface="livestream_cart",
            method="POST",
            status=201,
            seconds=0.01,
        ),
        "observe_upstream": lambda: metrics.observe_upstream(
            route="live-cart-add", seconds=0.005, outcome="ok"
        ),
        "observe_inspection": lambda: metrics.observe_inspection(
            surface="livestream_cart", direction="request", seconds=0.0004
        ),
        "observe_link": lambda: metrics.observe_link(
            surface="livestream_cart",
            platform="taobao",
            kind="item",
            action="block",
            mode="enforce",
        ),
        "observe_enforcement": lambda: metrics.observe_enforcement(
            surface="livestream_cart", action="block", mode="enforce"
        ),
        "observe_bad_input": lambda: metrics.observe_bad_input(reason="malformed-json"),
        "in_flight": lambda: metrics.in_flight().__enter__(),
        "observe_cache": lambda: metrics.observe_cache(tier="local", hit=True),
        "observe_redis_error": lambda: metrics.observe_redis_error(operation="mget"),
        "set_circuit_state": lambda: metrics.set_circuit_state(name="redis", state="closed"),
        "observe_resolve": lambda: metrics.observe_resolve(outcome="resolved", seconds=0.2),
        "set_rollout": lambda: metrics.set_rollout(
            surface="livestream_cart", mode="enforce", percent=100
        ),
        "set_kill_switch": lambda: metrics.set_kill_switch(False),
        "set_policy_info": lambda: metrics.set_policy_info(version="abc123", name="cutoff"),
        "observe_flag_change": lambda: metrics.observe_flag_change(),
    }
    public = {
        name
        for name, _ in inspect.getmembers(ProxyMetrics, inspect.isfunction)
        if not name.startswith("_")
    }
    assert public == set(calls), "exercise() must call every public ProxyMetrics method"
    for call in calls.values():
        call()


def exported() -> dict[str, frozenset[str]]:
    """Sample name -> its label names, from the exposition text of an exercised ProxyMetrics."""
    metrics = ProxyMetrics(CollectorRegistry())
    exercise(metrics)
    text = generate_latest(metrics.registry).decode()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(names) for name, names in labels.items()}


def dashboard_exprs() -> list[str]:
    data = json.loads((ROOT / "deploy" / "grafana" / "cart-link-proxy.json").read_text("utf-8"))
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in data["annotations"]["list"] if "expr" in a]
    exprs += [v["definition"] for v in data["templating"]["list"] if v["type"] == "query"]
    return exprs


def alert_exprs() -> list[str]:
    text = (ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text("utf-8")
    return [rule["expr"] for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]


def referenced(exprs: list[str]) -> list[str]:
    return sorted({name for expr in exprs for name in METRIC_NAME.findall(expr)})


def selected_labels(exprs: list[str]) -> list[tuple[str, str]]:
    pairs = {
        (metric, label)
        for expr in exprs
        for metric, matchers in SELECTOR.findall(expr)
        for label in MATCHER.findall(matchers)
    }
    return sorted(pair for pair in pairs if pair[1] not in TARGET_LABELS)


EXPORTED = exported()
SOURCES = {"dashboard": dashboard_exprs(), "alerts": alert_exprs()}
NAMES = [(source, name) for source, exprs in SOURCES.items() for name in referenced(exprs)]
LABELS = [(source, *pair) for source, exprs in SOURCES.items() for pair in selected_labels(exprs)]


def test_the_dashboard_and_the_alerts_query_something() -> None:
    assert len(referenced(SOURCES["dashboard"])) >= 15
    assert len(referenced(SOURCES["alerts"])) >= 6


@pytest.mark.parametrize(("source", "name"), NAMES, ids=[f"{s}:{n}" for s, n in NAMES])
def test_metric_name_is_exported(source: str, name: str) -> None:
    assert name in EXPORTED, f"{source} queries {name}, which ProxyMetrics does not export"


@pytest.mark.parametrize(
    ("source", "name", "label"), LABELS, ids=[f"{s}:{n}:{lb}" for s, n, lb in LABELS]
)
def test_selected_label_is_exported(source: str, name: str, label: str) -> None:
    assert label in EXPORTED.get(name, frozenset()) | {"le"}, (
        f"{source} selects {name}{{{label}=...}}, a label ProxyMetrics does not export"
    )


def test_every_exported_metric_is_on_the_dashboard() -> None:
    """The dashboard should not leave a metric unwatched (``_created`` samples excepted)."""
    on_dashboard = set(referenced(SOURCES["dashboard"]))
    families = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for name in EXPORTED
        if not name.endswith("_created")
    }
    watched = {re.sub(r"_(bucket|count|sum)$", "", name) for name in on_dashboard}
    assert families <= watched, sorted(families - watched)
