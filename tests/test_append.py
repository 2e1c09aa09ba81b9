"""Appends: round trips, expected versions, idempotent retries and bad input."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import aioeventstore as es
from aioeventstore import events as events_module
from tests.helpers import Deposited, Note, Withdrawn, registry_changed


async def stream_of(store: es.EventStore, stream: str) -> list[es.RecordedEvent]:
    return [rec async for rec in store.read_stream(stream)]


async def everything(store: es.EventStore) -> list[es.RecordedEvent]:
    return [rec async for rec in store.read_all()]


async def test_round_trip_single_and_multi(store_path: Path) -> None:
    eid = uuid.uuid4()
    before = datetime.now(UTC) - timedelta(seconds=1)
    async with es.EventStore(store_path) as store:
        assert store.head == -1
        r1 = await store.append("acc-1", Deposited(account="1", amount=10))
        assert (r1.position, r1.version) == (0, 0)
        r2 = await store.append(
            "acc-2",
            [
                es.NewEvent(
                    Withdrawn(account="2", amount=3), id=eid, metadata={"corr": "c-1", "n": [1, 2]}
                ),
                Note(text="héllo ✓"),
            ],
        )
        assert (r2.position, r2.version) == (2, 1)
        assert store.head == 2
        recs = await stream_of(store, "acc-2")
    assert [(r.stream, r.version, r.position) for r in recs] == [("acc-2", 0, 1), ("acc-2", 1, 2)]
    assert recs[0].id == eid
    assert recs[0].type == "tests.withdrawn.v1"
    assert recs[0].data == Withdrawn(account="2", amount=3)
    assert recs[0].metadata == {"corr": "c-1", "n": [1, 2]}
    assert recs[1].data == Note(text="héllo ✓") and recs[1].metadata == {}
    assert recs[0].recorded_at.tzinfo is UTC and recs[0].recorded_at >= before
    assert recs[0].recorded_at == recs[1].recorded_at  # one append, one commit time
    # and again after reopening, from disk alone
    async with es.EventStore(store_path) as store:
        again = await everything(store)
    assert [r.position for r in again] == [0, 1, 2]
    assert again[1:] == recs


async def test_unknown_type_reads_as_dict(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Ephemeral(es.Event):
        __event_type__ = "tests.ephemeral"
        when: datetime
        ref: uuid.UUID

    ref = uuid.uuid4()
    when = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    async with es.EventStore(store_path) as store:
        await store.append("s", Ephemeral(when=when, ref=ref))
        (typed,) = await stream_of(store, "s")
        assert typed.data == Ephemeral(when=when, ref=ref)
        monkeypatch.delitem(events_module._registry, "tests.ephemeral")
        registry_changed()
        (raw,) = await stream_of(store, "s")
    assert raw.type == "tests.ephemeral"
    assert raw.data == {"when": "2026-05-01T12:00:00Z", "ref": str(ref)}


async def test_expected_version_cases(store_path: Path) -> None:
    e = Deposited(account="a", amount=1)
    async with es.EventStore(store_path) as store:
        with pytest.raises(es.WrongExpectedVersion) as info:
            await store.append("s", e, expected_version=es.STREAM_EXISTS)
        assert (info.value.stream, info.value.expected, info.value.actual) == (
            "s",
            es.STREAM_EXISTS,
            -1,
        )
        with pytest.raises(es.WrongExpectedVersion) as info:
            await store.append("s", e, expected_version=0)
        assert info.value.actual == -1
        assert (await store.append("s", e, expected_version=es.NO_STREAM)).version == 0
        with pytest.raises(es.WrongExpectedVersion) as info:
            await store.append("s", e, expected_version=es.NO_STREAM)
        assert info.value.actual == 0 and info.value.expected == es.NO_STREAM
        assert (await store.append("s", e, expected_version=es.STREAM_EXISTS)).version == 1
        assert (await store.append("s", [e, e], expected_version=1)).version == 3
        with pytest.raises(es.WrongExpectedVersion) as info:
            await store.append("s", e, expected_version=2)
        assert (info.value.expected, info.value.actual) == (2, 3)
        with pytest.raises(es.WrongExpectedVersion):
            await store.append("s", e, expected_version=7)
        assert (await store.append("s", e, expected_version=es.ANY)).version == 4
        assert (await store.append("s", e)).version == 5
        # nothing was written by the failed appends: versions and positions stay dense
        recs = await stream_of(store, "s")
        assert [r.version for r in recs] == list(range(6))
        assert [r.position for r in recs] == list(range(6))
        assert store.head == 5
    assert "expected es.NO_STREAM" in str(es.WrongExpectedVersion("s", es.NO_STREAM, 0))


async def test_retry_with_explicit_version_is_idempotent(store_path: Path) -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]
    batch = [es.NewEvent(Deposited(account="a", amount=i), id=ids[i]) for i in range(2)]
    async with es.EventStore(store_path) as store:
        first = await store.append("s", batch, expected_version=es.NO_STREAM)
        await store.append("s", Deposited(account="a", amount=9))  # the stream moves on
        again = await store.append("s", batch, expected_version=es.NO_STREAM)
        assert again == first
        more = await store.append("s", es.NewEvent(Note(text="x"), id=ids[0]), expected_version=2)
        assert more.version == 3  # a new version: ids are only compared on a mismatch
        assert (
            await store.append("s", es.NewEvent(Note(text="x"), id=ids[0]), expected_version=2)
            == more
        )
        # same versions, different ids: a real conflict
        other = [es.NewEvent(Deposited(account="a", amount=i)) for i in range(2)]
        with pytest.raises(es.WrongExpectedVersion) as info:
            await store.append("s", other, expected_version=es.NO_STREAM)
        assert info.value.actual == 3
        # only one of the ids matching is a conflict too
        with pytest.raises(es.WrongExpectedVersion):
            await store.append("s", [batch[0], other[1]], expected_version=es.NO_STREAM)
        assert [r.version for r in await stream_of(store, "s")] == [0, 1, 2, 3]
    # exact after reopening too: the check reads the ids from the log
    async with es.EventStore(store_path) as store:
        assert await store.append("s", batch, expected_version=es.NO_STREAM) == first
        assert store.head == 3


async def test_retry_with_any_is_idempotent_within_the_window(store_path: Path) -> None:
    eid = uuid.uuid4()
    ev = es.NewEvent(Deposited(account="a", amount=1), id=eid)
    async with es.EventStore(store_path, idempotency_window=3) as store:
        first = await store.append("s", ev)
        assert await store.append("s", ev) == first
        assert store.head == 0
        # the same id in a different stream is a different append
        assert (await store.append("t", ev)).position == 1
    async with es.EventStore(store_path, idempotency_window=3) as store:
        assert await store.append("s", ev) == first  # the window is rebuilt on open
        for i in range(3):  # appends with generated ids are never remembered ...
            await store.append("u", Note(text=str(i)))
        assert await store.append("s", ev) == first
        for i in range(3):  # ... three with caller-chosen ids push it out of the window
            await store.append("u", es.NewEvent(Note(text=str(i)), id=uuid.uuid4()))
        again = await store.append("s", ev)  # fell out of the window: written again
        assert again.position == 8 and again.version == 1


async def test_retry_with_any_of_part_of_the_ids(store_path: Path) -> None:
    """With ANY, as with an explicit version: the first of the ids again is a retry of
    those events; ids that go on differently, or past what was written, conflict; nothing
    is written either way (an id names one event). Also after a reopen."""
    a, b, c = (es.NewEvent(Note(text=t), id=uuid.uuid4()) for t in "abc")
    async with es.EventStore(store_path) as store:
        await store.append("s", Note(text="before"))
        first = await store.append("s", [a, b])
        assert first == es.AppendResult(position=2, version=2)
    for _ in range(2):
        async with es.EventStore(store_path) as store:
            assert await store.append("s", [a, b]) == first
            assert await store.append("s", a) == es.AppendResult(position=1, version=1)
            for other in ([a, b, c], [a, c], [a, es.NewEvent(Note(text="b"), id=c.id)]):
                with pytest.raises(es.WrongExpectedVersion) as info:
                    await store.append("s", other)
                assert info.value.stream == "s" and info.value.actual == 2
            assert store.head == 2


async def test_a_key_appended_again_is_the_newest_in_the_window(store_path: Path) -> None:
    """An append whose stream and first id are in the window already (a new version, with an
    explicit expected version) moves the entry to the window's newest end: the next ones
    push older entries out first."""
    a = es.NewEvent(Note(text="a"), id=uuid.uuid4())
    async with es.EventStore(store_path, idempotency_window=2) as store:
        await store.append("s", a)
        await store.append("t", es.NewEvent(Note(text="t"), id=uuid.uuid4()))
        again = await store.append("s", a, expected_version=0)  # (ids compared on mismatch)
        assert again.version == 1
        await store.append("u", es.NewEvent(Note(text="u"), id=uuid.uuid4()))
        assert await store.append("s", a) == again  # still in the window: nothing written
        assert store.head == 3


async def test_duplicates_in_one_batch(store_path: Path) -> None:
    import asyncio

    ev = es.NewEvent(Deposited(account="a", amount=1), id=uuid.uuid4())
    async with es.EventStore(store_path) as store:
        results = await asyncio.gather(*(store.append("s", ev) for _ in range(20)))
        assert len(set(results)) == 1
        nostream = await asyncio.gather(
            *(store.append("t", ev, expected_version=es.NO_STREAM) for _ in range(20))
        )
        assert len(set(nostream)) == 1
        assert store.head == 1


BAD_INPUTS: list[tuple[Any, Any, dict[str, Any], type[Exception], str]] = [
    ("s", es.Event(), {}, TypeError, r"es\.Event itself has no event type"),
    (
        "s",
        es.NewEvent(Note(text="x"), metadata={"n": 2**64}),
        {},
        ValueError,
        r"event 0 metadata cannot be stored: the int 18446744073709551616 is out of range",
    ),
    ("s", Deposited(account="a", amount=1), {"expected_version": 2**63}, ValueError, "2\\*\\*63"),
    (42, Deposited(account="a", amount=1), {}, TypeError, "must be a str"),
    ("", Deposited(account="a", amount=1), {}, ValueError, "must not be empty"),
    (
        "x" * 1025,
        Deposited(account="a", amount=1),
        {},
        ValueError,
        "1025 bytes of UTF-8, over the limit of 1024",
    ),
    ("é" * 513, Deposited(account="a", amount=1), {}, ValueError, "1026 bytes"),
    ("$system", Deposited(account="a", amount=1), {}, ValueError, "reserved"),
    ("\udcff", Deposited(account="a", amount=1), {}, ValueError, "UTF-8"),
    ("s", [], {}, ValueError, "empty"),
    ("s", {"a": 1}, {}, TypeError, "not dict"),
    ("s", [Deposited(account="a", amount=1), "nope"], {}, TypeError, "item 1 is a str"),
    ("s", Deposited(account="a", amount=1), {"expected_version": -2}, ValueError, "NO_STREAM"),
    (
        "s",
        Deposited(account="a", amount=1),
        {"expected_version": "3"},
        TypeError,
        "expected_version",
    ),
    (
        "s",
        Deposited(account="a", amount=1),
        {"expected_version": True},
        TypeError,
        "expected_version",
    ),
    (
        "s",
        es.NewEvent(Note(text="x"), metadata={1: "a"}),  # type: ignore[dict-item]
        {},
        ValueError,
        "metadata key 1",
    ),
    (
        "s",
        es.NewEvent(Note(text="x"), metadata={"a": object()}),
        {},
        ValueError,
        "metadata cannot be stored",
    ),
]


class Numbers(es.Event):
    n: int
    anything: Any = None


UNSTORABLE = [
    (Numbers(n=2**64), ValueError, r"event 0 \(Numbers\) field 'n' .*-2\*\*63 to 2\*\*64-1"),
    (Numbers(n=-(2**63) - 1), ValueError, r"field 'n' cannot be stored"),
    (Numbers(n=1, anything=[1, 2**80]), ValueError, r"field 'anything' cannot be stored"),
    (Note(text="\ud800"), ValueError, r"event 0 \(Note\) field 'text' cannot be stored"),
    (Numbers(n=1, anything=object()), ValueError, r"event 0 \(Numbers\) cannot be stored"),
]


@pytest.mark.parametrize(("event", "exc", "message"), UNSTORABLE)
@pytest.mark.parametrize("how", ["one event", "a list", "append_many"])
async def test_data_that_cannot_be_stored_fails_in_the_caller_naming_the_field(
    store_path: Path, event: es.Event, exc: type[Exception], message: str, how: str
) -> None:
    """A value msgpack cannot store (an int past 64 bits, a str that is not Unicode) or that
    pydantic cannot dump is reported with the stream, the event and the field, on every
    append path, and nothing is written."""
    async with es.EventStore(store_path) as store:
        for _ in range(2):  # (the second time, the class may take the fast path)
            with pytest.raises(exc, match=message) as info:
                if how == "one event":
                    await store.append("s-1", event)
                elif how == "a list":
                    await store.append("s-1", [event, Note(text="ok")])
                else:
                    await store.append_many([("s-1", [event])])
            assert "stream 's-1'" in str(info.value)
            await store.append("ok", Numbers(n=1))
        assert store.head == 1
        assert [r.stream async for r in store.read_all()] == ["ok", "ok"]


@pytest.mark.parametrize(("stream", "events", "kwargs", "exc", "message"), BAD_INPUTS)
async def test_bad_input_fails_in_the_caller(
    store_path: Path,
    stream: Any,
    events: Any,
    kwargs: dict[str, Any],
    exc: type[Exception],
    message: str,
) -> None:
    async with es.EventStore(store_path) as store:
        with pytest.raises(exc, match=message):
            await store.append(stream, events, **kwargs)
        assert store.statistics().appends == 0  # nothing reached the commit loop
        assert (await store.append("ok", Note(text="still works"))).position == 0


async def test_size_limits(store_path: Path) -> None:
    async with es.EventStore(store_path, max_event_bytes=1024, max_append_bytes=4096) as store:
        with pytest.raises(
            es.EventTooLarge, match=r"stream 'big'.*over the limit of 1024 bytes.*max_event_bytes"
        ) as info:
            await store.append("big", Note(text="x" * 2000))
        assert info.value.limit == 1024 and info.value.size > 1024
        with pytest.raises(es.EventTooLarge, match="max_append_bytes"):
            await store.append("big", [Note(text="x" * 900) for _ in range(5)])
        assert (await store.append("big", Note(text="x" * 900))).position == 0
        assert store.head == 0
        with pytest.raises(es.EventTooLarge, match="append of 10 events") as info:
            await store.append("big", [Note(text="x" * 900) for _ in range(10)])
        assert info.value.size > 9000  # the append's size (it said where it crossed 4096)


async def test_an_append_over_its_limit_is_not_held_whole_in_memory_to_say_so(
    store_path: Path,
) -> None:
    """To report an append's whole size, the events past the limit are encoded one at a
    time and only summed: its encoded bytes are never all held at once."""
    import tracemalloc

    events = [Note(text="x" * 60_000) for _ in range(200)]  # 12 MB encoded
    async with es.EventStore(
        store_path, max_event_bytes=1 << 20, max_append_bytes=1 << 20
    ) as store:
        tracemalloc.start()
        try:
            with pytest.raises(es.EventTooLarge) as info:
                await store.append("s", events)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert info.value.size > 12_000_000 and peak < 4_000_000


async def test_one_event_at_the_event_limit_is_held_to_the_append_limit_in_every_form(
    store_path: Path,
) -> None:
    """An entry is its 4-byte size field and ``size`` bytes: with ``max_event_bytes`` equal
    to ``max_append_bytes`` an event of exactly that size is over the append's limit. A bare
    event skipped that check (refused in a list or a NewEvent, accepted alone), and its
    frame could be longer than recovery takes one write to be."""
    from aioeventstore._codec import encode_event

    limit = 2048
    text = next(
        "x" * n
        for n in range(1900, 2100)
        if len(encode_event("s", Note(text="x" * n), 1 << 30)[1]) - 4 == limit
    )
    async with es.EventStore(store_path, max_event_bytes=limit, max_append_bytes=limit) as store:
        for events in (Note(text=text), [Note(text=text)], es.NewEvent(Note(text=text))):
            for _ in range(2):  # (the second time a bare event may take the fast path)
                with pytest.raises(es.EventTooLarge, match="max_append_bytes"):
                    await store.append("s", events)
        await store.append("s", Note(text=text[:-10]))
        await store.append("s", Note(text=text[:-10]))  # (the fast path, under the limits)
        assert store.head == 1


@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork.*:DeprecationWarning")
def test_generated_ids_are_random_v4_uuids_and_not_shared_with_a_forked_child() -> None:
    import multiprocessing
    import os

    from aioeventstore._codec import new_event_id

    ids = [new_event_id() for _ in range(3000)]
    assert len(set(ids)) == 3000
    for raw in ids[:50]:
        u = uuid.UUID(bytes=raw)
        assert u.version == 4 and u.variant == uuid.RFC_4122
    if not hasattr(os, "fork"):
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply(_ids_in_child)
    parent = {new_event_id() for _ in range(600)}
    assert not parent & set(child)


def _ids_in_child() -> list[bytes]:
    from aioeventstore._codec import new_event_id

    return [new_event_id() for _ in range(600)]


async def test_a_store_belongs_to_the_loop_that_opened_it(store_path: Path) -> None:
    """From another thread, appends go through run_coroutine_threadsafe; awaited on that
    thread's own loop they fail loudly (asyncio's RuntimeError), and a retry with the same
    id through the store's loop writes the event once."""
    import asyncio
    import threading

    eid = uuid.uuid4()
    async with es.EventStore(store_path) as store:
        loop = asyncio.get_running_loop()
        outcome: dict[str, Any] = {}
        await store.append("before", Note(text="a position to checkpoint"))
        made_here = store.subscribe()  # made on the store's loop, iterated on another
        entered_there = store.subscribe()  # and one entered there

        def other_thread() -> None:
            async def direct() -> None:
                await store.append("t", es.NewEvent(Note(text="x"), id=eid))

            try:
                asyncio.run(direct())
            except RuntimeError as exc:
                outcome["direct"] = exc

            # the other writes too (they used to wait on the caller's loop, which nothing
            # woke: a hang)
            async def consume(it: Any) -> None:
                async for _ in it:
                    pass

            async def live() -> None:
                async with store.subscribe(from_position=es.END) as sub:
                    await anext(sub)

            for name, call in (
                ("checkpoint", lambda: store.save_checkpoint("c", 0)),
                ("metadata", lambda: store.set_stream_metadata("u", max_count=3)),
                ("delete", lambda: store.delete_stream("u")),
                # these hung (a future of the store's loop awaited with asyncio.wait, or a
                # subscription's waiter woken from the store's thread) or raced the loop
                ("append_many", lambda: store.append_many([("m", Note(text="m"))])),
                ("subscribe", live),
                ("read_all", lambda: consume(store.read_all())),
                ("read_stream", lambda: consume(store.read_stream("before"))),
                ("verify", store.verify),
                ("scavenge", store.scavenge),
                ("snapshot", lambda: store.save_snapshot("before", Note(text="s"), 0)),
                ("iterate", lambda: consume(made_here)),
                ("caught_up", made_here.caught_up),
                ("enter", entered_there.__aenter__),
            ):
                try:
                    asyncio.run(asyncio.wait_for(call(), 10))
                except RuntimeError as exc:
                    outcome[name] = exc
            handed = asyncio.run_coroutine_threadsafe(
                store.append("t", es.NewEvent(Note(text="x"), id=eid)), loop
            )
            outcome["handed"] = handed.result(timeout=30)

        thread = threading.Thread(target=other_thread)
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.01)
        thread.join()
        for name in ("direct", "checkpoint", "metadata", "delete", "append_many", "subscribe"):
            assert "different loop" in str(outcome[name]), name
        for name in ("read_all", "read_stream", "verify", "scavenge", "snapshot", "iterate"):
            assert "different loop" in str(outcome[name]), name
        assert "different loop" in str(outcome["caught_up"])
        assert "different loop" in str(outcome["enter"]) and not entered_there.is_live
        assert (await anext(made_here)).stream == "before"  # (nothing was delivered there)
        await made_here.aclose()
        # nothing of the refused writes was queued (they used to be, unwoken, and written
        # at the next batch although their callers had been told they failed)
        await store.append("after", Note(text="a batch"))
        assert store.checkpoint("c") is None and store.stream_metadata("u").revision == -1
        assert [r.stream async for r in store.read_all()] == ["before", "t", "after"]
        assert outcome["handed"].version == 0
        recs = await stream_of(store, "t")
        assert [r.id for r in recs] == [eid]
