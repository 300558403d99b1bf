"""Browser-equivalent URL parsing and bounded unwrapping of URLs nested inside URLs.

Parsing is ada's WHATWG parser, so a host here is the host a browser would contact (userinfo,
ports, backslashes, tabs, percent-encoding and full-width forms all handled as Chrome does).
Hosts of custom schemes (``taobao://``, ``openapp.jdmobile://``), which WHATWG leaves opaque, are
put through the same host parser. Unwrapping follows query parameters, fragments, raw queries and
JSON values, bounded in depth and in count. Pure: no I/O, no state after construction.

>>> link = "//r.example.com/go?u=https%3A%2F%2FItem.Taobao.COM.%2Fx"
>>> [(layer.depth, layer.host, layer.via) for layer in URLParser().layers(link)]
[(0, 'r.example.com', 'link'), (1, 'item.taobao.com', 'query:u')]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Final
from urllib.parse import unquote

from ada_url import parse_url

from proxy.core.model import Layer

__all__ = ["CANONICAL_HTTP_URL", "URLParser", "canonical_host"]

_ATTRIBUTES: Final = ("href", "hostname")
# WHATWG special schemes: ada already gives their canonical host.
_SPECIAL: Final = frozenset({"http", "https", "ws", "wss", "ftp", "file"})
_ABSOLUTE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_SCHEME_ONLY: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:(?![0-9])")
# Absolute URLs inside a decoded JSON (or free-text) parameter value.
_EMBEDDED: Final = re.compile(r"""[A-Za-z][A-Za-z0-9+.\-]*://[^\s"'<>\\{}]+""")
_PLAIN_HOST: Final = re.compile(r"(?:[a-z0-9\-]+\.)*[a-z][a-z0-9\-]*\.*")
_NOT_A_HOST: Final = re.compile(r"[\s/?#@\\]")
_C0_AND_SPACE: Final = "".join(map(chr, range(0x21)))
_FRAGMENT_PAIRS: Final = re.compile("[&;]")
# Could this query or fragment, once decoded, start with "scheme:" or "/"?
_MAYBE_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*(?::|%3A|%253A)|/|%2F|%252F", re.IGNORECASE)
_MAX_DECODES: Final = 3
_HEX: Final = "0123456789abcdefABCDEF"
_HEX_PAIRS: Final = {a + b: int(a + b, 16) for a in _HEX for b in _HEX}
_ASCII_ESCAPES: Final = {pair: chr(byte) for pair, byte in _HEX_PAIRS.items() if byte < 0x80}
_BYTE_ESCAPES: Final = frozenset(pair for pair, byte in _HEX_PAIRS.items() if byte >= 0x80)
# The common case, already in WHATWG canonical form: lower-case http(s), a lower-case LDH host
# ending in a letter label (no IPv4 reading, no punycode to validate), no userinfo or port, and a
# rest with no character WHATWG would encode, no backslash and no dot segment. Such a URL's href
# and host are the text itself, so ada's parse is skipped (a test checks agreement with ada).
CANONICAL_HTTP_URL: Final = re.compile(
    r"(https?)://((?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+[a-z]{2,63})"
    r"(?:[/?#][A-Za-z0-9\-._~!$&()*+,;=:@/?#%]*)?"
)
_DOT: Final = re.compile("[.\uff0e\u3002\uff61]")  # full-width and ideographic stops are dots too


def canonical_host(host: str) -> str:
    """Lower-case ASCII (IDNA/UTS-46 via ada) host without trailing dot(s); '' when invalid.

    >>> canonical_host("ＩＴＥＭ．Taobao.COM."), canonical_host("%74mall.com")
    ('item.taobao.com', 'tmall.com')
    >>> canonical_host("a/b")
    ''
    """
    # Already canonical: lower-case LDH labels, not punycode (needs validation) and not ending in
    # a number (WHATWG would read it as IPv4).
    if _PLAIN_HOST.fullmatch(host) and "xn--" not in host:
        return host.rstrip(".")
    if not host or _NOT_A_HOST.search(host) or (":" in host and not host.startswith("[")):
        return ""
    try:
        parsed = parse_url(f"https://{host}/", ("hostname",))
    except ValueError:  # ada's only failure signal: the host is not one a browser would accept
        return ""
    return str(parsed["hostname"]).rstrip(".")


class URLParser:
    """Parses a link as a browser would and lists every URL nested inside it."""

    __slots__ = ("_depth", "_max_layers", "_redirect", "_redirect_pair")

    def __init__(
        self, *, unwrap_depth: int = 4, redirect_params: Iterable[str] = (), max_layers: int = 16
    ) -> None:
        if unwrap_depth < 0:
            raise ValueError(f"unwrap_depth must be >= 0, got {unwrap_depth}")
        if max_layers < 1:
            raise ValueError(f"max_layers must be >= 1, got {max_layers}")
        self._depth = unwrap_depth
        self._max_layers = max_layers
        self._redirect = frozenset(name.lower() for name in redirect_params)
        # One C-level search tells whether any redirect parameter is present at all.
        names = "|".join(re.escape(name) for name in sorted(self._redirect)) or "(?!)"
        initials = "".join(sorted({re.escape(name[0]) for name in self._redirect})) or "^\\s\\S"
        # Only searched from the '?' or '#' that starts the query, so '^' never applies; a leading
        # character class lets re skip to the separators instead of trying every position, and the
        # initials reject most parameters ("id", "spm") before the names are tried one by one.
        self._redirect_pair = re.compile(rf"[?&;#](?i:(?=[{initials}])(?:{names}))=")

    def layers(self, value: str) -> tuple[Layer, ...]:
        """The link and every URL nested inside it; () when `value` is no URL a browser follows.

        Depth 0 first, then breadth-first, at most `unwrap_depth` levels below the link and
        `max_layers` in all, no two with the same href. Scheme-relative and scheme-less values
        get the base ``https:``.
        """
        root = _parse(value, 0, "link", bare=True)
        if root is None:
            return ()
        if not self._may_nest(root.href):
            return (root,)
        found = [root]
        seen = {root.href}
        index = 0
        # Breadth-first over `found` itself; both bounds hold whatever the input nests.
        while index < len(found) and len(found) < self._max_layers:
            layer = found[index]
            index += 1
            if layer.depth >= self._depth or (layer is not root and not self._may_nest(layer.href)):
                continue  # (the root's _may_nest was checked above)
            for via, nested, bare in self._nested(layer.href):
                child = _parse(nested, layer.depth + 1, via, bare=bare)
                if child is not None and child.href not in seen:
                    seen.add(child.href)
                    found.append(child)
                    if len(found) >= self._max_layers:
                        break
        return tuple(found)

    def _may_nest(self, href: str) -> bool:
        """Cheap test: without '%', ':' or '/' after the path, or a redirect parameter, nothing nests."""
        start = href.find("?")
        if start < 0:
            start = href.find("#")
            if start < 0:
                return False
        return (
            href.find("%", start) >= 0
            or href.find(":", start) >= 0
            or href.find("/", start) >= 0
            or self._redirect_pair.search(href, start) is not None
        )

    def _nested(self, href: str) -> Iterator[tuple[str, str, bool]]:
        """(via, candidate URL, scheme-less allowed) for everything in the query and fragment."""
        rest, has_fragment, fragment = href.partition("#")
        _, has_query, query = rest.partition("?")
        if has_query and query:
            yield from self._section(query, "query", query)
        if has_fragment and fragment:
            # SPA routes ("#/detail?url=...") and intents ("#Intent;S.browser_fallback_url=...").
            yield from self._section(fragment, "fragment", fragment.partition("?")[2] or fragment)

    def _section(self, whole: str, via: str, pairs: str) -> Iterator[tuple[str, str, bool]]:
        if "%" not in whole and ":" not in whole and "/" not in whole and not self._redirect:
            return
        if _MAYBE_URL.match(whole):
            decoded = _decoded(whole)
            if _ABSOLUTE.match(decoded) or decoded.startswith("//"):
                # JD linkst: the whole raw query is the deep link; its parameters are its layers.
                yield via, decoded, False
                return
        for pair in pairs.split("&") if via == "query" else _FRAGMENT_PAIRS.split(pairs):
            name, _, raw = pair.partition("=")
            if not raw:
                continue
            redirect = name.lower() in self._redirect
            if not redirect and "%" not in raw and ":" not in raw and "/" not in raw:
                continue
            label = f"{via}:{unquote(name) if '%' in name else name}"
            value = _decoded(raw)
            if _ABSOLUTE.match(value) or value.startswith("//"):
                yield label, value, False
            elif redirect:
                yield label, value, True
            elif ":/" in value or ":\\/" in value:  # JSON (params={"url":"https:\/\/..."}), prose
                for match in _EMBEDDED.finditer(value.replace("\\/", "/")):
                    yield label, match.group(), False


def _decoded(value: str) -> str:
    """Percent-decode until the value reads as a URL, at most three times (double encoding)."""
    for _ in range(_MAX_DECODES):
        if "%" not in value or _ABSOLUTE.match(value) or value.startswith("//"):
            break
        value = _unquote(value)
    return value


def _unquote(value: str) -> str:
    """``urllib.parse.unquote``, several times faster when every escape is ASCII (the usual
    nested URL); anything else goes to ``unquote`` itself."""
    if not value.isascii():
        return unquote(value)
    parts = value.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        char = _ASCII_ESCAPES.get(part[:2])
        if char is not None:
            out.append(char)
            out.append(part[2:])
        elif part[:2] in _BYTE_ESCAPES:
            return unquote(value)  # a byte of a UTF-8 sequence (or an invalid one)
        else:
            out.append("%")  # not an escape: kept as written
            out.append(part)
    return "".join(out)


def _has_dot_segment(value: str) -> bool:
    # "/.", "%2e" or "xn--" in any case (value is ASCII here: it matched CANONICAL_HTTP_URL); a
    # case-insensitive regex search tries every position and cost more than the rest of the parse.
    return (
        "/." in value
        or "%2e" in value
        or "%2E" in value
        or ("--" in value and "xn--" in value.lower())
    )


def _canonical_layer(url: str, depth: int, via: str) -> Layer | None:
    """The layer for a URL already in canonical form (see CANONICAL_HTTP_URL), without ada."""
    canonical = CANONICAL_HTTP_URL.fullmatch(url)
    if canonical is None or _has_dot_segment(url):
        return None
    cut = canonical.end(2)
    href = url if url.startswith("/", cut) else f"{url[:cut]}/{url[cut:]}"
    return Layer(href, canonical.group(1), canonical.group(2), depth, via)


def _parse(value: str, depth: int, via: str, *, bare: bool) -> Layer | None:
    layer = _canonical_layer(value, depth, via)
    if layer is not None:
        return layer
    text = value.strip(_C0_AND_SPACE)
    if not text:
        return None
    if _ABSOLUTE.match(text):
        url = text
    elif text.startswith("//"):
        url = "https:" + text
        layer = _canonical_layer(url, depth, via)
        if layer is not None:
            return layer
    elif _SCHEME_ONLY.match(text):
        if depth:
            return None
        url = text  # mailto:, javascript:, https:\\host: still something a browser follows
    elif bare and text[0] not in "/\\.?#" and _DOT.search(text.partition("/")[0]):
        url = "https://" + text  # "item.jd.com/1.html", as the common scheme-less link is written
        layer = _canonical_layer(url, depth, via)
        if layer is not None:
            return layer
    else:
        return None
    try:
        parsed = parse_url(url, _ATTRIBUTES)
    except ValueError:  # ada's only failure signal: not a URL a browser would follow
        return None
    href = str(parsed["href"])
    scheme = href[: href.index(":")]
    host = str(parsed["hostname"])
    if scheme in _SPECIAL:
        host = host.rstrip(".")
    elif host:
        host = canonical_host(host)
    return Layer(href, scheme, host, depth, via)
