"""Opening a damaged log: torn tails are cut, anything else is reported as CorruptLog."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any, Unpack

import pytest

import aioeventstore as es
from aioeventstore import OptionOverrides
from aioeventstore._format import SEGMENT_HEADER_SIZE, check_frame
from tests.helpers import Note


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


async def write_log(path: Path, n: int, **options: Unpack[OptionOverrides]) -> list[int]:
    """n appends of one or two events, each its own batch; returns each frame's offset."""
    offsets = []
    async with es.EventStore(path, **options) as store:
        for i in range(n):
            segs = segments(path)
            offsets.append(segs[-1].stat().st_size)
            events = [Note(text=f"e{i}")] if i % 2 else [Note(text=f"e{i}"), Note(text=f"e{i}+")]
            await store.append(f"s-{i % 3}", events)
    return offsets


async def texts(path: Path) -> list[str]:
    async with es.EventStore(path) as store:
        out = []
        async for rec in store.read_all():
            assert isinstance(rec.data, Note)
            out.append(rec.data.text)
        return out


def expected_texts(n: int) -> list[str]:
    out = []
    for i in range(n):
        out += [f"e{i}"] if i % 2 else [f"e{i}", f"e{i}+"]
    return out


async def test_torn_tail_is_cut_at_every_byte_offset(tmp_path: Path) -> None:
    original = tmp_path / "original"
    offsets = await write_log(original, 6)
    seg = segments(original)[0]
    size = seg.stat().st_size
    last = offsets[-1]
    for cut in range(last, size):
        work = tmp_path / f"cut-{cut}"
        shutil.copytree(original, work)
        with open(work / seg.name, "r+b") as f:
            f.truncate(cut)
        async with es.EventStore(work) as store:
            assert store.head == len(expected_texts(5)) - 1
            rec = store.recovery
            assert rec is not None
            if cut > last:
                assert rec.cut_offset == last and rec.cut_bytes == cut - last
                assert rec.cut_path == str(work / seg.name) and rec.cut_reason
            # the store takes new appends right where the cut left it
            r = await store.append("after", Note(text="after"))
            assert r.position == store.head == len(expected_texts(5))
        assert await texts(work) == [*expected_texts(5), "after"]
        assert (work / seg.name).stat().st_size > last
        shutil.rmtree(work)


@pytest.mark.parametrize("junk", [b"\x00" * 4096, b"\xc1AEF" + b"\x07" * 300, os.urandom(999)])
async def test_junk_after_the_last_frame_is_a_torn_tail(store_path: Path, junk: bytes) -> None:
    await write_log(store_path, 4)
    seg = segments(store_path)[0]
    good = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(junk)
    assert await texts(store_path) == expected_texts(4)
    assert seg.stat().st_size == good  # cut, and the cut is on disk


async def test_flipped_byte_mid_log_is_reported_with_file_and_offset(tmp_path: Path) -> None:
    original = tmp_path / "original"
    offsets = await write_log(original, 7)
    seg = segments(original)[0]
    frame, end = offsets[3], offsets[4]
    for at in range(frame, end):
        work = tmp_path / f"flip-{at}"
        shutil.copytree(original, work)
        with open(work / seg.name, "r+b") as f:
            f.seek(at)
            byte = f.read(1)
            f.seek(at)
            f.write(bytes([byte[0] ^ 0x5A]))
        with pytest.raises(es.CorruptLog) as info:
            async with es.EventStore(work):
                pass
        assert info.value.path == str(work / seg.name)
        assert info.value.offset == frame
        assert f"at byte offset {frame}" in str(info.value)
        # nothing was cut: the damaged file is left as it was for inspection or repair
        assert (work / seg.name).stat().st_size == seg.stat().st_size
        # and the lock was released: a second try fails the same way, not with StoreLocked
        with pytest.raises(es.CorruptLog):
            await es.EventStore(work).open()
        shutil.rmtree(work)


async def test_damage_inside_the_final_write_reads_as_a_torn_tail(store_path: Path) -> None:
    # Documented limit: bytes of the last write cannot be told apart from a torn write.
    offsets = await write_log(store_path, 5)
    seg = segments(store_path)[0]
    with open(seg, "r+b") as f:
        f.seek(offsets[-1] + 30)
        f.write(b"\xff")
    assert await texts(store_path) == expected_texts(4)


async def test_rotation_reopen_and_continue(store_path: Path) -> None:
    opts = es.StoreOptions(segment_bytes=4096)
    await write_log(store_path, 120, segment_bytes=4096)
    names = [p.name for p in segments(store_path)]
    assert len(names) > 3
    assert names[0] == "00000000000000000000.seg"
    for p in segments(store_path)[:-1]:
        assert p.stat().st_size <= 4096
    async with es.EventStore(store_path, opts) as store:
        assert store.recovery is not None and store.recovery.segments == len(names)
        for i in range(50):
            await store.append("more", Note(text=f"m{i}"))
        first_of_each = [int(p.name.split(".")[0]) for p in segments(store_path)]
        starts = [r.position async for r in store.read_all() if r.position in first_of_each]
        assert starts == first_of_each
    assert await texts(store_path) == expected_texts(120) + [f"m{i}" for i in range(50)]


async def test_bad_frame_in_an_older_segment_is_corruption(store_path: Path) -> None:
    await write_log(store_path, 60, segment_bytes=4096)
    first = segments(store_path)[0]
    data = first.read_bytes()
    at = last = SEGMENT_HEADER_SIZE
    while at < len(data):  # the last frame's offset
        last, at = at, at + check_frame(data, at, len(data)).length
    with open(first, "r+b") as f:
        f.truncate(first.stat().st_size - 5)  # a "torn" end, but a later segment exists
    with pytest.raises(es.CorruptLog) as info:
        await es.EventStore(store_path).open()
    assert info.value.path == str(first) and info.value.offset == last
    assert f"{first} at byte offset {last}" in str(info.value)


async def test_missing_segment_is_corruption(store_path: Path) -> None:
    await write_log(store_path, 90, segment_bytes=4096)
    segs = segments(store_path)
    segs[1].unlink()
    with pytest.raises(es.CorruptLog, match="expected"):
        await es.EventStore(store_path).open()


@pytest.mark.parametrize("header_bytes", [0, 10, 31])
async def test_segment_with_a_torn_header_is_removed(store_path: Path, header_bytes: int) -> None:
    await write_log(store_path, 30, segment_bytes=4096)
    segs = segments(store_path)
    nxt = len(expected_texts(30))
    torn = store_path / f"{nxt:020d}.seg"
    torn.write_bytes(segs[0].read_bytes()[:header_bytes])
    async with es.EventStore(store_path, segment_bytes=4096) as store:
        assert store.head == nxt - 1
        await store.append("x", Note(text="new"))
    assert await texts(store_path) == [*expected_texts(30), "new"]


async def test_bad_header_in_an_older_segment_is_corruption(store_path: Path) -> None:
    await write_log(store_path, 60, segment_bytes=4096)
    first = segments(store_path)[0]
    with open(first, "r+b") as f:
        f.write(b"NOTALOG!")
    with pytest.raises(es.CorruptLog, match="bad segment magic"):
        await es.EventStore(store_path).open()


async def test_a_damaged_tail_longer_than_one_write_is_not_cut(store_path: Path) -> None:
    opts = es.StoreOptions(max_batch_bytes=4096, max_append_bytes=1024, max_event_bytes=1024)
    async with es.EventStore(store_path, opts) as store:
        for i in range(200):
            await store.append("s", Note(text=f"e{i}"))
    seg = segments(store_path)[0]
    size = seg.stat().st_size
    with open(seg, "r+b") as f:  # no frame parses any more: it all looks like one torn tail
        f.seek(32)
        f.write(bytes(size - 32))
    with pytest.raises(es.CorruptLog, match="more than one write"):
        await es.EventStore(store_path, opts).open()
    assert seg.stat().st_size == size  # nothing was cut


async def test_store_verify_reports_every_segment_while_open(store_path: Path) -> None:
    async with es.EventStore(store_path, segment_bytes=4096) as store:
        for i in range(80):
            await store.append(f"s{i % 4}", [Note(text=f"e{i}"), Note(text=f"f{i}")])
        await store.save_checkpoint("c", 10)
        report = await store.verify()
        assert report.ok and not report.corrupt and report.first_problem is None
        assert report.events == 160 == store.head + 1
        assert len(report.segments) == len(segments(store_path)) > 1
        assert report.segments[0].first_position == 0
        assert report.segments[-1].last_position == 159
        assert isinstance(report, es.VerifyReport)


class Padded(es.Event):
    pad: str


def _event_with_frame(frame: int, stream: str) -> Padded:
    """An event whose one-event frame in ``stream`` is ``frame`` bytes."""
    from aioeventstore._codec import encode_event
    from aioeventstore._format import BODY_HEAD_SIZE, FRAME_HEADER_SIZE

    target = frame - FRAME_HEADER_SIZE - BODY_HEAD_SIZE - len(stream)
    for n in range(max(0, target - 200), target + 10):
        _, entry, *_ = encode_event(stream, Padded(pad="x" * n), 1 << 30)
        if len(entry) == target:
            return Padded(pad="x" * n)
    raise AssertionError(frame)


async def test_a_batch_with_a_metadata_write_is_never_longer_than_one_write_can_be(
    tmp_path: Path,
) -> None:
    """A metadata frame's body is made when its batch is planned, after the queue cut the
    batch at max_batch_bytes by the sizes queued: a batch could be written a few bytes
    longer than recovery assumes one write can be, and a torn copy of it was then
    CorruptLog instead of a torn tail to cut."""
    opts: dict[str, Any] = {
        "max_event_bytes": 1024,
        "max_append_bytes": 1024,
        "max_batch_bytes": 8192,
    }
    path = tmp_path / "s"
    crashed = tmp_path / "crashed"
    store = await es.EventStore(path, **opts).open()
    await store.append("m", Note(text="first"))
    seg = next(path.glob("*.seg"))
    writes: list[tuple[int, int]] = []  # (offset, bytes) of each batch's write
    real = store._log.write

    def write(plan: Any, data: bytes, sync: bool) -> None:
        writes.append((plan.offset, len(data)))
        real(plan, data, sync)

    store._log.write = write  # type: ignore[method-assign]
    events = [_event_with_frame(1077, "a")] * 7 + [_event_with_frame(600, "a")]
    appends = [store.append("a", e) for e in events]  # 8,139 bytes of frames, and a metadata
    await asyncio.gather(*appends, store.set_stream_metadata("m", max_count=5))  # write's
    assert max(n for _, n in writes) <= store._log.max_write_bytes()
    assert len(writes) == 2  # (the metadata write did not fit the appends' batch)
    pristine = tmp_path / "before-close"
    shutil.copytree(path, pristine)  # (as a crash would leave it: no sidecar for the tail)
    await store.close()
    (first, _), (last, n2) = writes
    whole = (last - first) // 2 // 1077  # appends wholly in the first write's first half
    for torn, ends, head in ((last, last + n2, 8), (first, last, whole)):  # a crash in each
        shutil.rmtree(crashed, ignore_errors=True)
        shutil.copytree(pristine, crashed)
        with open(crashed / seg.name, "r+b") as f:  # the write's second half never got there
            f.truncate(ends)
            f.seek(torn + (ends - torn) // 2)
            f.write(bytes(ends - torn - (ends - torn) // 2))
        async with es.EventStore(crashed, **opts) as again:  # a torn tail, cut
            assert again.stream_metadata("m").max_count is None and again.head == head
