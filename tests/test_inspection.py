"""``proxy.inspection`` on its own: plans per surface and instant, rollout modes, what ``judge``
lets through (and that it lets go of the parsed document), ``published_body``, link metrics, and
a property checking ``inspect`` against ``Engine.decide``. Engines are real, built from the
shipped policy (or from it with one rule changed); flags are ``StaticFlags``."""

from __future__ import annotations

import gc
import gzip
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry
from yarl import URL

from proxy import headers as hdr
from proxy.config import Limits
from proxy.core.engine import Engine
from proxy.core.model import Action, Mode, RuleId
from proxy.core.policy import FlagDefaults, Policy, RolloutDefaults, RouteSpec
from proxy.errors import (
    BodyTooLarge,
    InputError,
    InvalidEncoding,
    JSONTooDeep,
    MalformedJSON,
    PolicyBlocked,
    UpstreamError,
)
from proxy.flags import StaticFlags
from proxy.inspection import ActionPlan, Finding, Inspector, Passage, plan_outcome, published_body
from proxy.intake import Body
from proxy.metrics import ProxyMetrics
from proxy.policyfile import build_engine
from tests.conftest import CUTOFF, MOMENTS

TAOBAO = "https://item.taobao.com/item.htm?id=520000001"
JD = "https://item.jd.com/100012043978.html"
JD_SHOP = "https://mall.jd.com/index-1000000127.html"
JD_AS_TYPED = "HTTPS://ITEM.JD.COM/100012043978.html"
"""``JD`` as a user may type it; a problem names the canonical URL."""
OWN = "https://app.kwaixiaodian.com/merchant/shop/detail?id=8"
ELSEWHERE = "https://example.org/gift"
TAOBAO_RULE = "taobao-cutoff-2022"
JD_RULE = "jd-livestream-cutoff-2022"

JUST_BEFORE = CUTOFF - timedelta(microseconds=1)
AT = datetime(2022, 2, 28, 16, tzinfo=UTC)
"""The cutoff as a UTC instant: already in force."""
AFTER = MOMENTS["after"]
INSTANTS = {"just-before": JUST_BEFORE, "at": AT, "after": AFTER}
LINKS = "cart_link_proxy_links_total"


# Helpers ---------------------------------------------------------------------------------------


def route_of(engine: Engine, route_id: str) -> RouteSpec:
    return next(route for route in engine.policy.routes if route.id == route_id)


def cart(*urls: str, **fields: object) -> dict[str, Any]:
    """A cart document: one item per URL (``/items/<i>/url``), plus top-level ``fields``."""
    return {**fields, "items": [{"item_id": str(i), "url": url} for i, url in enumerate(urls)]}


def body_of(doc: object) -> Body:
    raw = orjson.dumps(doc)
    return Body(raw, orjson.loads(raw), False)


def pointers(findings: Iterable[Finding]) -> list[str]:
    return [finding.pointer for finding in findings]


def inspector_for(engine: Engine, *, policy: Policy | None = None,
                  metrics: ProxyMetrics | None = None) -> Inspector:
    """An inspector over ``engine`` with the rollout flags of ``policy`` (default: the engine's)."""
    return Inspector(engine, StaticFlags(policy or engine.policy), metrics=metrics)


async def inspect(inspector: Inspector, route: RouteSpec, doc: object, *, at: datetime = AFTER,
                  headers: Mapping[str, str] | None = None) -> ActionPlan:
    return await inspector.inspect(route, doc, headers=CIMultiDict(headers or {}), at=at,
                                   request_id="test-request")


async def judge(inspector: Inspector, route: RouteSpec, body: Body, *,
                at: datetime = AFTER) -> Passage:
    return await inspector.judge(route, body, headers=CIMultiDict(), at=at,
                                 request_id="test-request")


def with_rule(policy: Policy, rule_id: str, **changes: Any) -> Engine:
    """An engine for the shipped policy with one rule changed."""
    rules = tuple(replace(rule, **changes) if rule.id == rule_id else rule for rule in policy.rules)
    return build_engine(replace(policy, rules=rules))


def with_rollout(policy: Policy, **rollout: Any) -> Policy:
    return replace(policy, rollout=RolloutDefaults(**rollout))


@pytest.fixture(scope="module")
def stripping_engine(policy: Policy) -> Engine:
    """Taobao links published after the cutoff are stripped, not refused."""
    return with_rule(policy, TAOBAO_RULE, action=Action.STRIP)


@pytest.fixture(scope="module")
def response_block_engine(policy: Policy) -> Engine:
    """Taobao links in cart responses are blocked (which a response turns into strip)."""
    return with_rule(policy, TAOBAO_RULE, response_action=Action.BLOCK)


LATER = CUTOFF + timedelta(days=1)


@pytest.fixture(scope="module")
def staggered_engine(policy: Policy) -> Engine:
    """The JD rule takes effect a day after the Taobao rule."""
    return with_rule(policy, JD_RULE, effective_from=LATER)


# Inspector.inspect: surfaces, the cutoff, the seller ------------------------------------------

# (route, offending url, its action from the cutoff on, the rule); the item before it is OWN.
IN_FORCE = [
    ("live-cart-add", TAOBAO, Action.BLOCK, TAOBAO_RULE),
    ("live-cart-add", JD, Action.BLOCK, JD_RULE),
    ("live-cart-add", OWN, Action.ALLOW, None),
    ("live-cart-add", ELSEWHERE, Action.ALLOW, None),
    ("video-cart-add", TAOBAO, Action.BLOCK, TAOBAO_RULE),
    ("video-cart-add", JD, Action.ALLOW, None),
    ("product-update", TAOBAO, Action.BLOCK, TAOBAO_RULE),
    ("product-update", JD, Action.ALLOW, None),
    ("live-cart-read", TAOBAO, Action.REWRITE, TAOBAO_RULE),
    ("live-cart-read", JD, Action.REWRITE, JD_RULE),
    ("video-cart-read", TAOBAO, Action.REWRITE, TAOBAO_RULE),
    ("video-cart-read", JD, Action.ALLOW, None),
    ("product-read", TAOBAO, Action.REWRITE, TAOBAO_RULE),
    ("product-read", JD, Action.ALLOW, None),
]
_HOSTS = {TAOBAO: "taobao", JD: "jd", OWN: "own", ELSEWHERE: "elsewhere"}


@pytest.mark.parametrize("at", INSTANTS.values(), ids=list(INSTANTS))
@pytest.mark.parametrize(("route_id", "url", "action", "rule"), IN_FORCE,
                         ids=[f"{r}-{_HOSTS[u]}" for r, u, _, _ in IN_FORCE])
async def test_plan_per_surface_around_the_cutoff(
    engine: Engine, route_id: str, url: str, action: Action, rule: str | None, at: datetime
) -> None:
    route = route_of(engine, route_id)
    plan = await inspect(inspector_for(engine), route, cart(OWN, url), at=at)
    rules = [] if rule is None else [rule]
    in_force = at >= CUTOFF
    # Before the cutoff everything is allowed, and the rule to come is named as pending.
    assert plan.action is (action if in_force else Action.ALLOW)
    assert pointers(plan.enforced) == (["/items/1/url"] if in_force and rules else [])
    assert [f.verdict.rule for f in plan.enforced] == (rules if in_force else [])
    assert [p.rule for p in plan.pending] == ([] if in_force else rules)
    assert all((p.surface, p.action, p.effective_from) == (route.surface, action, CUTOFF)
               for p in plan.pending)
    assert (plan.route, plan.shadowed) == (route, ())


@pytest.mark.parametrize(("route_id", "action"), [
    ("live-cart-add", Action.BLOCK),
    ("live-cart-read", Action.STRIP),
    ("product-read", Action.STRIP),
], ids=["request-blocks", "response-strips-element", "response-strips-field"])
async def test_a_response_turns_block_into_strip(
    response_block_engine: Engine, route_id: str, action: Action
) -> None:
    route = route_of(response_block_engine, route_id)
    plan = await inspect(inspector_for(response_block_engine), route, cart(OWN, TAOBAO))
    assert plan.action is action
    assert [(f.pointer, f.action, f.verdict.action) for f in plan.enforced] == [
        ("/items/1/url", action, Action.BLOCK)]


@pytest.mark.parametrize(("at", "enforced", "pending"), [
    (AT, [TAOBAO_RULE], [JD_RULE]),
    (LATER, [TAOBAO_RULE, JD_RULE], []),
], ids=["one-in-force-one-to-come", "both-in-force"])
async def test_pending_rules_beside_enforced_ones(
    staggered_engine: Engine, at: datetime, enforced: list[str], pending: list[str]
) -> None:
    route = route_of(staggered_engine, "live-cart-add")
    plan = await inspect(inspector_for(staggered_engine), route, cart(TAOBAO, JD), at=at)
    assert plan.action is Action.BLOCK
    assert [f.verdict.rule for f in plan.enforced] == enforced
    assert [(p.rule, p.effective_from) for p in plan.pending] == [(rule, LATER) for rule in pending]


async def test_the_strictest_enforced_action_wins(stripping_engine: Engine) -> None:
    route = route_of(stripping_engine, "live-cart-add")
    plan = await inspect(inspector_for(stripping_engine), route, cart(TAOBAO, JD, OWN))
    assert plan.action is Action.BLOCK
    assert [(f.pointer, f.action) for f in plan.enforced] == [
        ("/items/0/url", Action.STRIP), ("/items/1/url", Action.BLOCK)]


SELLERS = [
    ({"X-Seller-Id": "s-header"}, {"seller_id": "s-body"}, "s-header"),
    ({"x-seller-id": "s-header"}, {}, "s-header"),
    ({}, {"seller_id": "s-body"}, "s-body"),
    ({"X-Seller-Id": ""}, {"seller_id": "s-body"}, "s-body"),
    ({}, {"seller_id": 42}, "42"),
    ({}, {"seller_id": True}, None),
    ({}, {"seller_id": {"id": "s"}}, None),
    ({}, {}, None),
]


@pytest.mark.parametrize("url", [OWN, TAOBAO], ids=["allowed", "blocked"])
@pytest.mark.parametrize(("headers", "fields", "seller"), SELLERS, ids=[
    "header-wins", "header-any-case", "body", "empty-header-falls-back", "body-number",
    "body-boolean", "body-object", "none"])
async def test_seller_from_header_else_body(
    engine: Engine, headers: dict[str, str], fields: dict[str, object], seller: str | None,
    url: str,
) -> None:
    route = route_of(engine, "live-cart-add")
    plan = await inspect(inspector_for(engine), route, cart(url, **fields), headers=headers)
    assert plan.seller == seller


# Rollout: shadow mode ---------------------------------------------------------------------------

SHADOWING: dict[str, dict[str, Any]] = {
    "rule-in-shadow": {"rules": {RuleId(TAOBAO_RULE): FlagDefaults(Mode.SHADOW)}},
    "surface-in-shadow": {"surfaces": {"livestream_cart": FlagDefaults(Mode.SHADOW)}},
    "seller-allow-listed": {"allow_sellers": frozenset({"seller-42"})},
    "kill-switch": {"kill_switch": True},
}


@pytest.mark.parametrize("rollout", SHADOWING.values(), ids=list(SHADOWING))
async def test_shadow_mode_allows_and_records(
    engine: Engine, policy: Policy, rollout: dict[str, Any]
) -> None:
    route = route_of(engine, "live-cart-add")
    inspector = inspector_for(engine, policy=with_rollout(policy, **rollout))
    doc = cart(OWN, TAOBAO)
    plan = await inspect(inspector, route, doc, headers={"X-Seller-Id": "seller-42"})
    assert (plan.action, plan.enforced) == (Action.ALLOW, ())
    assert [(f.pointer, f.action, f.mode, f.verdict.rule) for f in plan.shadowed] == [
        ("/items/1/url", Action.BLOCK, Mode.SHADOW, TAOBAO_RULE)]
    outcome = plan_outcome(plan, doc)
    assert outcome.body is None
    assert outcome.headers == ((hdr.SHADOW, f'action=block; rule={TAOBAO_RULE}; count=1; '
                                            'pointers="#/items/1/url"'),)


async def test_the_allow_list_shadows_only_its_sellers(engine: Engine, policy: Policy) -> None:
    route = route_of(engine, "live-cart-add")
    inspector = inspector_for(engine, policy=with_rollout(
        policy, allow_sellers=frozenset({"seller-42"})))
    plan = await inspect(inspector, route, cart(OWN, TAOBAO), headers={"X-Seller-Id": "seller-7"})
    assert (plan.action, plan.shadowed) == (Action.BLOCK, ())
    assert [(f.pointer, f.mode) for f in plan.enforced] == [("/items/1/url", Mode.ENFORCE)]


# Inspector.judge --------------------------------------------------------------------------------


@pytest.mark.parametrize(("route_id", "url", "at", "report"), [
    ("video-cart-add", JD, AFTER, []),
    ("live-cart-add", TAOBAO, JUST_BEFORE, [hdr.PENDING, "Deprecation", "Sunset"]),
    ("live-cart-read", ELSEWHERE, AFTER, []),
], ids=["jd-on-short-video", "taobao-before-the-cutoff", "response"])
async def test_judge_passes_an_allowed_message_as_received(
    engine: Engine, route_id: str, url: str, at: datetime, report: list[str]
) -> None:
    body = body_of(cart(OWN, url))
    passage = await judge(inspector_for(engine), route_of(engine, route_id), body, at=at)
    assert passage.data is body.raw
    assert passage.edited is False
    assert [name for name, _ in passage.headers] == report


async def test_judge_strips_the_offending_element(stripping_engine: Engine) -> None:
    route = route_of(stripping_engine, "video-cart-add")
    passage = await judge(inspector_for(stripping_engine), route, body_of(cart(TAOBAO, JD, OWN)))
    assert passage.edited is True
    assert passage.data == orjson.dumps({"items": [{"item_id": "1", "url": JD},
                                                   {"item_id": "2", "url": OWN}]})
    assert passage.headers == ((hdr.STRIPPED, 'count=1; pointers="#/items/0"'),)


async def test_stripped_pointers_are_in_document_order(stripping_engine: Engine) -> None:
    urls = [TAOBAO if i in (2, 10) else OWN for i in range(12)]
    route = route_of(stripping_engine, "video-cart-add")
    passage = await judge(inspector_for(stripping_engine), route, body_of(cart(*urls)))
    assert passage.headers == ((hdr.STRIPPED, 'count=2; pointers="#/items/2 #/items/10"'),)
    assert [item["item_id"] for item in orjson.loads(passage.data)["items"]] == \
        [str(i) for i in range(12) if i not in (2, 10)]


async def test_judge_rewrites_a_published_link(engine: Engine) -> None:
    route = route_of(engine, "live-cart-read")
    passage = await judge(inspector_for(engine), route, body_of(cart(OWN, TAOBAO)))
    items = orjson.loads(passage.data)["items"]
    assert passage.edited is True
    assert [item["url"] for item in items] == [
        OWN, f"https://www.kuaishou.com/notice/external-link?platform=taobao&rule={TAOBAO_RULE}"]
    assert passage.headers == ((hdr.REWRITTEN, 'count=1; pointers="#/items/1/url"'),)


async def test_judge_refuses_a_blocked_message(engine: Engine) -> None:
    route = route_of(engine, "live-cart-add")
    with pytest.raises(PolicyBlocked) as raised:
        await judge(inspector_for(engine), route, body_of(cart(OWN, TAOBAO, JD_AS_TYPED)))
    problem = raised.value
    assert problem.status == 422
    assert problem.extensions["surface"] == "livestream_cart"
    described = [{key: link[key] for key in ("pointer", "url", "platform", "rule", "surface")}
                 for link in problem.extensions["links"]]
    assert described == [
        {"pointer": "/items/1/url", "url": TAOBAO, "platform": "taobao", "rule": TAOBAO_RULE,
         "surface": "livestream_cart"},
        {"pointer": "/items/2/url", "url": JD, "platform": "jd", "rule": JD_RULE,
         "surface": "livestream_cart"},
    ]
    assert f"rule {JD_RULE}, {TAOBAO_RULE}" in problem.detail


# Inspector.judge lets go of the parsed document -------------------------------------------------


class _Tracked(dict[str, Any]):
    """A JSON object that takes weak references (a plain dict does not)."""


class _Retaining(Inspector):
    """The control: an inspector that keeps the last body it judged, as a leak would."""

    kept: Body | None = None

    async def judge(self, route: RouteSpec, body: Body, **options: Any) -> Passage:
        self.kept = body
        return await super().judge(route, body, **options)


@contextmanager
def refcounting_only() -> Iterator[None]:
    """No cyclic collection meanwhile: whatever is freed is freed by its last reference going."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@pytest.mark.parametrize(("engine_fixture", "url", "inspector_type", "freed"), [
    ("engine", ELSEWHERE, Inspector, True),
    ("engine", TAOBAO, Inspector, True),
    ("response_block_engine", TAOBAO, Inspector, True),
    ("engine", ELSEWHERE, _Retaining, False),
], ids=["allowed", "rewritten", "stripped", "control-retaining-inspector"])
async def test_judge_frees_the_document_on_return(
    request: pytest.FixtureRequest, engine_fixture: str, url: str,
    inspector_type: type[Inspector], freed: bool,
) -> None:
    engine: Engine = request.getfixturevalue(engine_fixture)
    inspector = inspector_type(engine, StaticFlags(engine.policy))
    route = route_of(engine, "live-cart-read")
    refs: list[weakref.ref[_Tracked]] = []

    def make_body() -> Body:
        """The only reference to the document is the Body returned (the fast path reads plain
        dicts only, so the tracked item holds the allowed link; the one acted on is after it)."""
        raw = orjson.dumps(cart(OWN, url))
        doc = orjson.loads(raw)
        doc["items"][0] = tracked = _Tracked(doc["items"][0])
        refs.append(weakref.ref(tracked))
        return Body(raw, doc, False)

    with refcounting_only():
        passage = await inspector.judge(route, make_body(), headers={}, at=AFTER,
                                        request_id="test-request")
        alive = refs[0]() is not None
    assert passage.edited is (url == TAOBAO)
    assert alive is not freed


# published_body ---------------------------------------------------------------------------------

_PADDED = orjson.dumps({"items": [], "pad": " " * 4096})
UNINSPECTABLE = {
    "malformed": (b'{"items": [', None, Limits(), MalformedJSON),
    "invalid-utf8": (b'{"title": "\xc3\x28"}', None, Limits(), InvalidEncoding),
    "too-deep": (b"[" * 65 + b"]" * 65, None, Limits(max_json_depth=64), JSONTooDeep),
    "duplicate-keys": (b'{"seller_id": "a", "seller_id": "b"}', None, Limits(), MalformedJSON),
    "gzip-over-the-decoded-limit": (gzip.compress(_PADDED), "gzip",
                                    Limits(max_decoded_bytes=len(_PADDED) - 1), BodyTooLarge),
}


@pytest.mark.parametrize(("raw", "encoding", "limits", "cause"), UNINSPECTABLE.values(),
                         ids=list(UNINSPECTABLE))
def test_published_body_that_cannot_be_inspected_is_the_upstreams_fault(
    raw: bytes, encoding: str | None, limits: Limits, cause: type[InputError]
) -> None:
    with pytest.raises(UpstreamError) as raised:
        published_body(raw, encoding=encoding, limits=limits)
    error = raised.value
    assert not isinstance(error, InputError)
    assert error.status == 502
    assert error.detail.startswith("the cart service's response cannot be inspected")
    assert type(error.__cause__) is cause


@pytest.mark.parametrize("encoding", [None, "gzip"], ids=["identity", "gzip"])
def test_published_body_parses_valid_json(encoding: str | None) -> None:
    doc = cart(OWN, TAOBAO, seller_id="s1")
    plain = orjson.dumps(doc)
    raw = gzip.compress(plain) if encoding else plain
    body = published_body(raw, encoding=encoding, limits=Limits(max_decoded_bytes=len(plain)))
    assert body == Body(raw, doc, encoding is not None)
    assert body.raw is raw


# Metrics ----------------------------------------------------------------------------------------


def link_labels(surface: str, platform: str, kind: str, action: str) -> dict[str, str]:
    return {"surface": surface, "platform": platform, "kind": kind, "action": action,
            "mode": "enforce"}


def links_counted(registry: CollectorRegistry, surface: str) -> float:
    """Every link counted on ``surface``, whatever its labels."""
    return sum(sample.value for metric in registry.collect() for sample in metric.samples
               if sample.name == LINKS and sample.labels["surface"] == surface)


@pytest.mark.parametrize("n", [1, 3, 25])
async def test_allowed_jd_links_are_counted(
    engine: Engine, registry: CollectorRegistry, n: int
) -> None:
    inspector = inspector_for(engine, metrics=ProxyMetrics(registry))
    route = route_of(engine, "video-cart-add")
    labels = link_labels("short_video_cart", "jd", "item", "allow")
    await inspect(inspector, route, cart(JD, JD))
    before = registry.get_sample_value(LINKS, labels)
    await inspect(inspector, route, cart(*[JD] * n))
    assert before == 2
    assert registry.get_sample_value(LINKS, labels) == before + n


@pytest.mark.parametrize(("urls", "counts"), [
    ((JD, OWN, JD, ELSEWHERE), {("jd", "item", "allow"): 2, ("own", "shop", "allow"): 1,
                                ("none", "page", "allow"): 1}),
    ((JD, JD_SHOP, JD), {("jd", "item", "allow"): 2, ("jd", "shop", "allow"): 1}),
    ((TAOBAO, JD, TAOBAO, OWN), {("taobao", "item", "block"): 2, ("jd", "item", "allow"): 1,
                                 ("own", "shop", "allow"): 1}),
], ids=["all-allowed", "one-platform-two-kinds", "some-blocked"])
async def test_each_platform_is_counted_separately(
    engine: Engine, registry: CollectorRegistry, urls: tuple[str, ...],
    counts: dict[tuple[str, str, str], int],
) -> None:
    inspector = inspector_for(engine, metrics=ProxyMetrics(registry))
    await inspect(inspector, route_of(engine, "video-cart-add"), cart(*urls))
    assert {labels: registry.get_sample_value(LINKS, link_labels("short_video_cart", *labels))
            for labels in counts} == counts
    assert links_counted(registry, "short_video_cart") == len(urls)


# The plan against Engine.decide -----------------------------------------------------------------

POOL = (TAOBAO, JD, OWN, ELSEWHERE)


def carries_items(route: RouteSpec) -> bool:
    return "/items/*/url" in route.links or "**" in route.links


@settings(deadline=None, max_examples=200)
@given(urls=st.lists(st.sampled_from(POOL), max_size=8),
       at=st.datetimes(min_value=datetime(2022, 2, 28, 16), max_value=datetime(2030, 1, 1),
                       timezones=st.just(UTC)),
       data=st.data())
async def test_plan_is_the_strictest_decision(
    engine: Engine, stripping_engine: Engine, urls: list[str], at: datetime, data: st.DataObject
) -> None:
    # With Taobao links stripped, a live cart mixes strip and block: the strictest must win.
    engines = {"shipped": engine, "taobao-stripped": stripping_engine}
    chosen = engines[data.draw(st.sampled_from(sorted(engines)), label="engine")]
    route = data.draw(st.sampled_from([r for r in chosen.policy.routes if carries_items(r)]),
                      label="route")
    decisions = [chosen.decide(url, route.surface, at, route.direction) for url in urls]
    strictest = max((d.action for d in decisions), key=lambda action: action.rank,
                    default=Action.ALLOW)
    offending = [f"/items/{i}/url" for i, d in enumerate(decisions) if d.action is not Action.ALLOW]
    plan = await inspect(inspector_for(chosen), route, cart(*urls), at=at)
    assert plan.action is strictest
    assert pointers(plan.enforced) == offending
    assert (plan.shadowed, plan.pending) == ((), ())


# The quick allow path (decision tallies) against the link-by-link path ---------------------------

SHORT = "https://t.cn/AbCdE"
QUICK_POOL = (TAOBAO, JD, JD_SHOP, OWN, ELSEWHERE, SHORT, "https://bit.ly/x1")


TITLES = [("", 0), ("京东好物", 0), (f"看看 {JD}", 1), (f"{JD} 和 {JD} 和 {JD_SHOP}", 3)]
"""A top-level title (seen by routes that scan every string) and the links it holds."""


class ToJD:
    """A resolver for ``t.cn`` links only, each leading to a JD item."""

    def handles(self, url: str) -> bool:
        return URL(url).host == "t.cn"

    async def resolve_many(self, urls: Iterable[str]) -> dict[str, str | None]:
        return {url: JD for url in urls}


def link_samples(registry: CollectorRegistry) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(sample.labels.items())): sample.value
            for metric in registry.collect() for sample in metric.samples
            if sample.name == LINKS}


async def plan_and_counts(engine: Engine, route: RouteSpec, doc: object, *, quick: bool,
                          resolving: bool) -> tuple[ActionPlan, dict[Any, float]]:
    registry = CollectorRegistry()
    inspector = Inspector(engine, StaticFlags(engine.policy), metrics=ProxyMetrics(registry),
                          resolver=ToJD() if resolving else None)
    if not quick:
        inspector._allowed = lambda decisions: None  # type: ignore[method-assign]
    plan = await inspect(inspector, route, doc)
    return plan, link_samples(registry)


@settings(deadline=None, max_examples=200)
@given(urls=st.lists(st.sampled_from(QUICK_POOL), max_size=8), resolving=st.booleans(),
       data=st.data())
async def test_the_quick_allow_path_agrees_with_the_link_by_link_path(
    engine: Engine, urls: list[str], resolving: bool, data: st.DataObject
) -> None:
    route = data.draw(st.sampled_from([r for r in engine.policy.routes if carries_items(r)]),
                      label="route")
    title, in_title = data.draw(st.sampled_from(TITLES), label="title")
    doc = cart(*urls, title=title)
    quick = await plan_and_counts(engine, route, doc, quick=True, resolving=resolving)
    assert quick == await plan_and_counts(engine, route, doc, quick=False, resolving=resolving)
    assert sum(quick[1].values()) == len(urls) + in_title * ("**" in route.links)


async def test_a_short_link_is_resolved_not_passed_quickly(engine: Engine) -> None:
    route = route_of(engine, "live-cart-add")
    plan, counts = await plan_and_counts(engine, route, cart(OWN, SHORT), quick=True,
                                         resolving=True)
    assert plan.action is Action.BLOCK  # t.cn leads to a JD item: blocked in the live cart
    assert pointers(plan.enforced) == ["/items/1/url"]
    jd_blocked = tuple(sorted(link_labels("livestream_cart", "jd", "item", "block").items()))
    assert counts[jd_blocked] == 1
    plan, _ = await plan_and_counts(engine, route, cart(OWN, SHORT), quick=True, resolving=False)
    assert plan.action is Action.ALLOW
