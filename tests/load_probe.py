"""Memory under load, measured in a process of its own (tests/test_load.py runs it).

Usage: ``python tests/load_probe.py DIR`` prints one JSON object.

10,000 concurrent producers: 9,968 append ~1 KiB events (three appends each), 32 append
1 MiB events (twelve each, 384 MiB), all at once, into a store with ``max_queue_bytes`` of
8 MiB. The same load runs twice. The probe reports the options, the store's queue as sampled
on every loop turn, and the process's peak resident memory per phase (``VmHWM``, reset
between phases through ``/proc/self/clear_refs`` where Linux allows it), so that the test can
hold the peak to a bound derived from the options and show it does not grow with the bytes
written.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from pathlib import Path
from typing import Any

import aioeventstore as es

PRODUCERS = 10_000
BIG_PRODUCERS = 32
BIG_APPENDS = 12
SMALL_APPENDS = 3
BIG = 1 << 20
SMALL = 1000
OPTIONS = es.StoreOptions(
    max_event_bytes=2 << 20,
    max_append_bytes=2 << 20,
    max_batch_bytes=8 << 20,
    max_queue_bytes=8 << 20,
    segment_bytes=64 << 20,
)


class Blob(es.Event):
    """A payload of any size."""

    data: str


def _status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss() -> int:
    """Peak resident memory of this process in bytes (since the last reset)."""
    hwm = _status("VmHWM")
    if hwm is not None:
        return hwm
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def reset_peak() -> bool:
    """Reset the peak to the current resident memory (Linux >= 4.0); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def phase(store: es.EventStore, big: str, small: str) -> dict[str, int]:
    samples = {"max_queued": 0, "max_queued_bytes": 0, "max_waiting_at_least": 0}
    done = asyncio.Event()
    min_item = 1000  # every queued append here is more than 1,000 bytes

    async def sampler() -> None:
        while not done.is_set():
            st = store.statistics()
            samples["max_queued"] = max(samples["max_queued"], st.queued)
            samples["max_queued_bytes"] = max(samples["max_queued_bytes"], st.queued_bytes)
            waiting = st.queued - st.queued_bytes // min_item  # more than can be in the queue
            samples["max_waiting_at_least"] = max(samples["max_waiting_at_least"], waiting)
            await asyncio.sleep(0)

    async def producer(p: int) -> None:
        if p < BIG_PRODUCERS:
            for _ in range(BIG_APPENDS):
                await store.append(f"big-{p}", Blob(data=big))
        else:
            for _ in range(SMALL_APPENDS):
                await store.append(f"small-{p % 100}", Blob(data=small))

    watcher = asyncio.create_task(sampler())
    await asyncio.gather(*(producer(p) for p in range(PRODUCERS)))
    done.set()
    await watcher
    return samples


async def main(path: str) -> dict[str, Any]:
    big = "b" * (BIG - 64)  # one object shared by all: the callers' own memory stays small
    small = "s" * SMALL
    out: dict[str, Any] = {
        "producers": PRODUCERS,
        "big_producers": BIG_PRODUCERS,
        "big_event_bytes": BIG,
        "max_queue_bytes": OPTIONS.max_queue_bytes,
        "max_batch_bytes": OPTIONS.max_batch_bytes,
        "max_append_bytes": OPTIONS.max_append_bytes,
    }
    async with es.EventStore(path, OPTIONS) as store:
        out["resettable"] = reset_peak()
        out["baseline_rss"] = peak_rss()
        out["phase1"] = await phase(store, big, small)
        out["peak1"] = peak_rss()
        reset_peak()
        out["phase2"] = await phase(store, big, small)
        out["peak2"] = peak_rss()
        st = store.statistics()
        out["events"] = st.events
        out["bytes_written"] = st.bytes_written
        out["head"] = store.head
        async for rec in store.read_stream("big-0", backwards=True, limit=1):
            assert isinstance(rec.data, Blob)
            out["big_read_back"] = len(rec.data.data)
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
