"""Frozen value types and closed enums shared by the whole decision core.

Nothing here performs I/O or reads a clock; every type is immutable and hashable, so values can be
memoised and shared between tasks. The per-link values are ``NamedTuple``s rather than frozen
dataclasses: the cold path builds several per link, and a frozen dataclass costs twice as much to
construct (each field goes through ``object.__setattr__``).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import NamedTuple, NewType

SurfaceId = NewType("SurfaceId", str)
PlatformId = NewType("PlatformId", str)
RuleId = NewType("RuleId", str)


class Action(enum.StrEnum):
    """What happens to a link; members are declared from the mildest to the strictest."""

    ALLOW = "allow"
    REWRITE = "rewrite"
    STRIP = "strip"
    BLOCK = "block"

    @property
    def rank(self) -> int:
        """Strictness: a higher rank wins when several rules or links disagree."""
        return _ACTION_RANK[self]


_ACTION_RANK = {action: rank for rank, action in enumerate(Action)}


class Mode(enum.StrEnum):
    """How a rule is rolled out: not at all, recorded only, or applied."""

    OFF = "off"
    SHADOW = "shadow"
    ENFORCE = "enforce"


class LinkKind(enum.StrEnum):
    """What a link is, as far as its shape tells."""

    AFFILIATE = "affiliate"
    ITEM = "item"
    SHOP = "shop"
    SHORT_LINK = "short_link"
    DEEP_LINK = "deep_link"
    PASSWORD_TOKEN = "password_token"
    PAGE = "page"


class CandidateKind(enum.StrEnum):
    URL = "url"
    TOKEN = "token"


class Candidate(NamedTuple):
    """A piece of free text that may be a link, found by ``textscan``."""

    kind: CandidateKind
    start: int
    """Offset of the first character in the scanned text."""
    end: int
    """Offset just past the last character (``text[start:end]`` is what was found)."""
    value: str
    """For a URL: the string to parse (full-width forms already folded to ASCII).
    For a token: the token code itself, without its delimiters."""


class Layer(NamedTuple):
    """One URL in a chain of nested URLs; depth 0 is the link as written."""

    href: str
    """The canonical serialisation (WHATWG) of this layer."""
    scheme: str
    """Lower-case scheme without the colon."""
    host: str
    """Canonical ASCII host without a trailing dot; '' when the URL has none."""
    depth: int
    via: str
    """How this layer was reached: 'link', or 'query:<name>', 'query', 'fragment', 'scheme-host'."""


class Evidence(NamedTuple):
    """Why a layer was attributed to a platform: enough to explain a decision to a seller."""

    depth: int
    host: str
    reason: str
    """e.g. 'registered domain tmall.com', 'app scheme taobao', 'token near 淘宝'."""


class LayerMatch(NamedTuple):
    platform: PlatformId
    kind: LinkKind
    evidence: Evidence


class Link(NamedTuple):
    """A link found in an input, with every platform it leads to (outermost layer first)."""

    text: str
    """The link exactly as written in the input."""
    start: int
    end: int
    url: str | None
    """Canonical URL of the outer layer; None for a password token."""
    host: str | None
    matches: tuple[LayerMatch, ...]
    """One entry per layer that belongs to a known platform; empty for an unknown site."""

    @property
    def platform(self) -> PlatformId | None:
        return self.matches[0].platform if self.matches else None

    @property
    def kind(self) -> LinkKind:
        return self.matches[0].kind if self.matches else LinkKind.PAGE


class LinkVerdict(NamedTuple):
    link: Link
    action: Action
    platform: PlatformId | None
    """The platform whose rule decided (or the link's own platform when nothing applies)."""
    kind: LinkKind
    rule: RuleId | None
    target: str | None = None
    """For ``rewrite``: the replacement URL, its template already filled in."""


class LinkCount(NamedTuple):
    """How many of a decision's links share a host, platform, kind and action."""

    host: str | None
    platform: PlatformId | None
    kind: LinkKind
    action: Action
    links: int


Tally = tuple[LinkCount, ...]
"""A decision's verdicts counted by host, platform, kind and action (``Decision.tally``)."""


class PendingRule(NamedTuple):
    """A rule that would apply to a link here but is not in force yet."""

    rule: RuleId
    platform: PlatformId
    surface: SurfaceId
    action: Action
    effective_from: datetime


class Decision(NamedTuple):
    """The verdict for one input on one surface at one instant; the strictest link wins."""

    action: Action
    platform: PlatformId | None
    rule: RuleId | None
    verdicts: tuple[LinkVerdict, ...]
    pending: tuple[PendingRule, ...]
    tally: Tally
    """The verdicts counted by host, platform, kind and action, in the order first met. Equal
    tallies are one shared object (while the rule book's bound allows), so the decisions of a
    whole message are summed by comparing tallies by identity, in C, without a look at each
    link (``Inspector.inspect``)."""

    @property
    def offending(self) -> tuple[LinkVerdict, ...]:
        """The verdicts that are not a plain allow."""
        return tuple(v for v in self.verdicts if v.action is not Action.ALLOW)


class Direction(enum.StrEnum):
    """Whether links are published (a client's write) or shown (a cart service's response)."""

    REQUEST = "request"
    RESPONSE = "response"


class StripMode(enum.StrEnum):
    """What ``strip`` removes: the innermost array element holding the link, or the field itself."""

    ELEMENT = "element"
    FIELD = "field"
