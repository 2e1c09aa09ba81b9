"""Snapshots: save/load round trips, version rules, atomic and durable saves under power cuts,
damaged files, isolation from the log, and loading aggregates from snapshot + events."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import aioeventstore as es
from aioeventstore._format import SNAPSHOT_TEMP_SUFFIX
from aioeventstore._verify import repair_store, verify_store
from tests.helpers import Deposited, Note, take
from tests.simfs import LOSS_MODES, Fault, LossMode, SimFS

STORE = "/sim/store"


class Tally(BaseModel):
    """A test aggregate: how many deposits, their total, the accounts seen."""

    count: int = 0
    total: int = 0
    accounts: list[str] = []


class Other(BaseModel):
    text: str = ""


def fold(state: Tally, rec: es.RecordedEvent) -> Tally:
    data = rec.data
    assert isinstance(data, Deposited)
    return Tally(
        count=state.count + 1,
        total=state.total + data.amount,
        accounts=[*state.accounts, data.account],
    )


def deposits(n: int, start: int = 0) -> list[es.Event]:
    return [Deposited(account=f"a{i % 3}", amount=i) for i in range(start, start + n)]


def tally_of(events: list[es.Event]) -> Tally:
    state = Tally()
    for e in events:
        assert isinstance(e, Deposited)
        state = Tally(
            count=state.count + 1,
            total=state.total + e.amount,
            accounts=[*state.accounts, e.account],
        )
    return state


def snap_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.snap"))


# --- round trip, versions, errors ----------------------------------------------------------
async def test_round_trip_and_reopen(store_path: Path) -> None:
    events = deposits(10)
    async with es.EventStore(store_path) as store:
        assert await store.load_snapshot("acct", Tally) is None
        await store.append("acct", events[:6])
        assert await store.save_snapshot("acct", tally_of(events[:4]), 3) is True
        snap = await store.load_snapshot("acct", Tally)
        assert snap == es.Snapshot(tally_of(events[:4]), 3)
        assert isinstance(snap, es.Snapshot) and snap.state == tally_of(events[:4])
        await store.append("acct", events[6:])
    async with es.EventStore(store_path) as store:  # durable: survives reopen
        assert await store.load_snapshot("acct", Tally) == (tally_of(events[:4]), 3)
        assert await store.load_snapshot("nothing-here", Tally) is None
    assert len(snap_files(store_path)) == 1


async def test_the_newest_snapshot_is_kept(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await store.append("s", deposits(10))
        assert await store.save_snapshot("s", Tally(count=6), 5) is True
        assert await store.save_snapshot("s", Tally(count=3), 2) is False  # older: ignored
        assert await store.load_snapshot("s", Tally) == (Tally(count=6), 5)
        assert await store.save_snapshot("s", Tally(count=99), 5) is True  # same version: replaced
        assert await store.save_snapshot("s", Tally(count=10), 9) is True
        assert await store.load_snapshot("s", Tally) == (Tally(count=10), 9)
    async with es.EventStore(store_path) as store:  # the rule holds across reopen
        assert await store.save_snapshot("s", Tally(count=1), 0) is False
        assert await store.load_snapshot("s", Tally) == (Tally(count=10), 9)


async def test_each_stream_has_its_own_snapshot(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        names = ["a", "b/with slash", "ünïcode", "x" * 1024]
        for i, name in enumerate(names):
            await store.append(name, deposits(i + 1))
            await store.save_snapshot(name, Tally(count=i + 1), i)
        for i, name in enumerate(names):
            assert await store.load_snapshot(name, Tally) == (Tally(count=i + 1), i)
    assert len(snap_files(store_path)) == len(names)


@pytest.mark.parametrize(("stream", "version", "last"), [("s", 3, 2), ("s", -1, 2), ("new", 0, -1)])
async def test_versions_outside_the_stream_are_refused(
    store_path: Path, stream: str, version: int, last: int
) -> None:
    async with es.EventStore(store_path) as store:
        await store.append("s", deposits(3))
        with pytest.raises(es.SnapshotVersionError) as info:
            await store.save_snapshot(stream, Tally(), version)
        err = info.value
        assert isinstance(err, es.EventStoreError) and isinstance(err, ValueError)
        assert (err.stream, err.version, err.last_version) == (stream, version, last)
        assert repr(stream) in str(err) and str(version) in str(err)
        assert await store.load_snapshot(stream, Tally) is None
    assert snap_files(store_path) == []


async def test_bad_arguments(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await store.append("s", deposits(1))
        with pytest.raises(TypeError, match="pydantic model"):
            await store.save_snapshot("s", {"count": 1}, 0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="version must be an int"):
            await store.save_snapshot("s", Tally(), True)
        with pytest.raises(ValueError, match="reserved"):
            await store.save_snapshot("$s", Tally(), 0)
        with pytest.raises(TypeError, match="pydantic model class"):
            await store.load_snapshot("s", dict)  # type: ignore[type-var]
    with pytest.raises(es.StoreClosed):
        await store.save_snapshot("s", Tally(), 0)
    with pytest.raises(es.StoreClosed):
        await store.load_snapshot("s", Tally)


async def test_the_state_is_captured_when_saved(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await store.append("s", deposits(2))
        state = Tally(count=1, accounts=["a"])
        saving = asyncio.create_task(store.save_snapshot("s", state, 1))
        await asyncio.sleep(0)
        state.accounts.append("changed later")
        await saving
        assert await store.load_snapshot("s", Tally) == (Tally(count=1, accounts=["a"]), 1)


# --- unusable snapshots: None and a warning, never an error or a wrong state ---------------
async def test_damaged_file_is_ignored_with_a_warning_and_replaced(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with es.EventStore(store_path) as store:
        await store.append("s", deposits(5))
        await store.save_snapshot("s", Tally(count=5), 4)
    (path,) = snap_files(store_path)
    good = path.read_bytes()
    damaged = (
        [good[:i] + bytes([good[i] ^ 0x40]) + good[i + 1 :] for i in range(0, len(good), 7)]
        + [good[:n] for n in (0, 10, 56, len(good) - 1)]
        + [good + b"\0"]
    )
    for bad in damaged:
        path.write_bytes(bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="aioeventstore"):
            async with es.EventStore(store_path) as store:  # the store opens
                assert await store.load_snapshot("s", Tally) is None
                assert [r.version async for r in store.read_stream("s")] == [0, 1, 2, 3, 4]
        assert any("ignoring the snapshot of stream 's'" in m for m in caplog.messages)
    async with es.EventStore(store_path) as store:  # any save replaces a damaged file
        assert await store.save_snapshot("s", Tally(count=1), 0) is True
        assert await store.load_snapshot("s", Tally) == (Tally(count=1), 0)
    assert path.read_bytes() != damaged[-1]


async def test_another_type_or_a_changed_schema_is_ignored(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class TallyV2(BaseModel):
        count: int
        required_now: str

    TallyV2.__qualname__ = "Tally"  # the same class name, an incompatible schema

    async with es.EventStore(store_path) as store:
        await store.append("s", deposits(2))
        await store.save_snapshot("s", Tally(count=2), 1)
        with caplog.at_level(logging.WARNING, logger="aioeventstore"):
            assert await store.load_snapshot("s", Other) is None
            assert "holds a 'Tally', not a 'Other'" in caplog.text
            assert await store.load_snapshot("s", TallyV2) is None
            assert "does not validate as Tally" in caplog.text
        assert await store.load_snapshot("s", Tally) == (Tally(count=2), 1)


async def _snapshot_file_of(directory: Path, events: int) -> bytes:
    async with es.EventStore(directory) as store:
        await store.append("s", deposits(events))
        await store.save_snapshot("s", Tally(count=events), events - 1)
    (path,) = snap_files(directory)
    return path.read_bytes()


async def test_a_snapshot_that_no_longer_matches_the_log_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After ``repair`` cuts the log, or a power cut loses appends acknowledged with
    ``durability="os"``, a snapshot can be ahead of the log or describe other events."""
    snap = await _snapshot_file_of(tmp_path / "origin", 10)
    name = snap_files(tmp_path / "origin")[0].name

    async def other_store(directory: Path, before: int, events: int, why: str) -> None:
        async with es.EventStore(directory) as store:
            if before:
                await store.append("other", deposits(before))
            await store.append("s", deposits(events))
        (directory / name).write_bytes(snap)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="aioeventstore"):
            async with es.EventStore(directory) as store:
                assert await store.load_snapshot("s", Tally) is None
                assert why in caplog.text
                # an older save replaces it (it would be kept if it still matched)
                assert await store.save_snapshot("s", Tally(count=1), 0) is True
                assert await store.load_snapshot("s", Tally) == (Tally(count=1), 0)

    await other_store(tmp_path / "shorter", 0, 5, "the stream's last version is 4")
    await other_store(tmp_path / "moved", 1, 10, "has another position")
    await other_store(tmp_path / "other-ids", 0, 10, "not the one it was saved after")


async def test_a_snapshot_whose_event_retention_removed_is_ignored_not_an_error(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Retention removed the segments holding a snapshot's version: the snapshot can no
    longer be checked against the log, so ``load_snapshot`` ignores it with a warning (not an
    AssertionError from the index), and ``save_snapshot`` at a removed version raises
    SnapshotVersionError naming the stream's first version."""
    opts = es.StoreOptions(segment_bytes=4096, retention_bytes=9000)
    async with es.EventStore(store_path, options=opts) as store:
        for v in range(40):
            await store.append("s", Note(text=f"{v}".ljust(300, ".")))
            if v == 3:
                assert await store.save_snapshot("s", Tally(count=4), 3)
                assert await store.load_snapshot("s", Tally) == (Tally(count=4), 3)
        await store.enforce_retention()  # (rotations may have enforced it already)
        (first,) = [r.version async for r in store.read_stream("s", limit=1)]
        assert first > 3
        with caplog.at_level(logging.WARNING, logger="aioeventstore"):
            assert await store.load_snapshot("s", Tally) is None
        assert "was removed from the log" in caplog.text
        with pytest.raises(es.SnapshotVersionError, match=f"before version {first} were removed"):
            await store.save_snapshot("s", Tally(count=5), first - 1)
        assert await store.save_snapshot("s", Tally(count=99), first)  # replaces it
        assert await store.load_snapshot("s", Tally) == (Tally(count=99), first)


@pytest.mark.parametrize("how", ["soft delete", "hard delete", "truncate_before", "max_count"])
async def test_a_snapshot_the_streams_metadata_now_hides_is_ignored(
    store_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """A snapshot whose event a delete, ``truncate_before`` or ``max_count`` now hides holds
    events reads no longer yield: ``load_snapshot`` ignores it, and ``load_aggregate`` folds
    only what ``read_stream`` yields, as it does with no snapshot. A snapshot at or past the
    first visible version stays usable."""
    async with es.EventStore(store_path) as store:
        await store.append("s", deposits(5))
        assert await store.save_snapshot("s", tally_of(deposits(3)), 2)
        if how == "soft delete":
            await store.delete_stream("s")
            await store.append("s", deposits(1, start=5))
        elif how == "hard delete":
            await store.delete_stream("s", hard=True)
        elif how == "truncate_before":
            await store.set_stream_metadata("s", truncate_before=3)
        else:
            await store.set_stream_metadata("s", max_count=2)
        visible = [r.data async for r in store.read_stream("s") if isinstance(r.data, es.Event)]
        with caplog.at_level(logging.WARNING, logger="aioeventstore"):
            assert await store.load_snapshot("s", Tally) is None
        if how == "hard delete":  # (its file went with the delete)
            assert not [p for p in store_path.iterdir() if p.suffix == ".snap"]
        else:
            assert "ignoring the snapshot of stream 's'" in caplog.text
        state, _version = await es.load_aggregate(store, "s", Tally, fold)
        assert state == tally_of(visible)
        if how in ("truncate_before", "max_count"):
            await store.set_stream_metadata("s", truncate_before=2, max_count=None)
            assert await store.load_snapshot("s", Tally) == (tally_of(deposits(3)), 2)


async def test_a_read_only_store_saves_no_snapshot(store_path: Path) -> None:
    """A read-only store changes nothing on disk: ``save_snapshot`` raises StoreReadOnly and
    ``load_aggregate(snapshot_every=...)`` loads without saving."""
    async with es.EventStore(store_path) as store:
        await store.append("s", deposits(5))
    before = sorted(p.name for p in store_path.iterdir())
    async with es.EventStore(store_path, read_only=True) as reader:
        with pytest.raises(es.StoreReadOnly, match="snapshots"):
            await reader.save_snapshot("s", Tally(), 1)
        got = await es.load_aggregate(reader, "s", Tally, fold, snapshot_every=1)
        assert got == (tally_of(deposits(5)), 4)
    assert sorted(p.name for p in store_path.iterdir()) == before


class Premium(Tally):
    """What an aggregate's ``apply`` may return: a subclass of its ``state_type``."""

    tier: str = "gold"


async def test_a_snapshot_of_a_subclass_of_the_state_type_is_used(store_path: Path) -> None:
    def fold_premium(state: Tally, rec: es.RecordedEvent) -> Tally:
        return Premium(**fold(state, rec).model_dump(), tier=f"t{rec.version}")

    async with es.EventStore(store_path) as store:
        await store.append("s", deposits(20))
        first = await es.load_aggregate(store, "s", Tally, fold_premium, snapshot_every=5)
        assert isinstance(first.state, Premium) and first.state.tier == "t19"
        assert await store.load_snapshot("s", Tally) == first
        await store.append("s", deposits(1, start=20))
        seen: list[int] = []

        def counting(state: Tally, rec: es.RecordedEvent) -> Tally:
            seen.append(rec.version)
            return fold_premium(state, rec)

        again = await es.load_aggregate(store, "s", Tally, counting)
        replayed: Tally = Tally()
        async for rec in store.read_stream("s"):
            replayed = fold_premium(replayed, rec)
        assert seen == [20] and again == (replayed, 20)


# --- isolation from the log ----------------------------------------------------------------
async def test_snapshots_are_never_events(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await store.append("s", deposits(5))
        async with store.subscribe(from_position=0) as sub:
            before = store.statistics()
            for v in range(5):
                await store.save_snapshot("s", Tally(count=v + 1), v)
            after = store.statistics()
            assert (after.batches, after.syncs, after.head) == (before.batches, before.syncs, 4)
            await store.append("s", Note(text="after"))
            seen = await take(sub, 6)
        assert [r.version for r in seen] == list(range(6))
        assert [r.position async for r in store.read_all()] == list(range(6))
        assert [r.version async for r in store.read_stream("s", backwards=True)] == [
            5,
            4,
            3,
            2,
            1,
            0,
        ]
    async with es.EventStore(store_path) as store:
        assert store.head == 5
        assert store.recovery is not None and store.recovery.cut_path is None


async def test_verify_and_repair_ignore_snapshot_files(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await store.append("s", deposits(3))
        await store.save_snapshot("s", Tally(count=3), 2)
        report = await store.verify()
        assert report.ok and report.events == 3 and len(report.segments) == 1
    (store_path / ("0" * 32 + SNAPSHOT_TEMP_SUFFIX)).write_bytes(b"junk of a crashed save")
    assert verify_store(store_path).ok
    repaired = repair_store(store_path)
    assert repaired.actions == () and repaired.after is not None and repaired.after.ok
    async with es.EventStore(store_path) as store:
        assert await store.load_snapshot("s", Tally) == (Tally(count=3), 2)
    assert not list(store_path.glob("*" + SNAPSHOT_TEMP_SUFFIX))  # opening removed it


# --- threads, cancellation, close ----------------------------------------------------------
class Gate:
    """Holds the snapshot thread at its file sync until released."""

    def __init__(self, fs: SimFS) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.threads: set[str] = set()
        fs.before_op = self.hook

    def hook(self, op: str, path: str) -> None:
        if ".snap" in path:
            self.threads.add(threading.current_thread().name)
            if op == "sync" and not self.release.is_set():
                self.entered.set()
                assert self.release.wait(30)


async def test_a_slow_snapshot_never_holds_up_appends_and_cancelling_it_is_harmless() -> None:
    fs = SimFS(1)
    gate = Gate(fs)
    async with es.EventStore(STORE, _fs=fs) as store:
        await store.append("s", deposits(5))
        saving = asyncio.create_task(store.save_snapshot("s", Tally(count=5), 4))
        await asyncio.to_thread(gate.entered.wait, 30)
        # the snapshot thread is stuck in its fsync: appends and reads go on
        for i in range(20):
            await store.append("s", Deposited(account="x", amount=i))
        assert len([r async for r in store.read_stream("s")]) == 25
        saving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await saving
        gate.release.set()
        # the cancelled save completes on its thread; the next save of the stream waits for it
        assert await store.save_snapshot("s", Tally(count=3), 2) is False
        assert await store.load_snapshot("s", Tally) == (Tally(count=5), 4)
    assert gate.threads and all(t.startswith("aioeventstore-snapshot") for t in gate.threads)


async def test_close_waits_for_a_save_in_flight() -> None:
    fs = SimFS(2)
    gate = Gate(fs)
    store = await es.EventStore(STORE, _fs=fs).open()
    await store.append("s", deposits(3))
    saving = asyncio.create_task(store.save_snapshot("s", Tally(count=3), 2))
    await asyncio.to_thread(gate.entered.wait, 30)
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0.01)
    assert not closing.done()
    gate.release.set()
    assert await saving is True
    await closing
    fs.power_cut("lost")  # the save was durable before the lock was released
    async with es.EventStore(STORE, _fs=fs) as again:
        assert await again.load_snapshot("s", Tally) == (Tally(count=3), 2)


# --- crashes and faults --------------------------------------------------------------------
async def _crash_during_save(
    mode: LossMode, k: int, seed: int, first: bool
) -> tuple[bool, es.Snapshot[Tally] | None, SimFS]:
    """Save snapshot A (unless ``first``), then cut the power before operation ``k`` of
    saving snapshot B; reboot and load. Returns whether B's save returned, what loads, fs."""
    fs = SimFS(seed)
    store = await es.EventStore(STORE, _fs=fs).open()
    await store.append("s", deposits(8))
    if not first:
        await store.save_snapshot("s", Tally(count=3), 2)
    fs.cut_after(k)
    returned = False
    with contextlib.suppress(es.SnapshotFailed):
        returned = await store.save_snapshot("s", Tally(count=8), 7)
    fs.power_cut(mode, random.Random(seed), tear=seed % 2 == 1)
    with contextlib.suppress(OSError, es.EventStoreError):  # the old process's handles are dead
        await store.close()
    async with es.EventStore(STORE, _fs=fs) as again:
        loaded = await again.load_snapshot("s", Tally)
        assert [n for n in fs.walk(STORE) if n.endswith(SNAPSHOT_TEMP_SUFFIX)] == []
        assert (await again.append("s", Note(text="on"))).version == 8
        report = await again.verify()
        assert report.ok
    return returned, loaded, fs


@pytest.mark.parametrize("mode", LOSS_MODES)
@pytest.mark.parametrize("first", [False, True], ids=["replace", "first"])
async def test_power_cut_at_every_operation_of_a_save(mode: LossMode, first: bool) -> None:
    """Before every file operation of a save, and after the last: the store opens and load
    returns the previous snapshot or the new one, never garbage; the new one once returned."""
    old = None if first else es.Snapshot(Tally(count=3), 2)
    new = es.Snapshot(Tally(count=8), 7)
    outcomes = set()
    k = 0
    while True:
        for seed in (k * 2, k * 2 + 1) if mode == "torn" else (k * 2,):
            returned, loaded, _fs = await _crash_during_save(mode, k, seed, first)
            assert loaded in (old, new), (k, loaded)
            if returned:
                assert loaded == new
            if mode == "lost" and not returned:
                assert loaded == old  # nothing survives that was not synced
            outcomes.add((returned, loaded == new))
        if returned:
            break
        k += 1
        assert k < 20
    assert k == 5  # create, pwrite, sync, rename, sync_dir
    assert (False, False) in outcomes and (True, True) in outcomes
    if mode == "kept":
        assert (False, True) in outcomes  # the rename survived, the sync_dir never came


@pytest.mark.parametrize("op", ["create", "pwrite", "sync", "rename", "sync_dir"])
async def test_a_failed_save_raises_and_keeps_the_previous_snapshot(op: str) -> None:
    fs = SimFS(3)
    async with es.EventStore(STORE, _fs=fs) as store:
        await store.append("s", deposits(4))
        await store.save_snapshot("s", Tally(count=2), 1)
        fs.inject(Fault(op=op, path=STORE if op == "sync_dir" else ".snap"))
        with pytest.raises(es.SnapshotFailed) as info:
            await store.save_snapshot("s", Tally(count=4), 3)
        assert isinstance(info.value.__cause__, OSError)
        assert "'s'" in str(info.value)
        loaded = await store.load_snapshot("s", Tally)
        # the rename happened before the failed sync_dir: the new file is in place
        assert loaded == ((Tally(count=4), 3) if op == "sync_dir" else (Tally(count=2), 1))
        assert [n for n in fs.walk(STORE) if n.endswith(SNAPSHOT_TEMP_SUFFIX)] == []
        await store.append("s", Note(text="the log is unaffected"))
        assert await store.save_snapshot("s", Tally(count=5), 4) is True
        assert await store.load_snapshot("s", Tally) == (Tally(count=5), 4)


async def test_read_error_raises_snapshot_failed() -> None:
    fs = SimFS(4)
    async with es.EventStore(STORE, _fs=fs) as store:
        await store.append("s", deposits(1))
        await store.save_snapshot("s", Tally(count=1), 0)
        fs.inject(Fault(op="pread", path=".snap"))
        with pytest.raises(es.SnapshotFailed):
            await store.load_snapshot("s", Tally)
        assert await store.load_snapshot("s", Tally) == (Tally(count=1), 0)


# --- load_aggregate ------------------------------------------------------------------------
async def test_load_aggregate_equals_a_full_replay(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = deposits(50)
    applied: list[int] = []

    def counting(state: Tally, rec: es.RecordedEvent) -> Tally:
        applied.append(rec.version)
        return fold(state, rec)

    async with es.EventStore(store_path) as store:
        assert await es.load_aggregate(store, "s", Tally, fold) == (Tally(), -1)
        await store.append("s", events[:30])
        full = await es.load_aggregate(store, "s", Tally, counting, snapshot_every=20)
        assert full == (tally_of(events[:30]), 29) and applied == list(range(30))
        assert await store.load_snapshot("s", Tally) == full  # 30 >= 20 folded: saved
        await store.append("s", events[30:])
        applied.clear()
        again = await es.load_aggregate(store, "s", Tally, counting, snapshot_every=25)
        assert again == (tally_of(events), 49)
        assert applied == list(range(30, 50))  # only the events after the snapshot
        assert (await store.load_snapshot("s", Tally)) == full  # 20 < 25: not saved
    (path,) = snap_files(store_path)
    path.write_bytes(b"garbage")
    async with es.EventStore(store_path) as store:
        with caplog.at_level(logging.WARNING, logger="aioeventstore"):
            assert await es.load_aggregate(store, "s", Tally, fold) == (tally_of(events), 49)
        assert "damaged file" in caplog.text


async def test_load_aggregate_initial_state(store_path: Path) -> None:
    def mutate(state: Tally, rec: es.RecordedEvent) -> Tally:
        state.count += 1  # changes the state it is given, in place
        return state

    start = Tally(total=100)
    async with es.EventStore(store_path) as store:
        await store.append("s", deposits(3))
        got = await es.load_aggregate(store, "s", Tally, mutate, initial=start)
        assert got == (Tally(count=3, total=100), 2) and start == Tally(total=100)
        got = await es.load_aggregate(store, "s", Tally, mutate, initial=lambda: Tally(total=7))
        assert got.state == Tally(count=3, total=7)
        with pytest.raises(TypeError, match="apply returned a NoneType"):
            await es.load_aggregate(store, "s", Tally, lambda s, r: None)  # type: ignore[arg-type,return-value]
        with pytest.raises(TypeError, match="initial must be a Tally"):
            await es.load_aggregate(store, "s", Tally, fold, initial=Other())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="snapshot_every"):
            await es.load_aggregate(store, "s", Tally, fold, snapshot_every=0)
        with pytest.raises(TypeError, match="initial must be a Tally, a callable making one"):
            await es.load_aggregate(store, "s", Tally, fold, initial=5)  # type: ignore[arg-type]


async def test_the_version_load_aggregate_returns_is_the_one_to_append_at(
    store_path: Path,
) -> None:
    """The aggregate pattern (load, decide, append at the version loaded) works for a new
    stream (-1, which append takes as NO_STREAM) and for one whose last events are hidden
    (a soft delete, truncate_before): the version is the stream's, not the last folded."""
    async with es.EventStore(store_path) as store:
        got = await es.load_aggregate(store, "new", Tally, fold)
        assert got == (Tally(), -1) and store.stream_version("new") == -1
        r = await store.append("new", deposits(2), expected_version=got.version)
        assert r.version == 1
        with pytest.raises(es.WrongExpectedVersion) as info:  # -1 is NO_STREAM: it exists now
            await store.append("new", deposits(1), expected_version=-1)
        assert info.value.expected == es.NO_STREAM and info.value.actual == 1

        await store.append("gone", deposits(5))
        await store.delete_stream("gone")
        got = await es.load_aggregate(store, "gone", Tally, fold)
        assert got == (Tally(), 4) and store.stream_version("gone") == 4
        assert (await store.append("gone", deposits(1), expected_version=got.version)).version == 5

        await store.append("cut", deposits(3))
        await store.set_stream_metadata("cut", truncate_before=3)
        got = await es.load_aggregate(store, "cut", Tally, fold)
        assert got == (Tally(), 2)
        await store.append("cut", deposits(1), expected_version=got.version)
        got = await es.load_aggregate(store, "cut", Tally, fold)
        assert got == (tally_of(deposits(1)), 3)


async def test_stream_version_counts_what_an_expected_version_is_checked_against(
    store_path: Path,
) -> None:
    async with es.EventStore(store_path) as store:
        assert store.stream_version("s") == -1
        await store.append("s", deposits(3))
        await store.set_stream_metadata("s", max_count=1)
        assert store.stream_version("s") == 2
        assert [r.version async for r in store.read_stream("s")] == [2]
        with pytest.raises(ValueError, match="reserved"):
            store.stream_version("$all")
    async with es.EventStore(store_path, read_only=True) as reader:
        assert reader.stream_version("s") == 2
    with pytest.raises(es.StoreClosed):
        reader.stream_version("s")


async def test_load_aggregate_survives_a_failed_snapshot_save(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fs = SimFS(5)
    async with es.EventStore(STORE, _fs=fs) as store:
        await store.append("s", deposits(4))
        fs.inject(Fault(op="create", path=".snap"))
        with caplog.at_level(logging.WARNING, logger="aioeventstore"):
            got = await es.load_aggregate(store, "s", Tally, fold, snapshot_every=1)
        assert got == (tally_of(deposits(4)), 3)
        assert "could not save a snapshot of stream 's'" in caplog.text
        assert await store.load_snapshot("s", Tally) is None


async def test_a_snapshot_hidden_while_it_is_loaded_is_not_glued_to_later_events(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``truncate_before`` (or appends past ``max_count``) landing between the snapshot's
    check and the read after it: the fold glued the old snapshot to the events past the new
    floor, skipping those between, and ``snapshot_every`` saved that for every later load."""
    async with es.EventStore(store_path) as store:
        await store.append("s", deposits(2))
        await store.save_snapshot("s", tally_of(deposits(2)), 1)
        await store.append("s", deposits(4, start=2))  # versions 2..5
        real = store.load_snapshot

        async def load_snapshot(stream: str, state_type: type[Tally]) -> es.Snapshot[Tally] | None:
            snap = await real(stream, state_type)  # checked: version 1 is visible
            await store.set_stream_metadata("s", truncate_before=4)  # another task, meanwhile
            return snap

        monkeypatch.setattr(store, "load_snapshot", load_snapshot)
        got = await es.load_aggregate(store, "s", Tally, fold, snapshot_every=1)
        monkeypatch.undo()
        assert got == (tally_of(deposits(2, start=4)), 5)  # the visible events, 4 and 5
        assert await es.load_aggregate(store, "s", Tally, fold) == got


# --- a snapshot is a cache: its troubles never stop a load or an open ---------------------------
async def test_an_unreadable_snapshot_makes_load_aggregate_fold_every_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bad sector under the snapshot file: load_aggregate raised SnapshotFailed although
    every event could be read."""
    fs = SimFS(1)
    async with es.EventStore("/sim/s", _fs=fs) as store:
        await store.append("x", [Deposited(account="a", amount=i) for i in range(5)])
        await store.save_snapshot("x", Tally(count=5, total=10), 4)
        fs.inject(Fault(op="pread", path=".snap", times=0))
        with pytest.raises(es.SnapshotFailed):
            await store.load_snapshot("x", Tally)  # (documented: the call itself says so)
        with caplog.at_level(logging.WARNING, logger="aioeventstore"):
            loaded = await es.load_aggregate(store, "x", Tally, fold)
        assert (loaded.state.count, loaded.version) == (5, 4)
        assert "could not read the snapshot of stream 'x'" in caplog.text


async def test_an_unreadable_snapshot_of_a_truncated_stream_is_an_error() -> None:
    """The snapshot is then the only record of the events before the floor: folding what is
    left returned a wrong state as if right, and snapshot_every saved it over the good one."""
    fs = SimFS(1)
    events = deposits(10)
    async with es.EventStore("/sim/s", _fs=fs) as store:
        await store.append("x", events)
        assert await store.save_snapshot("x", tally_of(events), 9)
        await store.set_stream_metadata("x", truncate_before=9)  # (keeps the snapshot's event)
        fs.inject(Fault(op="pread", path=".snap", errno=errno.EMFILE, times=1))
        with pytest.raises(es.SnapshotFailed):
            await es.load_aggregate(store, "x", Tally, fold, snapshot_every=1)
        after = await es.load_aggregate(store, "x", Tally, fold)  # (the fault has passed)
        assert (after.state, after.version) == (tally_of(events), 9)


@pytest.mark.parametrize("how", ["max_age", "soft delete, appended again"])
async def test_an_unreadable_snapshot_of_a_stream_whose_first_events_are_hidden_is_an_error(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The first events hidden, not gone: the probe read nothing (max_age hid them all) and
    folded, returning the initial state as if right. A stream deleted and appended to
    again is refused too, to be safe (its first readable version says nothing of the
    snapshot)."""
    async with es.EventStore(store_path) as store:
        await store.append("x", deposits(5))
        if how == "max_age":
            assert await store.save_snapshot("x", tally_of(deposits(5)), 4)
            await store.set_stream_metadata("x", max_age=0.05)
            await asyncio.sleep(0.2)
        else:
            await store.delete_stream("x")
            await store.append("x", deposits(3, start=5))
            assert await store.save_snapshot("x", tally_of(deposits(3, start=5)), 7)

        def unreadable(stream: str) -> None:
            raise OSError(errno.EIO, "injected")

        monkeypatch.setattr(store._snapshots.files, "read", unreadable)
        with pytest.raises(es.SnapshotFailed):
            await es.load_aggregate(store, "x", Tally, fold, snapshot_every=1)


async def test_a_save_that_a_race_refuses_is_logged_by_load_aggregate(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A delete and scavenge (or retention) landing while the events are folded make the
    save refuse the folded version: load_aggregate raised SnapshotVersionError."""
    async with es.EventStore(store_path) as store:
        await store.append("x", [Deposited(account="a", amount=i) for i in range(3)])

        async def refused(stream: str, state: BaseModel, version: int) -> bool:
            raise es.SnapshotVersionError(stream, version, 9, 9)

        monkeypatch.setattr(store, "save_snapshot", refused)
        with caplog.at_level(logging.WARNING, logger="aioeventstore"):
            loaded = await es.load_aggregate(store, "x", Tally, fold, snapshot_every=1)
        assert (loaded.state.count, loaded.version) == (3, 2)
        assert "could not save a snapshot of stream 'x'" in caplog.text


async def test_a_hard_deleted_stream_takes_no_snapshot(store_path: Path) -> None:
    """Its snapshot file was kept for ever (every load ignores it), and a save wrote another
    one."""
    async with es.EventStore(store_path) as store:
        await store.append("gone", [Deposited(account="a", amount=i) for i in range(3)])
        await store.append("kept", [Deposited(account="a", amount=i) for i in range(3)])
        for stream in ("gone", "kept"):
            await store.save_snapshot(stream, Tally(count=3), 2)
        assert len([p for p in store_path.iterdir() if p.suffix == ".snap"]) == 2
        await store.delete_stream("gone", hard=True)
        await store.delete_stream("kept")  # (soft: the next save replaces its file)
        assert len([p for p in store_path.iterdir() if p.suffix == ".snap"]) == 1
        with pytest.raises(es.StreamDeleted):
            await store.save_snapshot("gone", Tally(count=3), 2)
        assert len([p for p in store_path.iterdir() if p.suffix == ".snap"]) == 1


async def test_a_save_a_hard_delete_overtakes_leaves_no_file(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete lands while the save awaits the event id: the save found the stream alive,
    then wrote its file after the delete had removed the stream's."""
    async with es.EventStore(store_path) as store:
        await store.append("gone", deposits(3))
        reader = store._snapshots._reader
        real = reader.stream_ids

        async def overtaken(*args: Any) -> list[bytes]:
            ids = await real(*args)
            await store.delete_stream("gone", hard=True)
            return ids

        monkeypatch.setattr(reader, "stream_ids", overtaken)
        with pytest.raises(es.StreamDeleted):
            await store.save_snapshot("gone", Tally(count=3), 2)
        assert not [p for p in store_path.iterdir() if p.suffix == ".snap"]


async def test_a_replacing_save_a_hard_delete_overtakes_leaves_no_file(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for the save's second write (it replaces a newer snapshot that no longer
    matches the log): the delete lands while it checks that one."""
    async with es.EventStore(store_path) as store:
        await store.append("s", deposits(5))
        await store.save_snapshot("s", tally_of(deposits(5)), 4)

        async def mismatch(stream: str, kept: Any) -> str:
            await store.delete_stream("s", hard=True)
            return "a mismatch"

        monkeypatch.setattr(store._snapshots, "_mismatch", mismatch)
        with pytest.raises(es.StreamDeleted):
            await store.save_snapshot("s", tally_of(deposits(3)), 2)
        assert not [p for p in store_path.iterdir() if p.suffix == ".snap"]


async def test_a_leftover_temporary_file_that_cannot_be_removed_does_not_stop_the_open() -> None:
    fs = SimFS(2)
    async with es.EventStore("/sim/s", _fs=fs) as store:
        await store.append("x", Deposited(account="a", amount=1))
    tmp = f"/sim/s/{'ab' * 16}.{'cd' * 8}{SNAPSHOT_TEMP_SUFFIX}"
    f = fs.open(tmp, write=True, create=True)
    f.pwrite(b"junk", 0)
    f.sync()
    f.close()
    fs.sync_dir("/sim/s")
    fs.inject(Fault(op="remove", path=SNAPSHOT_TEMP_SUFFIX, times=0))
    async with es.EventStore("/sim/s", _fs=fs) as store:
        assert [r.version async for r in store.read_stream("x")] == [0]
