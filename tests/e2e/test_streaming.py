"""Large bodies stream through without being held in memory; a vanished client leaks nothing.

These run the proxy on a real ``AppRunner`` (as ``serve`` does: no handler cancellation), in
front of the recording upstream, all in this process.
"""

from __future__ import annotations

import asyncio
import hashlib
import resource
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.app import create_app
from tests.conftest import fixed_clock

MIB = 1024 * 1024
SIZE = 160 * MIB
CHUNK = bytes(range(256)) * 256  # 64 KiB


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture
async def live_proxy(upstream: Any, engine: Any, make_settings: Any) -> AsyncIterator[Any]:
    _, server = upstream
    registry = CollectorRegistry()
    app = create_app(make_settings(upstream=server.make_url("/")), clock=fixed_clock("after"),
                     registry=registry, engine=engine)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", registry
    await runner.cleanup()


async def _generated(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // len(CHUNK)):
        yield CHUNK


def _expected_digest(size: int) -> str:
    digest = hashlib.sha256()
    for _ in range(size // len(CHUNK)):
        digest.update(CHUNK)
    return digest.hexdigest()


async def test_large_upload_and_download_stream(live_proxy: Any, upstream: Any) -> None:
    base, _ = live_proxy
    recorder, _ = upstream
    recorder.hashed_only = True

    async def download(request: web.Request, body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = SIZE
        await response.prepare(request)
        async for chunk in _generated(SIZE):
            await response.write(chunk)
        return response

    recorder.reply = download
    expected = _expected_digest(SIZE)
    rss_before = _max_rss_mib()
    async with (aiohttp.ClientSession() as session,
                session.put(f"{base}/media/upload", data=_generated(SIZE)) as response):
        assert response.status == 200
        digest = hashlib.sha256()
        received = 0
        async for chunk in response.content.iter_any():
            digest.update(chunk)
            received += len(chunk)
    assert recorder.digests == [(expected, SIZE)]
    assert received == SIZE
    assert digest.hexdigest() == expected
    # 160 MiB went each way; the high-water mark of this whole process barely moved.
    assert _max_rss_mib() - rss_before < 48


async def test_client_gone_mid_upload_leaks_nothing(live_proxy: Any, upstream: Any) -> None:
    base, registry = live_proxy
    port = int(base.rsplit(":", 1)[1])
    for path in ("/media/upload", "/v1/live/r1/cart/items"):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 1000000\r\n\r\n".encode() + b'{"items": [' + b" " * 5000)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        await writer.wait_closed()
    for _ in range(50):
        if registry.get_sample_value("cart_link_proxy_in_flight_requests") == 0:
            break
        await asyncio.sleep(0.05)
    assert registry.get_sample_value("cart_link_proxy_in_flight_requests") == 0
    async with aiohttp.ClientSession() as session, session.get(f"{base}/still/up") as response:
        assert response.status == 200
