"""``serve`` (run the proxy) and ``demo`` (the demo cart with the proxy in front of it)."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.app import create_app
from proxy.config import load_settings, settings_from_policy
from proxy.demo import create_demo_app
from proxy.errors import ConfigError
from proxy.logs import configure_logging
from proxy.policyfile import load_policy
from proxy.server import event_loop_runner, run, serve
from proxy.services import Clock, system_clock

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``serve`` and ``demo``."""
    parser = commands.add_parser(
        "serve", help="run the proxy in front of a cart service",
        description="Run the link-policy proxy. Precedence: policy file proxy: section, "
                    "then CART_PROXY_* environment variables, then these flags.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="policy file (default: $CART_PROXY_CONFIG, else the shipped one)")
    parser.add_argument("--upstream", metavar="URL", help="cart service origin")
    parser.add_argument("--host", metavar="H", help="listen address")
    parser.add_argument("--port", metavar="P", type=int, help="listen port")
    parser.add_argument("--workers", metavar="N", type=int, help="worker processes")
    parser.add_argument("--metrics-port", metavar="P", type=int,
                        help="metrics/health port of worker 0 (worker i: P + i; 0 = off)")
    parser.add_argument("--admin-port", metavar="P", type=int,
                        help="admin API port, served by worker 0 (needs $CART_PROXY_ADMIN_TOKEN; "
                             "0 = off)")
    parser.set_defaults(handler=_serve)

    demo = commands.add_parser(
        "demo", help="start the demo cart service with the proxy in front of it",
        description="Start an in-memory demo cart on PORT+1 and the proxy on PORT, with the "
                    "shipped policy, and print curl commands to try.",
    )
    demo.add_argument("--port", metavar="P", type=int, default=8080, help="proxy port")
    demo.add_argument("--host", metavar="H", default="127.0.0.1",
                      help="listen address of both (0.0.0.0 in a container)")
    demo.add_argument("--at", metavar="ISO8601",
                      help="pretend it is this instant, e.g. 2022-02-20T12:00:00+08:00")
    demo.set_defaults(handler=_demo)


def _serve(args: argparse.Namespace) -> int:
    overrides = {"host": args.host, "port": args.port, "upstream": args.upstream,
                 "workers": args.workers, "metrics_port": args.metrics_port,
                 "admin_port": args.admin_port}
    settings = load_settings(args.config, overrides=overrides)
    configure_logging(settings.log_level)
    return run(settings, path=args.config, overrides=overrides)


def _clock(at: str | None) -> Clock:
    if at is None:
        return system_clock
    try:
        instant = datetime.fromisoformat(at)
    except ValueError as exc:
        raise ConfigError(f"--at: not an ISO 8601 instant: {at!r}") from exc
    if instant.tzinfo is None:
        raise ConfigError(f"--at: {at!r} has no UTC offset (write e.g. +08:00)")
    return lambda: instant


def _instructions(port: int) -> str:
    base = f"http://127.0.0.1:{port}"
    json_h = "-H 'Content-Type: application/json' -H 'X-Seller-Id: s1'"
    return "\n".join([
        f"cart-link-proxy demo: proxy on {base}, demo cart on http://127.0.0.1:{port + 1}",
        "Try:",
        "  # a Taobao link in the live cart: blocked (422 problem+json)",
        f"  curl -i {json_h} -d '{{\"items\":[{{\"item_id\":\"1\",\"title\":\"t\","
        f"\"url\":\"https://item.taobao.com/item.htm?id=1\"}}]}}' "
        f"{base}/v1/live/r1/cart/items",
        "  # a JD link in the short-video cart: allowed, forwarded byte for byte",
        f"  curl -i {json_h} -d '{{\"items\":[{{\"item_id\":\"2\",\"title\":\"t\","
        f"\"url\":\"https://item.jd.com/100012043978.html\"}}]}}' "
        f"{base}/v1/videos/v1/cart/items",
        "  # a JD link in the live cart: blocked",
        f"  curl -i {json_h} -d '{{\"items\":[{{\"item_id\":\"3\",\"title\":\"t\","
        f"\"url\":\"https://u.jd.com/abc\"}}]}}' {base}/v1/live/r1/cart/items",
        "  # the live cart as viewers see it: the old Taobao link is rewritten",
        f"  curl -i {base}/v1/live/r1/cart",
        "  # a product page with a 淘口令 in its description: blocked",
        f"  curl -i -X PUT {json_h} -d '{{\"title\":\"x\",\"description\":"
        f"\"复制 ￥AbCdEfGh1234￥ 打开手机淘宝\"}}' {base}/v1/products/p2",
        "  # run with --at 2022-02-20T12:00:00+08:00 to see the pending-rule (Sunset) headers",
        "Stop with Ctrl-C.",
    ])


def _demo(args: argparse.Namespace) -> int:
    clock = _clock(args.at)
    policy = load_policy(None)
    settings = settings_from_policy(policy, env={}, overrides={
        "port": args.port, "upstream": f"http://127.0.0.1:{args.port + 1}", "metrics_port": 0,
        "host": args.host,
    })
    configure_logging("WARNING")

    async def main() -> None:
        cart = web.AppRunner(create_demo_app(), access_log=None)
        await cart.setup()
        await web.TCPSite(cart, args.host, args.port + 1).start()
        app = create_app(settings, clock=clock, registry=CollectorRegistry())
        try:
            await serve(settings, app=app,
                        on_ready=lambda: print(_instructions(args.port), flush=True))
        finally:
            await cart.cleanup()

    with event_loop_runner() as runner:
        runner.run(main())
    return 0
