"""The admin HTTP API, served on its own port and only when configured.

Every request needs ``Authorization: Bearer <token>``; the token is compared in constant time
(``hmac.compare_digest``) and a missing or wrong one is answered 401 problem+json before any
handler runs, so nothing is read or changed. Flag changes go through the same ``FlagAdmin``
methods as ``cart-link-proxy flags`` (``proxy.flags.RedisFlagStore``), so the audit log records
both alike; the actor is the ``actor`` field of the body, else the ``X-Actor`` header, else
``admin-api``.

Without Redis the flags are the policy file's (``StaticFlags``): ``GET /flags`` and ``POST
/explain`` still answer, and every change is a 503 ``flag-store-unavailable`` problem, since there
is nowhere the fleet would read it from.

    GET  /flags                  the effective flags, their source, the revision, the latest audit
    PUT  /flags/rollout          {"surface"?, "rule"?, "mode", "percent"}
    POST /flags/allow|force|unlist  {"sellers": [...]}
    PUT  /flags/kill             {"on": true|false}
    POST /explain                {"text", "surface", "at"?, "direction"?, "seller"?}
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

import orjson
from aiohttp import web

from proxy import problem
from proxy.core.explain import decision_record
from proxy.core.model import Decision, Direction, RuleId, SurfaceId
from proxy.errors import (
    ClientFacingError,
    FlagStoreUnavailable,
    InvalidFlagChange,
    MalformedJSON,
    Unauthorized,
)
from proxy.flags import FlagAdmin, FlagSource

__all__ = ["Explainer", "create_admin_app"]

Clock = Callable[[], datetime]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_MAX_BODY = 64 * 1024


class Explainer(Protocol):
    """``proxy.core.engine.Engine`` as the admin API uses it."""

    def decide(
        self, text: str, surface: SurfaceId, at: datetime, direction: Direction = ...
    ) -> Decision: ...


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        data = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MalformedJSON("request body must be a JSON object")
    return data


def _actor(request: web.Request, body: dict[str, Any]) -> str:
    actor = body.get("actor") or request.headers.get("X-Actor") or "admin-api"
    return str(actor)[:64]


def create_admin_app(
    *, flags: FlagSource, engine: Explainer, token: str, clock: Clock
) -> web.Application:
    """The admin application; ``token`` must be non-empty (the API is off without one).

    ``flags`` is changed through when it is a ``FlagAdmin`` (``RedisFlagStore``); any other
    ``FlagSource`` is read-only and changes answer 503.
    """
    if not token:
        raise ValueError("the admin API needs a non-empty bearer token")
    expected = token.encode()
    store = flags if isinstance(flags, FlagAdmin) else None

    def writable() -> FlagAdmin:
        if store is None:
            raise FlagStoreUnavailable(
                "the flags come from the policy file (no REDIS_URL): edit the file's rollout "
                "section, or run the fleet with Redis to change them here"
            )
        return store

    @web.middleware
    async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            presented = request.headers.get("Authorization", "")
            scheme, _, credential = presented.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                credential.strip().encode(), expected
            ):
                raise Unauthorized("a valid bearer token is required")
            return await handler(request)
        except ClientFacingError as error:
            response = problem.render(error, instance=request.path)
            if isinstance(error, Unauthorized):
                response.headers["WWW-Authenticate"] = 'Bearer realm="cart-link-proxy admin"'
            return response

    async def show(request: web.Request) -> web.Response:
        count = request.query.get("audit", "20")
        if not count.isdigit() or not 0 < int(count) <= 1000:
            raise InvalidFlagChange("audit must be a count from 1 to 1000")
        entries = await store.audit(int(count)) if store is not None else []
        return _json({
            "source": "redis" if store is not None else "policy",
            "revision": store.revision if store is not None else None,
            "flags": flags.snapshot().to_json(),
            "audit": [
                {"id": e.id, "actor": e.actor, "at": e.at, "action": e.action,
                 "detail": e.detail}
                for e in entries
            ],
        })

    async def set_rollout(request: web.Request) -> web.Response:
        body = await _body(request)
        if "mode" not in body or "percent" not in body:
            raise InvalidFlagChange("give mode and percent (and surface and/or rule)")
        revision = await writable().set_flag(
            surface=body.get("surface") or None,
            rule=body.get("rule") or None,
            mode=str(body["mode"]),
            percent=body["percent"],
            actor=_actor(request, body),
        )
        return _json({"revision": revision, "flags": flags.snapshot().to_json()})

    async def sellers(request: web.Request) -> web.Response:
        body = await _body(request)
        names = body.get("sellers")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidFlagChange('give "sellers" as a list of seller ids')
        revision = await writable().list_sellers(
            request.match_info["which"], names, actor=_actor(request, body)
        )
        return _json({"revision": revision, "flags": flags.snapshot().to_json()})

    async def kill(request: web.Request) -> web.Response:
        body = await _body(request)
        if not isinstance(body.get("on"), bool):
            raise InvalidFlagChange('give "on": true or false')
        revision = await writable().set_kill_switch(body["on"], actor=_actor(request, body))
        return _json({"revision": revision, "flags": flags.snapshot().to_json()})

    async def explain(request: web.Request) -> web.Response:
        body = await _body(request)
        text, surface = body.get("text"), body.get("surface")
        if not isinstance(text, str) or not isinstance(surface, str):
            raise MalformedJSON('give "text" and "surface" as strings')
        at = clock()
        if body.get("at") is not None:
            try:
                at = datetime.fromisoformat(str(body["at"]))
            except ValueError as exc:
                raise MalformedJSON(f'"at" is not an ISO 8601 instant: {exc}') from exc
            if at.utcoffset() is None:
                raise MalformedJSON('"at" needs a UTC offset, e.g. 2022-03-01T00:00:00+08:00')
        try:
            direction = Direction(body.get("direction", "request"))
        except ValueError as exc:
            raise MalformedJSON('"direction" is request or response') from exc
        decision = engine.decide(text, SurfaceId(surface), at, direction)
        record = decision_record(text, SurfaceId(surface), at, decision)
        seller = body.get("seller")
        snapshot = flags.snapshot()
        record["direction"] = direction.value
        record["rollout"] = {
            "kill_switch": snapshot.kill_switch,
            "modes": {
                rule: snapshot.mode_for(RuleId(rule), SurfaceId(surface),
                                        str(seller) if seller is not None else None).value
                for rule in sorted({v.rule for v in decision.verdicts if v.rule})
            },
        }
        return _json(record)

    app = web.Application(middlewares=[problems], client_max_size=_MAX_BODY)
    app.router.add_get("/flags", show)
    app.router.add_put("/flags/rollout", set_rollout)
    app.router.add_post("/flags/{which:allow|force|unlist}", sellers)
    app.router.add_put("/flags/kill", kill)
    app.router.add_post("/explain", explain)
    return app
