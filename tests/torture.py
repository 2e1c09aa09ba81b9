"""SIGKILL torture: a real writer process with many producers, killed at random moments, again
and again; after every kill every acknowledged append must be there.

Usage::

    python tests/torture.py [--seconds 600] [--dir DIR] [--seed 1]   # `make soak SECONDS=600`

Each round starts ``python tests/torture.py writer DIR ROUND`` (64 producers: 16 own a stream
each and append one to three events with exact expected versions, continuing from what is on
disk after the last kill; 48 append one to four events to 8 shared streams), reads one line
per acknowledged append from its stdout (printed only after ``append`` returned), and kills it
with SIGKILL: after a random number of acknowledgements, after a random time, or while it is
still starting (during recovery). Then it verifies the directory (a kill may leave a torn
tail, never corruption), opens the store and checks: positions and versions dense, every
append acknowledged in any round present with its ids at its versions, every append whole
(all of its events or none). A store past ``--max-events`` is replaced by a fresh one so that
long soaks keep their rounds short. Prints a line per round and a summary; exits 1 if an
acknowledged event was ever lost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import aioeventstore as es
from aioeventstore._verify import verify_store

OWN = 16
SHARED = 48
SHARED_STREAMS = 8


class Tick(es.Event):
    """One event of a torture append: which append it belongs to, and its place in it."""

    __event_type__ = "torture.tick"
    round: int
    producer: int
    seq: int
    k: int
    n: int


# --- the writer process ---------------------------------------------------------------------
async def writer(path: str, round_no: int) -> None:
    """Append forever, printing ``A STREAM LAST_VERSION ID,ID,...`` after each append returns."""
    rng = random.Random(round_no)
    async with es.EventStore(path, segment_bytes=256 * 1024) as store:
        last: dict[str, int] = {}
        for p in range(OWN):
            stream = f"own-{p}"
            async for rec in store.read_stream(stream, backwards=True, limit=1):
                last[stream] = rec.version
        print("ready", flush=True)
        out = sys.stdout

        async def producer(p: int) -> None:
            own = p < OWN
            stream = f"own-{p}" if own else f"shared-{p % SHARED_STREAMS}"
            for seq in range(10**9):
                n = rng.randint(1, 3 if own else 4)
                ids = [uuid.uuid4() for _ in range(n)]
                events = [
                    es.NewEvent(Tick(round=round_no, producer=p, seq=seq, k=k, n=n), id=i)
                    for k, i in enumerate(ids)
                ]
                expected: es.ExpectedVersion = es.ANY
                if own:
                    expected = last.get(stream, -1)
                    if expected < 0:
                        expected = es.NO_STREAM
                r = await store.append(stream, events, expected_version=expected)
                if own:
                    last[stream] = r.version
                out.write(f"A {stream} {r.version} {','.join(i.hex for i in ids)}\n")
                out.flush()

        await asyncio.gather(*(producer(p) for p in range(OWN + SHARED)))


# --- the driver -----------------------------------------------------------------------------
@dataclass
class Summary:
    """Totals of a torture run."""

    rounds: int = 0
    appends_acked: int = 0
    events_acked: int = 0
    events_lost: int = 0
    torn_tails: int = 0
    kills_in_startup: int = 0
    stores: int = 1
    seconds: float = 0.0
    acked: dict[tuple[str, int], uuid.UUID] = field(default_factory=dict, repr=False)


def run_round(path: Path, round_no: int, rng: random.Random) -> tuple[list[str], str]:
    """Start a writer, kill it at a random moment; returns the acknowledgement lines it
    printed (all of them, also those still in the pipe) and how it was killed."""
    script = Path(__file__).resolve()
    env = dict(os.environ, PYTHONPATH=str(script.parent.parent))
    how = rng.choices(["acks", "time", "startup"], weights=[6, 3, 1])[0]
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, str(script), "writer", str(path), str(round_no)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        try:
            if how == "startup":  # somewhere in interpreter start-up, opening or recovery
                time.sleep(rng.uniform(0.0, 0.6))
            else:
                first = proc.stdout.readline().strip()
                assert first == "ready" or not first, first
                want = rng.choice([1, 10, 100, 500, 2000, 5000])
                until = time.monotonic() + rng.uniform(0.0, 1.0)
                for line in proc.stdout:
                    lines.append(line)
                    if how == "acks" and len(lines) >= want:
                        break
                    if how == "time" and time.monotonic() >= until:
                        break
            os.kill(proc.pid, signal.SIGKILL)
            lines += [x for x in proc.stdout if x.startswith("A ")]
        finally:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the writer died by itself ({proc.returncode})"
    return [x for x in lines if x.startswith("A ")], how


async def check(path: Path, summary: Summary, lines: list[str]) -> tuple[int, bool]:
    """Record the round's acknowledgements and check the store; returns (head, torn cut)."""
    for line in lines:
        _, stream, version, ids = line.split()
        hexes = ids.split(",")
        summary.appends_acked += 1
        summary.events_acked += len(hexes)
        for k, h in enumerate(hexes):
            summary.acked[(stream, int(version) - len(hexes) + 1 + k)] = uuid.UUID(hex=h)
    report = verify_store(path)
    assert not report.corrupt, f"a SIGKILL left corruption: {report.first_problem}"
    found: dict[tuple[str, int], uuid.UUID] = {}
    versions: dict[str, int] = defaultdict(lambda: -1)
    groups: dict[tuple[int, int, int], list[tuple[int, int, int]]] = defaultdict(list)
    async with es.EventStore(path, segment_bytes=256 * 1024) as store:
        torn = store.recovery is not None and store.recovery.cut_path is not None
        position = 0
        async for rec in store.read_all():
            assert rec.position == position, "positions are not dense"
            position += 1
            assert rec.version == versions[rec.stream] + 1, f"versions of {rec.stream} skip"
            versions[rec.stream] = rec.version
            found[(rec.stream, rec.version)] = rec.id
            t = rec.data
            assert isinstance(t, Tick)
            groups[(t.round, t.producer, t.seq)].append((t.k, t.n, rec.position))
        head = store.head
    for (round_no, p, seq), parts in groups.items():  # every append whole and in order
        n = parts[0][1]
        assert [k for k, _, _ in parts] == list(range(n)), (round_no, p, seq, parts)
        assert [pos for _, _, pos in parts] == list(range(parts[0][2], parts[0][2] + n))
    lost = [key for key, eid in summary.acked.items() if found.get(key) != eid]
    summary.events_lost += len(lost)
    assert not lost, f"{len(lost)} acknowledged events lost, e.g. {lost[:3]}"
    return head, torn


async def torture(
    root: Path,
    seconds: float,
    seed: int = 1,
    max_events: int = 200_000,
    out: TextIO | None = None,
) -> Summary:
    """Kill-and-check rounds in stores under ``root`` for about ``seconds``."""
    rng = random.Random(seed)
    summary = Summary()
    start = time.monotonic()
    store = root / "store-1"
    while time.monotonic() - start < seconds:
        summary.rounds += 1
        lines, how = await asyncio.to_thread(run_round, store, summary.rounds, rng)
        summary.kills_in_startup += how == "startup"
        head, torn = await check(store, summary, lines)
        summary.torn_tails += torn
        if out is not None:
            print(
                f"round {summary.rounds:4d}: killed ({how:7s}) after {len(lines):5,d} acks; "
                f"store {summary.stores} head {head:9,d}{' torn tail cut' if torn else ''}; "
                f"acked so far {summary.events_acked:,} events, lost {summary.events_lost}",
                file=out,
                flush=True,
            )
        if head >= max_events:  # keep rounds short: recovery and the check read everything
            shutil.rmtree(store)
            summary.stores += 1
            summary.acked.clear()
            store = root / f"store-{summary.stores}"
    summary.seconds = time.monotonic() - start
    return summary


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "writer":
        asyncio.run(writer(sys.argv[2], int(sys.argv[3])))
        return 0
    ap = argparse.ArgumentParser(description="SIGKILL torture of a writer process")
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", help="where to put the stores (default: a temporary directory)")
    ap.add_argument("--max-events", type=int, default=200_000)
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="aioeventstore-torture-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        s = asyncio.run(torture(root, args.seconds, args.seed, args.max_events, sys.stdout))
    except AssertionError as exc:
        print(f"FAILED: {exc}", flush=True)
        return 1
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"{s.rounds} rounds ({s.kills_in_startup} killed while starting) in {s.seconds:.0f} s, "
        f"{s.stores} stores: {s.appends_acked:,} appends / {s.events_acked:,} events "
        f"acknowledged, {s.torn_tails} torn tails cut, {s.events_lost} events lost"
    )
    return 1 if s.events_lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
