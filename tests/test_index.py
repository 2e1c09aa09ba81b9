"""The in-memory index on its own: its answers against a plain model, its sidecar rows, the
garbage collector's view of it, and a sidecar export on another thread while streams grow;
and the check of stream names each append makes (per stream, like the index)."""

from __future__ import annotations

import asyncio
import gc
import random
import re
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import aioeventstore as es
from aioeventstore._checks import check_stream
from aioeventstore._index import FrameRef, Index, SegmentRows, StreamFrames
from tests.helpers import Note


def build(streams: int, events: int, seed: int = 1) -> tuple[Index, dict[str, list[int]]]:
    """An index of ``events`` events in frames of 1-3 over ``streams`` streams (four
    segments), and the model: each stream's positions in version order."""
    rng = random.Random(seed)
    index = Index()
    model: dict[str, list[int]] = {}
    position = 0
    while position < events:
        stream = f"s-{rng.randrange(streams)}"
        count = rng.choice((1, 1, 1, 2, 3))
        ordinal = position * 4 // events
        index.add_frame(
            ordinal, position * 10, 10, stream, position, index.last_version(stream) + 1, count
        )
        model.setdefault(stream, []).extend(range(position, position + count))
        position += count + rng.choice((0, 0, 0, 2))  # a gap now and then (removed frames)
    index.head = index.next_position - 1
    return index, model


def check(index: Index, model: dict[str, list[int]]) -> None:
    assert index.stream_count() == len(model)
    for stream, positions in model.items():
        assert index.last_version(stream) == len(positions) - 1
        assert index.committed_last_version(stream) == len(positions) - 1
        assert index.first_version(stream) == 0
        for version, position in enumerate(positions):
            assert index.position_of(stream, version) == position
            assert index.committed_version_after(stream, position) == version + 1
            assert index.committed_version_after(stream, position - 1) == version
        frames = pairs(index.stream_frames(stream, 0, 1 << 30, False))
        found = [f.first_position + k for f, _ in frames for k in range(f.event_count)]
        assert found == positions
        assert [v for _, v in frames] == [positions.index(f.first_position) for f, _ in frames]
    assert index.last_version("nope") == -1
    assert index.committed_last_version("nope") == -1


def test_the_index_answers_as_the_model_does() -> None:
    index, model = build(300, 5000)
    check(index, model)
    head = index.head
    index.head = head - 40  # the last 40 positions are planned, not durable
    for stream, positions in model.items():
        durable = sum(1 for p in positions if p <= head - 40)
        assert index.committed_last_version(stream) == durable - 1


@pytest.mark.parametrize("streams", [1, 3, 300])
def test_stream_run_counts_the_versions_that_lie_back_to_back(streams: int) -> None:
    """``stream_run``: of the committed versions asked for, how many from the first on hold
    consecutive positions (nothing else appended between them), against the model, from
    any version, with any bound, with planned positions past the head, and once the oldest
    segment is dropped (every stream then has a base)."""
    rng = random.Random(streams)
    index, model = build(streams, 3000, seed=streams)
    names = sorted(model)
    head = index.head
    for drop in (False, True):
        if drop:
            _, r1 = index.segment_rows(0)
            cut = index.frame(r1).first_position
            index.drop_oldest(0, cut)
        for _ in range(2000):
            stream = rng.choice(names)
            index.head = head - rng.choice((0, 0, 5, 40))
            base = index.first_version(stream)
            positions = [p for p in model[stream] if not drop or p >= cut]
            version = base + rng.randrange(0, len(positions) + 3)
            most = rng.choice((1, 2, 3, 50, 1 << 62))
            committed = [p for p in positions if p <= index.head]
            asked = committed[version - base : version - base + most]
            run = 0
            while run < len(asked) and asked[run] == asked[0] + run:
                run += 1
            want = (run, run == len(asked)) if run > 1 else (0, False)
            assert index.stream_run(stream, version, most) == want, (
                stream,
                version,
                most,
            )
    index.head = head
    assert index.stream_run("nope", 0, 10) == (0, False)


def pairs(frames: StreamFrames) -> list[tuple[FrameRef, int]]:
    """``stream_frames``' columns as (frame, its first version) pairs."""
    return list(zip(frames.refs(), frames.versions, strict=True))


@pytest.mark.parametrize(
    ("single", "largest", "drop", "alone"),
    [
        (0.9, 4, False, 0.0),
        (0.5, 120, False, 0.0),
        (0.9, 4, True, 0.0),
        (0.6, 120, True, 0.0),
        (0.97, 4, False, 0.9),
        (0.5, 30, True, 0.7),
    ],
    ids=[
        "single-events",
        "big-frames",
        "single-events-base",
        "big-frames-base",
        "long-runs-of-one-stream",
        "one-stream-among-big-frames",
    ],
)
def test_stream_frames_pages_as_a_plain_walk_of_the_rows_does(
    single: float, largest: int, drop: bool, alone: float
) -> None:
    """``stream_frames`` (a guessed row per frame, and blocks of single-event frames looked up
    in C) against a walk of the model's frames: any start, either way, any byte and event
    bound, over streams of single events with frames of several or a gap now and then (or
    often, and large: a guess back then falls far below the first row), and with the oldest
    segment dropped (every stream then has a base). ``alone``: the share of frames that are
    stream ``s-0``'s (long runs of it alone in the log, its rows sliced; or its single events
    between big frames, where a block stops at the first frame that is not its own)."""
    rng = random.Random(7)
    index = Index()
    frames: dict[str, list[tuple[int, int, int, int, int, int]]] = {}  # stream → frames
    position = 0
    for ordinal in range(3):
        offset = 0
        for _ in range(3000):
            stream = "s-0" if alone and rng.random() < alone else f"s-{rng.randrange(40)}"
            count = 1 if rng.random() < single else rng.randrange(2, largest + 1)
            length = rng.randrange(60, 400)
            version = index.last_version(stream) + 1
            index.add_frame(ordinal, offset, length, stream, position, version, count)
            frames.setdefault(stream, []).append(
                (ordinal, offset, length, position, count, version)
            )
            offset += length
            position += count + (rng.randrange(1, 4) if rng.random() < 0.02 else 0)
    index.head = index.next_position - 1
    if drop:
        _, r1 = index.segment_rows(0)
        index.drop_oldest(0, index.frame(r1).first_position)
        frames = {s: [f for f in rows if f[0] > 0] for s, rows in frames.items()}

    def walk(stream: str, version: int, max_bytes: int, back: bool, most: int | None) -> Any:
        rows = frames[stream]
        if not rows:
            return []
        last = rows[-1][5] + rows[-1][4] - 1
        if not back:
            version = max(version, rows[0][5])
        if version < rows[0][5] or version > last:
            return []
        i = next(k for k, r in enumerate(rows) if r[5] <= version < r[5] + r[4])
        out: list[Any] = []
        total = have = 0
        want = (1 << 62) if most is None else most
        while 0 <= i < len(rows) and (not out or (total < max_bytes and have < want)):
            ordinal, offset, length, first, count, first_version = rows[i]
            out.append(((ordinal, offset, length, first, count), first_version))
            total += length
            have += (version - first_version + 1) if back else (first_version + count - version)
            version = first_version - 1 if back else first_version + count
            i += -1 if back else 1
        return out[::-1] if back else out

    pages = 0
    for _ in range(3000):
        # (with ``alone``, half the reads are of s-0: the layouts it is there for)
        stream = "s-0" if alone and rng.random() < 0.5 else f"s-{rng.randrange(40)}"
        version = rng.randrange(-2, index.last_version(stream) + 6)
        max_bytes = rng.choice((1, 100, 500, 4096, 1 << 20))
        back = rng.random() < 0.4
        most = rng.choice((None, 1, 2, 7, 100))
        got = pairs(index.stream_frames(stream, version, max_bytes, back, most))
        want = walk(stream, version, max_bytes, back, most)
        assert [(tuple(f), v) for f, v in got] == want, (stream, version, max_bytes, back, most)
        pages += len(got) > 1
    assert pages > 300  # (many calls return several frames)


def test_a_stream_read_back_past_a_large_frame_of_another_stream() -> None:
    """Going back, the row of a stream's earlier frame is guessed from a later row: with a
    large frame in between, that guess is below row 0 (it once raised IndexError)."""
    index = Index()
    index.add_frame(0, 0, 100, "a", 0, 0, 1)
    index.add_frame(0, 100, 5000, "b", 1, 0, 100)
    index.add_frame(0, 5100, 100, "a", 101, 1, 1)
    index.head = index.next_position - 1
    got = index.stream_frames("a", 1, 1 << 20, True)
    assert list(zip(got.firsts, got.versions, strict=True)) == [(0, 0), (101, 1)]
    got = index.stream_frames("a", 1, 1, True)  # one frame a call, as a paged read goes
    assert list(zip(got.firsts, got.versions, strict=True)) == [(101, 1)]
    got = index.stream_frames("a", 0, 1, True)
    assert list(zip(got.firsts, got.versions, strict=True)) == [(0, 0)]


def test_sidecar_rows_load_back_into_the_same_index() -> None:
    index, model = build(300, 5000)
    copy = Index()
    for ordinal in range(4):
        r0, r1 = index.segment_rows(ordinal)
        end = index.frame(r1 - 1).first_position + index.frame(r1 - 1).event_count
        rows = index.export_rows(r0, r1, end)
        assert sum(rows.counts) == sum(rows.cnt)
        missing = rows.pos[0] - copy.next_position
        assert copy.rows_problem(rows, missing) is None
        copy.load_rows(ordinal, rows, end, "now")
        assert copy.export_rows(*copy.segment_rows(ordinal), end) == rows
    copy.head = copy.next_position - 1
    check(copy, model)
    assert copy.memory_bytes() == index.memory_bytes()


def test_removing_the_oldest_events_moves_each_streams_base() -> None:
    index, model = build(50, 2000)
    _, r1 = index.segment_rows(1)
    cut = index.frame(r1).first_position  # the first position of segment 2
    ending = {s: (v, p) for s, v, p in index.streams_ending_before(cut)}
    assert ending == {s: (len(p) - 1, p[-1]) for s, p in model.items() if p[-1] < cut}
    index.drop_oldest(1, cut)
    for stream, positions in model.items():
        kept = [p for p in positions if p >= cut]
        base = len(positions) - len(kept)
        assert index.first_version(stream) == base
        assert index.last_version(stream) == len(positions) - 1
        assert [index.position_of(stream, base + i) for i in range(len(kept))] == kept
        assert not index.stream_frames(stream, base - 1, 1 << 30, True).firsts
    index.set_stream_floor("gone", 41)
    assert (index.first_version("gone"), index.last_version("gone")) == (42, 41)


def test_event_count_is_the_committed_events_left_in_the_rows() -> None:
    index, model = build(50, 2000)
    everything = sum(map(len, model.values()))
    head = index.head
    last = index.frame(index.row_count() - 20)  # the last 20 frames are planned, not durable
    index.head = last.first_position + last.event_count - 1
    assert index.event_count() == sum(p <= index.head for ps in model.values() for p in ps)
    index.head = head
    assert index.event_count() == everything  # (the rows added since: summed on)
    _, r1 = index.segment_rows(1)
    cut = index.frame(r1).first_position
    index.drop_oldest(1, cut)
    assert index.event_count() == sum(p >= cut for ps in model.values() for p in ps)


def tracked_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def test_streams_cost_the_garbage_collector_nothing_per_stream() -> None:
    """Full collections walk every tracked object: the index must hold none per stream."""
    few = Index()
    for k in range(10):
        few.add_frame(0, k, 1, f"s-{k}", k, 0, 1)
    before = tracked_objects()
    many = Index()
    for k in range(20_000):
        many.add_frame(0, k, 1, f"s-{k}", 2 * k, 0, 2)
    after = tracked_objects()
    assert many.stream_count() == 20_000
    assert after - before < 100  # the Index and a few containers, not one per stream
    del few


def test_an_export_on_another_thread_while_the_same_streams_grow() -> None:
    """The sidecar export reads a sealed segment's streams on the I/O thread while the commit
    loop appends to those streams (their buffers grow and move): neither may fail, and the
    export must be the one a quiet index gives."""
    index = Index()
    streams = [f"stream-{k}" for k in range(3000)]
    position = 0
    for stream in streams:  # segment 0: every stream, one event or two
        count = 1 + len(stream) % 2
        index.add_frame(0, position, 1, stream, position, 0, count)
        position += count
    r0, r1 = index.segment_rows(0)
    end = position
    expected = index.export_rows(r0, r1, end)
    errors: list[BaseException] = []
    exports: list[SegmentRows] = []
    done = threading.Event()

    def exporter() -> None:
        try:
            while not done.is_set() or not exports:
                exports.append(index.export_rows(r0, r1, end))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    thread = threading.Thread(target=exporter)
    thread.start()
    try:
        for k in range(60_000):  # segment 1: the same streams grow, and new ones appear
            stream = streams[k % 3000] if k % 7 else f"new-{k}"
            index.add_frame(1, k, 1, stream, position, index.last_version(stream) + 1, 1)
            position += 1
    finally:
        done.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert not errors
    assert exports and all(rows == expected for rows in exports)


async def test_sidecars_written_while_many_streams_take_appends_match_a_rescan(
    tmp_path: Path,
) -> None:
    """Segments seal (and export their sidecars on the I/O thread) while 64 producers append
    to 4,000 streams; the sidecars then give the same index as rescanning the log."""
    path = tmp_path / "s"
    opts = es.StoreOptions(segment_bytes=16384)
    async with es.EventStore(path, opts) as store:

        async def producer(p: int) -> None:
            for i in range(p, 6000, 64):
                await store.append(f"s-{i % 4000}", Note(text=str(i)))

        await asyncio.gather(*(producer(p) for p in range(64)))

    async def answers() -> list[tuple[str, int, int]]:
        async with es.EventStore(path, opts) as store:
            assert store.statistics().streams == 4000
            return [(r.stream, r.version, r.position) async for r in store.read_all()]

    with_sidecars = await answers()
    for idx in path.glob("*.idx"):
        idx.unlink()
    assert await answers() == with_sidecars
    assert [r[2] for r in with_sidecars] == list(range(6000))
    versions: dict[str, list[int]] = {}
    for stream, version, _ in with_sidecars:
        versions.setdefault(stream, []).append(version)
    assert all(v == list(range(1 + (int(s[2:]) < 2000))) for s, v in versions.items())


def test_stream_names_are_checked_on_every_call() -> None:
    """No cache of checked names (one thrashed past 65,536 streams): every call checks."""
    for k in range(70_000):
        name = f"s-{k}"
        assert check_stream(name) == name.encode()
    assert check_stream("é") == "é".encode()

    class Name(str):
        pass

    assert check_stream(Name("sub")) == b"sub"
    for bad, error, words in [
        ("", ValueError, "must not be empty"),
        ("$all", ValueError, "reserved"),
        ("\ud800", ValueError, "not valid UTF-8"),
        ("é" * 513, ValueError, "1026 bytes of UTF-8, over the limit of 1024"),
        (b"bytes", TypeError, "must be a str, not bytes"),
    ]:
        with pytest.raises(error, match=re.escape(words)):
            check_stream(bad)


def test_a_follower_lets_a_stream_skip_only_as_many_versions_as_positions_it_missed() -> None:
    """A read-only store's indexer: after a gap (segments the writer removed before the
    reader got to them), a stream may continue past its next version by at most the number
    of positions the reader never saw, and only if the segment holding the last event it
    indexed was removed or rewritten since; the index then forgets its older versions (they
    were removed too). A skip without both is damage (a segment deleted by hand, say)."""
    from aioeventstore._follow import frame_indexer
    from aioeventstore._format import FrameInfo

    def frame(stream: str, position: int, version: int, count: int = 1) -> FrameInfo:
        return FrameInfo(position * 100, 100, 20, stream, count, position, version, 0, 0)

    index = Index()
    changed: set[int] = set()
    add = frame_indexer(index, {}, lambda ordinal: f"segment {ordinal}", None, changed.__contains__)
    add(0, frame("a", 0, 0, 3))
    add(0, frame("b", 3, 0))
    changed.add(0)
    with pytest.raises(es.CorruptLog, match="'a' continues at version 4, expected 3"):
        add(0, frame("a", 4, 4))  # no position missing: no version may be skipped
    changed.clear()
    with pytest.raises(es.CorruptLog, match="'a' continues at version 7, expected 3"):
        add(2, frame("a", 10, 7, 2))  # positions missing, but segment 0 is as it was
    changed.add(0)  # it was removed or rewritten: the versions went with it
    # positions 4..9 were removed: "a" lost versions 3..6 (4 of the 6), "b" 1..2
    add(2, frame("a", 10, 7, 2))
    assert (index.first_version("a"), index.last_version("a")) == (7, 8)
    assert [index.position_of("a", v) for v in (7, 8)] == [10, 11]
    add(2, frame("b", 12, 3))
    assert (index.first_version("b"), index.last_version("b")) == (3, 3)
    with pytest.raises(es.CorruptLog, match="'c' continues at version 7, expected 0"):
        add(2, frame("c", 13, 7))  # 6 positions missing in all, not 7
    add(2, frame("c", 13, 6))
    assert (index.first_version("c"), index.last_version("c")) == (6, 6)
