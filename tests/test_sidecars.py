"""Index sidecar files: opening loads each segment's index instead of rescanning it, and a
missing, damaged or stale sidecar only costs a scan, never a wrong answer."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import aioeventstore as es
from aioeventstore._format import crc32c, segment_name
from aioeventstore._fs import OsFileSystem
from aioeventstore._indexfile import HEAD, META_HEAD, load, pack, unpack
from tests.helpers import Note

OPTS = es.StoreOptions(segment_bytes=8192)


async def fill(path: Path, appends: int = 300) -> None:
    async with es.EventStore(path, OPTS) as store:
        for i in range(appends):
            n = 1 + i % 3
            await store.append(f"s{i % 7}", [Note(text=f"{i}/{k}") for k in range(n)])
            if i % 50 == 0:
                await store.save_checkpoint("proj", store.head)


async def snapshot(path: Path) -> tuple[object, ...]:
    """Everything the index answers, read through the public API."""
    async with es.EventStore(path, OPTS) as store:
        rows = [(r.stream, r.version, r.position, r.id) async for r in store.read_all()]
        back = [r.position async for r in store.read_all(backwards=True, limit=50)]
        streams = {}
        for s in range(7):
            streams[s] = [
                (r.version, r.position) async for r in store.read_stream(f"s{s}", from_version=3)
            ]
        rec = store.recovery
        assert rec is not None
        stats = store.statistics()
        return rows, back, streams, store.checkpoint("proj"), store.head, stats.streams


def sidecars(path: Path) -> list[Path]:
    return sorted(path.glob("*.idx"))


async def test_a_clean_close_leaves_a_sidecar_per_segment_and_open_scans_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    await fill(path)
    segs = sorted(path.glob("*.seg"))
    assert len(segs) >= 4
    assert [p.stem for p in sidecars(path)] == [p.stem for p in segs]
    async with es.EventStore(path, OPTS) as store:
        rec = store.recovery
        assert rec is not None
        assert rec.indexed_segments == len(segs) and rec.scanned_bytes == 0
        assert store.checkpoint("proj") is not None
        # the idempotency window is rebuilt from the index: a retry with the same ids
        ids = [es.NewEvent(Note(text="x"), id=uuid.uuid4())]
        first = await store.append("retry", ids)
    async with es.EventStore(path, OPTS) as store:
        assert await store.append("retry", ids) == first


async def test_the_index_from_sidecars_answers_exactly_as_a_full_scan(tmp_path: Path) -> None:
    path = tmp_path / "s"
    await fill(path)
    with_sidecars = await snapshot(path)
    for p in sidecars(path):
        p.unlink()
    scanned = await snapshot(path)
    assert scanned == with_sidecars
    assert len(sidecars(path)) == len(list(path.glob("*.seg")))  # written again


async def test_damaged_or_foreign_sidecars_are_ignored_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "s"
    await fill(path)
    truth = await snapshot(path)
    cars = sidecars(path)
    raw = bytearray(cars[0].read_bytes())
    raw[len(raw) // 2] ^= 0x40
    cars[0].write_bytes(bytes(raw))  # checksum mismatch
    cars[1].write_bytes(cars[2].read_bytes())  # another segment's sidecar
    cars[2].write_bytes(b"")  # empty
    async with es.EventStore(path, OPTS) as store:
        rec = store.recovery
        assert rec is not None
        assert rec.indexed_segments == len(cars) - 3 and rec.scanned_bytes > 0
    assert await snapshot(path) == truth
    async with es.EventStore(path, OPTS) as store:  # rewritten: nothing to scan now
        assert store.recovery is not None and store.recovery.scanned_bytes == 0


async def first_sidecar_ignored(path: Path, cars: list[Path], truth: tuple[object, ...]) -> None:
    """Opening ``path`` loads every sidecar but the first, scans that segment instead, and
    answers as ``truth``."""
    async with es.EventStore(path, OPTS) as store:
        rec = store.recovery
        assert rec is not None
        assert rec.indexed_segments == len(cars) - 1 and rec.scanned_bytes > 0
    assert await snapshot(path) == truth


@pytest.mark.parametrize("rows", ["one row one event more", "a stream one event fewer"])
async def test_a_sidecar_whose_rows_and_streams_disagree_is_not_loaded(
    tmp_path: Path, rows: str
) -> None:
    """A sidecar with a valid checksum whose rows hold more events than its streams list (a
    bug in what wrote it) is scanned instead: checked whether every row holds the same
    count (single-event appends, one comparison of bytes) or not (mixed appends)."""
    path = tmp_path / "s"
    if rows == "a stream one event fewer":
        async with es.EventStore(path, OPTS) as store:
            for i in range(300):
                await store.append(f"s{i % 7}", Note(text=str(i)))
    else:
        await fill(path)
    truth = await snapshot(path)
    cars = sidecars(path)
    car = unpack(cars[0].read_bytes())
    cnt = car.rows.cnt
    assert len(set(cnt)) == (1 if rows == "a stream one event fewer" else 3)
    if rows == "a stream one event fewer":
        car.rows.counts[0] -= 1
        del car.rows.positions[car.rows.counts[0]]  # the last of the first stream's
    else:
        cnt[0] += 1
    cars[0].write_bytes(pack(car))
    await first_sidecar_ignored(path, cars, truth)


@pytest.mark.parametrize("damage", ["a negative stream count", "version 1, rows going back"])
async def test_a_sidecar_with_impossible_counts_is_not_loaded(tmp_path: Path, damage: str) -> None:
    """Sidecars with a valid checksum but counts no writer makes (a stream with a negative
    number of events; in a version-1 sidecar, whose row counts are derived, a row before the
    one ahead of it) are ignored and their segment scanned, as a damaged one is."""
    path = tmp_path / "s"
    await fill(path)
    truth = await snapshot(path)
    cars = sidecars(path)
    raw = cars[0].read_bytes()
    if damage == "a negative stream count":
        car = unpack(raw)
        counts = car.rows.counts
        assert len(counts) >= 2
        counts[1] += counts[0] + 1  # the total stays the same
        counts[0] = -1
        cars[0].write_bytes(pack(car))
    else:
        car = unpack(raw)
        v2_tail = 4 * len(car.rows.pos) + 8 * len(car.rows.names) + META_HEAD.size + 4
        body = bytearray(raw[:-v2_tail])  # a version-1 sidecar has no row counts, firsts, metas
        body[8:10] = (1).to_bytes(2, "little")  # the version field
        at = HEAD.size  # the rows' first positions: the first two swapped
        body[at : at + 16] = body[at + 8 : at + 16] + body[at : at + 8]
        body += crc32c(bytes(body)).to_bytes(4, "little")
        cars[0].write_bytes(bytes(body))
    await first_sidecar_ignored(path, cars, truth)


async def test_after_a_crash_only_what_follows_the_sidecars_is_scanned(tmp_path: Path) -> None:
    """A writer killed with SIGKILL leaves sidecars for its sealed segments only; the next
    open loads those and scans the tail segment, and loses nothing acknowledged."""
    path = tmp_path / "s"
    script = textwrap.dedent(
        f"""
        import asyncio, os, sys
        import aioeventstore as es
        from tests.helpers import Note

        async def main() -> None:
            store = await es.EventStore({str(path)!r}, segment_bytes=8192).open()
            for i in range(400):
                await store.append(f"s{{i % 7}}", Note(text=str(i)))
            print(store.head, flush=True)
            os.kill(os.getpid(), 9)

        asyncio.run(main())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        check=False,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    head = int(proc.stdout.strip())
    segs = sorted(path.glob("*.seg"))
    assert len(segs) >= 3
    assert [p.stem for p in sidecars(path)] == [p.stem for p in segs[:-1]]
    async with es.EventStore(path, OPTS) as store:
        rec = store.recovery
        assert rec is not None
        assert rec.indexed_segments == len(segs) - 1
        assert 0 < rec.scanned_bytes <= os.path.getsize(segs[-1])
        assert store.head == head
        got = [r.data.text async for r in store.read_all() if isinstance(r.data, Note)]
        assert got == [str(i) for i in range(400)]


async def test_a_sidecar_for_a_shortened_segment_is_stale(tmp_path: Path) -> None:
    """A segment cut shorter after its sidecar was written (a repair, a restore from an older
    copy) is scanned: the sidecar never vouches for frames that are gone."""
    path = tmp_path / "s"
    await fill(path)
    last = sorted(path.glob("*.seg"))[-1]
    size = last.stat().st_size
    with open(last, "r+b") as f:
        f.truncate(size - 40)  # the last frame is torn now
    async with es.EventStore(path, OPTS) as store:
        rec = store.recovery
        assert rec is not None
        assert rec.cut_path == str(last)
        assert rec.indexed_segments == len(sidecars(path)) - 1
        n = 0
        async for _ in store.read_all():
            n += 1
        assert n == store.head + 1


async def test_verify_on_open_checksums_what_sidecars_cover(tmp_path: Path) -> None:
    """Damage in the middle of a sealed segment: trusted by default until a read reaches it;
    found by opening with ``verify_on_open``."""
    path = tmp_path / "s"
    await fill(path)
    first = sorted(path.glob("*.seg"))[0]
    raw = bytearray(first.read_bytes())
    raw[200] ^= 0x01
    first.write_bytes(bytes(raw))
    # (a small idempotency window: open reads the window's frames, which would find it)
    async with es.EventStore(path, OPTS, idempotency_window=10) as store:
        try:
            async for _ in store.read_all():
                pass
        except es.CorruptLog as exc:
            assert exc.path == str(first)
        else:
            raise AssertionError("a read returned damaged data")
    try:
        async with es.EventStore(path, OPTS, verify_on_open=True):
            pass
    except es.CorruptLog as exc:
        assert exc.path == str(first)
    else:
        raise AssertionError("verify_on_open missed the damage")


# A sealed segment whose successor recovery removes (a rotation that crashed before the new
# segment's header was written) becomes the tail again and is exported on close: its rows
# must carry their streams (found by review; see also test_sidecar_sweep.py).
async def test_tail_sidecar_after_removed_half_made_segment(tmp_path: Path) -> None:
    path = tmp_path / "s"
    await fill(path)  # clean close: every segment has a sidecar
    truth = await snapshot(path)
    assert len(sidecars(path)) >= 2
    async with es.EventStore(path, OPTS) as store:
        head = store.head
    # A rotation killed between creating the next segment and writing its header
    # (a SIGKILL after open(O_CREAT), before pwrite): an empty file named after head + 1.
    (path / segment_name(head + 1)).write_bytes(b"")
    async with es.EventStore(path, OPTS) as store:  # removes it; the old tail is the tail
        assert store.head == head
    # that close wrote the tail's sidecar from rows whose stream ids were never loaded
    assert await snapshot(path) == truth


async def test_a_stale_idx_tmp_does_not_block_sidecars_forever(tmp_path: Path) -> None:
    """A crash (or a failed pwrite/sync, e.g. ENOSPC) between creating ``N.idx.tmp`` and
    renaming it leaves the temporary file; ``write`` creates it with O_EXCL, so every later
    attempt for that segment fails and the segment is scanned on every open from then on."""
    path = tmp_path / "s"
    await fill(path)
    first = sidecars(path)[0]
    first.unlink()
    first.with_name(first.name + ".tmp").write_bytes(b"half")  # the crash's leftover
    for _ in range(2):
        async with es.EventStore(path, OPTS) as store:
            rec = store.recovery
            assert rec is not None
    assert first.exists(), "the sidecar was never written again"
    async with es.EventStore(path, OPTS) as store:
        assert store.recovery is not None and store.recovery.scanned_bytes == 0


async def test_repair_removes_the_sidecars_of_what_it_cuts(tmp_path: Path) -> None:
    """A named consumer's checkpoint frame at the end of a segment, damaged and cut by repair:
    the store must then answer as its log says, with or without sidecars."""
    from aioeventstore._verify import repair_store

    path = tmp_path / "s"
    async with es.EventStore(path, OPTS) as store:
        for i in range(5):
            await store.append("s", Note(text=str(i)))
        await store.save_checkpoint("proj", 1)
        await store.save_checkpoint("proj", 3)
    last = sorted(path.glob("*.seg"))[-1]
    raw = bytearray(last.read_bytes())
    raw[-3] ^= 0xFF  # inside the last frame: the checkpoint at 3
    last.write_bytes(bytes(raw))
    report = repair_store(path, options=OPTS)
    assert report.after is not None and report.after.ok
    assert not (path / (last.stem + ".idx")).exists()
    async with es.EventStore(path, OPTS) as store:
        with_sidecars = store.checkpoint("proj")
    for idx in sidecars(path):
        idx.unlink()
    async with es.EventStore(path, OPTS) as store:
        assert store.checkpoint("proj") == with_sidecars == 1


async def test_old_segments_load_without_translating_stream_ids_and_export_the_same(
    tmp_path: Path,
) -> None:
    """Opening translates the rows' stream ids for the last two segment files only (only a
    tail is exported again as a rule). Older rows keep their sidecar's ids; an export reads
    them translated (it gives the very rows of the sidecar they came from, at any step
    size), or refuses when the sidecar covers its segment whole and no export was expected;
    a scavenge that rewrites such a segment gives it its ids: its new sidecar answers as a
    scan does."""
    path = tmp_path / "s"
    await fill(path)
    async with es.EventStore(path, OPTS) as store:
        index = store._index
        segs = len(store._log.segments)
        assert segs >= 4
        assert set(index._sidless) == set(range(segs - 2))
        fs = OsFileSystem()
        kinds = set()
        for ordinal in range(segs - 1):
            seg = store._log.segments[ordinal]
            car = load(fs, seg, seg.first_position, checksum=True)
            assert car is not None
            r0, r1 = index.segment_rows(ordinal)
            own = index._sidless.get(ordinal)
            # a segment its sidecar covers whole keeps no map: no export can reach it
            kind = "now" if own is None else "never" if own[1] is None else "on export"
            assert (kind == "never") == (ordinal < segs - 2 and car.covered_end == seg.file.size())
            kinds.add(kind)
            for step in (1, 3, r1 - r0):
                steps = index.export_steps(r0, r1, car.end_position, step, step)
                try:
                    while True:
                        next(steps)
                except StopIteration as done:
                    assert kind != "never"
                    assert done.value == car.rows, (ordinal, step)
                except AssertionError as exc:
                    assert kind == "never" and "have no ids" in str(exc)
        assert {"now", "never"} <= kinds
        await store.delete_stream("s3")
        report = await store.scavenge()
        assert report.segments_rewritten >= segs - 2
        assert not set(index._sidless) & set(range(segs - 1))  # each rewritten one: its ids
    with_sidecars = await snapshot(path)
    for p in sidecars(path):
        p.unlink()
    assert await snapshot(path) == with_sidecars


async def test_the_tail_a_removed_half_made_segment_leaves_is_sealed_with_its_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The segment before a half-made last one is one of the last two segment files: its
    rows keep their stream ids, so when it becomes the tail again, takes appends, is sealed
    by a rotation and then rewritten by a scavenge, every export is written (none refused)
    and the sidecars answer as a scan does."""
    path = tmp_path / "s"
    await fill(path)
    async with es.EventStore(path, OPTS) as store:
        head = store.head
        segs = len(store._log.segments)
    assert segs >= 4
    (path / segment_name(head + 1)).write_bytes(b"")  # a rotation killed before its header
    with caplog.at_level(logging.WARNING, logger="aioeventstore"):
        async with es.EventStore(path, OPTS) as store:
            index = store._index
            assert store.head == head and len(store._log.segments) == segs
            tail = segs - 1  # the old tail: one of the last two files when they were listed
            assert set(index._sidless) == set(range(tail))
            for i in range(40):  # into the old tail, then past it
                await store.append(f"s{i % 7}", [Note(text=f"more {i}") for _ in range(3)])
            assert len(store._log.segments) > segs
            await store.delete_stream("s2")
            report = await store.scavenge()
            assert report.segments_rewritten >= tail
            assert not index._sidless
            await store.append("end", Note(text="z"))  # (no metadata frame after it to scan)
        async with es.EventStore(path, OPTS) as store:
            assert store.recovery is not None and store.recovery.scanned_bytes == 0
    assert not [r for r in caplog.records if "sidecar" in r.getMessage()]
    with_sidecars = await snapshot(path)
    for p in sidecars(path):
        p.unlink()
    assert await snapshot(path) == with_sidecars


@pytest.mark.parametrize("rotations", [1, 2], ids=["second-to-last", "older"])
async def test_a_sealed_segment_whose_sidecar_covers_a_prefix_gets_a_whole_one(
    tmp_path: Path, rotations: int
) -> None:
    """A crash after a reopened tail was sealed, before its new sidecar was written, leaves
    the sidecar of the close before: it covers a prefix of a segment that is no longer the
    tail. Opening scans the rest, and writes that segment's sidecar again (its rows from the
    old sidecar translated as the export reads them, when it is older than the last two
    files), so the open after scans nothing (it used to rescan that part on every open)."""
    path = tmp_path / "s"
    await fill(path)
    tail = sorted(path.glob("*.seg"))[-1]
    prefix_car = (path / f"{tail.stem}.idx").read_bytes()  # the tail's, from the clean close
    async with es.EventStore(path, OPTS) as store:
        segs = len(store._log.segments)
        i = 0
        while len(store._log.segments) < segs + rotations:  # that tail is sealed, and more
            await store.append(f"more-{i % 3}", Note(text=f"{i}" * 40))
            i += 1
    (path / f"{tail.stem}.idx").write_bytes(prefix_car)  # its export after the seal was lost
    truth = None
    async with es.EventStore(path, OPTS) as store:
        rec = store.recovery
        assert rec is not None and rec.scanned_bytes > 0  # the part the old sidecar missed
        assert (segs - 1 in store._index._sidless) == (rotations == 2)  # ids not translated
        truth = [(r.stream, r.version, r.position) async for r in store.read_all()]
    async with es.EventStore(path, OPTS, verify_on_open=True) as store:
        rec = store.recovery
        assert rec is not None and rec.scanned_bytes == 0
        assert [(r.stream, r.version, r.position) async for r in store.read_all()] == truth
        assert len(truth) == store.head + 1
    with_sidecars = await snapshot(path)
    for p in sidecars(path):
        p.unlink()
    assert await snapshot(path) == with_sidecars


@pytest.mark.parametrize("half_made", [False, True], ids=["whole", "half-made-last"])
async def test_an_older_prefix_sidecar_over_containers_is_written_again_as_a_scan_would(
    tmp_path: Path, half_made: bool
) -> None:
    """The prefix-sidecar case with compressed containers (several rows share one location),
    the old sidecar's streams going on past it, and, with ``half_made``, a half-made last
    file that recovery removes (it still counts among the files listed: the prefix segment's
    rows keep their sidecar's ids). The open writes that segment's sidecar again byte for
    byte as it writes it after a full scan of the segment: a wrong translation of the ids
    would show only there, as reads never use a row's stream id."""
    opts = es.StoreOptions(segment_bytes=8192, compression="zstd")
    path = tmp_path / "s"

    async def wave(store: es.EventStore, i: int) -> None:  # a batch over 1 KiB: a container
        await asyncio.gather(
            *(store.append(f"s{(i + j) % 7}", Note(text=f"{i}/{j}" * 20)) for j in range(12))
        )

    async with es.EventStore(path, opts) as store:
        for i in range(20):
            await wave(store, i)
    tail = sorted(path.glob("*.seg"))[-1]
    prefix_car = (path / f"{tail.stem}.idx").read_bytes()
    async with es.EventStore(path, opts) as store:
        segs = len(store._log.segments)
        i = 0
        while len(store._log.segments) < segs + 2 - half_made:  # the same streams go on
            await wave(store, i)
            i += 1
        head = store.head
    (path / f"{tail.stem}.idx").write_bytes(prefix_car)  # its export after the seal was lost
    if half_made:
        (path / segment_name(head + 1)).write_bytes(b"")  # a rotation killed before its header
    ref = tmp_path / "ref"
    shutil.copytree(path, ref)
    (ref / f"{tail.stem}.idx").unlink()
    async with es.EventStore(path, opts) as store:
        rec = store.recovery
        assert rec is not None and rec.scanned_bytes > 0
        assert len(store._log.segments) == segs + 2 - half_made  # (the half-made one removed)
        assert segs - 1 in store._index._sidless  # two files or more after it when listed
        truth = [(r.stream, r.version, r.position) async for r in store.read_all()]
        r0, r1 = store._index.segment_rows(segs - 1)
        assert len(set(store._index._frame_off[r0:r1])) < r1 - r0  # containers
    async with es.EventStore(ref, opts):  # that segment scanned whole, its sidecar written
        pass
    assert (path / f"{tail.stem}.idx").read_bytes() == (ref / f"{tail.stem}.idx").read_bytes()
    async with es.EventStore(path, opts) as store:
        assert store.recovery is not None and store.recovery.scanned_bytes == 0
        assert [(r.stream, r.version, r.position) async for r in store.read_all()] == truth
    with_sidecars = await snapshot(path)
    for p in sidecars(path):
        p.unlink()
    assert await snapshot(path) == with_sidecars


async def test_a_break_found_through_a_sidecar_is_reported_at_the_frame_a_scan_names(
    tmp_path: Path,
) -> None:
    """A stream's versions break across a segment deleted by hand: ``verify`` and an open
    without sidecars name the frame where the stream goes on; an open with sidecars named
    byte 32 (the segment header) of that file."""
    from aioeventstore._verify import verify_store

    path = tmp_path / "s"
    async with es.EventStore(path, segment_bytes=4096) as store:
        await store.append("A", Note(text="0"))
        for i in range(60):
            await store.append(f"u-{i}", Note(text="p" * 200))
            if i in (25, 45):
                await store.append("A", Note(text=str(i)))
        second = [r.position async for r in store.read_stream("A")][1]
    segs = sorted(path.glob("*.seg"))
    victim = [p for p in segs if int(p.name[:20]) <= second][-1]
    victim.unlink()
    victim.with_suffix(".idx").unlink()
    report = verify_store(str(path))
    bad = next(s for s in report.segments if s.problem is not None)
    assert bad.problem is not None and bad.problem.offset > 32
    found = []
    for _ in range(2):  # with the sidecars, then without
        with pytest.raises(es.CorruptLog) as info:
            await es.EventStore(path).open()
        found.append((info.value.path, info.value.offset))
        for idx in path.glob("*.idx"):
            idx.unlink()
    assert found == [(bad.path, bad.problem.offset)] * 2
