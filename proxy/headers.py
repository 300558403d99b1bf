"""Pure header work: hop-by-hop removal, forwarding headers, request ids, policy report headers.

No I/O. Hop-by-hop fields are those of RFC 9110 §7.6.1 (``Connection`` and every field it names,
``Proxy-Connection``, ``Keep-Alive``, ``TE``, ``Transfer-Encoding``, ``Upgrade``) plus the
proxy-auth pair of RFC 9110 §11.7. ``Host`` is replaced by the upstream's and recorded in
``X-Forwarded-Host``. Report headers name JSON pointers in their URI-fragment encoding (RFC 6901
§6) so that every value stays ASCII.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache
from typing import Final
from urllib.parse import quote

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core.model import PendingRule

__all__ = [
    "BODY_DIGESTS",
    "EDITED_ANSWER",
    "EDITED_BODY",
    "HOP_BY_HOP",
    "PARTIAL_OR_CACHED",
    "PENDING",
    "REQUEST_ID",
    "REWRITTEN",
    "SHADOW",
    "STRIPPED",
    "content_length",
    "downstream_fields",
    "pending_headers",
    "pointer_list",
    "request_id",
    "upstream_fields",
]

HOP_BY_HOP: Final = frozenset({
    "connection", "proxy-connection", "keep-alive", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization",
})  # fmt: skip
BODY_DIGESTS: Final = ("Content-MD5", "Digest", "Content-Digest", "Repr-Digest")
"""Fields computed over a body's exact bytes: wrong once the proxy edits the body."""
EDITED_BODY: Final = ("Content-Encoding", *BODY_DIGESTS)
"""Fields of a message whose body the proxy edited (and sends identity-encoded) that describe
the original bytes, so they go."""
EDITED_ANSWER: Final = (*EDITED_BODY, "ETag")
"""The same for an answer: an edited answer is a new representation, so its validator goes too."""
PARTIAL_OR_CACHED: Final = ("Range", "If-Range", "If-None-Match", "If-Modified-Since")
"""Request fields that ask for a part of a document, or for none if the client's copy is
current. A routed read drops them: a part cannot be inspected, and a 304 would let a client
keep a copy cached before the cutoff."""
REQUEST_ID: Final = "X-Request-Id"
PENDING: Final = "Link-Policy-Pending"
SHADOW: Final = "Link-Policy-Shadow"
STRIPPED: Final = "Link-Policy-Stripped"
REWRITTEN: Final = "Link-Policy-Rewritten"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
_UPSTREAM_SKIP: Final = HOP_BY_HOP | {"host", "x-request-id"}
# The proxy answers with its own X-Request-Id: a cart service's would make two.
_DOWNSTREAM_SKIP: Final = HOP_BY_HOP | {"x-request-id"}
_XFF: Final = "X-Forwarded-For"
_XFP: Final = "X-Forwarded-Proto"
_XFH: Final = "X-Forwarded-Host"

Headers = CIMultiDictProxy[str] | CIMultiDict[str]


def _hop_by_hop(headers: Headers) -> frozenset[str]:
    if "Connection" not in headers:
        return HOP_BY_HOP
    named = (
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
    )
    return HOP_BY_HOP | frozenset(t for t in named if t)


class _RequestIds:
    """32 hex digits: 64 random bits drawn once per process, then a 64-bit counter.

    Unique across processes and restarts (the random half) without a ``getrandom`` system call
    per request, which under load showed as 3.5% of the proxy's samples (py-spy).
    """

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)  # a forked worker must not repeat ids

    def _reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._next = itertools.count().__next__

    def __call__(self) -> str:
        return f"{self._prefix}{self._next():016x}"


_new_id: Final = _RequestIds()


@lru_cache(maxsize=64)
def _skip(base: frozenset[str], drop: tuple[str, ...]) -> frozenset[str]:
    return base | {d.lower() for d in drop}


def _skip_for(base: frozenset[str], headers: Headers, drop: Iterable[str]) -> frozenset[str]:
    """Lower-case names not to pass on: ``base``, ``drop`` and what ``Connection`` names."""
    # Callers pass constant tuples, so the union is built once per call site.
    skip = _skip(base, drop) if isinstance(drop, tuple) else base | {d.lower() for d in drop}
    return skip if "Connection" not in headers else skip | _hop_by_hop(headers)


def request_id(headers: Headers, new_id: Callable[[], str] = _new_id) -> str:
    """The client's ``X-Request-Id`` when it is a sane token, else a fresh one.

    >>> request_id(CIMultiDict({"X-Request-Id": "abc-1"}))
    'abc-1'
    >>> request_id(CIMultiDict({"X-Request-Id": "bad id\\n"}), lambda: "new")
    'new'
    """
    given = headers.get(REQUEST_ID)
    if given is not None and _VALID_ID.match(given):
        return given
    return new_id()


def upstream_fields(
    headers: Headers,
    *,
    peer: str | None,
    scheme: str,
    host: str | None,
    request_id: str,
    drop: Iterable[str] = (),
) -> list[tuple[str, str]]:
    """Headers to send upstream, as the field list the client takes without another copy:
    end-to-end fields only, forwarding fields appended (merged into one field each).

    >>> out = upstream_fields(CIMultiDict({"Connection": "close, X-Secret", "X-Secret": "1",
    ...     "Host": "a", "X-Forwarded-For": "10.0.0.1", "Accept": "*/*"}),
    ...     peer="10.0.0.2", scheme="http", host="a", request_id="r1")
    >>> sorted(out)  # doctest: +NORMALIZE_WHITESPACE
    [('Accept', '*/*'), ('X-Forwarded-For', '10.0.0.1, 10.0.0.2'), ('X-Forwarded-Host', 'a'),
     ('X-Forwarded-Proto', 'http'), ('X-Request-Id', 'r1')]
    """
    skip = _skip_for(_UPSTREAM_SKIP, headers, drop)
    out = [field for field in headers.items() if field[0].lower() not in skip]
    for name, added in ((_XFF, peer), (_XFP, scheme), (_XFH, host)):
        if not added:
            continue
        if name in headers:  # rare: another proxy stands in front of this one
            lowered = name.lower()
            prior = [value for field, value in out if field.lower() == lowered]
            out = [item for item in out if item[0].lower() != lowered]
            out.append((name, ", ".join([*prior, added])))
        else:
            out.append((name, added))
    out.append((REQUEST_ID, request_id))
    return out


def content_length(headers: Mapping[str, str]) -> int | None:
    """The declared ``Content-Length``, or None when there is none or it is not a number.

    >>> content_length({"Content-Length": "12"}), content_length({"Content-Length": "-1"})
    (12, None)
    """
    length = headers.get("Content-Length")
    return int(length) if length is not None and length.isdigit() else None


def downstream_fields(headers: Headers, *, drop: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Fields of an upstream response to pass to the client: end-to-end fields only, and not
    its ``X-Request-Id`` (the proxy sends its own)."""
    skip = _skip_for(_DOWNSTREAM_SKIP, headers, drop)
    return [field for field in headers.items() if field[0].lower() not in skip]


def pointer_list(pointers: Iterable[str]) -> str:
    """Pointers in URI-fragment form, space separated (``#/items/0 #/items/3``)."""
    return " ".join("#" + quote(p, safe="/~-._!$&'()*+;=:@") for p in pointers)


def _imf(when: datetime) -> str:
    return format_datetime(when.astimezone(UTC), usegmt=True)


def pending_headers(pending: Iterable[PendingRule]) -> list[tuple[str, str]]:
    """``Link-Policy-Pending`` per rule, plus ``Deprecation`` (RFC 9745) and ``Sunset``
    (RFC 8594) at the earliest pending instant: publishing these links stops working then.

    >>> from datetime import timezone, timedelta
    >>> from proxy.core.model import Action
    >>> rule = PendingRule("r1", "taobao", "live", Action.BLOCK,
    ...                    datetime(2022, 3, 1, tzinfo=timezone(timedelta(hours=8))))
    >>> pending_headers([rule])  # doctest: +NORMALIZE_WHITESPACE
    [('Link-Policy-Pending', 'rule=r1; platform=taobao; surface=live; action=block;
      effective=2022-03-01T00:00:00+08:00'),
     ('Deprecation', '@1646064000'), ('Sunset', 'Mon, 28 Feb 2022 16:00:00 GMT')]
    """
    rules = sorted(set(pending), key=lambda p: (p.effective_from, p.rule))
    if not rules:
        return []
    out = [
        (PENDING, f"rule={p.rule}; platform={p.platform}; surface={p.surface}; "
                  f"action={p.action}; effective={p.effective_from.isoformat()}")
        for p in rules
    ]
    first = rules[0].effective_from
    out.append(("Deprecation", f"@{int(first.timestamp())}"))
    out.append(("Sunset", _imf(first)))
    return out

