from __future__ import annotations

import asyncio
import logging

import pytest

from proxy.tasks import Tasks


async def test_spawn_keeps_reference_and_logs_failure(caplog: pytest.LogCaptureFixture) -> None:
    tasks = Tasks()

    async def fail() -> None:
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR):
        task = tasks.spawn(fail(), name="failing")
        assert len(tasks) == 1
        await asyncio.wait([task])
        await asyncio.sleep(0)
    assert len(tasks) == 0
    assert "failing" in caplog.text


async def test_aclose_cancels_and_refuses_new() -> None:
    tasks = Tasks()
    task = tasks.spawn(asyncio.sleep(60), name="sleeper")
    await tasks.aclose()
    assert task.cancelled()

    async def nothing() -> None:
        return None

    with pytest.raises(RuntimeError, match="closed"):
        tasks.spawn(nothing(), name="late")
