"""TextScanner and fold_width: link and 淘口令 candidates in free text, spans exactly as written."""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.model import Candidate, CandidateKind
from proxy.core.textscan import TextScanner, fold_width

URL, TOKEN = CandidateKind.URL, CandidateKind.TOKEN
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "links.jsonl"


@pytest.fixture(scope="module")
def scanner() -> TextScanner:
    return TextScanner()


def found(scanner: TextScanner, text: str) -> list[tuple[CandidateKind, str, str]]:
    """(kind, text as written, value) for every candidate."""
    return [(c.kind, text[c.start : c.end], c.value) for c in scanner.find(text)]


# (id, text, [(kind, as written, value)]); a value of None means "same as written".
FIND_CASES: list[tuple[str, str, list[tuple[CandidateKind, str, str | None]]]] = [
    (
        "https",
        "https://item.taobao.com/item.htm?id=1",
        [(URL, "https://item.taobao.com/item.htm?id=1", None)],
    ),
    (
        "in-chinese",
        "今晚8点开抢 https://detail.tmall.com/item.htm?id=5 拍下备注",
        [(URL, "https://detail.tmall.com/item.htm?id=5", None)],
    ),
    ("glued-to-cjk", "链接https://m.tb.cn/h.AbC打开淘宝", [(URL, "https://m.tb.cn/h.AbC", None)]),
    ("cjk-comma", "链接：https://a.com/x，看这里", [(URL, "https://a.com/x", None)]),
    (
        "cjk-punct",
        "见https://a.com/x、https://b.com/y；完！",
        [(URL, "https://a.com/x", None), (URL, "https://b.com/y", None)],
    ),
    (
        "cjk-brackets",
        "【https://a.com/x】「https://b.com/y」《https://c.com/z》",
        [
            (URL, "https://a.com/x", None),
            (URL, "https://b.com/y", None),
            (URL, "https://c.com/z", None),
        ],
    ),
    ("sentence-stop", "快去https://a.com/x。", [(URL, "https://a.com/x", None)]),
    ("ascii-stop", "See https://a.com/x.", [(URL, "https://a.com/x", None)]),
    (
        "trailing-punct",
        "Is it https://a.com/x?! Yes, https://b.com/y, 'https://c.com/z'",
        [
            (URL, "https://a.com/x", None),
            (URL, "https://b.com/y", None),
            (URL, "https://c.com/z", None),
        ],
    ),
    ("quoted", 'say "https://a.com/x" now', [(URL, "https://a.com/x", None)]),
    ("angle", "<https://a.com/x>", [(URL, "https://a.com/x", None)]),
    ("paren-unbalanced", "(see https://a.com/x)", [(URL, "https://a.com/x", None)]),
    (
        "paren-balanced",
        "https://en.wikipedia.org/wiki/Foo_(bar)",
        [(URL, "https://en.wikipedia.org/wiki/Foo_(bar)", None)],
    ),
    ("square", "[https://a.com/x]", [(URL, "https://a.com/x", None)]),
    (
        "full-width-host",
        "https://ｄｅｔａｉｌ．ｔｍａｌｌ．ｃｏｍ/item.htm?id=5。下一句",
        [
            (
                URL,
                "https://ｄｅｔａｉｌ．ｔｍａｌｌ．ｃｏｍ/item.htm?id=5",
                "https://detail.tmall.com/item.htm?id=5",
            )
        ],
    ),
    (
        "ideographic-stop-host",
        "https://detail。tmall。com/x",
        [(URL, "https://detail。tmall。com/x", "https://detail.tmall.com/x")],
    ),
    (
        "backslash",
        "https://item.taobao.com\\@kuaishou.com/ 看",
        [(URL, "https://item.taobao.com\\@kuaishou.com/", None)],
    ),
    (
        "newline-ends",
        "https://a.com/x\nhttps://b.com/y",
        [(URL, "https://a.com/x", None), (URL, "https://b.com/y", None)],
    ),
    # A field that is one URL with a tab inside: browsers drop the tab (WHATWG).
    ("tab-inside-field", "https://a.com/x\tz", [(URL, "https://a.com/x\tz", "https://a.com/xz")]),
    ("tab-inside-host", "https://item.tao\tbao.com/x", [(URL, "https://item.tao\tbao.com/x",
                                                         "https://item.taobao.com/x")]),
    ("tab-ends-in-prose", "看 https://a.com/x\tz 吧", [(URL, "https://a.com/x", None)]),
    ("upper-scheme", "HTTPS://Item.Taobao.COM/x", [(URL, "HTTPS://Item.Taobao.COM/x", None)]),
    (
        "taobao-scheme",
        "taobao://item.taobao.com/item.htm?id=1",
        [(URL, "taobao://item.taobao.com/item.htm?id=1", None)],
    ),
    (
        "tbopen",
        "tbopen://m.taobao.com/tbopen/index.html?h5Url=https%3A%2F%2Fm.tb.cn%2Fh.x 打开",
        [(URL, "tbopen://m.taobao.com/tbopen/index.html?h5Url=https%3A%2F%2Fm.tb.cn%2Fh.x", None)],
    ),
    ("tmall-empty", "tmall:// 打开", [(URL, "tmall://", None)]),
    (
        "jd-encoded",
        "openapp.jdmobile://virtual?params=%7B%22skuId%22%3A%221%22%7D",
        [(URL, "openapp.jdmobile://virtual?params=%7B%22skuId%22%3A%221%22%7D", None)],
    ),
    (
        "jd-raw-json",
        'openapp.jdmobile://virtual?params={"des":"productDetail","skuId":"1"} 打开',
        [(URL, 'openapp.jdmobile://virtual?params={"des":"productDetail","skuId":"1"}', None)],
    ),
    (
        "intent",
        "intent://item.taobao.com/x#Intent;package=com.taobao.taobao;end",
        [(URL, "intent://item.taobao.com/x#Intent;package=com.taobao.taobao;end", None)],
    ),
    (
        "kwai",
        "kwai://webview?url=https%3A%2F%2Fitem.taobao.com%2Fx，好",
        [(URL, "kwai://webview?url=https%3A%2F%2Fitem.taobao.com%2Fx", None)],
    ),
    ("scheme-relative", "看//item.taobao.com/x", [(URL, "//item.taobao.com/x", None)]),
    (
        "scheme-less",
        "detail.tmall.com/item.htm?id=1 好",
        [(URL, "detail.tmall.com/item.htm?id=1", None)],
    ),
    (
        "scheme-less-short",
        "戳 m.tb.cn/h.AbC 和 item.taobao.com/item.htm?id=1。",
        [(URL, "m.tb.cn/h.AbC", None), (URL, "item.taobao.com/item.htm?id=1", None)],
    ),
    ("scheme-less-cjk", "去taobao.com看看", [(URL, "taobao.com", None)]),
    ("scheme-less-upper", "ITEM.JD.COM/1.html", [(URL, "ITEM.JD.COM/1.html", None)]),
    ("scheme-less-port", "item.taobao.com:8443/x", [(URL, "item.taobao.com:8443/x", None)]),
    (
        "scheme-less-full-width",
        "ｉｔｅｍ．ｔａｏｂａｏ．ｃｏｍ/x",
        [(URL, "ｉｔｅｍ．ｔａｏｂａｏ．ｃｏｍ/x", "item.taobao.com/x")],
    ),
    (
        "lookalike-stays-whole",
        "https://taobao.com.example.net/x",
        [(URL, "https://taobao.com.example.net/x", None)],
    ),
    (
        "url-with-token-inside",
        "【淘宝】https://m.tb.cn/h.Uv?tk=Y9NgdNPog4u CZ3457 「好物」",
        [(URL, "https://m.tb.cn/h.Uv?tk=Y9NgdNPog4u", None)],
    ),
    (
        "url-path-token-like",
        "https://a.com/AbCdEfGhIj1/",
        [(URL, "https://a.com/AbCdEfGhIj1/", None)],
    ),
    (
        "token-yuan",
        "￥AbCdEfGhIj1￥ 复制这条信息，打开手机淘宝",
        [(TOKEN, "￥AbCdEfGhIj1￥", "AbCdEfGhIj1")],
    ),
    ("token-digit-prefix", "6￥AbCdEfGhIj1￥/", [(TOKEN, "￥AbCdEfGhIj1￥", "AbCdEfGhIj1")]),
    (
        "token-euro",
        "复制这段描述€g1IVbaMXxxK€后到👉淘♂寳♀👈",
        [(TOKEN, "€g1IVbaMXxxK€", "g1IVbaMXxxK")],
    ),
    ("token-mixed-signs", "₳AbCdEfGhIj1₴ 打开", [(TOKEN, "₳AbCdEfGhIj1₴", "AbCdEfGhIj1")]),
    (
        "token-dollar-cz",
        "7輹👋Zhi8$p7kr2vC0jOX$:// CZ6135,打開/",
        [(TOKEN, "$p7kr2vC0jOX$:// CZ6135", "p7kr2vC0jOX")],
    ),
    (
        "token-emoji-open",
        "5嘻😀AbCdEfGhIjK$:// CZ1234 打开",
        [(TOKEN, "😀AbCdEfGhIjK$:// CZ1234", "AbCdEfGhIjK")],
    ),
    ("token-cjk-open", "微AbCdEfGhIj1￥", [(TOKEN, "微AbCdEfGhIj1￥", "AbCdEfGhIj1")]),
    (
        "token-brackets",
        "（AbCdEfGhIj1）【AbCdEfGhIj2】「AbCdEfGhIj3」《AbCdEfGhIj4》",
        [
            (TOKEN, "（AbCdEfGhIj1）", "AbCdEfGhIj1"),
            (TOKEN, "【AbCdEfGhIj2】", "AbCdEfGhIj2"),
            (TOKEN, "「AbCdEfGhIj3」", "AbCdEfGhIj3"),
            (TOKEN, "《AbCdEfGhIj4》", "AbCdEfGhIj4"),
        ],
    ),
    ("token-slashes", "/AbCdEfGhIj1/", [(TOKEN, "/AbCdEfGhIj1/", "AbCdEfGhIj1")]),
    ("token-code-cz", "0HshdpTt27g CZ3457", [(TOKEN, "0HshdpTt27g CZ3457", "0HshdpTt27g")]),
    (
        "token-cz-code",
        "1fu致.( CZ3457 vmUFdZekxVO/🍑",
        [(TOKEN, "CZ3457 vmUFdZekxVO/", "vmUFdZekxVO")],
    ),
    ("token-jd-percent", "京东￥AbCdEf1234%", [(TOKEN, "￥AbCdEf1234%", "AbCdEf1234")]),
    ("token-jd-14", "(AbCdEf12345678)", [(TOKEN, "(AbCdEf12345678)", "AbCdEf12345678")]),
    (
        "token-shared-sign",
        "￥AbCdEfGhIj1￥AbCdEfGhIj2￥",
        [(TOKEN, "￥AbCdEfGhIj1￥", "AbCdEfGhIj1"), (TOKEN, "AbCdEfGhIj2￥", "AbCdEfGhIj2")],
    ),
    (
        "token-and-url",
        "￥AbCdEfGhIj1￥ https://m.tb.cn/h.x",
        [(TOKEN, "￥AbCdEfGhIj1￥", "AbCdEfGhIj1"), (URL, "https://m.tb.cn/h.x", None)],
    ),
    ("token-upper-digits", "￥ABCDEFGHIJ1￥", [(TOKEN, "￥ABCDEFGHIJ1￥", "ABCDEFGHIJ1")]),
]

NOTHING_CASES = [
    ("prices", "到手价￥99，原价￥199"),
    ("long-price", "￥1999999999￥"),
    ("plain-names", "淘宝同款，京东也有，快手小店最便宜"),
    ("email", "mail first.last@taobao.com now"),
    ("email-cjk", "邮箱：kefu@service.taobao.com"),
    ("version", "version 1.2.3 and v2.0"),
    ("decimal", "支持1.5米防水"),
    ("file-name", "see report.pdf and photo.JPG"),
    ("abbreviation", "e.g. i.e. U.S."),
    ("lower-word", "￥abcdefghijk￥"),
    ("upper-word", "【ABCDEFGHIJK】"),
    ("too-short", "￥AbCdEf123￥"),
    ("too-long", "￥AbCdEfGhIj123456￥"),
    ("cjk-both-sides", "型号iPhone15Pro包邮"),
    ("no-delimiters", "code AbCdEfGhIj1 here"),
    ("comment-slashes", "a // b"),
    ("dollar-colon", "$:// CZ6135"),
    ("empty", ""),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in FIND_CASES], ids=[c[0] for c in FIND_CASES])
def test_find(scanner: TextScanner, text: str, expected: list[tuple[CandidateKind, str, str | None]]) -> None:
    assert found(scanner, text) == [(k, w, w if v is None else v) for k, w, v in expected]


@pytest.mark.parametrize("text", [c[1] for c in NOTHING_CASES], ids=[c[0] for c in NOTHING_CASES])
def test_find_nothing(scanner: TextScanner, text: str) -> None:
    assert scanner.find(text) == ()


def test_every_currency_sign_delimits_a_token(scanner: TextScanner) -> None:
    signs = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Sc"]
    missed = [
        s
        for s in signs
        if found(scanner, f"{s}AbCdEfGhIj1{s}") != [(TOKEN, f"{s}AbCdEfGhIj1{s}", "AbCdEfGhIj1")]
    ]
    assert missed == []


def test_token_lengths_come_from_the_constructor() -> None:
    scanner = TextScanner(token_min_length=5, token_max_length=6)
    assert found(scanner, "￥AbC12￥ ￥AbCdEfGhIj1￥") == [(TOKEN, "￥AbC12￥", "AbC12")]


@pytest.mark.parametrize(("low", "high"), [(0, 3), (5, 4)], ids=["zero", "inverted"])
def test_bad_token_lengths_are_refused(low: int, high: int) -> None:
    with pytest.raises(ValueError, match="token_min_length"):
        TextScanner(token_min_length=low, token_max_length=high)


FOLD_CASES = [
    ("letters", "ｄｅｔａｉｌ．ｔｍａｌｌ", "detail.tmall"),
    ("ideographic-stop", "a。b｡c", "a.b.c"),
    ("punctuation", "！～（）", "!~()"),
    ("untouched", "淘宝￥¥ ｶﾀｶﾅ", "淘宝￥¥ ｶﾀｶﾅ"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in FOLD_CASES], ids=[c[0] for c in FOLD_CASES])
def test_fold_width(text: str, expected: str) -> None:
    assert fold_width(text) == expected


def _corpus() -> list[dict[str, str]]:
    if not CORPUS.is_file():
        return []
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


# Corpus lines whose link is not the whole input: the candidate expected, as written.
CORPUS_EXPECTED = {
    "今晚8点开抢 https://detail.tmall.com/item.htm?id=598765432106 拍下备注主播名": (
        URL,
        "https://detail.tmall.com/item.htm?id=598765432106",
    ),
    "￥AbCdEfGhIj1￥ 复制这条信息，打开手机淘宝": (TOKEN, "￥AbCdEfGhIj1￥"),
}


@pytest.mark.skipif(not CORPUS.is_file(), reason="shared corpus not present")
@pytest.mark.parametrize("line", _corpus(), ids=lambda line: line["why"])
def test_corpus(scanner: TextScanner, line: dict[str, str]) -> None:
    text = line["input"]
    candidates = found(scanner, text)
    if text in CORPUS_EXPECTED:
        assert [(k, w) for k, w, _ in candidates] == [CORPUS_EXPECTED[text]]
    elif not any(c.isspace() for c in text) and ("." in fold_width(text) or "://" in text):
        assert candidates == [(URL, text, fold_width(text))]  # the whole input is the link
    elif line["platform"] == "none":
        assert candidates == []
    else:
        assert candidates, "a platform line yields a candidate"


def _check_spans(text: str, candidates: tuple[Candidate, ...]) -> None:
    end = 0
    for c in candidates:
        assert end <= c.start < c.end <= len(text)
        end = c.end
        if c.kind is URL:
            # A field that is one URL broken by tabs or newlines is joined, as WHATWG does.
            written = fold_width(text[c.start : c.end])
            assert c.value in (written, re.sub("[\t\n\r]", "", written))
        else:
            assert c.value in fold_width(text[c.start : c.end])


@given(st.text())
def test_find_never_raises_and_spans_are_ordered(text: str) -> None:
    _check_spans(text, TextScanner().find(text))


_PIECES = st.sampled_from(
    [
        "https://",
        "//",
        "item.taobao.com",
        "/",
        ".",
        "。",
        "．",
        "ｃｏｍ",
        "?id=",
        "￥",
        "$",
        "://",
        "CZ3457",
        "AbCdEfGhIj1",
        "（",
        "）",
        "(",
        ")",
        "【",
        "】",
        " ",
        "\n",
        "\\",
        "@",
        "淘宝",
        "👉",
        "%",
        '"',
        "{",
        "}",
        ",",
    ]
)


@given(st.lists(_PIECES, max_size=30).map("".join))
def test_find_on_link_shaped_text(text: str) -> None:
    _check_spans(text, TextScanner().find(text))


@given(st.from_regex(r"[0-9]{10,14}", fullmatch=True), st.sampled_from("￥$€(/【"))
def test_numbers_are_never_tokens(digits: str, sign: str) -> None:
    assert TextScanner().find(f"价格{sign}{digits}{sign}") == ()
