from __future__ import annotations

import gzip
import json
import zlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy import intake
from proxy.errors import BodyTooLarge, InvalidEncoding, JSONTooDeep, MalformedJSON
from proxy.intake import decode_content, is_json, parse_json

PARSE_ERRORS = [
    (b"", MalformedJSON),
    (b"{,}", MalformedJSON),
    (b'{"a": "\xc3\x28"}', InvalidEncoding),
    (b'{"a": 1, "a": 2}', MalformedJSON),
    (b'{"a": {"b": 1, "b" : 1}}', MalformedJSON),
    (b'[{"k": 1}, {"k": 2, "x": {"k": 1, "k": 3}}]', MalformedJSON),
    (b"[" * 65 + b"]" * 65, JSONTooDeep),
    (b"[" * 2000 + b"]" * 2000, JSONTooDeep),
]


@pytest.mark.parametrize(("data", "error"), PARSE_ERRORS, ids=[str(i) for i in range(8)])
def test_parse_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_json(data, max_depth=64)


@pytest.mark.parametrize("data", [
    b'{"a": "\\":", "b": 1}', b'{"a" : 1, "b":"x\\" :"}', b'[[[[1]]]]', b'"x"',
    b'{"k": 1, "o": {"k": 2}}', "{\"标题\": \"淘宝\"}".encode(),
])
def test_valid_documents(data: bytes) -> None:
    assert parse_json(data, max_depth=64) == orjson.loads(data)


@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=30))
def test_any_document_without_duplicates_parses(doc: object) -> None:
    data = orjson.dumps(doc)
    assert parse_json(data, max_depth=200) == doc


def test_depth_limit_is_inclusive() -> None:
    assert parse_json(b"[" * 64 + b"]" * 64, max_depth=64) is not None


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "deflate-raw"])
def test_decode(coding: str) -> None:
    data = b'{"a": 1}' * 100
    if coding == "deflate-raw":
        raw = zlib.compressobj(wbits=-15)
        encoded, coding = raw.compress(data) + raw.flush(), "deflate"
    elif coding == "deflate":
        encoded = zlib.compress(data)
    else:
        encoded = gzip.compress(data)
    assert decode_content(encoded, coding, limit=10_000) == data


def test_decode_bomb_and_bad_data() -> None:
    bomb = gzip.compress(b"\0" * 10_000_000)
    with pytest.raises(BodyTooLarge):
        decode_content(bomb, "gzip", limit=1_000_000)
    with pytest.raises(InvalidEncoding):
        decode_content(b"nope", "gzip", limit=100)
    with pytest.raises(InvalidEncoding):
        decode_content(gzip.compress(b"x" * 100)[:-12], "gzip", limit=1000)
    with pytest.raises(InvalidEncoding):
        decode_content(b"x", "br", limit=100)
    assert decode_content(gzip.compress(b"a") + gzip.compress(b"b"), "gzip", limit=9) == b"ab"
    assert decode_content(b"x", "identity", limit=1) == b"x"


def test_is_json() -> None:
    assert is_json("application/json")
    assert is_json("Application/JSON; charset=utf-8")
    assert is_json("application/merge-patch+json")
    assert not is_json("text/json-ish")
    assert not is_json("")


@pytest.mark.parametrize("data", [
    b'{"a":"x","b":{"c":"y","c":"z"}}',
    b'[{"k":"v"},{"k":"v","k":"v"}]',
    b'{"a":"\\"","a":"x"}',
    b'{"t":"a\\\\","t":[]}',
    b'{"a":{"x":1},"a":{"x":1}}',
], ids=["nested", "array", "escaped-quote", "escaped-backslash", "same-object"])
def test_duplicates_with_and_without_escapes(data: bytes) -> None:
    with pytest.raises(MalformedJSON) as info:
        parse_json(data, max_depth=64)
    assert info.value.extensions["duplicate_key"] in ("a", "c", "k", "t")


@pytest.mark.parametrize(("data", "expected"), [
    (b'{"n":' + b"1" * 100 + b"}", {"n": int("1" * 100)}),
    (b'[18446744073709551616, -9223372036854775809, 1.5]',
     [2**64, -(2**63) - 1, 1.5]),
    (b"-" + b"9" * 400, -int("9" * 400)),
    (b'{"n":1e19,"s":"x"}', {"n": 1e19, "s": "x"}),
], ids=["100-digits", "beyond-64-bits", "400-digits", "large-float"])
def test_integers_beyond_64_bits_are_exact(data: bytes, expected: object) -> None:
    doc = parse_json(data, max_depth=64)
    assert doc == expected
    assert type(doc) is type(expected)


@pytest.mark.parametrize("data", [
    b'{"n":1.5e999}', b'{"n":NaN,"m":' + b"9" * 400 + b"}",
    b'{"s":"\\ud800","m":' + b"9" * 400 + b"}", b'{"n":1,"n":' + b"9" * 400 + b"}",
    b"[" * 65 + b"9" * 400 + b"]" * 65,
], ids=["double-overflow", "nan", "lone-surrogate", "duplicate", "too-deep"])
def test_the_exact_parser_is_as_strict(data: bytes) -> None:
    with pytest.raises((MalformedJSON, JSONTooDeep)):
        parse_json(data, max_depth=64)


# The compact fast path must agree with the exact walk on every document -------------------------
def _outcome(data: bytes, max_depth: int) -> object:
    try:
        return ("ok", parse_json(data, max_depth=max_depth))
    except (MalformedJSON, JSONTooDeep, InvalidEncoding) as exc:
        return (type(exc).__name__, exc.extensions)


def _walked(data: bytes, max_depth: int, monkeypatch: pytest.MonkeyPatch) -> object:
    with monkeypatch.context() as patched:
        patched.setattr(intake, "_canonical_and_shallow", lambda *args: False)
        return _outcome(data, max_depth)


def _nested(depth: int, bottom: bytes, *, keyed: bool) -> bytes:
    if keyed:
        return b'{"k":' * depth + bottom + b"}" * depth
    return b"[" * depth + bottom + b"]" * depth


@pytest.mark.parametrize("depth", [1, 2, 3, 63, 64, 65, 66, 200, 254, 255, 300])
@pytest.mark.parametrize("bottom", [b"", b"1", b"[]", b"{}", b'"s"'])
@pytest.mark.parametrize("keyed", [False, True])
def test_depth_at_the_limit_matches_the_walk(depth: int, bottom: bytes, keyed: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if keyed and not bottom:
        bottom = b"null"
    data = _nested(depth, bottom, keyed=keyed)
    for limit in (3, 64, 253):
        assert _outcome(data, limit) == _walked(data, limit, monkeypatch)


@pytest.mark.parametrize("data", [
    b'{"a":1,"a":1}', b'{"a":{"b":"x","b":"x"}}', b'[{"k":"v"},{"k":"v","k":"v"}]',
    b'{"n":12345678901234567890123}', b'{"n":18446744073709551616}', b'[1e+19]',
    b'{"t":"\\u00e9"}', b'{"t":"\xc3\xa9"}', b'{"s":"\\ud800"}',
])
def test_compact_bodies_match_the_walk(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _outcome(data, 64) == _walked(data, 64, monkeypatch)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False,
                                                                      allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=4),
    max_leaves=40,
)


@given(doc=_JSON, repeat_key=st.booleans(), limit=st.integers(1, 8))
def test_any_compact_body_matches_the_walk(doc: object, repeat_key: bool, limit: int) -> None:
    data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    if repeat_key and data.startswith(b"{") and len(data) > 2:
        data = b'{"dup":0,"dup":1,' + data[1:]
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert _outcome(data, limit) == _walked(data, limit, monkeypatch)


# The fast path itself: one serialisation inside orjson's nesting limit --------------------------
def test_orjson_nesting_limit_is_the_known_one() -> None:
    assert intake._ORJSON_DEPTH == 254


@pytest.mark.parametrize("depth", [1, 2, 3, 63, 64, 65, 200, 252, 253])
@pytest.mark.parametrize("keyed", [False, True])
def test_the_fast_path_takes_exactly_the_documents_within_the_limit(depth: int,
                                                                      keyed: bool) -> None:
    data = _nested(depth, b"1", keyed=keyed)
    doc = orjson.loads(data)
    assert intake._canonical_and_shallow(doc, data, depth)
    assert intake._canonical_and_shallow(doc, data, 253)
    assert not intake._canonical_and_shallow(doc, data, depth - 1)


@pytest.mark.parametrize("data", [
    b'{"a":1}', b'[{"k":"v"},{"k":"w"}]', "{\"标题\":\"淘宝 [1]\"}".encode(),
])
def test_the_fast_path_takes_compact_bodies_only(data: bytes) -> None:
    doc = orjson.loads(data)
    assert intake._canonical_and_shallow(doc, data, 64)
    spaced = data.replace(b":", b": ")
    assert not intake._canonical_and_shallow(doc, spaced, 64)
    assert not intake._canonical_and_shallow(doc, data + b" ", 64)
    assert not intake._canonical_and_shallow(doc, data[:-1] + b" " + data[-1:], 64)


def test_the_shared_wrappers_are_left_as_they_were() -> None:
    parse_json(b'{"a":[1,2]}', max_depth=64)
    node = intake._wrapped(254 - 64)
    for _ in range(254 - 64):
        assert type(node) is list
        assert len(node) == 1
        node = node[0]
    assert node is intake._SLOT


@pytest.mark.parametrize("data", [
    b'{"a":[1,2]}', b'{"a":1,"a":2}', b"[" * 65 + b"]" * 65, b"[" * 64 + b"]" * 64,
])
def test_without_the_known_limit_the_walk_decides(data: bytes,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _outcome(data, 64)
    monkeypatch.setattr(intake, "_ORJSON_DEPTH", None)
    assert not intake._canonical_and_shallow(orjson.loads(data), data, 64)
    assert _outcome(data, 64) == expected
