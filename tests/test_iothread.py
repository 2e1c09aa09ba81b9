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


async def test_lend_gil_waits_only_for_a_batch_write_long_at_it_and_only_so_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``lend_gil`` (called by reads that keep the event loop busy) does nothing while the
    thread has no job of ``call`` (the commit loop's batch writes), has had one for less
    than ``after``, or runs a job of ``submit`` (other work, which may run Python for
    milliseconds: lending would let it hold the GIL); past that it waits, with the GIL
    released, until the thread is done with its calls' jobs or ``at_most`` passes; and it
    waits at most once every ``after``. The thread's clock is a fake one that the test
    moves: nothing here depends on how fast the machine is."""
    from aioeventstore import _iothread

    now = [100.0]
    monkeypatch.setattr(_iothread, "perf_counter", lambda: now[0])
    io = IoThread("test-io")
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    other_gate = threading.Event()
    try:
        assert io.lend_gil(1.0, 30.0) is False  # no job: nothing to lend the GIL for
        other = io.submit(other_gate.wait, 30)
        while not io._other_running:  # (until the thread is at it)
            await asyncio.sleep(0.001)
        now[0] = 110.0
        assert io.lend_gil(1.0, 30.0) is False  # other work only
        blocked = io.call(loop, gate.wait, 30)  # a batch write, handed over at 110.0
        now[0] = 120.0
        assert io.lend_gil(1.0, 30.0) is False  # behind the other job, which is running
        other_gate.set()
        assert other.result(timeout=30) is True
        now[0] = 120.5
        while io._other_running:  # (the thread moves on to the batch write)
            await asyncio.sleep(0.001)
        assert io.lend_gil(1.0, 0.001) is True  # at it 10 s: waited, gave up after at_most
        assert not blocked.done()
        now[0] = 121.0
        assert io.lend_gil(1.0, 30.0) is False  # lent less than a second ago
        now[0] = 121.6
        assert io.lend_gil(1.0, 0.001) is True
        more = io.call(loop, lambda: 7)
        threading.Timer(0.05, gate.set).start()
        now[0] = 123.0
        assert io.lend_gil(1.0, 30.0) is True  # returns when the calls' jobs are done
        assert await blocked is True and await more == 7
        now[0] = 125.0
        assert io.lend_gil(1.0, 30.0) is False  # none left
    finally:
        gate.set()
        other_gate.set()
        io.shutdown()
