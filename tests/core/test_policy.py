"""Policy validation: the shipped policy encodes the 2022 rules; every error names file and key."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.core.model import Action, Direction, LinkKind, Mode, StripMode
from proxy.core.policy import Policy, parse_policy
from proxy.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "policy.yaml"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def policy(raw: dict[str, Any]) -> Policy:
    return parse_policy(raw, "config/policy.yaml")


def test_shipped_policy_encodes_the_2022_table(policy: Policy) -> None:
    cutoff = datetime(2022, 2, 28, 16, 0, tzinfo=UTC)
    assert set(policy.surfaces) == {"livestream_cart", "short_video_cart", "product_detail"}
    assert {"taobao", "jd", "own"} <= set(policy.platforms)
    forbidden = {
        (platform, surface)
        for rule in policy.rules
        if rule.action is Action.BLOCK
        for platform in rule.platforms
        for surface in rule.surfaces
    }
    assert forbidden == {
        ("taobao", "livestream_cart"),
        ("taobao", "short_video_cart"),
        ("taobao", "product_detail"),
        ("jd", "livestream_cart"),
    }
    assert all(rule.effective_from == cutoff for rule in policy.rules)
    assert all(rule.kinds is None for rule in policy.rules), "shipped rules cover every link"


def test_shipped_routes_and_rollout(policy: Policy) -> None:
    routes = {(r.method, r.path): r for r in policy.routes}
    live = routes[("POST", "/v1/live/{room_id}/cart/items")]
    assert live.surface == "livestream_cart"
    assert live.direction is Direction.REQUEST
    assert live.strip is StripMode.ELEMENT
    assert routes[("GET", "/v1/videos/{video_id}/cart")].direction is Direction.RESPONSE
    assert policy.rollout.default.mode is Mode.ENFORCE
    assert policy.seller.header == "X-Seller-Id"


def test_version_changes_with_decisive_content_only(raw: dict[str, Any]) -> None:
    base = parse_policy(raw, "a").version
    runtime_changed = copy.deepcopy(raw)
    runtime_changed["proxy"] = {"listen": {"port": 1}}
    assert parse_policy(runtime_changed, "a").version == base
    domain_added = copy.deepcopy(raw)
    domain_added["platforms"]["jd"]["domains"].append("jd.example")
    assert parse_policy(domain_added, "a").version != base


def _mutated(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(raw)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is _DELETE:
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


_DELETE = object()

ERRORS = [
    ("rules.0.surfaces", ["livestream_cart", "homepage"],
     "rules[0].surfaces[1]: unknown surface 'homepage'", "unknown-surface"),
    ("rules.0.platforms", ["pinduoduo"],
     "rules[0].platforms[0]: unknown platform 'pinduoduo'", "unknown-platform"),
    ("rules.0.effective_from", "2022-03-01T00:00:00",
     "rules[0].effective_from: timestamp 2022-03-01T00:00:00 has no UTC offset", "naive-time"),
    ("rules.0.effective_from", "next tuesday",
     "rules[0].effective_from: not an ISO 8601 timestamp", "bad-time"),
    ("rules.0.action", "nuke", "rules[0].action: unknown value 'nuke'", "unknown-action"),
    ("rules.1.id", "taobao-cutoff-2022",
     "rules[1].id: duplicate rule id 'taobao-cutoff-2022' (first at rules[0])", "duplicate-id"),
    ("rules.0.target", _DELETE, "rules[0].target: required (a URL template) for action rewrite",
     "rewrite-needs-target"),
    ("rules.0.kinds", ["coupon"], "rules[0].kinds[0]: unknown value 'coupon'", "unknown-kind"),
    ("rules.0.id", _DELETE, "rules[0].id: required", "missing-id"),
    ("rules.0.colour", "red", "rules[0].colour: unknown key", "unknown-rule-key"),
    ("platforms.jd.domains", ["taobao.com"],
     "platforms.jd.domains: taobao.com is already listed under platforms.taobao", "domain-twice"),
    ("platforms.taobao.kinds.0.kind", "coupon",
     "platforms.taobao.kinds[0].kind: unknown value 'coupon'", "unknown-pattern-kind"),
    ("platforms.taobao.kinds.5.path", "(unclosed",
     "platforms.taobao.kinds[5].path: invalid regular expression", "bad-regex"),
    ("tokens.min_length", 2, "tokens.min_length: expected a whole number from 4 to 64",
     "token-length"),
    ("tokens.default_platform", "amazon", "tokens.default_platform: unknown platform 'amazon'",
     "token-platform"),
    ("rollout.default", {"mode": "maybe"}, "rollout.default.mode: unknown value 'maybe'",
     "rollout-mode"),
    ("rollout.default", {"percent": 101},
     "rollout.default.percent: expected a whole number from 0 to 100", "rollout-percent"),
    ("rollout.surfaces", {"homepage": {"mode": "shadow"}}, "rollout.surfaces.homepage: unknown surface",
     "rollout-surface"),
    ("rollout.kill_switch", "yes", "rollout.kill_switch: expected true or false", "kill-switch"),
    ("routes.0.surface", "homepage", "routes[0].surface: unknown surface 'homepage'",
     "route-surface"),
    ("routes.1.path", "/v1/live/{room_id}/cart/items",
     "routes[1]: duplicate route", "route-duplicate-guard"),
    ("routes.0.links", ["items/*/url"], "routes[0].links[0]: expected '**' or a path",
     "route-link-path"),
    ("routes.0.strip", "everything", "routes[0].strip: unknown value 'everything'", "route-strip"),
    ("seller.pointer", "seller_id", "seller.pointer: expected a JSON pointer", "seller-pointer"),
    ("format", 2, "format: unsupported format 2", "format"),
    ("surprise", 1, "surprise: unknown key", "unknown-top-key"),
]


@pytest.mark.parametrize(("path", "value", "message"), [e[:3] for e in ERRORS],
                         ids=[e[3] for e in ERRORS])
def test_each_error_names_file_key_and_problem(
    raw: dict[str, Any], path: str, value: Any, message: str
) -> None:
    data = _mutated(raw, path, value)
    if path == "routes.1.path":
        data["routes"][1]["method"] = "POST"
    with pytest.raises(ConfigError) as caught:
        parse_policy(data, "my/policy.yaml")
    assert any(line.startswith(f"my/policy.yaml: {message}") for line in caught.value.errors), (
        caught.value.errors
    )


def test_every_problem_is_reported_at_once(raw: dict[str, Any]) -> None:
    data = _mutated(raw, "rules.0.action", "nuke")
    data = _mutated(data, "rules.1.surfaces", ["nowhere"])
    with pytest.raises(ConfigError) as caught:
        parse_policy(data, "p.yaml")
    assert len(caught.value.errors) == 2


def test_yaml_datetime_values_are_accepted_when_aware(raw: dict[str, Any]) -> None:
    data = _mutated(raw, "rules.0.effective_from", datetime(2022, 2, 28, 16, tzinfo=UTC))
    assert parse_policy(data, "p").rules[0].effective_from == datetime(2022, 2, 28, 16, tzinfo=UTC)
    naive = _mutated(raw, "rules.0.effective_from", datetime(2022, 3, 1))
    with pytest.raises(ConfigError, match="has no UTC offset"):
        parse_policy(naive, "p")


def test_rule_narrowed_to_kinds(raw: dict[str, Any]) -> None:
    policy = parse_policy(_mutated(raw, "rules.0.kinds", ["affiliate"]), "p")
    rule = policy.rules[0]
    assert rule.covers(rule.id and next(iter(rule.platforms)), next(iter(rule.surfaces)),
                       LinkKind.AFFILIATE)
    assert not rule.covers(next(iter(rule.platforms)), next(iter(rule.surfaces)), LinkKind.ITEM)


def test_policy_is_frozen(policy: Policy) -> None:
    with pytest.raises(AttributeError):
        policy.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.surfaces["x"] = policy.surfaces["livestream_cart"]  # type: ignore[index]
