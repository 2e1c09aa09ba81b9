"""Read-only readers following a writer that rotates, truncates, deletes, scavenges and
enforces retention, with random timing (followers held back at random): readers never fail,
catch up, read what the writer reads, and their subscriptions deliver only real events, in
order, missing none that is still in the log. Seeded; adapted from a helper's bug search
that found three follower bugs (segments removed or rewritten before a reader read them)."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import pytest

import aioeventstore as es

from .helpers import Note
from .test_read_only import _caught_up, _deleted_files_held, _gate_follower

Key = tuple[str, int, int, str]  # stream, version, position, text


def key(rec: es.RecordedEvent) -> Key:
    assert isinstance(rec.data, Note)
    return (rec.stream, rec.version, rec.position, rec.data.text)


class Sub:
    """One reader subscription and what it delivered."""

    def __init__(self, kind: str, arg: str, start: int, sub: es.Subscription) -> None:
        self.kind, self.arg, self.start = kind, arg, start
        self.got: list[Key] = []
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._run(sub))

    async def _run(self, sub: es.Subscription) -> None:
        try:
            async with sub:
                async for rec in sub:
                    self.got.append(key(rec))
        except es.EventStoreError as exc:
            self.error = exc


async def _workload(
    rng: random.Random,
    writer: es.EventStore,
    readers: list[es.EventStore],
    subs: list[Sub],
    streams: list[str],
    path: Path,
) -> None:
    hard: set[str] = set()
    gates: dict[int, threading.Event] = {}
    counter = 0
    for _ in range(rng.randint(150, 300)):
        op = rng.random()
        live = [s for s in streams if s not in hard]
        try:
            if op < 0.5:
                n = rng.choice([1, 1, 1, 2, 5])
                notes = []
                for _ in range(n):
                    counter += 1
                    notes.append(Note(text=f"{counter}:" + "x" * rng.randint(10, 600)))
                await writer.append(rng.choice(live), notes if n > 1 else notes[0])
            elif op < 0.58:
                await writer.save_checkpoint(rng.choice(["c1", "c2"]), rng.randint(0, writer.head))
            elif op < 0.64:
                s = rng.choice(live)
                newest = [r.version async for r in writer.read_stream(s, backwards=True, limit=1)]
                last = newest[0] if newest else -1
                if last >= 0:
                    cur = writer.stream_metadata(s).truncate_before or 0
                    await writer.set_stream_metadata(s, truncate_before=rng.randint(cur, last + 1))
            elif op < 0.66:
                s = rng.choice(live)
                hard_delete = rng.random() < 0.2
                await writer.delete_stream(s, hard=hard_delete)
                if hard_delete:
                    hard.add(s)
            elif op < 0.72:
                await writer.scavenge()
            elif op < 0.77:
                await writer.enforce_retention()
            elif op < 0.83:
                i = rng.randrange(len(readers))
                gate = gates.pop(i, None)
                if gate is not None:
                    gate.set()
                else:
                    gates[i] = _gate_follower(readers[i])
            elif op < 0.85 and len(readers) < 3:
                readers.append(await _open_reader(rng, path, subs))
            else:
                await asyncio.sleep(rng.random() * 0.005)
        except es.StreamDeleted:
            pass
        for reader in readers:
            assert reader.follow_error is None
        assert all(sub.error is None for sub in subs)
    for gate in gates.values():
        gate.set()


async def _open_reader(rng: random.Random, path: Path, subs: list[Sub]) -> es.EventStore:
    reader = await es.EventStore(path, read_only=True, poll_interval=0.002).open()
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["all", "stream", "filter"])
        buffer = rng.choice([10, 10_000])
        if kind == "all":
            start = rng.randint(0, max(0, reader.head))
            sub = reader.subscribe(from_position=start, buffer_events=buffer)
            subs.append(Sub(kind, "", start, sub))
        elif kind == "stream":
            stream, start = rng.choice(["s0", "s1", "p/a"]), rng.randint(0, 3)
            sub = reader.subscribe(stream=stream, from_version=start, buffer_events=buffer)
            subs.append(Sub(kind, stream, start, sub))
        else:
            sub = reader.subscribe(filter=es.EventFilter(stream_prefixes=["p/"]))
            subs.append(Sub(kind, "p/", 0, sub))
    return reader


@pytest.mark.parametrize("seed", range(8))
async def test_readers_follow_a_writer_that_removes_and_rewrites_segments(
    store_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Odd seeds: readers look for rewritten segments at every poll (``REWRITE_CHECK``), so
    they swap in every rewrite and end up holding no removed file at all."""
    rng = random.Random(seed)
    swaps = seed % 2 == 1
    if swaps:
        monkeypatch.setattr("aioeventstore._follow.REWRITE_CHECK", 0.0)
    segment = rng.choice([4096, 8192])
    opts = es.StoreOptions(
        segment_bytes=segment,
        retention_bytes=rng.choice([None, 3 * segment, 6 * segment]),
        compression=rng.choice(["none", "none", "zstd"]),
        durability="os",
    )
    streams = ["s0", "s1", "s2", "p/a", "p/b"]
    readers: list[es.EventStore] = []
    subs: list[Sub] = []
    async with es.EventStore(store_path, opts) as writer:
        await writer.append("s0", Note(text="0:start"))
        try:
            readers.append(await _open_reader(rng, store_path, subs))
            await _workload(rng, writer, readers, subs, streams, store_path)
            await writer.enforce_retention()  # (after any run a commit started)
            log = [key(r) async for r in writer.read_all()]
            by_stream = {s: [key(r) async for r in writer.read_stream(s)] for s in streams}
            for reader in readers:
                await _caught_up(reader, writer)
                for _ in range(1000):  # a removal is noticed at the reader's next poll
                    if [key(r) async for r in reader.read_all()] == log:
                        break
                    await asyncio.sleep(0.005)
                assert reader.follow_error is None
                assert [key(r) async for r in reader.read_all()] == log
                for stream, want in by_stream.items():
                    assert [key(r) async for r in reader.read_stream(stream)] == want
                    back = [key(r) async for r in reader.read_stream(stream, backwards=True)]
                    assert back == want[::-1]
            for _ in range(1000):  # the subscriptions have delivered all there is
                if all(not s.got or s.got[-1][2] >= log[-1][2] for s in subs if s.kind == "all"):
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            appended = {k[2]: k for k in log}
            for sub in subs:
                assert sub.error is None
                positions = [k[2] for k in sub.got]
                assert positions == sorted(set(positions))
                if sub.kind == "all":
                    need = [k for k in log if k[2] >= sub.start]
                elif sub.kind == "stream":
                    need = [k for k in by_stream[sub.arg] if k[1] >= sub.start]
                else:
                    need = [k for k in log if k[0].startswith(sub.arg)]
                assert set(need) <= set(sub.got)  # nothing still in the log is missed
                for k in sub.got:  # and nothing delivered was never appended
                    assert k[3].split(":")[0].isdigit()
                    assert appended.get(k[2], k) == k
            for _ in range(200):
                oldest = min(p.name for p in store_path.glob("*.seg"))
                held = [
                    h for h in _deleted_files_held(store_path) if swaps or Path(h).name < oldest
                ]
                if not held:
                    break
                await asyncio.sleep(0.005)
            assert held == []  # no reader keeps a segment retention removed (or rewrote)
        finally:
            for sub in subs:
                sub.task.cancel()
            for reader in readers:
                await reader.close()
