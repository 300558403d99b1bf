"""Shared fixtures: the shipped policy, fixed clocks, a recording upstream, a fresh registry,
and ``make_proxy(**overrides)`` — the real proxy app in front of the recording upstream."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from proxy.app import create_app
from proxy.config import Limits, Settings, Timeouts, settings_from_policy
from proxy.core.engine import Engine
from proxy.core.policy import Policy
from proxy.policyfile import build_engine, load_policy
from proxy.services import Clock

# The Redis fixtures (a real redis-server on a free port) live in their own module; registering
# it here, at the root, lets pytest rewrite its asserts before any test module imports it.
pytest_plugins = ["tests.fixtures_redis"]

BEIJING = timezone(timedelta(hours=8))
CUTOFF = datetime(2022, 3, 1, tzinfo=BEIJING)
MOMENTS = {
    "before": CUTOFF - timedelta(days=3),
    "at": CUTOFF,
    "after": CUTOFF + timedelta(days=30),
}


@pytest.fixture(scope="session")
def policy() -> Policy:
    return load_policy("config/policy.yaml")


@pytest.fixture(scope="session")
def engine(policy: Policy) -> Engine:
    return build_engine(policy)


def fixed_clock(when: datetime | str) -> Clock:
    instant = MOMENTS[when] if isinstance(when, str) else when
    return lambda: instant


@pytest.fixture
def clock_at() -> Callable[[datetime | str], Clock]:
    """``clock_at("before" | "at" | "after" | datetime)`` -> a clock stopped there."""
    return fixed_clock


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@dataclass
class Received:
    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass
class Recorder:
    """What the upstream received, and how it should answer next."""

    requests: list[Received] = field(default_factory=list)
    reply: Callable[[web.Request, bytes], Awaitable[web.StreamResponse]] | None = None
    hashed_only: bool = False
    """For huge bodies: keep only a digest and a size, never the bytes."""
    digests: list[tuple[str, int]] = field(default_factory=list)

    @property
    def last(self) -> Received:
        return self.requests[-1]


async def _echo(request: web.Request, body: bytes) -> web.StreamResponse:
    return web.json_response({"ok": True, "path": request.path, "size": len(body)})


def recording_app(recorder: Recorder) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        if recorder.hashed_only:
            digest = hashlib.sha256()
            size = 0
            async for chunk in request.content.iter_any():
                digest.update(chunk)
                size += len(chunk)
            recorder.digests.append((digest.hexdigest(), size))
            body = b""
        else:
            body = await request.content.read()
        recorder.requests.append(Received(request.method, request.raw_path,
                                          CIMultiDict(request.headers), body))
        return await (recorder.reply or _echo)(request, body)

    app = web.Application(handler_args={"auto_decompress": False}, client_max_size=2**40)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Recorder, TestServer]:
    recorder = Recorder()
    server = await aiohttp_server(recording_app(recorder))
    return recorder, server


@pytest.fixture
def make_settings(policy: Policy) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        base = settings_from_policy(policy, env={})
        limits = overrides.pop("limits", {})
        timeouts = overrides.pop("timeouts", {})
        return replace(base, limits=replace(Limits(), **limits),
                       timeouts=replace(Timeouts(), **timeouts), **overrides)

    return build


@pytest.fixture
def make_proxy(
    aiohttp_client: Any,
    upstream: tuple[Recorder, TestServer],
    engine: Engine,
    registry: CollectorRegistry,
    make_settings: Callable[..., Settings],
) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    """``await make_proxy(at="after", **settings_overrides)`` -> a client of the real proxy."""
    _, server = upstream

    registries = [registry]

    async def build(at: datetime | str = "after", **overrides: Any) -> TestClient[Any, Any]:
        """The first proxy built reports to the ``registry`` fixture, later ones to their own."""
        overrides.setdefault("upstream", server.make_url("/"))
        extra = {k: overrides.pop(k) for k in ("flags", "resolver") if k in overrides}
        settings = make_settings(**overrides)
        metrics_registry = registries.pop() if registries else CollectorRegistry()
        app = create_app(settings, clock=fixed_clock(at), registry=metrics_registry,
                         engine=engine, **extra)
        client: TestClient[Any, Any] = await aiohttp_client(app)
        return client

    return build
