"""The real console script: ``serve`` drains on SIGTERM, ``demo`` starts and answers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tests.local import console_command, free_port, wait_http


@asynccontextmanager
async def _process(*args: str, env: dict[str, str] | None = None
                   ) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        *console_command(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_sigterm_finishes_in_flight_requests(aiohttp_server: Any) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(text="done")

    app = web.Application()
    app.router.add_get("/slow", slow)
    upstream = await aiohttp_server(app)
    port, metrics_port = free_port(), free_port()
    async with _process("serve", "--upstream", str(upstream.make_url("/")), "--port", str(port),
                        "--metrics-port", str(metrics_port),
                        env={"CART_PROXY_GRACE_PERIOD": "5"}) as process:
        await wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
        async with aiohttp.ClientSession() as session:
            in_flight = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/slow"))
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            async with session.get(f"http://127.0.0.1:{metrics_port}/readyz") as ready:
                assert ready.status == 503
            response = await in_flight
            assert response.status == 200
            assert await response.text() == "done"
            response.release()
        assert await asyncio.wait_for(process.wait(), 10) == 0
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            pass  # refused: nothing listens any more
        else:
            writer.close()
            raise AssertionError("the port still accepts connections")


async def test_demo_starts_and_answers() -> None:
    port = free_port()
    while True:  # the demo cart takes port + 1
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            port = free_port()
    async with _process("demo", "--port", str(port)) as process:
        assert process.stdout is not None
        banner = await asyncio.wait_for(process.stdout.readline(), 15)
        assert b"cart-link-proxy demo" in banner
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            items = {"items": [{"item_id": "1", "title": "t",
                                "url": "https://item.taobao.com/item.htm?id=1"}]}
            async with session.post(f"{base}/v1/live/r1/cart/items", json=items) as response:
                assert response.status == 422
            items["items"][0]["url"] = "https://item.jd.com/1.html"
            async with session.post(f"{base}/v1/videos/v1/cart/items", json=items) as response:
                assert response.status == 201
            async with session.get(f"{base}/v1/live/r1/cart") as response:
                cart = orjson.loads(await response.read())
                assert "notice/external-link" in cart["items"][0]["url"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
