"""Find link candidates in free text: URLs of every shape, and 淘口令/京口令 password tokens.

A candidate is a span of the text plus the string to hand to ``proxy.core.urls``; nothing here
parses, classifies or decides. Matching runs on a width-folded copy of the text (full-width ASCII
forms and ideographic full stops mapped 1:1), so every offset found is an offset into the original.
Pure: no I/O, no state beyond the patterns compiled in the constructor.

>>> [c.value for c in TextScanner().find("今晚8点 https://ｄｅｔａｉｌ．ｔｍａｌｌ．ｃｏｍ/x?id=5。")]
['https://detail.tmall.com/x?id=5']
>>> [(c.kind.value, c.value) for c in TextScanner().find("复制￥AbCdEfGhIj1￥打开, 到手价￥99")]
[('token', 'AbCdEfGhIj1')]
"""

from __future__ import annotations

import re
from typing import Final

from proxy.core.model import Candidate, CandidateKind
from proxy.core.urls import CANONICAL_HTTP_URL

__all__ = ["TextScanner", "fold_width"]

_FOLD: Final = {chr(c): chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)} | {
    "\u3002": ".",
    "\uff61": ".",
}
_WIDE: Final = re.compile("[\uff01-\uff5e\u3002\uff61]")
# Full-width punctuation that ends a link in Chinese prose stays unfolded in the matching copy, so
# "链接：https://a.com/x，看这里" stops at "，" instead of swallowing an ASCII comma.
_STOPS: Final = "！＂＇（），：；＜＞？［］｛｝"
_MATCH_FOLD: Final = {k: v for k, v in _FOLD.items() if k not in _STOPS}
_MATCH_WIDE: Final = re.compile("[" + re.escape("".join(_MATCH_FOLD)) + "]")

# One URL character: printable ASCII except '"<>', or a non-ASCII letter outside the CJK, symbol,
# punctuation, emoji and full-width blocks (those end a link, as in linkify and GitHub).
_CH: Final = (
    r'[^\s\x00-\x20"<>\x7f-\xbf\xd7\xf7\u2000-\u2bff\u2e00-\u9fff\ua000-\ua4cf\uac00-\udfff'
    r"\ue000-\ufaff\ufe00-\ufe6f\uff00-\uffff\U0001f000-\U0001faff\U00020000-\U0003ffff]"
)
# A '"' inside an unencoded JSON deep-link parameter (params={"des":...}) when a '}' follows soon.
# Possessive loops: nothing follows a body, so backtracking into it could only waste time.
_BODY: Final = rf'(?:{_CH[:-1]}]++|"(?=[^\s<>]{{0,256}}\}}))*+'
# Any scheme followed by "//"; a special scheme (WHATWG) with any run of slashes or backslashes,
# since a browser reads "https:/item.taobao.com" and "https:\\item.taobao.com" as that host.
# Written with the scheme's first letter outside the alternation, so re skips prose (CJK text
# above all) with a character-class scan instead of trying both branches at every position.
_ABSOLUTE: Final = re.compile(
    rf"[A-Za-z](?:[A-Za-z0-9+.\-]{{0,31}}://"
    rf"|(?<![A-Za-z0-9+.\-].)(?i:(?<=h)ttps?|(?<=w)ss?|(?<=f)tp):[/\\]+){_BODY}"
)
# A whole field that is one URL with tabs or newlines inside it: WHATWG removes those characters.
_WHOLE_FIELD: Final = re.compile(r"(?i:https?|wss?|ftp):[/\\]+[^\s]+|//[^\s/][^\s]*")
_TAB_OR_NEWLINE: Final = re.compile("[\t\n\r]")
_C0_OR_SPACE: Final = "".join(map(chr, range(0x21)))
_RELATIVE: Final = re.compile(rf"//(?<![A-Za-z0-9_:/]//)(?=[A-Za-z0-9%@:.\-]*\.)[A-Za-z0-9%\[]{_BODY}")
# A bare host of two or more labels ending in an alphabetic or punycode label, not inside a word,
# a path, a version number or an e-mail address; then an optional port and path.
_BARE: Final = re.compile(
    rf"""
    [A-Za-z0-9](?<![A-Za-z0-9_.@/\-].)(?:[A-Za-z0-9\-]{{0,61}}[A-Za-z0-9])?\.
    (?:[A-Za-z0-9](?:[A-Za-z0-9\-]{{0,61}}[A-Za-z0-9])?\.){{0,125}}
    (?P<tld>[A-Za-z]{{2,63}}|xn--[A-Za-z0-9\-]{{1,59}})
    (?![A-Za-z0-9_@\-]|\.[A-Za-z0-9])
    (?P<rest>(?::[0-9]{{1,5}})?(?:[/?#\\]{_BODY})?)
    """,
    re.VERBOSE,
)
_LINK_MARK: Final = re.compile("[./:\u3002\uff0e\uff61\uff0f]")
_DOT_LETTER: Final = re.compile(r"\.[A-Za-z]")  # every bare host has one: its last label
_TRIM: Final = frozenset(".,;:!?'\"")
_CLOSERS: Final = {")": "(", "]": "[", "}": "{"}
# A scheme-less "host" that is really a file name; downstream would drop most, but not all
# (.zip and .mov are delegated TLDs).
_FILE_EXTENSIONS: Final = frozenset(
    {"pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "txt", "csv", "jpg", "jpeg", "png", "gif"}
    | {"webp", "svg", "bmp", "mp3", "mp4", "mov", "avi", "zip", "rar", "gz", "tgz", "exe", "apk"}
    | {"ipa", "dmg", "json", "xml", "yaml", "yml", "log", "md", "py", "js", "ts"}
)

# Token delimiters. Every character of Unicode category Sc (checked by a test against unicodedata),
# brackets, '/', emoji and other symbols are strong; CJK ideographs and JD's closing '%' / '！' are
# weak: a code needs at least one strong side, so "型号iPhone15Pro包邮" is not a token.
# Shapes from public converters: github.com search "TpwdUtil" (xyz.taobaok.wechat: Sc, (《, emoji,
# 微信啊哈嘻), LJMX996/jd 京东口令解析 ([(#@$%¥￥!！]{10,14}), and shares such as
# "7輹👋Zhi8$p7kr2vC0jOX$:// CZ6135,打開/", "0HshdpTt27g CZ3457", "( CZ3457 vmUFdZekxVO/".
_SC: Final = (
    "$\u00a2-\u00a5\u058f\u060b\u07fe\u07ff\u09f2\u09f3\u09fb\u0af1\u0bf9\u0e3f\u17db"
    "\u20a0-\u20c0\ua838\ufdfc\ufe69\uff04\uffe0\uffe1\uffe5\uffe6\U00011fdd-\U00011fe0"
    "\U0001e2ff\U0001ecb0"
)
_STRONG: Final = (
    _SC + r"()（）【】《》「」『』〔〕〈〉\[\]/"
    "\u2190-\u21ff\u2300-\u23ff\u2460-\u24ff\u2500-\u27bf\u2b00-\u2bff\u3030\u303d\u3297\u3299"
    "\u200d\u20e3\ufe0f\U0001f000-\U0001faff"
)
_WEAK: Final = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff%!！，"
_STRONG_CHAR: Final = re.compile(f"[{_STRONG}]")
_DELIMITER: Final = re.compile(f"[{_STRONG}{_WEAK}]")
_CZ_BEFORE: Final = re.compile("CZ[0-9]{4}[ \t]{1,4}")
_CZ_AFTER: Final = re.compile("[ \t]{1,4}CZ[0-9]{4}(?![0-9])")
_TOKEN_TAIL: Final = re.compile("(?::/{1,2})?(?:[ \t]{0,4}CZ[0-9]{4}(?![0-9]))?")


def fold_width(text: str) -> str:
    """Map full-width ASCII forms (U+FF01–FF5E) to ASCII and U+3002, U+FF61 to '.'.

    The mapping is 1:1 per character, so offsets into the result are offsets into `text`.

    >>> fold_width("ｉｔｅｍ．ｔａｏｂａｏ。ｃｏｍ／１")
    'item.taobao.com/1'
    """
    return _WIDE.sub(_fold, text) if _WIDE.search(text) else text


# re.sub over the few wide characters is several times faster than str.translate on the whole text.
def _fold(match: re.Match[str]) -> str:
    return _FOLD[match.group()]


def _match_fold(match: re.Match[str]) -> str:
    return _MATCH_FOLD[match.group()]


class TextScanner:
    """Finds URLs and password tokens in free text; one instance serves every thread."""

    __slots__ = ("_min", "_quick", "_run")

    def __init__(self, *, token_min_length: int = 10, token_max_length: int = 14) -> None:
        if not 1 <= token_min_length <= token_max_length:
            raise ValueError(
                "token lengths must satisfy 1 <= token_min_length <= token_max_length,"
                f" got {token_min_length} and {token_max_length}"
            )
        self._min = token_min_length
        # The character class comes first so that re's prefix scan skips prose quickly.
        self._run = re.compile(
            "[A-Za-z0-9](?<![A-Za-z0-9].)"
            f"[A-Za-z0-9]{{{token_min_length - 1},{token_max_length - 1}}}(?![A-Za-z0-9])"
        )
        # Neither a URL nor a token is possible without one of these: skip every scan cheaply.
        # Two searches, each led by a character class, beat one alternation tried at every position.
        self._quick = re.compile(
            f"[A-Za-z0-9\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]{{{token_min_length}}}"
        )

    def find(self, text: str) -> tuple[Candidate, ...]:
        """Every link candidate in `text`, in order of position, non-overlapping."""
        if _LINK_MARK.search(text) is None and self._quick.search(text) is None:
            return ()
        # A field that is exactly one canonical URL (the usual `url` field) needs no scanning.
        if CANONICAL_HTTP_URL.fullmatch(text) and text[-1] not in _TRIM and text[-1] not in _CLOSERS:
            return (Candidate(CandidateKind.URL, 0, len(text), text),)
        folded = _MATCH_WIDE.sub(_match_fold, text) if _MATCH_WIDE.search(text) else text
        urls = _url_spans(folded)
        if "\t" in folded or "\n" in folded or "\r" in folded:
            whole = _whole_field_url(folded, urls)
            if whole is not None:
                return (whole,)
        found = [Candidate(CandidateKind.URL, start, end, folded[start:end]) for start, end in urls]
        tokens = self._tokens(folded, urls)
        if tokens:
            found += tokens
            found.sort(key=_start)
        return tuple(found)

    def _tokens(self, folded: str, urls: list[tuple[int, int]]) -> list[Candidate]:
        """Tokens in the stretches between URLs: a URL holding a token-like piece stays whole."""
        found: list[Candidate] = []
        has_cz = "CZ" in folded
        previous = 0
        for pos, endpos in _gaps(urls, len(folded)):
            if endpos - pos < self._min:
                continue
            for run in self._run.finditer(folded, pos, endpos):
                code = run.group()
                if code.isdigit() or (code.isalpha() and (code.islower() or code.isupper())):
                    continue  # a number or a plain word, never a generated code
                span = _delimited(folded, *run.span())
                if span is None and has_cz:
                    span = _marked(folded, *run.span())
                if span is None:
                    continue
                # "￥Code1￥Code2￥": the middle sign closes one token and opens the next.
                start, end = max(span[0], previous), span[1]
                if start < pos or end > endpos or start > run.start():
                    continue
                found.append(Candidate(CandidateKind.TOKEN, start, end, code))
                previous = end
        return found


def _whole_field_url(folded: str, urls: list[tuple[int, int]]) -> Candidate | None:
    """A field holding one URL broken by tabs or newlines (``https://item.tao<TAB>bao.com/``).

    A browser strips ASCII tabs and newlines anywhere in a URL, so such a field leads where the
    joined URL does. Lines that each start a URL of their own stay separate links.
    """
    with_scheme = sum(1 for s, _ in urls if folded.startswith("//", s) or _ABSOLUTE.match(folded, s))
    if with_scheme > 1:
        return None
    start = len(folded) - len(folded.lstrip(_C0_OR_SPACE))
    end = len(folded.rstrip(_C0_OR_SPACE))
    if " " in folded[start:end]:
        return None
    joined = _TAB_OR_NEWLINE.sub("", folded[start:end])
    if not _WHOLE_FIELD.fullmatch(joined):
        return None
    return Candidate(CandidateKind.URL, start, end, fold_width(joined))


def _start(candidate: Candidate) -> int:
    return candidate.start


def _delimited(folded: str, start: int, end: int) -> tuple[int, int] | None:
    """The span of a code between delimiters, at least one of them strong, plus its tail."""
    if start == 0 or end == len(folded):
        return None
    before, after = folded[start - 1], folded[end]
    if _STRONG_CHAR.match(before):
        if not _DELIMITER.match(after):
            return None
    elif not (_STRONG_CHAR.match(after) and _DELIMITER.match(before)):
        return None
    tail = _TOKEN_TAIL.match(folded, end + 1)
    return start - 1, tail.end() if tail else end + 1


def _marked(folded: str, start: int, end: int) -> tuple[int, int] | None:
    """The newer shapes: "Code CZ3457" and "CZ3457 Code/"."""
    after = _CZ_AFTER.match(folded, end)
    if after:
        return start, after.end()
    mark = folded.rfind("CZ", max(0, start - 10), start)
    if (
        mark >= 0
        and _CZ_BEFORE.fullmatch(folded, mark, start)
        and end < len(folded)
        and _DELIMITER.match(folded[end])
    ):
        return mark, end + 1
    return None


def _url_spans(folded: str) -> list[tuple[int, int]]:
    """Sorted, disjoint URL spans, trimmed like linkify.

    Absolute URLs first; the other shapes are looked for only between them, never inside one.
    """
    spans = [m.span() for m in _ABSOLUTE.finditer(folded)] if ":" in folded else []
    if "//" in folded:
        for pos, endpos in _gaps(spans, len(folded)):
            if folded.find("//", pos, endpos) >= 0:
                spans += [m.span() for m in _RELATIVE.finditer(folded, pos, endpos)]
        spans.sort()
    if "." in folded:
        for pos, endpos in _gaps(spans, len(folded)):
            if _DOT_LETTER.search(folded, pos, endpos):
                spans += [
                    m.span()
                    for m in _BARE.finditer(folded, pos, endpos)
                    if m.group("rest") or m.group("tld").lower() not in _FILE_EXTENSIONS
                ]
        spans.sort()
    return [(start, _trimmed_end(folded, start, end)) for start, end in spans]


def _gaps(spans: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """The stretches outside the (sorted, disjoint) spans, as (pos, endpos)."""
    gaps = []
    pos = 0
    for start, end in spans:
        if start > pos:
            gaps.append((pos, start))
        pos = end
    if pos < length:
        gaps.append((pos, length))
    return gaps


def _trimmed_end(folded: str, start: int, end: int) -> int:
    """Drop trailing sentence punctuation and unbalanced closing brackets, as linkify does."""
    excess: dict[str, int] = {}  # closers minus openers still inside; counted once, so linear
    while end > start:
        last = folded[end - 1]
        if last not in _TRIM:
            opener = _CLOSERS.get(last)
            if opener is None:
                break
            if last not in excess:
                excess[last] = folded.count(last, start, end) - folded.count(opener, start, end)
            if excess[last] <= 0:
                break
            excess[last] -= 1
        end -= 1
    return end
