"""The circuit breaker around Redis, and the guard every Redis call on a request path goes through.

``CircuitBreaker`` is a small state machine over an injected monotonic clock::

    closed --(failure_threshold consecutive failures)--> open
    open   --(reset_after seconds pass)----------------> half_open   (one probe call allowed)
    half_open --(probe succeeds)--> closed;  half_open --(probe fails)--> open (cool-down restarts)

``RedisGuard.call`` runs one Redis operation under a short ``asyncio.timeout`` (50 ms by default),
fails fast with ``CacheUnavailable`` while the circuit is open, and translates
``redis.exceptions.RedisError``, ``OSError`` and timeouts into ``CacheUnavailable``
(``raise ... from exc``): the one place where Redis errors enter the project's exception tree.
Callers treat ``CacheUnavailable`` as a miss and compute locally, so no request waits on Redis
for long.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, TypeVar

from redis.exceptions import RedisError

from proxy.errors import CacheUnavailable

__all__ = ["BreakerMetrics", "CircuitBreaker", "CircuitState", "MonotonicClock", "RedisGuard"]

_T = TypeVar("_T")
_log = logging.getLogger("cart_link_proxy.redis")

DEFAULT_TIMEOUT: Final = 0.05
"""Seconds one Redis call on a request path may take before it counts as a failure."""

MonotonicClock = Callable[[], float]
"""Seconds on a monotonic scale (``time.monotonic`` in production, a fake in tests)."""


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerMetrics(Protocol):
    """The part of ``proxy.metrics.ProxyMetrics`` the breaker and guard report to."""

    def observe_redis_error(self, *, operation: str) -> None: ...

    def set_circuit_state(self, *, name: str, state: str) -> None: ...


class CircuitBreaker:
    """Counts consecutive failures and decides whether the next call may go to Redis."""

    def __init__(
        self,
        *,
        clock: MonotonicClock,
        name: str = "redis",
        failure_threshold: int = 5,
        reset_after: float = 2.0,
        metrics: BreakerMetrics | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if reset_after <= 0:
            raise ValueError(f"reset_after must be positive seconds, got {reset_after}")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self._clock = clock
        self._metrics = metrics
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        if metrics is not None:
            metrics.set_circuit_state(name=name, state=self._state.value)

    @property
    def state(self) -> CircuitState:
        """The current state; an open circuit whose cool-down has passed reads as half-open."""
        if (
            self._state is CircuitState.OPEN
            and self._clock() - self._opened_at >= self.reset_after
        ):
            self._move(CircuitState.HALF_OPEN)
        return self._state

    def allow(self) -> bool:
        """Whether a call may go ahead now; in half-open only one probe at a time may."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self._probing = False
        self._failures = 0
        if self._state is not CircuitState.CLOSED:
            self._move(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self._probing = False
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN or (
            self._state is CircuitState.CLOSED and self._failures >= self.failure_threshold
        ):
            self._opened_at = self._clock()
            self._move(CircuitState.OPEN)

    def release(self) -> None:
        """Forget a probe that ended without an outcome (the caller was cancelled)."""
        self._probing = False

    def _move(self, state: CircuitState) -> None:
        _log.warning(
            "circuit %s: %s -> %s", self.name, self._state.value, state.value,
            extra={"fields": {"circuit": self.name, "from": self._state.value,
                              "to": state.value}},
        )
        self._state = state
        if self._metrics is not None:
            self._metrics.set_circuit_state(name=self.name, state=state.value)


class RedisGuard:
    """Runs Redis calls through a breaker and a per-call timeout; failures become
    ``CacheUnavailable``."""

    def __init__(
        self,
        breaker: CircuitBreaker,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        metrics: BreakerMetrics | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout}")
        self.breaker = breaker
        self.timeout = timeout
        self._metrics = metrics

    async def call(self, operation: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """Await ``call()``; ``operation`` is a literal naming it for the error counter.

        Raises ``CacheUnavailable`` at once while the circuit is open, or when the call fails or
        takes longer than ``timeout`` seconds.
        """
        if not self.breaker.allow():
            raise CacheUnavailable(f"redis circuit {self.breaker.name} is open")
        try:
            async with asyncio.timeout(self.timeout):
                result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            self.breaker.record_failure()
            if self._metrics is not None:
                self._metrics.observe_redis_error(operation=operation)
            raise CacheUnavailable(f"redis {operation} failed: {type(exc).__name__}") from exc
        except BaseException:
            self.breaker.release()
            raise
        self.breaker.record_success()
        return result
