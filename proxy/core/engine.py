"""``Engine``: text scanning -> URL parsing -> classification -> decision, memoised.

The single entry point used by the CLI, the proxy and the middleware. Memoisation is bounded:
links per input text, and decisions per (surface, direction, epoch) and text, where the epoch is
how many rule start instants have passed — a decision cannot change inside one, so ``at`` itself
need not be part of the key. Hosts are memoised again inside ``DomainIndex``.

Decisions live in one ordered dict per (surface, direction, epoch), keyed by the text alone, so a
message's texts are looked up by one ``map`` over the dict in C (a third of the cost of a
four-argument ``lru_cache`` call per text, measured). Together the dicts hold at most
``memo_size`` decisions: past the bound, the oldest entry of the fullest dict goes (first in,
first out: the hot set is re-inserted as soon as it is asked for again), so busy surfaces share
the bound and a past epoch's dict drains first once the clock has moved on.

Beside each dict of decisions, a dict of their tallies (``Decision.tally``) by the same texts:
``tallies_many`` answers a message whose links are all allowed from it, without touching the
decisions themselves (a third less time than reading the tally off each decision, measured).
Its entries go with their decisions, so the bound holds for both.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Final

from proxy.core.classify import Classifier
from proxy.core.decide import RuleBook, decide, decide_checked
from proxy.core.domains import DomainIndex
from proxy.core.model import Decision, Direction, Link, SurfaceId, Tally
from proxy.core.policy import Policy
from proxy.core.textscan import TextScanner
from proxy.core.urls import URLParser

__all__ = ["DEFAULT_MEMO_SIZE", "Engine"]

_TableKey = tuple[SurfaceId, bool, int]

DEFAULT_MEMO_SIZE = 16384
"""Decisions memoised per engine. Each entry keeps about five small objects alive (the matches
are shared between links), and every full garbage collection walks them all (measured here:
45 ms with 65,536 entries, a latency spike whenever unique traffic turns the memo over), so the
memo holds the hot set, not history."""


class Engine:
    """The decision engine for one policy; build once at startup and share."""

    def __init__(
        self, policy: Policy, domains: DomainIndex, *, memo_size: int = DEFAULT_MEMO_SIZE
    ) -> None:
        self.policy = policy
        self.rulebook = RuleBook(policy.rules)
        self._scanner = TextScanner(
            token_min_length=policy.token_min_length, token_max_length=policy.token_max_length
        )
        self._domains = domains
        self._classifier = Classifier(
            policy,
            domains,
            URLParser(unwrap_depth=policy.unwrap_depth, redirect_params=policy.redirect_params),
        )
        self.links: Callable[[str], tuple[Link, ...]] = lru_cache(maxsize=memo_size)(
            self._find_links
        )
        self._memo_size = max(memo_size, 1)
        self._tables: dict[_TableKey, _Decisions] = {}
        self._memoised = 0

    def _find_links(self, text: str) -> tuple[Link, ...]:
        """Every link in ``text`` a browser or app could follow, in order."""
        found = []
        link_for = self._classifier.link
        for candidate in self._scanner.find(text):
            link = link_for(candidate, text)
            if link is not None:
                found.append(link)
        return tuple(found)

    def needs_resolution(self, link: Link) -> bool:
        """Whether ``link`` goes through a generic shortener the policy says to resolve."""
        return link.host is not None and self.is_shortener(link.host)

    def is_shortener(self, host: str) -> bool:
        """Whether ``host`` is (on) a generic shortener the policy says to resolve."""
        if not self.policy.shorteners:
            return False
        if host in self.policy.shorteners:
            return True
        return self._domains.lookup(host).registrable in self.policy.shorteners

    def decide(
        self,
        text: str,
        surface: SurfaceId,
        at: datetime,
        direction: Direction = Direction.REQUEST,
    ) -> Decision:
        """The decision for ``text`` published on ``surface`` at the aware instant ``at``."""
        if not self.rulebook.boundaries:
            return decide(self.links(text), surface, at, self.rulebook, direction)
        return self._table(surface, at, direction)[text]

    def decide_many(
        self,
        texts: Sequence[str],
        surface: SurfaceId,
        at: datetime,
        direction: Direction = Direction.REQUEST,
    ) -> list[Decision]:
        """``decide`` for every text of one message, the instant's epoch worked out once."""
        if not self.rulebook.boundaries:
            return [decide(self.links(t), surface, at, self.rulebook, direction) for t in texts]
        table = self._table(surface, at, direction)
        return list(map(table.__getitem__, texts))

    def tallies_many(
        self,
        texts: Sequence[str],
        surface: SurfaceId,
        at: datetime,
        direction: Direction = Direction.REQUEST,
    ) -> list[Tally]:
        """The ``tally`` of each of ``decide_many``'s decisions, looked up by text in a table
        of its own: a message whose links are all allowed needs no more, and this way the
        decisions themselves are not even touched."""
        if not self.rulebook.boundaries:
            return [d.tally for d in self.decide_many(texts, surface, at, direction)]
        table = self._table(surface, at, direction)
        return list(map(table.tallies.__getitem__, texts))

    def _table(self, surface: SurfaceId, at: datetime, direction: Direction) -> _Decisions:
        """The decisions for ``surface`` and ``direction`` in the epoch of ``at``."""
        key = (surface, direction is Direction.REQUEST, self.rulebook.epoch(at))
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = _Decisions(self, key)
        return table

    def _remember(self, table: _Decisions, text: str) -> Decision:
        """Decide ``text`` for ``table``'s surface, direction and epoch, and keep the result."""
        surface, request, epoch = table.key
        direction = Direction.REQUEST if request else Direction.RESPONSE
        at = self.rulebook.instant_in(epoch)
        # Straight to _find_links: the decision memo already holds these links, and a second
        # memo entry per unique input would only double what the garbage collector walks.
        decision = decide_checked(self._find_links(text), surface, at, self.rulebook, direction)
        if self._memoised >= self._memo_size:
            self._forget_one()
        table[text] = decision
        self._memoised += 1
        return decision

    def _forget_one(self) -> None:
        """Drop the oldest decision of the fullest table (a handful of tables: one per surface
        and direction, per epoch asked about), and its tally."""
        table = max(self._tables.values(), key=len)
        text, _ = table.popitem(last=False)
        table.tallies.pop(text, None)
        self._memoised -= 1


class _Decisions(OrderedDict[str, Decision]):
    """One (surface, direction, epoch)'s decisions by text; a missing text is decided.

    Ordered for the eviction: ``popitem(last=False)`` is O(1), while taking the first key of a
    plain dict walks past every slot emptied before it (3.7 µs against 0.3 µs per eviction at
    16 384 entries, measured). Lookups are the plain dict's.

    ``tallies`` holds the tallies of (some of) the same texts, and never a text the decisions
    do not: it is filled from them, and emptied with them."""

    __slots__ = ("_engine", "key", "tallies")

    def __init__(self, engine: Engine, key: _TableKey) -> None:
        super().__init__()
        self._engine: Final = engine
        self.key: Final = key
        self.tallies: Final = _Tallies(self)

    def __missing__(self, text: str) -> Decision:
        return self._engine._remember(self, text)


class _Tallies(dict[str, Tally]):
    """One table's tallies by text; a missing text's comes from (or is decided by) the table."""

    __slots__ = ("_decisions",)

    def __init__(self, decisions: _Decisions) -> None:
        super().__init__()
        self._decisions: Final = decisions

    def __missing__(self, text: str) -> Tally:
        tally = self[text] = self._decisions[text].tally
        return tally
