"""Open, close, the directory lock, fail-stop after a write or sync error."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import aioeventstore as es
from tests.helpers import FaultyFileSystem, Note


async def test_close_commits_what_is_queued(store_path: Path) -> None:
    fs = FaultyFileSystem()
    store = await es.EventStore(store_path, _fs=fs).open()
    fs.faults.gate = threading.Event()
    tasks = [asyncio.create_task(store.append("s", Note(text=str(i)))) for i in range(50)]
    await asyncio.sleep(0)
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)
    with pytest.raises(es.StoreClosed):
        await store.append("s", Note(text="late"))
    fs.faults.gate.set()
    await closing
    results = await asyncio.gather(*tasks)
    assert sorted(r.position for r in results) == list(range(50))
    async with es.EventStore(store_path) as again:
        assert again.head == 49


async def test_use_outside_open_raises_store_closed(store_path: Path) -> None:
    store = es.EventStore(store_path)
    with pytest.raises(es.StoreClosed, match="is new"):
        await store.append("s", Note(text="x"))
    async with store:
        await store.append("s", Note(text="x"))
        reader = store.read_all()
        assert (await anext(reader)).position == 0
    await store.close()  # idempotent
    with pytest.raises(es.StoreClosed):
        await store.append("s", Note(text="y"))
    with pytest.raises(es.StoreClosed):
        _ = [r async for r in store.read_stream("s")]
    with pytest.raises(es.StoreClosed):
        await anext(reader)
    with pytest.raises(es.StoreClosed, match="was closed; create a new EventStore"):
        await store.open()
    never = es.EventStore(store_path)
    await never.close()  # (it said "was already opened")
    with pytest.raises(es.StoreClosed, match="was closed; create a new EventStore"):
        await never.open()


def test_poll_interval_must_be_a_positive_finite_number(store_path: Path) -> None:
    with pytest.raises(TypeError, match="poll_interval must be a number of seconds, not 'x'"):
        es.EventStore(store_path, read_only=True, poll_interval="x")  # type: ignore[arg-type]
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="poll_interval must be > 0 seconds and finite"):
            es.EventStore(store_path, read_only=True, poll_interval=bad)


async def test_second_writer_in_this_process_is_locked_out(store_path: Path) -> None:
    async with es.EventStore(store_path):
        with pytest.raises(es.StoreLocked, match="already open"):
            await es.EventStore(store_path).open()
    async with es.EventStore(store_path) as again:  # released on close
        assert again.head == -1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
async def test_a_forked_child_closing_its_copy_keeps_the_parents_lock(store_path: Path) -> None:
    """A child forked from a process that has a store open shares its lock file's open file
    description: the child's close used to unlock it (flock), and a second writer could then
    open the directory while the parent went on writing."""
    async with es.EventStore(store_path) as store:
        await store.append("s", Note(text="before the fork"))
        pid = os.fork()
        if pid == 0:  # the child: close its copy as a finally or atexit would, then leave
            code = 0
            try:
                import signal

                signal.alarm(10)  # (never hang the suite)
                with contextlib.suppress(Exception):
                    asyncio.run(store.close())  # (another loop: it raises, its finally runs)
            except BaseException:
                code = 1
            os._exit(code)
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with pytest.raises(es.StoreLocked, match="already open"):
            await es.EventStore(store_path).open()
        assert (await store.append("s", Note(text="after"))).version == 1
    async with es.EventStore(store_path) as again:  # released by the parent's close
        assert again.head == 1


async def test_second_writer_in_another_process_is_locked_out(store_path: Path) -> None:
    script = (
        "import asyncio, sys, aioeventstore as es\n"
        "async def main():\n"
        "    try:\n"
        "        async with es.EventStore(sys.argv[1]):\n"
        "            print('opened')\n"
        "    except es.StoreLocked as exc:\n"
        "        print('locked:', exc)\n"
        "asyncio.run(main())\n"
    )
    async with es.EventStore(store_path):
        out = subprocess.run(
            [sys.executable, "-c", script, str(store_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert out.stdout.startswith("locked:"), out.stdout + out.stderr
    out = subprocess.run(
        [sys.executable, "-c", script, str(store_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "opened"


@pytest.mark.parametrize("fault", ["sync", "write", "short"])
async def test_write_or_sync_error_fails_stop(store_path: Path, fault: str) -> None:
    fs = FaultyFileSystem()
    async with es.EventStore(store_path, _fs=fs) as store:
        for i in range(5):
            await store.append("s", Note(text=str(i)))
        fs.faults.gate = threading.Event()
        blocked = asyncio.create_task(store.append("s", Note(text="in flight")))
        await asyncio.sleep(0)
        queued = [asyncio.create_task(store.append("t", Note(text=str(i)))) for i in range(10)]
        await asyncio.sleep(0)
        if fault == "sync":
            fs.faults.fail_sync = OSError(errno.EIO, "Input/output error")
        elif fault == "write":
            fs.faults.fail_write = OSError(errno.ENOSPC, "No space left on device")
        else:
            fs.faults.short_write = True
        fs.faults.gate.set()
        with pytest.raises(es.StoreFailed, match="writing the log failed") as info:
            await blocked
        assert isinstance(info.value.__cause__, OSError)
        for t in queued:  # the next batch, queued behind the failure, fails too
            with pytest.raises(es.StoreFailed):
                await t
        with pytest.raises(es.StoreFailed):
            await store.append("s", Note(text="later"))
        # reads of what was durable keep working
        assert store.head == 4
        assert [r.version async for r in store.read_stream("s")] == [0, 1, 2, 3, 4]
    # reopening recovers every acknowledged event, and nothing of the failed batch: its bytes
    # were cut off again (after an fsync error they may be readable but never reach the disk)
    async with es.EventStore(store_path) as store:
        texts = [r.data.text async for r in store.read_stream("s") if isinstance(r.data, Note)]
        assert texts == ["0", "1", "2", "3", "4"]
        assert [r.stream async for r in store.read_all()] == ["s"] * 5
        r = await store.append("s", Note(text="again"))
        assert r.version == len(texts)


@pytest.mark.parametrize("memory", [False, True])
async def test_close_while_opening_leaves_it_closed_and_lets_go(
    store_path: Path, memory: bool
) -> None:
    """close() before open() finished: the open raises StoreClosed, the store stays closed
    (it used to turn "open" again, half dead, with its lock released), and the directory
    can be opened again."""
    if not memory:
        async with es.EventStore(store_path) as store:
            await store.append("s", Note(text="x"))
    store = es.EventStore.memory() if memory else es.EventStore(store_path)
    opening = asyncio.ensure_future(store.open())
    await asyncio.sleep(0)  # the open is under way
    await store.close()
    with pytest.raises(es.StoreClosed, match="closed while it was being opened"):
        await opening
    with pytest.raises(es.StoreClosed):
        await store.append("s", Note(text="y"))
    with pytest.raises(es.StoreClosed):
        _ = [r async for r in store.read_all()]
    if not memory:
        async with es.EventStore(store_path) as again:  # the lock was let go
            assert again.head == 0


async def test_close_while_a_failed_open_cleans_up_waits_for_it(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open that failed (damage) is cleaning up when close() is called: close() returns
    once the lock is let go (it returned at once, and a reopen met StoreLocked)."""
    async with es.EventStore(store_path, segment_bytes=4096) as store:
        for i in range(60):
            await store.append("s", Note(text=f"{i}".ljust(200)))
    for sidecar in store_path.glob("*.idx"):
        sidecar.unlink()
    first = sorted(store_path.glob("*.seg"))[0]
    with open(first, "r+b") as f:
        f.truncate(first.stat().st_size - 5)  # damage before the last segment
    release = es.EventStore._release_blocking

    def slow_release(self: es.EventStore) -> None:
        time.sleep(0.2)
        release(self)

    monkeypatch.setattr(es.EventStore, "_release_blocking", slow_release)
    store = es.EventStore(store_path, segment_bytes=4096)
    opening = asyncio.ensure_future(store.open())
    while not opening.done() and store._state != "closed":  # (the open failed: cleaning up)
        await asyncio.sleep(0.001)
    assert not opening.done()
    await store.close()
    with pytest.raises(es.CorruptLog):  # not StoreLocked: the lock was let go
        await es.EventStore(store_path, segment_bytes=4096).open()
    with pytest.raises(es.CorruptLog):
        await opening


@pytest.mark.parametrize("run", ["scavenge", "enforce_retention"])
async def test_a_maintenance_run_stopped_by_close_raises_store_closed(
    store_path: Path, run: str
) -> None:
    """Awaiting scavenge() or enforce_retention() while the store closes: StoreClosed, as
    every other call in flight gets, not a CancelledError in a task nobody cancelled."""
    async with es.EventStore(store_path, segment_bytes=8192, retention_bytes=20000) as store:
        for i in range(40):
            await store.append(f"s{i % 3}", [Note(text=f"{i}-{k}".ljust(300)) for k in range(20)])
        await store.set_stream_metadata("s1", max_count=1)
        task = asyncio.ensure_future(getattr(store, run)())
        await asyncio.sleep(0)  # the run has started
        await store.close()
        with pytest.raises(es.StoreClosed, match="closed while the maintenance run went on"):
            await task


async def test_a_file_where_the_store_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    for path in (tmp_path / "a_file", tmp_path / "a_file" / "sub"):
        with pytest.raises(es.OpenFailed, match="Not a directory") as info:
            await es.EventStore(path).open()
        assert info.value.errno == errno.ENOTDIR


async def test_store_left_open_warns(store_path: Path) -> None:
    store = await es.EventStore(store_path).open()
    await store.append("s", Note(text="x"))
    with pytest.warns(ResourceWarning, match="never closed"):
        store.__del__()
    await store.close()
    del store
    gc.collect()


async def test_durability_os_round_trip(store_path: Path) -> None:
    async with es.EventStore(store_path, durability="os") as store:
        await asyncio.gather(*(store.append(f"s{i % 3}", Note(text=str(i))) for i in range(100)))
        assert store.statistics().syncs == 0
    async with es.EventStore(store_path) as store:
        assert store.head == 99


async def test_a_failed_open_leaves_no_thread_behind(store_path: Path) -> None:
    """An open that fails (here: the directory is locked by another store; the same holds for
    a damaged log) releases what it started, as close does: no I/O thread stays behind."""

    def ours() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("aioeventstore")]

    initial = sorted(ours())  # (stores other tests left open keep theirs)
    async with es.EventStore(store_path) as first:
        await first.append("s", Note(text="x"))
        before = sorted(ours())
        for _ in range(3):
            with pytest.raises(es.StoreLocked):
                await es.EventStore(store_path).open()
        assert sorted(ours()) == before
    assert sorted(ours()) == initial


def store_threads() -> set[threading.Thread]:
    """The store threads running in this process (compare with the set before a test: one
    that went wrong earlier in the process may have left some behind)."""
    return {t for t in threading.enumerate() if t.name.startswith("aioeventstore")}


async def test_a_cancelled_close_still_commits_what_was_queued_and_lets_go(
    store_path: Path,
) -> None:
    """The task calling ``close`` is cancelled while the commit loop works through what was
    queued: the closing goes on in the store's own task, every queued append is committed
    (none fails with StoreFailed), nothing is logged as an error, and a later ``close``
    returns once the threads are gone and the lock released."""
    before = store_threads()
    store = await es.EventStore(store_path, max_queue_bytes=2000, max_batch_bytes=2000).open()
    outcomes: list[str] = []

    async def produce(i: int) -> None:
        try:
            await store.append("s", Note(text=str(i)))
            outcomes.append("ok")
        except es.EventStoreError as exc:
            outcomes.append(type(exc).__name__)

    producers = [asyncio.create_task(produce(i)) for i in range(200)]
    await asyncio.sleep(0)
    closer = asyncio.create_task(store.close())
    await asyncio.sleep(0)  # close() is waiting for the commit loop
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    await asyncio.gather(*producers)
    await store.close()
    assert store_threads() <= before
    assert outcomes.count("ok") + outcomes.count("StoreClosed") == 200
    async with es.EventStore(store_path) as again:  # (the lock was released)
        assert again.head + 1 == outcomes.count("ok") > 0


async def test_a_second_close_waits_for_the_first(store_path: Path) -> None:
    """``close`` while another ``close`` is running returns only once the store is closed:
    no store thread left, the lock released."""
    before = store_threads()
    store = await es.EventStore(store_path).open()
    await store.append("s", Note(text="x"))
    first = asyncio.create_task(store.close())
    await asyncio.sleep(0)
    await store.close()
    assert first.done() and store_threads() <= before
    async with es.EventStore(store_path) as again:
        assert again.head == 0
    await first


async def test_close_while_a_scavenge_waits_for_an_index_sidecar_export(
    store_path: Path,
) -> None:
    """``close`` stops a scavenge that waits for an index sidecar export (the disk slow):
    the export is not cancelled with it, close returns normally, no store thread is left,
    and the store opens again (its lock released)."""
    before = store_threads()
    fs = FaultyFileSystem()
    store = await es.EventStore(store_path, _fs=fs, segment_bytes=4096).open()
    for _ in range(15):  # fills the first segment
        await store.append("a", Note(text="x" * 200))
    gate = threading.Event()
    fs.faults.gate = gate  # the next write waits: a slow disk
    rotating = asyncio.create_task(store.append("a", Note(text="y" * 3000)))  # export queued
    await asyncio.sleep(0.05)
    scavenge = store.start_scavenge()  # waits for that export
    await asyncio.sleep(0.05)
    threading.Timer(0.3, gate.set).start()  # the disk comes back
    await store.close()
    fs.faults.gate = None
    await asyncio.gather(rotating, scavenge, return_exceptions=True)
    assert store_threads() <= before
    async with es.EventStore(store_path) as again:
        assert again.head == 15


async def test_a_failed_sync_on_close_raises_store_failed_and_still_lets_go() -> None:
    """``durability="os"``: ``close`` syncs what was acknowledged; when that sync fails it
    raises StoreFailed (the OS error as its cause, never a bare OSError), and the store is
    closed all the same: no thread left, the lock released."""
    from tests.simfs import Fault, SimFS

    before = store_threads()
    fs = SimFS(1)
    store = await es.EventStore("/sim/store", _fs=fs, durability="os").open()
    await store.append("s", Note(text="x"))
    fs.inject(Fault(op="sync", path=".seg", errno=errno.EIO))
    with pytest.raises(es.StoreFailed, match="syncing the log failed") as info:
        await store.close()
    assert isinstance(info.value.__cause__, OSError)
    await store.close()  # closed already: quietly (as ``async with`` would close it again)
    assert store_threads() <= before
    async with es.EventStore("/sim/store", _fs=fs) as again:
        assert again.head == 0


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts open files in /proc")
async def test_close_during_a_scavenge_closes_the_segment_it_had_just_rewritten(
    store_path: Path,
) -> None:
    """``close`` stops a scavenge that has rewritten a segment and waits (for an index
    sidecar export) before it swaps it in: the rewritten file is closed, not leaked, and
    the next open reads it."""
    store = await es.EventStore(store_path, segment_bytes=4096).open()
    for i in range(60):
        await store.append(f"s-{i % 2}", Note(text="x" * 200))
    await store.delete_stream("s-0")
    real = store._sidecars.wait_idle
    calls = 0
    stuck = asyncio.Event()

    async def slow_after_the_first_rewrite() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the wait between the first segment's rewrite and its swap
            stuck.set()
            await asyncio.Event().wait()  # until close cancels the scavenge
        await real()

    store._sidecars.wait_idle = slow_after_the_first_rewrite  # type: ignore[method-assign]
    scavenge = store.start_scavenge()
    await asyncio.wait_for(stuck.wait(), 10)
    await store.close()
    with pytest.raises(es.StoreClosed, match="closed while the maintenance run went on"):
        await scavenge  # (a CancelledError in a task nobody cancelled, before)
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # (the listing's own descriptor is gone)
            if (target := os.readlink(fd)).startswith(str(store_path)):
                held.append(target)
    assert held == []
    async with es.EventStore(store_path) as again:
        assert [r.version async for r in again.read_stream("s-1")] == list(range(30))
        assert [r async for r in again.read_stream("s-0")] == []
        assert (await again.verify()).ok
