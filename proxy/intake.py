"""Bounded reading and strict parsing of a JSON body that is about to be inspected.

Raises ``InputError`` subclasses only: ``BodyTooLarge`` (413) over the byte limit, before or
after undoing ``Content-Encoding`` (a decompression bomb stops at the cap, never expanding
further); ``InvalidEncoding`` for invalid UTF-8 or an encoding we cannot undo; ``JSONTooDeep``;
``MalformedJSON`` for invalid JSON and for objects with duplicate keys — orjson silently keeps the
last duplicate, while another parser may keep the first, so the proxy and the cart service could
read different values. Duplicate detection costs one regex pass: the number of keys written in
the text is compared with the number the parsed document holds, and only on a mismatch does the
slow parser run to name the key. The original bytes are kept: they are what an allowed message
forwards.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import StreamReader

from proxy.errors import BodyTooLarge, InvalidEncoding, JSONTooDeep, MalformedJSON

__all__ = [
    "Body",
    "content_length",
    "decode_content",
    "is_json",
    "parse_json",
    "read_body",
    "read_json",
]

# One JSON string (escapes unrolled for speed), then the colon that makes it an object key.
_STRING_THEN_COLON: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"[ \t\r\n]*(:?)')
_SPACE_COLON: Final = re.compile(rb'"[ \t\r\n]+:')
_WBITS: Final = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
                 "deflate": zlib.MAX_WBITS}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Body:
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


def _shape(doc: dict[str, Any] | list[Any], max_depth: int) -> int:
    """Count the keys of every object, raising ``JSONTooDeep`` past ``max_depth`` levels."""
    keys = 0
    level: list[Any] = [doc]
    depth = 1
    while level:
        if depth > max_depth:
            raise _too_deep(max_depth)
        below: list[Any] = []
        for node in level:
            if type(node) is dict:
                keys += len(node)
                node = node.values()
            for child in node:
                kind = type(child)
                if kind is dict or kind is list:
                    below.append(child)
        level = below
        depth += 1
    return keys


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


def parse_json(data: bytes, *, max_depth: int) -> Any:
    """Parse UTF-8 JSON strictly: no invalid UTF-8, no depth past ``max_depth``, no duplicates."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise InvalidEncoding(f"the body is not valid UTF-8 (byte offset {bad.start})") \
                from exc
        if "recursion" in str(exc) or "depth" in str(exc):
            raise _too_deep(max_depth) from exc
        raise MalformedJSON(f"the body is not valid JSON: {exc}") from exc
    if type(doc) is not dict and type(doc) is not list:
        return doc
    parsed_keys = _shape(doc, max_depth)
    if parsed_keys != _keys_written(data, parsed_keys):
        try:
            json.loads(data, object_pairs_hook=_refuse_duplicates)
        except _DuplicateKeyError as dup:
            raise MalformedJSON(f"the JSON repeats the key {dup.key!r} in one object; "
                                "duplicate keys are refused because parsers disagree on them",
                                extensions={"duplicate_key": dup.key}) from None
    return doc


def content_length(headers: Mapping[str, str]) -> int | None:
    length = headers.get("Content-Length")
    return int(length) if length is not None and length.isdigit() else None


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
    decoded = decode_content(raw, encoding, limit=max_decoded_bytes)
    return Body(raw, parse_json(decoded, max_depth=max_json_depth), decoded is not raw)
