"""Redis vs local computation: the numbers behind what ``proxy.cache`` caches where.

    python bench/redis_bench.py [--redis-url URL] [--rounds N] [--proxy-seconds S]

Without ``--redis-url`` (or ``REDIS_URL``) it starts a throw-away ``redis-server`` on a free
loopback port. It prints:

1. the loopback MGET round trip (p50/p99) for 10 and 100 keys, through ``RedisCache`` and its
   guard, as a request would pay it;
2. the local engine's decision time for a typical cart item, fresh (nothing memoised) and memoised;
3. Redis round trips per request for ``TieredCache`` under a skewed link mix (MGETs and pipelined
   writes, read from the server's ``INFO commandstats``);
4. proxy throughput with ``REDIS_URL`` set against the in-memory default (``cart-link-proxy
   serve``, one worker, driven by ``wrk`` through ``bench/proxy_bench.py``'s helpers) for three
   short-video cart loads — 10 JD links; 9 JD links and one hot short link; 9 JD links and a
   short link never seen before — with the Redis commands each request caused (``INFO
   commandstats`` before and after). Short links go to a loopback redirector this script starts,
   which the bench's policy copy lists as a shortener. Loopback only; every run is
   ``--proxy-seconds`` long (0 skips this part) and every process started is stopped.
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

from bench.proxy_bench import Fleet, free_port, wait_port, wrk
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


# --- proxy throughput with and without Redis -----------------------------------------------

_LOAD_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Seller-Id"] = "s1"
local short, base, counter = "%(short)s", %(base)d, 0
request = function()
  counter = counter + 1
  local items = {}
  for i = 1, 9 do
    items[i] = string.format('{"item_id":"%%d","title":"t","url":"https://item.jd.com/%%d.html"}',
                             i, 100012043978 + i)
  end
  local link = short
  if short == "" then
    link = "https://item.jd.com/100012043970.html"
  elseif string.sub(short, -1) == "/" then
    link = short .. (base + counter)
  end
  items[10] = '{"item_id":"10","title":"t","url":"' .. link .. '"}'
  return wrk.format(nil, nil, nil, '{"seller_id":"s1","items":[' .. table.concat(items, ",") .. ']}')
end
"""


def run_redirector(port: int) -> None:
    """A shortener on loopback: every path 302s to a JD item (allowed on the short-video cart)."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        item = 100012040000 + sum(map(ord, request.path)) % 1000
        return web.Response(status=302, headers={"Location": f"https://item.jd.com/{item}.html"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _commands(url: str) -> dict[str, int]:
    async def read() -> dict[str, int]:
        client = Redis.from_url(url)
        try:
            info = await client.info("commandstats")
        finally:
            await client.aclose()
        return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}

    return asyncio.run(read())


def _scrape(port: int) -> dict[str, float]:
    """Sums of the proxy's counters by metric name (labels summed away)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return sums


def proxy_throughput(url: str, seconds: int, directory: str, repeats: int = 2) -> None:
    me, bench = [sys.executable, __file__], str(Path(__file__).with_name("proxy_bench.py"))
    script = shutil.which("cart-link-proxy")
    serve = [script] if script else [sys.executable, "-m", "proxy"]
    text = Path("config/policy.yaml").read_text(encoding="utf-8")
    policy = Path(directory) / "policy.yaml"
    policy.write_text(text.replace("  shorteners: [t.cn,", "  shorteners: [127.0.0.1, t.cn,"),
                      encoding="utf-8")
    fleet = Fleet()
    try:
        up, redirector = free_port(), free_port()
        fleet.start([sys.executable, bench, "--role", "upstream", "--port", str(up)], up)
        fleet.start([*me, "--role", "redirector", "--port", str(redirector)], redirector)
        base = f"http://127.0.0.1:{redirector}/s/"
        loads = {"10 JD links": "", "9 JD + 1 hot short link": base + "hot",
                 "9 JD + 1 new short link": base}
        scripts = {}
        for index, (name, short) in enumerate(loads.items()):
            path = Path(directory) / f"load{index}.lua"
            path.write_text(_LOAD_LUA % {"short": short, "base": index * 10**9}, encoding="utf-8")
            scripts[name] = str(path)
        env = {"CART_PROXY_LOG_LEVEL": "WARNING", "CART_PROXY_RESOLVER_ALLOW_NETS": "127.0.0.0/8",
               "CART_PROXY_RESOLVER_ALLOW_PORTS": str(redirector), "REDIS_URL": ""}
        # Both proxies run side by side and the runs alternate, so drift on a shared machine
        # hits both modes alike; each row is the mean of ``repeats`` runs per mode.
        proxies = {}
        for mode, extra in (("in-memory", {}), ("redis", {"REDIS_URL": url})):
            port, ops = free_port(), free_port()
            fleet.start([*serve, "serve", "--config", str(policy), "--upstream",
                         f"http://127.0.0.1:{up}", "--port", str(port),
                         "--metrics-port", str(ops)], port, {**env, **extra})
            wait_port(ops)
            proxies[mode] = (port, ops)
        results: dict[tuple[str, str], tuple[float, dict[str, int]]] = {}
        for name, lua in scripts.items():
            for port, _ in proxies.values():
                wrk(port, lua, 1)  # warm-up: pools, memo, the hot link's cache entry
            for _ in range(repeats):
                for mode, (port, ops) in proxies.items():
                    before, counted = _commands(url), _scrape(ops)
                    result = wrk(port, lua, seconds)
                    after, scraped = _commands(url), _scrape(ops)
                    calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                    calls["info"] = 0
                    for key, metric in (("requests", "cart_link_proxy_requests_total"),
                                        ("errors", "cart_link_proxy_redis_errors_total")):
                        calls[key] = int(scraped.get(metric, 0) - counted.get(metric, 0))
                    if result["non2xx"]:
                        print(f"  warning: {mode} / {name}: {result['non2xx']:.0f} non-2xx")
                    rps, total = results.get((mode, name), (0.0, {}))
                    for key, value in calls.items():
                        total[key] = total.get(key, 0) + value
                    results[(mode, name)] = (rps + result["rps"] / repeats, total)
        print(f"\nproxy throughput, {repeats} x {seconds}s per mode and load, alternating; wrk 1 "
              "thread 32 connections; one worker each")
        print(f"{'load':26} {'in-memory':>10} {'redis':>10} {'ratio':>6} "
              f"{'MGET/req':>9} {'SET/req':>8} {'other/req':>9}")
        for name in loads:
            memory, _ = results[("in-memory", name)]
            rps, calls = results[("redis", name)]
            requests = max(calls.pop("requests"), 1)
            mget, sets = calls.pop("mget", 0), calls.pop("set", 0)
            errors = calls.pop("errors")
            other = sum(calls.values())  # the flag watcher's refreshes and pub/sub
            print(f"{name:26} {memory:10.0f} {rps:10.0f} {rps / memory:5.2f}x "
                  f"{mget / requests:9.3f} {sets / requests:8.3f} {other / requests:9.4f}"
                  f"   ({requests} requests, {errors} Redis errors)")
    finally:
        fleet.close()


async def measure(url: str, rounds: int) -> None:
    await mget_latency(url, rounds)
    engine_latency(rounds)
    await round_trips(url, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--proxy-seconds", type=int, default=5,
                        help="seconds per proxy throughput run (0: skip)")
    parser.add_argument("--role", choices=["driver", "redirector"], default="driver")
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.role == "redirector":
        run_redirector(args.port)
        return
    process = None
    with tempfile.TemporaryDirectory() as directory:
        url = args.redis_url
        if not url:
            process, url = start_server(directory)
        try:
            asyncio.run(measure(url, args.rounds))
            if args.proxy_seconds > 0:
                if shutil.which("wrk"):
                    proxy_throughput(url, args.proxy_seconds, directory)
                else:
                    print("proxy throughput: wrk is not installed (apt-get install wrk)")
        finally:
            if process is not None:
                process.kill()
                process.wait()


if __name__ == "__main__":
    main()
