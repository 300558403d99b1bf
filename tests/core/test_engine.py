"""The engine end to end over the public corpus and our own cases: every vector, every surface,
before, exactly at and after the cutoff."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.core.engine import Engine
from proxy.core.model import Action, Direction, LinkKind, SurfaceId
from proxy.policyfile import build_engine, load_policy

BEIJING = timezone(timedelta(hours=8))
CUTOFF = datetime(2022, 3, 1, tzinfo=BEIJING)
INSTANTS = {
    "before": CUTOFF - timedelta(seconds=1),
    "at": CUTOFF,
    "at-utc": datetime(2022, 2, 28, 16, 0, tzinfo=UTC),
    "after": CUTOFF + timedelta(days=1),
}
EXPECTED = {  # platform -> surface -> action at/after the cutoff (shared/corpus/README.md)
    "taobao": {"livestream_cart": "block", "short_video_cart": "block", "product_detail": "block"},
    "jd": {"livestream_cart": "block", "short_video_cart": "allow", "product_detail": "allow"},
    "own": {"livestream_cart": "allow", "short_video_cart": "allow", "product_detail": "allow"},
    "none": {"livestream_cart": "allow", "short_video_cart": "allow", "product_detail": "allow"},
}
SURFACES = ("livestream_cart", "short_video_cart", "product_detail")

CORPUS_FILE = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "links.jsonl"
OWN_CASES = Path(__file__).resolve().parent / "cases.jsonl"


def _load(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


VECTORS = _load(CORPUS_FILE) + _load(OWN_CASES)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return build_engine(load_policy())


def test_vectors_are_present() -> None:
    assert len(_load(OWN_CASES)) >= 40
    if not CORPUS_FILE.is_file():
        pytest.skip(f"public corpus not found at {CORPUS_FILE}")
    assert len(_load(CORPUS_FILE)) >= 40


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{v['platform']}:{v['why']}" for v in VECTORS])
@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("when", list(INSTANTS))
def test_vector(engine: Engine, vector: dict[str, str], surface: str, when: str) -> None:
    decision = engine.decide(vector["input"], SurfaceId(surface), INSTANTS[when])
    platform = vector["platform"]
    expected = "allow" if when == "before" else EXPECTED[platform][surface]
    assert decision.action.value == expected, decision
    if expected == "block":
        assert decision.platform == platform
        assert decision.rule is not None
    if when == "before" and EXPECTED[platform][surface] == "block":
        assert [p.platform for p in decision.pending] == [platform]
    if platform != "none":
        platforms = {m.platform for v in decision.verdicts for m in v.link.matches}
        assert platform in platforms, f"{vector['input']!r} not attributed to {platform}"
    else:
        assert all(v.platform in (None, "own") for v in decision.verdicts)


KINDS = [
    ("https://s.click.taobao.com/t?e=m%3D2", LinkKind.AFFILIATE),
    ("https://uland.taobao.com/coupon/edetail?e=AbC&pid=mm_1_2_3", LinkKind.AFFILIATE),
    ("https://item.taobao.com/item.htm?id=1&ali_trackid=2:mm_1_2_3", LinkKind.AFFILIATE),
    ("https://item.taobao.com/item.htm?id=1", LinkKind.ITEM),
    ("https://m.tb.cn/h.AbCdEfG", LinkKind.SHORT_LINK),
    ("https://shop987654321.taobao.com/", LinkKind.SHOP),
    ("taobao://item.taobao.com/item.htm?id=1", LinkKind.ITEM),
    ("tbopen://m.taobao.com/tbopen/index.html?action=ali.open.nav", LinkKind.DEEP_LINK),
    ("￥AbCdEfGhIj1￥ 复制这条信息，打开手机淘宝", LinkKind.PASSWORD_TOKEN),
    ("https://union-click.jd.com/jdc?e=&p=AbC", LinkKind.AFFILIATE),
    ("https://u.jd.com/aBcDeFg", LinkKind.AFFILIATE),
    ("https://item.jd.com/100008348542.html", LinkKind.ITEM),
    ("https://3.cn/2a-BcDeF", LinkKind.SHORT_LINK),
    ("https://www.taobao.com/", LinkKind.PAGE),
]


@pytest.mark.parametrize(("text", "kind"), KINDS, ids=[k[0][:48] for k in KINDS])
def test_kind(engine: Engine, text: str, kind: LinkKind) -> None:
    (link,) = engine.links(text)
    assert link.kind is kind


def test_token_platform_follows_nearby_words(engine: Engine) -> None:
    (jd,) = engine.links("【京东】￥Ab3dEf9hIj2￥ 复制后打开京东APP")
    (tb,) = engine.links("【淘宝】￥Ab3dEf9hIj2￥ 复制后打开手机淘宝")
    assert (jd.platform, tb.platform) == ("jd", "taobao")


def test_every_link_in_a_text_is_found(engine: Engine) -> None:
    text = ("A https://item.jd.com/1.html B detail.tmall.com/item.htm?id=2 "
            "C https://www.kuaishou.com/x D ￥AbCdEfGhIj1￥")
    assert [link.platform for link in engine.links(text)] == ["jd", "taobao", "own", "taobao"]


def test_response_rewrite_target(engine: Engine) -> None:
    decision = engine.decide("https://item.taobao.com/item.htm?id=1", SurfaceId("product_detail"),
                             INSTANTS["after"], Direction.RESPONSE)
    assert decision.action is Action.REWRITE
    assert decision.verdicts[0].target is not None
    assert "platform=taobao" in decision.verdicts[0].target


def test_naive_instant_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="naive"):
        engine.decide("https://item.taobao.com/", SurfaceId("livestream_cart"), datetime(2022, 3, 2))


def test_memoised_decisions_follow_the_instant(engine: Engine) -> None:
    text, surface = "https://item.jd.com/1.html", SurfaceId("livestream_cart")
    assert engine.decide(text, surface, INSTANTS["before"]).action is Action.ALLOW
    assert engine.decide(text, surface, INSTANTS["after"]).action is Action.BLOCK
    assert engine.decide(text, surface, INSTANTS["before"]).action is Action.ALLOW


# Properties ----------------------------------------------------------------------------------

ITEM = "item.taobao.com/item.htm?id=678901234567"


@st.composite
def disguised_taobao(draw: st.DrawFn) -> str:
    host = "".join(c.upper() if draw(st.booleans()) else c for c in "item.taobao.com")
    if draw(st.booleans()):
        host += "."
    userinfo = draw(st.sampled_from(["", "user@", "live.kuaishou.com@", "a:b@"]))
    port = draw(st.sampled_from(["", ":443", ":8443"]))
    scheme = draw(st.sampled_from(["https://", "http://", "HTTPS://", "//", ""]))
    if not scheme:
        userinfo = ""  # a scheme-less "user@host" is an e-mail address, not a link
    url = f"{scheme}{userinfo}{host}{port}/item.htm?id=1"
    for _ in range(draw(st.integers(0, 3))):
        from urllib.parse import quote

        url = f"https://r.example.com/go?url={quote(url if '//' in url else 'https://' + url, safe='')}"
    return url


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(url=disguised_taobao())
def test_any_disguise_of_a_taobao_url_is_still_taobao(engine: Engine, url: str) -> None:
    decision = engine.decide(url, SurfaceId("livestream_cart"), INSTANTS["after"])
    assert decision.action is Action.BLOCK, url
    assert decision.platform == "taobao"


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sub=labels, name=labels, tld=st.sampled_from(["com", "net", "org", "cn", "co.uk", "io"]),
       path=st.text(alphabet="abcdefghij/._-", max_size=20))
def test_a_random_other_site_is_never_blocked(
    engine: Engine, sub: str, name: str, tld: str, path: str
) -> None:
    registrable = f"{name}.{tld}"
    listed = {d for p in engine.policy.platforms.values() for d in p.domains}
    if registrable in listed:
        return
    url = f"https://{sub}.{registrable}/{path}"
    for surface in SURFACES:
        decision = engine.decide(url, SurfaceId(surface), INSTANTS["after"])
        assert decision.action is Action.ALLOW, url


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_text_decides_without_error(engine: Engine, text: str) -> None:
    decision = engine.decide(text, SurfaceId("livestream_cart"), INSTANTS["after"])
    for verdict in decision.verdicts:
        assert 0 <= verdict.link.start < verdict.link.end <= len(text)
        assert text[verdict.link.start : verdict.link.end] == verdict.link.text


def test_decide_many_matches_decide(engine: Engine) -> None:
    texts = [v["input"] for v in VECTORS]
    surface = SurfaceId("livestream_cart")
    for at in INSTANTS.values():
        assert engine.decide_many(texts, surface, at) == [engine.decide(t, surface, at) for t in texts]


MESSAGE_TEXTS = [v["input"] for v in VECTORS] + ["京东好物 1 限时特价", "", "plain title"]


@pytest.mark.parametrize("direction", list(Direction))
@pytest.mark.parametrize("surface", SURFACES)
def test_tallies_many_are_the_tallies_of_decide_many(
    engine: Engine, surface: str, direction: Direction
) -> None:
    for at in INSTANTS.values():
        expected = [d.tally for d in engine.decide_many(MESSAGE_TEXTS, SurfaceId(surface), at,
                                                        direction)]
        assert engine.tallies_many(MESSAGE_TEXTS, SurfaceId(surface), at, direction) == expected


def test_tallies_many_without_rules_to_time() -> None:
    """No rule start instants: nothing is memoised by epoch, every text is decided."""
    ruleless = build_engine(replace(load_policy(), rules=()))
    surface = SurfaceId("livestream_cart")
    assert not ruleless.rulebook.boundaries
    tallies = ruleless.tallies_many(MESSAGE_TEXTS, surface, INSTANTS["after"])
    assert tallies == [d.tally for d in ruleless.decide_many(MESSAGE_TEXTS, surface,
                                                              INSTANTS["after"])]
    assert {c.action for tally in tallies for c in tally} == {Action.ALLOW}
    assert not ruleless._tables


_CALLS = st.lists(
    st.tuples(st.booleans(), st.sampled_from(SURFACES), st.sampled_from(list(INSTANTS)),
              st.lists(st.integers(min_value=0, max_value=11), max_size=6)),
    max_size=25,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=_CALLS)
def test_tallies_stay_within_the_memo_and_agree_with_a_fresh_engine(
    engine: Engine, calls: list[tuple[bool, str, str, list[int]]]
) -> None:
    """Any mix of tally and decision lookups on a small memo: the tallies are forgotten with
    their decisions (never more of them, never a text the decisions no longer hold), and what is
    answered is what an engine without history answers."""
    small = build_engine(load_policy(), memo_size=5)
    for tallies_first, surface, when, ids in calls:
        texts = [f"https://item.{'jd' if i % 2 else 'taobao'}.com/{i}.html" if i < 10
                 else "京东好物 限时特价" for i in ids]
        at, where = INSTANTS[when], SurfaceId(surface)
        if tallies_first:
            got = small.tallies_many(texts, where, at)
        else:
            got = [d.tally for d in small.decide_many(texts, where, at)]
        assert got == engine.tallies_many(texts, where, at)
        assert sum(map(len, small._tables.values())) <= 5
        for table in small._tables.values():
            assert set(table.tallies) <= set(table)


def test_link_free_texts_share_one_decision(engine: Engine) -> None:
    texts = ["京东好物 1 限时特价", "plain title", "", "price 99.00"]
    decisions = engine.decide_many(texts, SurfaceId("short_video_cart"), INSTANTS["after"])
    assert all(d is decisions[0] for d in decisions)
    linked = engine.decide("https://item.jd.com/1.html", SurfaceId("short_video_cart"),
                           INSTANTS["after"])
    assert linked.verdicts
    assert linked is not decisions[0]


def test_memo_is_bounded_and_shared_by_surfaces_and_epochs() -> None:
    small = build_engine(load_policy(), memo_size=8)
    live, video = SurfaceId("livestream_cart"), SurfaceId("short_video_cart")
    before = [small.decide(f"https://item.jd.com/{i}.html", live, INSTANTS["before"])
              for i in range(8)]
    assert {d.action for d in before} == {Action.ALLOW}
    assert sum(map(len, small._tables.values())) == 8
    # The clock moves on: the past epoch's table is the fullest, so it drains first.
    after = small.decide_many([f"https://item.jd.com/{i}.html" for i in range(6)], live,
                              INSTANTS["after"])
    assert {d.action for d in after} == {Action.BLOCK}
    sizes = {key[1:]: len(table) for key, table in small._tables.items()}
    assert sum(sizes.values()) == 8
    assert sizes == {(True, 0): 3, (True, 1): 5}  # the fullest table gives way, in turn
    # A second surface takes its share from the fullest table too, never beyond the bound.
    for i in range(20):
        small.decide(f"https://item.jd.com/{100 + i}.html", video, INSTANTS["after"])
    assert sum(map(len, small._tables.values())) == 8
    # What was forgotten is decided again, the same way.
    assert small.decide("https://item.jd.com/0.html", live, INSTANTS["before"]).action \
        is Action.ALLOW
    assert small.decide("https://item.jd.com/0.html", live, INSTANTS["after"]).action \
        is Action.BLOCK
