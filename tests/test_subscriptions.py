"""Subscriptions: catch-up then live with no gap or duplicate, filters, slow consumers,
durable named consumers, lag, and lifecycle."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aioeventstore as es
from aioeventstore import events as events_module
from tests.helpers import Deposited, Note, Withdrawn, registry_changed, take


async def fill(store: es.EventStore, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await store.append(f"s{i % 3}", Note(text=str(i)))


async def test_replays_history_then_goes_live(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await fill(store, 50)
        async with store.subscribe() as sub:
            first = await take(sub, 50)
            assert [r.position for r in first] == list(range(50))
            assert not sub.is_live

            async def writer() -> None:
                await sub.caught_up()
                await fill(store, 50, start=50)

            task = asyncio.create_task(writer())
            rest = await take(sub, 50)
            await task
            assert [r.position for r in rest] == list(range(50, 100))
            assert sub.is_live and sub.lag == 0
            assert isinstance(rest[0].data, Note) and rest[0].data.text == "50"
        # live events equal what a replay reads back
        replayed = [r async for r in store.read_all(from_position=50)]
        assert [(r.position, r.id, r.stream, r.version, r.data) for r in replayed] == [
            (r.position, r.id, r.stream, r.version, r.data) for r in rest
        ]


async def test_start_points(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await fill(store, 30)
        async with store.subscribe(from_position=25) as sub:
            assert [r.position for r in await take(sub, 5)] == [25, 26, 27, 28, 29]
        async with store.subscribe(from_position=es.END) as sub:
            await sub.caught_up()
            assert sub.lag == 0
            await fill(store, 2, start=30)
            assert [r.position for r in await take(sub, 2)] == [30, 31]
        async with store.subscribe(stream="s1", from_version=3) as sub:
            recs = await take(sub, 5)
            assert [r.version for r in recs] == [3, 4, 5, 6, 7]
            assert all(r.stream == "s1" for r in recs)
        async with store.subscribe(stream="s2", from_version=es.END) as sub:
            await sub.caught_up()
            await store.append("s1", Note(text="other"))
            await store.append("s2", Note(text="mine"))
            (rec,) = await take(sub, 1)
            assert rec.stream == "s2" and isinstance(rec.data, Note) and rec.data.text == "mine"
        async with store.subscribe(stream="new-stream") as sub:
            await sub.caught_up()
            await store.append("new-stream", [Note(text="a"), Note(text="b")])
            assert [r.version for r in await take(sub, 2)] == [0, 1]


async def test_filters_agree_between_read_all_and_subscribe(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        for i in range(60):
            ev: es.Event = (
                Deposited(account=str(i), amount=i)
                if i % 2
                else Withdrawn(account=str(i), amount=i)
            )
            await store.append(f"{'order' if i % 3 else 'user'}-{i % 5}", ev)
        filt = es.EventFilter(stream_prefixes=["order-"], event_types=[Deposited])
        read = [r.position async for r in store.read_all(filter=filt)]
        assert read and all(p % 2 == 1 and p % 3 != 0 for p in read)
        assert len(read) == sum(1 for i in range(60) if i % 2 and i % 3)
        async with store.subscribe(filter=filt) as sub:
            got = await take(sub, len(read))
            assert [r.position for r in got] == read
            await store.append("user-9", Deposited(account="x", amount=1))  # filtered out
            await store.append("order-9", Withdrawn(account="x", amount=1))  # filtered out
            await store.append("order-9", Deposited(account="x", amount=2))
            (live,) = await take(sub, 1)
            assert live.position == 62
            assert sub.lag == 0  # filtered-out events count as examined
        assert [r.position async for r in store.read_all(filter=filt, limit=3)] == read[:3]
        by_type = es.EventFilter(event_types=["tests.withdrawn.v1"])
        types = {r.type async for r in store.read_all(filter=by_type)}
        assert types == {"tests.withdrawn.v1"}


async def test_filtered_catch_up_does_not_decode_what_it_throws_away(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Incompatible(es.Event):
        __event_type__ = "tests.incompatible"
        required_field: str

    async with es.EventStore(store_path) as store:
        await store.append("a", Deposited(account="1", amount=1))
        await store.append("b", Note(text="x"))
        # Stored Deposited/Note data can no longer be decoded as these classes:
        monkeypatch.setitem(events_module._registry, "Deposited", Incompatible)
        registry_changed()
        with pytest.raises(es.EventDecodeError):
            _ = [r async for r in store.read_all()]
        only_notes = es.EventFilter(event_types=["Note"])
        assert [r.position async for r in store.read_all(filter=only_notes)] == [1]
        not_a = es.EventFilter(stream_prefixes=["b"])
        async with store.subscribe(filter=not_a) as sub:
            assert [r.position for r in await take(sub, 1)] == [1]


async def test_slow_consumer_is_never_dropped_and_never_slows_the_writer(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        release = asyncio.Event()
        async with store.subscribe(buffer_events=64) as sub:
            await sub.caught_up()
            positions: list[int] = []

            async def consumer() -> None:
                async for rec in sub:
                    positions.append(rec.position)
                    if len(positions) == 1:
                        await release.wait()  # stuck until every writer has finished
                    elif len(positions) % 100 == 0:
                        await asyncio.sleep(0.001)  # and slow afterwards
                    if rec.position == 3999:
                        return

            reading = asyncio.create_task(consumer())

            async def writer(w: int) -> None:
                for i in range(200):
                    await store.append(f"w{w}", Note(text=f"{w}-{i}"))

            await asyncio.gather(*(writer(w) for w in range(20)))  # completes while stuck
            assert len(positions) <= 1
            assert sub.overflows >= 1 and not sub.is_live
            assert sub.lag > 3000
            release.set()
            await reading
            assert positions == list(range(4000))
            assert sub.lag == 0


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    writers=st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=25), min_size=1, max_size=6),
    subscribers=st.lists(
        st.tuples(st.integers(0, 150), st.integers(0, 3), st.integers(1, 40), st.integers(0, 60)),
        min_size=1,
        max_size=5,
    ),
    history=st.integers(0, 60),
)
def test_property_every_subscriber_sees_exactly_n_n1_n2(
    writers: list[list[int]], subscribers: list[tuple[int, int, int, int]], history: int
) -> None:
    """Random concurrent writers, random subscriber start points, speeds, buffer sizes and
    start moments: every subscriber sees exactly positions N, N+1, ... in order."""

    async def scenario(path: str) -> None:
        async with es.EventStore(path) as store:
            await fill(store, history)
            total = history + sum(sum(w) for w in writers)

            async def writer(sizes: list[int], w: int) -> None:
                for k, n in enumerate(sizes):
                    await store.append(f"w{w}", [Note(text=f"{w}/{k}/{j}") for j in range(n)])
                    await asyncio.sleep(0)

            async def subscriber(start: int, slowness: int, buffer: int, delay: int) -> list[int]:
                for _ in range(delay):
                    await asyncio.sleep(0)
                start = min(start, total)
                seen: list[int] = []
                if start >= total:
                    return seen
                async with store.subscribe(from_position=start, buffer_events=buffer) as sub:
                    async for rec in sub:
                        seen.append(rec.position)
                        for _ in range(slowness):
                            await asyncio.sleep(0)
                        if rec.position == total - 1:
                            break
                assert seen == list(range(start, total)), (start, seen[:10])
                return seen

            results = await asyncio.gather(
                *(writer(w, i) for i, w in enumerate(writers)),
                *(subscriber(*s) for s in subscribers),
            )
            assert store.head == total - 1
            assert all(isinstance(r, list) or r is None for r in results)

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(scenario(d))


async def test_named_consumer_resumes_after_its_last_ack(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await fill(store, 40)
        assert store.checkpoint("projector") is None
        async with store.subscribe(name="projector") as sub:
            for rec in await take(sub, 25):
                if rec.position % 10 == 9:
                    await sub.ack(rec)
        assert store.checkpoint("projector") == 19
        async with store.subscribe(name="projector", from_position=0) as sub:
            assert (await take(sub, 1))[0].position == 20  # the checkpoint wins over from_position
            await sub.ack(30)
            await sub.ack(25)  # lower: ignored
        # checkpoints never show up as events
        assert [r.position async for r in store.read_all()] == list(range(40))
        assert store.head == 39
        async with store.subscribe() as plain:
            with pytest.raises(ValueError, match="named subscription"):
                await plain.ack(1)
    async with es.EventStore(store_path) as store:
        assert store.checkpoint("projector") == 30
        async with store.subscribe(name="projector") as sub:
            assert (await take(sub, 1))[0].position == 31
        async with store.subscribe(name="by-stream", stream="s2") as sub:
            recs = await take(sub, 3)
            await sub.ack(recs[-1])
    async with es.EventStore(store_path) as store:
        assert store.checkpoint("by-stream") == 8  # s2 holds positions 2, 5, 8, ...
        async with store.subscribe(name="by-stream", stream="s2") as sub:
            assert (await take(sub, 1))[0].version == 3


async def test_lifecycle_releases_everything(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await fill(store, 10)
        async with store.subscribe() as sub:
            await take(sub, 10)
            await sub.caught_up()  # the last historical event was delivered
            assert sub.lag == 0
        async with store.subscribe(from_position=es.END) as sub:
            assert sub.is_live and len(store._hub) == 1
        assert len(store._hub) == 0 and sub.closed
        assert [r async for r in sub] == []  # a closed subscription yields nothing

        sub2 = store.subscribe()
        async for _ in sub2:  # without async with, breaking out...
            break
        await sub2.aclose()
        assert len(store._hub) == 0

        async with store.subscribe() as sub3:
            consumer = asyncio.create_task(take(sub3, 1000))
            while not sub3.is_live:
                await asyncio.sleep(0)
            consumer.cancel()  # cancelling the consuming task is harmless
            with pytest.raises(asyncio.CancelledError):
                await consumer
            await fill(store, 1, start=10)
            assert [r.position for r in await take(sub3, 1)] == [10]
        assert len(store._hub) == 0


async def test_closing_the_store_ends_subscriptions(store_path: Path) -> None:
    store = await es.EventStore(store_path).open()
    await fill(store, 5)
    subs = [store.subscribe(from_position=0) for _ in range(300)]
    for s in subs:
        await s.__aenter__()

    async def drain(sub: es.Subscription) -> list[int]:
        return [r.position async for r in sub]

    tasks = [asyncio.create_task(drain(s)) for s in subs]
    await asyncio.gather(*(s.caught_up() for s in subs))
    await fill(store, 5, start=5)
    assert len(store._hub) == 300
    await store.close()
    results = await asyncio.gather(*tasks)  # iteration stops; nothing raises
    for seen in results:
        assert seen == list(range(len(seen))) and len(seen) >= 5
    assert all(s.closed for s in subs)
    with pytest.raises(es.StoreClosed):
        store.subscribe()


async def test_many_subscribers_each_see_everything(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await fill(store, 20)
        subs = [store.subscribe(from_position=i % 20) for i in range(200)]

        async def follow(i: int, sub: es.Subscription) -> None:
            async with sub:
                recs = await take(sub, 100 - i % 20)
                assert [r.position for r in recs] == list(range(i % 20, 100))

        followers = asyncio.gather(*(follow(i, s) for i, s in enumerate(subs)))
        await asyncio.gather(*(fill(store, 20, start=20 + 20 * k) for k in range(4)))
        await followers


async def test_subscribe_argument_errors(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        with pytest.raises(ValueError, match="from_position"):
            store.subscribe(from_position=-1)
        with pytest.raises(ValueError, match="buffer_events"):
            store.subscribe(buffer_events=0)
        with pytest.raises(ValueError, match="filter applies"):
            store.subscribe(stream="s", filter=es.EventFilter(event_types=["Note"]))
        with pytest.raises(TypeError, match="EventFilter"):
            store.subscribe(filter="Note")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="consumer name"):
            store.subscribe(name="")
        with pytest.raises(ValueError, match="from_version= needs stream="):
            store.subscribe(from_version=3)
        with pytest.raises(ValueError, match="starts at from_version="):
            store.subscribe(stream="s", from_position=es.END)


async def test_batches_deliver_the_same_events_in_lists(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await fill(store, 30)
        async with store.subscribe(from_position=5, buffer_events=8) as sub:
            seen: list[int] = []
            writer = None
            async for batch in sub.batches():
                assert batch and all(isinstance(r, es.RecordedEvent) for r in batch)
                seen += [r.position for r in batch]
                if writer is None:
                    writer = asyncio.create_task(fill(store, 40, start=30))
                if seen[-1] == 69:
                    break
            assert writer is not None
            await writer
            assert seen == list(range(5, 70))
            assert sub.lag == 0
            # one-by-one iteration continues from the same cursor
            await store.append("s9", Note(text="next"))
            assert [r.position for r in await take(sub, 1)] == [70]


async def test_one_by_one_and_batches_in_turn_deliver_each_event_once(store_path: Path) -> None:
    """Leaving ``async for`` with a break, taking a list with ``batches()``, then going on
    one by one: each event exactly once (the iterator resumed used to hand out again what
    the list had taken), from history and live; lists are tuples, which no consumer can
    change under the cursor's bookkeeping."""

    async def some(sub: es.Subscription, n: int) -> list[int]:  # (async for, then a break)
        return [r.position for r in await take(sub, n)]

    async def a_list(sub: es.Subscription) -> list[int]:
        async for batch in sub.batches():
            assert isinstance(batch, tuple)
            return [r.position for r in batch]
        raise AssertionError("the subscription ended")

    async with es.EventStore(store_path) as store:
        await fill(store, 10)
        async with store.subscribe() as sub:
            seen = await some(sub, 3) + await a_list(sub)  # history
            assert seen == list(range(10)) and sub.lag == 0
            await store.append("s", [Note(text=str(i)) for i in range(6)])  # one live list
            seen += await some(sub, 2) + await a_list(sub)
            await store.append("s", [Note(text=str(i)) for i in range(3)])
            seen += await some(sub, 3)
            assert seen == list(range(19)) and sub.lag == 0


async def test_a_subscription_left_with_a_break_is_freed_without_the_collector(
    store_path: Path,
) -> None:
    """Leaving ``async for`` with a break, then the ``async with``: the subscription and the
    chunk of records its suspended iterator held go by reference counting (they used to keep
    each other alive until a full collection: a chunk each, 1.7 MB here)."""
    import gc
    import weakref

    async with es.EventStore(store_path) as store:
        await fill(store, 3000)
        gc.disable()
        try:
            refs = []
            for _ in range(3):
                async with store.subscribe(from_position=0) as sub:
                    async for _rec in sub:
                        break
                refs.append(weakref.ref(sub))
                del sub
            for _ in range(10):  # (the loop closes the abandoned iterators)
                await asyncio.sleep(0)
            assert [ref() for ref in refs] == [None, None, None]
        finally:
            gc.enable()


async def test_recorded_event_fields(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        eid = uuid.uuid4()
        await store.append("s", es.NewEvent(Note(text="x"), id=eid, metadata={"k": "v"}))
        async with store.subscribe(from_position=es.END) as sub:
            await store.append("s", Note(text="y"))
            (live,) = await take(sub, 1)
        replayed = [r async for r in store.read_all()]
    rec = replayed[0]
    assert rec.id == eid and rec.metadata == {"k": "v"} and rec.stream == "s"
    assert live.metadata == {} and live == replayed[1]
    with pytest.raises(TypeError):
        live.metadata["x"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        rec.position = 3  # type: ignore[misc]
    assert "RecordedEvent(stream='s', version=0, position=0" in repr(rec)
    assert str(eid) in repr(rec)
    import pickle

    assert pickle.loads(pickle.dumps(rec)) == rec


# --- regressions found in review -------------------------------------------------------------


async def test_checkpoint_only_batches_never_start_a_segment(store_path: Path) -> None:
    # A segment is named by its first position: a tail holding only checkpoints must grow
    # instead of rotating to a second file with the same name.
    async with es.EventStore(store_path, segment_bytes=4096) as store:
        await store.append("s", Note(text="x"))
        for i in range(200):  # (a checkpoint is at most the head: 200 consumers at 0)
            await store.save_checkpoint(f"c{i}", 0)
        for i in range(50):
            await store.append("s", Note(text=f"y{i}" * 20))
        assert store.checkpoint("c199") == 0
    async with es.EventStore(store_path, segment_bytes=4096) as store:
        assert store.checkpoint("c199") == 0 and store.head == 50
        await store.append("s", Note(text="after"))
        assert [r.position async for r in store.read_all()] == list(range(52))


def test_event_filter_takes_one_class_or_name_and_names_what_is_wrong() -> None:
    assert es.EventFilter(event_types=Deposited).event_types == ("Deposited",)
    assert es.EventFilter(event_types="Note").event_types == ("Note",)
    with pytest.raises(TypeError, match="stream_prefixes must be a str or an iterable of str"):
        es.EventFilter(stream_prefixes=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="event_types must be a type name, an Event class or"):
        es.EventFilter(event_types=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be str or Event classes, not <class 'int'>"):
        es.EventFilter(event_types=int)  # type: ignore[arg-type]


async def test_ack_takes_a_record_or_an_int(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await store.append("s", Note(text="x"))
        async with store.subscribe(name="p") as sub:
            with pytest.raises(TypeError, match="ack takes a RecordedEvent or a position"):
                await sub.ack("0")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="ack takes"):
                await sub.ack(True)
            await sub.ack(await anext(sub))
        assert store.checkpoint("p") == 0


async def test_bad_checkpoint_positions_are_rejected_and_the_store_goes_on(
    store_path: Path,
) -> None:
    async with es.EventStore(store_path) as store:
        for bad in (2**64, -1, 0):  # (0: past the head of an empty store)
            with pytest.raises(ValueError, match="checkpoint position") as info:
                await store.save_checkpoint("c", bad)
            assert "the store has no events yet" in str(info.value)
        with pytest.raises(TypeError, match="checkpoint position"):
            await store.save_checkpoint("c", "3")  # type: ignore[arg-type]
        assert (await store.append("s", Note(text="ok"))).position == 0
        with pytest.raises(ValueError, match=r"in \[0, 0\] \(the head\), not 1"):
            await store.save_checkpoint("c", 1)  # would skip the next event after a restart
        await store.save_checkpoint("c", 0)
        assert store.checkpoint("c") == 0


async def test_highest_checkpoint_wins_also_after_reopen(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await fill(store, 20)
        async with store.subscribe(name="p") as a, store.subscribe(name="p") as b:
            await a.ack(9)
            await b.ack(3)  # lower: not written
        assert store.checkpoint("p") == 9
    async with es.EventStore(store_path) as store:
        assert store.checkpoint("p") == 9


async def test_callers_list_changes_after_append_do_not_leak(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        async with store.subscribe(from_position=es.END) as sub:
            events: list[es.Event] = [Note(text="a"), Note(text="b")]
            task = asyncio.create_task(store.append("s", events))
            await asyncio.sleep(0)
            events[0] = Note(text="REPLACED")
            events.append(Note(text="extra"))
            assert (await task).version == 1
            live = [r.data for r in await take(sub, 2)]
        stored = [r.data async for r in store.read_all()]
        assert live == stored == [Note(text="a"), Note(text="b")]


class Basket(es.Event):
    """Stored otherwise than held: a list the producer may change after its append, and a
    field never stored."""

    items: list[int]
    secret: str = pydantic.Field(default="", exclude=True)


class Unfrozen(es.Event):
    """Plain fields, but not frozen: the producer may change it after its append."""

    model_config = pydantic.ConfigDict(frozen=False)
    n: int


async def test_live_events_are_the_stored_ones_not_the_producers_objects(
    store_path: Path,
) -> None:
    """A live subscriber gets what a replay of the same events gives, not the producer's
    instance, when the class's stored form can differ from it or the producer can change
    it; a frozen class of plain fields (str, int, bool, None) is handed over as it is
    (nothing to decode)."""
    async with es.EventStore(store_path) as store:
        async with store.subscribe(from_position=es.END) as sub:
            basket = Basket(items=[1, 2, 3], secret="hunter2")
            note = Note(text="plain")
            unfrozen = Unfrozen(n=1)
            await store.append("b", basket)
            basket.items.clear()  # the producer reuses the list after its append
            await store.append("b", [Basket(items=[4]), note])
            await store.append("b", unfrozen)
            unfrozen.n = 2
            live = await take(sub, 4)
        stored = [r.data async for r in store.read_all()]
        assert [r.data for r in live] == stored
        assert stored[0] == Basket(items=[1, 2, 3], secret="") and stored[3] == Unfrozen(n=1)
        assert live[2].data is note


VALIDATED: list[int] = []


class Counted(es.Event):
    """Not plain (a list field); counts its validations."""

    __event_type__ = "tests.subscriptions.Counted"

    items: list[int]

    @pydantic.model_validator(mode="after")
    def count(self) -> Counted:
        VALIDATED.append(1)
        return self


async def test_live_events_no_subscriber_keeps_are_not_made_again(store_path: Path) -> None:
    """Live events of a class that is not plain are made again from their stored bytes only
    when some subscription may keep them: a subscription filtering them out costs none."""
    async with es.EventStore(store_path) as store:
        notes = store.subscribe(from_position=es.END, filter=es.EventFilter(event_types=[Note]))
        other = store.subscribe(from_position=es.END, filter=es.EventFilter(stream_prefixes="n-"))
        async with notes, other:
            events = [Counted(items=[i]) for i in range(5)]
            VALIDATED.clear()
            for event in events:
                await store.append("c-1", event)
            await store.append("n-1", Note(text="kept"))
            assert [r.data for r in await take(notes, 1)] == [Note(text="kept")]
            assert [r.data for r in await take(other, 1)] == [Note(text="kept")]
            assert VALIDATED == []  # nobody keeps Counted events: none was made again
        async with store.subscribe(from_position=es.END) as everything:
            await store.append("c-1", events[0])
            assert [r.data for r in await take(everything, 1)] == [events[0]]
            assert VALIDATED == [1]


async def test_stream_exists_retry_with_same_ids_is_idempotent(store_path: Path) -> None:
    ev = es.NewEvent(Note(text="x"), id=uuid.uuid4())
    async with es.EventStore(store_path) as store:
        await store.append("s", Note(text="first"))
        r1 = await store.append("s", ev, expected_version=es.STREAM_EXISTS)
        r2 = await store.append("s", ev, expected_version=es.STREAM_EXISTS)
        assert r1 == r2 and store.head == 1


async def test_caught_up_raises_when_the_subscription_ends_first(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await fill(store, 30)
        sub = store.subscribe()
        async with sub:
            await take(sub, 3)
            waiter = asyncio.create_task(sub.caught_up())
            await asyncio.sleep(0)
        with pytest.raises(es.StoreClosed, match="before it caught up"):
            await waiter


async def test_read_stream_backwards_from_past_the_end(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await fill(store, 9)
        got = [r.version async for r in store.read_stream("s0", from_version=99, backwards=True)]
        assert got == [2, 1, 0]


async def test_shared_live_batches_cannot_be_changed_by_one_subscriber(store_path: Path) -> None:
    async with (
        es.EventStore(store_path) as store,
        store.subscribe(from_position=es.END) as a,
        store.subscribe(from_position=es.END) as b,
    ):
        await fill(store, 5)
        ga, gb = a.batches(), b.batches()
        batch_a = await anext(ga)
        assert isinstance(batch_a, tuple)  # live batches are shared, so immutable
        with pytest.raises(TypeError):
            batch_a[0] = batch_a[0]  # type: ignore[index]
        seen: list[int] = []
        async for batch in gb:
            seen += [r.position for r in batch]
            if seen[-1] == 4:
                break
        assert seen == [0, 1, 2, 3, 4]
        await ga.aclose()
        await gb.aclose()
