"""Per-batch zstd compression (``StoreOptions.compression``): containers of frames (kind 3).

Reads of every kind agree with what was appended whether the frames are compressed, plain or
both (a store reopened with compression toggled); the idempotency window and checkpoints are
rebuilt from containers on open; damage inside a container is reported like damage to any
frame (path and offset of the container), a stated size is never trusted past the cap, and a
power cut at any operation of a compressed workload loses nothing acknowledged.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pytest

import aioeventstore as es
from aioeventstore import _compress
from aioeventstore._cli import main as cli_main
from aioeventstore._format import (
    CODEC_ZSTD,
    CONTAINER_HEAD,
    FRAME_KIND_CHECKPOINT,
    FRAME_KIND_COMPRESSED,
    MAX_CONTAINER_RAW,
    SEGMENT_HEADER_SIZE,
    FrameInfo,
    check_frame,
    pack_frame,
)
from aioeventstore._fs import FileSystem, OsFileSystem
from aioeventstore._verify import repair_store, verify_store
from tests.crashload import STORE, reopen_and_check, run_workload
from tests.helpers import Deposited, Note, take
from tests.simfs import LOSS_MODES, LossMode, SimFS

ZSTD = es.StoreOptions(compression="zstd")


@dataclass
class Expected:
    """What was appended, by position: stream, version, data, metadata, id."""

    rows: dict[int, tuple[str, int, es.Event, dict[str, Any], uuid.UUID]]

    def ordered(self) -> list[tuple[str, int, es.Event, dict[str, Any], uuid.UUID]]:
        assert sorted(self.rows) == list(range(len(self.rows)))
        return [self.rows[p] for p in range(len(self.rows))]


def make_events(i: int, n: int) -> list[es.NewEvent]:
    out = []
    for k in range(n):
        event: es.Event = (
            Deposited(account=f"a{i % 5}", amount=i * 10 + k)
            if (i + k) % 3
            else Note(text=f"note {i}/{k} " + "x" * (i % 40))
        )
        meta = {"i": i} if i % 4 == 0 else {}
        out.append(es.NewEvent(event, id=uuid.UUID(int=i * 100 + k + 1), metadata=meta))
    return out


async def append_wave(store: es.EventStore, expected: Expected, start: int, count: int) -> None:
    """``count`` concurrent appends (so that they share batches), 1-3 events each."""

    async def one(i: int) -> None:
        events = make_events(i, 1 + i % 3)
        stream = f"s{i % 7}"
        r = await store.append(stream, events)
        n = len(events)
        for k, ev in enumerate(events):
            expected.rows[r.position - n + 1 + k] = (
                stream,
                r.version - n + 1 + k,
                ev.event,
                dict(ev.metadata or {}),
                ev.id or uuid.uuid4(),
            )

    await asyncio.gather(*(one(i) for i in range(start, start + count)))


def disk_frames(directory: Path, fs: FileSystem | None = None) -> list[tuple[str, FrameInfo]]:
    """Every frame on disk, in log order (containers as one frame)."""
    fs = fs if fs is not None else OsFileSystem()
    out = []
    for name in sorted(n for n in fs.listdir(str(directory)) if n.endswith(".seg")):
        path = os.path.join(str(directory), name)
        f = fs.open(path, write=False)
        try:
            data = f.pread(f.size(), 0)
        finally:
            f.close()
        at = SEGMENT_HEADER_SIZE
        while at < len(data):
            info = check_frame(data, at, len(data))
            out.append((path, info))
            at += info.length
    return out


def kinds(directory: Path, fs: FileSystem | None = None) -> Counter[int]:
    return Counter(info.kind for _, info in disk_frames(directory, fs))


async def check_reads(store: es.EventStore, expected: Expected, seed: int = 0) -> None:
    """Every read API agrees with what was appended, in both directions, from many start
    points, with limits, raw and filtered."""
    rows = expected.ordered()
    n = len(rows)
    assert store.head == n - 1
    got = [r async for r in store.read_all()]
    if not n:
        assert got == []
        return
    assert [(r.stream, r.version, r.data, dict(r.metadata), r.id) for r in got] == rows
    assert [r.position for r in got] == list(range(n))
    back = [r.position async for r in store.read_all(backwards=True)]
    assert back == list(range(n - 1, -1, -1))
    rng = random.Random(seed)
    for _ in range(12):
        start, limit = rng.randrange(n), rng.choice([None, 1, 2, 5, 37])
        fwd = [r.position async for r in store.read_all(from_position=start, limit=limit)]
        assert fwd == list(range(start, n))[:limit]
        bwd = [
            r.position
            async for r in store.read_all(from_position=start, backwards=True, limit=limit)
        ]
        assert bwd == list(range(start, -1, -1))[:limit]
    for _ in range(12):  # a chunk that ends inside a container returns only its own events
        start, most = rng.randrange(n), rng.choice([1, 2, 5])
        for backwards in (False, True):
            chunk = await store._reader.all_chunk(start, backwards, most, None)
            assert chunk is not None
            recs, nxt = chunk
            want = range(start, nxt, -1) if backwards else range(start, nxt)
            assert [r.position for r in recs] == list(want) and recs
    raw = [r.data async for r in store.read_all(raw=True, limit=50)]
    assert raw == [row[2].model_dump(mode="json") for row in rows[:50]]
    notes = [r.position async for r in store.read_all(filter=es.EventFilter(event_types=[Note]))]
    assert notes == [p for p, row in enumerate(rows) if isinstance(row[2], Note)]
    s3 = [r.position async for r in store.read_all(filter=es.EventFilter(stream_prefixes=["s3"]))]
    assert s3 == [p for p, row in enumerate(rows) if row[0] == "s3"]
    streams = sorted({row[0] for row in rows})
    for stream in streams:
        mine = [(p, row) for p, row in enumerate(rows) if row[0] == stream]
        got_s = [(r.position, r.version, r.data) async for r in store.read_stream(stream)]
        assert got_s == [(p, row[1], row[2]) for p, row in mine]
        last = len(mine) - 1
        back_s = [r.version async for r in store.read_stream(stream, backwards=True)]
        assert back_s == list(range(last, -1, -1))
        for _ in range(3):
            v, limit = rng.randrange(len(mine)), rng.choice([None, 1, 3])
            fwd = [r.version async for r in store.read_stream(stream, from_version=v, limit=limit)]
            assert fwd == list(range(v, last + 1))[:limit]
            bwd = [
                r.version
                async for r in store.read_stream(
                    stream, from_version=v, backwards=True, limit=limit
                )
            ]
            assert bwd == list(range(v, -1, -1))[:limit]


@pytest.mark.parametrize("chunk", [4096, 1 << 20])
async def test_round_trip_every_read(store_path: Path, chunk: int) -> None:
    expected = Expected({})
    async with es.EventStore(
        store_path, ZSTD, read_chunk_bytes=chunk, segment_bytes=64 * 1024
    ) as store:
        for wave in range(4):
            await append_wave(store, expected, wave * 150, 150)
        stats = store.statistics()
        await check_reads(store, expected)
        assert (await store.verify()).ok
    on_disk = kinds(store_path)
    assert on_disk[FRAME_KIND_COMPRESSED] >= 4
    assert stats.bytes_written == sum(p.stat().st_size - 32 for p in store_path.glob("*.seg"))
    async with es.EventStore(store_path, read_chunk_bytes=chunk) as store:  # reopened plain
        assert len([r async for r in store.read_all()]) == len(expected.rows)
        assert store._reader.decompressions == on_disk[FRAME_KIND_COMPRESSED]  # once each
        await check_reads(store, expected, seed=1)


async def test_compressed_batches_are_smaller(tmp_path: Path) -> None:
    sizes = {}
    for mode in get_args(es.Compression):
        expected = Expected({})
        async with es.EventStore(tmp_path / mode, compression=mode) as store:
            await append_wave(store, expected, 0, 300)
            sizes[mode] = store.statistics().bytes_written
    assert sizes["zstd"] < sizes["none"] / 2


async def test_tiny_batches_are_written_as_they_are(store_path: Path) -> None:
    async with es.EventStore(store_path, ZSTD) as store:
        for i in range(5):
            await store.append("s", Note(text=str(i)))
    assert set(kinds(store_path)) == {1}


async def test_mixed_store_reopened_with_compression_toggled(store_path: Path) -> None:
    expected = Expected({})
    start = 0
    modes: list[es.Compression] = ["none", "zstd", "none", "zstd", "none"]
    for phase, mode in enumerate(modes):
        async with es.EventStore(
            store_path, compression=mode, segment_bytes=32 * 1024, read_chunk_bytes=4096
        ) as store:
            await check_reads(store, expected, seed=phase)
            await append_wave(store, expected, start, 120)  # big batches
            start += 120
            for i in range(start, start + 5):  # and single appends
                await append_wave(store, expected, i, 1)
            start += 5
            await check_reads(store, expected, seed=phase)
            assert (await store.verify()).ok
    on_disk = kinds(store_path)
    assert on_disk[1] > 20 and on_disk[FRAME_KIND_COMPRESSED] >= 2
    report = verify_store(store_path)
    assert report.ok and report.events == len(expected.rows)


async def test_subscriptions_catch_up_over_containers_and_go_live(store_path: Path) -> None:
    expected = Expected({})
    async with es.EventStore(store_path, ZSTD, read_chunk_bytes=4096) as store:
        await append_wave(store, expected, 0, 200)
        total = len(expected.rows) + 300  # history and the live waves below
        stream_total = sum(1 for row in expected.rows.values() if row[0] == "s2")

        async def follow(sub: es.Subscription, n: int) -> list[int]:
            return [r.position for r in await take(sub, n)]

        async with (
            store.subscribe() as whole,
            store.subscribe(from_position=77, buffer_events=8) as late,
            store.subscribe(stream="s2", from_version=3) as one,
        ):
            tasks = [
                asyncio.ensure_future(follow(whole, total)),
                asyncio.ensure_future(follow(late, total - 77)),
            ]
            n0 = len(expected.rows)
            await append_wave(store, expected, 200, 100)
            await append_wave(store, expected, 300, 100)
            assert len(expected.rows) >= total
            total = len(expected.rows)
            stream_total = sum(1 for row in expected.rows.values() if row[0] == "s2")
            got_one = await follow(one, stream_total - 3)
            got_whole, got_late = await asyncio.gather(*tasks)
            assert n0 < total
        assert got_whole == list(range(len(got_whole))) and len(got_whole) >= n0
        assert got_late == list(range(77, 77 + len(got_late)))
        s2 = [p for p, row in sorted(expected.rows.items()) if row[0] == "s2"]
        assert got_one == s2[3:]


async def test_checkpoints_and_the_idempotency_window_survive_reopen(store_path: Path) -> None:
    expected = Expected({})
    async with es.EventStore(store_path, ZSTD) as store:
        await append_wave(store, expected, 0, 60)

        async def ack(position: int) -> None:
            await store.save_checkpoint("proj", position)

        # checkpoints saved while appends are queued land inside the same containers
        await asyncio.gather(append_wave(store, expected, 60, 120), ack(5), ack(40), ack(90))
    inner_kinds: Counter[int] = Counter()
    for path, info in disk_frames(store_path):
        if info.kind == FRAME_KIND_COMPRESSED:
            data = Path(path).read_bytes()[info.offset : info.offset + info.length]
            raw = _compress.expand(data, 0, len(data))
            inner_kinds.update(f.kind for f in _compress.inner_frames(raw, info))
    assert inner_kinds[FRAME_KIND_CHECKPOINT] >= 1 and inner_kinds[1] > 100
    for mode in ("zstd", "none"):
        async with es.EventStore(store_path, compression=mode) as store:
            assert store.checkpoint("proj") == 90
            head = store.head
            for i in (3, 61, 150):  # retries with ANY: from the window rebuilt on open
                events = make_events(i, 1 + i % 3)
                r = await store.append(f"s{i % 7}", events)
                assert expected.rows[r.position][4] == events[-1].id
            for i in (10, 100):  # retries with the exact expected version: ids read back
                events = make_events(i, 1 + i % 3)
                pos = next(p for p, row in expected.rows.items() if row[4] == events[0].id)
                stream, version = expected.rows[pos][0], expected.rows[pos][1]
                before = es.NO_STREAM if version == 0 else version - 1
                r = await store.append(stream, events, expected_version=before)
                assert r.version == version + len(events) - 1
            assert store.head == head


def _rewrite_frame(path: str, info: FrameInfo, frame: bytes) -> None:
    data = bytearray(Path(path).read_bytes())
    assert len(frame) == info.length
    data[info.offset : info.offset + info.length] = frame
    Path(path).write_bytes(bytes(data))


def _repack_container(path: str, info: FrameInfo, payload: bytes, count: int | None = None) -> None:
    """Replace a container's payload (container head + zstd bytes) keeping a valid CRC."""
    frame = b"".join(
        pack_frame(
            b"",
            info.event_count if count is None else count,
            info.first_position,
            0,
            info.recorded_at_us,
            info.write_offset,
            payload,
            FRAME_KIND_COMPRESSED,
        )
    )
    _rewrite_frame(path, info, frame)


async def _store_with_containers(store_path: Path) -> list[tuple[str, FrameInfo]]:
    expected = Expected({})
    async with es.EventStore(store_path, ZSTD) as store:
        for wave in range(3):
            await append_wave(store, expected, wave * 100, 100)
    containers = [(p, i) for p, i in disk_frames(store_path) if i.kind == FRAME_KIND_COMPRESSED]
    assert len(containers) >= 3
    return containers


async def test_damage_inside_a_container_is_reported_with_its_offset(store_path: Path) -> None:
    containers = await _store_with_containers(store_path)
    path, first = containers[0]
    data = bytearray(Path(path).read_bytes())
    data[first.offset + first.length // 2] ^= 0x40  # bit rot in the compressed bytes
    Path(path).write_bytes(bytes(data))
    report = verify_store(store_path)
    problem = report.first_problem
    assert problem is not None and report.corrupt
    assert (problem[0].path, problem[1].offset) == (path, first.offset)
    with pytest.raises(es.CorruptLog) as err:
        await es.EventStore(store_path).open()
    assert (err.value.path, err.value.offset) == (path, first.offset)
    repaired = repair_store(store_path)
    assert repaired.after is not None and repaired.after.ok
    async with es.EventStore(store_path) as store:
        assert store.head == first.first_position - 1
        assert len([r async for r in store.read_all()]) == first.first_position


async def test_a_torn_last_container_is_cut(store_path: Path) -> None:
    containers = await _store_with_containers(store_path)
    path, last = containers[-1]
    size = Path(path).stat().st_size
    assert last.offset + last.length == size
    with open(path, "r+b") as f:
        f.truncate(size - 7)
    report = verify_store(store_path)
    assert report.first_problem is not None and report.first_problem[1].torn
    async with es.EventStore(store_path) as store:
        assert store.recovery is not None
        assert (store.recovery.cut_path, store.recovery.cut_offset) == (path, last.offset)
        assert store.head == last.first_position - 1
        assert [r.position async for r in store.read_all()] == list(range(store.head + 1))


def _bad_size(raw: bytes, zpayload: bytes) -> bytes:
    return CONTAINER_HEAD.pack(CODEC_ZSTD, len(raw) - 1) + zpayload


def _over_cap(raw: bytes, zpayload: bytes) -> bytes:
    return CONTAINER_HEAD.pack(CODEC_ZSTD, MAX_CONTAINER_RAW + 1) + zpayload


def _garbage(raw: bytes, zpayload: bytes) -> bytes:
    return CONTAINER_HEAD.pack(CODEC_ZSTD, len(raw)) + bytes(len(zpayload))


def _bad_codec(raw: bytes, zpayload: bytes) -> bytes:
    return CONTAINER_HEAD.pack(7, len(raw)) + zpayload


@pytest.mark.parametrize(
    "damage",
    [_bad_size, _over_cap, _garbage, _bad_codec, "count"],
    ids=["size-mismatch", "size-over-cap", "not-zstd", "unknown-codec", "wrong-count"],
)
async def test_a_container_that_checks_but_does_not_expand_is_corruption(
    store_path: Path, damage: Any
) -> None:
    """The checksum holds (the bytes are as written), yet the container lies: its stated size
    (never trusted past the cap, never allocated unchecked), its codec, its data or its event
    count. Opening and verify both report the container's path and offset; nothing is cut."""
    containers = await _store_with_containers(store_path)
    path, first = containers[0]
    data = Path(path).read_bytes()[first.offset : first.offset + first.length]
    raw = _compress.expand(data, 0, len(data))
    zpayload = data[12 + 40 + 8 :]
    if damage == "count":
        _repack_container(path, first, data[52:], count=first.event_count + 1)
    else:
        _repack_container(path, first, damage(raw, zpayload))
    size = Path(path).stat().st_size
    with pytest.raises(es.CorruptLog) as err:
        await es.EventStore(store_path).open()
    assert (err.value.path, err.value.offset) == (path, first.offset)
    report = verify_store(store_path)
    assert report.corrupt and report.first_problem is not None
    assert report.first_problem[1].offset == first.offset
    assert Path(path).stat().st_size == size


async def test_without_zstandard_compression_is_refused_clearly(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _store_with_containers(store_path)
    plain = tmp_path / "plain"
    async with es.EventStore(plain) as store:
        await store.append("s", Note(text="x"))
    monkeypatch.setattr(_compress, "zstd", None)
    with pytest.raises(es.CompressionUnavailable, match=r"aioeventstore\[zstd\]"):
        await es.EventStore(plain, ZSTD).open()
    async with es.EventStore(plain) as store:  # a plain store needs no zstandard
        assert [r.data async for r in store.read_all()] == [Note(text="x")]
    with pytest.raises(es.CompressionUnavailable, match="compressed"):
        await es.EventStore(store_path).open()
    with pytest.raises(es.CompressionUnavailable):
        verify_store(store_path)
    out = io.StringIO()
    assert cli_main(["verify", str(store_path)], out) == 2  # a clear message, not a traceback
    assert issubclass(es.CompressionUnavailable, es.EventStoreError)


def test_option_checks() -> None:
    with pytest.raises(ValueError, match="compression"):
        es.StoreOptions(compression="lz4")  # type: ignore[arg-type]
    for level in (0, 23, True, 2.5):
        with pytest.raises(ValueError, match="compression_level"):
            es.StoreOptions(compression="zstd", compression_level=level)  # type: ignore[arg-type]
    assert es.StoreOptions(compression="zstd", compression_level=19).compression_level == 19


# --- crash sweep --------------------------------------------------------------------------
APPENDS = (
    20  # per producer: ~120 operations, 7 rotations; tests/test_crash_sweep.py is the full one
)


@pytest.mark.parametrize("mode", LOSS_MODES)
async def test_power_cut_at_every_operation_of_a_compressed_workload(mode: LossMode) -> None:
    """tests/test_crash_sweep.py's workload with ``compression="zstd"``: whatever the cut,
    recovery keeps every acknowledged append and cuts only torn containers; the store then
    reopens (without compression) and appends."""
    ref = SimFS(0)
    run = await run_workload(ref, appends=APPENDS, compression="zstd")
    assert run.error is None and len(run.acked()) > 40
    assert kinds(Path(STORE), ref)[FRAME_KIND_COMPRESSED] >= 5
    trace = ref.trace
    assert sum(op.startswith("create") for op in trace) >= 3  # segments rotate
    cut_tails = 0
    for k in range(len(trace)):
        fs = SimFS(k)
        fs.cut_at = k
        run = await run_workload(fs, appends=APPENDS, compression="zstd")
        assert fs.dead and fs.trace == trace[:k], "the workload is not deterministic"
        fs.reboot(mode, random.Random(k), tear=k % 2 == 1)
        store = await reopen_and_check(fs, run, exact=mode == "lost")
        assert store.recovery is not None
        if mode == "kept":
            assert store.recovery.cut_path is None
        cut_tails += store.recovery.cut_path is not None
    if mode == "torn":
        assert cut_tails > 5


async def test_a_whole_last_container_that_does_not_expand_is_never_cut(store_path: Path) -> None:
    """Damage that keeps the checksum is no torn write, even in the final write: opening
    refuses (CorruptLog) instead of cutting acknowledged events."""
    containers = await _store_with_containers(store_path)
    path, last = containers[-1]
    data = Path(path).read_bytes()[last.offset : last.offset + last.length]
    raw = _compress.expand(data, 0, len(data))
    _repack_container(path, last, _garbage(raw, data[60:]))
    size = Path(path).stat().st_size
    with pytest.raises(es.CorruptLog) as err:
        await es.EventStore(store_path).open()
    assert (err.value.path, err.value.offset) == (path, last.offset)
    report = verify_store(store_path)
    assert report.corrupt and report.first_problem is not None
    assert report.first_problem[1].offset == last.offset
    assert Path(path).stat().st_size == size


async def test_a_batch_of_checkpoints_alone_compresses_and_reads_back(store_path: Path) -> None:
    expected = Expected({})
    async with es.EventStore(store_path, ZSTD) as store:
        await append_wave(store, expected, 0, 50)
        await asyncio.gather(*(store.save_checkpoint(f"consumer-{k:02d}", k) for k in range(40)))
        await append_wave(store, expected, 50, 50)
    containers = [i for _, i in disk_frames(store_path) if i.kind == FRAME_KIND_COMPRESSED]
    assert any(i.event_count == 0 for i in containers)  # the checkpoints' batch
    async with es.EventStore(store_path) as store:
        assert [store.checkpoint(f"consumer-{k:02d}") for k in range(40)] == list(range(40))
        await check_reads(store, expected)
    assert verify_store(store_path).ok
