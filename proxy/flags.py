"""Rollout flags: from the policy file (``StaticFlags``) or shared by the fleet in Redis
(``RedisFlagStore``), read by the proxy through ``FlagSource.snapshot()``.

Redis layout (every key carries the hash tag ``{clp-flags}``, so all of them live in one cluster
slot and a change is one round trip to one node: a ``MULTI``/``EXEC`` transaction, or on Redis
Cluster a plain pipeline, since redis-py's asyncio cluster transactions are unreliable):

* ``{clp-flags}:rollout`` — hash; field ``<surface>/<rule>`` (``*`` for "any"), value
  ``{"mode": "shadow", "percent": 10}``. ``*/*`` overrides the default flag.
* ``{clp-flags}:allow``, ``{clp-flags}:force`` — sets of seller ids.
* ``{clp-flags}:kill`` — ``1`` or ``0``; absent means "as the policy file says".
* ``{clp-flags}:rev`` — incremented by every change.
* ``{clp-flags}:audit`` — stream of changes (``actor``, ``at``, ``action``, ``detail``), capped at
  about ``AUDIT_MAXLEN`` entries; each change is also logged on ``cart_link_proxy.flags``.

Redis holds overrides on top of the policy's ``rollout:`` section: a flag set in Redis replaces the
policy's flag for the same key, the kill switch in Redis wins when set, and sellers listed in Redis
are added to the policy's lists (a seller listed in the policy file is removed by editing the file).

Propagation: after a change the writer publishes the new revision on ``clp:flags:changed``; every
store listens and re-reads at once, and also re-reads every ``refresh_interval`` (0.5 s) in case a
message was missed, so a change reaches every replica within a second. When Redis is unreachable
the store keeps serving the last snapshot it read (the policy's flags if it never read one).
``snapshot()`` never touches Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, Protocol, runtime_checkable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from proxy.cache import Spawn
from proxy.core.model import RuleId, SurfaceId
from proxy.core.policy import Policy
from proxy.core.rollout import Flag, FlagKey, FlagSnapshot, flag_from
from proxy.errors import FlagStoreUnavailable, InvalidFlagChange

__all__ = [
    "AuditEntry",
    "FlagAdmin",
    "FlagMetrics",
    "FlagSource",
    "RedisFlagStore",
    "StaticFlags",
    "export_snapshot",
]

_log = logging.getLogger("cart_link_proxy.flags")

_TAG: Final = "{clp-flags}"
ROLLOUT_KEY: Final = f"{_TAG}:rollout"
ALLOW_KEY: Final = f"{_TAG}:allow"
FORCE_KEY: Final = f"{_TAG}:force"
KILL_KEY: Final = f"{_TAG}:kill"
REV_KEY: Final = f"{_TAG}:rev"
AUDIT_KEY: Final = f"{_TAG}:audit"
CHANNEL: Final = "clp:flags:changed"
AUDIT_MAXLEN: Final = 10_000
ANY: Final = "*"

Clock = Callable[[], datetime]


class FlagSource(Protocol):
    """What the proxy reads on every request: the current flags, without I/O."""

    def snapshot(self) -> FlagSnapshot: ...


class FlagMetrics(Protocol):
    """The part of ``proxy.metrics.ProxyMetrics`` the store reports to."""

    def observe_redis_error(self, *, operation: str) -> None: ...

    def observe_flag_change(self) -> None: ...

    def set_kill_switch(self, on: bool) -> None: ...

    def set_rollout(self, *, surface: str, mode: str, percent: int) -> None: ...


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    """The stream entry id (milliseconds-sequence); orders the changes."""
    actor: str
    at: str
    """ISO 8601 instant with offset, from the writer's clock."""
    action: str
    detail: Mapping[str, Any]


@runtime_checkable
class FlagAdmin(FlagSource, Protocol):
    """The changes the CLI and the admin API make; ``RedisFlagStore`` is the one implementation."""

    @property
    def revision(self) -> int | None: ...

    async def set_flag(
        self, *, surface: str | None, rule: str | None, mode: str, percent: int, actor: str
    ) -> int: ...

    async def list_sellers(self, which: str, sellers: Iterable[str], *, actor: str) -> int: ...

    async def set_kill_switch(self, on: bool, *, actor: str) -> int: ...

    async def audit(self, count: int = 20) -> list[AuditEntry]: ...

    async def refresh(self) -> bool: ...


class StaticFlags:
    """The policy file's ``rollout:`` section, fixed for the life of the process."""

    def __init__(self, policy: Policy) -> None:
        self._snapshot = FlagSnapshot.from_policy(policy.rollout)

    def snapshot(self) -> FlagSnapshot:
        return self._snapshot


def export_snapshot(metrics: FlagMetrics, snapshot: FlagSnapshot, surfaces: Iterable[str]) -> None:
    """Publish the kill switch and, per surface, its own flag or else the default, as gauges
    (``cart_link_proxy_rollout_mode``/``_percent``, ``cart_link_proxy_kill_switch``)."""
    metrics.set_kill_switch(snapshot.kill_switch)
    for surface in sorted(surfaces):
        flag = snapshot.flags.get((SurfaceId(surface), None), snapshot.default)
        metrics.set_rollout(surface=surface, mode=flag.mode.value, percent=flag.percent)


def _field(surface: str | None, rule: str | None) -> str:
    return f"{surface or ANY}/{rule or ANY}"


def _key(field: str) -> FlagKey:
    surface, _, rule = field.partition("/")
    return (
        SurfaceId(surface) if surface != ANY else None,
        RuleId(rule) if rule not in (ANY, "") else None,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisFlagStore:
    """Flags in Redis shared by every replica; see the module docstring for layout and timing.

    The store does not own ``client``: the app closes it after ``stop()``.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        base: FlagSnapshot,
        clock: Clock,
        spawn: Spawn | None = None,
        known_surfaces: frozenset[str] = frozenset(),
        known_rules: frozenset[str] = frozenset(),
        refresh_interval: float = 0.5,
        timeout: float = 0.5,
        metrics: FlagMetrics | None = None,
    ) -> None:
        if not 0 < refresh_interval <= 1:
            raise ValueError(f"refresh_interval must be in (0, 1] s, got {refresh_interval}")
        self._client = client
        self._base = base
        self._snapshot = base
        self._clock = clock
        self._spawn = spawn
        self._known_surfaces = known_surfaces
        self._known_rules = known_rules
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self._metrics = metrics
        self._revision: int | None = None
        self._healthy = True
        self._task: asyncio.Task[Any] | None = None
        self._stopping = asyncio.Event()

    @classmethod
    def for_policy(
        cls, client: Redis | RedisCluster, policy: Policy, **options: Any
    ) -> RedisFlagStore:
        """A store whose base is the policy's rollout section; ids are checked against it."""
        return cls(
            client,
            base=FlagSnapshot.from_policy(policy.rollout),
            known_surfaces=frozenset(policy.surfaces),
            known_rules=frozenset(rule.id for rule in policy.rules),
            **options,
        )

    # Reading ------------------------------------------------------------------------------

    def snapshot(self) -> FlagSnapshot:
        return self._snapshot

    @property
    def revision(self) -> int | None:
        """The revision of the snapshot served; None before the first successful read."""
        return self._revision

    async def refresh(self) -> bool:
        """Re-read the flags; on failure keep the last good snapshot and return False."""
        pipe = self._client.pipeline(transaction=False)
        pipe.hgetall(ROLLOUT_KEY)
        pipe.smembers(ALLOW_KEY)
        pipe.smembers(FORCE_KEY)
        pipe.get(KILL_KEY)
        pipe.get(REV_KEY)
        try:
            async with asyncio.timeout(self.timeout):
                rollout, allow, force, kill, rev = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._unhealthy("refresh", exc)
            return False
        if not self._healthy:
            _log.warning("flag store reachable again; serving flags from Redis")
            self._healthy = True
        revision = int(rev) if rev is not None else 0
        if revision != self._revision:
            self._snapshot = self._merge(rollout, allow, force, kill)
            if self._revision is not None:
                _log.info(
                    "flags changed: revision %s -> %s", self._revision, revision,
                    extra={"fields": {"revision": revision}},
                )
                if self._metrics is not None:
                    self._metrics.observe_flag_change()
            self._revision = revision
            self._export()
        return True

    def _merge(
        self,
        rollout: Mapping[bytes | str, bytes | str],
        allow: Iterable[bytes | str],
        force: Iterable[bytes | str],
        kill: bytes | str | None,
    ) -> FlagSnapshot:
        base = self._base
        flags: dict[FlagKey, Flag] = dict(base.flags)
        default = base.default
        for raw_field, raw_value in rollout.items():
            field = _text(raw_field)
            try:
                spec = json.loads(_text(raw_value))
                flag = flag_from(spec["mode"], spec["percent"])
            except (ValueError, KeyError, TypeError) as exc:
                _log.error("ignoring malformed flag %s in Redis: %s", field, exc)
                continue
            key = _key(field)
            if key == (None, None):
                default = flag
            else:
                flags[key] = flag
        return FlagSnapshot(
            kill_switch=base.kill_switch if kill is None else _text(kill) == "1",
            default=default,
            flags=MappingProxyType(flags),
            allow_sellers=base.allow_sellers | {_text(s) for s in allow},
            force_sellers=base.force_sellers | {_text(s) for s in force},
        )

    def _export(self) -> None:
        if self._metrics is None:
            return
        snapshot = self._snapshot
        # Every known surface, so one whose flag was cleared falls back to the default.
        surfaces = self._known_surfaces or {
            surface for surface, rule in snapshot.flags if surface is not None and rule is None
        }
        export_snapshot(self._metrics, snapshot, surfaces)

    def _unhealthy(self, operation: str, exc: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.observe_redis_error(operation=f"flags_{operation}")
        if self._healthy:
            _log.warning(
                "flag store unreachable (%s: %s); serving the last good flags (revision %s)",
                operation, type(exc).__name__, self._revision,
            )
            self._healthy = False

    async def audit(self, count: int = 20) -> list[AuditEntry]:
        """The latest ``count`` changes, newest first."""
        try:
            async with asyncio.timeout(self.timeout):
                raw = await self._client.xrevrange(AUDIT_KEY, count=count)
        except (RedisError, OSError, TimeoutError) as exc:
            raise FlagStoreUnavailable(f"cannot read the flag audit log: {exc}") from exc
        entries = []
        for entry_id, fields in raw or ():
            values = {_text(k): _text(v) for k, v in (fields or {}).items()}
            entries.append(AuditEntry(
                id=_text(entry_id or ""),
                actor=values.get("actor", ""),
                at=values.get("at", ""),
                action=values.get("action", ""),
                detail=json.loads(values.get("detail", "{}")),
            ))
        return entries

    # Changing (shared by the CLI and the admin API) -------------------------------------------

    async def set_flag(
        self, *, surface: str | None, rule: str | None, mode: str, percent: int, actor: str
    ) -> int:
        """Set the flag of a surface, a rule or a (surface, rule) pair (neither: the default)."""
        try:
            flag = flag_from(mode, percent)
        except ValueError as exc:
            raise InvalidFlagChange(str(exc)) from exc
        self._check_known(surface, self._known_surfaces, "surface")
        self._check_known(rule, self._known_rules, "rule")
        value = json.dumps({"mode": flag.mode.value, "percent": flag.percent})
        field = _field(surface, rule)
        return await self._change(
            "set",
            {"surface": surface, "rule": rule, "mode": flag.mode.value, "percent": flag.percent},
            actor,
            lambda pipe: pipe.hset(ROLLOUT_KEY, field, value),
        )

    async def clear_flag(self, *, surface: str | None, rule: str | None, actor: str) -> int:
        """Remove a Redis override, so the policy file's flag applies again."""
        field = _field(surface, rule)
        return await self._change(
            "clear", {"surface": surface, "rule": rule}, actor,
            lambda pipe: pipe.hdel(ROLLOUT_KEY, field),
        )

    async def list_sellers(self, which: str, sellers: Iterable[str], *, actor: str) -> int:
        """``which`` is ``allow`` (never enforced), ``force`` (always) or ``unlist`` (neither)."""
        names = sorted({s.strip() for s in sellers if s.strip()})
        if not names:
            raise InvalidFlagChange("name at least one seller id")
        if which == "allow":
            add, remove = ALLOW_KEY, FORCE_KEY
        elif which == "force":
            add, remove = FORCE_KEY, ALLOW_KEY
        elif which == "unlist":
            add, remove = "", ""
        else:
            raise InvalidFlagChange(f"unknown list {which!r} (expected allow, force or unlist)")

        def apply(pipe: Any) -> None:
            if add:
                pipe.srem(remove, *names)
                pipe.sadd(add, *names)
            else:
                pipe.srem(ALLOW_KEY, *names)
                pipe.srem(FORCE_KEY, *names)

        return await self._change(which, {"sellers": names}, actor, apply)

    async def set_kill_switch(self, on: bool, *, actor: str) -> int:
        """On: every rule is shadow (allowed and recorded) until it is turned off again."""
        return await self._change(
            "kill", {"on": on}, actor, lambda pipe: pipe.set(KILL_KEY, "1" if on else "0")
        )

    def _check_known(self, value: str | None, known: frozenset[str], what: str) -> None:
        if value is not None and known and value not in known:
            raise InvalidFlagChange(
                f"unknown {what} {value!r} (known: {', '.join(sorted(known))})"
            )

    async def _change(
        self, action: str, detail: Mapping[str, Any], actor: str, apply: Callable[[Any], Any]
    ) -> int:
        actor = actor.strip() or "unknown"
        at = self._clock().isoformat()
        record = {"actor": actor, "at": at, "action": action,
                  "detail": json.dumps(detail, sort_keys=True)}
        # One slot, one node: MULTI/EXEC on a single server; redis-py's asyncio cluster
        # transactions are unreliable, so a cluster gets a plain pipeline (still one round trip).
        pipe = self._client.pipeline(transaction=not isinstance(self._client, RedisCluster))
        apply(pipe)
        pipe.incr(REV_KEY)
        pipe.xadd(AUDIT_KEY, record, maxlen=AUDIT_MAXLEN, approximate=True)  # type: ignore[arg-type]
        try:
            async with asyncio.timeout(self.timeout):
                results = await pipe.execute()
                revision = int(results[-2])
                await self._client.publish(CHANNEL, str(revision))
        except (RedisError, OSError, TimeoutError) as exc:
            raise FlagStoreUnavailable(f"flag change {action} not saved: {exc!r}") from exc
        _log.info(
            "flag change by %s: %s %s (revision %s)", actor, action,
            json.dumps(detail, sort_keys=True), revision,
            extra={"fields": {"actor": actor, "at": at, "action": action, "detail": dict(detail),
                              "revision": revision}},
        )
        await self.refresh()
        return revision

    # Lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the flags once (the policy's flags serve if Redis is down), then keep watching."""
        if self._spawn is None:
            raise RuntimeError("RedisFlagStore.start() needs spawn= (proxy.tasks.spawn)")
        await self.refresh()
        self._stopping.clear()
        self._task = self._spawn(self._watch(), name="flag-watcher")

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        pubsub: PubSub | None = None
        try:
            while not self._stopping.is_set():
                if pubsub is None:
                    pubsub = await self._subscribe()
                    if pubsub is not None:
                        await self.refresh()  # a change may have landed while unsubscribed
                if pubsub is None:
                    await self._sleep(self.refresh_interval)
                else:
                    try:
                        async with asyncio.timeout(self.refresh_interval + self.timeout):
                            await pubsub.get_message(
                                ignore_subscribe_messages=True, timeout=self.refresh_interval
                            )
                    except (RedisError, OSError, TimeoutError) as exc:
                        self._unhealthy("subscribe", exc)
                        await _close(pubsub)
                        pubsub = None
                        await self._sleep(self.refresh_interval)
                await self.refresh()
        finally:
            if pubsub is not None:
                await _close(pubsub)

    async def _subscribe(self) -> PubSub | None:
        pubsub = self._client.pubsub()
        try:
            async with asyncio.timeout(self.timeout):
                await pubsub.subscribe(CHANNEL)
        except (RedisError, OSError, TimeoutError) as exc:
            self._unhealthy("subscribe", exc)
            await _close(pubsub)
            return None
        return pubsub

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()


async def _close(pubsub: PubSub) -> None:
    with contextlib.suppress(RedisError, OSError, TimeoutError):
        await _bounded(pubsub.aclose(), 0.5)  # type: ignore[no-untyped-call]


async def _bounded(awaitable: Awaitable[Any], seconds: float) -> None:
    async with asyncio.timeout(seconds):
        await awaitable
