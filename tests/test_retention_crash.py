"""Cut the power at every file operation of a scavenge and of a retention run, then recover.

A store on the simulated file system (tests/simfs.py) is filled with many small segments and
half of its streams deleted (soft and hard), one stream truncated, one capped by max_count.
Then each test runs the maintenance job once without a cut to learn its operations, and again
once per operation ``k`` with the power cut just before ``k``, per loss mode. After every cut
the image must verify without corruption, open, show exactly the visible events it showed
before (no visible event lost, no hidden one back; after a retention run cut short, a suffix
of them), keep every stream's version, checkpoint and metadata, and accept appends; a
further scavenge after the crash finishes the job. The job runs with either durability:
with "os", what a retention run carries forward must be synced before it removes what that
replaces (for a scavenge, whose sweep starts from a synced image, the test of a checkpoint
saved with "os" just before it covers that).
"""

from __future__ import annotations

import contextlib
import random

import pytest

import aioeventstore as es
from aioeventstore._verify import verify_store
from tests.helpers import Note
from tests.simfs import LOSS_MODES, LossMode, SimFS

STORE = "/sim/store"
OPTS = es.StoreOptions(segment_bytes=4096)
Row = tuple[str, int, int, str]


async def visible(store: es.EventStore) -> list[Row]:
    return [
        (r.stream, r.version, r.position, r.data.text)  # type: ignore[union-attr]
        async for r in store.read_all()
    ]


async def base_image() -> tuple[SimFS, list[Row], dict[str, int]]:
    """The store before any maintenance: its visible events and each stream's last version."""
    fs = SimFS(1)
    async with es.EventStore(STORE, OPTS, _fs=fs) as store:
        await store.append("early", [Note(text=str(i)) for i in range(3)])  # oldest only
        for v in range(12):
            if v == 2:  # in an old segment: retention must carry these forward
                await store.set_stream_metadata("s-6", max_count=2)
                await store.save_checkpoint("worker", 20)
            for s in range(8):
                await store.append(f"s-{s}", Note(text=f"{s}:{v}".ljust(60, ".")))
            # a stream that ends here: a retention run cut short must not hide it
            await store.append(f"only-{v}", Note(text=f"only {v}".ljust(60, ".")))
        await store.delete_stream("s-0")
        await store.delete_stream("s-2", hard=True)
        await store.delete_stream("s-4")
        await store.set_stream_metadata("s-5", truncate_before=7)
        await store.append("s-4", Note(text="recreated"))  # continues at version 12
        rows = await visible(store)
        names = ["early"] + [f"s-{s}" for s in range(8)] + [f"only-{v}" for v in range(12)]
        last = {name: store._index.last_version(name) for name in names}
    return fs, rows, last


async def check(fs: SimFS, rows: list[Row], last: dict[str, int], retained: bool) -> None:
    report = verify_store(STORE, fs, OPTS)
    assert not report.corrupt, report.first_problem
    async with es.EventStore(STORE, OPTS, _fs=fs) as store:
        got = await visible(store)
        if retained:
            # Retention drops a prefix of the log, a segment at a time: what stays visible
            # is what the remaining segments hold, but for streams that end in the oldest
            # one (a cut between the floor recorded for them and that segment's removal
            # hides them: the next run removes it). They used to be hidden for every segment
            # the run meant to drop.
            firsts = sorted(
                int(p.rsplit("/", 1)[1][:-4]) for p in fs.walk(STORE) if p.endswith(".seg")
            )
            kept = [r for r in rows if r[2] >= firsts[0]]
            ends = {r[0]: r[2] for r in rows}
            hidden = {r[0] for r in kept} - {r[0] for r in got}
            assert all(ends[stream] < firsts[1] for stream in hidden), hidden
            assert got == [r for r in kept if r[0] not in hidden]
        else:
            assert got == rows
        assert store.checkpoint("worker") == 20
        assert store.stream_metadata("s-6").max_count == 2
        assert store.stream_metadata("s-2").hard_deleted
        for stream, version in last.items():
            if stream != "s-2":
                r = await store.append(stream, Note(text="after"), expected_version=version)
                assert r.version == version + 1
        with pytest.raises(es.StreamDeleted):
            await store.append("s-2", Note(text="after"))
        await store.scavenge()  # finishes what the crash cut short
        assert (await store.verify()).ok


async def trace_of(fs: SimFS, job: str) -> list[str]:
    """The operations of one maintenance job on a copy of ``fs``."""
    probe = fs.clone()
    async with es.EventStore(STORE, OPTS, _fs=probe) as store:
        before = len(probe.trace)
        report = await (store.scavenge() if job == "scavenge" else store.enforce_retention())
        ops = probe.trace[before:]
    assert report.frames_removed > 0
    return ops


async def crash_during(fs: SimFS, job: str, k: int, durability: es.Durability) -> SimFS:
    cut = fs.clone()
    store = await es.EventStore(STORE, OPTS, _fs=cut, durability=durability).open()
    cut.cut_after(k)
    # a cut while an index sidecar is written is not the job's failure (sidecars are a cache);
    # with durability="os" the cut may hit the sync before it removes anything (StoreFailed)
    with contextlib.suppress(es.MaintenanceFailed, es.StoreFailed):
        await (store.scavenge() if job == "scavenge" else store.enforce_retention())
    assert cut.dead
    with contextlib.suppress(OSError, es.EventStoreError):  # the old process's handles are dead
        await store.close()
    return cut


@pytest.mark.parametrize("durability", ["fsync", "os"])
@pytest.mark.parametrize("mode", LOSS_MODES)
async def test_power_cut_at_every_operation_of_a_scavenge(
    mode: LossMode, durability: es.Durability
) -> None:
    fs, rows, last = await base_image()
    ops = await trace_of(fs, "scavenge")
    kinds = {op.split()[0] for op in ops}
    assert len(ops) >= 12
    assert {"create", "pwrite", "sync", "rename", "sync_dir", "remove"} <= kinds
    for k in range(len(ops)):
        cut = await crash_during(fs, "scavenge", k, durability)
        cut.reboot(mode, random.Random(k))
        await check(cut, rows, last, retained=False)


async def test_a_scavenge_with_durability_os_keeps_a_checkpoint_saved_before_it() -> None:
    """durability="os": a checkpoint saved in the page cache only, then a scavenge that
    removes the older, durable checkpoint frame it replaces, then a power cut right after
    the rewritten segment took the old one's place: the consumer keeps a checkpoint (the
    scavenge syncs the log first; it used to be left with none at all)."""
    fs, _rows, _last = await base_image()
    store = await es.EventStore(STORE, OPTS, _fs=fs, durability="os").open()
    await store.save_checkpoint("worker", 30)
    renamed: list[str] = []

    def power_cut_after_the_first_rewrite(op: str, path: str) -> None:
        if op == "rename" and path.endswith(".seg.scavenge"):
            renamed.append(path)
        elif renamed and not fs.dead:
            fs.cut_at = fs.ops

    fs.before_op = power_cut_after_the_first_rewrite
    with contextlib.suppress(es.EventStoreError):
        await store.scavenge()
    fs.before_op = None
    assert renamed and fs.dead
    with contextlib.suppress(OSError, es.EventStoreError):
        await store.close()
    fs.reboot("lost", random.Random(0))
    async with es.EventStore(STORE, OPTS, _fs=fs) as again:
        assert again.checkpoint("worker") == 30


@pytest.mark.parametrize("durability", ["fsync", "os"])
async def test_power_cut_at_every_operation_of_a_retention_run(
    durability: es.Durability,
) -> None:
    fs, rows, last = await base_image()
    retention = es.StoreOptions(segment_bytes=4096, retention_bytes=9000, durability=durability)
    probe = fs.clone()
    async with es.EventStore(STORE, retention, _fs=probe) as store:
        before = len(probe.trace)
        report = await store.enforce_retention()
        ops = probe.trace[before:]
    assert report.segments_dropped >= 2
    kinds = {op.split()[0] for op in ops}
    assert {"pwrite", "sync", "remove", "sync_dir"} <= kinds  # carried frames, then drops
    for k in range(len(ops)):
        for mode in ("lost", "torn"):
            cut = fs.clone()
            store = await es.EventStore(STORE, retention, _fs=cut).open()
            cut.cut_after(k)
            with pytest.raises((es.MaintenanceFailed, es.StoreFailed)):
                await store.enforce_retention()
            with contextlib.suppress(OSError, es.EventStoreError):
                await store.close()
            cut.reboot(mode, random.Random(k))
            await check(cut, rows, last, retained=True)
