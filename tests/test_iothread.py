"""The store's I/O thread: one FIFO for submit() and call(), results and errors delivered."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from aioeventstore._iothread import IoThread


async def test_submit_and_call_run_in_order_on_one_thread() -> None:
    io = IoThread("test-io")
    loop = asyncio.get_running_loop()
    seen: list[tuple[int, str]] = []

    def job(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        time.sleep(0.001 if i % 3 == 0 else 0)
        return i * 2

    futures: list[asyncio.Future[int]] = []
    for i in range(30):
        if i % 2:
            futures.append(io.call(loop, job, i))
        else:
            futures.append(asyncio.wrap_future(io.submit(job, i)))
    assert await asyncio.gather(*futures) == [i * 2 for i in range(30)]
    assert [i for i, _ in seen] == list(range(30))
    assert {name for _, name in seen} == {"test-io"}
    io.shutdown()


async def test_errors_reach_the_awaiting_task() -> None:
    io = IoThread("test-io")
    loop = asyncio.get_running_loop()

    def fail() -> None:
        raise OSError(5, "EIO")

    with pytest.raises(OSError, match="EIO"):
        await io.call(loop, fail)
    with pytest.raises(OSError, match="EIO"):
        io.submit(fail).result(timeout=10)
    assert await io.call(loop, lambda: 7) == 7  # the thread lives on
    io.shutdown()


async def test_a_cancelled_waiter_drops_the_result_and_the_job_still_runs() -> None:
    io = IoThread("test-io")
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    ran = threading.Event()

    def slow() -> int:
        gate.wait(10)
        ran.set()
        return 1

    fut = io.call(loop, slow)
    fut.cancel()
    gate.set()
    assert await io.call(loop, lambda: 2) == 2  # queued behind it: it has run by now
    assert ran.is_set() and fut.cancelled()
    io.shutdown()


async def test_shutdown_runs_what_is_queued_then_refuses() -> None:
    io = IoThread("test-io")
    loop = asyncio.get_running_loop()
    done: list[int] = []
    for i in range(5):
        io.submit(done.append, i)
    await loop.run_in_executor(None, io.shutdown)
    assert done == list(range(5))
    with pytest.raises(RuntimeError):
        io.submit(done.append, 9)
    with pytest.raises(RuntimeError):
        io.call(loop, done.append, 9)


def test_a_result_for_a_closed_loop_is_dropped_quietly() -> None:
    io = IoThread("test-io")
    loop = asyncio.new_event_loop()
    gate = threading.Event()
    fut = io.call(loop, gate.wait, 10)
    loop.close()
    gate.set()
    assert io.submit(lambda: 3).result(timeout=10) == 3  # the thread survived the delivery
    assert not fut.done()
    io.shutdown()
