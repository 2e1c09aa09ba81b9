"""Replay runs in bounded memory: reading a whole store holds one chunk at a time, however
large the store (``read_chunk_bytes``), for ``read_all``, ``read_stream`` and a catch-up
subscription alike."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

import aioeventstore as es
from tests.helpers import Note

CHUNK = 256 * 1024


async def build(path: Path, events: int) -> None:
    async with es.EventStore(path, durability="os") as store:
        batch = [Note(text="x" * 150) for _ in range(100)]

        async def writer(w: int) -> None:
            for k in range(w, events // 100, 16):
                await store.append(f"s-{k % 50}", batch)

        await asyncio.gather(*(writer(w) for w in range(16)))


async def replay_peak(path: Path) -> tuple[int, int]:
    """Bytes allocated at the peak of each replay above what the open store already holds."""
    async with es.EventStore(path, read_chunk_bytes=CHUNK) as store:
        head = store.head
        peaks = []
        for how in ("all", "stream", "subscribe"):
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            n = 0
            if how == "all":
                async for _ in store.read_all():
                    n += 1
                assert n == head + 1
            elif how == "stream":
                async for _ in store.read_stream("s-7"):
                    n += 1
                assert n == 100 * sum(1 for k in range((head + 1) // 100) if k % 50 == 7)
            else:
                async with store.subscribe() as sub:
                    async for rec in sub:
                        if rec.position == head:
                            break
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
            tracemalloc.stop()
        return max(peaks), head + 1


async def test_replay_memory_does_not_grow_with_the_store(tmp_path: Path) -> None:
    await build(tmp_path / "small", 4_000)
    await build(tmp_path / "large", 40_000)
    small, n_small = await replay_peak(tmp_path / "small")
    large, n_large = await replay_peak(tmp_path / "large")
    assert n_large == 10 * n_small
    # one chunk (256 KiB of log) decoded into records is a few MiB; the whole large store
    # (about 10 MiB of log) decoded would be about 40 MiB
    assert large < 8 * 2**20, large
    assert large < 2 * small + 2**20, (small, large)
