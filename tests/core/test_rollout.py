"""Rollout flags: precedence, kill switch, lists, and the sticky percentage bucket."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.model import Mode, RuleId, SurfaceId
from proxy.core.policy import FlagDefaults, RolloutDefaults
from proxy.core.rollout import Flag, FlagSnapshot, bucket

RULE = RuleId("taobao-cutoff-2022")
LIVE = SurfaceId("livestream_cart")
VIDEO = SurfaceId("short_video_cart")


def snapshot(**kwargs: object) -> FlagSnapshot:
    return FlagSnapshot(**kwargs)  # type: ignore[arg-type]


CASES = [
    ("default-enforce", snapshot(), "s1", Mode.ENFORCE),
    ("kill-switch", snapshot(kill_switch=True), "s1", Mode.SHADOW),
    ("surface-shadow", snapshot(flags=MappingProxyType({(LIVE, None): Flag(Mode.SHADOW)})),
     "s1", Mode.SHADOW),
    ("rule-beats-surface", snapshot(flags=MappingProxyType(
        {(LIVE, None): Flag(Mode.SHADOW), (None, RULE): Flag(Mode.ENFORCE)})), "s1", Mode.ENFORCE),
    ("pair-beats-rule", snapshot(flags=MappingProxyType(
        {(LIVE, RULE): Flag(Mode.OFF), (None, RULE): Flag(Mode.ENFORCE)})), "s1", Mode.OFF),
    ("zero-percent", snapshot(default=Flag(Mode.ENFORCE, 0)), "s1", Mode.SHADOW),
    ("allow-list", snapshot(allow_sellers=frozenset({"s1"})), "s1", Mode.SHADOW),
    ("force-list", snapshot(default=Flag(Mode.ENFORCE, 0), force_sellers=frozenset({"s1"})),
     "s1", Mode.ENFORCE),
    ("force-list-not-past-off", snapshot(default=Flag(Mode.OFF), force_sellers=frozenset({"s1"})),
     "s1", Mode.OFF),
    ("no-seller-partial", snapshot(default=Flag(Mode.ENFORCE, 50)), None, Mode.SHADOW),
    ("no-seller-full", snapshot(), None, Mode.ENFORCE),
]


@pytest.mark.parametrize(("flags", "seller", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_mode_for(flags: FlagSnapshot, seller: str | None, expected: Mode) -> None:
    assert flags.mode_for(RULE, LIVE, seller) is expected


def test_from_policy() -> None:
    defaults = RolloutDefaults(
        default=FlagDefaults(Mode.SHADOW, 100),
        surfaces=MappingProxyType({VIDEO: FlagDefaults(Mode.ENFORCE, 10)}),
        allow_sellers=frozenset({"a"}),
    )
    flags = FlagSnapshot.from_policy(defaults)
    assert flags.flag_for(RULE, LIVE) == Flag(Mode.SHADOW, 100)
    assert flags.flag_for(RULE, VIDEO) == Flag(Mode.ENFORCE, 10)
    assert flags.allow_sellers == {"a"}


def test_percentage_close_to_target_over_10000_sellers() -> None:
    sellers = [f"seller-{i}" for i in range(10_000)]
    flags = snapshot(default=Flag(Mode.ENFORCE, 10))
    enforced = sum(flags.mode_for(RULE, LIVE, s) is Mode.ENFORCE for s in sellers)
    assert 850 <= enforced <= 1150


@given(seller=st.text(max_size=40), low=st.integers(0, 100), high=st.integers(0, 100))
def test_sticky_a_seller_in_stays_in_as_percent_grows(seller: str, low: int, high: int) -> None:
    low, high = sorted((low, high))
    small = snapshot(default=Flag(Mode.ENFORCE, low)).mode_for(RULE, LIVE, seller)
    large = snapshot(default=Flag(Mode.ENFORCE, high)).mode_for(RULE, LIVE, seller)
    if small is Mode.ENFORCE:
        assert large is Mode.ENFORCE
    assert 1 <= bucket(RULE, seller) <= 100


def test_bucket_is_murmur3_of_rule_and_seller() -> None:
    import mmh3

    assert bucket("r", "s") == mmh3.hash("r:s", 0, signed=False) % 100 + 1
