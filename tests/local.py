"""Local processes and ports for end-to-end tests: the console script and free loopback ports."""

from __future__ import annotations

import shutil
import socket
import sys


def console_command() -> list[str]:
    """How to run ``cart-link-proxy``: the installed console script, else ``python -m proxy``."""
    script = shutil.which("cart-link-proxy")
    return [script] if script else [sys.executable, "-m", "proxy"]


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
