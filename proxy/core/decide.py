"""The policy decision: given classified links, a surface, a direction and an instant, which rule
applies to each link, and what happens to the input as a whole (the strictest link wins).

``RuleBook`` indexes the rules once per policy. Time enters only as the ``at`` argument, which must
be timezone-aware; a rule is in force from its ``effective_from`` inclusive. Before that it is
reported as pending, so clients can warn sellers of what is coming.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from proxy.core.model import (
    Action,
    Decision,
    Direction,
    LayerMatch,
    Link,
    LinkVerdict,
    PendingRule,
    PlatformId,
    SurfaceId,
)
from proxy.core.policy import Rule

__all__ = ["RuleBook", "decide", "require_aware"]


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

    def candidates(self, platform: PlatformId, surface: SurfaceId) -> tuple[Rule, ...]:
        return self._index.get((platform, surface), ())

    def epoch(self, at: datetime) -> int:
        """How many rule start instants ``at`` has reached: decisions only change between epochs."""
        return bisect_right(self.boundaries, require_aware(at))

    def instant_in(self, epoch: int) -> datetime:
        """An instant inside ``epoch`` (its start, or just before the first boundary)."""
        if epoch == 0:
            return self.boundaries[0] - timedelta(microseconds=1)
        return self.boundaries[epoch - 1]


def decide(
    links: Sequence[Link],
    surface: SurfaceId,
    at: datetime,
    book: RuleBook,
    direction: Direction = Direction.REQUEST,
) -> Decision:
    """Decide every link and the input as a whole."""
    require_aware(at)
    verdicts: list[LinkVerdict] = []
    pending: dict[tuple[str, str], PendingRule] = {}
    strictest: LinkVerdict | None = None
    for link in links:
        verdict = _judge(link, surface, at, book, direction, pending)
        verdicts.append(verdict)
        if strictest is None or verdict.action.rank > strictest.action.rank:
            strictest = verdict
    if strictest is None or strictest.action is Action.ALLOW:
        first = next((v.platform for v in verdicts if v.platform is not None), None)
        return Decision(Action.ALLOW, first, None, tuple(verdicts), tuple(pending.values()))
    return Decision(strictest.action, strictest.platform, strictest.rule, tuple(verdicts),
                    tuple(pending.values()))


def _judge(
    link: Link,
    surface: SurfaceId,
    at: datetime,
    book: RuleBook,
    direction: Direction,
    pending: dict[tuple[str, str], PendingRule],
) -> LinkVerdict:
    """The strictest in-force rule over every layer of one link; records pending rules."""
    best: tuple[Rule, LayerMatch, Action] | None = None
    for match in link.matches:
        for rule in book.candidates(match.platform, surface):
            if rule.kinds is not None and match.kind not in rule.kinds:
                continue
            action = rule.action_for(direction)
            if at < rule.effective_from:
                key = (rule.id, match.platform)
                if key not in pending:
                    pending[key] = PendingRule(rule.id, match.platform, surface, action,
                                               rule.effective_from)
            elif action is not Action.ALLOW and (best is None or action.rank > best[2].rank):
                best = (rule, match, action)
    if best is None:
        return LinkVerdict(link, Action.ALLOW, link.platform, link.kind, None)
    rule, match, action = best
    return LinkVerdict(link, action, match.platform, match.kind, rule.id,
                       _target(rule, match.platform, surface, action))


def _target(rule: Rule, platform: PlatformId, surface: SurfaceId, action: Action) -> str | None:
    if action is not Action.REWRITE or rule.target is None:
        return None
    # str.replace, not str.format: URL templates may hold other braces legitimately.
    return (rule.target.replace("{platform}", platform).replace("{rule}", rule.id)
            .replace("{surface}", surface))
