from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.documents import (
    Replacement,
    apply_edits,
    compile_paths,
    pointer,
    removal_path,
    resolve_pointer,
    select,
    select_texts,
)
from proxy.core.model import StripMode

DOC: dict[str, Any] = {
    "seller_id": "s1",
    "items": [
        {"url": "u0", "title": "t0", "tags": ["a", "b"]},
        {"url": "u1", "title": "t1", "n": 3},
    ],
    "a/b": {"m~n": "odd"},
}

SELECT = [
    (["/items/*/url"], [("/items/0/url", "u0"), ("/items/1/url", "u1")]),
    (["/items/1/title"], [("/items/1/title", "t1")]),
    (["/items/*/tags"], [("/items/0/tags/0", "a"), ("/items/0/tags/1", "b")]),
    (["/a~1b/m~0n"], [("/a~1b/m~0n", "odd")]),
    (["/items/*/n", "/missing/*", "/items/9/url"], []),
    (["/items/0/url", "/items/*/url"], [("/items/0/url", "u0"), ("/items/1/url", "u1")]),
    (["**"], [("/seller_id", "s1"), ("/items/0/url", "u0"), ("/items/0/title", "t0"),
              ("/items/0/tags/0", "a"), ("/items/0/tags/1", "b"), ("/items/1/url", "u1"),
              ("/items/1/title", "t1"), ("/a~1b/m~0n", "odd")]),
]


@pytest.mark.parametrize(("paths", "expected"), SELECT, ids=[",".join(p) for p, _ in SELECT])
def test_select(paths: list[str], expected: list[tuple[str, str]]) -> None:
    assert [(pointer(loc.path), loc.text) for loc in select(DOC, compile_paths(paths))] == expected


def test_resolve_pointer() -> None:
    assert resolve_pointer(DOC, "/seller_id") == "s1"
    assert resolve_pointer(DOC, "/items/1/n") == 3
    assert resolve_pointer(DOC, "/items/7") is None
    assert resolve_pointer(DOC, "/nope/x") is None


def test_edits_rewrite_then_strip() -> None:
    doc = {"items": [{"url": "x https://bad y"}, {"url": "ok"}, {"url": "bad"}, {"url": "z"}]}
    edited = apply_edits(
        doc,
        replacements=[Replacement(("items", 0, "url"), 2, 13, "NOTICE")],
        removals=[removal_path(("items", 2, "url"), StripMode.ELEMENT),
                  removal_path(("items", 3, "url"), StripMode.ELEMENT),
                  ("items", 3, "url")],
    )
    assert edited == {"items": [{"url": "x NOTICE y"}, {"url": "ok"}]}


def test_field_strip_in_array_of_strings_and_root_refused() -> None:
    doc = {"tags": ["a", "b", "c"]}
    assert apply_edits(doc, removals=[("tags", 0), ("tags", 2)]) == {"tags": ["b"]}
    with pytest.raises(ValueError, match="whole document"):
        apply_edits("text", removals=[()])


@given(st.lists(st.integers(min_value=0, max_value=19), max_size=20))
def test_removing_any_elements_keeps_the_others_in_order(indices: list[int]) -> None:
    doc = {"items": [{"i": i} for i in range(20)]}
    apply_edits(doc, removals=[("items", i, "i") for i in indices] and
                [removal_path(("items", i, "i"), StripMode.ELEMENT) for i in indices])
    assert [item["i"] for item in doc["items"]] == [i for i in range(20) if i not in indices]


@pytest.mark.parametrize(("paths", "expected"), SELECT, ids=[",".join(p) for p, _ in SELECT])
def test_select_texts_finds_what_select_finds(paths: list[str],
                                              expected: list[tuple[str, str]]) -> None:
    assert sorted(select_texts(DOC, compile_paths(paths))) == sorted(t for _, t in expected)


MEMBERS = [  # each way a member is found: in every object, in some, among other values
    ({"items": [{"url": "a"}, {"url": "b"}]}, ["/items/*/url"], ["a", "b"]),
    ({"items": [{"url": "a"}, {"title": "t"}, {"url": None}]}, ["/items/*/url"], ["a"]),
    ({"items": [{"url": "a"}, "u", ["x"], None, 3, {"url": ["b", {"c": "d"}]}]},
     ["/items/*/url"], ["a", "b", "d"]),
    ({"items": [["a", "b"], {"0": "c"}, [], "0"]}, ["/items/*/0"], ["a", "c"]),
    ({"items": [{"url": "", "title": "t"}]}, ["/items/*/url", "/items/*/title"], ["t"]),
    ({"items": ["a", {"b": "c"}]}, ["/items/*"], ["a", "c"]),
]


@pytest.mark.parametrize(("doc", "paths", "expected"), MEMBERS,
                         ids=[repr(d)[:40] for d, _, _ in MEMBERS])
def test_select_texts_takes_members_wherever_they_are(
    doc: dict[str, Any], paths: list[str], expected: list[str]
) -> None:
    before = copy.deepcopy(doc)
    compiled = compile_paths(paths)
    assert sorted(t for t in select_texts(doc, compiled) if t) == expected
    assert [loc.text for loc in select(doc, compiled) if loc.text] == expected
    assert doc == before


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["", "x", "u1", "0"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["items", "url", "0", "a"]), inner, max_size=3),
    max_leaves=25,
)
_PATHS = st.lists(
    st.lists(st.sampled_from(["items", "url", "0", "1", "a", "*"]), min_size=1, max_size=3)
    .map(lambda tokens: "/" + "/".join(tokens)) | st.just("**"),
    min_size=1, max_size=3,
)


@given(_JSON, _PATHS)
def test_select_texts_is_select_without_paths(doc: object, paths: list[str]) -> None:
    """The same strings, counted per location, empty ones aside (they hold no link)."""
    compiled = compile_paths(paths)
    before = copy.deepcopy(doc)
    assert sorted(t for t in select_texts(doc, compiled) if t) == \
        sorted(loc.text for loc in select(doc, compiled) if loc.text)
    assert doc == before  # the walkers only read (one of them is handed the doc's own array)
