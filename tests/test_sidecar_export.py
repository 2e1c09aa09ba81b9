"""Index sidecars exported a bounded step at a time between batch writes: the running segment
checksum they record is the checksum of the file's bytes (after rotation, after a reopen in
the middle of a segment, after a torn tail was cut, with compression), the files they write
load and are used on open, an idle store finishes them without more appends, and the crash
sweeps cut the power with an export's file operations in between batch writes."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

import aioeventstore as es
from aioeventstore import _indexfile, _segment
from aioeventstore._format import SEGMENT_HEADER_SIZE
from aioeventstore._fs import OsFileSystem
from aioeventstore._indexfile import load, range_crc, sidecar_path
from aioeventstore._segment import Segment
from tests.helpers import Note
from tests.test_crash_sweep import reference

SMALL = es.StoreOptions(segment_bytes=32768)


def internals(store: es.EventStore) -> tuple[list[Segment], _indexfile.SidecarWriter]:
    """The store's segments and sidecar writer (white-box: what these tests are about)."""
    return store._log.segments, store._sidecars


def check_sealed(store: es.EventStore) -> int:
    """Every sealed segment's checksum, from its running one, is the crc32c of its file; and
    its sidecar (written by now: the caller waited) loads, checksum checked. Returns how many
    segments were checked."""
    segments, _ = internals(store)
    fs = OsFileSystem()
    for seg in segments[:-1]:
        size = seg.file.size()
        assert seg.checksum(size, 4096) == range_crc(seg, size)
        car = load(fs, seg, seg.first_position, checksum=True)
        assert car is not None, f"no usable sidecar for {seg.path}"
        assert car.range_crc == seg.checksum(car.covered_end, 4096)
    return len(segments) - 1


async def fill(store: es.EventStore, until_segments: int, stream: str = "s") -> None:
    """Append (with a checkpoint now and then) until the log has this many segments."""
    segments, _ = internals(store)
    i = 0
    while len(segments) < until_segments:
        await store.append(f"{stream}-{i % 5}", [Note(text=f"{i}/{k}" * 20) for k in range(3)])
        if i % 7 == 0:
            await store.save_checkpoint("proj", store.head)
        i += 1


async def test_the_running_checksum_of_segments_written_here(tmp_path: Path) -> None:
    """Segments this process created: the running checksum covers each whole file without
    reading it, and the checksum of any shorter prefix is right too (from a remembered
    prefix, reading the rest)."""
    async with es.EventStore(tmp_path / "s", SMALL) as store:
        await fill(store, 4)
        await store._sidecars.wait_idle()
        segments, _ = internals(store)
        for seg in segments[:-1]:
            assert seg.created and seg.crc_end == seg.file.size()
        assert check_sealed(store) == 3
        tail = segments[-1]
        assert tail.crc_end == tail.file.size()
        assert tail.checksum(tail.crc_end, 4096) == range_crc(tail, tail.crc_end)


def test_checksums_of_prefixes_from_remembered_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes of random sizes; a checksum remembered every few kilobytes; the checksum of
    every prefix (at write boundaries and inside writes) matches a full read, and a segment
    opened from disk catches up a piece at a time."""
    monkeypatch.setattr(_segment, "CRC_MARK_BYTES", 3000)
    fs = OsFileSystem()
    rng = random.Random(5)
    seg = Segment.create(fs, str(tmp_path), 0)
    try:
        at = seg.file.size()
        ends = [at]
        for _ in range(60):
            data = rng.randbytes(rng.randrange(1, 900))
            seg.file.pwrite(data, at)
            seg.wrote(at, data)
            at += len(data)
            ends.append(at)
        assert seg.crc_end == at
        probes = ends + [rng.randrange(0, at) for _ in range(40)]
        for end in probes:
            assert seg.checksum(end, 500) == range_crc(seg, end), end
        seg.wrote(at + 10, b"x")  # not where the checksummed prefix ends: left out
        assert seg.crc_end == at
        reopened = Segment(seg.path, 0, fs.open(seg.path, write=False))
        try:
            assert not reopened.created and reopened.crc_end == 0
            steps = 0
            while not reopened.catch_up(at, 4096):
                steps += 1
            assert steps == (at - 1) // 4096
            assert reopened.checksum(at, 500) == seg.checksum(at, 500) == range_crc(seg, at)
            with pytest.raises(OSError, match="ends at byte"):
                reopened.checksum(at + 100, 500)
        finally:
            reopened.close()
    finally:
        seg.close()


async def seal_more_and_reopen_verified(
    path: Path, store: es.EventStore, tail_texts: list[str]
) -> None:
    """Append until two more segments are sealed, check every sealed segment's checksum and
    sidecar; then a verifying open scans nothing and the ``tail`` stream reads ``tail_texts``."""
    segments, _ = internals(store)
    n = len(segments)
    await fill(store, n + 2, stream="after")
    await store.append("end", Note(text="z"))
    await store._sidecars.wait_idle()
    assert check_sealed(store) == n + 1
    await store.close()
    async with es.EventStore(path, SMALL, verify_on_open=True) as again:
        assert again.recovery is not None and again.recovery.scanned_bytes == 0
        texts = [r.data.text async for r in again.read_stream("tail")]  # type: ignore[union-attr]
        assert texts == tail_texts


@pytest.mark.parametrize("tail_sidecar", [True, False], ids=["seeded", "read-back"])
async def test_a_store_reopened_mid_segment_checksums_that_segment(
    tmp_path: Path, tail_sidecar: bool
) -> None:
    """The tail segment of a reopened store was not written by this process from its start.
    When its sidecar (written on close) covers it, the checksum that sidecar recorded seeds
    the running one; without it (a crash) the checksum is unknown (nothing checksummed) and
    its export reads it, a step at a time. Either way the sidecar it writes is right."""
    path = tmp_path / "s"
    async with es.EventStore(path, SMALL) as store:
        await fill(store, 2)
        await store.append("more", Note(text="x"))
    if not tail_sidecar:
        sorted(path.glob("*.idx"))[-1].unlink()
    async with es.EventStore(path, SMALL) as store:
        segments, _ = internals(store)
        tail = segments[-1]
        assert not tail.created
        if tail_sidecar:
            assert tail.crc_end == tail.file.size()
            assert tail.checksum(tail.crc_end, 4096) == range_crc(tail, tail.crc_end)
            await store.append("more", Note(text="y"))  # continues the seeded prefix
            assert tail.crc_end == tail.file.size()
        else:
            assert tail.crc_end == 0
            await store.append("more", Note(text="y"))  # does not continue a prefix
            assert tail.crc_end == 0
        await fill(store, len(segments) + 2, stream="again")
        await store.append("end", Note(text="z"))  # (no checkpoint frame after it to scan)
        await store._sidecars.wait_idle()
        assert tail.crc_end >= SEGMENT_HEADER_SIZE  # caught up by its export
        check_sealed(store)
    async with es.EventStore(path, SMALL, verify_on_open=True) as store:
        assert store.recovery is not None and store.recovery.scanned_bytes == 0


async def test_after_a_torn_tail_was_cut(tmp_path: Path) -> None:
    """Recovery cuts a torn last frame; the segment's checksum covers what is left, and
    the appends that follow, once it is sealed."""
    path = tmp_path / "s"
    async with es.EventStore(path, SMALL) as store:
        await fill(store, 2)
        for i in range(5):
            await store.append("tail", Note(text=str(i) * 50))
    last = sorted(path.glob("*.seg"))[-1]
    with open(last, "r+b") as f:
        f.truncate(last.stat().st_size - 30)  # tear the last frame
    async with es.EventStore(path, SMALL) as store:
        assert store.recovery is not None and store.recovery.cut_path == str(last)
        await seal_more_and_reopen_verified(path, store, [str(i) * 50 for i in range(4)])


async def test_with_compression_the_checksum_is_of_the_compressed_bytes(tmp_path: Path) -> None:
    pytest.importorskip("zstandard")
    path = tmp_path / "s"
    async with es.EventStore(path, SMALL, compression="zstd") as store:

        async def producer(p: int) -> None:
            for i in range(150):
                await store.append(f"p{p}", [Note(text=f"{p}/{i}/{k}" * 8) for k in range(4)])

        await asyncio.gather(*(producer(p) for p in range(8)))
        await store._sidecars.wait_idle()
        segments, _ = internals(store)
        assert len(segments) >= 3
        for seg in segments[:-1]:
            assert seg.crc_end == seg.file.size()  # every write continued it: nothing read
        check_sealed(store)
    async with es.EventStore(path, SMALL, verify_on_open=True) as store:
        assert store.recovery is not None and store.recovery.scanned_bytes == 0
        assert store.head == 8 * 150 * 4 - 1


async def test_sidecars_written_in_many_small_steps_load_and_answer_as_a_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny steps (a few rows, streams and bytes each, a checksum step of 1 KiB) so that every
    export takes turns with many batch writes: the sidecars still load, checksums checked, and
    the index from them answers exactly as a rescan of the log."""
    monkeypatch.setattr(_indexfile, "ROWS_STEP", 5)
    monkeypatch.setattr(_indexfile, "STREAMS_STEP", 3)
    monkeypatch.setattr(_indexfile, "WRITE_STEP", 200)
    monkeypatch.setattr(_indexfile, "CRC_STEP", 1024)
    path = tmp_path / "s"
    opts = es.StoreOptions(segment_bytes=8192)
    async with es.EventStore(path, opts) as store:  # a tail that is reopened below
        await store.append("first", Note(text="x" * 500))

    async def work(store: es.EventStore, tag: str) -> None:
        async def producer(p: int) -> None:
            for i in range(60):
                n = 1 + (i + p) % 3
                await store.append(
                    f"{tag}{(p * 7 + i) % 23}", [Note(text=f"{i}") for _ in range(n)]
                )
                if i % 10 == 0:
                    await store.save_checkpoint(f"c{p}", store.head)

        await asyncio.gather(*(producer(p) for p in range(12)))

    async with es.EventStore(path, opts) as store:
        await work(store, "a")
        _, writer = internals(store)
        assert writer.written >= 5
    async with es.EventStore(path, opts, verify_on_open=True) as store:
        rec = store.recovery
        assert rec is not None and rec.indexed_segments == rec.segments  # (checkpoint frames
        await work(store, "b")  # after the tail's last events are scanned)

    async def answers() -> tuple[object, ...]:
        async with es.EventStore(path, opts, verify_on_open=True) as store:
            assert store.recovery is not None
            rows = [(r.stream, r.version, r.position) async for r in store.read_all()]
            marks = {f"c{p}": store.checkpoint(f"c{p}") for p in range(12)}
            return rows, marks, store.recovery.indexed_segments == store.recovery.segments

    *from_sidecars, indexed = await answers()
    assert indexed
    for idx in path.glob("*.idx"):
        idx.unlink()
    *from_scan, _ = await answers()
    assert from_sidecars == from_scan


async def test_an_idle_store_finishes_its_exports_without_more_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once nothing is queued for a few loop turns the commit loop hands the I/O thread what
    remains of the exports: they finish while the store is idle, before any close."""
    monkeypatch.setattr(_indexfile, "WRITE_STEP", 100)  # many steps
    async with es.EventStore(tmp_path / "s", SMALL) as store:
        await fill(store, 3)
        segments, writer = internals(store)
        async with asyncio.timeout(60):  # a guard against a hang, not a wait
            while not writer.idle():
                if writer._pending:
                    await asyncio.wrap_future(writer._pending[0])
                else:
                    await asyncio.sleep(0)  # the commit loop queues the next step
        for seg in segments[:-1]:
            assert os.path.exists(sidecar_path(seg.path))


async def test_the_crash_sweeps_cut_the_power_inside_exports_between_batch_writes() -> None:
    """The sweep workload's operations (the same on every run: ``reference`` checks) include
    a batch write between an export's temporary file and its rename, so the sweeps cut the
    power with a sidecar half written while later batches were being written."""
    trace = await reference()
    interleaved = 0
    for i, op in enumerate(trace):
        kind, _, name = op.partition(" ")
        if kind == "create" and name.endswith(".idx.tmp"):
            end = trace.index(f"rename {name}", i)
            interleaved += any(o.endswith(".seg") for o in trace[i:end])
    assert interleaved >= 3


async def test_a_seeded_tail_whose_torn_end_past_its_sidecar_was_cut(tmp_path: Path) -> None:
    """A crash after more appends to a reopened tail leaves the sidecar of the close before
    (covering a prefix) and a torn last frame. The next open seeds the running checksum from
    that sidecar, cuts the torn frame past what it covers, and the checksum then read from
    there on (the frames the sidecar does not cover), continued by the appends that follow,
    is the file's: its export loads with its checksum checked."""
    path = tmp_path / "s"
    async with es.EventStore(path, SMALL) as store:
        await fill(store, 2)
        for i in range(3):
            await store.append("tail", Note(text=str(i) * 50))
    last = sorted(path.glob("*.seg"))[-1]
    car = Path(sidecar_path(str(last)))
    older = car.read_bytes()
    covered = last.stat().st_size
    async with es.EventStore(path, SMALL) as store:
        for i in range(3, 6):
            await store.append("tail", Note(text=str(i) * 50))
    car.write_bytes(older)  # (as if the process had died before its close)
    with open(last, "r+b") as f:
        f.truncate(last.stat().st_size - 30)  # tear the last frame
    async with es.EventStore(path, SMALL) as store:
        assert store.recovery is not None and store.recovery.cut_path == str(last)
        segments, _ = internals(store)
        tail = segments[-1]
        assert tail.crc_end == covered < tail.file.size()  # seeded: the rest is read back
        await seal_more_and_reopen_verified(path, store, [str(i) * 50 for i in range(5)])
