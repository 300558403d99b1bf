"""The policy decision: given classified links, a surface, a direction and an instant, which rule
applies to each link, and what happens to the input as a whole (the strictest link wins).

``RuleBook`` indexes the rules once per policy. Time enters only as the ``at`` argument, which must
be timezone-aware; a rule is in force from its ``effective_from`` inclusive. Before that it is
reported as pending, so clients can warn sellers of what is coming.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from proxy.core.model import (
    Action,
    Decision,
    Direction,
    LayerMatch,
    Link,
    LinkCount,
    LinkKind,
    LinkVerdict,
    PendingRule,
    PlatformId,
    RuleId,
    SurfaceId,
    Tally,
)
from proxy.core.policy import Rule

__all__ = ["RuleBook", "decide", "decide_checked", "require_aware"]

_VerdictFields = tuple[Action, PlatformId | None, LinkKind, RuleId | None, str | None]
_Outcome = tuple[_VerdictFields, tuple[tuple[tuple[str, str], PendingRule], ...]]
_MAX_OUTCOMES = 4096
_MAX_TALLIES = 4096
_NO_LINKS = Decision(Action.ALLOW, None, None, (), (), ())
"""The decision for every input without a link (most titles and descriptions): one shared
object, so the engine's memo holds one per such text and not five fields each."""


def require_aware(at: datetime) -> datetime:
    """Return ``at``, or raise ``ValueError`` if it is naive: naive instants are never compared."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"naive datetime {at.isoformat()}: pass a timezone-aware instant")
    return at


class RuleBook:
    """The rules indexed by (platform, surface) in file order, plus the instants they start.

    Among equally strict rules the first in the file wins.
    """

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)
        index: dict[tuple[PlatformId, SurfaceId], list[Rule]] = {}
        for rule in self.rules:
            for platform in rule.platforms:
                for surface in rule.surfaces:
                    index.setdefault((platform, surface), []).append(rule)
        self._index = {key: tuple(found) for key, found in index.items()}
        self.boundaries: tuple[datetime, ...] = tuple(sorted({r.effective_from for r in self.rules}))
        # The last instant asked about and its epoch, as one tuple so threads never see them mixed:
        # callers pass one instant for a whole message (or run), and the check plus bisect over
        # aware datetimes costs more than a memoised decision.
        self._last_epoch: tuple[datetime, int] | None = None
        self._instants = (
            (self.boundaries[0] - timedelta(microseconds=1), *self.boundaries) if self.boundaries else ()
        )
        self.outcomes: dict[tuple[object, ...], _Outcome] = {}
        """Per-link outcomes by (matches, surface, direction, instant); see ``_judge``."""
        self.tallies: dict[Tally, Tally] = {}
        """Every distinct ``Decision.tally`` met lately, so equal ones are one object."""

    def candidates(self, platform: PlatformId, surface: SurfaceId) -> tuple[Rule, ...]:
        return self._index.get((platform, surface), ())

    def epoch(self, at: datetime) -> int:
        """How many rule start instants ``at`` has reached: decisions only change between epochs."""
        last = self._last_epoch
        if last is not None and (at is last[0] or (at.tzinfo is not None and at == last[0])):
            return last[1]
        epoch = bisect_right(self.boundaries, require_aware(at))
        self._last_epoch = (at, epoch)
        return epoch

    def pending_at(self, at: datetime) -> bool:
        """Whether some rule has yet to start at ``at`` (so a decision may report it pending)."""
        return self.epoch(at) < len(self.boundaries)

    def instant_in(self, epoch: int) -> datetime:
        """An instant inside ``epoch`` (its start, or just before the first boundary)."""
        return self._instants[epoch]


def decide(
    links: Sequence[Link],
    surface: SurfaceId,
    at: datetime,
    book: RuleBook,
    direction: Direction = Direction.REQUEST,
) -> Decision:
    """Decide every link and the input as a whole."""
    return decide_checked(links, surface, require_aware(at), book, direction)


def decide_checked(
    links: Sequence[Link],
    surface: SurfaceId,
    at: datetime,
    book: RuleBook,
    direction: Direction = Direction.REQUEST,
) -> Decision:
    """``decide`` for an instant already known to be aware (the engine's epoch instants).

    Each link's outcome depends only on its matches (shared between links by the classifier),
    so it is memoised per (matches, surface, direction, instant) in the rule book.
    """
    if not links:
        return _NO_LINKS
    outcomes = book.outcomes
    request = direction is Direction.REQUEST
    verdicts: list[LinkVerdict] = []
    pending: dict[tuple[str, str], PendingRule] = {}
    strictest: LinkVerdict | None = None  # the first of the strictest non-allow verdicts
    top = 0
    first: PlatformId | None = None
    for link in links:
        matches = link.matches
        if not matches:  # an unknown site: no rule can apply
            verdicts.append(LinkVerdict(link, Action.ALLOW, None, LinkKind.PAGE, None))
            continue
        key = (matches, surface, request, at)
        outcome = outcomes.get(key)
        if outcome is None:
            outcome = _outcome(matches, surface, at, book, direction)
            if len(outcomes) >= _MAX_OUTCOMES:
                outcomes.clear()
            outcomes[key] = outcome
        fields, waiting = outcome
        for rule_key, rule in waiting:
            if rule_key not in pending:
                pending[rule_key] = rule
        verdict = LinkVerdict(link, *fields)
        verdicts.append(verdict)
        if first is None:
            first = verdict.platform
        if verdict.action is not Action.ALLOW:
            rank = verdict.action.rank
            if rank > top:
                strictest, top = verdict, rank
    tally = _tally(verdicts, book.tallies)
    if strictest is None:
        return Decision(Action.ALLOW, first, None, tuple(verdicts), tuple(pending.values()), tally)
    return Decision(strictest.action, strictest.platform, strictest.rule, tuple(verdicts),
                    tuple(pending.values()), tally)


def _tally(verdicts: Sequence[LinkVerdict], interned: dict[Tally, Tally]) -> Tally:
    """``verdicts`` counted by host, platform, kind and action: the one equal tally met before,
    when there is one."""
    if len(verdicts) == 1:
        only = verdicts[0]
        tally: Tally = (LinkCount(only.link.host, only.platform, only.kind, only.action, 1),)
    else:
        counts = Counter((v.link.host, v.platform, v.kind, v.action) for v in verdicts)
        tally = tuple(LinkCount(*labels, links) for labels, links in counts.items())
    known = interned.get(tally)
    if known is not None:
        return known
    if len(interned) >= _MAX_TALLIES:
        interned.clear()
    interned[tally] = tally
    return tally


def _outcome(
    matches: tuple[LayerMatch, ...],
    surface: SurfaceId,
    at: datetime,
    book: RuleBook,
    direction: Direction,
) -> _Outcome:
    best: tuple[Rule, LayerMatch, Action] | None = None
    waiting: dict[tuple[str, str], PendingRule] = {}
    for match in matches:
        for rule in book.candidates(match.platform, surface):
            if rule.kinds is not None and match.kind not in rule.kinds:
                continue
            action = rule.action_for(direction)
            if at < rule.effective_from:
                key = (rule.id, match.platform)
                if key not in waiting:
                    waiting[key] = PendingRule(rule.id, match.platform, surface, action,
                                               rule.effective_from)
            elif action is not Action.ALLOW and (best is None or action.rank > best[2].rank):
                best = (rule, match, action)
    if best is None:
        verdict: _VerdictFields = (Action.ALLOW, matches[0].platform, matches[0].kind, None, None)
    else:
        rule, match, action = best
        verdict = (action, match.platform, match.kind, rule.id,
                   _target(rule, match.platform, surface, action))
    return verdict, tuple(waiting.items())


def _target(rule: Rule, platform: PlatformId, surface: SurfaceId, action: Action) -> str | None:
    if action is not Action.REWRITE or rule.target is None:
        return None
    # str.replace, not str.format: URL templates may hold other braces legitimately.
    return (rule.target.replace("{platform}", platform).replace("{rule}", rule.id)
            .replace("{surface}", surface))
