"""The compiled route table: ``(method, path) -> RouteMatch`` for the policy's routes.

Pure: templates are compiled once into per-segment tuples, grouped by method and segment count,
so a lookup is a dict access plus a short comparison loop; no regular expression runs per request.
A ``{name}`` segment matches exactly one non-empty path segment; everything else is literal.

>>> from proxy.core.policy import RouteSpec, SellerSource
>>> from proxy.core.model import Direction, StripMode, SurfaceId
>>> spec = RouteSpec("add", "POST", "/v1/live/{room_id}/cart/items", SurfaceId("live"),
...                  Direction.REQUEST, ("/items/*/url",), StripMode.ELEMENT, SellerSource())
>>> table = RouteTable((spec,))
>>> table.match("POST", "/v1/live/r1/cart/items").params
{'room_id': 'r1'}
>>> table.match("GET", "/v1/live/r1/cart/items") is None
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from proxy.core.policy import RouteSpec

__all__ = ["RouteMatch", "RouteTable"]

_SEEN_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: RouteSpec
    params: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Compiled:
    route: RouteSpec
    segments: tuple[str | None, ...]
    """Literal segments, or None where the template has a ``{name}`` placeholder."""
    names: tuple[str, ...]


def _compile(route: RouteSpec) -> _Compiled:
    segments: list[str | None] = []
    names: list[str] = []
    for part in route.path.split("/")[1:]:
        if len(part) > 2 and part[0] == "{" and part[-1] == "}":
            segments.append(None)
            names.append(part[1:-1])
        else:
            segments.append(part)
    return _Compiled(route, tuple(segments), tuple(names))


class RouteTable:
    """Routes indexed by ``(METHOD, number of segments)``; the first declared route wins."""

    __slots__ = ("_index", "_seen")

    def __init__(self, routes: Iterable[RouteSpec]) -> None:
        index: dict[tuple[str, int], list[_Compiled]] = {}
        for route in routes:
            compiled = _compile(route)
            index.setdefault((route.method.upper(), len(compiled.segments)), []).append(compiled)
        self._index: dict[tuple[str, int], tuple[_Compiled, ...]] = {
            key: tuple(value) for key, value in index.items()
        }
        self._seen: dict[tuple[str, str], RouteMatch | None] = {}

    def match(self, method: str, path: str) -> RouteMatch | None:
        """The route for ``method`` and the (already percent-decoded) ``path``, or None.

        Answers are memoised per ``(method, path)`` (clients re-post the same carts and poll the
        same pages); paths come from clients, so the memo is emptied when it reaches
        ``_SEEN_MAX`` entries. A returned match is shared: its ``params`` must not be changed.
        """
        key = (method, path)
        seen = self._seen
        if key in seen:
            return seen[key]
        found = self._match(method, path)
        if len(seen) >= _SEEN_MAX:
            seen.clear()
        seen[key] = found
        return found

    def _match(self, method: str, path: str) -> RouteMatch | None:
        parts = path.split("/")[1:]
        candidates = self._index.get((method.upper(), len(parts)))
        if not candidates:
            return None
        for compiled in candidates:
            values: list[str] = []
            for literal, part in zip(compiled.segments, parts, strict=True):
                if literal is None:
                    if not part:
                        break
                    values.append(part)
                elif literal != part:
                    break
            else:
                return RouteMatch(compiled.route, dict(zip(compiled.names, values, strict=True)))
        return None
