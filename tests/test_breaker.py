"""proxy.breaker: the state machine (table-driven, fake clock) and the guard (real Redis)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.breaker import CircuitBreaker, CircuitState, RedisGuard
from proxy.errors import CacheUnavailable

if TYPE_CHECKING:
    from tests.fixtures_redis import RedisServer



class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class RecordingMetrics:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.states: list[tuple[str, str]] = []

    def observe_redis_error(self, *, operation: str) -> None:
        self.errors.append(operation)

    def set_circuit_state(self, *, name: str, state: str) -> None:
        self.states.append((name, state))


CL, OP, HO = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN

# Each step: an event ("ok", "fail", "wait <seconds>", "allow", "deny") and the state after it.
SCENARIOS = {
    "stays-closed-below-threshold": [("fail", CL), ("fail", CL), ("ok", CL), ("fail", CL),
                                     ("fail", CL)],
    "opens-at-threshold": [("fail", CL), ("fail", CL), ("fail", OP), ("deny", OP)],
    "half-open-after-cool-down": [("fail", CL), ("fail", CL), ("fail", OP), ("wait 4.9", OP),
                                  ("deny", OP), ("wait 0.1", HO)],
    "probe-success-closes": [("fail", CL), ("fail", CL), ("fail", OP), ("wait 5", HO),
                             ("allow", HO), ("ok", CL), ("allow", CL)],
    "probe-failure-reopens": [("fail", CL), ("fail", CL), ("fail", OP), ("wait 5", HO),
                              ("allow", HO), ("fail", OP), ("wait 4", OP), ("deny", OP),
                              ("wait 1", HO)],
    "one-probe-at-a-time": [("fail", CL), ("fail", CL), ("fail", OP), ("wait 5", HO),
                            ("allow", HO), ("deny", HO), ("ok", CL)],
    "success-resets-count": [("fail", CL), ("fail", CL), ("ok", CL), ("fail", CL), ("fail", CL),
                             ("fail", OP)],
}


@pytest.mark.parametrize("steps", list(SCENARIOS.values()), ids=list(SCENARIOS))
def test_state_machine(steps):
    clock = FakeClock()
    metrics = RecordingMetrics()
    breaker = CircuitBreaker(clock=clock, failure_threshold=3, reset_after=5.0, metrics=metrics)
    for event, expected in steps:
        if event == "ok":
            breaker.record_success()
        elif event == "fail":
            breaker.record_failure()
        elif event.startswith("wait"):
            clock.now += float(event.split()[1])
        elif event == "allow":
            assert breaker.allow()
        elif event == "deny":
            assert not breaker.allow()
        assert breaker.state is expected, (event, steps)
    assert metrics.states[0] == ("redis", "closed")


def test_metrics_see_every_transition():
    clock = FakeClock()
    metrics = RecordingMetrics()
    breaker = CircuitBreaker(clock=clock, failure_threshold=1, reset_after=1, metrics=metrics)
    breaker.record_failure()
    clock.now += 1
    assert breaker.allow()
    breaker.record_success()
    assert [s for _, s in metrics.states] == ["closed", "open", "half_open", "closed"]


@pytest.mark.parametrize(("options", "message"), [
    ({"failure_threshold": 0}, "failure_threshold"),
    ({"reset_after": 0}, "reset_after"),
], ids=["threshold", "reset"])
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        CircuitBreaker(clock=FakeClock(), **options)


async def test_guard_passes_results_and_counts_nothing(redis_server: RedisServer):
    client = Redis.from_url(redis_server.url)
    metrics = RecordingMetrics()
    guard = RedisGuard(CircuitBreaker(clock=FakeClock()), metrics=metrics)
    try:
        assert await guard.call("ping", client.ping) is True
    finally:
        await client.aclose()
    assert metrics.errors == []


async def test_guard_translates_a_dead_redis_and_fails_fast(redis_server: RedisServer):
    client = Redis.from_url(redis_server.url, socket_connect_timeout=0.05)
    clock = FakeClock()
    metrics = RecordingMetrics()
    breaker = CircuitBreaker(clock=clock, failure_threshold=2, reset_after=1.0)
    guard = RedisGuard(breaker, metrics=metrics)
    redis_server.stop()
    try:
        for _ in range(2):
            with pytest.raises(CacheUnavailable) as caught:
                await guard.call("get", lambda: client.get("k"))
            assert isinstance(caught.value.__cause__, RedisConnectionError | OSError)
        assert breaker.state is CircuitState.OPEN
        with pytest.raises(CacheUnavailable, match="circuit redis is open"):
            await guard.call("get", lambda: client.get("k"))
        assert metrics.errors == ["get", "get"]  # the fast failure is not a Redis error
        redis_server.start()
        clock.now += 1.0
        assert await guard.call("set", lambda: client.set("k", b"v")) is True
        assert breaker.state is CircuitState.CLOSED
    finally:
        await client.aclose()


async def test_guard_times_out_a_slow_redis(redis_server: RedisServer):
    client = Redis.from_url(redis_server.url)
    guard = RedisGuard(CircuitBreaker(clock=FakeClock()), timeout=0.05)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        with pytest.raises(CacheUnavailable) as caught:
            # DEBUG SLEEP blocks the server for 0.3 s: far longer than the 50 ms budget.
            await guard.call("sleep", lambda: client.execute_command("DEBUG", "SLEEP", "0.3"))
        assert isinstance(caught.value.__cause__, TimeoutError)
        assert loop.time() - started < 0.2
    finally:
        await asyncio.sleep(0.35)
        await client.aclose()
