"""The decision table: every platform x surface x instant, strictest wins, pending rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from proxy.core import decide as decide_module
from proxy.core.decide import RuleBook, decide
from proxy.core.model import (
    Action,
    Direction,
    Evidence,
    LayerMatch,
    Link,
    LinkCount,
    LinkKind,
    PlatformId,
    SurfaceId,
)
from proxy.core.policy import Policy, parse_policy

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "policy.yaml"
BEIJING = timezone(timedelta(hours=8))
CUTOFF = datetime(2022, 3, 1, tzinfo=BEIJING)
BEFORE = CUTOFF - timedelta(microseconds=1)
AFTER = CUTOFF + timedelta(days=400)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_policy(yaml.safe_load(SHIPPED.read_text(encoding="utf-8")), str(SHIPPED))


@pytest.fixture(scope="module")
def book(policy: Policy) -> RuleBook:
    return RuleBook(policy.rules)


def link_to(*platforms: str, kind: LinkKind = LinkKind.ITEM) -> Link:
    matches = tuple(
        LayerMatch(PlatformId(p), kind, Evidence(depth, f"{p}.example", "test"))
        for depth, p in enumerate(platforms)
    )
    return Link("x", 0, 1, "https://x/", "x", matches)


TABLE = [
    # platform, surface, expected action after the cutoff
    ("taobao", "livestream_cart", Action.BLOCK),
    ("taobao", "short_video_cart", Action.BLOCK),
    ("taobao", "product_detail", Action.BLOCK),
    ("jd", "livestream_cart", Action.BLOCK),
    ("jd", "short_video_cart", Action.ALLOW),
    ("jd", "product_detail", Action.ALLOW),
    ("own", "livestream_cart", Action.ALLOW),
    ("own", "short_video_cart", Action.ALLOW),
    ("own", "product_detail", Action.ALLOW),
]


@pytest.mark.parametrize(("platform", "surface", "expected"), TABLE,
                         ids=[f"{p}-{s}" for p, s, _ in TABLE])
@pytest.mark.parametrize("at", [CUTOFF, CUTOFF.astimezone(UTC), AFTER],
                         ids=["at-cutoff-beijing", "at-cutoff-utc", "after"])
def test_rule_table_in_force(
    book: RuleBook, platform: str, surface: str, expected: Action, at: datetime
) -> None:
    decision = decide([link_to(platform)], SurfaceId(surface), at, book)
    assert decision.action is expected
    assert decision.verdicts[0].action is expected
    assert (decision.rule is not None) == (expected is not Action.ALLOW)
    assert decision.pending == ()


@pytest.mark.parametrize(("platform", "surface", "expected"), TABLE,
                         ids=[f"{p}-{s}" for p, s, _ in TABLE])
def test_before_cutoff_allows_and_warns(
    book: RuleBook, platform: str, surface: str, expected: Action
) -> None:
    decision = decide([link_to(platform)], SurfaceId(surface), BEFORE, book)
    assert decision.action is Action.ALLOW
    if expected is Action.ALLOW:
        assert decision.pending == ()
    else:
        (pending,) = decision.pending
        assert pending.effective_from == CUTOFF
        assert pending.platform == platform
        assert pending.action is expected


def test_strictest_link_wins_and_names_its_rule(book: RuleBook) -> None:
    links = [link_to("own"), link_to("jd"), link_to("taobao")]
    decision = decide(links, SurfaceId("short_video_cart"), AFTER, book)
    assert decision.action is Action.BLOCK
    assert decision.platform == "taobao"
    assert decision.rule == "taobao-cutoff-2022"
    assert [v.action for v in decision.verdicts] == [Action.ALLOW, Action.ALLOW, Action.BLOCK]


def test_nested_layer_decides_even_under_an_own_wrapper(book: RuleBook) -> None:
    decision = decide([link_to("own", "taobao")], SurfaceId("product_detail"), AFTER, book)
    assert decision.action is Action.BLOCK
    assert decision.verdicts[0].platform == "taobao"


def test_response_direction_uses_response_action_and_fills_target(book: RuleBook) -> None:
    decision = decide([link_to("jd")], SurfaceId("livestream_cart"), AFTER, book,
                      Direction.RESPONSE)
    assert decision.action is Action.REWRITE
    assert decision.verdicts[0].target == (
        "https://www.kuaishou.com/notice/external-link?platform=jd&rule=jd-livestream-cutoff-2022"
    )


@pytest.mark.parametrize("surface", ["livestream_cart", "short_video_cart", "product_detail"])
@pytest.mark.parametrize("at", [BEFORE, CUTOFF, AFTER], ids=["before", "at", "after"])
def test_no_links_is_allow(book: RuleBook, surface: str, at: datetime) -> None:
    decision = decide([], SurfaceId(surface), at, book)
    assert decision == (Action.ALLOW, None, None, (), (), ())
    # One shared object for every link-free input: the engine's memo keeps one per such text.
    assert decide((), SurfaceId(surface), at, book, Direction.RESPONSE) is decision


def test_naive_instant_is_refused(book: RuleBook) -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        decide([link_to("taobao")], SurfaceId("livestream_cart"), datetime(2022, 3, 2), book)


def test_kinds_narrowing(policy: Policy) -> None:
    raw = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    raw["rules"][0]["kinds"] = ["affiliate"]
    narrowed = RuleBook(parse_policy(raw, "p").rules)
    surface = SurfaceId("short_video_cart")
    item = decide([link_to("taobao", kind=LinkKind.ITEM)], surface, AFTER, narrowed)
    affiliate = decide([link_to("taobao", kind=LinkKind.AFFILIATE)], surface, AFTER, narrowed)
    assert (item.action, affiliate.action) == (Action.ALLOW, Action.BLOCK)


def test_epochs(book: RuleBook) -> None:
    assert book.epoch(BEFORE) == 0
    assert book.epoch(CUTOFF) == 1
    assert book.instant_in(0) < CUTOFF <= book.instant_in(1)


@pytest.mark.parametrize(("at", "pending"), [(BEFORE, True), (CUTOFF, False), (AFTER, False)])
def test_pending_at_matches_decisions(book: RuleBook, at: datetime, pending: bool) -> None:
    assert book.pending_at(at) is pending
    decision = decide([link_to("taobao")], SurfaceId("livestream_cart"), at, book)
    assert bool(decision.pending) is pending


instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.timezones()
)


@given(at=instants)
def test_cutoff_is_inclusive_in_every_zone(at: datetime) -> None:
    policy = parse_policy(yaml.safe_load(SHIPPED.read_text(encoding="utf-8")), "p")
    decision = decide([link_to("taobao")], SurfaceId("livestream_cart"), at, RuleBook(policy.rules))
    assert (decision.action is Action.BLOCK) == (at >= CUTOFF)


# Decision.tally: the verdicts counted by host, platform, kind and action --------------------------
def link_on(host: str, platform: str | None, kind: LinkKind = LinkKind.ITEM) -> Link:
    """A link on ``host``, of ``platform`` (None: an unknown site)."""
    matches = () if platform is None else (
        LayerMatch(PlatformId(platform), kind, Evidence(0, host, "test")),)
    return Link(f"https://{host}/p", 0, 1, f"https://{host}/p", host, matches)


JD_ITEM = ("item.jd.com", "jd")
JD_SHOP = ("mall.jd.com", "jd", LinkKind.SHOP)
TAOBAO_ITEM = ("item.taobao.com", "taobao")
OTHER = ("example.org", None)

TALLIES = [
    ("one", [JD_ITEM], "short_video_cart",
     [("item.jd.com", "jd", LinkKind.ITEM, Action.ALLOW, 1)]),
    ("repeated", [JD_ITEM, JD_ITEM, JD_ITEM], "short_video_cart",
     [("item.jd.com", "jd", LinkKind.ITEM, Action.ALLOW, 3)]),
    ("first-met-order", [TAOBAO_ITEM, JD_ITEM, TAOBAO_ITEM, OTHER], "short_video_cart",
     [("item.taobao.com", "taobao", LinkKind.ITEM, Action.BLOCK, 2),
      ("item.jd.com", "jd", LinkKind.ITEM, Action.ALLOW, 1),
      ("example.org", None, LinkKind.PAGE, Action.ALLOW, 1)]),
    ("kinds-apart", [JD_ITEM, JD_SHOP, JD_ITEM], "short_video_cart",
     [("item.jd.com", "jd", LinkKind.ITEM, Action.ALLOW, 2),
      ("mall.jd.com", "jd", LinkKind.SHOP, Action.ALLOW, 1)]),
    ("actions-apart", [JD_ITEM, JD_ITEM], "livestream_cart",
     [("item.jd.com", "jd", LinkKind.ITEM, Action.BLOCK, 2)]),
]


@pytest.mark.parametrize(("links", "surface", "expected"), [t[1:] for t in TALLIES],
                         ids=[t[0] for t in TALLIES])
def test_tally_counts_the_verdicts(book: RuleBook, links: list[tuple[Any, ...]], surface: str,
                                  expected: list[tuple[Any, ...]]) -> None:
    decision = decide([link_on(*link) for link in links], SurfaceId(surface), AFTER, book)
    assert decision.tally == tuple(LinkCount(*count) for count in expected)


@given(st.lists(st.sampled_from([JD_ITEM, JD_SHOP, TAOBAO_ITEM, OTHER, ("t.cn", None)]),
                min_size=1, max_size=12),
       st.sampled_from(["livestream_cart", "short_video_cart", "product_detail"]))
def test_tally_is_the_verdicts_grouped(links: list[tuple[Any, ...]], surface: str) -> None:
    policy = parse_policy(yaml.safe_load(SHIPPED.read_text(encoding="utf-8")), "p")
    decision = decide([link_on(*link) for link in links], SurfaceId(surface), AFTER,
                      RuleBook(policy.rules))
    grouped: dict[tuple[Any, ...], int] = {}
    for verdict in decision.verdicts:
        labels = (verdict.link.host, verdict.platform, verdict.kind, verdict.action)
        grouped[labels] = grouped.get(labels, 0) + 1
    assert decision.tally == tuple(LinkCount(*labels, n) for labels, n in grouped.items())
    assert sum(count.links for count in decision.tally) == len(links)


def test_equal_tallies_are_one_object(book: RuleBook) -> None:
    surface = SurfaceId("short_video_cart")
    one = decide([link_on(*JD_ITEM)], surface, AFTER, book)
    other = link_on(*JD_ITEM)._replace(text="elsewhere", url="https://item.jd.com/2.html")
    two = decide([other], surface, AFTER, book)
    assert one.verdicts != two.verdicts
    assert one.tally is two.tally
    assert decide([link_on(*JD_SHOP)], surface, AFTER, book).tally is not one.tally


def test_tallies_kept_are_bounded(policy: Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decide_module, "_MAX_TALLIES", 3)
    book = RuleBook(policy.rules)
    surface = SurfaceId("short_video_cart")
    first = decide([link_on("h0.example", None)], surface, AFTER, book).tally
    for i in range(1, 10):
        decide([link_on(f"h{i}.example", None)], surface, AFTER, book)
        assert len(book.tallies) <= 3
    again = decide([link_on("h0.example", None)], surface, AFTER, book).tally
    assert again == first
    assert again is not first  # forgotten past the bound, and met anew
