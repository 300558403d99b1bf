"""Running the proxy: sites, workers, signals and the graceful drain.

One worker (the default) serves in this process. ``--workers N`` starts N worker processes
(``spawn``), each binding the same port with ``SO_REUSEPORT`` so the kernel spreads connections;
the parent only forwards SIGTERM/SIGINT and waits. Each worker has its own metrics registry and
serves ``/metrics``, ``/healthz`` and ``/readyz`` on ``metrics_port + index`` (worker 0 on
``metrics_port``; 0 disables the ops port). The admin API, when configured (``admin_port`` and
``CART_PROXY_ADMIN_TOKEN``), is served by worker 0 only, on ``admin_port``: its state is in Redis,
so one endpoint is enough, and the port cannot collide with a worker's metrics port (``Settings``
refuses an admin port inside ``metrics_port .. metrics_port + workers - 1``).

SIGTERM (or SIGINT): readiness turns false, the listening socket closes (no new connections),
idle keep-alive connections close, in-flight requests get ``grace_period`` seconds to finish,
then the upstream session closes and the process exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.app import create_admin, create_app, create_ops_app
from proxy.config import Settings, load_settings
from proxy.logs import configure_logging
from proxy.services import SERVICES, system_clock

__all__ = ["event_loop_runner", "run", "serve"]

_log: Final = logging.getLogger("cart_link_proxy.server")


def event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # uvloop does not exist on Windows
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


async def serve(
    settings: Settings,
    *,
    index: int = 0,
    reuse_port: bool = False,
    on_ready: Callable[[], None] | None = None,
    app: web.Application | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain (see the module docstring)."""
    if app is None:
        app = create_app(settings, clock=system_clock, registry=CollectorRegistry())
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=settings.grace_period)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None,
                      backlog=1024).start()
    ops: web.AppRunner | None = None
    if settings.metrics_port:
        ops = web.AppRunner(create_ops_app(app), handle_signals=False, access_log=None)
        await ops.setup()
        await web.TCPSite(ops, settings.host, settings.metrics_port + index).start()
    admin: web.AppRunner | None = None
    if settings.admin_port and index == 0:
        admin = web.AppRunner(create_admin(app), handle_signals=False, access_log=None)
        await admin.setup()
        await web.TCPSite(admin, settings.host, settings.admin_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Everything built so far (policy, suffix trie, compiled routes, the app) lives as long as the
    # process: moving it out of the collector's generations keeps each full collection to the
    # objects requests create (see proxy.core.engine.DEFAULT_MEMO_SIZE for the measurements).
    gc.collect()
    gc.freeze()
    _log.info("worker %d serving on http://%s:%d -> %s", index, settings.host, settings.port,
              settings.upstream)
    if on_ready is not None:
        on_ready()
    await stop.wait()
    app[SERVICES].health.draining = True
    _log.info("worker %d draining (grace period %.1fs)", index, settings.grace_period)
    if admin is not None:  # before the proxy app, whose cleanup stops the flag store it uses
        await admin.cleanup()
    await runner.cleanup()
    if ops is not None:
        await ops.cleanup()
    _log.info("worker %d stopped", index)


def _worker(path: str | None, overrides: Mapping[str, Any], index: int) -> None:
    settings = load_settings(path, overrides=overrides)
    configure_logging(settings.log_level)
    with event_loop_runner() as runner:
        runner.run(serve(settings, index=index, reuse_port=True))


def run(settings: Settings, *, path: str | None = None,
        overrides: Mapping[str, Any] | None = None) -> int:
    """Run ``settings.workers`` workers until a signal; the exit status."""
    if settings.workers == 1:
        with event_loop_runner() as runner:
            runner.run(serve(settings))
        return 0
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(path, dict(overrides or {}), i),
                        name=f"cart-link-proxy-worker-{i}")
        for i in range(settings.workers)
    ]
    for process in workers:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        for process in workers:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in workers:
        process.join()
    failed = [p.exitcode for p in workers if p.exitcode not in (0, -signal.SIGTERM)]
    if failed:
        print(f"cart-link-proxy: worker exit codes {failed}", file=sys.stderr)
        return 1
    return 0
