"""Liveness and readiness: ``/healthz`` answers while the process runs, ``/readyz`` only while
it accepts traffic (503 once SIGTERM has started the drain, so a balancer stops sending).

They are served on the metrics port (see ``proxy.server``), never on the proxied port, where
every path belongs to the cart service.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["HEALTH", "Health", "add_health_routes"]


class Health:
    """The process's draining flag, set once by the shutdown path."""

    __slots__ = ("draining",)

    def __init__(self) -> None:
        self.draining = False


HEALTH = web.AppKey("cart_link_proxy.health", Health)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[HEALTH].draining:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ready"})


def add_health_routes(app: web.Application, health: Health) -> None:
    app[HEALTH] = health
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
