"""Inspection of one routed message: locate links, decide, apply rollout, plan the action.

Shared by the proxy (``proxy.forwarding``) and the middleware (``proxy.middleware``), so both
reach the same decisions and raise the same errors. Per string selected by the route's link
paths, ``Engine.decide`` (memoised) gives per-link verdicts; each verdict's rule is then looked up
in the rollout flags for the message's seller: ``off`` ignores it, ``shadow`` records what would
have happened (the message goes on unchanged, with a ``Link-Policy-Shadow`` header), ``enforce``
acts. For a response, ``block`` cannot refuse what is already published, so it strips instead.
Short links of hosts the resolver ``handles`` are resolved first (one batch per message) and
judged by where they lead. Metrics and one audit line per non-allow finding are emitted here.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

import orjson

from proxy import headers as hdr
from proxy.core.documents import (
    LinkPaths,
    Path,
    Replacement,
    apply_edits,
    compile_paths,
    pointer,
    removal_path,
    resolve_pointer,
    select,
)
from proxy.core.engine import Engine
from proxy.core.model import (
    Action,
    Decision,
    Direction,
    LinkVerdict,
    Mode,
    PendingRule,
)
from proxy.core.policy import RouteSpec
from proxy.core.rollout import FlagSnapshot
from proxy.errors import PolicyBlocked
from proxy.logs import AUDIT_LOGGER, AuditRecord, audit
from proxy.metrics import ProxyMetrics

__all__ = ["ActionPlan", "Finding", "Inspector", "Outcome", "blocked", "plan_outcome"]

_audit_log: Final = logging.getLogger(AUDIT_LOGGER)


class _Flags(Protocol):
    def snapshot(self) -> FlagSnapshot: ...


class _Resolver(Protocol):
    def handles(self, url: str) -> bool: ...

    async def resolve_many(self, urls: Sequence[str]) -> Mapping[str, str | None]: ...


@dataclass(frozen=True, slots=True)
class Finding:
    """One link that a rule covers, where it is, and what was (or would be) done to it."""

    path: Path
    verdict: LinkVerdict
    action: Action
    mode: Mode

    @property
    def pointer(self) -> str:
        return pointer(self.path)

    def describe(self, surface: str) -> dict[str, Any]:
        link = self.verdict.link
        return {
            "pointer": self.pointer,
            "url": link.url if link.url is not None else link.text,
            "platform": self.verdict.platform,
            "kind": str(self.verdict.kind),
            "rule": self.verdict.rule,
            "surface": surface,
            "action": str(self.action),
        }


@dataclass(frozen=True, slots=True)
class ActionPlan:
    route: RouteSpec
    seller: str | None
    action: Action
    """The strictest enforced action; ``allow`` when nothing is enforced."""
    enforced: tuple[Finding, ...]
    shadowed: tuple[Finding, ...]
    pending: tuple[PendingRule, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    body: bytes | None
    """The edited document, serialised; None: forward the original bytes unchanged."""
    headers: tuple[tuple[str, str], ...]
    """Report headers for the client's response (strip/rewrite/shadow/pending)."""


def _seller(route: RouteSpec, headers: Mapping[str, str], doc: Any) -> str | None:
    if route.seller.header and (value := headers.get(route.seller.header)):
        return value
    if route.seller.pointer:
        found = resolve_pointer(doc, route.seller.pointer)
        if isinstance(found, str | int) and not isinstance(found, bool):
            return str(found)
    return None


class Inspector:
    """Everything inspection needs, built once per application (or middleware)."""

    def __init__(
        self,
        engine: Engine,
        flags: _Flags,
        *,
        metrics: ProxyMetrics | None = None,
        resolver: _Resolver | None = None,
    ) -> None:
        self.engine = engine
        self.flags = flags
        self.metrics = metrics
        self.resolver = resolver
        self._paths: dict[str, LinkPaths] = {
            route.id: compile_paths(route.links) for route in engine.policy.routes
        }

    def paths_for(self, route: RouteSpec) -> LinkPaths:
        paths = self._paths.get(route.id)
        if paths is None:  # a route that is not in the engine's policy (middleware use)
            paths = self._paths[route.id] = compile_paths(route.links)
        return paths

    async def inspect(
        self,
        route: RouteSpec,
        doc: Any,
        *,
        headers: Mapping[str, str],
        at: datetime,
        request_id: str,
    ) -> ActionPlan:
        """Decide on every link of ``doc`` as published on ``route`` at the instant ``at``."""
        started = time.perf_counter()
        surface, direction = route.surface, route.direction
        seller = _seller(route, headers, doc)
        decide = self.engine.decide
        decided: list[tuple[Path, Decision]] = []
        for location in select(doc, self.paths_for(route)):
            decision = decide(location.text, surface, at, direction)
            if decision.verdicts:
                decided.append((location.path, decision))
        if self.resolver is not None and decided:
            decided = await self._resolve(self.resolver, decided, route, at)
        snapshot = self.flags.snapshot()
        enforced: list[Finding] = []
        shadowed: list[Finding] = []
        pending: dict[PendingRule, None] = {}
        counts: Counter[tuple[str, str, str, str]] = Counter()
        for path, decision in decided:
            for p in decision.pending:
                pending[p] = None
            for verdict in decision.verdicts:
                platform = verdict.platform or "none"
                if verdict.action is Action.ALLOW or verdict.rule is None:
                    counts[(platform, verdict.kind, Action.ALLOW, Mode.ENFORCE)] += 1
                    continue
                mode = snapshot.mode_for(verdict.rule, surface, seller)
                action = verdict.action
                if direction is Direction.RESPONSE and action is Action.BLOCK:
                    action = Action.STRIP
                counts[(platform, verdict.kind, action, mode)] += 1
                if mode is Mode.ENFORCE:
                    enforced.append(Finding(path, verdict, action, mode))
                elif mode is Mode.SHADOW:
                    shadowed.append(Finding(path, verdict, action, mode))
        strictest = max((f.action for f in enforced), key=lambda a: a.rank, default=Action.ALLOW)
        plan = ActionPlan(route, seller, strictest, tuple(enforced), tuple(shadowed),
                          tuple(pending))
        self._record(plan, counts, request_id, time.perf_counter() - started)
        return plan

    async def _resolve(
        self,
        resolver: _Resolver,
        decided: list[tuple[Path, Decision]],
        route: RouteSpec,
        at: datetime,
    ) -> list[tuple[Path, Decision]]:
        """Judge allowed short links by where they lead; a stricter landing verdict replaces
        the link's own (keeping the link's position, so strip and rewrite still find it)."""
        urls = sorted({v.link.url for _, d in decided for v in d.verdicts
                       if v.action is Action.ALLOW and v.link.url and resolver.handles(v.link.url)})
        if not urls:
            return decided
        landing = await resolver.resolve_many(urls)
        result: list[tuple[Path, Decision]] = []
        for path, decision in decided:
            verdicts: list[LinkVerdict] = []
            for verdict in decision.verdicts:
                target = landing.get(verdict.link.url or "")
                if target:
                    resolved = self.engine.decide(target, route.surface, at, route.direction)
                    if resolved.verdicts and resolved.action.rank > verdict.action.rank:
                        best = max(resolved.verdicts, key=lambda v: v.action.rank)
                        verdict = LinkVerdict(verdict.link, best.action, best.platform,
                                              best.kind, best.rule, best.target)
                verdicts.append(verdict)
            result.append((path, Decision(
                max((v.action for v in verdicts), key=lambda a: a.rank),
                decision.platform, decision.rule, tuple(verdicts),
                decision.pending,
            )))
        return result

    def _record(
        self,
        plan: ActionPlan,
        counts: Counter[tuple[str, str, str, str]],
        request_id: str,
        seconds: float,
    ) -> None:
        surface = plan.route.surface
        metrics = self.metrics
        if metrics is not None:
            metrics.observe_inspection(surface=surface, direction=plan.route.direction,
                                       seconds=seconds)
            for (platform, kind, action, mode), n in counts.items():
                for _ in range(n):
                    metrics.observe_link(surface=surface, platform=platform, kind=kind,
                                         action=action, mode=mode)
            if plan.action is not Action.ALLOW:
                metrics.observe_enforcement(surface=surface, action=plan.action,
                                            mode=Mode.ENFORCE)
            if plan.shadowed:
                shadow = max((f.action for f in plan.shadowed), key=lambda a: a.rank)
                metrics.observe_enforcement(surface=surface, action=shadow, mode=Mode.SHADOW)
        for finding in plan.enforced + plan.shadowed:
            verdict = finding.verdict
            audit(_audit_log, AuditRecord(
                request_id=request_id, surface=surface, seller=plan.seller,
                host=verdict.link.host, platform=verdict.platform, rule=verdict.rule,
                action=finding.action, mode=finding.mode, route=plan.route.id,
                pointer=finding.pointer,
            ))


def blocked(plan: ActionPlan) -> PolicyBlocked:
    """The 422 problem for a blocked message, listing every enforced finding."""
    surface = plan.route.surface
    links = [f.describe(surface) for f in plan.enforced]
    rules = sorted({str(f.verdict.rule) for f in plan.enforced if f.action is Action.BLOCK})
    count = sum(1 for f in plan.enforced if f.action is Action.BLOCK)
    return PolicyBlocked(
        f"{count} link(s) may not be published on {surface}: rule {', '.join(rules)}",
        extensions={"surface": surface, "links": links},
    )


def _report(findings: Sequence[Finding], pointers: Sequence[str]) -> str:
    return f'count={len(findings)}; pointers="{hdr.pointer_list(pointers)}"'


def plan_outcome(plan: ActionPlan, doc: Any) -> Outcome:
    """Apply ``plan`` to ``doc``: raise ``PolicyBlocked``, or return the edited body (or None
    for the original bytes) and the report headers."""
    if plan.action is Action.BLOCK:
        raise blocked(plan)
    report: list[tuple[str, str]] = []
    body: bytes | None = None
    if plan.enforced:
        strip = [f for f in plan.enforced if f.action is Action.STRIP]
        rewrite = [f for f in plan.enforced if f.action is Action.REWRITE]
        removals = [removal_path(f.path, plan.route.strip) for f in strip]
        replacements = [
            Replacement(f.path, f.verdict.link.start, f.verdict.link.end, f.verdict.target or "")
            for f in rewrite
        ]
        doc = apply_edits(doc, replacements=replacements, removals=removals)
        body = orjson.dumps(doc)
        if strip:
            report.append((hdr.STRIPPED, _report(strip, sorted({pointer(p) for p in removals}))))
        if rewrite:
            report.append((hdr.REWRITTEN, _report(rewrite, [f.pointer for f in rewrite])))
    by_kind: dict[tuple[str, str], list[Finding]] = {}
    for finding in plan.shadowed:
        by_kind.setdefault((finding.action, str(finding.verdict.rule)), []).append(finding)
    for (action, rule), findings in by_kind.items():
        report.append((hdr.SHADOW, f"action={action}; rule={rule}; "
                                   + _report(findings, [f.pointer for f in findings])))
    report.extend(hdr.pending_headers(plan.pending))
    return Outcome(body, tuple(report))
