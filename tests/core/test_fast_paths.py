"""The cold path's shortcuts agree with the slow forms they replace."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import unquote

import pytest
from ada_url import parse_url
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core import textscan, urls
from proxy.core.classify import _path_and_query, _pattern_holds
from proxy.core.decide import RuleBook, decide
from proxy.core.model import Action, SurfaceId
from proxy.policyfile import build_engine, load_policy

ENGINE = build_engine(load_policy())
SURFACE = SurfaceId("livestream_cart")
AFTER = datetime(2022, 3, 2, tzinfo=UTC)

# The alternation _ABSOLUTE replaced, kept here as the reference it must agree with.
_ABSOLUTE_REFERENCE = re.compile(
    rf"(?:[A-Za-z][A-Za-z0-9+.\-]{{0,31}}://|(?<![A-Za-z0-9+.\-])(?i:https?|wss?|ftp):[/\\]+)"
    rf"{textscan._BODY}"
)
_DOT_SEGMENT_REFERENCE = re.compile(r"/\.|%2e|xn--", re.IGNORECASE)


@given(st.text(alphabet="hHtTpPsSwWfFxX:/\\.+-aZ09 中\"}%", max_size=24))
def test_absolute_pattern_matches_its_reference(text: str) -> None:
    assert [m.span() for m in textscan._ABSOLUTE.finditer(text)] == [
        m.span() for m in _ABSOLUTE_REFERENCE.finditer(text)
    ]
    for pos in range(len(text)):
        new, old = textscan._ABSOLUTE.match(text, pos), _ABSOLUTE_REFERENCE.match(text, pos)
        assert (new and new.span()) == (old and old.span())


@given(st.text(alphabet="/.%2eExXnN-a", max_size=16))
def test_dot_segment_test_matches_its_reference(text: str) -> None:
    assert urls._has_dot_segment(text) == (_DOT_SEGMENT_REFERENCE.search(text) is not None)


@pytest.mark.parametrize("href", [
    "https://item.taobao.com/item.htm?id=1",
    "https://s.click.taobao.com/t?e=1",
    "https://detail.tmall.com/item.htm?id=1&ali_trackid=2",
    "https://shop123.m.taobao.com/",
    "https://m.tb.cn/h.abc",
    "https://www.taobao.com/awp/core/detail.htm?id=9",
    "https://item.jd.com/1.html",
    "https://mall.jd.com/index-1.html",
    "https://www.jd.com/product/123.html?unionId=5",
    "https://3.cn/abc",
    "https://app.kwaixiaodian.com/x",
    "https://v.kuaishou.com/abc",
])
def test_host_plan_gives_the_kind_every_pattern_gives(href: str) -> None:
    classifier = ENGINE._classifier
    layer = classifier._parser.layers(href)[0]
    match = classifier.layer_match(layer)
    assert match is not None
    found = ENGINE._domains.lookup(layer.host)
    path, query = _path_and_query(layer.href)
    platform = ENGINE.policy.platforms[match.platform]
    expected = next(
        (p.kind for p in platform.kinds
         if _pattern_holds(p, layer.host, found.registrable, path, query)),
        None,
    )
    assert expected is None or match.kind == expected
    assert classifier.layer_match(layer) is match  # equal matches are shared


def test_outcome_memo_gives_what_a_fresh_rule_book_gives() -> None:
    texts = ["https://item.taobao.com/item.htm?id=1 https://item.jd.com/2.html",
             "https://item.jd.com/3.html", "https://example.com/", "https://m.tb.cn/h.x"]
    before = AFTER - timedelta(days=30)
    for surface in ("livestream_cart", "short_video_cart", "product_detail"):
        for at in (before, AFTER):
            for text in texts * 2:  # the second round comes from the memo
                links = ENGINE.links(text)
                fresh = decide(links, SurfaceId(surface), at, RuleBook(ENGINE.policy.rules))
                assert decide(links, SurfaceId(surface), at, ENGINE.rulebook) == fresh


def test_epoch_memo_follows_the_instant_not_the_object() -> None:
    book = RuleBook(ENGINE.policy.rules)
    cutoff = book.boundaries[0]
    beijing = timezone(timedelta(hours=8))
    assert book.epoch(cutoff) == 1
    assert book.epoch(cutoff.astimezone(beijing)) == 1
    assert book.epoch(cutoff - timedelta(microseconds=1)) == 0
    assert book.epoch(cutoff) == 1
    with pytest.raises(ValueError, match="naive"):
        book.epoch(cutoff.replace(tzinfo=None))
    assert ENGINE.decide("https://item.taobao.com/item.htm?id=1", SURFACE, AFTER).action is (
        Action.BLOCK
    )


@settings(max_examples=1000, deadline=None)
@given(
    prefix=st.sampled_from(["", "//", " ", "\t//"]),
    host=st.sampled_from(["item.taobao.com", "a.b", "x-y.example.co.uk", "1.2.3.com", "a.1",
                          "xn--fiqs8s.com", "A.com", "a..com", "-a.com", "a.com.", "item.jd.com"]),
    sep=st.sampled_from(["", "/", "?", "#", ":8080/", "@"]),
    rest=st.lists(st.sampled_from([*"abz09-._~!$&()*+,;=:@/?#%A'\\\" <>`{}|^[]", "%2e", "/.", ".."]),
                  max_size=16).map("".join),
)
def test_scheme_less_and_relative_fast_path_agrees_with_ada(
    prefix: str, host: str, sep: str, rest: str
) -> None:
    value = f"{prefix}{host}{sep}{rest}"
    layers = urls.URLParser().layers(value)
    if not layers or not layers[0].href.startswith("https://"):
        return  # rejected, or read as a scheme of its own ("a.com:x")
    base = value.strip(" \t")
    full = "https:" + base if base.startswith("//") else "https://" + base
    try:
        parsed = parse_url(full, ("href", "hostname"))
    except ValueError:
        pytest.fail(f"accepted what ada rejects: {value!r}")
    assert layers[0].host == str(parsed["hostname"]).rstrip("."), value
    assert layers[0].href == parsed["href"], value


@settings(max_examples=2000)
@given(st.lists(st.sampled_from(["%", "%2", "%3A", "%3a", "%2F", "%25", "%7f", "%80", "%C3%A9", "%e4%b8",
                                 "%zz", "%0", "a", "Z", "/", "%%", "é", "中", "%G1"]),
                max_size=12).map("".join))
def test_unquote_matches_the_standard_library(value: str) -> None:
    assert urls._unquote(value) == unquote(value)
