"""Bounded reading and strict parsing of a JSON body that is about to be inspected.

Raises ``InputError`` subclasses only: ``BodyTooLarge`` (413) over the byte limit, before or
after undoing ``Content-Encoding`` (a decompression bomb stops at the cap, never expanding
further); ``InvalidEncoding`` for invalid UTF-8 or an encoding we cannot undo; ``JSONTooDeep``;
``MalformedJSON`` for invalid JSON and for objects with duplicate keys — orjson silently keeps the
last duplicate, while another parser may keep the first, so the proxy and the cart service could
read different values. Integers beyond 64 bits are valid JSON that orjson cannot hold exactly:
such documents are parsed by the stdlib instead, with the same checks. The original bytes are
kept: they are what an allowed message forwards.

The checks cost little for the usual body, compact JSON as browsers, Node.js, Jackson, serde or
orjson write it: when serialising the parsed document gives back the very bytes received, no key
was repeated (the repeat would be missing) and no number was rounded (it would read differently),
and the same serialisation, made inside ``254 - max_depth`` levels of one-item arrays, fails on
orjson's own nesting limit exactly when the document is deeper than ``max_depth``. One
serialisation in C (7 µs for a 100-item cart against 34 µs for walking the document). Any other
body is walked level by level: object keys and strings are counted against one C-level count
of ``"`` in the text (a regular expression only when the text has escapes), and only on a
mismatch does the slow parser run to name the repeated key.
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from itertools import chain, compress, repeat
from operator import is_
from typing import Any, Final, NamedTuple

import orjson
from aiohttp import StreamReader

from proxy.errors import BodyTooLarge, InvalidEncoding, JSONTooDeep, MalformedJSON

__all__ = [
    "Body",
    "decode_content",
    "is_json",
    "parse_body",
    "parse_json",
    "read_body",
    "read_json",
]

# One JSON string (escapes unrolled for speed), then the colon that makes it an object key.
_STRING_THEN_COLON: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"[ \t\r\n]*(:?)')
_SPACE_COLON: Final = re.compile(rb'"[ \t\r\n]+:')
_IS_CONTAINER: Final = frozenset({dict, list}).__contains__
_IS_FLOAT: Final = frozenset({float}).__contains__
_I64: Final = 2.0**63
_INF: Final = float("inf")
_NUMBER_RANGE_ERRORS: Final = ("Integer exceeds 64-bit range", "number is infinity")
_WBITS: Final = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
                 "deflate": zlib.MAX_WBITS}  # fmt: skip


class Body(NamedTuple):
    raw: bytes
    """The bytes as received (still compressed when they came compressed)."""
    doc: Any
    """The parsed document; the caller owns it and may edit it."""
    encoded: bool
    """True when ``raw`` carried a ``Content-Encoding`` that was undone for inspection."""


def is_json(content_type: str | None) -> bool:
    """``application/json`` or any ``+json`` media type (RFC 6839).

    >>> is_json("application/json; charset=utf-8"), is_json("application/problem+json")
    (True, True)
    >>> is_json("text/plain"), is_json(None)
    (False, False)
    """
    if not content_type:
        return False
    mime = content_type.partition(";")[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and
                                           mime.endswith("+json"))


async def read_body(content: StreamReader, *, declared: int | None, limit: int) -> bytes:
    """Read a whole body of at most ``limit`` bytes; ``BodyTooLarge`` as soon as it is over."""
    if declared is not None:
        if declared > limit:
            raise BodyTooLarge(f"the body is {declared} bytes; the limit is {limit} bytes",
                               extensions={"limit": limit})
        return await content.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body exceeds the limit of {limit} bytes",
                               extensions={"limit": limit})
        chunks.append(chunk)
    return b"".join(chunks)


def _inflate(data: bytes, coding: str, limit: int) -> bytes:
    wbits = _WBITS[coding]
    if coding == "deflate" and data[:1] and (data[0] & 0x0F != 8 or
                                             int.from_bytes(data[:2], "big") % 31):
        wbits = -zlib.MAX_WBITS  # raw deflate without the zlib header, as some clients send
    out: list[bytes] = []
    size = 0
    pending = data
    while pending:
        inflater = zlib.decompressobj(wbits)
        try:
            piece = inflater.decompress(pending, limit - size + 1)
        except zlib.error as exc:
            raise InvalidEncoding(f"the body is not valid {coding} data: {exc}") from exc
        size += len(piece)
        if size > limit or inflater.unconsumed_tail:
            raise BodyTooLarge(f"the body expands beyond the limit of {limit} bytes "
                               f"when {coding}-decoded", extensions={"limit": limit})
        if not inflater.eof:
            raise InvalidEncoding(f"the {coding} body is truncated")
        out.append(piece)
        # gzip allows several members one after another (RFC 1952 §2.2)
        pending = inflater.unused_data if wbits == _WBITS["gzip"] else b""
    return b"".join(out)


def decode_content(body: bytes, content_encoding: str | None, *, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip, x-gzip, deflate; applied last-first) within ``limit``."""
    if not content_encoding:
        return body
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding not in _WBITS:
            raise InvalidEncoding(f"Content-Encoding {coding!r} is not supported "
                                  "(gzip, deflate or identity)")
        body = _inflate(body, coding, limit)
    return body


def _too_deep(max_depth: int) -> JSONTooDeep:
    return JSONTooDeep(f"the JSON is nested more than {max_depth} levels deep",
                       extensions={"limit": max_depth})


class _Shape(NamedTuple):
    keys: int
    """Members of every object."""
    strings: int
    """String values (members and array items; keys not included)."""
    rounded: bool
    """A float at or beyond 2**63: perhaps an integer literal orjson could only round."""


def _shape(doc: dict[str, Any] | list[Any], max_depth: int) -> _Shape:
    """Count keys and strings level by level, raising ``JSONTooDeep`` past ``max_depth`` levels.

    Each level is a whole list of containers, gathered once, so the loops over their members
    run in C (``map``, ``chain``, ``compress``, ``list.count``), not in bytecode.
    """
    keys = strings = 0
    rounded = False
    nodes: list[Any] = [doc]
    node_kinds: list[type] = [type(doc)]
    depth = 1
    while True:
        if depth > max_depth:
            raise _too_deep(max_depth)
        dicts = node_kinds.count(dict)
        if dicts == len(nodes):
            keys += sum(map(len, nodes))
            members = list(chain.from_iterable(map(dict.values, nodes)))
        elif not dicts:
            members = list(chain.from_iterable(nodes))
        else:
            keys += sum(map(len, compress(nodes, map(is_, node_kinds, repeat(dict)))))
            members = list(chain.from_iterable(
                [n.values() if type(n) is dict else n for n in nodes]))
        kinds = list(map(type, members))
        present = set(kinds)
        if str in present:
            strings += kinds.count(str)
        if float in present and max(map(abs, compress(members, map(_IS_FLOAT, kinds)))) >= _I64:
            rounded = True
        if dict not in present and list not in present:
            return _Shape(keys, strings, rounded)
        containers = list(map(_IS_CONTAINER, kinds))
        nodes = list(compress(members, containers))
        node_kinds = list(compress(kinds, containers))
        depth += 1


def _keys_written(data: bytes, parsed_keys: int) -> int:
    """How many object keys ``data`` writes (exactly, when it differs from ``parsed_keys``).

    Fast path: without whitespace between a key and its colon, ``data.count(b'":')`` bounds
    the keys written from above, and the parsed keys bound them from below.
    """
    if data.count(b'":') == parsed_keys and not (
        (b'" ' in data or b'"\n' in data or b'"\r' in data or b'"\t' in data)
        and _SPACE_COLON.search(data)
    ):
        return parsed_keys
    return _STRING_THEN_COLON.findall(data).count(b":")


def _duplicates(data: bytes, shape: _Shape) -> bool:
    """Whether ``data`` writes more object keys than the parsed document holds.

    Without a backslash every ``"`` delimits a key or a string value, so the text holds twice
    as many quotes as the document holds keys and strings unless a repeated key dropped one
    (one C-level count, no regular expression). With escapes, keys are counted as written.
    """
    if b"\\" not in data:
        return data.count(b'"') != 2 * (shape.keys + shape.strings)
    return shape.keys != _keys_written(data, shape.keys)


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return result


def _refuse_constant(name: str) -> Any:
    raise MalformedJSON(f"the body is not valid JSON: {name} is not a JSON value")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if value in (_INF, -_INF):
        # RFC 8259 §6 lets an implementation limit the range of numbers it accepts.
        raise MalformedJSON(f"the number {literal[:40]} is beyond the range of a double")
    return value


def _parse_exact(data: bytes) -> Any:
    """The stdlib parser, for what orjson cannot hold exactly: integers beyond 64 bits.

    As strict as orjson otherwise: UTF-8 only, no NaN or Infinity, no lone surrogates; a
    repeated key raises ``MalformedJSON`` here directly.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as bad:
        raise InvalidEncoding(f"the body is not valid UTF-8 (byte offset {bad.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_refuse_duplicates,
                         parse_constant=_refuse_constant, parse_float=_finite_float)
        # A lone surrogate escape (\ud800) is text Python holds but UTF-8 cannot.
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except _DuplicateKeyError as dup:
        raise _duplicate(dup.key) from None
    except RecursionError:
        raise MalformedJSON("the body is not valid JSON: nested too deeply to parse") from None
    except (ValueError, UnicodeEncodeError) as exc:  # JSONDecodeError, int digits limit
        raise MalformedJSON(f"the body is not valid JSON: {exc}") from exc
    return doc


def _duplicate(key: str) -> MalformedJSON:
    return MalformedJSON(f"the JSON repeats the key {key!r} in one object; duplicate keys are "
                         "refused because parsers disagree on them",
                         extensions={"duplicate_key": key})


_ORJSON_3_DEPTH: Final = 254
_SLOT: Final = object()
"""What ``orjson.dumps`` cannot serialise, so it asks the ``default`` hook, which answers the
document: the wrappers are then shared, never filled in."""


@functools.cache
def _wrapped(levels: int) -> object:
    """``levels`` nested one-item arrays around ``_SLOT``; shared, so never to be changed."""
    wrapped: object = _SLOT
    for _ in range(levels):
        wrapped = [wrapped]
    return wrapped


def _orjson_depth() -> int | None:
    """How many nested containers ``orjson.dumps`` serialises, counting those a ``default``
    hook answers: 254 in orjson 3, checked here once. None when orjson does not behave so; the
    fast path below is then never taken."""
    below_limit = _wrapped(_ORJSON_3_DEPTH - 1)
    try:
        orjson.dumps(below_limit, default=lambda _: [])
    except orjson.JSONEncodeError:
        return None
    try:
        orjson.dumps(below_limit, default=lambda _: [[]])
    except orjson.JSONEncodeError:
        return _ORJSON_3_DEPTH
    return None


_ORJSON_DEPTH: Final = _orjson_depth()


def _canonical_and_shallow(doc: dict[str, Any] | list[Any], data: bytes, max_depth: int) -> bool:
    """Whether ``data`` is exactly orjson's compact form of ``doc`` (so nothing was repeated or
    rounded) and ``doc`` is at most ``max_depth`` containers deep.

    ``doc`` is serialised ``levels`` arrays deep, where ``levels`` leaves ``max_depth`` of
    orjson's nesting limit: past that, orjson refuses, and the exact walk says how deep.
    """
    if _ORJSON_DEPTH is None or max_depth >= _ORJSON_DEPTH:
        return False
    levels = _ORJSON_DEPTH - max_depth
    try:
        written = orjson.dumps(_wrapped(levels), default=lambda _: doc)
    except orjson.JSONEncodeError:
        return False
    return len(written) == len(data) + 2 * levels and written.startswith(data, levels)


def parse_json(data: bytes, *, max_depth: int) -> Any:
    """Parse UTF-8 JSON strictly: no invalid UTF-8, no depth past ``max_depth``, no duplicates.

    Integers beyond 64 bits are valid JSON: orjson rejects some (older releases:
    ``Integer exceeds 64-bit range``; newer ones: ``number is infinity`` past the double range)
    and rounds others to a float, so such documents are parsed again, exactly, by the stdlib.
    """
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        message = str(exc)
        if any(reason in message for reason in _NUMBER_RANGE_ERRORS):
            doc = _parse_exact(data)
            if type(doc) is dict or type(doc) is list:
                _shape(doc, max_depth)
            return doc
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise InvalidEncoding(f"the body is not valid UTF-8 (byte offset {bad.start})") \
                from exc
        if "recursion" in message or "depth" in message:
            raise _too_deep(max_depth) from exc
        raise MalformedJSON(f"the body is not valid JSON: {exc}") from exc
    kind = type(doc)
    if kind is not dict and kind is not list:
        return _parse_exact(data) if kind is float and abs(doc) >= _I64 else doc
    if _canonical_and_shallow(doc, data, max_depth):
        return doc
    shape = _shape(doc, max_depth)
    if _duplicates(data, shape):
        try:
            json.loads(data, object_pairs_hook=_refuse_duplicates)
        except _DuplicateKeyError as dup:
            raise _duplicate(dup.key) from None
    if shape.rounded:
        doc = _parse_exact(data)
    return doc


async def read_json(
    content: StreamReader,
    *,
    length: int | None,
    encoding: str | None,
    max_body_bytes: int,
    max_decoded_bytes: int,
    max_json_depth: int,
) -> Body:
    """Read, decode and parse one message body under the given limits.

    ``length`` is the declared Content-Length (None: read up to the limit), ``encoding`` the
    Content-Encoding still to undo (None when the body arrives decoded).
    """
    raw = await read_body(content, declared=length, limit=max_body_bytes)
    return parse_body(raw, encoding=encoding, max_decoded_bytes=max_decoded_bytes,
                      max_json_depth=max_json_depth)


def parse_body(raw: bytes, *, encoding: str | None, max_decoded_bytes: int,
               max_json_depth: int) -> Body:
    """Undo ``encoding`` (the Content-Encoding, None for none) and parse, under the limits."""
    decoded = decode_content(raw, encoding, limit=max_decoded_bytes)
    return Body(raw, parse_json(decoded, max_depth=max_json_depth), decoded is not raw)
