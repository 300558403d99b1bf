"""Local processes and ports for end-to-end tests: the console script, free loopback ports,
and waiting for a server to answer."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys

import aiohttp


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


async def wait_http(url: str, *, within: float = 20.0) -> None:
    """Wait until ``url`` answers with anything but a 5xx; ``TimeoutError`` after ``within`` s."""
    deadline = asyncio.get_running_loop().time() + within
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(url)
            await asyncio.sleep(0.1)
