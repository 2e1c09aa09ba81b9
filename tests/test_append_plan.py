"""How the commit loop plans one batch: every kind of item a producer can queue (appends
accepted, rejected, answered from the idempotency window or cancelled before their batch,
metadata writes whose frame bodies are made while planning, checkpoints) in one batch, in
the orders that matter for the log space reserved for it. The reservation (what
``Log.reserve`` gets, which decides segment rotation) is the queued bytes from the first
accepted item on, counting that item as planned and the later ones as queued; what
``Log.settle`` gets is what the accepted items' frames take. Then retries of multi-event
appends with caller-chosen ids after a reopen (the window rebuilt from disk), and the event
ids the live fan-out hands out for such an append."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import aioeventstore as es
from aioeventstore._codec import encode_event
from aioeventstore._commit import FRAME_OVERHEAD, PendingAppend, _Batch
from aioeventstore._log import WritePlan
from aioeventstore._verify import verify_store
from tests.crashload import STORE
from tests.helpers import FaultyFileSystem, Note, take
from tests.simfs import SimFS


async def settle() -> None:
    """Let every ready task run until it blocks (no wall-clock waiting)."""
    for _ in range(20):
        await asyncio.sleep(0)


@dataclass
class Planned:
    """One batch as the commit loop planned it."""

    queued: int  # what the queue's drain said the items take
    pre: list[tuple[PendingAppend, int]]  # the items, with their sizes before planning
    reserved: list[int] = field(default_factory=list)
    settled: list[int] = field(default_factory=list)

    def old_rule(self) -> int | None:
        """The reservation as the planner has always made it: the bytes of the first
        accepted item (as planned: a metadata write's body is made then) and of every item
        queued after it (as queued), or None when nothing was accepted."""
        for k, (item, _) in enumerate(self.pre):
            if item.position >= 0:
                return item.size + sum(size for _, size in self.pre[k + 1 :])
        return None


class Probe:
    """Records each batch's planning and what it hands ``Log.reserve``/``settle``."""

    def __init__(self, store: es.EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
        commit = store._commit
        assert commit is not None
        self.batches: list[Planned] = []
        real_plan = commit._plan
        log = commit._log
        real_reserve, real_settle = log.reserve, log.settle

        def plan(items: list[PendingAppend], queued: int) -> _Batch:
            self.batches.append(Planned(queued, [(i, i.size) for i in items]))
            return real_plan(items, queued)

        def reserve(nbytes: int, first_position: int) -> WritePlan:
            self.batches[-1].reserved.append(nbytes)
            return real_reserve(nbytes, first_position)

        def settle_(plan: WritePlan, nbytes: int) -> None:
            self.batches[-1].settled.append(nbytes)
            real_settle(plan, nbytes)

        monkeypatch.setattr(commit, "_plan", plan)
        monkeypatch.setattr(log, "reserve", reserve)
        monkeypatch.setattr(log, "settle", settle_)


CANCEL = "cancel"  # the producer is cancelled after queueing, before its batch is planned
OK = "ok"
Op = tuple[Callable[[], Awaitable[Any]], Any]  # (the call, what it must give)


def multi(ids: list[uuid.UUID], tag: str) -> list[es.NewEvent]:
    return [es.NewEvent(Note(text=f"{tag}{k}"), id=eid) for k, eid in enumerate(ids)]


async def one_batch(store: es.EventStore, fs: FaultyFileSystem, ops: list[Op]) -> list[Any]:
    """Run ``ops`` as one commit batch, in order, behind a batch held in its write."""
    fs.faults.gate = threading.Event()
    held = asyncio.create_task(store.append("held", Note(text="held")))
    await settle()  # its batch is planned and blocked in the write
    tasks = [asyncio.ensure_future(call()) for call, _ in ops]
    await settle()  # every one of them is queued
    for task, (_, want) in zip(tasks, ops, strict=True):
        if want == CANCEL:
            task.cancel()
    await settle()
    fs.faults.gate.set()
    await held
    return await asyncio.gather(*tasks, return_exceptions=True)


def check_outcomes(got: list[Any], ops: list[Op]) -> None:
    for k, (out, (_, want)) in enumerate(zip(got, ops, strict=True)):
        if want == CANCEL:
            assert isinstance(out, asyncio.CancelledError), (k, out)
        elif want == OK:
            assert not isinstance(out, BaseException), (k, out)
        elif isinstance(want, type):
            assert isinstance(out, want), (k, out)
        else:
            assert out == want, (k, out)


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize(
    "scenario",
    [
        "rejected-then-accepted",
        "meta-first",
        "rejected-meta-then-meta-first",
        "checkpoint-first",
        "all-rejected",
        "clean",
    ],
)
async def test_one_batch_of_every_kind_reserves_as_planned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: Any, scenario: str
) -> None:
    fs = FaultyFileSystem()
    opts = es.StoreOptions(compression=compression, segment_bytes=64 * 1024)
    ids = [uuid.uuid4() for _ in range(3)]
    async with es.EventStore(tmp_path, options=opts, _fs=fs) as store:
        original = await store.append("old", multi(ids, "o"))  # versions 0..2, caller ids
        await store.append("meta", Note(text="m"))
        await store.append("gone", Note(text="g"))
        await store.delete_stream("gone", hard=True)
        probe = Probe(store, monkeypatch)
        s = store

        def note(text: str) -> Note:
            return Note(text=text)

        ops: list[Op]
        if scenario == "rejected-then-accepted":
            ops = [
                (lambda: s.append("x", note("cancelled")), CANCEL),
                (lambda: s.append("old", note("a"), expected_version=0), es.WrongExpectedVersion),
                (
                    lambda: s.append("old", note("b"), expected_version=10**6),
                    es.WrongExpectedVersion,
                ),
                (lambda: s.append("old", multi(ids, "o")), original),  # the window
                (lambda: s.append("old", multi(ids, "o"), expected_version=es.NO_STREAM), original),
                (lambda: s.append("gone", note("c")), es.StreamDeleted),
                (lambda: s.set_stream_metadata("meta", truncate_before=50), ValueError),
                (lambda: s.delete_stream("gone"), es.StreamDeleted),
                (lambda: s.delete_stream("meta", expected_version=7), es.WrongExpectedVersion),
                (lambda: s.append("new", note("d"), expected_version=es.NO_STREAM), OK),
                (lambda: s.set_stream_metadata("meta", max_count=3), OK),  # grows, after
                (lambda: s.save_checkpoint("c", 1), None),
                (
                    lambda: s.append("new", note("e"), expected_version=es.NO_STREAM),
                    es.WrongExpectedVersion,
                ),
                (lambda: s.append("y", note("cancelled")), CANCEL),
                (lambda: s.append("old", multi(ids, "o")), original),
                (lambda: s.append("gone", note("f")), es.StreamDeleted),
                (lambda: s.append("new", note("g"), expected_version=0), OK),
                (lambda: s.append("old", note("h"), expected_version=es.STREAM_EXISTS), OK),
            ]
        elif scenario == "meta-first":
            ops = [
                (lambda: s.set_stream_metadata("meta", max_count=7, max_age=3600), OK),
                (lambda: s.append("meta", note("a")), OK),
                (lambda: s.delete_stream("old", expected_version=2), OK),  # grows, after
                (lambda: s.append("old", note("b")), OK),
            ]
        elif scenario == "rejected-meta-then-meta-first":
            ops = [
                (lambda: s.append("x", note("cancelled")), CANCEL),
                (lambda: s.set_stream_metadata("meta", truncate_before=50), ValueError),
                (lambda: s.set_stream_metadata("gone", max_count=1), es.StreamDeleted),
                (lambda: s.delete_stream("meta", hard=True), OK),  # the first accepted
                (lambda: s.append("meta", note("a")), es.StreamDeleted),  # by the one before
                (lambda: s.append("old", note("b"), expected_version=2), OK),
            ]
        elif scenario == "checkpoint-first":
            ops = [
                (lambda: s.append("old", note("a"), expected_version=1), es.WrongExpectedVersion),
                (lambda: s.save_checkpoint("c", 2), None),
                (lambda: s.append("old", note("b")), OK),
                (lambda: s.save_checkpoint("d", 1), None),
            ]
        elif scenario == "all-rejected":
            ops = [
                (lambda: s.append("x", note("cancelled")), CANCEL),
                (
                    lambda: s.append("old", note("a"), expected_version=10**6),
                    es.WrongExpectedVersion,
                ),
                (lambda: s.append("gone", note("b")), es.StreamDeleted),
                (lambda: s.append("old", multi(ids, "o")), original),
                (lambda: s.set_stream_metadata("meta", truncate_before=50), ValueError),
            ]
        else:  # every item an accepted append of events

            def plain(k: int) -> Callable[[], Awaitable[Any]]:
                return lambda: s.append(f"c{k % 3}", note(str(k)))

            ops = [(plain(k), OK) for k in range(8)]
        head = store.head
        got = await one_batch(store, fs, ops)
        check_outcomes(got, ops)
        batch = probe.batches[-1]
        assert len(probe.batches) == 2  # the held batch, then all of ops in one
        items = [item for item, _ in batch.pre]
        assert len(items) == len(ops)
        assert batch.queued == sum(size for _, size in batch.pre)  # what drain handed over
        expected = batch.old_rule()
        assert batch.reserved == ([] if expected is None else [expected])
        accepted = [item for item in items if item.position >= 0]
        if expected is None:
            assert not accepted and not batch.settled
        else:  # planned at the frames' own size (less once compressed)
            assert batch.settled[0] == sum(item.size for item in accepted)
            assert all(
                size == item.size or item.meta is not None
                for item, size in batch.pre
                if item.position >= 0
            )
        events = [item for item in accepted if not item.special]
        assert store.head == head + 1 + sum(item.count for item in events)
        written = [(r.position, r.stream, r.version, r.id) async for r in store.read_all()]
        head = store.head
    assert verify_store(str(tmp_path)).ok
    async with es.EventStore(tmp_path, options=opts) as store:
        again = [(r.position, r.stream, r.version, r.id) async for r in store.read_all()]
        assert store.head == head
        if scenario == "rejected-then-accepted":
            assert store.stream_metadata("meta").max_count == 3
            assert store.checkpoint("c") == 1
        elif scenario == "meta-first":
            assert store.stream_metadata("meta").max_count == 7
            assert store.stream_metadata("old").truncate_before == 3
        elif scenario == "rejected-meta-then-meta-first":
            assert store.stream_metadata("meta").hard_deleted
    assert again == written


async def test_batches_cut_by_max_batch_bytes_reserve_as_planned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue drained in several batches (``max_batch_bytes``): each batch's queued bytes
    are its own items' (not the queue's), and its reservation follows the same rule, also
    when its first items are rejected or cancelled."""
    fs = FaultyFileSystem()
    async with es.EventStore(tmp_path, _fs=fs, max_batch_bytes=600) as store:
        await store.append("s", Note(text="0"))
        probe = Probe(store, monkeypatch)
        s = store

        def op(k: int) -> Op:
            if k % 5 == 0:
                return (
                    lambda: s.append("s", Note(text="x" * k), expected_version=10**6),
                    es.WrongExpectedVersion,
                )
            if k % 7 == 3:
                return (lambda: s.append("c", Note(text="x" * k)), CANCEL)
            if k % 11 == 4:
                return (lambda: s.set_stream_metadata("s", max_count=k), OK)
            return (lambda: s.append(f"t{k % 4}", Note(text="x" * k)), OK)

        ops = [op(k) for k in range(60)]
        check_outcomes(await one_batch(store, fs, ops), ops)
        assert len(probe.batches) > 4
        for batch in probe.batches[1:]:
            assert batch.queued == sum(size for _, size in batch.pre)
            expected = batch.old_rule()
            assert batch.reserved == ([] if expected is None else [expected])
        firsts = [batch.pre[0][0] for batch in probe.batches[1:]]
        assert any(item.position < 0 for item in firsts)  # a batch led by a rejected item
    assert verify_store(str(tmp_path)).ok


async def test_a_metadata_write_first_in_a_batch_is_queued_at_its_longest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A metadata write's frame body is made while its batch is planned. It is queued at the
    longest that body can be, so a batch the queue cut to fit (the tail segment's room, or
    ``max_batch_bytes``) still fits as planned: the tail never grows past ``segment_bytes``
    for it, and a write is never longer than recovery takes one to be. (It was queued at its
    stream name alone, and a batch could come out longer than it was counted.)"""
    from aioeventstore._commit import META_BODY_MAX

    seg = 8192
    opts = es.StoreOptions(segment_bytes=seg)
    async with es.EventStore(tmp_path, options=opts) as store:
        commit = store._commit
        assert commit is not None
        log = commit._log
        probe = Probe(store, monkeypatch)
        for k in range(4):
            await store.append("meta", Note(text=str(k)))
        await store.set_stream_metadata("meta", max_count=5, max_age=60)
        grown = probe.batches[-1].pre[0][0].size  # that write's frame, as planned
        queued = probe.batches[-1].pre[0][1]  # and as queued
        assert queued == FRAME_OVERHEAD + len(b"meta") + META_BODY_MAX >= grown
        room = seg - log._end
        ordinal = log._tail

        def fill_size(pad: int) -> int:
            _, entries, _, _, _ = encode_event("fill", Note(text="y" * pad), 1 << 20)
            return FRAME_OVERHEAD + len(b"fill") + len(entries)

        # the largest append with which the batch fits the tail as queued
        pad = max(p for p in range(room) if queued + fill_size(p) <= room)
        got = await asyncio.gather(
            store.set_stream_metadata("meta", max_count=6, max_age=61),
            store.append("fill", Note(text="y" * pad)),
        )
        assert got[1].position == 4
        batch = probe.batches[-1]
        assert len(batch.pre) == 2 and batch.queued <= room  # one batch, fitting as queued
        assert batch.settled == [grown + fill_size(pad)]  # and as planned
        assert log._tail == ordinal and log.segments[-1].file.size() <= seg  # no rotation
    assert verify_store(str(tmp_path)).ok
    async with es.EventStore(tmp_path, options=opts) as store:
        assert store.stream_metadata("meta").max_count == 6
        assert [r.position async for r in store.read_stream("fill")] == [4]


@pytest.mark.parametrize("compression", ["none", "zstd"])
async def test_multi_event_retries_with_caller_ids_after_reopen(
    tmp_path: Path, compression: Any
) -> None:
    """The window rebuilt on open holds every id of an append: a retry of the whole append,
    or of a prefix of its ids, is answered from it; an append sharing its first id but going
    on with other ids, or further, conflicts (WrongExpectedVersion), as with an explicit
    version: an id names one event."""
    opts = es.StoreOptions(compression=compression, idempotency_window=8)
    ids = [uuid.uuid4() for _ in range(3)]
    async with es.EventStore(tmp_path, options=opts) as store:
        await store.append("s", Note(text="before"))
        first = await store.append("s", multi(ids, "a"))
        await store.append("t", multi([uuid.uuid4(), uuid.uuid4()], "t"))
    prefix = es.AppendResult(first.position - 1, first.version - 1)
    async with es.EventStore(tmp_path, options=opts) as store:
        head = store.head
        assert await store.append("s", multi(ids, "a")) == first  # ANY: from the window
        assert await store.append("s", multi(ids, "a"), expected_version=es.STREAM_EXISTS) == first
        assert await store.append("s", multi(ids, "a"), expected_version=0) == first  # Recheck
        # in one batch, with append_many, and twice over
        again = await store.append_many(
            [("s", multi(ids, "a")), ("s", multi(ids, "a"), 0), ("t", multi([uuid.uuid4()], "n"))]
        )
        assert again[:2] == [first, first] and again[2].position == head + 1
        assert store.head == head + 1
        # a prefix of the ids is a retry of those events; other ids after the first conflict
        assert await store.append("s", multi(ids[:2], "c")) == prefix
        changed = [ids[0], uuid.uuid4(), ids[2]]
        for other in (changed, [*ids, uuid.uuid4()]):
            with pytest.raises(es.WrongExpectedVersion):
                await store.append("s", multi(other, "b"))
        with pytest.raises(es.WrongExpectedVersion):
            await store.append("s", multi(changed[:2], "d"), expected_version=0)
        recs = [r async for r in store.read_stream("s")]
        assert [r.id for r in recs[1:]] == ids
    async with es.EventStore(tmp_path, options=opts) as store:
        head = store.head
        assert await store.append("s", multi(ids[:2], "c")) == prefix
        assert await store.append("s", multi(ids, "a"), expected_version=0) == first
        assert store.head == head


@pytest.mark.parametrize("compression", ["none", "zstd"])
async def test_multi_event_retries_after_a_power_cut(compression: Any) -> None:
    """The process dies (a power cut) after some multi-event appends with caller ids were
    acknowledged and one was not: on reopen the acknowledged ones' retries are answered
    from the window rebuilt from the log (or by their ids read back, with an explicit
    expected version) and write nothing; the unacknowledged one's retry writes it once."""
    fs = SimFS(11)
    opts = es.StoreOptions(compression=compression, segment_bytes=4096)
    ids = [[uuid.uuid4() for _ in range(1 + i % 3)] for i in range(12)]
    lost = [uuid.uuid4(), uuid.uuid4()]
    async with es.EventStore(STORE, options=opts, _fs=fs) as store:
        firsts = await store.append_many([(f"s{i % 4}", multi(ids[i], str(i))) for i in range(12)])
        for k in range(40):  # later appends, and segments sealed in between
            await store.append(f"f{k % 3}", Note(text="z" * 100))
        fs.cut_after(0)
        with pytest.raises(es.StoreFailed):
            await store.append("s0", multi(lost, "lost"))
    fs.reboot("lost")
    async with es.EventStore(STORE, options=opts, _fs=fs) as store:
        head = store.head
        assert len(store._log.segments) > 1
        again = await store.append_many([(f"s{i % 4}", multi(ids[i], str(i))) for i in range(12)])
        assert again == firsts
        for i in (0, 5, 11):  # the exact way: the ids stored at those versions are compared
            version = firsts[i].version - len(ids[i])
            expected = es.NO_STREAM if version < 0 else version
            r = await store.append(f"s{i % 4}", multi(ids[i], str(i)), expected_version=expected)
            assert r == firsts[i]
        assert store.head == head
        written = await store.append("s0", multi(lost, "lost"))
        assert written.position == head + 2
        assert await store.append("s0", multi(lost, "lost")) == written
        assert store.head == head + 2


async def test_live_records_carry_each_events_own_id(tmp_path: Path) -> None:
    """The live fan-out cuts each event's id from the append's ids: a multi-event append with
    caller ids, one with generated ids and a mix are delivered as a replay reads them."""
    mine = [uuid.uuid4() for _ in range(3)]
    async with es.EventStore(tmp_path) as store:
        async with store.subscribe(from_position=es.END) as sub:
            await store.append_many(
                [
                    ("a", multi(mine, "m")),
                    ("b", [Note(text="g0"), Note(text="g1")]),
                    ("a", [es.NewEvent(Note(text="x"), id=mine[0]), es.NewEvent(Note(text="y"))]),
                ]
            )
            live = await take(sub, 7)
        replayed = [r async for r in store.read_all()]
    assert [r.id for r in live[:3]] == mine and live[5].id == mine[0]
    assert len({r.id for r in live}) == 6
    assert [(r.position, r.stream, r.version, r.id, r.data) for r in live] == [
        (r.position, r.stream, r.version, r.id, r.data) for r in replayed
    ]
