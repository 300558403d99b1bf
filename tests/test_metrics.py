"""ProxyMetrics: values read back from the registry, label bounding, and the /metrics app."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pytest_aiohttp import AiohttpClient

from proxy.metrics import (
    LATENCY_BUCKETS,
    ProxyMetrics,
    _LoopCounter,
    _LoopHistogram,
    make_metrics_app,
)

P = "cart_link_proxy"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> ProxyMetrics:
    return ProxyMetrics(registry)


def value(registry: CollectorRegistry, metric: str, /, **labels: str) -> float | None:
    return registry.get_sample_value(f"{P}_{metric}", labels)


def test_two_instances_on_two_registries_do_not_collide() -> None:
    ProxyMetrics(CollectorRegistry())
    ProxyMetrics(CollectorRegistry())


def test_same_registry_twice_is_refused(registry: CollectorRegistry) -> None:
    ProxyMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        ProxyMetrics(registry)


@pytest.mark.parametrize(
    ("status", "status_class"),
    [(200, "2xx"), (204, "2xx"), (302, "3xx"), (413, "4xx"), (422, "4xx"), (504, "5xx")],
    ids=["200", "204", "302", "413", "422", "504"],
)
def test_request_status_is_bucketed(
    metrics: ProxyMetrics, registry: CollectorRegistry, status: int, status_class: str
) -> None:
    metrics.observe_request(
        route="live-cart-add", surface="livestream_cart", method="POST", status=status, seconds=0.01
    )
    labels = {"route": "live-cart-add", "surface": "livestream_cart", "method": "POST"}
    assert value(registry, "requests_total", status_class=status_class, **labels) == 1


def test_request_duration_resolves_sub_millisecond(
    metrics: ProxyMetrics, registry: CollectorRegistry
) -> None:
    metrics.observe_request(
        route="passthrough", surface="none", method="GET", status=200, seconds=0.0003
    )
    bucket = f"{P}_request_duration_seconds_bucket"
    assert registry.get_sample_value(bucket, {"route": "passthrough", "le": "0.00025"}) == 0
    assert registry.get_sample_value(bucket, {"route": "passthrough", "le": "0.0005"}) == 1
    assert value(registry, "request_duration_seconds_sum", route="passthrough") == 0.0003


@pytest.mark.parametrize(
    ("method", "label"),
    [("get", "GET"), ("PATCH", "PATCH"), ("PROPFIND", "OTHER"), ("X" * 300, "OTHER")],
    ids=["lower-case", "known", "webdav", "garbage"],
)
def test_method_is_bounded(
    metrics: ProxyMetrics, registry: CollectorRegistry, method: str, label: str
) -> None:
    metrics.observe_request(
        route="passthrough", surface="none", method=method, status=200, seconds=0.001
    )
    labels = {"route": "passthrough", "surface": "none", "status_class": "2xx"}
    assert value(registry, "requests_total", method=label, **labels) == 1


@pytest.mark.parametrize(
    "route",
    ["https://item.taobao.com/item.htm?id=1", "item.taobao.com", "/v1/live/r1/cart", "Seller-ABC"],
    ids=["url", "host", "path", "upper-case"],
)
def test_free_form_labels_that_are_not_identifiers_become_other(
    metrics: ProxyMetrics, registry: CollectorRegistry, route: str
) -> None:
    metrics.observe_upstream(route=route, seconds=0.002, outcome="ok")
    assert value(registry, "upstream_duration_seconds_count", route="other", outcome="ok") == 1


def test_policy_ids_bound_route_surface_and_platform(registry: CollectorRegistry) -> None:
    metrics = ProxyMetrics(
        registry, routes=["live-cart-add"], surfaces=["livestream_cart"], platforms=["taobao"]
    )
    metrics.observe_request(
        route="made-up", surface="made_up", method="POST", status=201, seconds=0.001
    )
    metrics.observe_request(
        route="passthrough", surface="none", method="POST", status=201, seconds=0.001
    )
    metrics.observe_link(
        surface="livestream_cart", platform="pinduoduo", kind="item", action="allow", mode="enforce"
    )
    common = {"method": "POST", "status_class": "2xx"}
    assert value(registry, "requests_total", route="other", surface="other", **common) == 1
    assert value(registry, "requests_total", route="passthrough", surface="none", **common) == 1
    assert (
        value(
            registry,
            "links_total",
            surface="livestream_cart",
            platform="other",
            kind="item",
            action="allow",
            mode="enforce",
        )
        == 1
    )


def test_closed_sets_clamp_unknown_values(
    metrics: ProxyMetrics, registry: CollectorRegistry
) -> None:
    metrics.observe_upstream(route="live-cart-add", seconds=0.1, outcome="exploded")
    metrics.observe_link(
        surface="livestream_cart", platform="none", kind="banana", action="nuke", mode="maybe"
    )
    metrics.observe_bad_input(reason="made-up")
    metrics.observe_cache(tier="disk", hit=True)
    metrics.observe_resolve(outcome="who-knows", seconds=0.5)
    metrics.observe_inspection(surface="livestream_cart", direction="sideways", seconds=0.001)
    assert value(
        registry, "upstream_duration_seconds_count", route="live-cart-add", outcome="other"
    )
    link = {"surface": "livestream_cart", "platform": "none"}
    assert value(registry, "links_total", kind="other", action="other", mode="other", **link) == 1
    assert value(registry, "bad_input_total", reason="other") == 1
    assert value(registry, "cache_requests_total", tier="other", result="hit") == 1
    assert value(registry, "resolve_duration_seconds_count", outcome="other") == 1
    assert (
        value(
            registry,
            "inspection_duration_seconds_count",
            surface="livestream_cart",
            direction="other",
        )
        == 1
    )


@pytest.mark.parametrize(
    "reason",
    [
        "malformed-json",
        "invalid-encoding",
        "json-too-deep",
        "unsupported-media-type",
        "body-too-large",
    ],
)
def test_bad_input_reasons_come_from_the_exception_tree(
    metrics: ProxyMetrics, registry: CollectorRegistry, reason: str
) -> None:
    metrics.observe_bad_input(reason=reason)
    assert value(registry, "bad_input_total", reason=reason) == 1


def test_links_and_enforcements(metrics: ProxyMetrics, registry: CollectorRegistry) -> None:
    for mode in ("enforce", "shadow", "shadow"):
        metrics.observe_link(
            surface="livestream_cart",
            platform="taobao",
            kind="affiliate",
            action="block",
            mode=mode,
        )
        metrics.observe_enforcement(surface="livestream_cart", action="block", mode=mode)
    link = {"surface": "livestream_cart", "platform": "taobao", "kind": "affiliate"}
    assert value(registry, "links_total", action="block", mode="enforce", **link) == 1
    assert value(registry, "links_total", action="block", mode="shadow", **link) == 2
    enforced = {"surface": "livestream_cart", "action": "block"}
    assert value(registry, "enforced_requests_total", mode="shadow", **enforced) == 2


def test_in_flight_goes_up_and_back_down_even_on_error(
    metrics: ProxyMetrics, registry: CollectorRegistry
) -> None:
    assert value(registry, "in_flight_requests") == 0
    with metrics.in_flight(), metrics.in_flight():
        assert value(registry, "in_flight_requests") == 2
    with pytest.raises(RuntimeError), metrics.in_flight():
        raise RuntimeError
    assert value(registry, "in_flight_requests") == 0


def test_cache_hits_and_misses(metrics: ProxyMetrics, registry: CollectorRegistry) -> None:
    metrics.observe_cache(tier="local", hit=True)
    metrics.observe_cache(tier="local", hit=False)
    metrics.observe_cache(tier="redis", hit=True)
    assert value(registry, "cache_requests_total", tier="local", result="hit") == 1
    assert value(registry, "cache_requests_total", tier="local", result="miss") == 1
    assert value(registry, "cache_requests_total", tier="redis", result="hit") == 1


def test_circuit_state_is_one_hot(metrics: ProxyMetrics, registry: CollectorRegistry) -> None:
    metrics.set_circuit_state(name="redis", state="open")
    metrics.set_circuit_state(name="redis", state="half_open")
    states = {
        s: value(registry, "circuit_state", name="redis", state=s)
        for s in ("closed", "open", "half_open")
    }
    assert states == {"closed": 0, "open": 0, "half_open": 1}


def test_redis_errors_by_operation(metrics: ProxyMetrics, registry: CollectorRegistry) -> None:
    metrics.observe_redis_error(operation="mget")
    metrics.observe_redis_error(operation="mget")
    assert value(registry, "redis_errors_total", operation="mget") == 2


def test_resolver_outcomes(metrics: ProxyMetrics, registry: CollectorRegistry) -> None:
    metrics.observe_resolve(outcome="resolved", seconds=0.2)
    metrics.observe_resolve(outcome="cached", seconds=0.00005)
    assert value(registry, "resolve_duration_seconds_count", outcome="resolved") == 1
    assert value(registry, "resolve_duration_seconds_bucket", outcome="cached", le="0.0001") == 1


def test_rollout_state(metrics: ProxyMetrics, registry: CollectorRegistry) -> None:
    metrics.set_rollout(surface="livestream_cart", mode="shadow", percent=10)
    metrics.set_rollout(surface="livestream_cart", mode="enforce", percent=250)
    modes = {
        m: value(registry, "rollout_mode", surface="livestream_cart", mode=m)
        for m in ("off", "shadow", "enforce")
    }
    assert modes == {"off": 0, "shadow": 0, "enforce": 1}
    assert value(registry, "rollout_percent", surface="livestream_cart") == 100


def test_kill_switch_policy_info_and_flag_changes(
    metrics: ProxyMetrics, registry: CollectorRegistry
) -> None:
    metrics.set_kill_switch(True)
    assert value(registry, "kill_switch") == 1
    metrics.set_kill_switch(False)
    assert value(registry, "kill_switch") == 0
    metrics.set_policy_info(version="v1", name="cutoff")
    metrics.set_policy_info(version="v2", name="cutoff")
    assert value(registry, "policy_info", version="v2", name="cutoff") == 1
    assert value(registry, "policy_info", version="v1", name="cutoff") is None
    metrics.observe_flag_change()
    assert value(registry, "flag_changes_total") == 1


async def test_metrics_app_serves_exposition_text(
    aiohttp_client: AiohttpClient, metrics: ProxyMetrics
) -> None:
    metrics.observe_request(
        route="live-cart-add", surface="livestream_cart", method="POST", status=201, seconds=0.002
    )
    client = await aiohttp_client(make_metrics_app(metrics))
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert "# TYPE cart_link_proxy_requests_total counter" in text
    assert (
        'cart_link_proxy_requests_total{method="POST",route="live-cart-add",'
        'status_class="2xx",surface="livestream_cart"} 1.0'
    ) in text
    assert (await client.get("/")).status == 404


async def test_metrics_app_speaks_openmetrics_when_asked(
    aiohttp_client: AiohttpClient, metrics: ProxyMetrics
) -> None:
    client = await aiohttp_client(make_metrics_app(metrics))
    response = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await response.text()).endswith("# EOF\n")


def test_links_counted_in_batches_and_children_reused(
    metrics: ProxyMetrics, registry: CollectorRegistry
) -> None:
    labels = {"surface": "short_video_cart", "platform": "jd", "kind": "item",
              "action": "allow", "mode": "enforce"}
    metrics.observe_link(**labels, count=100)
    metrics.observe_link(**labels)
    assert value(registry, "links_total", **labels) == 101
    for status in (200, 201, 200):
        metrics.observe_request(route="video-cart-add", surface="short_video_cart",
                                method="POST", status=status, seconds=0.001)
    assert value(registry, "requests_total", route="video-cart-add",
                 surface="short_video_cart", method="POST", status_class="2xx") == 3
    assert value(registry, "request_duration_seconds_count", route="video-cart-add") == 3


def test_label_child_caches_are_bounded(metrics: ProxyMetrics,
                                        registry: CollectorRegistry) -> None:
    """Methods come from clients: a flood of odd ones neither grows memory nor loses counts."""
    for i in range(5000):
        metrics.observe_request(route="passthrough", surface="none", method=f"M{i}",
                                status=405, seconds=0.0)
    assert len(metrics._request_children) <= 4096
    assert value(registry, "requests_total", route="passthrough", surface="none",
                 method="OTHER", status_class="4xx") == 5000


@given(st.lists(st.floats(min_value=0, max_value=20, allow_nan=False), max_size=30))
@example([*LATENCY_BUCKETS, 0.0, 20.0])  # a value on a bound belongs to that bound's bucket
def test_loop_metrics_export_as_prometheus_client_would(observations: list[float]) -> None:
    """The lock-free hot metrics render the same samples as prometheus_client's own classes
    (``_created`` timestamps aside)."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    histogram = _LoopHistogram(ours, "h_seconds", "doc", ("a",), LATENCY_BUCKETS)
    counter = _LoopCounter(ours, "c_total", "doc", ("a",))
    reference = Histogram("h_seconds", "doc", ("a",), registry=theirs, buckets=LATENCY_BUCKETS)
    reference_counter = Counter("c_total", "doc", ("a",), registry=theirs)
    for seconds in observations:
        histogram.labels("x").observe(seconds)
        counter.labels("x").inc(2)
        reference.labels("x").observe(seconds)
        reference_counter.labels("x").inc(2)

    def samples(registry: CollectorRegistry) -> list[str]:
        return sorted(line for line in generate_latest(registry).decode().splitlines()
                      if "_created" not in line)

    assert samples(ours) == samples(theirs)
