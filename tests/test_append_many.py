"""``append_many``: several appends from one task with one wait, each atomic and checked on
its own, validated all before any is queued."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

import aioeventstore as es
from tests.helpers import Note


async def test_appends_in_order_each_on_its_own(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        results = await store.append_many(
            [
                ("a", Note(text="a0")),
                ("b", [Note(text="b0"), Note(text="b1")], es.NO_STREAM),
                ("a", Note(text="a1"), 0),
            ]
        )
        assert results == [es.AppendResult(0, 0), es.AppendResult(2, 1), es.AppendResult(3, 1)]
        st = store.statistics()
        assert st.syncs == 1 and st.events == 4  # one batch, one fsync
        got = [(r.stream, r.version, r.data.text) async for r in store.read_all()]  # type: ignore[union-attr]
        assert got == [("a", 0, "a0"), ("b", 0, "b0"), ("b", 1, "b1"), ("a", 1, "a1")]


async def test_a_conflict_fails_only_its_own_append(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await store.append("a", Note(text="x"))
        specs: list[es.AppendSpec] = [
            ("a", Note(text="y"), es.NO_STREAM),  # conflicts
            ("b", Note(text="z")),
        ]
        with pytest.raises(es.WrongExpectedVersion) as info:
            await store.append_many(specs)
        assert info.value.stream == "a" and info.value.actual == 0
        assert [r.stream async for r in store.read_all()] == ["a", "b"]  # b was written
        out = await store.append_many(
            [("a", Note(text="y"), es.NO_STREAM), ("c", Note(text="w"))], return_exceptions=True
        )
        assert isinstance(out[0], es.WrongExpectedVersion)
        assert out[1] == es.AppendResult(2, 0)


async def test_bad_input_writes_nothing(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        with pytest.raises(ValueError, match="stream name"):
            await store.append_many([("a", Note(text="ok")), ("", Note(text="bad"))])
        with pytest.raises(TypeError, match="append_many takes an iterable of"):
            await store.append_many(5)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="item 1"):
            await store.append_many([("a", Note(text="ok")), "not a tuple"])  # type: ignore[list-item]
        assert store.head == -1
        assert await store.append_many([]) == []


async def test_idempotent_retry_of_the_whole_call(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        ids = [uuid.uuid4() for _ in range(3)]
        specs: list[es.AppendSpec] = [
            (f"s{i}", es.NewEvent(Note(text=str(i)), id=ids[i]), es.NO_STREAM) for i in range(3)
        ]
        first = await store.append_many(specs)
        again = await store.append_many(specs)  # a retry: same ids, same expected versions
        assert again == first and store.head == 2


async def test_many_callers_and_cancellation(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:

        async def importer(k: int) -> list[es.AppendResult]:
            return await store.append_many(
                [(f"s{k}-{i % 5}", Note(text=f"{k}/{i}")) for i in range(50)]
            )

        results = await asyncio.gather(*(importer(k) for k in range(20)))
        assert sorted(r.position for rs in results for r in rs) == list(range(1000))
        # a cancelled caller: whatever was committed is whole and dense, nothing else appears
        task = asyncio.create_task(importer(99))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        positions = [r.position async for r in store.read_all()]
        assert positions == list(range(len(positions)))
        assert 1000 <= len(positions) <= 1050


async def test_a_raised_failure_leaves_no_outcome_unretrieved(store_path: Path) -> None:
    """``append_many`` raises its first failure; the later appends' failures are retrieved
    all the same (asyncio logs none of them as "never retrieved")."""
    import gc

    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))
    try:
        async with es.EventStore(store_path) as store:
            await store.append("a", Note(text="0"))
            with pytest.raises(es.WrongExpectedVersion):
                await store.append_many([("a", Note(text="1"), 5), ("a", Note(text="2"), 7)])
            gc.collect()
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_close_while_it_waits_for_queue_space_answers_each_append_in_its_place(
    tmp_path: Path,
) -> None:
    """``close()`` while append_many waited for queue space: it raised StoreClosed even with
    ``return_exceptions=True``, some of its appends were written all the same, and one that
    was waiting when close began was dropped. As single appends are: the queued ones are
    committed and answered, the rest get StoreClosed in their places."""
    import threading

    from tests.helpers import FaultyFileSystem

    fs = FaultyFileSystem()
    store = await es.EventStore(tmp_path / "s", _fs=fs, max_queue_bytes=4000).open()
    fs.faults.gate = threading.Event()  # the next write waits: a slow disk
    first = asyncio.create_task(store.append("first", Note(text="-")))
    for _ in range(50):
        await asyncio.sleep(0)
    many = asyncio.create_task(
        store.append_many(
            [(f"s{i}", Note(text=f"{i}" + "x" * 900)) for i in range(10)], return_exceptions=True
        )
    )
    for _ in range(50):
        await asyncio.sleep(0)
    closing = asyncio.create_task(store.close())
    for _ in range(50):
        await asyncio.sleep(0)
    fs.faults.gate.set()
    got = await many
    await first
    await closing
    written = [r for r in got if isinstance(r, es.AppendResult)]
    assert 0 < len(written) < 10
    assert all(isinstance(r, es.StoreClosed) for r in got[len(written) :])
    async with es.EventStore(tmp_path / "s") as again:
        streams = [r.stream async for r in again.read_all()]
    assert streams == ["first"] + [f"s{i}" for i in range(len(written))]
