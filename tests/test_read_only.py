"""Read-only stores: no lock, nothing changed on disk, and following a running writer
through the public API (reads, ``head``, subscriptions) across segment rotations."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

import aioeventstore as es

from .helpers import Note


async def _collect(
    sub: es.Subscription, into: list[int], key: str, last: int | None = None
) -> None:
    """Put each delivered event's version (``key="version"``) or position into ``into``,
    until the event at position ``last`` (or the subscription's end)."""
    async with sub:
        async for rec in sub:
            into.append(rec.version if key == "version" else rec.position)
            if last is not None and rec.position >= last:
                return


def snapshot(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("compression", ["none", "zstd"])
async def test_follows_a_writer_across_rotations_without_gap_or_duplicate(
    store_path: Path, compression: es.Compression
) -> None:
    """Random appends (1..5 events) and checkpoint frames into 4 KiB segments; a whole-store,
    a stream and a filtered subscription of a read-only store see every event exactly once
    (also when the writer compresses its batches into containers)."""
    rng = random.Random(7)
    total = 600
    async with es.EventStore(store_path, segment_bytes=4096, compression=compression) as writer:
        await writer.append("s-0", Note(text="start"))
        reader = await es.EventStore(store_path, read_only=True, poll_interval=0.002).open()
        try:
            assert reader.read_only and reader.head == 0
            seen_all: list[int] = []
            seen_stream: list[int] = []
            seen_filtered: list[int] = []

            def follow(sub: es.Subscription, into: list[int], key: str) -> Any:
                return _collect(sub, into, key, total - 1)

            filtered = reader.subscribe(filter=es.EventFilter(stream_prefixes=["s-2"]))
            tasks = [
                asyncio.create_task(follow(reader.subscribe(), seen_all, "position")),
                asyncio.create_task(follow(reader.subscribe(stream="s-1"), seen_stream, "version")),
                asyncio.create_task(follow(filtered, seen_filtered, "position")),
            ]
            positions_2: list[int] = []
            written = 1
            while written < total:
                n = min(rng.randint(1, 5), total - written)
                stream = f"s-{rng.randrange(4)}" if written + n < total else "s-1"
                r = await writer.append(stream, [Note(text="y" * rng.randrange(80))] * n)
                if stream == "s-2":
                    positions_2 += range(r.position - n + 1, r.position + 1)
                written += n
                if rng.random() < 0.2:
                    await writer.save_checkpoint("c", r.position)
                if rng.random() < 0.3:
                    await asyncio.sleep(rng.random() * 0.004)
            await asyncio.wait_for(asyncio.gather(*tasks[:2]), 30)
            while filtered.lag:  # it has examined everything up to the head
                await asyncio.sleep(0.002)
            tasks[2].cancel()
            assert seen_all == list(range(total))
            versions = [r.version async for r in writer.read_stream("s-1")]
            assert seen_stream == versions == list(range(len(versions)))
            assert seen_filtered == positions_2
            assert reader.head == writer.head == total - 1
            assert reader.checkpoints() == writer.checkpoints()
            assert len(list(store_path.glob("*.seg"))) > 5
            st = reader.statistics()
            assert st.segments == len(list(store_path.glob("*.seg")))
            assert st.events == 0 and st.batches == 0  # it writes nothing
            got = [r.position async for r in reader.read_all(from_position=total - 50)]
            assert got == list(range(total - 50, total))
        finally:
            await reader.close()


async def test_changes_nothing_and_refuses_writes(store_path: Path) -> None:
    async with es.EventStore(store_path) as writer:
        for i in range(5):
            await writer.append("s", Note(text=str(i)))
    last = sorted(store_path.glob("*.seg"))[-1]
    with last.open("ab") as f:
        f.write(b"\xc1AEF" + bytes(20))  # a torn tail: a writer would cut it
    before = snapshot(store_path)
    async with es.EventStore(store_path, read_only=True) as reader:
        assert reader.head == 4
        texts = [
            r.data["text"] async for r in reader.read_all(raw=True) if isinstance(r.data, dict)
        ]
        assert texts == [str(i) for i in range(5)]
        with pytest.raises(es.StoreReadOnly, match="read_only=True"):
            await reader.append("s", Note(text="no"))
        with pytest.raises(es.StoreReadOnly):
            await reader.save_checkpoint("c", 1)
        async with reader.subscribe(name="c") as sub:
            rec = await sub.__anext__()
            with pytest.raises(es.StoreReadOnly):
                await sub.ack(rec)
        assert (await reader.verify()).first_problem is not None  # the torn tail
    assert snapshot(store_path) == before
    with pytest.raises(es.StoreNotFound):
        await es.EventStore(store_path.parent / "missing", read_only=True).open()
    assert not (store_path.parent / "missing").exists()


async def test_runs_next_to_the_writer_without_its_lock(store_path: Path) -> None:
    async with es.EventStore(store_path) as writer:
        await writer.append("s", Note(text="x"))
        async with es.EventStore(store_path, read_only=True) as reader:
            assert reader.head == 0
        with pytest.raises(es.StoreLocked):
            await es.EventStore(store_path).open()


async def test_an_empty_directory_is_followed_until_the_writer_starts(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.mkdir()
    async with es.EventStore(path, read_only=True, poll_interval=0.002) as reader:
        assert reader.head == -1
        async with reader.subscribe() as sub:
            async with es.EventStore(path) as writer:
                await writer.append("s", [Note(text="a"), Note(text="b")])
            got = [await asyncio.wait_for(sub.__anext__(), 10) for _ in range(2)]
            assert [r.position for r in got] == [0, 1]


@pytest.mark.parametrize("tail", ["new store", "just rotated"])
async def test_a_last_segment_with_no_event_yet_is_the_end_of_the_log(
    store_path: Path, tail: str
) -> None:
    """The last segment holds only its header (a store with no event yet, or a writer that
    just rotated): a read-only open ends its first scan there and follows from it. (The
    first scan used to open that same segment again and again, until the process ran out
    of file descriptors.)"""
    async with es.EventStore(store_path, segment_bytes=4096) as writer:
        if tail == "just rotated":
            while len(list(store_path.glob("*.seg"))) < 2:
                await writer.append("a", Note(text="x" * 300))
        async with es.EventStore(store_path, read_only=True, poll_interval=0.002) as reader:
            assert reader.head == writer.head
            async with reader.subscribe(from_position=reader.head + 1) as sub:
                appended = await writer.append("a", Note(text="next"))
                got = await asyncio.wait_for(sub.__anext__(), 10)
                assert got.position == appended.position


async def test_corruption_in_an_older_segment_is_reported(store_path: Path) -> None:
    async with es.EventStore(store_path, segment_bytes=4096) as writer:
        for i in range(100):
            await writer.append("s", Note(text="z" * 50 + str(i)))
    first = sorted(store_path.glob("*.seg"))[0]
    raw = bytearray(first.read_bytes())
    raw[200] ^= 1
    first.write_bytes(bytes(raw))
    # as for the writer: opening checks what index sidecars cover with verify_on_open ...
    with pytest.raises(es.CorruptLog) as info:
        await es.EventStore(store_path, read_only=True, verify_on_open=True).open()
    assert info.value.path == str(first)
    # ... and otherwise the first read that reaches the damage reports it
    async with es.EventStore(store_path, read_only=True) as reader:
        with pytest.raises(es.CorruptLog) as info:
            async for _ in reader.read_all():
                pass
    assert info.value.path == str(first)
    for idx in store_path.glob("*.idx"):  # without sidecars, opening scans and finds it
        idx.unlink()
    with pytest.raises(es.CorruptLog) as info:
        await es.EventStore(store_path, read_only=True).open()
    assert info.value.path == str(first)


async def test_a_log_cut_behind_the_reader_stops_following(store_path: Path) -> None:
    """The writer's recovery cut bytes the reader had already read (what a failed sync can
    lead to): the reader stops following with CorruptLog and its subscriptions end."""
    async with es.EventStore(store_path) as writer:
        for i in range(3):
            await writer.append("s", Note(text=str(i)))
    async with es.EventStore(store_path, read_only=True, poll_interval=0.002) as reader:
        async with reader.subscribe(from_position=es.END) as sub:
            seg = sorted(store_path.glob("*.seg"))[-1]
            seg.write_bytes(seg.read_bytes()[:-10])
            assert [r async for r in sub] == []  # ends, does not hang
        assert isinstance(reader.follow_error, es.CorruptLog)
        assert "cut behind this reader" in str(reader.follow_error)
        with pytest.raises(es.CorruptLog):  # reads check every frame again: never a wrong event
            [r async for r in reader.read_all()]


async def test_follows_compressed_batches(store_path: Path) -> None:
    """A writer compressing its batches: the follower reads inside the containers."""
    from tests.test_compression import kinds

    reader: es.EventStore | None = None
    async with es.EventStore(store_path, segment_bytes=8192, compression="zstd") as writer:
        await writer.append("s-0", Note(text="start"))
        reader = await es.EventStore(store_path, read_only=True, poll_interval=0.002).open()
        try:
            seen: list[tuple[str, int, int]] = []

            async def follow() -> None:
                assert reader is not None
                async with reader.subscribe() as sub:
                    async for rec in sub:
                        seen.append((rec.stream, rec.version, rec.position))
                        if rec.position >= 600:
                            return

            task = asyncio.create_task(follow())
            for round_ in range(20):  # 30 concurrent appends per round: batches over 1 KiB
                await asyncio.gather(
                    *(
                        writer.append(f"s-{i % 4}", Note(text=f"{round_}/{i}" + "y" * 60))
                        for i in range(30)
                    )
                )
            await asyncio.wait_for(task, 30)
            truth = [(r.stream, r.version, r.position) async for r in writer.read_all()]
            assert seen == truth
        finally:
            await reader.close()
    assert kinds(store_path)[3] >= 3


def _gate_follower(reader: es.EventStore) -> threading.Event:
    """Hold the reader's follower before its next scan until the returned event is set (the
    scan runs on the reader's I/O thread): the writer can then move on by a known amount."""
    follower = reader._opener._follower
    assert follower is not None
    scan = follower.scan
    gate = threading.Event()

    def gated(found: Any) -> None:
        gate.wait(30)
        scan(found)

    follower.scan = gated  # type: ignore[method-assign]
    return gate


async def _caught_up(reader: es.EventStore, writer: es.EventStore) -> None:
    for _ in range(3000):
        if reader.head == writer.head:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"the reader stopped at {reader.head}; the writer is at {writer.head}")


def _deleted_files_held(directory: Path) -> list[str]:
    """Files under ``directory`` this process holds open although they were removed."""
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(directory)) and target.endswith(" (deleted)"):
            held.append(target)
    return held


@pytest.mark.parametrize("compression", ["none", "zstd"])
async def test_a_reader_overtaken_by_retention_goes_on_after_the_gap(
    store_path: Path, compression: es.Compression
) -> None:
    """Retention removes the segment the reader was reading and the ones after it before its
    next poll: it goes on at the oldest segment left, as a new reader would, with streams
    continuing from their oldest version left, and keeps following. (It used to stop there
    for good, with no error: a missing next segment looked like the end of the log.)"""
    opts = es.StoreOptions(
        segment_bytes=4096, retention_bytes=3 * 4096, compression=compression, durability="os"
    )
    async with es.EventStore(store_path, opts) as writer:
        for i in range(4):
            await writer.append(f"s-{i % 2}", Note(text="x" * 200))
        reader = await es.EventStore(store_path, read_only=True, poll_interval=0.002).open()
        gate = threading.Event()
        try:
            delivered: list[int] = []
            by_stream: list[int] = []

            follow = _collect
            tasks = [
                asyncio.create_task(follow(reader.subscribe(), delivered, "position")),
                asyncio.create_task(follow(reader.subscribe(stream="s-1"), by_stream, "version")),
            ]
            await _caught_up(reader, writer)
            first_segment = sorted(store_path.glob("*.seg"))[0]
            gate = _gate_follower(reader)
            await asyncio.sleep(0.05)  # its current poll is over: the next one waits
            for i in range(200):
                await writer.append(f"s-{i % 2}", Note(text="y" * 200))
            await writer.enforce_retention()  # (it also ran after commits)
            assert not first_segment.exists()
            gate.set()
            await _caught_up(reader, writer)
            assert reader.follow_error is None
            truth = [r.position async for r in writer.read_all()]
            assert [r.position async for r in reader.read_all()] == truth
            for stream in ("s-0", "s-1"):
                want = [(r.version, r.position) async for r in writer.read_stream(stream)]
                got = [(r.version, r.position) async for r in reader.read_stream(stream)]
                assert got == want and want[0][0] > 2
            # the subscriptions saw what was there before the gap and all that is left after
            assert delivered == sorted(set(delivered)) and delivered[:4] == [0, 1, 2, 3]
            assert delivered[-len(truth) :] == truth
            assert set(range(truth[0])) - set(delivered)  # a real gap: removed before it read
            assert by_stream == sorted(set(by_stream)) and by_stream[-1] == 101
            # it keeps following
            last = await writer.append("s-1", Note(text="after"))
            await _caught_up(reader, writer)
            assert reader.head == last.position
            for _ in range(1000):
                if by_stream[-1] == last.version:
                    break
                await asyncio.sleep(0.005)
            assert by_stream[-1] == last.version
            for task in tasks:
                task.cancel()
        finally:
            gate.set()
            await reader.close()


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts open files in /proc")
async def test_a_reader_does_not_keep_the_segments_retention_removed(store_path: Path) -> None:
    """A reader following a writer whose retention removes segments closes them, so the disk
    space comes back while it runs (it used to hold every removed segment open until it
    closed: the writer's disk filled, and the reader ran out of file descriptors)."""
    opts = es.StoreOptions(segment_bytes=8192, retention_bytes=4 * 8192)
    async with es.EventStore(store_path, opts) as writer:
        await writer.append("s-0", Note(text="start"))
        async with es.EventStore(store_path, read_only=True, poll_interval=0.002) as reader:
            async with reader.subscribe() as sub:
                for _ in range(4):
                    await asyncio.gather(
                        *(writer.append(f"s-{i % 7}", Note(text="z" * 150)) for i in range(300))
                    )
                    await writer.enforce_retention()
                    await _caught_up(reader, writer)
                    async for rec in sub:  # a subscription reading across the removals
                        if rec.position == writer.head:
                            break
                    for _ in range(200):  # (the poll after the one that caught up drops them)
                        if not _deleted_files_held(store_path):
                            break
                        await asyncio.sleep(0.005)
                    assert _deleted_files_held(store_path) == []
                    truth = [(r.stream, r.version) async for r in writer.read_all()]
                    assert [(r.stream, r.version) async for r in reader.read_all()] == truth
                    got = [r.version async for r in reader.read_stream("s-3")]
                    assert got == [r.version async for r in writer.read_stream("s-3")]
                    on_disk = len(list(store_path.glob("*.seg")))
                    assert reader.statistics().segments == on_disk  # (not the removed ones)
                    assert writer.statistics().segments == on_disk
            assert reader.follow_error is None


async def test_a_reader_goes_on_past_segments_a_scavenge_rewrote_or_dropped(
    store_path: Path,
) -> None:
    """Before the reader's next poll, a stream is truncated and a scavenge rewrites or drops
    the segments it has not read yet: the stream then continues, for the reader, past the
    versions it never saw. (A skip like that used to be reported as damage, and a dropped
    segment stopped it as the end of the log did.)"""
    async with es.EventStore(store_path, segment_bytes=4096, durability="os") as writer:
        for _ in range(4):
            await writer.append("t", Note(text="t" * 200))
        reader = await es.EventStore(store_path, read_only=True, poll_interval=0.002).open()
        gate = threading.Event()
        try:
            keep: list[int] = []

            async def follow() -> None:
                async with reader.subscribe(stream="keep") as sub:
                    async for rec in sub:
                        keep.append(rec.version)

            task = asyncio.create_task(follow())
            await _caught_up(reader, writer)
            gate = _gate_follower(reader)
            await asyncio.sleep(0.05)
            for i in range(120):
                await writer.append("t" if i < 100 else "keep", Note(text="u" * 200))
            await writer.set_stream_metadata("t", truncate_before=90)
            report = await writer.scavenge()
            assert report.segments_dropped >= 2 and report.segments_rewritten >= 1
            gate.set()
            await _caught_up(reader, writer)
            assert reader.follow_error is None
            for stream in ("t", "keep"):
                want = [(r.version, r.position) async for r in writer.read_stream(stream)]
                got = [(r.version, r.position) async for r in reader.read_stream(stream)]
                assert got == want and want
            for _ in range(1000):
                if len(keep) == 20:
                    break
                await asyncio.sleep(0.005)
            assert keep == list(range(20))
            task.cancel()
        finally:
            gate.set()
            await reader.close()


async def test_a_reader_goes_on_past_a_segment_a_scavenge_left_without_events(
    store_path: Path,
) -> None:
    """A segment that begins with a checkpoint frame (saved when the last one was full) and
    whose only event a scavenge removed holds control frames only, at its own first
    position: a reader that reaches it goes on to the next one. (It used to take it for a
    tail with no event yet, which the writer never rotates away from, and stop there.)"""
    async with es.EventStore(store_path, segment_bytes=4096, durability="os") as writer:
        await writer.append("keep", Note(text="a" * 3000))
        first = store_path / "00000000000000000000.seg"
        await writer.append("keep", Note(text="a" * (4096 - first.stat().st_size - 120)))
        reader = await es.EventStore(store_path, read_only=True, poll_interval=0.002).open()
        gate = threading.Event()
        try:
            await _caught_up(reader, writer)
            gate = _gate_follower(reader)
            await asyncio.sleep(0.05)
            await writer.save_checkpoint("c", 1)  # does not fit: a new segment begins with it
            await writer.append("t", Note(text="t" * 1500))  # ... then t's event
            await writer.append("keep", Note(text="b" * 3000))  # the next segment
            await writer.delete_stream("t")
            await writer.append("keep", Note(text="c" * 3000))  # and the next (the tail)
            assert (await writer.scavenge()).segments_rewritten >= 1
            gate.set()
            await _caught_up(reader, writer)
            await writer.append("keep", Note(text="d"))
            await _caught_up(reader, writer)
            assert reader.follow_error is None
            want = [(r.version, r.position) async for r in writer.read_stream("keep")]
            assert [(r.version, r.position) async for r in reader.read_stream("keep")] == want
            assert reader.checkpoint("c") == 1
        finally:
            gate.set()
            await reader.close()


async def test_a_reader_opened_during_a_scavenge_loads_the_later_index_sidecars(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader's first scan reads the oldest segment as it was before a scavenge, and the
    later ones, from their index sidecars, after it: a stream then skips the versions the
    scavenge removed there, as it may in a scan. (Loading the sidecar raised a false
    CorruptLog: "continues at version 10, expected 5".)"""
    from aioeventstore._indexfile import load as real

    async with es.EventStore(store_path, segment_bytes=4096, durability="os") as writer:
        for _ in range(3):  # segments 0, 1, 2 hold S's versions 0-4, 5-9, 10-14
            for _ in range(5):
                await writer.append("S", Note(text="s" * 300))
            segments = len(list(store_path.glob("*.seg")))
            while len(list(store_path.glob("*.seg"))) == segments:
                await writer.append("x", Note(text="x" * 300))
        for _ in range(500):  # the sealed segments' sidecars are written in the background
            if len(list(store_path.glob("*.idx"))) >= 3:
                break
            await asyncio.sleep(0.01)
        assert len(list(store_path.glob("*.idx"))) >= 3
        first_loaded = threading.Event()
        go_on = threading.Event()

        def load_sidecar(*args: Any, **kwargs: Any) -> Any:
            car = real(*args, **kwargs)
            if not first_loaded.is_set():  # the oldest segment, as it is now
                first_loaded.set()
                go_on.wait(30)
            return car

        monkeypatch.setattr("aioeventstore._open.load_sidecar", load_sidecar)
        reader = es.EventStore(store_path, read_only=True, poll_interval=0.002)
        open_task = asyncio.create_task(reader.open())
        try:
            await asyncio.to_thread(first_loaded.wait, 30)
            await writer.set_stream_metadata("S", truncate_before=10)
            assert (await writer.scavenge()).segments_rewritten >= 2
            go_on.set()
            await open_task
            assert reader.head == writer.head and reader.follow_error is None
            want = [(r.version, r.position) async for r in writer.read_stream("S")]
            assert want[0][0] == 10
            assert [(r.version, r.position) async for r in reader.read_stream("S")] == want
        finally:
            go_on.set()
            await asyncio.gather(open_task, return_exceptions=True)
            await reader.close()


async def test_a_write_that_ends_while_a_scan_looks_at_it_is_not_damage(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan stops at a batch still being written; before the follower judges those bytes,
    the writer finishes it and writes the next. That next frame, after bytes that were
    incomplete when the scan began, proves nothing: the reader goes on. (It stopped with a
    false CorruptLog "a frame of a later write follows", as did ``verify`` and ``info``
    next to a busy writer.)"""
    from aioeventstore._log import later_write_at as real

    async with es.EventStore(store_path, durability="os") as writer:
        for i in range(5):
            await writer.append("s", Note(text=f"event {i}"))
        ends = [r.position async for r in writer.read_all()]
    seg = sorted(store_path.glob("*.seg"))[0]
    whole = seg.read_bytes()
    # where event 3's frame starts: the file as it was after three appends
    async with es.EventStore(store_path.parent / "three", durability="os") as probe:
        for i in range(3):
            await probe.append("s", Note(text=f"event {i}"))
    cut = sorted((store_path.parent / "three").glob("*.seg"))[0].stat().st_size
    assert ends == [0, 1, 2, 3, 4] and cut < len(whole)
    seg.write_bytes(whole[: cut + 10])  # event 3's frame, cut short: a write in progress

    def the_writer_goes_on(*args: Any) -> int | None:
        if seg.stat().st_size < len(whole):
            seg.write_bytes(whole)  # the batch ends, and the next one is written
        return real(*args)

    monkeypatch.setattr("aioeventstore._follow.later_write_at", the_writer_goes_on)
    assert await _texts_once_at(store_path, 4) == [f"event {i}" for i in range(5)]


async def _texts_once_at(store_path: Path, head: int) -> list[str]:
    """The events' texts, read by a reader once it follows up to ``head`` without error."""
    async with es.EventStore(store_path, read_only=True, poll_interval=0.002) as reader:
        for _ in range(1000):
            if reader.head == head:
                break
            await asyncio.sleep(0.005)
        assert reader.follow_error is None
        return [r.data.text async for r in reader.read_all()]  # type: ignore[union-attr]


async def test_a_cut_the_writer_wrote_past_before_the_next_poll_stops_the_reader(
    store_path: Path,
) -> None:
    """The reader delivered a batch the writer then lost (a failed sync, a power cut), and
    the writer wrote other frames over that place before the reader's next poll: the file
    is no shorter than the reader's position, but the frame it read last is gone. It stops
    with "cut behind this reader" (it used to read on from the middle of the new frames:
    an event that was never committed stayed delivered, or it hung)."""
    async with es.EventStore(store_path) as writer:
        for _ in range(3):
            await writer.append("s", Note(text="seed"))
    other = store_path.parent / "other"
    shutil.copytree(store_path, other)
    async with es.EventStore(store_path) as writer:
        await writer.append("s", Note(text="A" * 10))
    async with es.EventStore(other) as writer:  # what the writer wrote after the cut
        await writer.append("s", [Note(text="B" * 10), Note(text="C" * 300)])
    seg = sorted(store_path.glob("*.seg"))[0]
    async with es.EventStore(store_path, read_only=True, poll_interval=0.002) as reader:
        async with reader.subscribe() as sub:
            got = [await asyncio.wait_for(sub.__anext__(), 10) for _ in range(4)]
            assert got[3].data.text == "A" * 10  # type: ignore[union-attr]
            with seg.open("r+b") as f:  # the same file, other bytes from the cut on
                f.write(sorted(other.glob("*.seg"))[0].read_bytes())
            assert [r async for r in sub] == []  # ends
        assert isinstance(reader.follow_error, es.CorruptLog)
        assert "cut behind this reader" in str(reader.follow_error)


@pytest.mark.parametrize("then", ["removed", "made again"])
async def test_a_reader_on_a_segment_the_writer_removed_again_stops(
    store_path: Path, then: str
) -> None:
    """The reader moved on to the writer's new segment, whose header sync then failed: the
    writer removed it again (``Log._create``), and its next open appended to the segment
    before and rotated later, or made a new file of the same name. The reader stops with
    "cut behind this reader" (it used to skip events silently, past a gap it took for
    retention, or wait on the removed file forever)."""
    from aioeventstore._format import pack_segment_header, segment_name

    async with es.EventStore(store_path, segment_bytes=4096) as writer:
        for _ in range(5):
            await writer.append("s", Note(text="x" * 300))
        async with es.EventStore(store_path, read_only=True, poll_interval=0.002) as reader:
            await _caught_up(reader, writer)
            phantom = store_path / segment_name(writer.head + 1)
            phantom.write_bytes(pack_segment_header(writer.head + 1))
            await asyncio.sleep(0.1)  # the reader moves on to it
            phantom.unlink()
            if then == "made again":
                phantom.write_bytes(pack_segment_header(writer.head + 1) + bytes(100))
            for _ in range(30):
                await writer.append("s", Note(text="y" * 300))
            for _ in range(1000):
                if reader.follow_error is not None:
                    break
                await asyncio.sleep(0.005)
            assert isinstance(reader.follow_error, es.CorruptLog)
            assert "cut behind this reader" in str(reader.follow_error)
            assert reader.head == 4  # nothing skipped, nothing wrong delivered


@pytest.mark.parametrize("damage", ["empty", "header only half there"])
async def test_a_middle_segment_with_a_bad_header_is_damage_for_a_reader(
    store_path: Path, damage: str
) -> None:
    """A segment before the last one has no whole header: as for the writer's open, that is
    CorruptLog (a reader used to take it for a rotation in progress: the end of the log)."""
    async with es.EventStore(store_path, segment_bytes=4096) as writer:
        for _ in range(40):
            await writer.append("s", Note(text="x" * 300))
    middle = sorted(store_path.glob("*.seg"))[1]
    middle.write_bytes(b"" if damage == "empty" else middle.read_bytes()[:16])
    writer_error, reader_error = await _both_opens_fail(store_path, "bad segment header")
    assert reader_error.path == writer_error.path == str(middle)


async def _both_opens_fail(store_path: Path, match: str) -> tuple[es.CorruptLog, es.CorruptLog]:
    """The CorruptLog that the writer's open and a reader's open raise, with no sidecar to
    vouch for any segment (both then scan every frame)."""
    for idx in store_path.glob("*.idx"):
        idx.unlink()
    with pytest.raises(es.CorruptLog, match=match) as writer_error:
        await es.EventStore(store_path).open()
    with pytest.raises(es.CorruptLog, match=match) as reader_error:
        await es.EventStore(store_path, read_only=True).open()
    return writer_error.value, reader_error.value


async def test_a_segment_deleted_by_hand_is_damage_for_a_reader_as_for_the_writer(
    store_path: Path,
) -> None:
    """A stream continuing past versions that were never removed (their segment deleted by
    hand): CorruptLog for a reader's open, as for the writer's. A reader accepts a skip
    only when the segment of the stream's last event it read was removed or rewritten."""
    async with es.EventStore(store_path, segment_bytes=4096) as writer:
        for v in range(60):
            for s in range(2):
                await writer.append(f"s-{s}", Note(text=f"{s}:{v}".ljust(20, ".")))
    sorted(store_path.glob("*.seg"))[1].unlink()
    writer_error, reader_error = await _both_opens_fail(store_path, "continues at version")
    assert str(reader_error) == str(writer_error)


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts open files in /proc")
async def test_a_reader_closes_segments_a_scavenge_dropped_from_the_middle(
    store_path: Path,
) -> None:
    """A scavenge drops segments from the middle of the log (all their frames went): a
    reader following the writer closes them too, not only the oldest ones. (For the
    segments it rewrote under the same name, see the next test.)"""
    async with (
        es.EventStore(store_path, segment_bytes=4096) as writer,
        es.EventStore(store_path, read_only=True, poll_interval=0.002) as reader,
    ):
        for stream, n in (("keep", 5), ("t", 40), ("keep2", 15)):
            for _ in range(n):
                await writer.append(stream, Note(text="x" * 300))
        await _caught_up(reader, writer)
        before = {p.name for p in store_path.glob("*.seg")}
        await writer.delete_stream("t")
        report = await writer.scavenge()
        assert report.segments_dropped >= 2
        dropped = before - {p.name for p in store_path.glob("*.seg")}
        await writer.append("keep2", Note(text="after"))
        await _caught_up(reader, writer)
        for _ in range(200):
            held = {Path(h.split(" ")[0]).name for h in _deleted_files_held(store_path)}
            if not held & dropped:
                break
            await asyncio.sleep(0.005)
        assert not held & dropped
        assert reader.statistics().segments == writer.statistics().segments
        for stream in ("keep", "t", "keep2"):
            want = [(r.version, r.position) async for r in writer.read_stream(stream)]
            assert [(r.version, r.position) async for r in reader.read_stream(stream)] == want


async def test_a_segment_removed_between_the_listing_and_its_open_is_stepped_over(
    store_path: Path,
) -> None:
    """The writer's retention removes the oldest segment (and its sidecar) right after a
    read-only open listed the directory: the open goes on at the next segment (it used to
    take the missing file for the end of the log and open an empty store, head -1, as
    ``aioeventstore info``/``dump``/``tail`` then showed)."""
    from aioeventstore._fs import FileHandle, OsFileSystem

    class Racing(OsFileSystem):
        def __init__(self, victim: str) -> None:
            super().__init__()
            self.victim = victim

        def open(self, path: str, *, write: bool, create: bool = False) -> FileHandle:
            if os.path.basename(path) == self.victim:
                self.victim = ""
                os.remove(path)  # the writer's retention, at this very moment
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path[: -len(".seg")] + ".idx")
            return super().open(path, write=write, create=create)

    async with es.EventStore(store_path, segment_bytes=4096) as writer:
        for n in range(300):
            await writer.append(f"s-{n % 5}", Note(text=f"{n}".ljust(40)))
    oldest = sorted(store_path.glob("*.seg"))[0].name
    async with es.EventStore(store_path, read_only=True, _fs=Racing(oldest)) as reader:
        assert reader.head == 299
        got = [r.position async for r in reader.read_all()]
    async with es.EventStore(store_path, read_only=True) as fresh:
        assert got == [r.position async for r in fresh.read_all()] and got[-1] == 299


async def test_a_read_only_store_refuses_every_write(store_path: Path) -> None:
    """Every call that would write raises StoreReadOnly (scavenge and retention raised a bare
    AssertionError), and nothing on disk changes."""
    async with es.EventStore(store_path) as writer:
        await writer.append("s", Note(text="x"))
    before = snapshot(store_path)
    async with es.EventStore(store_path, read_only=True) as reader:
        for call in (
            lambda: reader.append("s", Note(text="y")),
            lambda: reader.append_many([("s", [Note(text="y")])]),
            lambda: reader.save_checkpoint("c", 0),
            lambda: reader.set_stream_metadata("s", max_count=1),
            lambda: reader.delete_stream("s"),
            lambda: reader.save_snapshot("s", Note(text="state"), 0),
            reader.scavenge,
            reader.enforce_retention,
        ):
            with pytest.raises(es.StoreReadOnly):
                await call()
        with pytest.raises(es.StoreReadOnly):
            reader.start_scavenge()
    assert snapshot(store_path) == before


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts open files in /proc")
@pytest.mark.parametrize("compression", ["none", "zstd"])
async def test_a_reader_swaps_in_segments_a_scavenge_rewrote(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, compression: es.Compression
) -> None:
    """A scavenge rewrites segments under the same name: a reader following the writer
    re-reads them and swaps them in, so it holds none of the old files (their disk space
    comes back) and shows what the writer shows, also once the metadata that hid the
    removed events is cleared; a read that began before the swap reads on. A rewrite of an
    already rewritten segment is swapped in again."""
    monkeypatch.setattr("aioeventstore._follow.REWRITE_CHECK", 0.0)
    async with (
        es.EventStore(store_path, segment_bytes=4096, compression=compression) as writer,
        es.EventStore(store_path, read_only=True, poll_interval=0.002) as reader,
    ):
        for i in range(120):
            batch = [Note(text=f"{i}-{k}" + "x" * 100) for k in range(1 + i % 3)]
            await writer.append(("t", "keep", "u")[i % 3], batch)
        await _caught_up(reader, writer)
        began, head = reader.read_all(), reader.head  # (reads to the head when it begins)
        first = await anext(began)
        for stream in ("t", "u"):
            await writer.set_stream_metadata(stream, max_count=3)
            report = await writer.scavenge()
            assert report.segments_rewritten >= 2 and report.events_removed > 0
            await writer.set_stream_metadata(stream, max_count=None)  # nothing hidden now
            await writer.append("keep", Note(text="after"))
            await _caught_up(reader, writer)
            for _ in range(400):
                if not _deleted_files_held(store_path):
                    break
                await asyncio.sleep(0.005)
            assert not _deleted_files_held(store_path)
            log = [(r.stream, r.version, r.position) async for r in writer.read_all()]
            assert [(r.stream, r.version, r.position) async for r in reader.read_all()] == log
            for name in ("t", "keep", "u"):
                want = [(r.version, r.position) async for r in writer.read_stream(name)]
                got = [(r.version, r.position) async for r in reader.read_stream(name)]
                assert got == want
            assert reader.statistics().stored_events == writer.statistics().stored_events
        rest = [first.position] + [r.position async for r in began]
        assert rest == sorted(set(rest)) and rest[-1] == head


async def test_a_rewrite_seen_before_the_one_before_it_is_swapped_in_later(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader's check runs while the writer's scavenge goes on: it looks at segment 0
    before its rename and at segment 1 after. Segment 1's removals are then not a prefix of
    each stream in the reader's index yet, which refuses them; the next check swaps in both
    (it used to leave segment 1 alone for good: old file held, removed events shown). Five
    scavenges in a row, each refused once: a swap that went in gives the segment's next
    rewrite tries of its own."""
    from aioeventstore import _follow
    from aioeventstore._fs import size_at as real

    monkeypatch.setattr(_follow, "REWRITE_CHECK", 0.0)
    armed, started, done = threading.Event(), threading.Event(), threading.Event()
    target: list[str] = []

    def size_at(fs: Any, path: str) -> int | None:
        size = real(fs, path)
        if armed.is_set() and path == target[0]:
            armed.clear()
            started.set()
            done.wait(10)  # the scavenge runs meanwhile
        return size

    monkeypatch.setattr(_follow, "size_at", size_at)
    streams = ["keep", "x1", "x2", "x3", "x4", "x5"]
    async with es.EventStore(store_path, segment_bytes=4096) as writer:
        for i in range(60):
            await writer.append(streams[i % 6], Note(text=f"{i}" + "y" * 300))
        target.append(str(sorted(store_path.glob("*.seg"))[0]))
        async with es.EventStore(store_path, read_only=True, poll_interval=0.002) as reader:
            await _caught_up(reader, writer)
            for x in streams[1:]:
                await writer.set_stream_metadata(x, max_count=1)
                started.clear()
                done.clear()
                armed.set()
                while not started.is_set():
                    await asyncio.sleep(0.001)
                assert (await writer.scavenge()).segments_rewritten >= 2
                done.set()
                await writer.set_stream_metadata(x, max_count=None)  # only what is on disk
                await writer.append("keep", Note(text="end"))
                await _caught_up(reader, writer)
                want = [(r.version, r.position) async for r in writer.read_stream(x)]
                for _ in range(400):
                    got = [(r.version, r.position) async for r in reader.read_stream(x)]
                    if got == want and not _deleted_files_held(store_path):
                        break
                    await asyncio.sleep(0.005)
                assert got == want and not _deleted_files_held(store_path), x
                assert reader.statistics().stored_events == writer.statistics().stored_events


async def test_verify_next_to_a_writer_judges_only_the_bytes_there_when_it_began(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``verify`` (and ``aioeventstore verify``/``info``) next to a busy writer: a batch
    being written when the check reached it, finished (and the next one written) before the
    check looked past it, is a write in progress, not corruption."""
    from aioeventstore._log import later_write_at as real

    async with es.EventStore(store_path, durability="os") as writer:
        for i in range(5):
            await writer.append("s", Note(text=f"event {i}"))
    seg = sorted(store_path.glob("*.seg"))[0]
    whole = seg.read_bytes()
    for idx in store_path.glob("*.idx"):
        idx.unlink()
    async with es.EventStore(store_path, read_only=True) as reader:
        last = [r.position async for r in reader.read_all()]
    assert last == [0, 1, 2, 3, 4]
    seg.write_bytes(whole[: len(whole) * 2 // 3])  # a write in progress, cut mid-frame

    def the_writer_goes_on(*args: Any) -> int | None:
        if seg.stat().st_size < len(whole):
            seg.write_bytes(whole)
        return real(*args)

    monkeypatch.setattr("aioeventstore._verify.later_write_at", the_writer_goes_on)
    from aioeventstore._fs import OsFileSystem
    from aioeventstore._verify import verify_store

    report = verify_store(str(store_path), OsFileSystem(), es.StoreOptions())
    assert not report.corrupt, report.first_problem


async def test_a_torn_tail_the_next_writer_cut_and_wrote_over_is_not_damage(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed writer left a torn tail, which a reader's scan takes for a write in progress;
    before the reader looks past it, the next writer's recovery cuts it and appends new
    frames there. A frame of a later write now lies within the bytes the scan saw, but a
    whole frame starts where the torn one did: not damage, the reader reads on. (It stopped
    with a false CorruptLog, and so did ``verify``.)"""
    from aioeventstore._log import later_write_at as real

    async with es.EventStore(store_path) as writer:
        for i in range(3):
            await writer.append("s", Note(text=f"seed {i}"))
    recovered = store_path.parent / "recovered"
    shutil.copytree(store_path, recovered)
    async with es.EventStore(store_path) as writer:  # the batch the kill tore
        await writer.append("s", Note(text="torn" * 800))
    async with es.EventStore(recovered) as writer:  # what the next writer wrote instead
        for i in range(2):
            await writer.append("s", Note(text=f"after {i}"))
    seg = sorted(store_path.glob("*.seg"))[0]
    torn = seg.read_bytes()[:-100]
    after = sorted(recovered.glob("*.seg"))[0].read_bytes()
    assert len(after) < len(torn)
    seg.write_bytes(torn)

    def the_next_writer_recovers(*args: Any) -> int | None:
        if seg.read_bytes() == torn:
            with seg.open("r+b") as f:  # cut, then the new writes (same file)
                f.truncate(len(after) - 200)
                f.seek(0)
                f.write(after)
        return real(*args)

    monkeypatch.setattr("aioeventstore._follow.later_write_at", the_next_writer_recovers)
    texts = await _texts_once_at(store_path, 4)
    assert texts == ["seed 0", "seed 1", "seed 2", "after 0", "after 1"]


async def test_a_reader_on_a_new_segment_filled_and_removed_meanwhile_goes_on(
    store_path: Path,
) -> None:
    """The reader's tail is the writer's new segment, header only, when it checks whether
    the writer removed it again (a failed rotation); meanwhile the writer filled it,
    rotated and retention removed it. The file the reader holds has frames now: not a cut,
    the reader goes on (it used to stop with a false "cut behind this reader")."""
    opts = es.StoreOptions(segment_bytes=4096, retention_bytes=4096, durability="os")
    async with es.EventStore(store_path, opts) as writer:
        for _ in range(10):
            await writer.append("s", Note(text="x" * 300))
        reader = await es.EventStore(store_path, read_only=True, poll_interval=0.002).open()
        log = writer._log
        create = log._create
        created, go_create = threading.Event(), threading.Event()
        in_check, go_check = threading.Event(), threading.Event()
        try:

            def gated_create(first: int) -> Any:
                seg = create(first)
                created.set()
                go_create.wait(30)
                return seg

            follower = reader._opener._follower
            assert follower is not None
            check = follower._check_not_replaced

            def gated_check(seg: Any) -> None:
                if not in_check.is_set():
                    in_check.set()
                    go_check.wait(30)
                check(seg)

            log._create = gated_create  # type: ignore[method-assign, assignment]
            follower._check_not_replaced = gated_check  # type: ignore[method-assign]
            rotating = asyncio.create_task(writer.append("s", Note(text="y" * 3000)))
            await asyncio.to_thread(created.wait, 10)
            await asyncio.to_thread(in_check.wait, 10)  # the reader holds it, header only
            log._create = create  # type: ignore[method-assign]
            go_create.set()
            await rotating
            for _ in range(6):
                await writer.append("s", Note(text="z" * 1000))
            await writer.enforce_retention()
            go_check.set()
            await _caught_up(reader, writer)
            assert reader.follow_error is None
        finally:
            go_check.set()
            go_create.set()
            await reader.close()


@pytest.mark.parametrize("scavenge", ["rewrites segments", "drops segments"])
async def test_verify_next_to_a_writer_that_scavenges(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, scavenge: str
) -> None:
    """``verify_store`` (``aioeventstore verify``, a reader's ``verify()``) while the writer
    truncates a stream and scavenges between two segments' checks: segments it rewrote or
    dropped are accepted as removed, not reported as corruption ("continues at version")
    nor raised as FileNotFoundError."""
    from aioeventstore import _verify
    from aioeventstore._fs import OsFileSystem

    real = _verify._verify_segment
    checked, go = threading.Event(), threading.Event()

    def after_the_first_segment(*args: Any) -> Any:
        report = real(*args)
        if not checked.is_set():
            checked.set()
            go.wait(30)
        return report

    async with es.EventStore(store_path, segment_bytes=4096) as writer:
        for _ in range(60):
            await writer.append("t", Note(text="t" * 200))
            if scavenge == "rewrites segments":
                await writer.append("keep", Note(text="k"))
        await writer.append("keep", Note(text="k"))
        monkeypatch.setattr(_verify, "_verify_segment", after_the_first_segment)
        opts = es.StoreOptions(segment_bytes=4096)
        job = asyncio.to_thread(_verify.verify_store, str(store_path), OsFileSystem(), opts)
        verifying = asyncio.ensure_future(job)
        try:
            await asyncio.to_thread(checked.wait, 10)
            await writer.set_stream_metadata("t", truncate_before=40)
            report = await writer.scavenge()
            assert report.segments_rewritten + report.segments_dropped >= 3
        finally:
            go.set()
        result = await verifying
        assert not result.corrupt, result.first_problem


def test_a_scan_of_a_file_cut_shorter_meanwhile_stops_at_its_new_end(store_path: Path) -> None:
    """A reader's scan took the tail's size, then the writer cut a failed batch off: each
    read past the new end came back short, and the scan read the same offset again forever
    (a core at 100%, ``close()`` never returned). It now stops where the file ends."""
    import asyncio as aio

    from aioeventstore._format import SEGMENT_HEADER_SIZE
    from aioeventstore._fs import OsFileSystem
    from aioeventstore._segment import Segment

    async def build() -> None:
        async with es.EventStore(store_path) as writer:
            for i in range(20):
                await writer.append("s", Note(text=f"{i}" + "x" * 200))

    aio.run(build())
    path = str(sorted(store_path.glob("*.seg"))[-1])
    real = OsFileSystem().open(path, write=False)
    reads = [0]

    class Grown:  # the size the scan took: a batch of 10,000 bytes that was then cut off
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def size(self) -> int:
            return real.size() + 10_000

        def pread(self, size: int, offset: int) -> bytes:
            reads[0] += 1
            if reads[0] > 1000:
                raise AssertionError("the scan reads the same bytes again and again")
            return real.pread(size, offset)

    seg = Segment(path, 0, Grown())
    seen: list[int] = []
    try:
        seg.read_header()
        end, position, reason = seg.scan(
            SEGMENT_HEADER_SIZE, 0, 512, lambda info, buf, at: seen.append(info.first_position)
        )
    finally:
        real.close()
    assert seen == list(range(20)) and position == 20
    assert (end, reason) == (os.path.getsize(path), None)  # (the end of the file as it is)


async def test_a_transient_error_re_reading_a_rewrite_is_retried(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error while a reader re-read a segment the writer's scavenge rewrote was only
    logged: that segment was never looked at again (its old file held for good), the next
    rewrites no longer fitted the index and were given up, and once the metadata hiding the
    removed events was cleared the reader showed events the writer no longer had."""
    from aioeventstore import _follow, _open

    monkeypatch.setattr(_follow, "REWRITE_CHECK", 0.0)
    failures = [1]

    def flaky(log: Any, old: Any) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise OSError(5, "injected EIO", old.path)
        return _follow.read_rewrite(log, old)

    monkeypatch.setattr(_open, "read_rewrite", flaky)
    async with (
        es.EventStore(store_path, segment_bytes=4096) as writer,
        es.EventStore(store_path, read_only=True, poll_interval=0.002) as reader,
    ):
        for i in range(120):
            await writer.append(("t", "keep")[i % 2], Note(text=f"{i}" + "x" * 100))
        await _caught_up(reader, writer)
        await writer.set_stream_metadata("t", max_count=3)
        assert (await writer.scavenge()).segments_rewritten >= 2
        await writer.set_stream_metadata("t", max_count=None)  # nothing hidden now
        await writer.append("keep", Note(text="after"))
        await _caught_up(reader, writer)
        want = [(r.stream, r.version, r.position) async for r in writer.read_all()]
        for _ in range(600):
            got = [(r.stream, r.version, r.position) async for r in reader.read_all()]
            if got == want and not _deleted_files_held(store_path):
                break
            await asyncio.sleep(0.005)
        assert failures == [0] and reader.follow_error is None
        assert got == want and not _deleted_files_held(store_path)
        assert reader.statistics().stored_events == writer.statistics().stored_events


async def test_an_io_error_while_following_is_a_read_failed(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was a plain EventStoreError without errno or file name."""
    from aioeventstore._follow import Follower

    async with es.EventStore(store_path) as writer:
        await writer.append("s", Note(text="x"))
        async with es.EventStore(store_path, read_only=True, poll_interval=0.002) as reader:

            def scan(self: Any, sink: Any) -> None:
                raise OSError(5, "injected EIO", "/the/segment.seg")

            monkeypatch.setattr(Follower, "scan", scan)
            for _ in range(1000):
                if reader.follow_error is not None:
                    break
                await asyncio.sleep(0.005)
            err = reader.follow_error
            assert isinstance(err, es.ReadFailed) and isinstance(err, OSError)
            assert (err.errno, err.filename) == (5, "/the/segment.seg")
            assert "following the log failed" in str(err)


@pytest.mark.parametrize("read_only", [False, True])
async def test_an_io_error_on_a_segment_header_leaves_no_file_open(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, read_only: bool
) -> None:
    """An open that failed reading a segment's header left that segment's file open."""
    from aioeventstore import _segment

    async with es.EventStore(store_path, segment_bytes=4096) as writer:
        for i in range(40):
            await writer.append("s", Note(text=f"{i}" + "x" * 200))

    def failing(self: Any, *args: Any) -> Any:
        raise OSError(5, "injected EIO", self.path)

    monkeypatch.setattr(_segment.Segment, "read_header", failing)
    monkeypatch.setattr(_segment.Segment, "read_header_flags", failing)
    for _ in range(3):
        with pytest.raises(es.OpenFailed):
            await es.EventStore(store_path, read_only=read_only).open()
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).endswith(".seg"):
                held.append(target)
    assert held == []


async def test_a_read_only_open_knows_where_a_stream_scavenged_away_ends(store_path: Path) -> None:
    """A soft-deleted stream whose events a scavenge removed ends where its truncate_before
    says: the writer's open knew it, a read-only open said -1 (so a replica's
    ``load_aggregate`` gave a version the writer refuses)."""
    async with es.EventStore(store_path, segment_bytes=4096) as writer:
        for i in range(5):
            await writer.append("s", Note(text=f"{i}" + "x" * 1000))
        for _ in range(10):
            await writer.append("other", Note(text="y" * 1000))
        # both metadata frames stay in the tail, which a scavenge leaves alone: the
        # newest one counts
        await writer.set_stream_metadata("s", truncate_before=2)
        await writer.delete_stream("s")
        assert (await writer.scavenge()).events_removed == 5
        assert writer.stream_version("s") == 4
        # opened next to the writer (a closed one's tail sidecar lists the newest only), and
        # after it closed
        for _ in range(2):
            async with es.EventStore(store_path, read_only=True) as reader:
                assert reader.stream_version("s") == 4
                assert reader.stream_metadata("s").deleted
                got = await es.load_aggregate(reader, "s", Tally, lambda st, rec: st)
                assert got.version == 4 and [r async for r in reader.read_stream("s")] == []
            await writer.close()
    async with es.EventStore(store_path) as writer:
        assert (await writer.append("s", Note(text="again"), expected_version=4)).version == 5


class Tally(es.Event):
    n: int = 0


def test_a_new_rewrite_of_a_segment_given_up_on_gets_tries_of_its_own(store_path: Path) -> None:
    """The tries a reader gives a segment's rewrite (refused by its index, or unreadable)
    were counted for the segment's whole life: after one rewrite was given up, every later
    rewrite of that segment got none."""
    from aioeventstore._follow import _REWRITE_TRIES, Follower
    from aioeventstore._fs import OsFileSystem
    from aioeventstore._log import Log

    store_path.mkdir()
    follower = Follower(Log(OsFileSystem(), str(store_path), es.StoreOptions()))

    def tried(size: int) -> bool:  # a check saw the rewrite (at this size), which failed
        follower._rewrite_seen[0] = size
        return follower.retry_rewrite(0)

    assert all(tried(1000) for _ in range(_REWRITE_TRIES))
    assert tried(1000) is False  # given up: left alone while it is this file
    assert tried(900) is True  # a later scavenge rewrote it again
    assert all(tried(900) for _ in range(_REWRITE_TRIES - 1)) and tried(900) is False
