"""The ``cart-link-proxy`` command line: ``main(argv) -> exit status``.

Each command group lives in its own module and adds its sub-commands through ``register``; a
handler takes the parsed arguments and returns the exit status (0 ok, 1 a finding such as a
blocked input, 2 usage or configuration errors).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from proxy import __version__
from proxy.cli import check, flags, serve
from proxy.errors import ConfigError

EXIT_OK = 0
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cart-link-proxy",
        description="Enforce the cart link policy: check links, run the proxy, manage rollout flags.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (check, serve, flags):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    return status
