"""Write and sync errors: fail-stop, nothing of the failed batch left behind, nothing
acknowledged lost, reopening recovers.

The contract (README "Errors", docs/guarantees.md): after any error writing or syncing the log,
the producers of the failed batch and every later append get ``StoreFailed`` (``__cause__`` is
the OS error), never success; reads of what was committed keep working; the failed batch's
bytes are cut off again, so that a reopen never shows them; reopening recovers.

The simulated file system (tests/simfs.py) models the page cache, including Linux's behaviour
after an fsync error: the failed pages stay readable but never reach the disk. Several tests
here reopen *in the same boot* after a failure, append, and then cut the power: that is where
data that is readable but not durable would turn into a hole in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import time
import uuid
from pathlib import Path

import pytest

import aioeventstore as es
from aioeventstore._fs import OsFileSystem
from tests.crashload import (
    PAD,
    STORE,
    Attempt,
    Run,
    check_recovered,
    reopen_and_check,
    run_workload,
    verify_image,
)
from tests.helpers import Note
from tests.simfs import LOSS_MODES, Fault, PowerCut, SimFS

APPENDS = 24


def not_corrupt(fs: SimFS) -> bool:
    """``verify_store`` finds the store's image whole (a torn tail at most)."""
    report = verify_image(fs)
    return report is not None and not report.corrupt


async def committed(store: es.EventStore) -> list[es.RecordedEvent]:
    return [r async for r in store.read_all()]


def note(text: str, eid: uuid.UUID) -> es.NewEvent:
    return es.NewEvent(Note(text=text + PAD), id=eid)


async def append_more(store: es.EventStore, run: Run, n: int, stream: str = "later") -> None:
    """``n`` acknowledged appends, recorded in ``run``."""
    for i in range(n):
        a = Attempt(stream, [uuid.uuid4()], [f"{stream}/{i}"], es.ANY)
        run.attempts.append(a)
        a.outcome = await store.append(stream, note(a.texts[0], a.ids[0]))


async def reopen_same_boot(fs: SimFS, run: Run) -> None:
    """Open again without a power cut: exactly the acknowledged appends are there (the failed
    batch was cut off again), and the store takes new appends."""
    async with es.EventStore(STORE, _fs=fs, segment_bytes=4096) as store:
        check_recovered(await committed(store), run.attempts, exact=True)
        await append_more(store, run, 3)


async def reads_still_work(store: es.EventStore, run: Run) -> None:
    """The ``after`` hook of the workload: if the store failed, reads of committed events
    still work and show exactly the acknowledged appends, and appends keep failing."""
    failures = [a.outcome for a in run.attempts if isinstance(a.outcome, es.StoreFailed)]
    if not failures:
        return
    check_recovered(await committed(store), run.attempts, exact=True)
    with pytest.raises(es.StoreFailed):
        await store.append("late", Note(text="late"))


async def test_a_fault_at_every_operation() -> None:
    """Every counted operation of the workload, in turn, fails: with its natural error
    (ENOSPC for writes and creates, EIO for syncs and the rest), and every write also as a
    short write. Then three ways on: a power cut right away (each loss mode), and a reopen in
    the same boot, more appends, then a power cut."""
    reference = SimFS(0)
    await run_workload(reference, appends=APPENDS)
    trace = reference.trace
    points = [(k, False) for k in range(len(trace))]
    points += [(k, True) for k, op in enumerate(trace) if op.startswith("pwrite")]
    failed_batches = 0
    for n, (k, short) in enumerate(points):
        fs = SimFS(k)
        fault = fs.inject(Fault(at=k, short=short))
        run = await run_workload(fs, appends=APPENDS, after=reads_still_work)
        assert fault.hits == 1
        failures = [a for a in run.attempts if isinstance(a.outcome, es.StoreFailed)]
        if run.opened and failures:
            failed_batches += 1
            first = failures[0].outcome
            assert isinstance(first, es.StoreFailed) and isinstance(first.__cause__, OSError)
            expected = errno.ENOSPC if short or trace[k].startswith(("pwrite", "create")) else 5
            assert first.__cause__.errno == expected
        assert not any(a.outcome is None for a in run.attempts), "an append never returned"
        mode = LOSS_MODES[n % 3]
        crashed = fs.clone()
        crashed.power_cut(mode, random.Random(k))
        # A failed write never reached the disk; a failed fsync may have written some or all
        # of the batch before it failed, and the clean-up cut was not synced: then the batch
        # is all or nothing after a power cut, like any unacknowledged write.
        never_synced = trace[k].split()[0] != "sync" or short
        await reopen_and_check(
            crashed, run, exact=mode == "kept" or (mode == "lost" and never_synced)
        )
        await reopen_same_boot(fs, run)
        fs.power_cut(LOSS_MODES[(n + 1) % 3], random.Random(-k))
        await reopen_and_check(fs, run, exact=True)
    assert failed_batches > len(trace) // 2


@pytest.mark.parametrize("short", [False, True], ids=["enospc", "short-write"])
async def test_enospc_fails_the_batch_and_every_later_append(short: bool) -> None:
    fs = SimFS(1)
    run = Run()
    async with es.EventStore(STORE, _fs=fs) as store:
        await append_more(store, run, 5, "s")
        fs.inject(Fault(op="pwrite", errno=errno.ENOSPC, short=short))
        batch = [Attempt("t", [uuid.uuid4()], [f"t/{i}"], es.ANY) for i in range(10)]
        run.attempts += batch
        outcomes = await asyncio.gather(
            *(store.append(a.stream, note(a.texts[0], a.ids[0])) for a in batch),
            return_exceptions=True,
        )
        for a, out in zip(batch, outcomes, strict=True):
            a.outcome = out
            assert isinstance(out, es.StoreFailed), out  # never a success
            assert isinstance(out.__cause__, OSError) and out.__cause__.errno == errno.ENOSPC
        with pytest.raises(es.StoreFailed):
            await store.append("s", Note(text="later"))
        assert store.head == 4  # reads of what was committed keep working
        check_recovered(await committed(store), run.attempts, exact=True)
    for mode in ("lost", "kept"):  # the process dies: nothing of the failed batch
        crashed = fs.clone()
        crashed.power_cut(mode)
        await reopen_and_check(crashed, run, exact=True)
    await reopen_same_boot(fs, run)  # nothing of it without a power cut either


async def test_short_write_then_crash_before_the_cleanup_is_a_torn_tail() -> None:
    """The process dies between the short write and cutting it off again: the partial frame
    is a torn tail, cut on open; nothing of the batch is visible."""
    fs = SimFS(2)
    run = Run()
    async with es.EventStore(STORE, _fs=fs) as store:
        await append_more(store, run, 5, "s")
        fs.inject(Fault(op="pwrite", short=True))
        fs.cut_after(1)  # the truncate that would clean up
        a = Attempt("t", [uuid.uuid4()], ["t"], es.ANY)
        run.attempts.append(a)
        with pytest.raises(es.StoreFailed):
            await store.append("t", note("t", a.ids[0]))
        a.outcome = es.StoreFailed("power cut")
    fs.process_crash()
    store = await reopen_and_check(fs, run, exact=True)
    assert store.recovery is not None and store.recovery.cut_path is not None


@pytest.mark.parametrize("sync_error", ["doom", "keep"])
async def test_fsync_eio_fails_stop_and_reopen_keeps_every_ack(sync_error: str) -> None:
    """After an fsync error ("doom": Linux keeps the failed pages readable but never writes
    them; "keep": they stay dirty) the store fails stop, reads keep working, and a reopen in
    the same boot neither shows the failed batch nor builds on it: after more appends and a
    power cut, every acknowledged append is there and the log is not corrupt.

    Regression: before ``Log.write`` cut a failed batch off again, the reopen took the
    never-durable batch for committed data, appended after it, and the power cut left a hole
    in the middle of the log (CorruptLog, acknowledged appends unreadable).
    """
    fs = SimFS(3, sync_error="doom" if sync_error == "doom" else "keep")
    run = Run()
    async with es.EventStore(STORE, _fs=fs) as store:
        await append_more(store, run, 5, "s")
        fs.inject(Fault(op="sync", errno=errno.EIO))
        a = Attempt("t", [uuid.uuid4(), uuid.uuid4()], ["t0", "t1"], es.ANY)
        run.attempts.append(a)
        with pytest.raises(es.StoreFailed) as info:
            await store.append("t", [note(x, i) for x, i in zip(a.texts, a.ids, strict=True)])
        a.outcome = info.value
        assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == 5
        with pytest.raises(es.StoreFailed):
            await store.append("s", Note(text="later"))
        assert [r.position for r in await committed(store)] == [0, 1, 2, 3, 4]
    await reopen_same_boot(fs, run)
    fs.power_cut("lost")
    await reopen_and_check(fs, run, exact=True)


@pytest.mark.parametrize("failing", ["sync", "create", "pwrite", "sync_dir"])
async def test_failure_while_rotating_fails_the_batch_and_recovers(failing: str) -> None:
    """The steps of a rotation: sync the old segment, create the new one, write and sync its
    header, sync the directory. Each may fail: the batch's producers get StoreFailed (once,
    before ``Log.path`` knew planned segments, they waited forever: the commit task died of
    an IndexError while failing the batch), and every acknowledged append survives a reopen
    in the same boot followed by more appends and a power cut (once, a header whose sync
    failed was trusted by the reopen, and a directory sync that failed was never redone)."""
    fs = SimFS(4)
    run = Run()
    segment = f"{STORE}/{0:020d}.seg"
    async with es.EventStore(STORE, _fs=fs, segment_bytes=4096) as store:
        while len(fs.read_file(segment)) < 3000:  # the next 1.5 KiB write must rotate
            await append_more(store, run, 1, "s")
        head = store.head
        n_ops = len(fs.trace)
        fault = fs.inject(Fault(op=failing, path=".seg" if failing != "sync_dir" else None))
        a = Attempt("big", [uuid.uuid4() for _ in range(8)], [f"b{i}" for i in range(8)], es.ANY)
        run.attempts.append(a)
        events = [note(x, i) for x, i in zip(a.texts, a.ids, strict=True)]
        with pytest.raises(es.StoreFailed):
            await asyncio.wait_for(store.append("big", events), 30)
        a.outcome = es.StoreFailed("failed")
        assert fault.hits == 1
        assert fs.trace[n_ops] == f"sync {0:020d}.seg"  # a rotation began
        assert f"pwrite {0:020d}.seg" not in fs.trace[n_ops:]  # nothing of the batch written
        assert store.head == head
    for mode in LOSS_MODES:
        crashed = fs.clone()
        crashed.power_cut(mode)
        await reopen_and_check(crashed, run, exact=mode != "torn")
    await reopen_same_boot(fs, run)
    fs.power_cut("lost")
    await reopen_and_check(fs, run, exact=True)


async def test_a_failed_header_sync_of_a_new_store_leaves_no_segment_behind() -> None:
    """The first open of a new store: the sync of its first segment's header fails (the page
    stays readable, never written) and the open fails. The segment file is removed again, so
    the next open in the same boot does not take that header for a good one and append
    after it: after a power cut every acknowledged append is there (no "bad segment header"
    in front of them)."""
    fs = SimFS(0)
    fs.inject(Fault(op="sync", path=".seg", errno=errno.EIO, written_back=0))
    with pytest.raises(OSError):
        await es.EventStore(STORE, _fs=fs).open()
    fs.process_crash()
    async with es.EventStore(STORE, _fs=fs) as store:
        acked = [await store.append("a", Note(text=f"a{i}")) for i in range(3)]
    fs.power_cut("lost")
    async with es.EventStore(STORE, _fs=fs) as store:
        assert [r.position async for r in store.read_all()] == [a.position for a in acked]


@pytest.mark.parametrize("how", ["killed before the clean-up", "clean-up failed"])
@pytest.mark.parametrize("compression", ["none", "zstd"])
async def test_a_failed_header_sync_at_rotation_then_a_reopen_then_a_power_cut(
    how: str, compression: es.Compression
) -> None:
    """A rotation's new segment: its header sync fails (the page stays readable, never
    written), and the file is not removed again (the process is killed first, or the removal
    fails too). A reopen in the same boot takes it for the tail and appends to it: it
    writes the header again before it syncs the tail, so after a power cut every
    acknowledged append is there. (The header was not rewritten: the next open raised
    CorruptLog "bad segment header" and the appends behind it were lost.)"""
    fs = SimFS(3)
    opts = es.StoreOptions(segment_bytes=4096, compression=compression)
    store = await es.EventStore(STORE, opts, _fs=fs).open()
    acked = [await store.append("a", Note(text=f"{i}".ljust(150, "."))) for i in range(12)]
    new_segment: list[str] = []

    def fail_the_new_header(op: str, path: str) -> None:
        if op == "create" and path.endswith(".seg"):
            fs.inject(Fault(op="sync", path=path, written_back=0))
            if how == "clean-up failed":
                fs.inject(Fault(op="remove", path=path))
            new_segment.append(path)
        elif how.startswith("killed") and op == "remove" and new_segment[-1:] == [path]:
            fs.cut_at = fs.ops  # dies right before it removes the new segment

    fs.before_op = fail_the_new_header
    with pytest.raises(es.StoreFailed):
        while True:  # until the rotation (and its failure)
            acked.append(await store.append("a", Note(text="rotating".ljust(150, "."))))
    fs.before_op = None
    with contextlib.suppress(OSError, es.EventStoreError):
        await store.close()
    if how.startswith("killed"):
        fs.process_crash()
    assert any(p.endswith(new_segment[0].rsplit("/", 1)[1]) for p in fs.walk(STORE))
    async with es.EventStore(STORE, opts, _fs=fs) as store:
        acked += [await store.append("a", Note(text=f"after {i}")) for i in range(3)]
    fs.power_cut("lost")
    async with es.EventStore(STORE, opts, _fs=fs) as store:
        got = [r.position async for r in store.read_all()]
    assert got == list(range(len(got))) and got[-1] == acked[-1].position


async def test_os_errors_of_open_and_verify_are_event_store_errors() -> None:
    """An I/O error while opening raises OpenFailed, and one while verifying ReadFailed:
    EventStoreErrors (and OSErrors with the errno and file name), never a bare OSError."""
    fs = SimFS(5)
    async with es.EventStore(STORE, _fs=fs) as store:
        for i in range(5):
            await store.append("s", Note(text=str(i)))
        fs.inject(Fault(op="pread", times=1))
        with pytest.raises(es.ReadFailed) as read:
            await store.verify()
        assert read.value.errno == errno.EIO and read.value.filename
        assert "verifying the store" in str(read.value)
        assert (await store.verify()).ok  # the store goes on
    fs.inject(Fault(op="pread", times=1))
    with pytest.raises(es.OpenFailed) as opening:
        await es.EventStore(STORE, _fs=fs).open()
    assert isinstance(opening.value, OSError) and opening.value.errno == errno.EIO
    assert isinstance(opening.value.__cause__, OSError)
    assert "opening the store at" in str(opening.value)
    async with es.EventStore(STORE, _fs=fs) as store:  # (nothing held: it opens again)
        assert store.head == 4


async def test_power_cut_makes_every_later_call_fail() -> None:
    """The cut is a dead process: the failed batch's producers get StoreFailed, and so does
    every call after it, reads included (there is no machine left to read from)."""
    fs = SimFS(5)
    async with es.EventStore(STORE, _fs=fs) as store:
        await store.append("s", Note(text="a"))
        fs.cut_after(0)
        with pytest.raises(es.StoreFailed) as info:
            await store.append("s", Note(text="b"))
        assert isinstance(info.value.__cause__, PowerCut)
        with pytest.raises(es.ReadFailed) as failed:  # (an EventStoreError, not a bare OSError)
            _ = [r async for r in store.read_all()]
        assert isinstance(failed.value.__cause__, PowerCut)
    fs.reboot("lost")
    async with es.EventStore(STORE, _fs=fs) as store:
        assert [r.position async for r in store.read_all()] == [0]


def test_makedirs_syncs_every_new_directory_into_its_parent(tmp_path: Path) -> None:
    """A new store directory is durable before anything is written in it: a power cut cannot
    take the directory, and every acknowledged append inside it, away (the crash sweep found
    this: ``os.makedirs`` alone syncs nothing). Directories that exist are synced into their
    parents too, best effort, in case an earlier call failed before syncing."""
    synced: list[str] = []

    class Spy(OsFileSystem):
        def sync_dir(self, path: str) -> None:
            synced.append(path)
            super().sync_dir(path)

    Spy().makedirs(str(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b").is_dir()
    assert synced[-2:] == [str(tmp_path), str(tmp_path / "a")]
    synced.clear()
    Spy().makedirs(str(tmp_path / "a" / "b"))
    assert synced[-2:] == [str(tmp_path), str(tmp_path / "a")]
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):  # (a file where a directory should be)
        Spy().makedirs(str(tmp_path / "file"))


async def test_an_fsync_error_whose_cleanup_failed_leaves_no_hole_after_a_reopen() -> None:
    """Cutting the failed batch off fails too (the fsync-error clean-up is best effort): its
    never-durable pages stay readable, and a reopen in the same boot takes them for data
    (an unacknowledged append, kept). It writes them again before it syncs (a sync alone
    would not write them: the failed fsync marked them clean), so appends made after them
    are not left behind a hole by a power cut. (This used to be a documented limit: the
    reopen built on them, and after the power cut the log had a hole there.)"""
    fs = SimFS(3)  # sync_error="doom"
    run = Run()
    async with es.EventStore(STORE, _fs=fs) as store:
        await append_more(store, run, 5, "s")
        fs.inject(Fault(op="sync", written_back=0))
        fs.inject(Fault(op="truncate"))
        with pytest.raises(es.StoreFailed):
            await store.append("t", Note(text="never durable"))
    async with es.EventStore(STORE, _fs=fs) as store:  # same boot: the page cache has it
        assert store.head == 5
        seen = [(r.position, r.id) async for r in store.read_all()]
        after = await store.append("t", Note(text="acknowledged after it"))
    fs.power_cut("lost")
    assert not_corrupt(fs)
    async with es.EventStore(STORE, _fs=fs) as store:
        records = await committed(store)
        assert [(r.position, r.id) for r in records[: len(seen)]] == seen
        assert records[-1].position == after.position
        check_recovered(records[:5], run.attempts, exact=True)


@pytest.mark.parametrize("where", ["close", "rotation"])
async def test_an_fsync_error_with_durability_os_then_a_kill_leaves_no_hole(where: str) -> None:
    """``durability="os"``: a sync at close or at a rotation fails, and with it the batches
    already acknowledged to the OS never reach the disk, though they stay readable. The
    next process (same boot) reads them, writes them again and syncs them before it builds
    on them: after a power cut nothing it read or acknowledged is missing, and the log has
    no hole."""
    fs = SimFS(5)
    opts = {"durability": "os", "segment_bytes": 4096}
    store = await es.EventStore(STORE, _fs=fs, **opts).open()  # type: ignore[arg-type]
    for i in range(5):
        await store.append("a", Note(text=f"os {i}".ljust(100, ".")))
    fs.inject(Fault(op="sync", path=".seg", written_back=0))
    if where == "rotation":
        with pytest.raises(es.StoreFailed):
            for i in range(100):  # until a rotation's sync of the old segment fails
                await store.append("a", Note(text=f"more {i}".ljust(100, ".")))
    with contextlib.suppress(es.StoreFailed):  # (the close's sync fails, or the store has)
        await store.close()
    fs.process_crash()
    async with es.EventStore(STORE, _fs=fs, segment_bytes=4096) as again:
        seen = [(r.position, r.id) async for r in again.read_all()]
        assert len(seen) >= 5
        acked = [await again.append("b", Note(text=f"b {i}")) for i in range(3)]
    fs.power_cut("lost")
    assert not_corrupt(fs)
    async with es.EventStore(STORE, _fs=fs) as store:
        records = await committed(store)
    assert [(r.position, r.id) for r in records[: len(seen)]] == seen
    assert [(r.stream, r.position) for r in records[len(seen) :]] == [
        ("b", a.position) for a in acked
    ]


async def test_an_open_whose_sync_fails_after_a_kill_leaves_no_hole() -> None:
    """A kill between a batch's write and its sync, then an open whose sync of those bytes
    fails (the open fails, the pages stay readable and are never written), then another
    open in the same boot: it writes them again before it syncs, so what it reads and
    appends survives a power cut."""
    fs = SimFS(6)
    store = await es.EventStore(STORE, _fs=fs).open()
    await store.append("a", Note(text="durable"))

    def kill_at_the_segment_sync(op: str, path: str) -> None:
        if op == "sync" and path.endswith(".seg"):
            fs.cut_at = fs.ops

    fs.before_op = kill_at_the_segment_sync
    with pytest.raises(es.EventStoreError):
        await store.append("a", Note(text="written, never synced"))
    fs.before_op = None
    fs.process_crash()
    with contextlib.suppress(OSError, es.EventStoreError):  # (its handles died with it)
        await store.close()
    fs.inject(Fault(op="sync", path=".seg", written_back=0))
    with pytest.raises(OSError):
        await es.EventStore(STORE, _fs=fs).open()
    fs.process_crash()
    async with es.EventStore(STORE, _fs=fs) as again:
        seen = [(r.position, r.id) async for r in again.read_all()]
        assert len(seen) == 2
        acked = await again.append("a", Note(text="after"))
    fs.power_cut("lost")
    assert not_corrupt(fs)
    async with es.EventStore(STORE, _fs=fs) as store:
        records = await committed(store)
    assert [(r.position, r.id) for r in records] == [*seen, (acked.position, records[-1].id)]


async def test_producers_answered_after_the_next_write_is_taken_keep_their_success() -> None:
    """A large batch's producers are answered in two halves, the second once the I/O thread
    takes the next batch's write (``CommitLoop._run``). Their batch is durable: when that
    next write fails, they still get success (never StoreFailed), and a reopen has them."""
    fs = SimFS(4)
    injected = False

    async def producer(store: es.EventStore, i: int) -> tuple[object, object]:
        nonlocal injected
        first = await store.append(f"s{i}", Note(text=f"first {i}"))
        if not injected:  # the first producer answered: the next sync fails
            fs.inject(Fault(op="sync", errno=errno.EIO))
            injected = True
        try:
            second: object = await store.append(f"s{i}", Note(text=f"second {i}"))
        except es.StoreFailed as exc:
            second = exc
        return first, second

    n = 128  # one batch (every producer queues before the commit loop runs), split in two
    async with es.EventStore(STORE, _fs=fs) as store:
        results = await asyncio.gather(*(producer(store, i) for i in range(n)))
        assert store.statistics().batches == 1
    firsts = [f for f, _ in results]
    assert all(isinstance(f, es.AppendResult) for f in firsts)
    assert sorted(f.position for f in firsts if isinstance(f, es.AppendResult)) == list(range(n))
    assert all(isinstance(s, es.StoreFailed) for _, s in results)
    async with es.EventStore(STORE, _fs=fs) as store:
        texts = [r.data.text async for r in store.read_all() if isinstance(r.data, Note)]
    assert sorted(texts) == sorted(f"first {i}" for i in range(n))


async def test_a_failed_maintenance_sync_with_durability_os_stops_the_store() -> None:
    """durability="os": the sync a scavenge makes before it removes anything fails. The
    store stops: the scavenge and an append whose batch was handed to the I/O thread right
    behind that sync get StoreFailed (it used to be answered, and shown by reads, on a
    stopped store), and so does every later append."""
    fs = SimFS(7)
    opts = es.StoreOptions(segment_bytes=1 << 20, durability="os")
    store = await es.EventStore(STORE, opts, _fs=fs).open()
    for i in range(5):
        await store.append("a", Note(text=f"os {i}"))
    loop = asyncio.get_running_loop()
    late: list[asyncio.Future[es.AppendResult]] = []

    def fail_the_sync(op: str, path: str) -> None:
        if op == "sync" and path.endswith(".seg") and not late:
            fs.inject(Fault(op="sync", path=path, written_back=0))
            append = store.append("late", Note(text="x"))
            loop.call_soon_threadsafe(lambda: late.append(asyncio.ensure_future(append)))
            time.sleep(0.3)  # its batch is handed to the I/O thread behind this sync

    fs.before_op = fail_the_sync
    with pytest.raises(es.StoreFailed):
        await store.scavenge()
    fs.before_op = None
    with pytest.raises(es.StoreFailed):
        await late[0]
    assert [r.stream async for r in store.read_all()] == ["a"] * 5
    with pytest.raises(es.StoreFailed):
        await store.append("later", Note(text="y"))
    with pytest.raises(es.StoreFailed, match="may not be durable"):
        await store.close()  # what was acknowledged since the last good sync may be lost
    await store.close()  # (a later close returns quietly)
    # The append told StoreFailed was never written: a reopen in the same boot does not show
    # it (its batch was written after the failed sync, and nothing cut it off again), so
    # the caller's retry does not make it twice.
    async with es.EventStore(STORE, opts, _fs=fs) as again:
        assert [r.stream async for r in again.read_all()] == ["a"] * 5
        await again.append("late", Note(text="x"))
    fs.power_cut("lost")
    async with es.EventStore(STORE, opts, _fs=fs) as again:
        assert [r.stream async for r in again.read_all()] == ["a"] * 5 + ["late"]


async def test_close_during_a_failing_maintenance_sync_loses_no_acknowledged_append() -> None:
    """durability="os": ``close`` cancels a scavenge while the sync it made before removing
    anything fails. ``close`` then raises StoreFailed (a later sync succeeds without writing
    what the failed one left: it must not be believed, nor the tail's index sidecar written
    after it), and after a reopen in the same boot and a power cut every acknowledged append
    is there. (The failure was dropped with the cancelled scavenge: close returned, and the
    open after the power cut raised CorruptLog.)"""
    fs = SimFS(7)
    opts = es.StoreOptions(segment_bytes=1 << 20, durability="os")
    async with es.EventStore(STORE, opts, _fs=fs) as store:
        for i in range(5):
            await store.append("a", Note(text=f"durable {i}"))
    store = await es.EventStore(STORE, opts, _fs=fs).open()
    acked = [await store.append("a", Note(text=f"os {i}")) for i in range(20)]
    loop = asyncio.get_running_loop()
    closing: list[asyncio.Future[None]] = []

    def fail_the_sync_and_close(op: str, path: str) -> None:
        if op == "sync" and path.endswith(".seg") and not closing:
            fs.inject(Fault(op="sync", path=path, written_back=0))
            loop.call_soon_threadsafe(lambda: closing.append(asyncio.ensure_future(store.close())))
            time.sleep(0.3)  # close cancels the scavenge meanwhile

    fs.before_op = fail_the_sync_and_close
    scavenge = store.start_scavenge()
    with contextlib.suppress(asyncio.CancelledError, es.EventStoreError):
        await scavenge
    while not closing:
        await asyncio.sleep(0.01)
    fs.before_op = None
    with pytest.raises(es.StoreFailed, match="syncing the log failed"):
        await closing[0]
    async with es.EventStore(STORE, opts, _fs=fs) as again:  # the same boot
        await again.append("b", Note(text="after the reopen"))
    fs.power_cut("lost")
    async with es.EventStore(STORE, opts, _fs=fs) as again:
        got = [r.position async for r in again.read_all()]
    assert got == list(range(len(got))) and acked[-1].position in got


async def test_close_says_so_when_a_background_retention_sync_failed() -> None:
    """durability="os": the retention run a rotation starts in the background fails at the
    sync it makes first. No caller was told (every append had returned), so ``close``
    raises StoreFailed: what was acknowledged since the last good sync may not be durable
    (it returned quietly, and a power cut then lost an acknowledged append)."""
    import traceback

    fs = SimFS(3)
    opts = es.StoreOptions(segment_bytes=4096, durability="os", retention_bytes=10000)
    failed: list[str] = []

    def fail_the_maintenance_sync(op: str, path: str) -> None:
        if op != "sync" or not path.endswith(".seg") or failed:
            return
        callers = {frame.name for frame in traceback.extract_stack()}
        if not callers & {"write", "_create"}:  # Log.sync, for the retention run
            failed.append(path)
            fs.inject(Fault(op="sync", path=path, written_back=0))

    store = await es.EventStore(STORE, opts, _fs=fs).open()
    fs.before_op = fail_the_maintenance_sync
    for i in range(120):
        await store.append(f"s{i % 3}", Note(text=f"{i}".ljust(100, ".")))
        await asyncio.sleep(0.01)
        if failed:
            break
    for _ in range(100):  # the background run fails
        if store.statistics().failed:
            break
        await asyncio.sleep(0.01)
    fs.before_op = None
    assert failed and store.statistics().failed
    with pytest.raises(es.StoreFailed, match="may not be durable"):
        await store.close()
