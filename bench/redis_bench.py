"""Redis vs local computation: the numbers behind what ``proxy.cache`` caches where.

    python bench/redis_bench.py [--redis-url URL] [--rounds N]

Without ``--redis-url`` (or ``REDIS_URL``) it starts a throw-away ``redis-server`` on a free
loopback port. It prints:

1. the loopback MGET round trip (p50/p99) for 10 and 100 keys, through ``RedisCache`` and its
   guard, as a request would pay it;
2. the local engine's decision time for a typical cart item, fresh (nothing memoised) and memoised;
3. Redis round trips per request for ``TieredCache`` under a skewed link mix (MGETs and pipelined
   writes, read from the server's ``INFO commandstats``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.breaker import CircuitBreaker, RedisGuard
from proxy.cache import LocalCache, RedisCache, TieredCache, cache_key
from proxy.core.model import SurfaceId
from proxy.tasks import Tasks


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fmt(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} µs"


def start_server(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", directory], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(500):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.01)
    return process, f"redis://127.0.0.1:{port}/0"


async def mget_latency(url: str, rounds: int) -> None:
    client = Redis.from_url(url, socket_timeout=0.05)
    cache = RedisCache(client, RedisGuard(CircuitBreaker(clock=time.monotonic)))
    try:
        for size in (10, 100):
            keys = [cache_key("bench", f"https://t.cn/{size}-{i}") for i in range(size)]
            await cache.set_many({k: b"https://item.taobao.com/item.htm?id=1" for k in keys}, 60)
            for _ in range(50):
                await cache.get_many(keys)  # warm the connection
            samples = []
            for _ in range(rounds):
                started = time.perf_counter()
                await cache.get_many(keys)
                samples.append(time.perf_counter() - started)
            print(f"redis MGET {size:3d} keys   p50 {fmt(statistics.median(samples))}   "
                  f"p99 {fmt(percentile(samples, 0.99))}")
    finally:
        await client.aclose()


def engine_latency(rounds: int) -> None:
    try:
        from proxy.policyfile import build_engine, load_policy
    except ImportError as exc:  # the engine lands separately; report, do not fail
        print(f"engine: not available ({exc})")
        return
    engine = build_engine(load_policy())
    surface = SurfaceId("livestream_cart")
    at = datetime(2022, 3, 2, tzinfo=UTC)
    texts = [f"新品 https://item.taobao.com/item.htm?id={i} 限时 " for i in range(rounds)]
    fresh = []
    for text in texts:
        t0 = time.perf_counter()
        engine.decide(text, surface, at)
        fresh.append(time.perf_counter() - t0)
    memo = []
    for text in texts[:1000]:
        t0 = time.perf_counter()
        engine.decide(text, surface, at)
        memo.append(time.perf_counter() - t0)
    print(f"engine decide (fresh)  p50 {fmt(statistics.median(fresh))}   "
          f"p99 {fmt(percentile(fresh, 0.99))}")
    print(f"engine decide (memo)   p50 {fmt(statistics.median(memo))}   "
          f"p99 {fmt(percentile(memo, 0.99))}")


async def round_trips(url: str, requests: int) -> None:
    client = Redis.from_url(url, socket_timeout=0.05)
    stats = Redis.from_url(url)
    tasks = Tasks()
    await client.flushdb()
    await stats.config_resetstat()
    cache = TieredCache(
        LocalCache(maxsize=10_000, clock=time.monotonic),
        RedisCache(client, RedisGuard(CircuitBreaker(clock=time.monotonic))),
        spawn=tasks.spawn,
    )
    rng = random.Random(7)
    population = [f"https://t.cn/{i}" for i in range(2_000)]
    weights = [1 / (i + 1) for i in range(len(population))]  # Zipf-like: a few hot links
    try:
        for _ in range(requests):
            links = rng.choices(population, weights, k=rng.randint(1, 5))
            keys = [cache_key("resolve", link) for link in links]
            found = await cache.get_many(keys)
            missing = {k: b"https://item.taobao.com/item.htm" for k in keys if k not in found}
            if missing:
                await cache.set_many(missing, 3600)
        await asyncio.sleep(0.1)  # let write-backs land
        info = await stats.info("commandstats")
        mgets = int(info.get("cmdstat_mget", {}).get("calls", 0))
        sets = int(info.get("cmdstat_set", {}).get("calls", 0))
        print(f"tiered cache: {requests} requests -> {mgets} MGET round trips "
              f"({mgets / requests:.3f} per request, at most 1), {sets} keys written back")
    finally:
        await tasks.aclose()
        await client.aclose()
        await stats.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--rounds", type=int, default=5000)
    args = parser.parse_args()
    process = None
    with tempfile.TemporaryDirectory() as directory:
        url = args.redis_url
        if not url:
            process, url = start_server(directory)
        try:
            await mget_latency(url, args.rounds)
            engine_latency(args.rounds)
            await round_trips(url, args.rounds)
        finally:
            if process is not None:
                process.kill()
                process.wait()


if __name__ == "__main__":
    asyncio.run(main())
