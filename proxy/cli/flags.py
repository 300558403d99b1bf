"""``flags``: read and change the fleet's rollout flags in Redis.

    cart-link-proxy flags show [--json]
    cart-link-proxy flags set --surface S [--rule R] --mode off|shadow|enforce --percent P
    cart-link-proxy flags clear --surface S [--rule R]
    cart-link-proxy flags allow|force|unlist SELLER...
    cart-link-proxy flags kill on|off

Redis is ``--redis-url`` or ``$REDIS_URL`` (any form ``proxy.redisconn`` reads); the change is
recorded in the audit log under ``--actor`` (default ``$USER``). Surface and rule ids are checked
against the policy (``--config``, default the shipped one). Exit status: 0 done, 1 Redis could not
be reached or did not take the change, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from proxy.core.policy import Policy
from proxy.core.rollout import FlagSnapshot
from proxy.errors import FlagStoreUnavailable, InvalidFlagChange
from proxy.flags import AuditEntry, RedisFlagStore
from proxy.policyfile import load_policy
from proxy.redisconn import RedisClient, connect, parse_redis_url

__all__ = ["register"]

EXIT_OK = 0
EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2
_CLI_TIMEOUT = 3.0
"""Seconds: an operator waits longer than a request does."""


def _default_actor() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def register(commands: argparse._SubParsersAction[Any]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", default=None, metavar="URL",
                        help="Redis to use (default: $REDIS_URL)")
    common.add_argument("--actor", default=None,
                        help="who makes the change, for the audit log (default: $USER)")
    common.add_argument("--config", metavar="F",
                        help="policy file whose surfaces and rules are valid "
                             "(default: the shipped policy)")

    group = commands.add_parser(
        "flags", help="show or change rollout flags in Redis",
        description="Show or change the rollout flags every replica reads from Redis.",
    )
    sub = group.add_subparsers(dest="flags_command", metavar="ACTION", required=True)

    show = sub.add_parser("show", parents=[common], help="print the effective flags")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument("--audit", type=int, default=10, metavar="N",
                      help="also print the latest N changes (default 10; 0: none)")
    show.set_defaults(handler=run)

    set_ = sub.add_parser("set", parents=[common],
                          help="set mode and percent for a surface and/or rule")
    _scope(set_)
    set_.add_argument("--mode", required=True, choices=("off", "shadow", "enforce"))
    set_.add_argument("--percent", required=True, type=int, metavar="P",
                      help="share of sellers enforced, 0..100 (sticky by seller id)")
    set_.set_defaults(handler=run)

    clear = sub.add_parser("clear", parents=[common],
                           help="remove a Redis override: the policy file's flag applies")
    _scope(clear)
    clear.set_defaults(handler=run)

    for name, text in (("allow", "never enforce these sellers"),
                       ("force", "always enforce these sellers"),
                       ("unlist", "take these sellers off both lists")):
        lister = sub.add_parser(name, parents=[common], help=text)
        lister.add_argument("sellers", nargs="+", metavar="SELLER")
        lister.set_defaults(handler=run)

    kill = sub.add_parser("kill", parents=[common],
                          help="kill switch: on = every rule shadow-only, at once, fleet-wide")
    kill.add_argument("state", choices=("on", "off"))
    kill.set_defaults(handler=run)


def _scope(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--surface", default=None, help="surface id (omit with --rule: any)")
    parser.add_argument("--rule", default=None, help="rule id (omit: every rule)")


def run(args: argparse.Namespace) -> int:
    url = args.redis_url or os.environ.get("REDIS_URL")
    if not url:
        print("error: no Redis: pass --redis-url or set REDIS_URL", file=sys.stderr)
        return EXIT_USAGE
    # A bad policy file or URL raises ConfigError, which main() turns into exit status 2.
    policy = load_policy(args.config)
    settings = parse_redis_url(url, option="--redis-url" if args.redis_url else "REDIS_URL",
                               socket_timeout=_CLI_TIMEOUT, connect_timeout=_CLI_TIMEOUT)
    try:
        return asyncio.run(_run(args, connect(settings), policy))
    except InvalidFlagChange as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FlagStoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


async def _run(args: argparse.Namespace, client: RedisClient, policy: Policy) -> int:
    try:
        store = RedisFlagStore.for_policy(
            client, policy, clock=lambda: datetime.now(UTC), timeout=_CLI_TIMEOUT
        )
        actor = args.actor or _default_actor()
        command = args.flags_command
        if command == "set":
            if args.percent < 0 or args.percent > 100:
                raise InvalidFlagChange(f"--percent must be 0..100, got {args.percent}")
            await store.set_flag(surface=args.surface, rule=args.rule, mode=args.mode,
                                 percent=args.percent, actor=actor)
        elif command == "clear":
            await store.clear_flag(surface=args.surface, rule=args.rule, actor=actor)
        elif command in ("allow", "force", "unlist"):
            await store.list_sellers(command, args.sellers, actor=actor)
        elif command == "kill":
            await store.set_kill_switch(args.state == "on", actor=actor)
        elif not await store.refresh():
            raise FlagStoreUnavailable("cannot read flags from Redis")
        audit = await store.audit(args.audit) if getattr(args, "audit", 0) > 0 else []
        _print(store.snapshot(), store.revision, audit, as_json=getattr(args, "json", False))
        return EXIT_OK
    finally:
        await client.aclose()


def _print(snapshot: FlagSnapshot, revision: int | None, audit: list[AuditEntry], *,
           as_json: bool) -> None:
    if as_json:
        document = {
            "revision": revision,
            "flags": snapshot.to_json(),
            "audit": [{"id": e.id, "actor": e.actor, "at": e.at, "action": e.action,
                       "detail": e.detail} for e in audit],
        }
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    lines = [
        f"revision     {revision}",
        f"kill switch  {'ON (every rule shadow-only)' if snapshot.kill_switch else 'off'}",
        f"default      {snapshot.default.mode.value} {snapshot.default.percent}%",
    ]
    for item in snapshot.to_json()["flags"]:
        scope = f"surface={item['surface'] or '*'} rule={item['rule'] or '*'}"
        lines.append(f"flag         {scope}: {item['mode']} {item['percent']}%")
    lines.append(f"allow-list   {' '.join(sorted(snapshot.allow_sellers)) or '-'}")
    lines.append(f"force-list   {' '.join(sorted(snapshot.force_sellers)) or '-'}")
    for entry in audit:
        lines.append(f"audit        {entry.at} {entry.actor} {entry.action} "
                     f"{orjson.dumps(entry.detail).decode()}")
    print("\n".join(lines))

