"""Throughput and latency of cart-link-proxy against a bare aiohttp pass-through proxy.

Run from the repository root:  python bench/proxy_bench.py [--seconds 5] [--long 20]

Starts, each as its own process on 127.0.0.1: an upstream cart stub, a minimal ~30-line aiohttp
pass-through proxy (the baseline peer, ``--role minimal`` below), and ``cart-link-proxy serve``.
Drives them with ``wrk`` (POST bodies from a Lua script): short-video cart writes carrying 10
and 100 JD links (allowed after the cutoff, so every request is inspected and forwarded), in two
variants: a *repeated cart* (the same cart re-posted, as a seller editing a cart does: the
engine's memo answers) and *unique links* (every request carries item URLs never seen before,
generated in Lua from a per-run base, so every link takes the engine's cold path). Prints req/s,
ratios against the minimal proxy, p99 at a low fixed concurrency, the proxy's RSS over a long
unique-links run (the memo fills to its bound, then must stay flat), and throughput with
``--workers 1`` and ``2``. Bounded: every run has a fixed duration, and every process started
here is stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

HOST = "127.0.0.1"
PATH = "/v1/videos/v1/cart/items"


# --- the processes under test ------------------------------------------------------------
def run_upstream(port: int) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    app = web.Application(client_max_size=2**24)
    app.router.add_route("*", "/{tail:.*}", handle)
    _run(app, port)


def run_minimal(port: int, upstream: str) -> None:
    """The baseline peer: the smallest reasonable aiohttp reverse proxy (about 30 lines)."""
    import aiohttp
    from aiohttp import web

    hop = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host",
           "proxy-connection", "trailer", "content-length"}

    async def session_ctx(app: web.Application) -> Any:
        app["s"] = aiohttp.ClientSession(auto_decompress=False)
        yield
        await app["s"].close()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        async with request.app["s"].request(request.method, upstream + request.raw_path,
                                            headers=headers, data=body) as r:
            data = await r.read()
            out = {k: v for k, v in r.headers.items() if k.lower() not in hop}
            return web.Response(status=r.status, body=data, headers=out)

    app = web.Application(client_max_size=2**24)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    _run(app, port)


def _run(app: Any, port: int) -> None:
    import uvloop
    from aiohttp import web

    uvloop.install() if sys.version_info < (3, 12) else None
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


# --- the driver ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


def body(links: int) -> bytes:
    items = [{"item_id": str(i), "title": f"京东好物 {i} 限时特价",
              "url": f"https://item.jd.com/{100012043978 + i}.html", "price": "99.00"}
             for i in range(links)]
    return orjson.dumps({"seller_id": "s1", "items": items})


def lua(payload: bytes, directory: str) -> str:
    path = Path(directory) / f"post{len(payload)}.lua"
    escaped = payload.decode().replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(f'wrk.method = "POST"\nwrk.body = "{escaped}"\n'
                    'wrk.headers["Content-Type"] = "application/json"\n'
                    'wrk.headers["X-Seller-Id"] = "s1"\n', encoding="utf-8")
    return str(path)


_UNIQUE_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Seller-Id"] = "s1"
local n, base, counter = %(links)d, %(base)d, 0
request = function()
  counter = counter + 1
  local items = {}
  for i = 1, n do
    items[i] = string.format(
      '{"item_id":"%%d","title":"京东好物 %%d 限时特价","url":"https://item.jd.com/%%d.html","price":"99.00"}',
      i - 1, i - 1, base + counter * n + i)
  end
  return wrk.format(nil, nil, nil, '{"seller_id":"s1","items":[' .. table.concat(items, ",") .. ']}')
end
"""


class UniqueScripts:
    """Lua scripts whose every request carries item URLs no earlier request (in this run of the
    bench) carried: each script gets a fresh base far from the others'."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.made = 0

    def __call__(self, links: int) -> str:
        self.made += 1
        path = self.directory / f"unique{self.made}.lua"
        base = 200_000_000_000 + self.made * 10_000_000_000
        path.write_text(_UNIQUE_LUA % {"links": links, "base": base}, encoding="utf-8")
        return str(path)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, script: str, seconds: int, connections: int = 32, threads: int = 1,
        pid: int | None = None) -> dict[str, float]:
    """wrk's req/s, non-2xx count and latency percentiles; with ``pid``, also the CPU time that
    process spent per request (``cpu_us``), which other load on the machine barely moves."""
    before = cpu_seconds(pid) if pid is not None else 0.0
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
         "-s", script, f"http://{HOST}:{port}{PATH}"],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result = {"rps": rps, "non2xx": float(errors[1]) if errors else 0.0}
    if pid is not None:
        done = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
        result["cpu_us"] = (cpu_seconds(pid) - before) / max(done, 1) * 1e6
    for pct in ("50", "99"):
        match = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if match:
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]
            result[f"p{pct}_ms"] = float(match[1]) * scale
    return result


def rss_mib(pid: int) -> float:
    total = 0.0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)],
                                                     capture_output=True, text=True).stdout.split()]
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


class Fleet:
    """Every process this run started, stopped by pid at the end."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], port: int, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(args, env={**os.environ, **(env or {})},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(process)
        wait_port(port)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        for process in self.processes:
            self.stop(process)


def proxy_command(port: int, upstream: int, workers: int) -> list[str]:
    script = shutil.which("cart-link-proxy")
    base = [script] if script else [sys.executable, "-m", "proxy"]
    return [*base, "serve", "--upstream", f"http://{HOST}:{upstream}", "--port", str(port),
            "--workers", str(workers), "--metrics-port", "0"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=["driver", "upstream", "minimal"], default="driver")
    parser.add_argument("--port", type=int)
    parser.add_argument("--upstream")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--long", type=int, default=20)
    args = parser.parse_args()
    if args.role == "upstream":
        run_upstream(args.port)
        return 0
    if args.role == "minimal":
        run_minimal(args.port, args.upstream)
        return 0
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    fleet = Fleet()
    me = [sys.executable, __file__]
    env = {"CART_PROXY_LOG_LEVEL": "WARNING"}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            up, mini, prox = free_port(), free_port(), free_port()
            fleet.start([*me, "--role", "upstream", "--port", str(up)], up)
            minimal = fleet.start([*me, "--role", "minimal", "--port", str(mini),
                                   "--upstream", f"http://{HOST}:{up}"], mini)
            proxy = fleet.start(proxy_command(prox, up, 1), prox, env)
            scripts = {n: lua(body(n), tmp) for n in (10, 100)}
            unique = UniqueScripts(tmp)
            s = args.seconds
            for port in (up, mini, prox):  # warm-up: pools, memo caches
                wrk(port, scripts[10], 1)
                wrk(port, scripts[100], 1)
            wrk(prox, unique(100), 1)
            rows: list[tuple[str, dict[str, float]]] = []
            ratios: dict[str, tuple[float, float]] = {}
            unrouted = f"{tmp}/unrouted.lua"
            Path(unrouted).write_text(Path(scripts[10]).read_text(encoding="utf-8")
                                      + 'wrk.path = "/unrouted/items"\n', encoding="utf-8")
            cases = [(f"{n} links", scripts[n], f"repeated cart, {n} links") for n in (10, 100)]
            cases += [(f"{n} unique", unique(n), f"unique links, {n} links") for n in (10, 100)]
            cases.append(("unrouted", unrouted, "unrouted (no inspection)"))
            for label, script, ratio_name in cases:
                if not label.endswith("unique") and label != "unrouted":
                    rows.append((f"direct upstream, {label}", wrk(up, script, s)))
                base = wrk(mini, script, s, pid=minimal.pid)
                rows.append((f"minimal proxy, {label}", base))
                ours = wrk(prox, script, s, pid=proxy.pid)
                rows.append((f"cart-link-proxy, {label}", ours))
                ratios[ratio_name] = (ours["rps"] / base["rps"], base["cpu_us"] / ours["cpu_us"])
            print(f"\n{'target':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
                  f"{'CPU us/req':>10}")
            for name, r in rows:
                cpu = f"{r['cpu_us']:10.0f}" if "cpu_us" in r else f"{'':10}"
                print(f"{name:34} {r['rps']:9.0f} {r.get('p50_ms', 0):8.2f} "
                      f"{r.get('p99_ms', 0):8.2f} {r['non2xx']:8.0f} {cpu}")
            print("\nratio vs minimal proxy (targets: >= 0.9 at 10 links, >= 0.7 at 100 links);")
            print("by req/s, and by CPU per request (minimal's / ours: steadier on a busy machine):")
            for name, (by_rps, by_cpu) in ratios.items():
                print(f"  {name:28} {by_rps:.2f}x req/s   {by_cpu:.2f}x CPU")
            low_mini = wrk(mini, scripts[10], s, connections=2)
            low_prox = wrk(prox, scripts[10], s, connections=2)
            print(f"p99 at low load (2 connections, 10 links): minimal "
                  f"{low_mini.get('p99_ms', 0):.2f} ms, cart-link-proxy "
                  f"{low_prox.get('p99_ms', 0):.2f} ms, added "
                  f"{low_prox.get('p99_ms', 0) - low_mini.get('p99_ms', 0):+.2f} ms "
                  f"(target <= 1 ms)")
            half = max(args.long // 2, 1)
            before = rss_mib(proxy.pid)
            first = wrk(prox, unique(100), half)
            middle = rss_mib(proxy.pid)
            second = wrk(prox, unique(100), half)
            after = rss_mib(proxy.pid)
            total = (first["rps"] + second["rps"]) * half
            print(f"RSS over a {2 * half}s unique-links run ({total:.0f} requests, "
                  f"{total * 100:.0f} new links): {before:.1f} MiB -> {middle:.1f} MiB "
                  f"(memo filling) -> {after:.1f} MiB")
            fleet.stop(proxy)
            prox2 = free_port()
            two = fleet.start(proxy_command(prox2, up, 2), prox2, env)
            time.sleep(1.0)  # both workers bound
            wrk(prox2, scripts[10], 1)
            r2 = wrk(prox2, scripts[10], s, threads=2, connections=64)
            r1 = rows[2][1]  # the same load on one worker: repeated cart, 10 links
            print(f"workers: 1 -> {r1['rps']:.0f} req/s, 2 -> {r2['rps']:.0f} req/s "
                  f"({r2['rps'] / r1['rps']:.2f}x; {os.cpu_count()} CPUs shared with wrk and "
                  "the upstream)")
            fleet.stop(two)
    finally:
        fleet.close()
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())
