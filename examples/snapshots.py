"""Aggregates loaded from "latest snapshot + the events after it".

A shopping cart is an aggregate: its state (the items and their quantities) is a fold over the
events of its stream. Loading it replays every event, which gets slow as a stream grows; a
snapshot stores the folded state at some version, and a load then replays only the events
after it. ``es.load_aggregate`` does both, and with ``snapshot_every=N`` saves a new snapshot
whenever a load had to fold N or more events.

Run: python examples/snapshots.py [--dir PATH] [--events N]
1. a cart gets N events; the first load folds them all and saves a snapshot;
2. more events arrive; the next load folds only those (on top of the snapshot);
3. the store is reopened: the snapshot is still there;
4. every state is checked against a full replay of the stream (no snapshot).
``--dir`` must be new or empty: the demo starts from an empty store.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel

import aioeventstore as es


class ItemAdded(es.Event):
    sku: str
    quantity: int


class ItemRemoved(es.Event):
    sku: str


class Cart(BaseModel):
    """The aggregate's state. Any pydantic model can be a snapshot."""

    items: dict[str, int] = {}
    changes: int = 0


def apply(cart: Cart, rec: es.RecordedEvent) -> Cart:
    """Fold one event into the cart (in place; returning it is what load_aggregate wants)."""
    data = rec.data
    if isinstance(data, ItemAdded):
        cart.items[data.sku] = cart.items.get(data.sku, 0) + data.quantity
    elif isinstance(data, ItemRemoved):
        cart.items.pop(data.sku, None)
    cart.changes += 1
    return cart


async def full_replay(store: es.EventStore, stream: str) -> es.Snapshot[Cart]:
    """The state without any snapshot: every event folded into an empty cart."""
    cart, version = Cart(), -1
    async for rec in store.read_stream(stream):
        cart, version = apply(cart, rec), rec.version
    return es.Snapshot(cart, version)


async def add_events(store: es.EventStore, stream: str, n: int, start: int) -> None:
    batch: list[es.Event] = []
    for i in range(start, start + n):
        if i % 7 == 6:
            batch.append(ItemRemoved(sku=f"sku-{(i * 3) % 40}"))
        else:
            batch.append(ItemAdded(sku=f"sku-{i % 40}", quantity=1 + i % 3))
        if len(batch) == 100:
            await store.append(stream, batch)
            batch = []
    if batch:
        await store.append(stream, batch)


async def timed_load(store: es.EventStore, stream: str, every: int) -> tuple[Cart, int, float]:
    t = time.perf_counter()
    cart, version = await es.load_aggregate(
        store, stream, Cart, apply, initial=Cart, snapshot_every=every
    )
    return cart, version, time.perf_counter() - t


async def main(directory: Path, events: int) -> None:
    stream, every = "cart-7", max(1, events // 2)
    print(f"snapshot demo in {directory}")
    async with es.EventStore(directory) as store:
        await add_events(store, stream, events, 0)
        cart, version, took = await timed_load(store, stream, every)
        assert (cart, version) == await full_replay(store, stream)
        print(f"  first load folded {version + 1} events in {took * 1000:.1f} ms; snapshot saved")
        snap = await store.load_snapshot(stream, Cart)
        assert snap is not None and snap.version == version

        await add_events(store, stream, 25, events)
        cart, version, took = await timed_load(store, stream, every)
        assert (cart, version) == await full_replay(store, stream)
        print(
            f"  second load: snapshot at version {snap.version} + {version - snap.version} "
            f"events in {took * 1000:.1f} ms"
        )

    async with es.EventStore(directory) as store:  # reopen: the snapshot is durable
        snap = await store.load_snapshot(stream, Cart)
        assert snap is not None, "the snapshot survives a reopen"
        cart, version, took = await timed_load(store, stream, every)
        full = await full_replay(store, stream)
        assert (cart, version) == full
        print(f"  after reopen: snapshot at version {snap.version}, loaded in {took * 1000:.1f} ms")
    print(f"  snapshot-based state equals a full replay of {full.version + 1} events")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dir", default=None)
    ap.add_argument("--events", type=int, default=5000)
    args = ap.parse_args()
    given = Path(args.dir) if args.dir is not None else None
    if given is not None and given.exists() and (not given.is_dir() or any(given.iterdir())):
        ap.error(f"--dir {given} is not empty: the demo needs a new or empty directory")
    asyncio.run(
        main(Path(args.dir or tempfile.mkdtemp(prefix="aioeventstore-snapshots-")), args.events)
    )
