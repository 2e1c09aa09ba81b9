"""The bug of test_sidecars.py::test_tail_sidecar_after_removed_half_made_segment, on the
simulated file system the crash sweeps use. The other sweeps never reopen a store that has a
tail sidecar from a clean close, and check only read_all, so they would miss it."""

from __future__ import annotations

import contextlib
from collections import defaultdict

import aioeventstore as es
from tests.crashload import STORE, run_workload
from tests.helpers import Note
from tests.simfs import SimFS
from tests.test_crash_sweep import APPENDS


async def streams_of(fs: SimFS) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Each stream's positions as read_all groups them, and as read_stream gives them."""
    async with es.EventStore(STORE, _fs=fs, segment_bytes=4096) as store:
        by_all: dict[str, list[int]] = defaultdict(list)
        async for r in store.read_all():
            by_all[r.stream].append(r.position)
        by_stream = {s: [r.position async for r in store.read_stream(s)] for s in by_all}
        return dict(by_all), by_stream


async def test_process_crash_in_the_first_rotation_after_a_clean_close() -> None:
    """Close (tail sidecar), reopen, the first rotation is killed right after creating the new
    segment, before its header is written; recovery removes it, the old tail (its rows loaded
    from its sidecar without stream ids) is the tail again, and the next close writes a
    sidecar for it that files every loaded event under the store's first stream."""
    fs = SimFS(0)
    run = await run_workload(fs, appends=APPENDS)  # ends with a clean close
    assert run.error is None
    probe = fs.clone()  # find the operation number of the next rotation's create
    start = len(probe.trace)
    store = await es.EventStore(STORE, _fs=probe, segment_bytes=4096).open()
    while not any(op.startswith("create") and op.endswith(".seg") for op in probe.trace[start:]):
        await store.append("more", Note(text="x" * 300))
    await store.close()
    create = next(
        i
        for i, op in enumerate(probe.trace[start:])
        if op.startswith("create") and op.endswith(".seg")
    )
    fs.cut_after(create + 1)  # die after the create, before the header's pwrite
    store = es.EventStore(STORE, _fs=fs, segment_bytes=4096)
    try:
        await store.open()
        while True:
            await store.append("more", Note(text="x" * 300))
    except (OSError, es.EventStoreError):
        pass
    with contextlib.suppress(OSError, es.EventStoreError):  # the dead process's handles
        await store.close()
    fs.process_crash()  # the new segment's file exists, empty
    first = await streams_of(fs)  # recovery removes it; this close writes the tail's sidecar
    assert first[0] == first[1]  # still right in memory; the bad sidecar is written on close
    by_all, by_stream = await streams_of(fs)  # the index now comes from that sidecar
    assert by_all == by_stream
