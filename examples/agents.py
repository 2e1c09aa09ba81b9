"""A few hundred concurrent async agents sharing one embedded event store.

Each agent appends to its own stream (``agent-N``: deposits and withdrawals, with its expected
version) and competes for jobs on a handful of shared streams (``board-K``) with optimistic
concurrency: read the board's last version, append a claim expecting that version, and on
``WrongExpectedVersion`` re-read and retry. At the end a replay of the whole log rebuilds every
balance and every board and checks them against what the agents believe.

    python examples/agents.py [--agents 300] [--rounds 50] [--dir PATH]

``make demo`` runs it against a fresh store in a temporary directory. ``--dir`` must be new or
empty: every agent starts its stream expecting it not to exist yet.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aioeventstore as es


class Deposited(es.Event):
    agent: int
    amount: int


class Withdrawn(es.Event):
    agent: int
    amount: int


class JobClaimed(es.Event):
    board: int
    job: int
    agent: int


BOARDS = 20


class Agent:
    """An agent's own view of the world, checked against the replay at the end."""

    def __init__(self, n: int, store: es.EventStore) -> None:
        self.n = n
        self.store = store
        self.stream = f"agent-{n}"
        self.version: es.ExpectedVersion = es.NO_STREAM
        self.balance = 0
        self.jobs: list[tuple[int, int]] = []
        self.retries = 0
        self.rng = random.Random(n)

    async def live(self, rounds: int) -> None:
        for _ in range(rounds):
            if self.balance > 0 and self.rng.random() < 0.3:
                amount = self.rng.randint(1, self.balance)
                event: es.Event = Withdrawn(agent=self.n, amount=amount)
                self.balance -= amount
            else:
                amount = self.rng.randint(1, 100)
                event = Deposited(agent=self.n, amount=amount)
                self.balance += amount
            result = await self.store.append(self.stream, event, expected_version=self.version)
            self.version = result.version
            if self.rng.random() < 0.1:
                await self.claim_job(self.rng.randrange(BOARDS))

    async def claim_job(self, board: int) -> None:
        stream = f"board-{board}"
        while True:
            last = -1
            async for rec in self.store.read_stream(stream, backwards=True, limit=1):
                last = rec.version
            job = last + 1  # job k is claimed at version k
            expected: es.ExpectedVersion = es.NO_STREAM if last < 0 else last
            try:
                await self.store.append(
                    stream,
                    JobClaimed(board=board, job=job, agent=self.n),
                    expected_version=expected,
                )
            except es.WrongExpectedVersion:
                self.retries += 1  # someone claimed it first: look again
                continue
            self.jobs.append((board, job))
            return


async def main(directory: str, agents: int, rounds: int) -> None:
    print(f"aioeventstore demo: {agents} agents x {rounds} rounds, store in {directory}")
    async with es.EventStore(directory) as store:
        crowd = [Agent(n, store) for n in range(agents)]
        t0 = time.perf_counter()
        await asyncio.gather(*(a.live(rounds) for a in crowd))
        elapsed = time.perf_counter() - t0
        stats = store.statistics()

        # Replay: rebuild everything from the log alone and compare.
        t1 = time.perf_counter()
        balances: dict[int, int] = defaultdict(int)
        boards: dict[int, list[int]] = defaultdict(list)
        replayed = 0
        async for rec in store.read_all():
            replayed += 1
            data = rec.data
            if isinstance(data, Deposited):
                balances[data.agent] += data.amount
            elif isinstance(data, Withdrawn):
                balances[data.agent] -= data.amount
            elif isinstance(data, JobClaimed):
                assert data.job == rec.version, "a job number is its claim's version"
                boards[data.board].append(data.agent)
        replay_s = time.perf_counter() - t1

    for a in crowd:
        assert balances[a.n] == a.balance, f"agent {a.n}: replay {balances[a.n]} != {a.balance}"
    claimed = {(b, j) for a in crowd for b, j in a.jobs}
    assert len(claimed) == sum(len(a.jobs) for a in crowd), "a job was claimed twice"
    assert claimed == {(b, j) for b, owners in boards.items() for j in range(len(owners))}
    for a in crowd:
        for b, j in a.jobs:
            assert boards[b][j] == a.n

    print(
        f"  appended      {stats.events:,} events in {elapsed:.2f} s "
        f"({stats.events / elapsed:,.0f} durable events/s)"
    )
    print(
        f"  batches       {stats.batches:,} writes, {stats.syncs:,} fsyncs, "
        f"{stats.events_per_sync:.1f} events per fsync"
    )
    print(
        f"  contention    {sum(a.retries for a in crowd):,} expected-version retries on "
        f"{BOARDS} shared boards, {len(claimed):,} jobs claimed, none twice"
    )
    print(
        f"  replay        {replayed:,} events in {replay_s:.2f} s; every balance and board matches"
    )
    print(f"  data lives in {directory}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--agents", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--dir", default=None, help="store directory (default: a new temp dir)")
    args = ap.parse_args()
    given = Path(args.dir) if args.dir is not None else None
    if given is not None and given.exists() and (not given.is_dir() or any(given.iterdir())):
        ap.error(f"--dir {given} is not empty: the demo needs a new or empty directory")
    directory = args.dir or tempfile.mkdtemp(prefix="aioeventstore-demo-")
    asyncio.run(main(directory, args.agents, args.rounds))
