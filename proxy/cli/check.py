"""``check`` and ``validate-config``: the decision engine from the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

from proxy.core.explain import decision_record, describe_verdict
from proxy.core.model import Direction, SurfaceId
from proxy.errors import ConfigError
from proxy.policyfile import build_engine, load_policy

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[Any]) -> None:
    check = commands.add_parser(
        "check",
        help="decide links in inputs for one surface",
        description="Find every link in each INPUT and decide it under the policy.",
    )
    check.add_argument("--config", metavar="F", help="policy file (default: the shipped policy)")
    check.add_argument("--surface", required=True, help="surface id, e.g. livestream_cart")
    check.add_argument("--at", type=_instant, metavar="ISO8601",
                       help="instant to decide at, with offset (default: now)")
    check.add_argument("--direction", choices=("request", "response"), default="request",
                       help="publishing a link (request) or showing one (response)")
    check.add_argument("--json", action="store_true", help="one JSON object per input")
    check.add_argument("--jsonl-input", action="store_true",
                       help="read inputs from stdin, each line a JSON string")
    check.add_argument("inputs", nargs="*", metavar="INPUT", help="text to check; - reads stdin")
    check.set_defaults(handler=run_check)

    validate = commands.add_parser("validate-config", help="validate a policy file")
    validate.add_argument("path", metavar="F")
    validate.set_defaults(handler=run_validate)


def _instant(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 timestamp: {value!r}") from exc
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} has no UTC offset (e.g. +08:00 or Z)")
    return parsed


def _inputs(args: argparse.Namespace) -> Iterator[str]:
    if args.jsonl_input:
        for number, line in enumerate(sys.stdin, 1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"stdin line {number}: not JSON: {exc}") from exc
            if not isinstance(value, str):
                raise ConfigError(f"stdin line {number}: expected a JSON string")
            yield value
    for item in args.inputs:
        if item == "-":
            yield from (line.rstrip("\r\n") for line in sys.stdin)
        else:
            yield item


def run_check(args: argparse.Namespace) -> int:
    policy = load_policy(args.config)
    if args.surface not in policy.surfaces:
        known = ", ".join(sorted(policy.surfaces))
        print(f"unknown surface {args.surface!r} (known: {known})", file=sys.stderr)
        return 2
    if not args.inputs and not args.jsonl_input:
        print("nothing to check: give INPUT arguments, '-' or --jsonl-input", file=sys.stderr)
        return 2
    engine = build_engine(policy)
    surface = SurfaceId(args.surface)
    at: datetime = args.at or datetime.now(UTC)
    out = sys.stdout
    for text in _inputs(args):
        decision = engine.decide(text, surface, at, Direction(args.direction))
        if args.json:
            out.write(orjson.dumps(decision_record(text, surface, at, decision)).decode() + "\n")
            continue
        out.write(f"{decision.action.value.upper():7} {surface} {text}\n")
        for verdict in decision.verdicts:
            out.write(f"        {describe_verdict(verdict)}\n")
        for pending in decision.pending:
            out.write(f"        pending: rule {pending.rule} will {pending.action.value} "
                      f"{pending.platform} links from {pending.effective_from.isoformat()}\n")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    try:
        load_policy(args.path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print("ok")
    return 0
