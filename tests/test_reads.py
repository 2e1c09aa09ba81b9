"""read_stream and read_all: directions, bounds, chunking, and reads during appends."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import aioeventstore as es
from aioeventstore import events as events_module
from aioeventstore._iothread import IoThread
from tests.helpers import Deposited, Note, registry_changed


async def fill(store: es.EventStore, n: int) -> None:
    # three streams interleaved; every third append carries two events
    for i in range(n):
        events: list[es.Event] = [Note(text=f"{i}")]
        if i % 3 == 0:
            events.append(Note(text=f"{i}b"))
        await store.append(f"s{i % 3}", events)


@pytest.mark.parametrize("chunk", [4096, 1 << 20])
async def test_read_stream_directions_and_bounds(store_path: Path, chunk: int) -> None:
    async with es.EventStore(store_path, read_chunk_bytes=chunk, segment_bytes=8192) as store:
        await fill(store, 300)
        s0 = [r async for r in store.read_stream("s0")]
        assert [r.version for r in s0] == list(range(200))
        assert all(r.stream == "s0" for r in s0)
        assert [r.position for r in s0] == sorted(r.position for r in s0)
        tail = [r.version async for r in store.read_stream("s0", from_version=150)]
        assert tail == list(range(150, 200))
        back = [r.version async for r in store.read_stream("s0", backwards=True)]
        assert back == list(range(199, -1, -1))
        back_from = [
            r.version
            async for r in store.read_stream("s0", from_version=101, backwards=True, limit=4)
        ]
        assert back_from == [101, 100, 99, 98]
        assert [r.version async for r in store.read_stream("s0", from_version=3, limit=3)] == [
            3,
            4,
            5,
        ]
        assert [r async for r in store.read_stream("s0", limit=0)] == []
        assert [r async for r in store.read_stream("s0", from_version=200)] == []
        assert [r async for r in store.read_stream("nope")] == []
        assert [r async for r in store.read_stream("nope", backwards=True)] == []
        by_pos = {r.position: r async for r in store.read_all()}
        assert all(by_pos[r.position] == r for r in s0)


@pytest.mark.parametrize("chunk", [4096, 1 << 20])
async def test_read_all_directions_and_bounds(store_path: Path, chunk: int) -> None:
    async with es.EventStore(store_path, read_chunk_bytes=chunk, segment_bytes=8192) as store:
        await fill(store, 300)
        n = store.head + 1
        assert n == 400
        assert [r.position async for r in store.read_all()] == list(range(n))
        assert [r.position async for r in store.read_all(from_position=397)] == [397, 398, 399]
        assert [r.position async for r in store.read_all(from_position=1, limit=2)] == [1, 2]
        assert [r.position async for r in store.read_all(backwards=True)] == list(
            range(n - 1, -1, -1)
        )
        assert [
            r.position async for r in store.read_all(from_position=10, backwards=True, limit=3)
        ] == [10, 9, 8]
        assert [
            r.position async for r in store.read_all(from_position=10_000, backwards=True, limit=1)
        ] == [399]
        assert [r async for r in store.read_all(from_position=400)] == []


async def test_read_argument_errors(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        with pytest.raises(ValueError, match="from_position"):
            _ = [r async for r in store.read_all(from_position=-1)]
        with pytest.raises(ValueError, match="limit"):
            _ = [r async for r in store.read_all(limit=-5)]
        with pytest.raises(ValueError, match="from_version"):
            _ = [r async for r in store.read_stream("s", from_version=-2)]
        with pytest.raises(TypeError, match="stream name"):
            _ = [r async for r in store.read_stream(7)]  # type: ignore[arg-type]


async def test_reads_during_appends_see_dense_committed_prefixes(store_path: Path) -> None:
    async with es.EventStore(store_path, read_chunk_bytes=4096) as store:
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            i = 0
            while not stop.is_set():
                await store.append(f"w{w}", [Note(text=f"{w}-{i}"), Note(text=f"{w}-{i}b")])
                i += 1

        writers = [asyncio.create_task(writer(w)) for w in range(20)]
        for _ in range(30):
            head_before = store.head
            seen = [r.position async for r in store.read_all()]
            assert seen == list(range(len(seen)))
            assert len(seen) >= head_before + 1
            assert len(seen) % 2 == 0  # whole appends only
            versions = [r.version async for r in store.read_stream("w3")]
            assert versions == list(range(len(versions)))
        stop.set()
        await asyncio.gather(*writers)


async def test_a_read_ends_at_the_head_it_started_from_while_writers_go_on(
    store_path: Path,
) -> None:
    """``read_all`` and forward ``read_stream`` read up to the head (the stream's last
    version) as it is when they start: with writers committing all the while, a read still
    ends, and what was committed after it started is left to the next read."""
    async with es.EventStore(store_path, read_chunk_bytes=4096) as store:
        for i in range(300):
            await store.append(f"s{i % 2}", Note(text=f"{i}"))
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            while not stop.is_set():
                await store.append(f"s{w % 2}", Note(text="more"))

        writers = [asyncio.create_task(writer(w)) for w in range(8)]
        try:
            for read in ("all", "stream"):
                got: list[int] = []
                last_position = first_head = -1
                it = store.read_all() if read == "all" else store.read_stream("s0")
                async for rec in it:
                    if not got:
                        first_head = store.head  # the bound was taken at or before this
                    got.append(rec.position if read == "all" else rec.version)
                    last_position = rec.position
                    if len(got) % 25 == 0:
                        await asyncio.sleep(0.001)  # the writers commit meanwhile
                assert got == list(range(len(got)))
                assert len(got) >= (300 if read == "all" else 150)
                assert last_position <= first_head < store.head  # later events were not read
        finally:
            stop.set()
            await asyncio.gather(*writers)


async def test_incompatible_schema_raises_decode_error(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Renamed(es.Event):
        __event_type__ = "tests.renamed"
        owner: str

    async with es.EventStore(store_path) as store:
        await store.append("acc", Deposited(account="a", amount=1))
        monkeypatch.setitem(events_module._registry, "Deposited", Renamed)
        registry_changed()
        with pytest.raises(es.EventDecodeError, match="position 0 of stream 'acc'"):
            _ = [r async for r in store.read_stream("acc")]


async def test_damage_after_open_is_reported_on_read(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        for i in range(5):
            await store.append("s", Note(text=f"n{i}"))
        seg = next(store_path.glob("*.seg"))
        with open(seg, "r+b") as f:
            f.seek(seg.stat().st_size - 3)
            f.write(b"\x00\x00\x00")
        with pytest.raises(es.CorruptLog) as info:
            _ = [r async for r in store.read_all()]
        assert info.value.path == str(seg)


@pytest.mark.parametrize("enabled", [True, False])
async def test_reads_leave_the_garbage_collector_as_they_found_it(
    store_path: Path, enabled: bool
) -> None:
    import gc

    async with es.EventStore(store_path) as store:
        await fill(store, 50)
        was = gc.isenabled()
        try:
            if not enabled:
                gc.disable()
            assert len([r async for r in store.read_all()]) == 67
            assert len([r async for r in store.read_stream("s0")]) == 34
            assert gc.isenabled() is enabled
        finally:
            if was:
                gc.enable()


async def test_reads_leave_the_collectors_heuristics_alone(store_path: Path) -> None:
    """Reference cycles of the application that die after large reads are collected as
    without reads: pausing the collector for a decode only puts collections off. (Large
    decodes once moved every young object to the oldest generation, gc.freeze() +
    gc.unfreeze(), which CPython does not count towards a full collection: such cycles,
    alive across a read, were never collected, 100 KiB each here.)"""
    import gc
    import weakref

    class Cycle:
        def __init__(self) -> None:
            self.me = self
            self.payload = bytearray(100 * 1024)

    assert gc.isenabled() and gc.get_freeze_count() == 0
    async with es.EventStore(store_path) as store:
        for _ in range(4):
            await store.append("s", [Note(text=f"{i}".ljust(40)) for i in range(500)])
        alive: list[weakref.ref[Cycle]] = []
        for _ in range(300):
            cycle = Cycle()
            alive.append(weakref.ref(cycle))
            async for _rec in store.read_all():  # decodes a 2,048-event chunk, then stops
                break
            del cycle
        alive = [ref for ref in alive if ref() is not None]
    assert len(alive) < 100, len(alive)  # (about 300 before; the collector's own pace after)
    assert gc.get_freeze_count() == 0


async def test_raw_reads_return_the_stored_dicts_without_models(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with es.EventStore(store_path) as store:
        await store.append("acc", [Deposited(account="a", amount=1), Note(text="n")])
        typed = [r async for r in store.read_all()]
        raw = [r async for r in store.read_all(raw=True)]
        raw_stream = [r async for r in store.read_stream("acc", raw=True)]
        assert raw == raw_stream
        assert [r.data for r in raw] == [{"account": "a", "amount": 1}, {"text": "n"}]
        assert [(r.position, r.id, r.type) for r in raw] == [
            (r.position, r.id, r.type) for r in typed
        ]

        # readable even when the registered class no longer accepts the data
        class Incompatible(es.Event):
            __event_type__ = "tests.incompatible.raw"
            other: int

        monkeypatch.setitem(events_module._registry, "Deposited", Incompatible)
        registry_changed()
        with pytest.raises(es.EventDecodeError):
            _ = [r async for r in store.read_all()]
        from_all = [r.data async for r in store.read_all(raw=True)]
        from_stream = [r.data async for r in store.read_stream("acc", raw=True)]
        assert from_all == from_stream == [{"account": "a", "amount": 1}, {"text": "n"}]


async def test_read_all_reads_ahead_one_chunk_and_drops_it_when_the_caller_stops(
    store_path: Path,
) -> None:
    """``read_all`` decodes the next chunk while the caller consumes this one. Stopping
    early (break, close of the generator, closing the store) drops the chunk read ahead
    without an unretrieved error, and nothing is yielded once the store is closed."""
    store = await es.EventStore(store_path, read_chunk_bytes=4096).open()
    try:
        await store.append("s", [Note(text="x" * 100) for _ in range(300)])
        got = []
        async for rec in store.read_all():
            got.append(rec.position)
            if len(got) == 5:
                break
        assert got == [0, 1, 2, 3, 4]
        agen = store.read_all(limit=250)
        assert [r.position async for r in agen] == list(range(250))
        agen = store.read_all()
        first = await agen.__anext__()
        assert first.position == 0
        await agen.aclose()
        seen = []
        with pytest.raises(es.StoreClosed):
            async for rec in store.read_all():
                seen.append(rec.position)
                if rec.position == 10:
                    await store.close()
        assert seen[-1] < 300 and seen == list(range(len(seen)))
    finally:
        await store.close()


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """A list that gains a 1 at each call of ``owner.name`` (a function of no arguments,
    such as ``gc.freeze``), which still does what it did, from now on."""
    calls: list[int] = []
    real = getattr(owner, name)

    def counted() -> None:
        calls.append(1)
        real()

    monkeypatch.setattr(owner, name, counted)
    return calls


def count_thread_reads(store: es.EventStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A counter of the store's reads that go to a reader thread, from now on."""
    calls = [0]
    submit = store._reader._run_blocking

    async def counted(fn: object, *args: object) -> object:
        calls[0] += 1
        return await submit(fn, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(store._reader, "_run_blocking", counted)
    return calls


@pytest.mark.parametrize("chunk", [4096, 1 << 20])
@pytest.mark.parametrize("compression", ["none", "zstd"])
async def test_reads_from_memory_on_the_loop_match_reads_on_a_reader_thread(
    store_path: Path, chunk: int, compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of at most ``_INLINE_BYTES`` whose bytes are in the page cache is read and
    decoded on the event loop's thread, without a reader thread: every read path gives the
    same records as when every read goes to a thread."""
    from aioeventstore import _reader
    from tests.test_replay_batch import every_read

    opts = es.StoreOptions(
        read_chunk_bytes=chunk,
        segment_bytes=64 * 1024,
        compression="zstd" if compression == "zstd" else "none",
    )
    async with es.EventStore(store_path, options=opts) as store:
        await fill(store, 600)
        burst = (store.append(f"s{i % 3}", Note(text=f"burst {i}")) for i in range(300))
        await asyncio.gather(*burst)  # batches of many frames (compressed: containers)
        streams = ["s0", "s1", "s2"]
        calls = count_thread_reads(store, monkeypatch)
        inline = await every_read(store, streams)
        inline_calls = calls[0]
        with monkeypatch.context() as m:
            m.setattr(_reader, "_INLINE_BYTES", -1)
            threaded = await every_read(store, streams)
    assert inline == threaded
    assert sum(len(v) for v in inline.values()) > 6000
    assert calls[0] > inline_calls  # the threaded reads did go to a thread
    if chunk == 4096 and compression == "none" and _page_cache_known(store_path):
        assert inline_calls == 0  # every chunk is small, and the file was just written
    if compression == "zstd":  # containers expand: they are decoded on a thread
        assert inline_calls > 0


def _page_cache_known(path: Path) -> bool:
    """Whether this platform and file system say if a read would wait (RWF_NOWAIT)."""
    from aioeventstore import _fs

    if _fs._NOWAIT is None:
        return False
    probe = (path if path.is_dir() else path.parent) / "nowait-probe"
    probe.write_bytes(b"x" * 64)
    fd = os.open(probe, os.O_RDONLY)
    try:
        return _fs.OsFile(str(probe), fd).pread_many_cached([64], [0]) is not None
    finally:
        os.close(fd)
        probe.unlink()


@contextlib.asynccontextmanager
async def turns_of_another_task() -> AsyncIterator[list[int]]:
    """While the body runs, another task counts the turns the loop gives it (``turns[0]``,
    from 0 as the body starts; read it at any point, and after the body for the total)."""
    turns = [0]
    stop = [False]

    async def ticker() -> None:
        while not stop[0]:
            turns[0] += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    turns[0] = 0
    try:
        yield turns
    finally:
        stop[0] = True
        await task


async def test_small_reads_on_the_loop_still_give_its_other_tasks_their_turns(
    store_path: Path,
) -> None:
    """A long read in small chunks read on the loop's thread (no thread trip to wait for)
    lets the loop run its other tasks between chunks, as the trips did."""
    async with es.EventStore(store_path, read_chunk_bytes=4096) as store:
        await fill(store, 300)
        async with turns_of_another_task() as turns:
            n = len([r async for r in store.read_stream("s0")])
            chunks = turns[0]
            m = len([r async for r in store.read_all()])
    assert (n, m) == (200, 400)
    assert chunks >= 3  # s0's 100 frames of some 130 bytes are four 4 KiB chunks: a turn each
    assert turns[0] - chunks >= 5


async def test_every_read_on_the_loop_gives_its_other_tasks_a_turn() -> None:
    """A one-event read from memory still ends with a turn of the loop: without one, a task
    reading many short streams in a row would hold the loop (and the GIL, which the I/O
    thread needs to finish the appends of other tasks) for as long as it keeps reading."""
    async with es.EventStore.memory() as store:
        await fill(store, 30)
        async with turns_of_another_task() as turns:
            for _ in range(20):
                assert [r.version async for r in store.read_stream("s1", limit=1)] == [0]
    assert turns[0] >= 20


async def test_a_read_on_the_loop_lends_the_gil_to_an_io_thread_long_at_a_job(
    store_path: Path,
) -> None:
    """A read decoded on the loop's thread, which keeps the loop busy, lends the GIL to the
    store's I/O thread when that thread has been at a job for a while (it needs the GIL
    after each system call, and a busy loop's thread would starve it): not otherwise."""
    if not _page_cache_known(store_path):
        pytest.skip("no RWF_NOWAIT here: every read goes to a reader thread")
    async with es.EventStore(store_path) as store:
        await fill(store, 30)
        lent: list[bool] = []
        lend = store._reader.lend_gil
        assert lend is not None

        def counted(after: float, at_most: float) -> bool:
            lent.append(lend(after, at_most))
            return lent[-1]

        store._reader.lend_gil = counted
        io = store._io
        assert isinstance(io, IoThread)
        assert io._no_calls.wait(30)  # (the last batch's accounting, after its delivery)
        assert [r.version async for r in store.read_stream("s1", limit=1)] == [0]
        assert lent == [False]  # the I/O thread has nothing to do
        gate = threading.Event()
        # a batch write the thread is stuck at (as in a slow sync)
        held = io.call(asyncio.get_running_loop(), gate.wait, 30)
        try:
            await asyncio.sleep(0.01)  # (at it for 10 ms or more)
            assert [r.version async for r in store.read_stream("s1", limit=1)] == [0]
            assert lent == [False, True]
        finally:
            gate.set()
        assert await held is True
    assert store._reader.lend_gil is None  # (a closed store lends nothing)


async def test_a_short_read_on_the_loop_leaves_the_collector_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A decode of under ``_PAUSE_BYTES`` on the loop's thread (a short stream's read) does
    not pause the collector: the pause would cost it more than the collection it could
    save. The same read on a reader thread is paused, as is a longer one on the loop."""
    from aioeventstore._memfs import MemoryFile

    disables = count_calls(monkeypatch, gc, "disable")
    async with es.EventStore.memory() as store:  # (every read from memory)
        await fill(store, 900)
        assert len([r async for r in store.read_stream("s1", limit=3)]) == 3
        assert [r async for r in store.read_all(limit=5)]
        assert disables == [] and gc.isenabled()
        assert len([r async for r in store.read_stream("s1")]) == 300  # some 30 KiB, one step
        assert disables == [1] and gc.isenabled()
        monkeypatch.setattr(MemoryFile, "pread_many_cached", lambda self, sizes, offsets: None)
        threads = count_thread_reads(store, monkeypatch)
        assert len([r async for r in store.read_stream("s1", limit=3)]) == 3
        assert threads == [1] and disables == [1, 1] and gc.isenabled()


async def test_a_small_read_whose_bytes_are_not_in_memory_goes_to_a_reader_thread(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a read could block (``pread_many_cached`` says None: pages not cached, or a
    platform without RWF_NOWAIT), it is read on a reader thread as ever."""
    from aioeventstore._fs import OsFile

    if not _page_cache_known(store_path):
        pytest.skip("no RWF_NOWAIT here: every read goes to a reader thread")
    async with es.EventStore(store_path) as store:
        await fill(store, 30)
        calls = count_thread_reads(store, monkeypatch)
        cached = [r async for r in store.read_stream("s1")] + [r async for r in store.read_all()]
        assert calls[0] == 0
        monkeypatch.setattr(OsFile, "pread_many_cached", lambda self, sizes, offsets: None)
        threaded = [r async for r in store.read_stream("s1")] + [r async for r in store.read_all()]
        assert calls[0] == 2
        assert cached == threaded and len(cached) == 10 + 40


async def test_a_read_sent_to_a_thread_after_all_pauses_the_collector_once(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream read of 64-256 KiB is first tried on the loop's thread; when its bytes are
    not in memory it goes to a reader thread, and only that decode pauses the collector:
    the try on the loop gave up before touching the collector (it once collected twice)."""
    from aioeventstore import _reader
    from aioeventstore._fs import OsFile

    async with es.EventStore(store_path) as store:
        await asyncio.gather(
            *(store.append("big", Note(text=f"{i:04d} " + "x" * 150)) for i in range(600))
        )
        size = sum(store._index.stream_frames("big", 0, 1 << 30, False).lengths)
        assert 64 * 1024 <= size <= _reader._INLINE_BYTES
        calls = count_thread_reads(store, monkeypatch)
        pauses: list[int] = []
        disable = gc.disable

        def counted() -> None:
            pauses.append(1)
            disable()

        monkeypatch.setattr(OsFile, "pread_many_cached", lambda self, sizes, offsets: None)
        monkeypatch.setattr(gc, "disable", counted)
        got = [r.version async for r in store.read_stream("big")]
        monkeypatch.setattr(gc, "disable", disable)
    assert got == list(range(600))
    assert calls[0] == 1  # one chunk, read on a thread
    assert pauses == [1]


def count_loop_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of events of each step read and decoded on the loop's thread, from now on
    (a step that gave up, not all in memory, counts as -1)."""
    from aioeventstore import _reader

    sizes: list[int] = []
    for name in ("_decode_span", "_decode", "_decode_stream_span"):
        decode = getattr(_reader.Reader, name)

        def counted(self: Any, *args: Any, _decode: Any = decode) -> Any:
            if args[-1] is not True:
                return _decode(self, *args)
            sizes.append(-1)
            got = _decode(self, *args)
            sizes[-1] = len(got)
            return got

        monkeypatch.setattr(_reader.Reader, name, counted)
    return sizes


async def test_a_long_read_from_memory_goes_a_bounded_step_at_a_time_on_the_loop(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads of more than a step (the default 1 MiB chunk) whose bytes are in memory are
    read and decoded on the loop's thread, each step at most ``_INLINE_EVENTS`` events and
    ``_INLINE_BYTES`` bytes, and give every event once, either way; when the bytes cannot be
    read from memory, each step is planned again in full and read on a reader thread, as
    many as the chunk size asks for, with the same records."""
    from aioeventstore import _reader
    from aioeventstore._fs import OsFile

    if not _page_cache_known(store_path):
        pytest.skip("no RWF_NOWAIT here: every read goes to a reader thread")
    async with es.EventStore(store_path) as store:
        # small events (a step of 448 KiB would hold over 4,000): the events bound the step
        await asyncio.gather(*(store.append("big", Note(text=f"{i}")) for i in range(26000)))
        for i in range(2000):  # then interleaved: the stream's next frames lie apart
            await store.append(f"other-{i % 2}", Note(text=f"{i}"))
            await store.append("big", Note(text=f"{26000 + i}"))
        head = store.head
        whole = store._index.span_from(0, 1 << 40, False)
        assert whole is not None and whole.end > 2 << 20  # over two chunks

        async def every_way() -> list[list[tuple[str, int, int]]]:
            def keys(recs: list[es.RecordedEvent]) -> list[tuple[str, int, int]]:
                return [(r.stream, r.version, r.position) for r in recs]

            return [
                keys([r async for r in store.read_all()]),
                keys([r async for r in store.read_all(backwards=True)]),
                keys([r async for r in store.read_stream("big")]),
                keys([r async for r in store.read_stream("big", backwards=True)]),
            ]

        calls = count_thread_reads(store, monkeypatch)
        steps = count_loop_steps(monkeypatch)
        inline = await every_way()
        assert calls[0] == 0 and len(steps) > 8
        assert 0 < max(steps) <= _reader._INLINE_EVENTS
        inline_steps = len(steps)
        monkeypatch.setattr(OsFile, "pread_many_cached", lambda self, sizes, offsets: None)
        steps.clear()
        threaded = await every_way()
        assert steps and all(n == -1 for n in steps)  # each tried once, then sent whole
    assert inline == threaded
    forwards, backwards, stream, stream_back = inline
    assert [p for _, _, p in forwards] == list(range(head + 1))
    assert backwards == forwards[::-1]
    assert [v for _, v, _ in stream] == list(range(28000))
    assert stream_back == stream[::-1]
    assert calls[0] == len(steps) < inline_steps  # fewer, longer steps on the thread


async def test_a_store_with_compressed_containers_stops_trying_long_steps_on_the_loop(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compressed container is decompressed on a reader thread: once a step on the loop
    met one, long steps go to a thread at once instead of being decoded on the loop up to
    the container and again on the thread."""
    if not _page_cache_known(store_path):
        pytest.skip("no RWF_NOWAIT here: every read goes to a reader thread")
    async with es.EventStore(store_path, compression="zstd") as store:
        texts = [os.urandom(150).hex() for _ in range(64)]  # (compress to about half)
        for k in range(120):
            await asyncio.gather(
                *(
                    store.append(f"s{i % 7}", Note(text=texts[i % 64]))
                    for i in range(100 * k, 100 * k + 100)
                )
            )
        first = [r.position async for r in store.read_all()]
        assert first == list(range(store.head + 1))
        assert store._reader._containers
        steps = count_loop_steps(monkeypatch)
        calls = count_thread_reads(store, monkeypatch)
        again = [r.position async for r in store.read_all()]
    assert again == first
    assert calls[0] >= 1
    assert len(steps) <= 1  # at most the last step, if it is small whole


def test_a_file_system_without_rwf_nowait_is_asked_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where preadv2 answers that RWF_NOWAIT is not supported, that file's small reads go to
    a thread from then on without asking again; a read that would block (EAGAIN) asks again
    next time."""
    import errno

    from aioeventstore import _fs

    if _fs._NOWAIT is None:
        pytest.skip("no RWF_NOWAIT on this platform")
    path = tmp_path / "f"
    path.write_bytes(b"abcdefgh")
    fd = os.open(path, os.O_RDONLY)
    try:
        f = _fs.OsFile(str(path), fd)
        asked = [0]
        answer = [errno.EAGAIN]

        def preadv(*args: object) -> int:
            asked[0] += 1
            raise OSError(answer[0], os.strerror(answer[0]))

        monkeypatch.setattr(os, "preadv", preadv)
        assert f.pread_many_cached([4], [0]) is None
        assert f.pread_many_cached([4], [0]) is None
        assert asked[0] == 2  # would block: asked again
        answer[0] = errno.EOPNOTSUPP
        assert f.pread_many_cached([4], [0]) is None
        assert f.pread_many_cached([4], [0]) is None
        assert asked[0] == 3  # not supported: not asked again
        assert f.pread_many([4, 2], [0, 6]) == [b"abcd", b"gh"]  # the thread's way still reads
    finally:
        os.close(fd)


async def test_an_io_error_while_reading_raises_read_failed_and_the_next_read_works() -> None:
    """An OS error reading a segment (EIO) stops that read with ``ReadFailed``: an
    ``EventStoreError`` that is also the ``OSError`` (errno, file name), never a bare one;
    appends and the next reads go on. Read, subscribe and stream paths alike."""
    import errno

    from tests.simfs import Fault, SimFS

    fs = SimFS(4)
    async with es.EventStore("/store", _fs=fs) as store:
        await fill(store, 12)

        async def read_all() -> list[es.RecordedEvent]:
            return [r async for r in store.read_all()]

        async def read_stream() -> list[es.RecordedEvent]:
            return [r async for r in store.read_stream("s1")]

        async def subscribe() -> list[es.RecordedEvent]:
            out = []
            async with store.subscribe(from_position=0) as sub:
                async for rec in sub:
                    out.append(rec)
                    if rec.position == store.head:
                        return out
            return out

        for read in (read_all, read_stream, subscribe):
            fs.inject(Fault(op="pread", path=".seg"))
            with pytest.raises(es.ReadFailed) as info:
                await read()
            assert isinstance(info.value, OSError) and isinstance(info.value, es.EventStoreError)
            assert info.value.errno == errno.EIO
            assert info.value.filename is not None and info.value.filename.endswith(".seg")
            assert isinstance(info.value.__cause__, OSError)
            assert len(await read()) in (16, 4)  # the next one reads
        await store.append("s1", Note(text="after"))
        assert len([r async for r in store.read_stream("s1")]) == 5


async def read_every_way(store: es.EventStore, stream: str, last: int) -> list[list[Any]]:
    """``stream`` read forwards and back from many versions, with and without a limit, and
    raw: one list of records per read."""
    reads: list[list[Any]] = []
    for start in (0, 1, 2, 150, 299, 300, 301, last - 45, last - 1, last, last + 3):
        for limit in (None, 1, 2, 39, 1000):
            reads.append(
                [r async for r in store.read_stream(stream, from_version=start, limit=limit)]
            )
            back = store.read_stream(stream, from_version=start, limit=limit, backwards=True)
            reads.append([r async for r in back])
    reads.append([r async for r in store.read_stream(stream, raw=True)])
    return reads


@pytest.mark.parametrize("compression", ["none", "zstd"])
async def test_a_stream_whose_events_lie_back_to_back_is_read_as_a_span(
    store_path: Path, compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream read whose next versions lie back to back in the log (nothing else appended
    between them) reads them as ``read_all`` reads a span (``Reader._decode_stream_span``):
    the same records as a read of the stream's frames one by one, from any version, with any
    limit, across segments and chunks, either way, raw or not, and after a reopen (the index
    then comes from the sidecars)."""
    from aioeventstore import _reader
    from aioeventstore._index import Index

    opts = es.StoreOptions(
        read_chunk_bytes=4096,
        segment_bytes=16 * 1024,
        compression="zstd" if compression == "zstd" else "none",
    )
    async with es.EventStore(store_path, options=opts) as store:
        for i in range(300):  # single-event frames back to back, over several segments
            await store.append("alone", Note(text=f"one {i}"))
        await fill(store, 30)  # others
        await store.append("alone", [Note(text=f"many {k}") for k in range(40)])
        for i in range(30):  # runs of two, each followed by another stream's frame
            await store.append("alone", [Note(text=f"two {i}"), Note(text=f"two {i}b")])
            await store.append("s1", Note(text=f"between {i}"))
        await asyncio.gather(*(store.append("alone", Note(text=f"g {i}")) for i in range(200)))
        last = store._index.committed_last_version("alone")
        assert last == 300 + 40 + 60 + 200 - 1
    spans = [0]
    decode_stream_span = _reader.Reader._decode_stream_span

    def counted(self: Any, *args: Any) -> Any:
        spans[0] += 1
        return decode_stream_span(self, *args)

    monkeypatch.setattr(_reader.Reader, "_decode_stream_span", counted)
    for reopen in range(2):
        async with es.EventStore(store_path, options=opts) as store:
            if not reopen:
                every = [r async for r in store.read_all() if r.stream == "alone"]
            as_spans = await read_every_way(store, "alone", last)
            with monkeypatch.context() as m:  # no span: every frame found on its own
                m.setattr(Index, "stream_run", lambda self, stream, version, most: (0, False))
                spans_before = spans[0]
                one_by_one = await read_every_way(store, "alone", last)
                assert spans[0] == spans_before
        assert as_spans == one_by_one
        assert as_spans[0] == every and [r.version for r in every] == list(range(last + 1))
        assert sum(map(len, as_spans)) > 10_000
    assert spans[0] > 100


async def test_a_span_read_checks_what_the_index_says_of_the_stream(store_path: Path) -> None:
    """If the index said that a stream's versions lie back to back where the log holds other
    streams' events between them, a stream read raises CorruptLog: it never hands out
    another stream's events (nor the stream's at the wrong versions)."""
    from aioeventstore._index import Index

    async with es.EventStore(store_path) as store:
        await fill(store, 30)
        assert len([r async for r in store.read_stream("s1")]) == 10  # (as the index says)

        def claims_a_run(self: Index, stream: str, version: int, most: int) -> tuple[int, bool]:
            k = min(most, self.committed_last_version(stream) - version + 1)
            return k, True

        with pytest.MonkeyPatch.context() as m:
            m.setattr(Index, "stream_run", claims_a_run)
            with pytest.raises(es.CorruptLog, match="stream 's1'"):
                [r async for r in store.read_stream("s1")]
        assert len([r async for r in store.read_stream("s1")]) == 10
