"""Staged rollout: the flag snapshot and the sticky percentage bucket.

A flag is ``(mode, percent)`` for a surface, a rule, or a (surface, rule) pair. For a seller, the
effective mode of a rule on a surface is found by, in order: the kill switch (everything is shadow:
allowed and recorded); the most specific flag — (surface, rule), then (None, rule), then
(surface, None), then the default; mode ``off`` or ``shadow`` as written; for ``enforce``, the
allow-list (never enforced: shadow), the force-list (always enforced), and else the seller's sticky
bucket against ``percent``.

The bucket is Unleash's normalised murmur3: ``murmur3_32("<rule>:<seller>", seed 0) % 100 + 1``, in
1..100, and a seller is enforced when ``bucket <= percent``. It depends on the rule and the seller
only, so a seller in at 10% stays in at 20% and on every surface the rule covers. A request with no
seller id has no bucket: it is enforced only at 100%.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import mmh3

from proxy.core.model import Mode, RuleId, SurfaceId
from proxy.core.policy import RolloutDefaults

__all__ = ["Flag", "FlagKey", "FlagSnapshot", "bucket", "flag_from"]

FlagKey = tuple[SurfaceId | None, RuleId | None]


@dataclass(frozen=True, slots=True)
class Flag:
    mode: Mode = Mode.ENFORCE
    percent: int = 100


def flag_from(mode: object, percent: object) -> Flag:
    """A validated ``Flag``; raises ``ValueError`` naming what is wrong.

    >>> flag_from("shadow", 10)
    Flag(mode=<Mode.SHADOW: 'shadow'>, percent=10)
    """
    try:
        parsed = Mode(str(mode))
    except ValueError:
        choices = ", ".join(m.value for m in Mode)
        raise ValueError(f"mode {mode!r} is not one of {choices}") from None
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ValueError(f"percent must be a whole number from 0 to 100, got {percent!r}")
    return Flag(parsed, percent)


def bucket(rule: str, seller: str) -> int:
    """The seller's sticky bucket for a rule, 1..100.

    >>> bucket("taobao-cutoff-2022", "seller-1") == bucket("taobao-cutoff-2022", "seller-1")
    True
    >>> 1 <= bucket("r", "s") <= 100
    True
    """
    return int(mmh3.hash(f"{rule}:{seller}", 0, signed=False)) % 100 + 1


@dataclass(frozen=True, slots=True)
class FlagSnapshot:
    """An immutable view of every rollout flag at one moment."""

    kill_switch: bool = False
    default: Flag = Flag()
    flags: Mapping[FlagKey, Flag] = field(default_factory=lambda: MappingProxyType({}))
    allow_sellers: frozenset[str] = frozenset()
    force_sellers: frozenset[str] = frozenset()

    @classmethod
    def from_policy(cls, rollout: RolloutDefaults) -> FlagSnapshot:
        flags: dict[FlagKey, Flag] = {}
        for surface, spec in rollout.surfaces.items():
            flags[(surface, None)] = Flag(spec.mode, spec.percent)
        for rule, spec in rollout.rules.items():
            flags[(None, rule)] = Flag(spec.mode, spec.percent)
        return cls(
            kill_switch=rollout.kill_switch,
            default=Flag(rollout.default.mode, rollout.default.percent),
            flags=MappingProxyType(flags),
            allow_sellers=rollout.allow_sellers,
            force_sellers=rollout.force_sellers,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-able mapping (for Redis, the admin API and ``flags show --json``).

        >>> FlagSnapshot.from_json(FlagSnapshot(kill_switch=True).to_json()).kill_switch
        True
        """
        return {
            "kill_switch": self.kill_switch,
            "default": {"mode": self.default.mode.value, "percent": self.default.percent},
            "flags": [
                {"surface": surface, "rule": rule, "mode": flag.mode.value,
                 "percent": flag.percent}
                for (surface, rule), flag in sorted(
                    self.flags.items(), key=lambda item: (item[0][0] or "", item[0][1] or "")
                )
            ],
            "allow_sellers": sorted(self.allow_sellers),
            "force_sellers": sorted(self.force_sellers),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FlagSnapshot:
        """The inverse of ``to_json``; raises ``ValueError`` naming the bad field."""
        try:
            default = data.get("default") or {}
            flags = {
                (
                    SurfaceId(item["surface"]) if item.get("surface") else None,
                    RuleId(item["rule"]) if item.get("rule") else None,
                ): flag_from(item["mode"], item["percent"])
                for item in data.get("flags", ())
            }
            return cls(
                kill_switch=bool(data.get("kill_switch", False)),
                default=flag_from(default.get("mode", "enforce"), default.get("percent", 100)),
                flags=MappingProxyType(flags),
                allow_sellers=frozenset(str(s) for s in data.get("allow_sellers", ())),
                force_sellers=frozenset(str(s) for s in data.get("force_sellers", ())),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a flag snapshot: {exc!r}") from exc

    def flag_for(self, rule: RuleId, surface: SurfaceId) -> Flag:
        flags = self.flags
        return (
            flags.get((surface, rule))
            or flags.get((None, rule))
            or flags.get((surface, None))
            or self.default
        )

    def mode_for(self, rule: RuleId, surface: SurfaceId, seller: str | None) -> Mode:
        """The mode in which ``rule`` applies on ``surface`` to ``seller``."""
        if self.kill_switch:
            return Mode.SHADOW
        flag = self.flag_for(rule, surface)
        if flag.mode is not Mode.ENFORCE:
            return flag.mode
        if seller is not None:
            if seller in self.allow_sellers:
                return Mode.SHADOW
            if seller in self.force_sellers:
                return Mode.ENFORCE
            if flag.percent >= 100 or bucket(rule, seller) <= flag.percent:
                return Mode.ENFORCE
            return Mode.SHADOW
        return Mode.ENFORCE if flag.percent >= 100 else Mode.SHADOW
