"""Where links live in a JSON document, and the edits that strip or rewrite them.

Pure. A route's link locations are JSON-pointer-like paths (RFC 6901 syntax, ``~0``/``~1``
escapes) where a ``*`` token matches any array index or object key, and ``**`` alone means every
string in the document. A path that lands on an array or object selects every string beneath it.
Object keys are never scanned: they cannot be stripped or rewritten without changing the schema.

Locations carry their concrete path (keys and indices); ``pointer(path)`` renders it as an RFC 6901
pointer only when a finding needs one. ``select_texts`` is the hot path's twin of ``select``: the
same strings (give or take empty ones, which hold no link), in no particular order and without
their paths, found level by level over whole lists of nodes with C-level ``map``/``filter`` loops;
a message in which no link is acted on never needs a path. Edits work on the parsed document in
place: the caller owns it (it was parsed for this message alone).

>>> doc = {"items": [{"url": "a"}, {"url": "b", "title": "t"}]}
>>> [(pointer(loc.path), loc.text) for loc in select(doc, compile_paths(["/items/*/url"]))]
[('/items/0/url', 'a'), ('/items/1/url', 'b')]
>>> sorted(select_texts(doc, compile_paths(["/items/*/url", "/items/1/title"])))
['a', 'b', 't']
>>> apply_edits(doc, removals=[removal_path(("items", 0, "url"), StripMode.ELEMENT)])
{'items': [{'url': 'b', 'title': 't'}]}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from operator import itemgetter
from typing import Any, Final, NamedTuple

from proxy.core.model import StripMode

__all__ = [
    "LinkPaths",
    "Location",
    "Replacement",
    "apply_edits",
    "compile_paths",
    "pointer",
    "removal_path",
    "resolve_pointer",
    "select",
    "select_texts",
]

Step = str | int
Path = tuple[Step, ...]
WILDCARD = "*"
EVERYTHING = "**"


class Location(NamedTuple):
    path: Path
    text: str


class Replacement(NamedTuple):
    """Replace ``text[start:end]`` of the string at ``path`` with ``value``."""

    path: Path
    start: int
    end: int
    value: str


@dataclass(frozen=True, slots=True)
class _Trie:
    """Link paths sharing prefixes, walked once: ``/items/*/url`` and ``/items/*/title`` visit
    each item once. ``leaf``: a path ends here (select every string at or below)."""

    children: tuple[tuple[str, _Trie], ...]
    leaf: bool


_Walker = Callable[[list[Any], list[str]], None]
"""Appends to the list every string the compiled paths select below the given nodes."""


def _nothing(nodes: list[Any], out: list[str]) -> None:
    return None


@dataclass(frozen=True, slots=True)
class LinkPaths:
    """Compiled link locations of one route."""

    patterns: tuple[tuple[str, ...], ...]
    everything: bool
    trie: _Trie = _Trie((), False)
    overlapping: bool = False
    """Some string may be reached by two paths (then results are deduplicated)."""
    texts: _Walker = field(default=_nothing, compare=False, repr=False)
    """The paths compiled into nested closures, for ``select_texts``."""


def _build_trie(patterns: Sequence[tuple[str, ...]]) -> _Trie:
    leaf = any(not p for p in patterns)
    heads: dict[str, list[tuple[str, ...]]] = {}
    for pattern in patterns:
        if pattern:
            heads.setdefault(pattern[0], []).append(pattern[1:])
    # '*' first, then literals, so a literal also matched by '*' is found (and deduplicated).
    order = sorted(heads, key=lambda token: token != WILDCARD)
    return _Trie(tuple((token, _build_trie(heads[token])) for token in order), leaf)


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def compile_paths(links: Iterable[str]) -> LinkPaths:
    """Compile a route's ``links`` list (validated by the policy parser) once, at startup."""
    patterns: list[tuple[str, ...]] = []
    everything = False
    for link in links:
        if link == EVERYTHING:
            everything = True
        elif link == "/":
            patterns.append(("",))
        else:
            patterns.append(tuple(_unescape(t) for t in link.split("/")[1:]))
    kept = () if everything else tuple(patterns)
    trie = _build_trie(kept)
    overlapping = _overlaps(trie)
    if everything:
        texts: _Walker = _strings_in
    elif overlapping or not (trie.children or trie.leaf):
        texts = _nothing  # select_texts goes through select, which deduplicates by path
    else:
        texts = _compile_texts(trie)
    return LinkPaths(kept, everything, trie, overlapping, texts)


def _overlaps(trie: _Trie) -> bool:
    tokens = [token for token, _ in trie.children]
    if (trie.leaf and tokens) or (WILDCARD in tokens and len(tokens) > 1):
        return True
    return any(_overlaps(child) for _, child in trie.children)


def pointer(path: Path) -> str:
    """The RFC 6901 pointer of a concrete path.

    >>> pointer(("a/b", 0, "m~n"))
    '/a~1b/0/m~0n'
    """
    return "".join("/" + str(s).replace("~", "~0").replace("/", "~1") for s in path)


def resolve_pointer(doc: object, ptr: str) -> object | None:
    """The value at an RFC 6901 pointer, or None when there is none.

    >>> resolve_pointer({"a": [1, {"b": 2}]}, "/a/1/b")
    2
    """
    node: object = doc
    if not ptr:
        return node
    for raw in ptr.split("/")[1:]:
        token = _unescape(raw)
        if isinstance(node, dict):
            if token not in node:
                return None
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    return node


def _strings_under(node: object, path: Path, out: list[Location]) -> None:
    stack: list[tuple[object, Path]] = [(node, path)]
    while stack:
        value, at = stack.pop()
        if isinstance(value, str):
            out.append(Location(at, value))
        elif isinstance(value, dict):
            # reversed so that the stack yields document order
            stack.extend((v, (*at, k)) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((v, (*at, i)) for i, v in reversed(list(enumerate(value))))


def select(doc: object, paths: LinkPaths) -> list[Location]:
    """Every string a route's link paths select, each once."""
    out: list[Location] = []
    if paths.everything:
        _strings_under(doc, (), out)
    elif paths.trie.children or paths.trie.leaf:
        _walk(doc, (), paths.trie, out)
        if paths.overlapping:
            unique: dict[Path, Location] = {}
            for loc in out:
                unique.setdefault(loc.path, loc)
            out = list(unique.values())
    return out


def _walk(node: object, at: Path, trie: _Trie, out: list[Location]) -> None:
    if trie.leaf:
        if isinstance(node, str):
            out.append(Location(at, node))
        elif isinstance(node, dict | list):
            _strings_under(node, at, out)
        return
    if isinstance(node, dict):
        for token, child in trie.children:
            if token == WILDCARD:
                for key, value in node.items():
                    _walk(value, (*at, key), child, out)
            elif token in node:
                _walk(node[token], (*at, token), child, out)
    elif isinstance(node, list):
        for token, child in trie.children:
            if token == WILDCARD:
                for index, value in enumerate(node):
                    _walk(value, (*at, index), child, out)
            elif token.isdigit() and int(token) < len(node):
                _walk(node[int(token)], (*at, int(token)), child, out)


def select_texts(doc: object, paths: LinkPaths) -> list[str]:
    """The strings ``select`` finds, without paths and in no set order; empty ones may be left
    out. One per selected location, so a string written twice counts twice.

    ``doc`` must be as a JSON parser builds it: exactly ``dict``, ``list`` and ``str`` (and
    numbers, booleans, None). The walk compares types by identity, in C; a subclass such as
    ``OrderedDict`` is not looked into."""
    if paths.overlapping:
        return [loc.text for loc in select(doc, paths)]
    out: list[str] = []
    paths.texts([doc], out)
    return out


_CONTAINER: Final = frozenset({dict, list}).__contains__
_IS_STR: Final = frozenset({str}).__contains__


def _strings_in(nodes: list[Any], out: list[str]) -> None:
    """Every string among ``nodes`` or anywhere below them, a whole level at a time."""
    try:
        # The usual level is strings only (every item's url): str.join checks them all in
        # one C-level pass, a third of the cost of listing and counting their types.
        "".join(nodes)
    except TypeError:
        pass
    else:
        out.extend(nodes)
        return
    while nodes:
        kinds = list(map(type, nodes))
        if kinds.count(str) == len(kinds):
            out.extend(nodes)
            return
        out.extend(compress(nodes, map(_IS_STR, kinds)))
        containers = list(compress(nodes, map(_CONTAINER, kinds)))
        nodes = list(chain.from_iterable(
            [c.values() if type(c) is dict else c for c in containers]
        ))


def _wildcard(nodes: list[Any]) -> list[Any]:
    """Every member of every array and object among ``nodes`` (the array itself when it is
    the only node: the walkers only read what they are given)."""
    if len(nodes) == 1 and type(nodes[0]) is list:
        return nodes[0]
    return list(chain.from_iterable(
        [n.values() if type(n) is dict else n for n in nodes if type(n) is dict or type(n) is list]
    ))


def _members(nodes: list[Any], token: str, index: int | None, member: Callable[[Any], Any]
             ) -> list[Any]:
    """Member ``token`` of each object among ``nodes`` (and, for a digit token, item ``index``
    of each array); ``member`` is ``itemgetter(token)``.

    Empty values (a missing member, null, "") may be left out or kept: they hold no string,
    and the walkers below skip them.
    """
    try:
        # The usual array of items, every one holding the member: one C-level loop.
        return list(map(member, nodes))
    except (KeyError, TypeError):
        pass
    try:
        # Objects only, some without the member (dict.get refuses anything else).
        return list(filter(None, map(dict.get, nodes, repeat(token, len(nodes)))))
    except TypeError:
        pass
    found: list[Any] = []
    for node in nodes:
        kind = type(node)
        if kind is dict:
            value = node.get(token)
            if value:
                found.append(value)
        elif kind is list and index is not None and index < len(node):
            found.append(node[index])
    return found


def _compile_texts(trie: _Trie) -> _Walker:
    if trie.leaf:
        return _strings_in
    wildcard: _Walker | None = None
    members: list[tuple[str, int | None, Callable[[Any], Any], _Walker]] = []
    for token, child in trie.children:
        below = _compile_texts(child)
        if token == WILDCARD:
            wildcard = below
        else:
            members.append((token, int(token) if token.isascii() and token.isdigit() else None,
                            itemgetter(token), below))
    steps = tuple(members)

    def walk(nodes: list[Any], out: list[str]) -> None:
        if wildcard is not None and (found := _wildcard(nodes)):
            wildcard(found, out)
        for token, index, member, below in steps:
            if found := _members(nodes, token, index, member):
                below(found, out)

    return walk


def removal_path(path: Path, mode: StripMode) -> Path:
    """What ``strip`` removes for a link at ``path``.

    ``element``: the innermost array element holding it (the field itself when no array does);
    ``field``: the field (or array element) holding the string.

    >>> removal_path(("items", 3, "url"), StripMode.ELEMENT)
    ('items', 3)
    >>> removal_path(("items", 3, "url"), StripMode.FIELD)
    ('items', 3, 'url')
    """
    if mode is StripMode.ELEMENT:
        for i in range(len(path) - 1, -1, -1):
            if isinstance(path[i], int):
                return path[: i + 1]
    return path


def _parent(doc: Any, path: Path) -> Any:
    node = doc
    for step in path[:-1]:
        node = node[step]
    return node


def apply_edits(
    doc: Any,
    *,
    replacements: Iterable[Replacement] = (),
    removals: Iterable[Path] = (),
) -> Any:
    """Apply rewrites, then removals, to ``doc`` in place and return it.

    Replacements in one string may not overlap; removals may nest (the outer one wins). Removing
    the document itself is refused with ``ValueError``.
    """
    by_path: dict[Path, list[Replacement]] = {}
    for rep in replacements:
        by_path.setdefault(rep.path, []).append(rep)
    for path, reps in by_path.items():
        if not path:
            text = doc
        else:
            parent = _parent(doc, path)
            text = parent[path[-1]]
        for rep in sorted(reps, key=lambda r: r.start, reverse=True):
            text = text[: rep.start] + rep.value + text[rep.end :]
        if not path:
            doc = text
        else:
            parent[path[-1]] = text
    unique = set(removals)
    if () in unique:
        raise ValueError("cannot remove the whole document")
    # Deepest first, then higher indices first, so earlier deletions never shift later ones.
    ordered: Sequence[Path] = sorted(
        unique, key=lambda p: (-len(p), -p[-1] if isinstance(p[-1], int) else 0)
    )
    for path in ordered:
        if any(path[:n] in unique for n in range(1, len(path))):
            continue
        del _parent(doc, path)[path[-1]]
    return doc
