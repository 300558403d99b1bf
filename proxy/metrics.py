"""Every Prometheus metric cart-link-proxy exports, declared once on an injected registry.

``ProxyMetrics`` owns the metrics and exposes typed ``observe_*``/``set_*`` methods; nothing else in
the project touches ``prometheus_client`` metric classes, and nothing here uses the global
``REGISTRY``. ``make_metrics_app`` serves one registry as ``GET /metrics``.

Label values are bounded by construction. Callers pass closed-enum values (``Action``, ``Mode``,
``LinkKind``, ``Direction`` from ``proxy.core.model``, and the outcome/tier/state sets below) or ids
declared in the policy (route ids, surface ids, platform ids); never a URL, host, seller id or
request id. As a second line of defence every label is clamped here: a value outside its closed set
(or outside the policy's ids, when ``routes``/``surfaces``/``platforms`` are given) becomes
``"other"``, and a free-form value that does not look like an identifier becomes ``"other"`` too.
A metrics call never raises, so it can never fail a request.

Workers: ``serve --workers N`` runs N processes. Each process builds its own ``CollectorRegistry``
and ``ProxyMetrics`` and serves them on its own metrics port, ``metrics_port + worker_index``
(worker 0 on ``metrics_port``); Prometheus scrapes each port as its own target and dashboards and
alerts aggregate with ``sum``/``max``. This keeps the exact semantics of every metric type (gauges
such as in-flight, the circuit state and the rollout state are per process, which ``sum``/``max``
then combine) and needs no shared ``PROMETHEUS_MULTIPROC_DIR``, which a read-only root file system
and multiprocess mode's lack of ``Info`` support would both fight. On Kubernetes run one worker
per pod and scale with replicas. ``make_metrics_app`` knows nothing of workers: it serves whatever
registry it is given.

The five metrics updated on every request (request count and duration, upstream duration,
inspection duration, links) are ``_LoopCounter``/``_LoopHistogram``: collectors of plain numbers
that prometheus_client renders as usual. Its own metric classes take a lock per update (a
histogram two, plus a bucket loop in Python: 0.66 µs against 0.12 µs, measured); a worker updates
and scrapes its registry on one event loop thread, so there is nothing for a lock to guard.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from itertools import accumulate
from typing import Final, Generic, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from proxy.core.model import Action, Direction, LinkKind, Mode
from proxy.errors import ClientFacingError, InputError

__all__ = [
    "CACHE_TIERS",
    "CIRCUIT_STATES",
    "LATENCY_BUCKETS",
    "METHODS",
    "OTHER",
    "PASSTHROUGH_ROUTE",
    "RESOLVE_OUTCOMES",
    "UPSTREAM_OUTCOMES",
    "ProxyMetrics",
    "make_metrics_app",
]

PREFIX: Final = "cart_link_proxy"
OTHER: Final = "other"
"""The label value that replaces anything outside a label's bounded set."""
NONE: Final = "none"
"""Platform of a link that belongs to no known platform; surface of an unrouted request."""
PASSTHROUGH_ROUTE: Final = "passthrough"
"""Route label of a request that matched no route in the policy (streamed through)."""

# From 100 µs: the inspection of a small cart item takes well under a millisecond.
LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UPSTREAM_OUTCOMES: Final = frozenset({"ok", "unavailable", "timeout", "error"})
RESOLVE_OUTCOMES: Final = frozenset({"resolved", "refused", "timeout", "error", "cached"})
CACHE_TIERS: Final = frozenset({"local", "redis"})
CIRCUIT_STATES: Final = ("closed", "open", "half_open")
ACTIONS: Final = frozenset(a.value for a in Action)
MODES: Final = frozenset(m.value for m in Mode)
KINDS: Final = frozenset(k.value for k in LinkKind)
DIRECTIONS: Final = frozenset(d.value for d in Direction)

# Ids from the policy and literals from the code look like this; URLs, hosts and most seller or
# request ids do not ('/', '.', ':' and upper case are excluded).
_IDENTIFIER: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")


def _input_slugs() -> frozenset[str]:
    """Problem type slugs of every ``InputError``: the closed set of bad-input reasons."""
    slugs: set[str] = set()
    pending: list[type[ClientFacingError]] = [InputError]
    while pending:
        cls = pending.pop()
        slugs.add(cls.slug)
        pending.extend(cls.__subclasses__())
    return frozenset(slugs)


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else OTHER


def _method(method: str) -> str:
    upper = method.upper()
    return upper if upper in METHODS else "OTHER"


def _closed(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER


def _identifier(value: str, allowed: frozenset[str] | None = None) -> str:
    if allowed is not None:
        return _closed(value, allowed)
    return value if _IDENTIFIER.fullmatch(value) else OTHER


_CHILDREN_MAX: Final = 4096
"""Cached label children per metric; label values are clamped, but the cache keys are raw."""

_K = TypeVar("_K")
_V = TypeVar("_V")


class _Children(dict[_K, _V]):
    """Label children by the caller's raw label values, built on first use by ``build``.

    ``labels()`` validates and locks on every call, which the per-request methods cannot
    afford; a hit here is a plain dict lookup. At ``_CHILDREN_MAX`` entries the cache starts
    afresh (the metric keeps its children; only the shortcut to them is forgotten).
    """

    def __init__(self, build: Callable[..., _V]) -> None:
        super().__init__()
        self._build = build

    def __missing__(self, key: _K) -> _V:
        if len(self) >= _CHILDREN_MAX:
            self.clear()
        child: _V = self._build(*key)  # type: ignore[misc]  # keys are the build's arguments
        self[key] = child
        return child


class _CounterChild:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class _HistogramChild:
    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        """Observations per bucket, not cumulative; the last is above every bound."""
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = less or equal).
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


_C = TypeVar("_C", _CounterChild, _HistogramChild)


class _LoopMetric(Generic[_C]):
    """A labelled metric updated and collected on one event loop thread (see the module
    docstring); children by label values, which the caller has already bounded."""

    def __init__(self, registry: CollectorRegistry, name: str, doc: str,
                 labelnames: Sequence[str]) -> None:
        self.name, self.doc, self.labelnames = name, doc, list(labelnames)
        self.children: dict[tuple[str, ...], _C] = {}
        registry.register(self)

    def labels(self, *values: str) -> _C:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self._child()
        return child

    def _child(self) -> _C:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError


class _LoopCounter(_LoopMetric[_CounterChild]):
    def _child(self) -> _CounterChild:
        return _CounterChild()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.doc, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in list(self.children.items()):
            family.add_metric(values, child.value, created=child.created)
        yield family


class _LoopHistogram(_LoopMetric[_HistogramChild]):
    def __init__(self, registry: CollectorRegistry, name: str, doc: str,
                 labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self._les: list[str] = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self._les.append("+Inf")
        super().__init__(registry, name, doc, labelnames)

    def _child(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in list(self.children.items()):
            family.add_metric(values, list(zip(self._les, accumulate(child.counts), strict=True)),
                              child.sum)
            family.add_sample(f"{self.name}_created", dict(zip(self.labelnames, values,
                                                               strict=True)), child.created)
        yield family


class _InFlight(AbstractContextManager[None]):
    """Counts requests in a plain integer that the gauge reads when scraped: two locked
    increments per request cost more than the rest of the request's metrics (py-spy)."""

    __slots__ = ("count",)

    def __init__(self, gauge: Gauge) -> None:
        self.count = 0
        gauge.set_function(self._read)

    def _read(self) -> float:
        return self.count

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        self.count -= 1


class ProxyMetrics:
    """The proxy's metrics on one registry; see the module docstring for label bounds.

    ``routes``, ``surfaces`` and ``platforms`` are the ids declared in the policy. When given, a
    label value outside them is reported as ``"other"``; when omitted, any identifier-shaped value
    is accepted (the policy is then what bounds them).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        routes: Iterable[str] | None = None,
        surfaces: Iterable[str] | None = None,
        platforms: Iterable[str] | None = None,
    ) -> None:
        self.registry = registry
        self._routes = None if routes is None else frozenset(routes) | {PASSTHROUGH_ROUTE}
        self._surfaces = None if surfaces is None else frozenset(surfaces) | {NONE}
        self._platforms = None if platforms is None else frozenset(platforms) | {NONE}
        self._bad_input_reasons = _input_slugs()

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, labels, registry=registry)

        def histogram(name: str, doc: str, labels: tuple[str, ...]) -> Histogram:
            return Histogram(
                f"{PREFIX}_{name}", doc, labels, registry=registry, buckets=LATENCY_BUCKETS
            )

        def hot_counter(name: str, doc: str, labels: tuple[str, ...]) -> _LoopCounter:
            return _LoopCounter(registry, f"{PREFIX}_{name}", doc, labels)

        def hot_histogram(name: str, doc: str, labels: tuple[str, ...]) -> _LoopHistogram:
            return _LoopHistogram(registry, f"{PREFIX}_{name}", doc, labels, LATENCY_BUCKETS)

        self._requests = hot_counter(
            "requests_total",
            "Requests answered by the proxy.",
            ("route", "surface", "method", "status_class"),
        )
        self._request_seconds = hot_histogram(
            "request_duration_seconds",
            "Whole request time in the proxy, upstream call included.",
            ("route",),
        )
        self._upstream_seconds = hot_histogram(
            "upstream_duration_seconds",
            "Time of the call to the cart service, by outcome.",
            ("route", "outcome"),
        )
        self._inspection_seconds = hot_histogram(
            "inspection_duration_seconds",
            "Time spent finding, classifying and deciding on the links of one message.",
            ("surface", "direction"),
        )
        self._in_flight = gauge("in_flight_requests", "Requests being handled right now.")
        self._links = hot_counter(
            "links_total",
            "Links inspected, by the action decided (mode=shadow: what enforce would have done).",
            ("surface", "platform", "kind", "action", "mode"),
        )
        self._enforced = counter(
            "enforced_requests_total",
            "Requests blocked, stripped or rewritten (or that would have been, in shadow mode).",
            ("surface", "action", "mode"),
        )
        self._bad_input = counter(
            "bad_input_total", "Requests refused before inspection.", ("reason",)
        )
        self._cache = counter(
            "cache_requests_total", "Decision cache lookups by tier and result.", ("tier", "result")
        )
        self._redis_errors = counter(
            "redis_errors_total", "Redis commands that failed.", ("operation",)
        )
        self._circuit = gauge(
            "circuit_state",
            "Circuit breaker state, one-hot (1 = current state).",
            ("name", "state"),
        )
        self._resolve_seconds = histogram(
            "resolve_duration_seconds", "Short-link resolutions by outcome.", ("outcome",)
        )
        self._rollout_mode = gauge(
            "rollout_mode",
            "Rollout mode per surface, one-hot (1 = current mode).",
            ("surface", "mode"),
        )
        self._rollout_percent = gauge(
            "rollout_percent", "Share of sellers the rollout applies to, 0-100.", ("surface",)
        )
        self._kill_switch = gauge("kill_switch", "1 while the kill switch turns every rule off.")
        self._policy = Info(f"{PREFIX}_policy", "The loaded policy.", registry=registry)
        self._flag_changes = counter("flag_changes_total", "Rollout flag changes seen.")
        self._request_children: _Children[
            tuple[str, str, str, int], tuple[_CounterChild, _HistogramChild]
        ] = _Children(self._request_labels)
        self._upstream_children: _Children[tuple[str, str], _HistogramChild] = _Children(
            lambda route, outcome: self._upstream_seconds.labels(
                _identifier(route, self._routes), _closed(outcome, UPSTREAM_OUTCOMES)))
        self._inspection_children: _Children[tuple[str, str], _HistogramChild] = _Children(
            lambda surface, direction: self._inspection_seconds.labels(
                _identifier(surface, self._surfaces), _closed(direction, DIRECTIONS)))
        self._link_children: _Children[tuple[str, str, str, str, str], _CounterChild] = _Children(
            lambda surface, platform, kind, action, mode: self._links.labels(
                _identifier(surface, self._surfaces), _identifier(platform, self._platforms),
                _closed(kind, KINDS), _closed(action, ACTIONS), _closed(mode, MODES)))
        self._in_flight_tracker = _InFlight(self._in_flight)

    # RED
    def observe_request(
        self, *, route: str, surface: str, method: str, status: int, seconds: float
    ) -> None:
        """Count one answered request; ``route`` is a policy route id or ``"passthrough"``."""
        counter, histogram = self._request_children[(route, surface, method, status)]
        counter.inc()
        histogram.observe(seconds)

    def _request_labels(
        self, route: str, surface: str, method: str, status: int
    ) -> tuple[_CounterChild, _HistogramChild]:
        route_label = _identifier(route, self._routes)
        return (
            self._requests.labels(route_label, _identifier(surface, self._surfaces),
                                  _method(method), _status_class(status)),
            self._request_seconds.labels(route_label),
        )

    def observe_upstream(self, *, route: str, seconds: float, outcome: str) -> None:
        """One call to the cart service; ``outcome`` is one of ``UPSTREAM_OUTCOMES``."""
        self._upstream_children[(route, outcome)].observe(seconds)

    def observe_inspection(self, *, surface: str, direction: str, seconds: float) -> None:
        self._inspection_children[(surface, direction)].observe(seconds)

    def in_flight(self) -> AbstractContextManager[None]:
        """Context manager counting the request it wraps as in flight (one shared instance:
        it keeps no state of its own)."""
        return self._in_flight_tracker

    def observe_bad_input(self, *, reason: str) -> None:
        """``reason`` is the problem type slug of an ``InputError`` (``malformed-json``, ...)."""
        self._bad_input.labels(_closed(reason, self._bad_input_reasons)).inc()

    # Decisions
    def observe_link(
        self, *, surface: str, platform: str, kind: str, action: str, mode: str, count: int = 1
    ) -> None:
        """``count`` inspected links (one message's, by label); ``platform`` is ``"none"`` for
        a site of no known platform."""
        self._link_children[(surface, platform, kind, action, mode)].inc(count)

    def observe_enforcement(self, *, surface: str, action: str, mode: str) -> None:
        """One request blocked/stripped/rewritten (``mode="shadow"``: would have been)."""
        self._enforced.labels(
            _identifier(surface, self._surfaces), _closed(action, ACTIONS), _closed(mode, MODES)
        ).inc()

    # Cache, Redis, resolver
    def observe_cache(self, *, tier: str, hit: bool) -> None:
        self._cache.labels(_closed(tier, CACHE_TIERS), "hit" if hit else "miss").inc()

    def observe_redis_error(self, *, operation: str) -> None:
        """``operation`` is a literal from the calling code: ``get``, ``mget``, ``publish``, ..."""
        self._redis_errors.labels(_identifier(operation)).inc()

    def set_circuit_state(self, *, name: str, state: str) -> None:
        """Set breaker ``name`` (e.g. ``redis``) to ``state``; the other states go to 0."""
        name_label = _identifier(name)
        for candidate in CIRCUIT_STATES:
            self._circuit.labels(name_label, candidate).set(1 if candidate == state else 0)

    def observe_resolve(self, *, outcome: str, seconds: float) -> None:
        self._resolve_seconds.labels(_closed(outcome, RESOLVE_OUTCOMES)).observe(seconds)

    # Rollout
    def set_rollout(self, *, surface: str, mode: str, percent: int) -> None:
        surface_label = _identifier(surface, self._surfaces)
        for candidate in sorted(MODES):
            self._rollout_mode.labels(surface_label, candidate).set(1 if candidate == mode else 0)
        self._rollout_percent.labels(surface_label).set(min(max(percent, 0), 100))

    def set_kill_switch(self, on: bool) -> None:
        self._kill_switch.set(1 if on else 0)

    def set_policy_info(self, *, version: str, name: str) -> None:
        """Export the loaded policy; a reload replaces the previous labels."""
        self._policy.info({"version": version, "name": name})

    def observe_flag_change(self) -> None:
        self._flag_changes.inc()


def make_metrics_app(metrics: ProxyMetrics) -> web.Application:
    """An application serving ``GET /metrics`` from ``metrics.registry`` (and nothing else)."""
    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    return app
