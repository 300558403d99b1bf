"""Decisions as plain JSON-ready mappings and one-line explanations.

Shared by the ``check`` CLI, the admin API's ``/explain`` and the proxy's problem details, so a
decision reads the same wherever a seller or an operator meets it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from proxy.core.model import Action, Decision, Link, LinkVerdict, PendingRule, SurfaceId

__all__ = ["decision_record", "describe_verdict", "link_record", "pending_record"]


def link_record(verdict: LinkVerdict) -> dict[str, Any]:
    link = verdict.link
    return {
        "text": link.text,
        "url": link.url,
        "host": link.host,
        "platform": verdict.platform,
        "kind": verdict.kind.value,
        "action": verdict.action.value,
        "rule": verdict.rule,
        "target": verdict.target,
        "evidence": [_evidence(link, i) for i in range(len(link.matches))],
    }


def _evidence(link: Link, index: int) -> dict[str, Any]:
    match = link.matches[index]
    return {
        "depth": match.evidence.depth,
        "host": match.evidence.host or None,
        "platform": match.platform,
        "kind": match.kind.value,
        "reason": match.evidence.reason,
    }


def pending_record(pending: PendingRule) -> dict[str, Any]:
    return {
        "rule": pending.rule,
        "platform": pending.platform,
        "surface": pending.surface,
        "action": pending.action.value,
        "effective_from": pending.effective_from.isoformat(),
    }


def decision_record(
    text: str, surface: SurfaceId, at: datetime, decision: Decision
) -> dict[str, Any]:
    """The JSON form of one decision (the ``check --json`` line format)."""
    return {
        "input": text,
        "surface": surface,
        "at": at.isoformat(),
        "action": decision.action.value,
        "platform": decision.platform,
        "rule": decision.rule,
        "links": [link_record(v) for v in decision.verdicts],
        "pending": [pending_record(p) for p in decision.pending],
    }


def describe_verdict(verdict: LinkVerdict) -> str:
    """One line a seller can read: what was found, where it leads, and which rule says what."""
    link = verdict.link
    where = link.url or link.text
    if not link.matches:
        return f"{verdict.action.value}: {where} (not a listed platform)"
    reasons = "; ".join(
        f"{m.platform} {m.kind.value} via {m.evidence.reason}"
        + (f" at depth {m.evidence.depth}" if m.evidence.depth else "")
        for m in link.matches
    )
    ruling = f" by rule {verdict.rule}" if verdict.action is not Action.ALLOW else ""
    return f"{verdict.action.value}{ruling}: {where} ({reasons})"
