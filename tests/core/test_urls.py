"""URLParser and canonical_host: hosts as a browser sees them, and every URL nested inside a link."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
from ada_url import parse_url
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.model import Layer
from proxy.core.textscan import TextScanner
from proxy.core.urls import URLParser, canonical_host

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "links.jsonl"
REDIRECT_PARAMS = ("url", "u", "target", "to", "redirect")


@pytest.fixture(scope="module")
def parser() -> URLParser:
    return URLParser(redirect_params=REDIRECT_PARAMS)


def summary(layers: tuple[Layer, ...]) -> list[tuple[int, str, str, str]]:
    return [(layer.depth, layer.scheme, layer.host, layer.via) for layer in layers]


# (id, value, scheme, host) of the link itself (depth 0).
OUTER_CASES = [
    ("plain", "https://item.taobao.com/item.htm?id=1", "https", "item.taobao.com"),
    ("case", "HTTPS://Item.Taobao.COM/item.htm?id=1", "https", "item.taobao.com"),
    ("trailing-dot", "https://item.taobao.com./item.htm", "https", "item.taobao.com"),
    ("trailing-dots", "https://item.taobao.com../", "https", "item.taobao.com"),
    ("userinfo", "https://shop:pw@detail.tmall.com/item.htm", "https", "detail.tmall.com"),
    ("userinfo-own-host", "https://live.kuaishou.com@item.taobao.com/", "https", "item.taobao.com"),
    ("port", "https://item.taobao.com:8443/x", "https", "item.taobao.com"),
    ("full-width", "https://ｄｅｔａｉｌ．ｔｍａｌｌ．ｃｏｍ/item.htm", "https", "detail.tmall.com"),
    ("ideographic-stop", "https://detail。tmall。com/", "https", "detail.tmall.com"),
    ("percent-host", "https://%74mall.com/", "https", "tmall.com"),
    ("backslash", "https://item.taobao.com\\@kuaishou.com/", "https", "item.taobao.com"),
    ("backslashes-only", "https:\\\\item.taobao.com\\x", "https", "item.taobao.com"),
    ("tab-newline", "https://item.tao\tbao.co\nm/x", "https", "item.taobao.com"),
    ("idna", "https://淘宝.com/", "https", "xn--pbt173b.com"),
    ("scheme-relative", "//item.taobao.com/item.htm?id=1", "https", "item.taobao.com"),
    ("scheme-less", "detail.tmall.com/item.htm?id=1", "https", "detail.tmall.com"),
    ("scheme-less-port", "item.taobao.com:8443/x", "https", "item.taobao.com"),
    ("scheme-less-bare", "m.tb.cn", "https", "m.tb.cn"),
    ("lookalike-subdomain", "https://taobao.com.example.net/x", "https", "taobao.com.example.net"),
    ("lookalike-domain", "https://faketaobao.com/x", "https", "faketaobao.com"),
    ("ipv4", "http://0x7f.1/", "http", "127.0.0.1"),
    ("ipv6", "http://[::1]:8080/", "http", "[::1]"),
    ("taobao-scheme", "taobao://Item.TAOBAO.com/x", "taobao", "item.taobao.com"),
    ("tmall-scheme-dot", "TMALL://detail.tmall.com./x", "tmall", "detail.tmall.com"),
    ("custom-percent", "taobao://%74aobao.com/", "taobao", "taobao.com"),
    ("custom-full-width", "taobao://ｉｔｅｍ．taobao.com/x", "taobao", "item.taobao.com"),
    ("custom-userinfo", "taobao://a@item.taobao.com:1/x", "taobao", "item.taobao.com"),
    ("custom-empty", "tmall://", "tmall", ""),
    ("jd-virtual", "openapp.jdmobile://virtual?params=%7B%7D", "openapp.jdmobile", "virtual"),
    (
        "intent",
        "intent://item.taobao.com/x#Intent;package=com.taobao.taobao;end",
        "intent",
        "item.taobao.com",
    ),
    ("mailto", "mailto:kefu@taobao.com", "mailto", ""),
]


@pytest.mark.parametrize(
    ("value", "scheme", "host"), [c[1:] for c in OUTER_CASES], ids=[c[0] for c in OUTER_CASES]
)
def test_outer_layer(parser: URLParser, value: str, scheme: str, host: str) -> None:
    outer = parser.layers(value)[0]
    assert (outer.depth, outer.via, outer.scheme, outer.host) == (0, "link", scheme, host)
    assert parse_url(outer.href, ("href",))["href"] == outer.href  # canonical: stable under ada


NOT_URLS = [
    ("empty", ""),
    ("words", "not a url"),
    ("space-in-host", "https://x y.com/"),
    ("bad-port", "https://a.com:99999/"),
    ("bad-ipv4", "https://1.2.3.4.5/"),
    ("relative-path", "/item.htm?id=1"),
    ("bare-scheme", "https://"),
    ("slashes", "//"),
    ("no-dot", "localhost/x"),
    ("forbidden-host", "https://a<b.com/"),
]


@pytest.mark.parametrize("value", [c[1] for c in NOT_URLS], ids=[c[0] for c in NOT_URLS])
def test_not_a_url(parser: URLParser, value: str) -> None:
    assert parser.layers(value) == ()


E = quote("https://item.taobao.com/item.htm?id=1", safe="")
EE = quote(E, safe="")

# (id, value, [(depth, scheme, host, via)] below the link)
NESTED_CASES = [
    ("no-query", "https://item.taobao.com/item.htm", []),
    ("plain-query", "https://item.taobao.com/item.htm?id=1&spm=a.b", []),
    ("url-param", f"https://r.example.com/go?url={E}", [(1, "https", "item.taobao.com", "query:url")]),
    (
        "unencoded",
        "https://r.example.com/go?x=1&next=https://item.taobao.com/x",
        [(1, "https", "item.taobao.com", "query:next")],
    ),
    ("double-encoded", f"https://r.example.com/go?u={EE}", [(1, "https", "item.taobao.com", "query:u")]),
    (
        "scheme-relative",
        "https://r.example.com/go?x=%2F%2Fitem.taobao.com%2Fx",
        [(1, "https", "item.taobao.com", "query:x")],
    ),
    (
        "redirect-param-bare",
        "https://link.zhihu.com/?target=item.taobao.com/x",
        [(1, "https", "item.taobao.com", "query:target")],
    ),
    (
        "redirect-param-case",
        "https://link.zhihu.com/?Target=item.taobao.com%2Fx",
        [(1, "https", "item.taobao.com", "query:Target")],
    ),
    ("other-param-bare", "https://r.example.com/?q=item.taobao.com/x", []),
    (
        "h5url",
        f"tbopen://m.taobao.com/tbopen/index.html?h5Url={E}",
        [(1, "https", "item.taobao.com", "query:h5Url")],
    ),
    ("kwai", f"kwai://webview?url={E}", [(1, "https", "item.taobao.com", "query:url")]),
    ("fragment", f"https://a.com/#{E}", [(1, "https", "item.taobao.com", "fragment")]),
    ("fragment-route", f"https://a.com/#/detail?url={E}", [(1, "https", "item.taobao.com", "fragment:url")]),
    (
        "intent-fallback",
        f"intent://x#Intent;package=com.taobao.taobao;S.browser_fallback_url={E};end",
        [(1, "https", "item.taobao.com", "fragment:S.browser_fallback_url")],
    ),
    (
        "jd-linkst",
        "https://linkst.m.jd.com/ul/ul.action?openapp.jdmobile://virtual?params=%7B%22url%22%3A%22https%3A%2F%2Fitem.jd.com%2F1.html%22%7D",
        [(1, "openapp.jdmobile", "virtual", "query"), (2, "https", "item.jd.com", "query:params")],
    ),
    (
        "jd-linkst-encoded",
        "https://linkst.m.jd.com/ul/ul.action?" + quote("openapp.jdmobile://virtual?params={}", safe=""),
        [(1, "openapp.jdmobile", "virtual", "query")],
    ),
    (
        "jd-json-escaped-slashes",
        "openapp.jdmobile://virtual?params="
        + quote('{"des":"m","url":"https:\\/\\/item.m.jd.com\\/product\\/1.html"}', safe=""),
        [(1, "https", "item.m.jd.com", "query:params")],
    ),
    (
        "jd-json-no-url",
        "openapp.jdmobile://virtual?params=%7B%22des%22%3A%22productDetail%22%2C%22skuId%22%3A%221%22%7D",
        [],
    ),
    (
        "deep-link-in-web",
        "https://a.com/?open=" + quote("taobao://Item.Taobao.com/x", safe=""),
        [(1, "taobao", "item.taobao.com", "query:open")],
    ),
    (
        "two-params",
        f"https://a.com/?a={E}&b=" + quote("https://item.jd.com/1.html", safe=""),
        [(1, "https", "item.taobao.com", "query:a"), (1, "https", "item.jd.com", "query:b")],
    ),
    ("duplicate", f"https://a.com/?a={E}&b={EE}", [(1, "https", "item.taobao.com", "query:a")]),
    (
        "chain",
        "https://a.com/?u=" + quote(f"https://b.com/?u={E}", safe=""),
        [(1, "https", "b.com", "query:u"), (2, "https", "item.taobao.com", "query:u")],
    ),
    ("relative-redirect", "https://a.com/?to=/local/path", []),
    ("not-a-url-value", "https://a.com/?u=%E4%BD%A0%E5%A5%BD", []),
]


@pytest.mark.parametrize(("value", "nested"), [c[1:] for c in NESTED_CASES], ids=[c[0] for c in NESTED_CASES])
def test_nested(parser: URLParser, value: str, nested: list[tuple[int, str, str, str]]) -> None:
    assert summary(parser.layers(value))[1:] == nested


def test_redirect_params_come_from_the_constructor() -> None:
    value = "https://link.zhihu.com/?target=item.taobao.com/x"
    assert len(URLParser().layers(value)) == 1
    assert len(URLParser(redirect_params=["TARGET"]).layers(value)) == 2


def test_depth_zero_unwraps_nothing() -> None:
    assert len(URLParser(unwrap_depth=0).layers(f"https://r.example.com/go?url={E}")) == 1


def test_layer_count_is_bounded() -> None:
    many = "&".join(f"p{i}=" + quote(f"https://h{i}.example.com/", safe="") for i in range(40))
    assert len(URLParser().layers(f"https://a.com/?{many}")) == 16
    assert len(URLParser(max_layers=3).layers(f"https://a.com/?{many}")) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"unwrap_depth": -1}, "unwrap_depth"), ({"max_layers": 0}, "max_layers")],
    ids=["negative-depth", "no-layers"],
)
def test_bad_bounds_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        URLParser(**kwargs)


HOST_CASES = [
    ("canonical", "item.taobao.com", "item.taobao.com"),
    ("upper", "Item.TAOBAO.com", "item.taobao.com"),
    ("trailing-dot", "item.taobao.com.", "item.taobao.com"),
    ("full-width", "ＩＴＥＭ．ｔａｏｂａｏ．ｃｏｍ", "item.taobao.com"),
    ("ideographic-stop", "tmall。com", "tmall.com"),
    ("percent", "%74mall.com", "tmall.com"),
    ("unicode", "淘宝.com", "xn--pbt173b.com"),
    ("punycode", "xn--pbt173b.com", "xn--pbt173b.com"),
    ("encoded-slash", "a%2Fb.com", ""),
    ("encoded-nul", "a%00.com", ""),
    ("ipv4-number", "a.123", ""),
    ("ipv4", "0x7f.0.0.1", "127.0.0.1"),
    ("ipv6", "[::1]", "[::1]"),
    ("empty", "", ""),
    ("space", "a b.com", ""),
    ("slash", "a.com/x", ""),
    ("userinfo", "u@a.com", ""),
    ("port", "a.com:80", ""),
    ("backslash", "a.com\\x", ""),
]


@pytest.mark.parametrize(("host", "expected"), [c[1:] for c in HOST_CASES], ids=[c[0] for c in HOST_CASES])
def test_canonical_host(host: str, expected: str) -> None:
    assert canonical_host(host) == expected


def _corpus() -> list[dict[str, str]]:
    if not CORPUS.is_file():
        return []
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


# The host a corpus link must reach in some layer; lines not listed must merely parse.
CORPUS_HOSTS = {
    "https://%74mall.com/": "tmall.com",
    "https://ｄｅｔａｉｌ．ｔｍａｌｌ．ｃｏｍ/item.htm?id=598765432104": "detail.tmall.com",
    "https://live.kuaishou.com@item.taobao.com/item.htm?id=678901234570": "item.taobao.com",
    (
        "https://r.example.com/go?url=https%3A%2F%2Fitem.taobao.com%2Fitem.htm%3Fid%3D678901234573"
    ): "item.taobao.com",
    "https://item.taobao.com./item.htm?id=678901234569": "item.taobao.com",
    "HTTPS://Item.Taobao.COM/item.htm?id=678901234568": "item.taobao.com",
    "https://ITEM.JD.COM/100008348544.html": "item.jd.com",
    "https://shop:pw@detail.tmall.com/item.htm?id=598765432103": "detail.tmall.com",
    "https://item.taobao.com:8443/item.htm?id=678901234571": "item.taobao.com",
    (
        "openapp.jdmobile://virtual?params="
        "%7B%22des%22%3A%22productDetail%22%2C%22skuId%22%3A%22100008348542%22%7D"
    ): "virtual",
    "https://taobao.com.example.net/item.htm?id=1": "taobao.com.example.net",
}


@pytest.mark.skipif(not CORPUS.is_file(), reason="shared corpus not present")
@pytest.mark.parametrize("line", _corpus(), ids=lambda line: line["why"])
def test_corpus(parser: URLParser, line: dict[str, str]) -> None:
    urls = [c.value for c in TextScanner().find(line["input"]) if c.kind.value == "url"]
    for url in urls:
        layers = parser.layers(url)
        assert layers, f"{url!r} parses"
        expected = CORPUS_HOSTS.get(line["input"])
        if expected is not None:
            assert expected in {layer.host for layer in layers}
        elif "://" in url and url.isascii():
            # Otherwise the host is the one written (lower-cased): the corpus holds no tricks elsewhere.
            written = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].lower()
            assert layers[0].host == written


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@st.composite
def taobao_item_urls(draw: st.DrawFn) -> str:
    """item.taobao.com written any way a browser still reads as item.taobao.com."""
    labels = ["item", "taobao", "com"]
    labels = ["".join(c.upper() if draw(st.booleans()) else c for c in label) for label in labels]
    labels = [_full_width(label) if draw(st.booleans()) else label for label in labels]
    dots = [draw(st.sampled_from([".", "．", "。", "｡"])) for _ in range(2)]
    host = labels[0] + dots[0] + labels[1] + dots[1] + labels[2] + draw(st.sampled_from(["", ".", ".."]))
    userinfo = draw(st.sampled_from(["", "user@", "live.kuaishou.com@", "a:b@", "x%40y@"]))
    port = draw(st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")))
    scheme = draw(st.sampled_from(["https://", "http://", "HTTPS://", "//", "", "taobao://", "tmall://"]))
    if scheme == "" and userinfo:
        scheme = "https://"  # "user@host" without a scheme is an e-mail address, not a link
    return f"{scheme}{userinfo}{host}{port}/item.htm?id={draw(st.integers(1, 10**12))}"


@given(taobao_item_urls())
def test_any_spelling_of_the_host_is_item_taobao_com(value: str) -> None:
    assert URLParser().layers(value)[0].host == "item.taobao.com"


@st.composite
def nested_urls(draw: st.DrawFn) -> tuple[str, int]:
    """item.taobao.com wrapped N times in ?url=, each level singly or doubly encoded."""
    levels = draw(st.integers(0, 10))
    value = "https://item.taobao.com/item.htm?id=1"
    for level in range(levels):
        encoded = quote(value, safe="")
        if draw(st.booleans()):
            encoded = quote(encoded, safe="")
        value = f"https://r{level}.example.com/go?url={encoded}"
    return value, levels


@given(nested_urls(), st.integers(0, 6))
def test_nesting_is_bounded(nested: tuple[str, int], depth: int) -> None:
    value, levels = nested
    layers = URLParser(unwrap_depth=depth).layers(value)
    assert 1 <= len(layers) <= min(levels, depth) + 1
    assert all(layer.depth <= depth for layer in layers)
    assert [layer.depth for layer in layers] == sorted(layer.depth for layer in layers)
    if levels <= depth:
        assert layers[-1].host == "item.taobao.com"


def _check_layers(layers: tuple[Layer, ...], depth: int = 4) -> None:
    assert len(layers) <= 16
    assert len({layer.href for layer in layers}) == len(layers)
    assert all(0 <= layer.depth <= depth for layer in layers)
    assert all(layer.host == layer.host.lower().rstrip(".") for layer in layers)


@given(st.text())
def test_layers_never_raises(value: str) -> None:
    _check_layers(URLParser(redirect_params=REDIRECT_PARAMS).layers(value))


_PIECES = st.sampled_from(
    [
        "https://",
        "//",
        "taobao://",
        "item.taobao.com",
        "a.com",
        "/",
        "?",
        "#",
        "&",
        ";",
        "=",
        "url=",
        "u=",
        "%",
        "%25",
        "%3A",
        "%2F",
        "3A",
        "2F",
        ":",
        "{",
        "}",
        '"',
        "\\/",
        "@",
        "。",
        "．",
        "Ｉ",
        "[::1]",
        ":8080",
    ]
)


@given(st.lists(_PIECES, max_size=40).map("".join))
def test_layers_on_url_shaped_text(value: str) -> None:
    _check_layers(URLParser(redirect_params=REDIRECT_PARAMS).layers(value))


@given(st.text(alphabet=_LETTERS + "0123456789-.ＡＢ。%xn", min_size=1, max_size=30))
def test_canonical_host_agrees_with_ada_and_is_idempotent(host: str) -> None:
    once = canonical_host(host)
    try:
        expected = str(parse_url(f"https://{host}/", ("hostname",))["hostname"]).rstrip(".")
    except ValueError:
        expected = ""
    assert once == expected
    if any(c.isalpha() for c in once):  # "0.." is a name, but "0" without its dots is IPv4 0.0.0.0
        assert canonical_host(once) == once


# The canonical fast path must agree with ada on everything it accepts ---------------------------

_url_chars = st.sampled_from([*"abcxyz019-._~!$&()*+,;=:@/?#%AZ'\\\" <>`{}|^[]\t", "%2e", "/.", ".."])


@settings(max_examples=2000, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https", "HTTP", "ftp"]),
    host=st.sampled_from(["item.taobao.com", "a.b", "x-y.example.co.uk", "1.2.3.com", "a.1",
                          "xn--fiqs8s.com", "A.com", "a..com", "-a.com", "a.com.", "a.b.c.d.shop"]),
    sep=st.sampled_from(["", "/", "?", "#", ":8080/", "@"]),
    rest=st.lists(_url_chars, max_size=20).map("".join),
)
def test_canonical_fast_path_agrees_with_ada(scheme: str, host: str, sep: str, rest: str) -> None:
    value = f"{scheme}://{host}{sep}{rest}"
    layer = URLParser().layers(value)
    try:
        parsed = parse_url(value, ("href", "hostname"))
    except ValueError:
        assert layer == ()
        return
    assert layer, value
    assert layer[0].host == str(parsed["hostname"]).rstrip("."), value
    if layer[0].depth == 0:
        assert layer[0].href == parsed["href"], value
