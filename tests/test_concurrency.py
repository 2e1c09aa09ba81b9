"""Many producers at once: dense positions, races, cancellation, backpressure."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

import aioeventstore as es
from tests.helpers import Deposited, FaultyFileSystem, Note


async def settle() -> None:
    """Let every ready task run until it blocks (no wall-clock waiting)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_thousand_producers_get_dense_positions_and_versions(store_path: Path) -> None:
    async def producer(i: int) -> list[es.AppendResult]:
        out = []
        version: es.ExpectedVersion = es.NO_STREAM
        for j in range(5):
            r = await store.append(
                f"p-{i}", Deposited(account=str(i), amount=j), expected_version=version
            )
            version = r.version
            out.append(r)
            out.append(
                await store.append("shared", [Note(text=f"{i}/{j}"), Note(text=f"{i}/{j}b")])
            )
        return out

    async with es.EventStore(store_path) as store:
        results = await asyncio.gather(*(producer(i) for i in range(1000)))
        stats = store.statistics()
        assert stats.head == 1000 * 15 - 1
        assert stats.events_per_sync > 1  # the group commit did group
        recs = [r async for r in store.read_all()]
    assert [r.position for r in recs] == list(range(15000))
    versions: dict[str, list[int]] = defaultdict(list)
    for r in recs:
        versions[r.stream].append(r.version)
    assert all(v == list(range(len(v))) for v in versions.values())
    assert len(versions["shared"]) == 10000
    for i, rs in enumerate(results):
        own = [r for k, r in enumerate(rs) if k % 2 == 0]
        assert [r.version for r in own] == list(range(5))
        assert all(recs[r.position].stream == f"p-{i}" for r in own)
    # each two-event append is contiguous and in order
    shared = [r for r in recs if r.stream == "shared"]
    for a, b in zip(shared[::2], shared[1::2], strict=True):
        assert b.position == a.position + 1
        assert isinstance(a.data, Note) and isinstance(b.data, Note)
        assert b.data.text == a.data.text + "b"


async def test_no_stream_race_has_exactly_one_winner(store_path: Path) -> None:
    async def contender(i: int) -> es.AppendResult | es.WrongExpectedVersion:
        try:
            return await store.append("race", Note(text=str(i)), expected_version=es.NO_STREAM)
        except es.WrongExpectedVersion as exc:
            return exc

    async with es.EventStore(store_path) as store:
        outcomes = await asyncio.gather(*(contender(i) for i in range(100)))
        wins = [o for o in outcomes if isinstance(o, es.AppendResult)]
        losses = [o for o in outcomes if isinstance(o, es.WrongExpectedVersion)]
        assert len(wins) == 1 and len(losses) == 99
        assert all(e.actual == 0 and e.stream == "race" for e in losses)
        assert store.head == 0


async def test_backpressure_bounds_the_queue(store_path: Path) -> None:
    fs = FaultyFileSystem()
    cap = 4096
    async with es.EventStore(store_path, _fs=fs, max_queue_bytes=cap, max_batch_bytes=cap) as store:
        fs.faults.gate = threading.Event()  # the I/O thread blocks on the next write
        tasks = [
            asyncio.create_task(store.append(f"s-{i % 7}", Note(text="x" * 100)))
            for i in range(300)
        ]
        await settle()
        stats = store.statistics()
        assert stats.queued_bytes <= cap
        assert stats.queued > 0
        assert sum(t.done() for t in tasks) == 0  # nobody acknowledged before the write
        fs.faults.gate.set()
        results = await asyncio.gather(*tasks)
        assert sorted(r.position for r in results) == list(range(300))
        assert store.statistics().queued == 0


async def test_cancelled_producers_never_corrupt_a_batch(store_path: Path) -> None:
    fs = FaultyFileSystem()
    async with es.EventStore(store_path, _fs=fs) as store:
        fs.faults.gate = threading.Event()
        ids = [[uuid.uuid4(), uuid.uuid4()] for _ in range(60)]

        def batch(i: int) -> list[es.NewEvent]:
            return [es.NewEvent(Note(text=f"{i}-{k}"), id=ids[i][k]) for k in range(2)]

        first = asyncio.create_task(store.append("c-first", Note(text="in flight")))
        await settle()  # its batch is now blocked in the write
        tasks = [
            asyncio.create_task(store.append(f"c-{i}", batch(i), expected_version=es.NO_STREAM))
            for i in range(60)
        ]
        await settle()
        for t in tasks[::2]:
            t.cancel()
        first.cancel()
        await settle()
        fs.faults.gate.set()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(d, asyncio.CancelledError) for d in done[::2])
        assert all(isinstance(d, es.AppendResult) for d in done[1::2])
        with pytest.raises(asyncio.CancelledError):
            await first
        # the store goes on working, and every append is all or nothing
        await store.append("after", Note(text="ok"))
        recs = [r async for r in store.read_all()]
        assert [r.position for r in recs] == list(range(len(recs)))
        by_stream: dict[str, list[str]] = defaultdict(list)
        for r in recs:
            assert isinstance(r.data, Note)
            by_stream[r.stream].append(r.data.text)
        for i in range(60):
            assert by_stream.get(f"c-{i}", []) in ([], [f"{i}-0", f"{i}-1"])
        # a retry of a cancelled append with the same ids is safe either way
        for i in range(0, 60, 2):
            res = await store.append(f"c-{i}", batch(i), expected_version=es.NO_STREAM)
            assert res.version == 1
        for i in range(0, 60, 2):
            assert [x.version async for x in store.read_stream(f"c-{i}")] == [0, 1]


async def test_held_producers_are_answered_while_the_io_thread_is_busy(store_path: Path) -> None:
    """A large batch's last quarter is answered once the I/O thread takes the next write, or
    at most ``HOLD_AT_MOST`` after that write is handed over: other file work queued on the
    I/O thread first (a verify, a sidecar export) must not keep durable appends waiting."""
    gate = threading.Event()
    n = 128  # one batch: every producer queues before the commit loop runs
    answered = asyncio.Event()
    count = 0
    blocked = False

    async with es.EventStore(store_path) as store:

        async def producer(i: int) -> None:
            nonlocal blocked, count
            await store.append(f"s{i}", Note(text="first"))
            if not blocked:  # the first half is answered: the I/O thread takes no write
                blocked = True
                assert store._io is not None
                store._io.submit(gate.wait)
            count += 1
            if count == n:
                answered.set()
            await store.append(f"s{i}", Note(text="second"))

        tasks = [asyncio.create_task(producer(i)) for i in range(n)]
        try:
            await asyncio.wait_for(answered.wait(), 60)  # liveness, not speed
            assert store.statistics().batches == 1  # the next batch's write still waits
        finally:
            gate.set()
        await asyncio.gather(*tasks)
        assert store.head == 2 * n - 1


async def test_a_producer_cancelled_while_waiting_for_queue_space_lets_go_of_its_append() -> None:
    """Each cancelled wait for queue space left its (future, append) behind until the head
    fitted: a producer retrying after every timeout while the disk was slow piled up
    encoded appends without bound (657 MB in 4 s in the hunt's run), and ``waiting``
    counted them all."""
    from aioeventstore._queue import ByteBoundedQueue

    class Item:
        def __init__(self, size: int) -> None:
            self.size = size

    q: ByteBoundedQueue[Item] = ByteBoundedQueue(100)

    async def give_up(times: int) -> None:  # producers that wait for space, then give up
        for _ in range(times):
            waiter = asyncio.ensure_future(q.put(Item(60)))
            await asyncio.sleep(0)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter

    assert q.put_nowait(Item(100))  # full
    await give_up(50)
    assert q.waiting == 0
    head = asyncio.ensure_future(q.put(Item(60)))
    behind = asyncio.ensure_future(q.put(Item(30)))
    await asyncio.sleep(0)
    assert q.waiting == 2
    q.drain(1000)  # room for both: both are admitted
    await asyncio.gather(head, behind)
    assert q.waiting == 0 and len(q) == 2
    q.drain(1000)
    assert q.put_nowait(Item(90))
    head = asyncio.ensure_future(q.put(Item(50)))
    behind = asyncio.ensure_future(q.put(Item(5)))  # (it would fit: FIFO keeps it waiting)
    await asyncio.sleep(0)
    assert q.waiting == 2
    head.cancel()  # the one ahead gives up: the one behind it fits and is admitted at once
    await asyncio.wait_for(behind, 5)
    assert q.waiting == 0 and [i.size for i in q.drain(1000)] == [90, 5]
    # many giving up behind one that waits on: each lets go in O(1), and their entries do
    # not pile up either
    assert q.put_nowait(Item(100))
    first = asyncio.ensure_future(q.put(Item(50)))
    await give_up(500)
    assert q.waiting == 1 and len(q._putters) < 200
    q.drain(1000)
    await first
    assert q.waiting == 0 and [i.size for i in q.drain(1000)] == [50]
