"""The public contract (DESIGN.md, README), run against every backend: a directory on disk and
``EventStore.memory()``.

One abstract suite, as eventsourcing does for its persistence backends: each test takes a
``backend`` that makes stores on one storage (the same directory, or the same
``MemoryStorage``), so reopening, locking and named consumers resuming are tested the same
way for both. What only a disk can show (power cuts, fsync errors, SIGKILL, damaged files)
stays in the disk-only suites.
"""

from __future__ import annotations

import asyncio
import uuid
from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import aioeventstore as es
from aioeventstore import events as events_module
from tests.helpers import Deposited, Note, Withdrawn, registry_changed, take


class Backend(ABC):
    """Makes stores that share one storage: each ``store()`` is a new, unopened EventStore
    on the same data, as reopening a directory is."""

    @abstractmethod
    def store(self, options: es.StoreOptions | None = None, **overrides: Any) -> es.EventStore: ...


class DiskBackend(Backend):
    def __init__(self, path: Path) -> None:
        self.path = path

    def store(self, options: es.StoreOptions | None = None, **overrides: Any) -> es.EventStore:
        return es.EventStore(self.path, options, **overrides)


class MemoryBackend(Backend):
    def __init__(self) -> None:
        self.storage = es.MemoryStorage()

    def store(self, options: es.StoreOptions | None = None, **overrides: Any) -> es.EventStore:
        return es.EventStore.memory(options, storage=self.storage, **overrides)


@pytest.fixture(params=["disk", "memory"])
def backend(request: pytest.FixtureRequest, store_path: Path) -> Backend:
    if request.param == "disk":
        return DiskBackend(store_path)
    return MemoryBackend()


async def stream_of(store: es.EventStore, stream: str, **kw: Any) -> list[es.RecordedEvent]:
    return [rec async for rec in store.read_stream(stream, **kw)]


async def everything(store: es.EventStore, **kw: Any) -> list[es.RecordedEvent]:
    return [rec async for rec in store.read_all(**kw)]


async def fill(store: es.EventStore, n: int, start: int = 0) -> None:
    """``n`` appends over streams s0, s1, s2; every third holds two events."""
    for i in range(start, start + n):
        events: list[es.Event] = [Note(text=str(i))]
        if i % 3 == 0:
            events.append(Note(text=f"{i}b"))
        await store.append(f"s{i % 3}", events)


# --- appends ----------------------------------------------------------------------------------


async def test_round_trip_and_reopen(backend: Backend) -> None:
    eid = uuid.uuid4()
    before = datetime.now(UTC) - timedelta(seconds=1)
    async with backend.store(segment_bytes=4096) as store:
        assert store.head == -1
        r1 = await store.append("acc-1", Deposited(account="1", amount=10))
        assert (r1.position, r1.version) == (0, 0)
        r2 = await store.append(
            "acc-2",
            [
                es.NewEvent(Withdrawn(account="2", amount=3), id=eid, metadata={"corr": "c-1"}),
                Note(text="héllo ✓"),
            ],
        )
        assert (r2.position, r2.version) == (2, 1)
        await fill(store, 60)  # past several 4 KiB segments
        head = store.head
        recs = await everything(store)
    assert [r.position for r in recs] == list(range(head + 1))
    first = recs[1]
    assert (first.stream, first.version, first.id, first.type) == (
        "acc-2",
        0,
        eid,
        "tests.withdrawn.v1",
    )
    assert first.data == Withdrawn(account="2", amount=3) and first.metadata == {"corr": "c-1"}
    assert recs[2].data == Note(text="héllo ✓") and recs[2].metadata == {}
    assert first.recorded_at.tzinfo is UTC and first.recorded_at >= before
    assert first.recorded_at == recs[2].recorded_at  # one append, one commit time
    async with backend.store(segment_bytes=4096) as store:
        assert store.head == head
        assert await everything(store) == recs
        assert (await store.append("acc-1", Note(text="after"))).position == head + 1


async def test_every_expected_version_kind(backend: Backend) -> None:
    e = Deposited(account="a", amount=1)
    async with backend.store() as store:
        with pytest.raises(es.WrongExpectedVersion) as info:
            await store.append("s", e, expected_version=es.STREAM_EXISTS)
        assert (info.value.stream, info.value.expected, info.value.actual) == (
            "s",
            es.STREAM_EXISTS,
            -1,
        )
        with pytest.raises(es.WrongExpectedVersion) as info:
            await store.append("s", e, expected_version=0)
        assert (info.value.expected, info.value.actual) == (0, -1)
        assert (await store.append("s", e, expected_version=es.NO_STREAM)).version == 0
        with pytest.raises(es.WrongExpectedVersion) as info:
            await store.append("s", e, expected_version=es.NO_STREAM)
        assert (info.value.stream, info.value.expected, info.value.actual) == (
            "s",
            es.NO_STREAM,
            0,
        )
        assert (await store.append("s", e, expected_version=es.STREAM_EXISTS)).version == 1
        assert (await store.append("s", [e, e], expected_version=1)).version == 3
        with pytest.raises(es.WrongExpectedVersion) as info:
            await store.append("s", [e, e], expected_version=2)
        assert (info.value.expected, info.value.actual) == (2, 3)
        with pytest.raises(es.WrongExpectedVersion):
            await store.append("s", e, expected_version=7)
        assert (await store.append("s", e, expected_version=es.ANY)).version == 4
        assert (await store.append("s", e)).version == 5
        # the failed appends wrote nothing: versions and positions stay dense
        assert [r.version for r in await stream_of(store, "s")] == list(range(6))
        assert [r.position for r in await everything(store)] == list(range(6))
        assert store.head == 5
    async with backend.store() as store:  # the same versions after reopening
        with pytest.raises(es.WrongExpectedVersion) as info:
            await store.append("s", e, expected_version=4)
        assert info.value.actual == 5


async def test_concurrent_multi_event_appends_are_atomic_and_dense(backend: Backend) -> None:
    async with backend.store() as store:

        async def producer(p: int) -> list[es.AppendResult]:
            out = []
            for i in range(10):
                events = [Note(text=f"{p}-{i}-{k}") for k in range(1 + (p + i) % 4)]
                out.append(await store.append(f"p{p % 4}", events))
            return out

        results = await asyncio.gather(*(producer(p) for p in range(16)))
        recs = await everything(store)
    assert [r.position for r in recs] == list(range(len(recs)))
    by_stream: dict[str, list[int]] = {}
    for r in recs:
        by_stream.setdefault(r.stream, []).append(r.version)
    assert all(v == list(range(len(v))) for v in by_stream.values())
    # each append's events sit next to each other, in the order given
    for p, res in enumerate(results):
        for i, done in enumerate(res):
            n = 1 + (p + i) % 4
            got = recs[done.position - n + 1 : done.position + 1]
            assert [x.data for x in got] == [Note(text=f"{p}-{i}-{k}") for k in range(n)]
            assert {x.stream for x in got} == {f"p{p % 4}"}
            assert [x.version for x in got] == list(range(done.version - n + 1, done.version + 1))


async def test_idempotent_reappend_with_caller_ids(backend: Backend) -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]
    batch = [es.NewEvent(Deposited(account="a", amount=i), id=ids[i]) for i in range(2)]
    ev = es.NewEvent(Note(text="any"), id=uuid.uuid4())
    async with backend.store() as store:
        first = await store.append("s", batch, expected_version=es.NO_STREAM)
        await store.append("s", Note(text="moves on"))
        assert await store.append("s", batch, expected_version=es.NO_STREAM) == first
        other = [es.NewEvent(Deposited(account="a", amount=i)) for i in range(2)]
        with pytest.raises(es.WrongExpectedVersion) as info:
            await store.append("s", other, expected_version=es.NO_STREAM)
        assert info.value.actual == 2
        any_first = await store.append("t", ev)
        assert await store.append("t", ev) == any_first  # ANY: within the window
        dupes = await asyncio.gather(*(store.append("u", ev) for _ in range(10)))
        assert len(set(dupes)) == 1
        assert store.head == 4
    async with backend.store() as store:  # also after reopening
        assert await store.append("s", batch, expected_version=es.NO_STREAM) == first
        assert await store.append("t", ev) == any_first
        assert store.head == 4


# --- reads ------------------------------------------------------------------------------------


async def test_read_stream_forms(backend: Backend) -> None:
    async with backend.store(read_chunk_bytes=4096, segment_bytes=8192) as store:
        await fill(store, 300)
        s0 = await stream_of(store, "s0")
        assert [r.version for r in s0] == list(range(200))
        assert all(r.stream == "s0" for r in s0)
        assert [r.position for r in s0] == sorted(r.position for r in s0)
        assert [r.version for r in await stream_of(store, "s0", from_version=150)] == list(
            range(150, 200)
        )
        back = await stream_of(store, "s0", backwards=True)
        assert [r.version for r in back] == list(range(199, -1, -1))
        assert [
            r.version
            for r in await stream_of(store, "s0", from_version=101, backwards=True, limit=4)
        ] == [101, 100, 99, 98]
        assert [
            r.version
            for r in await stream_of(store, "s0", from_version=999, backwards=True, limit=2)
        ] == [199, 198]
        assert [r.version for r in await stream_of(store, "s0", from_version=3, limit=3)] == [
            3,
            4,
            5,
        ]
        assert await stream_of(store, "s0", limit=0) == []
        assert await stream_of(store, "s0", from_version=200) == []
        assert await stream_of(store, "nope") == []
        assert await stream_of(store, "nope", backwards=True) == []
        by_pos = {r.position: r for r in await everything(store)}
        assert all(by_pos[r.position] == r for r in s0)


async def test_read_all_forms_and_filters(backend: Backend) -> None:
    async with backend.store(read_chunk_bytes=4096, segment_bytes=8192) as store:
        await fill(store, 300)
        n = store.head + 1
        assert n == 400
        assert [r.position for r in await everything(store)] == list(range(n))
        assert [r.position for r in await everything(store, from_position=397)] == [397, 398, 399]
        assert [r.position for r in await everything(store, from_position=1, limit=2)] == [1, 2]
        assert [r.position for r in await everything(store, backwards=True)] == list(
            range(n - 1, -1, -1)
        )
        assert [
            r.position for r in await everything(store, from_position=10, backwards=True, limit=3)
        ] == [10, 9, 8]
        assert [
            r.position
            for r in await everything(store, from_position=10_000, backwards=True, limit=1)
        ] == [399]
        assert await everything(store, from_position=400) == []
        for i in range(30):
            ev: es.Event = (
                Deposited(account=str(i), amount=i)
                if i % 2
                else Withdrawn(account=str(i), amount=i)
            )
            await store.append(f"{'order' if i % 3 else 'user'}-{i % 5}", ev)
        filt = es.EventFilter(stream_prefixes=["order-"], event_types=[Deposited])
        got = await everything(store, filter=filt)
        assert [r.position - n for r in got] == [i for i in range(30) if i % 2 and i % 3]
        assert all(isinstance(r.data, Deposited) and r.stream.startswith("order-") for r in got)
        assert await everything(store, filter=filt, limit=3) == got[:3]
        assert await everything(store, filter=filt, backwards=True) == got[::-1]
        by_type = es.EventFilter(event_types=["tests.withdrawn.v1"])
        assert {r.type for r in await everything(store, filter=by_type)} == {"tests.withdrawn.v1"}
        raw = await everything(store, from_position=n, limit=1, raw=True)
        assert raw[0].data == {"account": "0", "amount": 0}


async def test_unregistered_types_read_as_dicts(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Ephemeral(es.Event):
        __event_type__ = "tests.contract.ephemeral"
        when: datetime
        ref: uuid.UUID

    ref = uuid.uuid4()
    when = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    async with backend.store() as store:
        await store.append("s", Ephemeral(when=when, ref=ref))
        assert (await stream_of(store, "s"))[0].data == Ephemeral(when=when, ref=ref)
    monkeypatch.delitem(events_module._registry, "tests.contract.ephemeral")
    registry_changed()
    async with backend.store() as store:
        (rec,) = await stream_of(store, "s")
    assert rec.type == "tests.contract.ephemeral"
    assert rec.data == {"when": "2026-05-01T12:00:00Z", "ref": str(ref)}


# --- subscriptions ----------------------------------------------------------------------------


async def test_subscribe_catches_up_then_goes_live(backend: Backend) -> None:
    async with backend.store() as store:
        await fill(store, 30)
        n = store.head + 1
        async with store.subscribe() as sub:
            history = await take(sub, n)
            assert [r.position for r in history] == list(range(n))
            await sub.caught_up()
            assert sub.lag == 0

            async def writer() -> None:
                await fill(store, 30, start=30)

            task = asyncio.create_task(writer())
            live = await take(sub, 40)
            await task
            assert [r.position for r in live] == list(range(n, n + 40))
            assert sub.is_live
        # live events are the events a replay reads back
        assert await everything(store, from_position=n, limit=40) == live
        async with store.subscribe(from_position=5) as sub:
            assert [r.position for r in await take(sub, 3)] == [5, 6, 7]
        async with store.subscribe(from_position=es.END) as sub:
            await sub.caught_up()
            assert sub.lag == 0
            await store.append("x", Note(text="new"))
            (rec,) = await take(sub, 1)
            assert rec.position == store.head and rec.data == Note(text="new")


async def test_stream_subscriptions(backend: Backend) -> None:
    async with backend.store() as store:
        await fill(store, 9)
        async with store.subscribe(stream="s1", from_version=1) as sub:
            recs = await take(sub, 2)
            assert [(r.stream, r.version) for r in recs] == [("s1", 1), ("s1", 2)]
        async with store.subscribe(stream="s2", from_version=es.END) as sub:
            await sub.caught_up()
            await store.append("s1", Note(text="other"))
            await store.append("s2", Note(text="mine"))
            (rec,) = await take(sub, 1)
            assert (rec.stream, rec.version, rec.data) == ("s2", 3, Note(text="mine"))
        async with store.subscribe(stream="fresh") as sub:
            await sub.caught_up()
            await store.append("fresh", [Note(text="a"), Note(text="b")])
            assert [r.version for r in await take(sub, 2)] == [0, 1]


async def test_filtered_subscription_agrees_with_read_all(backend: Backend) -> None:
    filt = es.EventFilter(stream_prefixes=["order-"], event_types=[Deposited])
    async with backend.store() as store:
        for i in range(40):
            ev: es.Event = (
                Deposited(account=str(i), amount=i)
                if i % 2
                else Withdrawn(account=str(i), amount=i)
            )
            await store.append(f"{'order' if i % 3 else 'user'}-{i % 5}", ev)
        read = [r.position for r in await everything(store, filter=filt)]
        async with store.subscribe(filter=filt) as sub:
            assert [r.position for r in await take(sub, len(read))] == read
            await store.append("user-9", Deposited(account="x", amount=1))  # filtered out
            await store.append("order-9", Withdrawn(account="x", amount=1))  # filtered out
            await store.append("order-9", Deposited(account="x", amount=2))
            (live,) = await take(sub, 1)
            assert live.position == 42
            assert sub.lag == 0  # filtered-out events count as examined


async def test_named_consumer_resumes_after_its_last_ack_when_reopened(backend: Backend) -> None:
    async with backend.store() as store:
        await fill(store, 30)
        assert store.checkpoint("projector") is None
        async with store.subscribe(name="projector") as sub:
            for rec in await take(sub, 25):
                if rec.position % 10 == 9:
                    await sub.ack(rec)
        assert store.checkpoint("projector") == 19
        async with store.subscribe(name="projector", from_position=0) as sub:
            assert (await take(sub, 1))[0].position == 20  # the checkpoint wins
            await sub.ack(30)
            await sub.ack(25)  # lower: ignored
        async with store.subscribe(name="by-stream", stream="s2") as sub:
            recs = await take(sub, 3)
            await sub.ack(recs[-1])
        assert [r.position for r in await everything(store)] == list(range(40))  # no checkpoints
    async with backend.store() as store:
        assert store.checkpoint("projector") == 30
        async with store.subscribe(name="projector") as sub:
            assert (await take(sub, 1))[0].position == 31
        async with store.subscribe(name="by-stream", stream="s2") as sub:
            assert (await take(sub, 1))[0].version == 3


async def test_batches_deliver_the_same_events(backend: Backend) -> None:
    async with backend.store() as store:
        await fill(store, 20)
        async with store.subscribe(from_position=2, buffer_events=4) as sub:
            seen: list[int] = []
            writer: asyncio.Task[None] | None = None
            async for batch in sub.batches():
                seen += [r.position for r in batch]
                if writer is None:
                    writer = asyncio.create_task(fill(store, 20, start=20))
                if seen[-1] == 53:
                    break
            assert writer is not None
            await writer
        assert seen == list(range(2, 54))


# --- lifecycle and errors ---------------------------------------------------------------------


async def test_close_commits_queued_appends_ends_subscriptions_and_refuses_appends(
    backend: Backend,
) -> None:
    store = backend.store()
    with pytest.raises(es.StoreClosed, match="is new"):
        await store.append("s", Note(text="too early"))
    await store.open()
    with pytest.raises(es.StoreClosed, match="already opened"):
        await store.open()
    await fill(store, 3)
    subs = [store.subscribe() for _ in range(5)]
    for s in subs:
        await s.__aenter__()

    async def drain(sub: es.Subscription) -> list[int]:
        return [r.position async for r in sub]

    drains = [asyncio.create_task(drain(s)) for s in subs]
    await asyncio.gather(*(s.caught_up() for s in subs))
    appends = [asyncio.create_task(store.append("q", Note(text=str(i)))) for i in range(20)]
    await asyncio.sleep(0)  # every append is queued
    await store.close()
    results = await asyncio.gather(*appends)  # close committed them all
    assert sorted(r.position for r in results) == list(range(4, 24))
    for seen in await asyncio.gather(*drains):  # iteration stopped, nothing raised
        assert seen == list(range(len(seen))) and len(seen) >= 4
    assert all(s.closed for s in subs)
    await store.close()  # idempotent
    with pytest.raises(es.StoreClosed):
        await store.append("s", Note(text="late"))
    with pytest.raises(es.StoreClosed):
        await store.save_checkpoint("c", 1)
    with pytest.raises(es.StoreClosed):
        await stream_of(store, "s0")
    with pytest.raises(es.StoreClosed):
        store.subscribe()
    async with backend.store() as again:
        assert again.head == 23


async def test_a_second_writer_is_locked_out_until_close(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append("s", Note(text="x"))
        with pytest.raises(es.StoreLocked, match="already open"):
            await backend.store().open()
        assert (await store.append("s", Note(text="still mine"))).position == 1
    async with backend.store() as again:
        assert again.head == 1


BAD_APPENDS: list[tuple[Any, Any, dict[str, Any], type[Exception], str]] = [
    (42, Note(text="x"), {}, TypeError, "must be a str"),
    ("", Note(text="x"), {}, ValueError, "must not be empty"),
    ("x" * 1025, Note(text="x"), {}, ValueError, "over the limit of 1024"),
    ("$system", Note(text="x"), {}, ValueError, "reserved"),
    ("s", [], {}, ValueError, "empty"),
    ("s", {"a": 1}, {}, TypeError, "not dict"),
    ("s", Note(text="x"), {"expected_version": -2}, ValueError, "NO_STREAM"),
    ("s", Note(text="x"), {"expected_version": "3"}, TypeError, "expected_version"),
    ("s", es.NewEvent(Note(text="x"), metadata={"a": object()}), {}, ValueError, "metadata"),
    ("s", Note(text="x" * 2000), {}, es.EventTooLarge, "max_event_bytes"),
]


async def test_bad_input_raises_in_the_caller_and_writes_nothing(backend: Backend) -> None:
    async with backend.store(max_event_bytes=1024) as store:
        for stream, events, kwargs, exc, message in BAD_APPENDS:
            with pytest.raises(exc, match=message):
                await store.append(stream, events, **kwargs)
        assert store.statistics().appends == 0  # nothing reached the commit loop
        with pytest.raises(ValueError, match="from_position"):
            await everything(store, from_position=-1)
        with pytest.raises(ValueError, match="limit"):
            await everything(store, limit=-5)
        with pytest.raises(ValueError, match="from_version"):
            await stream_of(store, "s", from_version=-2)
        with pytest.raises(ValueError, match="from_version= needs stream="):
            store.subscribe(from_version=3)
        with pytest.raises(ValueError, match="filter applies"):
            store.subscribe(stream="s", filter=es.EventFilter(event_types=["Note"]))
        with pytest.raises(ValueError, match="checkpoint position"):
            await store.save_checkpoint("c", -1)
        async with store.subscribe() as plain:
            with pytest.raises(ValueError, match="named subscription"):
                await plain.ack(1)
        assert (await store.append("ok", Note(text="still works"))).position == 0


async def test_statistics_and_verify(backend: Backend) -> None:
    async with backend.store() as store:
        await asyncio.gather(*(store.append(f"s{i % 7}", Note(text=str(i))) for i in range(50)))
        st = store.statistics()
        assert (st.head, st.streams, st.appends, st.events) == (49, 7, 50, 50)
        assert 1 <= st.batches <= 50 and st.bytes_written > 0 and st.queued == 0
        report = await store.verify()
        assert report.ok and sum(s.events for s in report.segments) == 50


async def test_no_stream_race_has_exactly_one_winner(backend: Backend) -> None:
    async def contender(i: int) -> es.AppendResult | es.WrongExpectedVersion:
        try:
            return await store.append("race", Note(text=str(i)), expected_version=es.NO_STREAM)
        except es.WrongExpectedVersion as exc:
            return exc

    async with backend.store() as store:
        outcomes = await asyncio.gather(*(contender(i) for i in range(50)))
        wins = [o for o in outcomes if isinstance(o, es.AppendResult)]
        losses = [o for o in outcomes if isinstance(o, es.WrongExpectedVersion)]
        assert len(wins) == 1 and len(losses) == 49
        assert all(e.actual == 0 and e.stream == "race" for e in losses)


async def test_cancelled_producers_are_all_or_nothing_and_retries_are_safe(
    backend: Backend,
) -> None:
    ids = [[uuid.uuid4(), uuid.uuid4()] for _ in range(40)]

    def batch(i: int) -> list[es.NewEvent]:
        return [es.NewEvent(Note(text=f"{i}-{k}"), id=ids[i][k]) for k in range(2)]

    async with backend.store() as store:
        tasks = [
            asyncio.create_task(store.append(f"c-{i}", batch(i), expected_version=es.NO_STREAM))
            for i in range(40)
        ]
        for step, t in enumerate(tasks[::2]):  # cancelled at different points of their way
            for _ in range(step % 4):
                await asyncio.sleep(0)
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for i in range(40):  # every append is there whole or not at all ...
            texts = [r.data for r in await stream_of(store, f"c-{i}")]
            assert texts in ([], [Note(text=f"{i}-0"), Note(text=f"{i}-1")])
        for i in range(40):  # ... and a retry with the same ids is safe either way
            res = await store.append(f"c-{i}", batch(i), expected_version=es.NO_STREAM)
            assert res.version == 1
        recs = await everything(store)
        assert [r.position for r in recs] == list(range(80))
