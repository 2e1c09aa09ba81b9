"""A live projection: account balances that catch up, keep up, checkpoint, and resume.

The projector is a named, durable subscription ("balances"). It folds every Deposited and
Withdrawn event into a balance table, saves that table to a JSON file together with the
position it reflects, and then acknowledges that position to the store. After a restart it
loads the table and resumes right after its last acknowledged position; anything delivered
again (at-least-once) is skipped by position, so the table is exact.

Run: python examples/projection.py [--dir PATH]
1. writers append deposits and withdrawals while the projector catches up and follows live;
2. the process "crashes" (the projector is cancelled mid-stream, the store closed);
3. a new store instance and projector resume from the checkpoint; more events arrive;
4. the projected balances are checked against a full replay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

import aioeventstore as es


class Deposited(es.Event):
    account: str
    amount: int


class Withdrawn(es.Event):
    account: str
    amount: int


class Balances:
    """The projection: balances, plus the last position folded in, saved atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.position = -1
        self.balances: dict[str, int] = defaultdict(int)
        if path.exists():
            saved = json.loads(path.read_text())
            self.position = saved["position"]
            self.balances.update(saved["balances"])

    def apply(self, rec: es.RecordedEvent) -> None:
        if rec.position <= self.position:
            return  # delivered again after a restart: already folded in
        data = rec.data
        if isinstance(data, Deposited):
            self.balances[data.account] += data.amount
        elif isinstance(data, Withdrawn):
            self.balances[data.account] -= data.amount
        self.position = rec.position

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"position": self.position, "balances": self.balances}))
        os.replace(tmp, self.path)


async def project(store: es.EventStore, table: Balances, stop_at: int | None) -> None:
    """Follow the store, saving and acking every 500 events; return at ``stop_at``."""
    async with store.subscribe(name="balances") as sub:
        print(
            f"  projector starts after position {store.checkpoint('balances')}, "
            f"head is {store.head}"
        )
        async for rec in sub:
            table.apply(rec)
            if rec.position % 500 == 499 or sub.lag == 0:
                table.save()
                await sub.ack(rec)
            if stop_at is not None and rec.position >= stop_at:
                return


async def write(store: es.EventStore, writers: int, per_writer: int, seed: int) -> None:
    rng = random.Random(seed)

    async def writer(w: int) -> None:
        for _ in range(per_writer):
            account = f"acct-{rng.randrange(50)}"
            event: es.Event = (
                Deposited(account=account, amount=rng.randint(1, 100))
                if rng.random() < 0.7
                else Withdrawn(account=account, amount=rng.randint(1, 50))
            )
            await store.append(account, event)

    await asyncio.gather(*(writer(w) for w in range(writers)))


async def main(directory: Path) -> None:
    data, table_file = directory / "store", directory / "balances.json"
    print(f"projection demo in {directory}")

    async with es.EventStore(data) as store:
        await write(store, 10, 100, seed=1)  # history before the projector exists
        table = Balances(table_file)
        projector = asyncio.create_task(project(store, table, stop_at=None))
        await write(store, 20, 100, seed=2)  # concurrent writers while it catches up
        while table.position < 2400:  # let it get well into the stream ...
            await asyncio.sleep(0.01)
        projector.cancel()  # ... then "crash" mid-stream
        with contextlib.suppress(asyncio.CancelledError):
            await projector
        print(
            f"  crashed at position {table.position}; last ack {store.checkpoint('balances')}; "
            f"head {store.head}"
        )

    async with es.EventStore(data) as store:  # restart: a new store instance
        table = Balances(table_file)
        more = asyncio.create_task(write(store, 10, 50, seed=3))
        await more
        await project(store, table, stop_at=store.head)
        print(f"  resumed and caught up to {table.position} (head {store.head})")

        truth: dict[str, int] = defaultdict(int)
        async for rec in store.read_all():
            d = rec.data
            if isinstance(d, Deposited):
                truth[d.account] += d.amount
            elif isinstance(d, Withdrawn):
                truth[d.account] -= d.amount
    assert dict(table.balances) == dict(truth), "projection differs from a full replay"
    print(f"  {len(truth)} balances match a full replay of {table.position + 1} events")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    asyncio.run(main(Path(args.dir or tempfile.mkdtemp(prefix="aioeventstore-projection-"))))
