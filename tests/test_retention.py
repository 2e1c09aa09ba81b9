"""Retention and deletion: stream metadata, soft and hard deletes, scavenging, store-wide
retention; what reads, subscriptions, reopening and verification see afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import aioeventstore as es
from aioeventstore._format import (
    SEGMENT_FLAG_SCAVENGED,
    SEGMENT_HEADER,
    crc32c,
    pack_segment_header,
)
from aioeventstore._verify import verify_store
from tests.helpers import Note

SMALL = es.StoreOptions(segment_bytes=4096)


async def fill(store: es.EventStore, streams: int, per_stream: int, width: int = 20) -> None:
    """``per_stream`` rounds of one append to each of ``streams`` streams ``s-<i>``."""
    for v in range(per_stream):
        for s in range(streams):
            await store.append(f"s-{s}", Note(text=f"{s}:{v}".ljust(width, ".")))


async def everything(store: es.EventStore) -> list[tuple[str, int, int, str]]:
    return [(r.stream, r.version, r.position, r.data.text) async for r in store.read_all()]  # type: ignore[union-attr]


async def versions(store: es.EventStore, stream: str, **kw: object) -> list[int]:
    return [r.version async for r in store.read_stream(stream, **kw)]  # type: ignore[arg-type]


# --- stream metadata ----------------------------------------------------------------------------
async def test_metadata_hides_events_at_once_and_survives_reopen(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await fill(store, 3, 10)
        assert store.stream_metadata("s-0") == es.StreamMetadata()
        meta = await store.set_stream_metadata("s-0", max_count=3)
        assert meta.max_count == 3 and meta.revision == 0
        assert await versions(store, "s-0") == [7, 8, 9]
        assert await versions(store, "s-0", backwards=True) == [9, 8, 7]
        await store.set_stream_metadata("s-1", truncate_before=6)
        assert await versions(store, "s-1") == [6, 7, 8, 9]
        assert await versions(store, "s-1", from_version=8) == [8, 9]
        assert await versions(store, "s-1", backwards=True, from_version=5) == []
        seen = await everything(store)
        assert [v for s, v, _, _ in seen if s == "s-0"] == [7, 8, 9]
        assert [v for s, v, _, _ in seen if s == "s-1"] == [6, 7, 8, 9]
        assert len([1 for s, *_ in seen if s == "s-2"]) == 10
        await store.append("s-0", Note(text="new"))  # max_count moves with the stream
        assert await versions(store, "s-0") == [8, 9, 10]
        # only the given fields change; None clears one
        meta = await store.set_stream_metadata("s-0", truncate_before=9)
        assert (meta.max_count, meta.truncate_before, meta.revision) == (3, 9, 1)
        meta = await store.set_stream_metadata("s-0", max_count=None)
        assert (meta.max_count, meta.truncate_before) == (None, 9)
        assert await versions(store, "s-0") == [9, 10]
        head = store.head
    async with es.EventStore(store_path) as store:
        assert store.head == head  # metadata frames hold no events
        assert store.stream_metadata("s-0").truncate_before == 9
        assert store.stream_metadata("s-0").revision == 2
        assert await versions(store, "s-0") == [9, 10]
        assert await versions(store, "s-1") == [6, 7, 8, 9]


async def test_metadata_argument_checks(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await fill(store, 1, 3)
        with pytest.raises(ValueError, match="max_count"):
            await store.set_stream_metadata("s-0", max_count=0)
        with pytest.raises(ValueError, match="max_age"):
            await store.set_stream_metadata("s-0", max_age=timedelta(0))
        with pytest.raises(TypeError, match="max_age"):
            await store.set_stream_metadata("s-0", max_age="1d")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="truncate_before=5 for stream 's-0' is past"):
            await store.set_stream_metadata("s-0", truncate_before=5)
        assert store.stream_metadata("s-0") == es.StreamMetadata()
        meta = await store.set_stream_metadata("s-0", max_age=60)
        assert meta.max_age == timedelta(seconds=60)


@pytest.mark.parametrize(
    "changes",
    [
        {"max_count": 2**64},
        {"max_count": 2**63},
        {"max_age": timedelta.max},
        {"max_age": timedelta(days=300_000_000)},
        {"max_age": 9_000_000_000_001},
        {"max_age": float("inf")},
        {"max_age": float("nan")},
        {"max_age": 1e30},
    ],
)
async def test_a_limit_too_large_to_store_fails_in_the_caller_and_the_store_goes_on(
    store_path: Path, changes: dict[str, Any]
) -> None:
    """Out-of-range limits used to reach the commit loop, where packing them failed as a
    write: the store stopped for every writer."""
    name = next(iter(changes))
    async with es.EventStore(store_path) as store:
        await fill(store, 1, 2)
        others = [asyncio.ensure_future(store.append("other", Note(text="x"))) for _ in range(5)]
        with pytest.raises(ValueError, match=f"{name} must be None or"):
            await store.set_stream_metadata("s-0", **changes)
        await asyncio.gather(*others)  # (the appends batched with it are written)
        assert not store.statistics().failed
        assert store.stream_metadata("s-0") == es.StreamMetadata()
        assert (await store.append("s-0", Note(text="y"))).version == 2


async def test_a_max_age_reaching_back_before_the_year_1_hides_nothing(store_path: Path) -> None:
    """Up to the limit (about 290,000 years) a max_age is kept; one longer than the calendar
    (3,000 years) made every read raise a bare OverflowError, also after a reopen."""
    async with es.EventStore(store_path) as store:
        await fill(store, 1, 2)
        for age in (timedelta(days=365 * 3000), 9_000_000_000_000):
            await store.set_stream_metadata("s-0", max_age=age)
            assert [r.version async for r in store.read_stream("s-0")] == [0, 1]
            assert [r.version async for r in store.read_all()] == [0, 1]
            async with store.subscribe() as sub:
                assert [(await anext(sub)).version, (await anext(sub)).version] == [0, 1]
    async with es.EventStore(store_path) as store:
        assert store.stream_metadata("s-0").max_age == timedelta(seconds=9_000_000_000_000)
        assert [r.version async for r in store.read_stream("s-0")] == [0, 1]
        await store.enforce_retention()
        assert [r.version async for r in store.read_all()] == [0, 1]


async def test_max_age_hides_old_events(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await fill(store, 1, 3)
        await asyncio.sleep(0.6)  # ages are wall-clock: margins wide enough for a busy box
        await store.append("s-0", Note(text="fresh"))
        await store.set_stream_metadata("s-0", max_age=timedelta(milliseconds=500))
        assert await versions(store, "s-0") == [3]
        assert [r.version async for r in store.read_all()] == [3]
        async with store.subscribe() as sub:
            assert (await anext(aiter(sub))).version == 3


# --- deletion ---------------------------------------------------------------------------------
async def test_soft_delete_then_recreate_continues_the_versions(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await fill(store, 2, 5)
        with pytest.raises(es.WrongExpectedVersion):
            await store.delete_stream("s-0", expected_version=3)
        meta = await store.delete_stream("s-0", expected_version=4)
        assert meta.deleted and not meta.hard_deleted and meta.truncate_before == 5
        assert await versions(store, "s-0") == []
        assert {r.stream async for r in store.read_all()} == {"s-1"}
        r = await store.append("s-0", Note(text="again"), expected_version=4)
        assert r.version == 5
        assert not store.stream_metadata("s-0").deleted
        assert await versions(store, "s-0") == [5]
    async with es.EventStore(store_path) as store:
        assert await versions(store, "s-0") == [5]
        assert not store.stream_metadata("s-0").deleted


async def test_hard_delete_is_permanent(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await fill(store, 2, 5)
        meta = await store.delete_stream("s-0", hard=True)
        assert meta.deleted and meta.hard_deleted
        assert await versions(store, "s-0") == []
        with pytest.raises(es.StreamDeleted) as info:
            await store.append("s-0", Note(text="x"))
        assert info.value.stream == "s-0" and isinstance(info.value, es.EventStoreError)
        with pytest.raises(es.StreamDeleted):
            await store.set_stream_metadata("s-0", max_count=1)
        with pytest.raises(es.StreamDeleted):
            await store.delete_stream("s-0")
        await store.scavenge()
    async with es.EventStore(store_path, SMALL) as store:
        with pytest.raises(es.StreamDeleted):
            await store.append("s-0", Note(text="x"))
        assert store.stream_metadata("s-0").hard_deleted


async def test_delete_hides_events_already_read_by_a_subscription(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await fill(store, 2, 3)  # s-0 v0, s-1 v0, s-0 v1, s-1 v1, s-0 v2, s-1 v2
        async with store.subscribe() as sub, store.subscribe(stream="s-0") as one:
            it = aiter(sub)
            first = await anext(it)  # the whole history is now read into the subscription
            assert (first.stream, first.version) == ("s-0", 0)
            await store.delete_stream("s-0")
            rest = [await anext(it) for _ in range(2)]
            assert [(r.stream, r.version) for r in rest] == [("s-1", 0), ("s-1", 1)]
            await store.append("s-0", Note(text="after"))
            tail = [await anext(it) for _ in range(2)]
            assert [(r.stream, r.version) for r in tail] == [("s-1", 2), ("s-0", 3)]
            assert (await anext(aiter(one))).version == 3


# --- scavenging -------------------------------------------------------------------------------
async def test_scavenge_frees_space_and_changes_no_visible_event(store_path: Path) -> None:
    async with es.EventStore(store_path, SMALL) as store:
        await fill(store, 10, 30)
        for s in range(0, 10, 2):
            await store.delete_stream(f"s-{s}")
        await store.delete_stream("s-1", hard=True)
        await store.set_stream_metadata("s-3", max_count=2)
        await store.set_stream_metadata("s-5", truncate_before=29)  # all but the last one
        before = await everything(store)
        report = await store.scavenge()
        assert isinstance(report, es.ScavengeReport)
        assert report.segments_rewritten + report.segments_dropped > 5
        assert report.bytes_after < report.bytes_before / 2 and report.bytes_freed > 0
        assert report.events_removed > 150 and report.duration >= 0
        assert await everything(store) == before
        assert (await store.verify()).ok
        assert await versions(store, "s-3") == [28, 29]
        assert await versions(store, "s-5") == [29]
        # positions stay stable; appends go on; a deleted stream continues its versions
        r = await store.append("s-0", Note(text="back"))
        assert r.version == 30 and r.position == store.head
        again = await store.scavenge()  # nothing left to remove
        assert again.events_removed == 0
        before = await everything(store)
        head = store.head
    async with es.EventStore(store_path, SMALL) as store:
        assert store.head == head
        assert await everything(store) == before
        assert await versions(store, "s-0") == [30]
        assert await versions(store, "s-2") == []
        r = await store.append("s-2", Note(text="x"), expected_version=29)
        assert r.version == 30
        assert (await store.verify()).ok


async def test_partly_hidden_frames_stay_hidden_after_scavenge(store_path: Path) -> None:
    async with es.EventStore(store_path, SMALL) as store:
        await store.append("a", [Note(text=str(i)) for i in range(10)])  # one frame
        await fill(store, 3, 20, width=100)  # rotate past it
        await store.set_stream_metadata("a", truncate_before=4)
        report = await store.scavenge()
        assert report.events_removed == 0  # the frame is only partly hidden: kept
        assert await versions(store, "a") == [4, 5, 6, 7, 8, 9]
    async with es.EventStore(store_path, SMALL) as store:
        assert await versions(store, "a") == [4, 5, 6, 7, 8, 9]


async def test_scavenge_keeps_a_streams_last_event(store_path: Path) -> None:
    """As in KurrentDB: the last event keeps the stream's version, unless truncate_before
    (a delete) covers it and keeps the version in the metadata instead."""
    async with es.EventStore(store_path, SMALL) as store:
        await fill(store, 2, 40, width=60)
        await store.set_stream_metadata("s-0", max_age=timedelta(microseconds=1))
        assert await versions(store, "s-0") == []
        await store.scavenge()
        assert store._index.first_version("s-0") > 0  # older frames went
    async with es.EventStore(store_path, SMALL) as store:
        assert store._index.last_version("s-0") == 39
        with pytest.raises(es.WrongExpectedVersion):
            await store.append("s-0", Note(text="x"), expected_version=es.NO_STREAM)


async def test_reads_and_subscriptions_during_a_scavenge(store_path: Path) -> None:
    """Readers planned against a segment keep reading its old file while it is replaced;
    appends go on; nothing visible changes."""
    async with es.EventStore(store_path, segment_bytes=4096, read_chunk_bytes=4096) as store:
        await fill(store, 6, 40)
        for s in (0, 2, 4):
            await store.delete_stream(f"s-{s}")
        expected = await everything(store)
        reads: list[list[tuple[str, int, int, str]]] = []

        async def reader() -> None:
            out = []
            async for r in store.read_all():
                out.append((r.stream, r.version, r.position, r.data.text))  # type: ignore[union-attr]
                await asyncio.sleep(0)
            reads.append(out)

        async def subscriber() -> None:
            out = []
            async with store.subscribe() as sub:
                async for r in sub:
                    out.append((r.stream, r.version, r.position, r.data.text))  # type: ignore[union-attr]
                    if r.position >= expected[-1][2]:
                        break
            reads.append(out)

        async def appender() -> None:
            for i in range(20):
                await store.append("s-1", Note(text=f"more {i}"))

        tasks = [asyncio.create_task(c()) for c in (reader, reader, subscriber)]
        await asyncio.sleep(0)
        report, _ = await asyncio.gather(store.scavenge(), appender())
        await asyncio.gather(*tasks)
        assert report.events_removed > 0
        for got in reads:
            assert got[: len(expected)] == expected
        assert (await store.verify()).ok


async def test_scavenge_is_owned_by_the_store(store_path: Path) -> None:
    async with es.EventStore(store_path, SMALL) as store:
        await fill(store, 4, 30)
        await store.delete_stream("s-0")
        task = store.start_scavenge()
        same = store.start_scavenge()  # one at a time: the same run
        caller = asyncio.create_task(store.scavenge())
        await asyncio.sleep(0)
        caller.cancel()  # a cancelled caller does not stop the store's scavenge
        with pytest.raises(TimeoutError):  # nor does one that gave up waiting
            await asyncio.wait_for(store.start_scavenge(), 0.0001)
        report = await task
        assert report.events_removed > 0 and await same is report
        left = store.start_scavenge()  # left running: close cancels and awaits it
    with contextlib.suppress(es.StoreClosed):  # (or done first), never a CancelledError
        await left
    async with es.EventStore(store_path, SMALL) as store:
        assert await versions(store, "s-0") == []
        assert len(await versions(store, "s-1")) == 30


async def test_a_caller_of_start_scavenge_who_gives_up_does_not_stop_the_run(
    store_path: Path,
) -> None:
    """Awaiting start_scavenge() under a timeout cancelled the store's job itself: a
    concurrent scavenge() raised StoreClosed on an open store, and the rewrite it had made
    was left out of the index (the open store and a reopened one read different events)."""
    async with es.EventStore(store_path, segment_bytes=4096, durability="os") as store:
        for i in range(200):
            await store.append(f"s-{i % 5}", Note(text=f"{i}" + "x" * 100))
        for i in range(5):
            await store.delete_stream(f"s-{i}")
        patient = asyncio.ensure_future(store.scavenge())
        waiting = store.start_scavenge()
        await asyncio.sleep(0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(store.start_scavenge(), 0.0005)
        report = await patient
        assert report.segments_dropped > 0 and await waiting is report
        await store.set_stream_metadata("s-0", truncate_before=None)
        before = [r.version async for r in store.read_stream("s-0")]
        await store.scavenge()  # (raised MaintenanceFailed: a segment file gone from disk)
        assert [r.version async for r in store.read_stream("s-0")] == before
    async with es.EventStore(store_path, segment_bytes=4096) as store:
        assert [r.version async for r in store.read_stream("s-0")] == before


# --- store-wide retention ---------------------------------------------------------------------
async def test_retention_by_bytes_drops_oldest_segments(store_path: Path) -> None:
    async with es.EventStore(store_path, segment_bytes=4096) as store:
        await fill(store, 4, 40)
        await store.set_stream_metadata("s-1", max_count=100)  # in an old segment soon
        await store.save_checkpoint("worker", 3)
        await fill(store, 4, 40)
        before = await everything(store)
        head = store.head
    opts = es.StoreOptions(segment_bytes=4096, retention_bytes=12_000)
    async with es.EventStore(store_path, opts) as store:
        report = await store.enforce_retention()
        assert report.segments_dropped > 3
        assert report.bytes_after <= 12_000 + 4096
        seen = await everything(store)
        assert seen == before[len(before) - len(seen) :]  # a suffix: the oldest are gone
        first = seen[0][2]
        assert first > 0 and store.head == head
        async with store.subscribe(from_position=0) as sub:
            assert (await anext(aiter(sub))).position == first
        async with store.subscribe(name="worker") as sub:  # behind: continues at the start
            assert (await anext(aiter(sub))).position == first
        assert store.stream_metadata("s-1").max_count == 100  # carried forward
        assert store.checkpoint("worker") == 3
        await store.append("s-2", Note(text="after"))
    async with es.EventStore(store_path, opts) as store:
        assert store.stream_metadata("s-1").max_count == 100
        assert store.checkpoint("worker") == 3
        assert (await everything(store))[0][2] == first
        assert (await store.verify()).ok


async def test_a_stream_read_ends_at_its_last_version_at_the_start_despite_retention(
    store_path: Path,
) -> None:
    """Retention removes the versions a forward ``read_stream`` was to read next (while its
    caller works on its first chunk): it goes on at the oldest left and still ends by the
    stream's last version when it started, never past it (its cap counted from a removed
    version). Here every version up to that one went: the read ends with its first chunk."""
    async with es.EventStore(
        store_path, segment_bytes=8192, read_chunk_bytes=4096, retention_bytes=40_000
    ) as store:
        for i in range(300):
            await store.append(f"s{i % 5}", Note(text=f"{i}" + "y" * 100))
        last = (await anext(store.read_stream("s3", backwards=True, limit=1))).version
        read = store.read_stream("s3")
        got = [(await anext(read)).version]
        for i in range(300, 600):
            await store.append(f"s{i % 5}", Note(text=f"{i}" + "y" * 100))
        got += [r.version async for r in read]
        assert got == list(range(got[0], got[-1] + 1)) and got[-1] <= last
        assert store.statistics().stored_events < 300  # (retention removed what was read)


async def test_a_stream_appended_to_after_its_delete_stays_undeleted_when_emptied(
    store_path: Path,
) -> None:
    """Soft delete, then an append (``deleted`` turns False), then retention removes every
    event of the stream: its floor keeps its version and it is still not deleted (the floor
    used to carry the old flag, which read as deleted again), also after a reopen."""
    async with es.EventStore(store_path, segment_bytes=4096) as store:
        await store.append("s", Note(text="a"))
        await store.delete_stream("s")
        await store.append("s", Note(text="b"))  # version 1, after the delete
        assert not store.stream_metadata("s").deleted
        for i in range(20):  # push the stream's segment out
            await store.append(f"o-{i}", Note(text="x" * 600))
    async with es.EventStore(store_path, segment_bytes=4096, retention_bytes=6000) as store:
        await store.enforce_retention()
        assert [r.version async for r in store.read_stream("s")] == []
        meta = store.stream_metadata("s")
        assert (meta.truncate_before, meta.deleted) == (2, False)
        assert (await store.append("s", Note(text="c"))).version == 2
    async with es.EventStore(store_path) as store:
        assert not store.stream_metadata("s").deleted


async def test_retries_rechecked_while_a_scavenge_rewrites_segments(tmp_path: Path) -> None:
    """Appends whose expected version the stream has moved past make the store read the
    stored ids (a retry, or a conflict?) while a scavenge rewrites those segments: each is
    answered with the original result or WrongExpectedVersion (the ids were read at the old
    offsets from the new files, CorruptLog; or the versions left the index during the read,
    a bare AssertionError). Eight rounds (each failed often before)."""
    for round_ in range(8):
        ids = [uuid.UUID(int=i + 1) for i in range(60)]
        hidden = [uuid.UUID(int=1000 + i) for i in range(60)]
        async with es.EventStore(
            tmp_path / str(round_), segment_bytes=4096, durability="os"
        ) as store:
            first: list[es.AppendResult] = []
            for i in range(60):
                expected = i - 1 if i else es.NO_STREAM
                event = es.NewEvent(Note(text=f"{i}"), id=ids[i])
                first.append(await store.append("s", event, expected_version=expected))
                await store.append("junk", Note(text=f"{i}"))
                event = es.NewEvent(Note(text=f"{i}"), id=hidden[i])
                await store.append("h", event, expected_version=expected)
            await store.delete_stream("junk")
            await store.set_stream_metadata("h", max_count=1)
            for i in range(30):
                await store.append("tail", Note(text=f"{i}"))  # seal the segments
            scavenge = store.start_scavenge()
            await asyncio.sleep(0)

            def again(stream: str, v: int, eid: uuid.UUID) -> Any:
                event = es.NewEvent(Note(text=f"{v}"), id=eid)
                return store.append(stream, event, expected_version=v - 1 if v else es.NO_STREAM)

            many = [Note(text=f"{k}") for k in range(20)]
            conflicts = [store.append("s", many, expected_version=es.NO_STREAM) for _ in "abc"]
            retries = [again("s", v, ids[v]) for v in range(0, 60, 3)]
            of_hidden = [again("h", v, hidden[v]) for v in range(0, 59, 2)]
            got = await asyncio.gather(*conflicts, *retries, *of_hidden, return_exceptions=True)
            await scavenge
            assert all(isinstance(r, es.WrongExpectedVersion) for r in got[:3]), got[:3]
            assert got[3 : 3 + len(retries)] == first[::3]
            for r in got[3 + len(retries) :]:
                assert isinstance(r, es.AppendResult | es.WrongExpectedVersion), r


async def test_segments_a_scavenge_drops_leave_no_index_entries(store_path: Path) -> None:
    """The index keeps checkpoint and metadata entries per segment (for its sidecar): a
    segment a scavenge removes whole takes its entries with it (they piled up, one per
    dropped segment, for as long as the store ran)."""
    async with es.EventStore(store_path, segment_bytes=4096) as store:
        for i in range(60):
            batch = [(f"s{j % 4}", Note(text=f"{i} {j}".ljust(60))) for j in range(8)]
            await store.append_many(batch)
            if i % 3 == 0:
                await store.set_stream_metadata(f"s{i % 4}", max_count=2)
                await store.save_checkpoint("c", store.head)
            if i % 5 == 4:
                await store.scavenge()
        index, segments = store._index, store._log.segments
        live = {i for i, seg in enumerate(segments) if not seg.retired}
        assert len(live) < len(segments)  # (some segments were dropped whole)
        assert set(index.metas) <= live and set(index.marks) <= live


async def test_retention_keeps_the_version_of_a_stream_it_empties(store_path: Path) -> None:
    async with es.EventStore(store_path, segment_bytes=4096) as store:
        await store.append("early", [Note(text=str(i)) for i in range(5)])
        await fill(store, 3, 60)
    opts = es.StoreOptions(segment_bytes=4096, retention_bytes=8000)
    async with es.EventStore(store_path, opts) as store:
        await store.enforce_retention()
        assert await versions(store, "early") == []
        assert store.stream_metadata("early").truncate_before == 5
    async with es.EventStore(store_path, opts) as store:
        with pytest.raises(es.WrongExpectedVersion):
            await store.append("early", Note(text="x"), expected_version=es.NO_STREAM)
        assert (await store.append("early", Note(text="x"))).version == 5


@pytest.mark.parametrize("how", ["retention", "delete-and-scavenge"])
async def test_a_stream_subscription_to_a_stream_with_no_event_left_goes_live(
    store_path: Path, how: str
) -> None:
    """Every event of a stream was removed from the log (by retention, or deleted and
    scavenged): a subscription to it from version 0 finds no history, goes live, and gets
    the stream's next event. (It used to ask for the same history forever without yielding,
    freezing the event loop and everything on it.)"""
    opts = es.StoreOptions(segment_bytes=4096, retention_bytes=8192 if how == "retention" else None)
    async with es.EventStore(store_path, options=opts) as store:
        for _ in range(5):
            await store.append("a", Note(text="x" * 200))
        if how != "retention":
            await store.delete_stream("a")
        for _ in range(60):
            await store.append("b", Note(text="y" * 200))
        if how == "retention":
            await store.enforce_retention()
        else:
            await store.scavenge()
        assert [r async for r in store.read_stream("a")] == []

        async def first_event() -> int:
            async with store.subscribe(stream="a", from_version=0) as sub:
                async for rec in sub:
                    return rec.version
            raise AssertionError("the subscription ended")

        task = asyncio.create_task(first_event())
        await asyncio.sleep(0.05)  # (a subscription that spun would never let this return)
        appended = await store.append("a", Note(text="new"))
        assert appended.version == 5
        assert await asyncio.wait_for(task, 10) == 5


async def test_retention_by_age_is_applied_on_rotation(store_path: Path) -> None:
    async with es.EventStore(store_path, segment_bytes=4096) as store:
        await fill(store, 3, 30)
    await asyncio.sleep(0.05)
    opts = es.StoreOptions(segment_bytes=4096, retention_age=0.04)
    async with es.EventStore(store_path, opts) as store:
        assert (await everything(store))[0][2] == 0  # nothing happens before a rotation
        await fill(store, 3, 15)  # rotates: retention runs in the background
        task = store._maintenance._retention  # type: ignore[union-attr]
        assert task is not None
        report = await task
        assert report.segments_dropped > 0 or (await store.enforce_retention()).segments_dropped
        assert (await everything(store))[0][2] > 0
        assert len(await versions(store, "s-0")) < 45


def test_retention_options_are_checked() -> None:
    with pytest.raises(ValueError, match="retention_bytes"):
        es.StoreOptions(retention_bytes=-1)
    for bad in (0, -1, float("nan"), float("inf"), 1e303, 10**400, timedelta(0), "1h", True):
        with pytest.raises(ValueError, match="retention_age"):
            es.StoreOptions(retention_age=bad)  # type: ignore[arg-type]
    assert es.StoreOptions(retention_age=timedelta(hours=1)).retention_age_seconds == 3600


# --- recovery still tells removal from damage -------------------------------------------------
async def test_a_gap_in_a_segment_that_was_not_scavenged_is_corruption(store_path: Path) -> None:
    async with es.EventStore(store_path, SMALL) as store:
        await fill(store, 4, 30)
        await store.delete_stream("s-0")
        await store.scavenge()
    names = sorted(n for n in os.listdir(store_path) if n.endswith(".seg"))
    rewritten = store_path / names[0]
    raw = bytearray(rewritten.read_bytes())
    fields = SEGMENT_HEADER.unpack_from(raw)
    assert fields[3] == SEGMENT_FLAG_SCAVENGED
    raw[: SEGMENT_HEADER.size] = pack_segment_header(fields[4], 0)  # pretend it never was
    rewritten.write_bytes(bytes(raw))
    report = verify_store(store_path, options=SMALL)
    assert report.corrupt and report.first_problem is not None
    assert report.first_problem[0].name == names[0]
    for name in os.listdir(store_path):  # index sidecars spare opening a scan: none here
        if name.endswith(".idx"):
            os.remove(store_path / name)
    with pytest.raises(es.CorruptLog):
        await es.EventStore(store_path, SMALL).open()


async def test_a_stream_starting_late_without_removed_positions_is_corruption(
    store_path: Path,
) -> None:
    """A stream may start past version 0 on disk only if at least as many positions before it
    are missing: here a whole middle segment was deleted by hand with its stream's frames."""
    async with es.EventStore(store_path, SMALL) as store:
        await fill(store, 2, 60)
    names = sorted(n for n in os.listdir(store_path) if n.endswith(".seg"))
    os.remove(store_path / names[1])  # not by retention: the streams continue past it
    with pytest.raises(es.CorruptLog, match="continues at version"):
        await es.EventStore(store_path, SMALL).open()


async def test_a_leftover_scavenge_file_is_removed_on_open(store_path: Path) -> None:
    async with es.EventStore(store_path, SMALL) as store:
        await fill(store, 2, 30)
    names = sorted(n for n in os.listdir(store_path) if n.endswith(".seg"))
    (store_path / (names[0] + ".scavenge")).write_bytes(b"half a segment")
    async with es.EventStore(store_path, SMALL) as store:
        assert len(await versions(store, "s-0")) == 30
    assert not [n for n in os.listdir(store_path) if n.endswith(".scavenge")]


async def test_reads_across_gaps_left_by_a_scavenge(store_path: Path) -> None:
    async with es.EventStore(store_path, SMALL) as store:
        await fill(store, 4, 30)
        await store.delete_stream("s-0")
        await store.delete_stream("s-1")
        await store.scavenge()
        rows = await everything(store)
        positions = [p for _, _, p, _ in rows]
        gap = next(p + 1 for p, q in itertools.pairwise(positions) if q > p + 1)
        assert gap not in positions  # a removed position
        after = [r.position async for r in store.read_all(from_position=gap)]
        assert after == [p for p in positions if p >= gap]
        back = [r.position async for r in store.read_all(from_position=gap, backwards=True)]
        assert back == [p for p in reversed(positions) if p < gap]
        assert [r.position async for r in store.read_all(backwards=True)] == positions[::-1]
        limited = [r.position async for r in store.read_all(from_position=gap, limit=3)]
        assert limited == [p for p in positions if p >= gap][:3]
        async with store.subscribe(from_position=gap) as sub:
            assert (await anext(aiter(sub))).position == after[0]
        assert await versions(store, "s-2", from_version=5, limit=2) == [5, 6]


async def test_a_read_planned_before_a_swap_reads_the_old_file(store_path: Path) -> None:
    """White box: the segment object a read pinned keeps its file open and unchanged after
    scavenging replaced it; the file is closed when the last pin goes."""
    async with es.EventStore(store_path, SMALL) as store:
        await fill(store, 4, 30)
        await store.delete_stream("s-0")
        span = store._index.span_from(0, 1 << 20, False)
        assert span is not None
        old = store._log.segments[span.ordinal]
        before = old.read(span.end - span.start, span.start)
        old.pin()
        await store.scavenge()
        assert store._log.segments[span.ordinal] is not old and old.retired
        assert old.read(span.end - span.start, span.start) == before
        old.unpin()
        with pytest.raises(OSError):
            old.read(16, 0)


async def test_a_segment_left_empty_is_dropped(store_path: Path) -> None:
    async with es.EventStore(store_path, SMALL) as store:
        await fill(store, 2, 5)
        for i in range(60):  # whole segments of one stream
            await store.append("bulk", Note(text=str(i).ljust(100, ".")))
        await fill(store, 2, 40)
        await store.delete_stream("bulk")
        files = len([n for n in os.listdir(store_path) if n.endswith(".seg")])
        rows = await everything(store)
        report = await store.scavenge()
        assert report.segments_dropped >= 1
        left = [n for n in os.listdir(store_path) if n.endswith(".seg")]
        assert len(left) == files - report.segments_dropped
        assert await everything(store) == rows
    async with es.EventStore(store_path, SMALL) as store:
        assert await everything(store) == rows
        assert (await store.append("bulk", Note(text="x"))).version == 60
        assert (await store.verify()).ok


@pytest.mark.parametrize(("seed", "retention"), [(1, False), (2, False), (3, True), (4, True)])
async def test_random_operations_match_a_model(
    store_path: Path, seed: int, retention: bool
) -> None:
    """Appends, metadata changes, soft and hard deletes, scavenges and reopens in a random
    order (with store-wide retention dropping old segments after rotations, or not); after
    each step every stream and the whole log read exactly what a plain model says is
    visible, and every stream continues at the right version."""

    options = es.StoreOptions(segment_bytes=4096, retention_bytes=8_000 if retention else None)

    rng = random.Random(seed)
    streams = [f"m-{i}" for i in range(6)]
    events: dict[str, list[tuple[int, int, str]]] = {s: [] for s in streams}  # (ver, pos, text)
    meta: dict[str, dict[str, int | None]] = {s: {} for s in streams}
    hard: set[str] = set()
    removed = dict.fromkeys(streams, 0)  # versions below this were removed by a scavenge
    position = -1
    log_start = 0

    def first_visible(s: str) -> int:
        m = meta[s]
        low = max(m.get("truncate_before") or 0, removed[s])
        count = m.get("max_count")
        if count is not None:
            low = max(low, len(events[s]) - count)
        return low

    def visible(s: str) -> list[tuple[int, int, str]]:
        return [e for e in events[s] if e[0] >= first_visible(s)]

    store = await es.EventStore(store_path, options).open()
    try:
        for step in range(250):
            s = rng.choice(streams)
            op = rng.random()
            if op < 0.6:
                n = rng.randint(1, 3)
                texts = [f"{s}/{step}/{k}".ljust(rng.randint(10, 120), ".") for k in range(n)]
                last = len(events[s]) - 1
                if s in hard:
                    with pytest.raises(es.StreamDeleted):
                        await store.append(s, [Note(text=t) for t in texts])
                    continue
                r = await store.append(
                    s,
                    [Note(text=t) for t in texts],
                    expected_version=last if last >= 0 else es.NO_STREAM,
                )
                for k, t in enumerate(texts):
                    position += 1
                    events[s].append((last + 1 + k, position, t))
                assert (r.position, r.version) == (position, last + n)
            elif s in hard:
                continue
            elif op < 0.7:
                tb = rng.randint(0, len(events[s]))
                await store.set_stream_metadata(s, truncate_before=tb)
                meta[s]["truncate_before"] = tb
            elif op < 0.78:
                mc = rng.choice([None, 1, 2, 5])
                await store.set_stream_metadata(s, max_count=mc)
                meta[s]["max_count"] = mc
            elif op < 0.84:
                await store.delete_stream(s, hard=rng.random() < 0.2)
                meta[s]["truncate_before"] = len(events[s])
                if store.stream_metadata(s).hard_deleted:
                    hard.add(s)
            elif op < 0.93:
                await store.scavenge()
                for name in streams:  # it removed hidden events only (lowering a limit
                    gone = store._index.first_version(name)  # later cannot bring them back)
                    assert gone <= first_visible(name), (step, name)
                    removed[name] = max(removed[name], gone)
            else:
                await store.close()
                store = await es.EventStore(store_path, options).open()
            if retention:  # what retention dropped is a prefix of the log
                task = store._maintenance._retention  # type: ignore[union-attr]
                if task is not None:
                    await task
                log_start = min(
                    seg.first_position for seg in store._log.segments if not seg.retired
                )
                for name in streams:
                    dropped = [e for e in events[name] if e[1] < log_start]
                    if dropped:
                        removed[name] = max(removed[name], dropped[-1][0] + 1)
                    if events[name] and len(dropped) == len(events[name]):
                        tb = meta[name].get("truncate_before") or 0  # keeps the version
                        meta[name]["truncate_before"] = max(tb, len(events[name]))
            for name in streams:
                got = [
                    (r.version, r.position, r.data.text)  # type: ignore[union-attr]
                    async for r in store.read_stream(name)
                ]
                assert got == visible(name), (step, name)
            merged = sorted((p, name, v) for name in streams for v, p, _ in visible(name))
            assert [(r.position, r.stream, r.version) async for r in store.read_all()] == merged
        await store.scavenge()
        assert (await store.verify()).ok
        assert not retention or log_start > 0
    finally:
        await store.close()


async def test_a_read_only_store_sees_what_the_writer_sees(store_path: Path) -> None:
    """Opened next to its writer after retention and scavenging removed segments and frames,
    a read-only store starts at the oldest segment left, accepts the gaps, honours the
    metadata it finds, and follows metadata written later."""
    opts = es.StoreOptions(segment_bytes=4096, retention_bytes=20_000)
    async with es.EventStore(store_path, opts) as writer:
        await fill(writer, 4, 60)
        await writer.delete_stream("s-0")
        await writer.set_stream_metadata("s-1", max_count=3)
        await writer.scavenge()
        await writer.enforce_retention()
        expected = await everything(writer)
        assert expected[0][2] > 0
        reader = await es.EventStore(store_path, read_only=True, poll_interval=0.002).open()
        try:
            assert await everything(reader) == expected
            assert await versions(reader, "s-0") == []
            assert await versions(reader, "s-1") == [57, 58, 59]
            await writer.set_stream_metadata("s-2", truncate_before=59)
            await writer.append("s-3", Note(text="late"))
            async with reader.subscribe(stream="s-3", from_version=60) as sub:
                assert (await anext(aiter(sub))).version == 60  # the reader caught up
            assert await versions(reader, "s-2") == [59]
            assert reader.stream_metadata("s-2").truncate_before == 59
        finally:
            await reader.close()


async def test_version_1_index_sidecars_are_still_used(store_path: Path) -> None:
    """Sidecars written before retention existed (version 1) describe gap-free segments:
    opening uses them, deriving row counts and first versions."""
    from aioeventstore import _indexfile

    async with es.EventStore(store_path, SMALL) as store:
        await fill(store, 3, 40)
        rows = await everything(store)
    for name in os.listdir(store_path):
        if not name.endswith(".idx"):
            continue
        raw = (store_path / name).read_bytes()
        car = _indexfile.unpack(raw)
        assert not car.metas
        v2_tail = 4 * len(car.rows.pos) + 8 * len(car.rows.names) + _indexfile.META_HEAD.size
        body = bytearray(raw[: -4 - v2_tail])
        body[8:10] = (1).to_bytes(2, "little")  # the version field
        body += crc32c(bytes(body)).to_bytes(4, "little")
        assert _indexfile.unpack(bytes(body)).rows.cnt == car.rows.cnt
        (store_path / name).write_bytes(bytes(body))
    async with es.EventStore(store_path, SMALL) as store:
        assert store.recovery is not None and store.recovery.indexed_segments > 3
        assert await everything(store) == rows
        assert (await store.append("s-1", Note(text="x"))).version == 40


async def test_scavenge_with_compressed_containers(store_path: Path) -> None:
    """A compressed container goes whole or stays whole; what is visible never changes."""
    pytest.importorskip("zstandard")
    opts = es.StoreOptions(segment_bytes=8192, compression="zstd")
    async with es.EventStore(store_path, opts) as store:
        for v in range(30):  # batches of many streams: containers mix streams
            await asyncio.gather(
                *(store.append(f"s-{s}", Note(text=f"{s}:{v}".ljust(60, "."))) for s in range(6))
            )
        for i in range(40):  # containers holding only "solo" events
            await store.append("solo", [Note(text=f"{i}:{k}".ljust(60, ".")) for k in range(20)])
        await fill(store, 2, 10)
        await store.delete_stream("solo")
        await store.delete_stream("s-0")
        rows = await everything(store)
        report = await store.scavenge()
        assert report.events_removed > 0  # solo's containers went; mixed ones stayed whole
        assert await everything(store) == rows
        assert await versions(store, "s-0") == []
        assert (await store.verify()).ok
    async with es.EventStore(store_path, opts) as store:
        assert await everything(store) == rows
        assert (await store.append("solo", Note(text="x"))).version == 800


async def _fill_around_a_victim(path: str, fs: Any) -> None:
    """Seven busy streams, and a stream "victim" whose 5 events all lie in an early segment
    (4 KiB segments): the retention runs below remove its last events."""
    async with es.EventStore(path, segment_bytes=4096, _fs=fs) as store:
        for i in range(30):
            await store.append(f"other-{i % 7}", Note(text=f"{i}".ljust(100, ".")))
        for i in range(5):
            await store.append("victim", Note(text=f"{i}".ljust(100, ".")))
        for i in range(80):
            await store.append(f"other-{i % 7}", Note(text=f"{i}".ljust(100, ".")))


async def test_a_hard_delete_while_retention_records_floors() -> None:
    """A stream whose events all go with the oldest segments is hard-deleted while a
    retention run removes them one at a time: the floor the run then records for it is
    refused (the stream is deleted for good), which is not the run's failure. (The run
    raised StreamDeleted.)"""
    from aioeventstore._scavenge import drop_segment as real
    from tests.simfs import SimFS

    fs, path = SimFS(3), "/sim/store"
    await _fill_around_a_victim(path, fs)
    store = await es.EventStore(path, segment_bytes=4096, retention_bytes=15500, _fs=fs).open()
    loop = asyncio.get_running_loop()
    deleting: list[Any] = []
    slow = [False]

    def slow_sync(op: str, target: str) -> None:
        if slow[0] and op == "sync" and target.endswith(".seg"):
            slow[0] = False
            time.sleep(0.5)  # the hard delete's batch is still in flight meanwhile

    def drop(fs_: Any, seg: Any) -> int:
        if not deleting:  # while the first segment goes, the hard delete is queued
            slow[0] = True
            deleting.append(
                asyncio.run_coroutine_threadsafe(store.delete_stream("victim", hard=True), loop)
            )
            time.sleep(0.1)
        return real(fs_, seg)

    fs.before_op = slow_sync
    monkeypatched = pytest.MonkeyPatch()
    monkeypatched.setattr("aioeventstore._maintenance.drop_segment", drop)
    try:
        report = await store.enforce_retention()
        assert report.segments_dropped >= 2 and deleting
        await asyncio.wrap_future(deleting[0])
        assert store.stream_metadata("victim").hard_deleted
    finally:
        monkeypatched.undo()
        fs.before_op = None
        await store.close()
    async with es.EventStore(path, _fs=fs) as again:
        assert again.stream_metadata("victim").hard_deleted


async def test_a_metadata_change_during_retention_keeps_a_stream_s_version() -> None:
    """A retention run records a floor for a stream whose last events go with the segment
    it removes next; while it removes it, the application clears that stream's
    ``truncate_before``. The floor stays (the events are going anyway), so the stream keeps
    its version across a reopen (it came back with none: an append expecting version 4
    failed)."""
    from aioeventstore._scavenge import drop_segment as real
    from tests.simfs import SimFS

    fs, path = SimFS(3), "/sim/store"
    await _fill_around_a_victim(path, fs)
    store = await es.EventStore(path, segment_bytes=4096, retention_bytes=15500, _fs=fs).open()

    def slow_drop(fs_: Any, seg: Any) -> int:
        time.sleep(0.2)  # a slow disk: the loop runs other tasks meanwhile
        return real(fs_, seg)

    async def clear_the_floor() -> None:
        for _ in range(300):
            if store.stream_metadata("victim").truncate_before is not None:
                break
            await asyncio.sleep(0.01)
        await store.set_stream_metadata("victim", truncate_before=None)

    monkeypatched = pytest.MonkeyPatch()
    monkeypatched.setattr("aioeventstore._maintenance.drop_segment", slow_drop)
    try:
        clearing = asyncio.ensure_future(clear_the_floor())
        assert (await store.enforce_retention()).segments_dropped >= 2
        await clearing
        assert store.stream_metadata("victim").truncate_before == 5
    finally:
        monkeypatched.undo()
        await store.close()
    async with es.EventStore(path, _fs=fs) as again:
        assert (await again.append("victim", Note(text="next"), expected_version=4)).version == 5


async def test_damage_in_the_frame_retention_dates_a_segment_by_is_maintenance_failed() -> None:
    """``retention_age`` dates a sealed segment by its newest frame: damage there found
    after open raised the internal FrameError, not an EventStoreError."""
    from tests.simfs import SimFS

    fs = SimFS(3)
    async with es.EventStore("/s", _fs=fs, segment_bytes=4096, retention_age=3600) as store:
        for _ in range(40):
            await store.append("s", Note(text="x" * 200))
        seg0 = store._log.segments[0]
        ref = store._index.frame(store._index.segment_rows(0)[1] - 1)  # its newest frame
        data = bytearray(fs.read_file(seg0.path))
        data[ref.offset + 40] ^= 0xFF  # bit rot inside that frame, after open
        fs.write_file(seg0.path, bytes(data))
        with pytest.raises(es.MaintenanceFailed, match="frame checksum mismatch") as info:
            await store.enforce_retention()
        assert isinstance(info.value.__cause__, es.CorruptLog)
        assert info.value.__cause__.path == seg0.path
        assert (await store.append("s", Note(text="still written"))).version == 40
