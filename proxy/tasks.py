"""Background tasks: ``Tasks.spawn`` is the only way the project starts one.

A task set keeps a strong reference to each task (the event loop keeps only weak ones), names
it, logs a failure instead of losing it, and cancels whatever is left on ``aclose`` (called from
the app's cleanup). ``asyncio.create_task`` is banned elsewhere by ruff (TID251).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Tasks"]

_T = TypeVar("_T")
_log = logging.getLogger("cart_link_proxy.tasks")


class Tasks:
    """The background tasks of one application."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, _T], *, name: str) -> asyncio.Task[_T]:
        """Start ``coro`` as a named task; raises ``RuntimeError`` after ``aclose``."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"cannot start task {name!r}: the task set is closed")
        task = asyncio.create_task(coro, name=name)  # noqa: TID251 - the one wrapper
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            _log.error("background task %s failed", task.get_name(), exc_info=error)

    async def aclose(self, *, grace: float = 5.0) -> None:
        """Cancel every remaining task and wait (at most ``grace`` s) for them to end."""
        self._closed = True
        pending = list(self._tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=grace)
