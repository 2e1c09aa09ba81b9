"""Replay speed with schema evolution: what versions, renames and upcasters cost ``read_all``.

A store of ``--events`` events (default 200,000; ≈150-byte ``Deposited`` events over 1,000
streams, 100 events per append) is written once per case, then read back with
``read_all`` (best of ``--repeat`` runs, events decoded into models), and its segments are
also decoded in-process by the reader's span decoder alone, timed in thread CPU time (best of
``--repeat``): on a shared machine that column is far steadier than wall-clock replay.

* ``v1 current``: classes at schema version 1, events written by them (the format 1 layout;
  this case also runs on builds without schema evolution, for a before/after comparison);
* ``v2 current``: a class at ``__schema_version__ = 2``, events written by it (frames carry
  schema versions), read by the same class: no upcaster runs;
* ``v1 → v2 upcast``: events written at version 1, read by a version 2 class through one
  upcaster;
* ``renamed``: events written as ``Deposited``, read by a class that lists it in
  ``__event_aliases__``.

    python perf/bench_schema.py [--events N] [--repeat R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit_json, print_table

import aioeventstore as es
from aioeventstore import events as events_module

STREAMS = 1000
PER_APPEND = 100
HAS_SCHEMA = hasattr(es, "upcaster")


def define(name: str, version: int, aliases: tuple[str, ...] = ()) -> type[es.Event]:
    """A fresh ``account/amount/note`` event class registered under ``name``."""
    events_module._registry.pop(name, None)
    getattr(events_module, "_classes", {}).pop(name, None)
    ns: dict[str, Any] = {
        "__annotations__": {"account": "str", "amount": "int", "note": "str"},
        "__event_type__": name,
        "__module__": __name__,
    }
    if HAS_SCHEMA:
        ns["__schema_version__"] = version
        ns["__event_aliases__"] = aliases
    return type(name, (es.Event,), ns)


async def write(directory: str, cls: type[es.Event], n: int) -> None:
    async with es.EventStore(directory) as store:
        note = "x" * 80
        for start in range(0, n, PER_APPEND):
            batch = [
                cls.model_validate(
                    {"account": f"{(start + i) % STREAMS:04d}", "amount": start + i, "note": note}
                )
                for i in range(min(PER_APPEND, n - start))
            ]
            await store.append(f"acct-{start // PER_APPEND % STREAMS:04d}", batch)


async def replay(directory: str, repeat: int, expect: type[es.Event], n: int) -> float:
    best = float("inf")
    async with es.EventStore(directory) as store:
        for _ in range(repeat):
            t0 = time.perf_counter()
            count = 0
            async for rec in store.read_all():
                count += 1
                last = rec
            best = min(best, time.perf_counter() - t0)
            assert count == n and isinstance(last.data, expect), (count, last)
    return n / best


def decode_rate(directory: str, repeat: int, n: int) -> float:
    """Events per CPU second of the reader's span decoder over the store's segments."""
    from aioeventstore._codec import decode_span

    segments = sorted(Path(directory).glob("*.seg"))
    bufs = [(seg.read_bytes()[32:], int(seg.stem)) for seg in segments]
    best = float("inf")
    for _ in range(repeat):
        gc.disable()  # as the reader does while it decodes a chunk
        t0 = time.thread_time()
        count = 0
        for buf, first in bufs:
            out: list[es.RecordedEvent] = []
            decode_span(buf, first, 0, n, None, None, out)
            count += len(out)
        best = min(best, time.thread_time() - t0)
        del out
        gc.enable()
        assert count == n
    return n / best


async def case(name: str, root: str, n: int, repeat: int) -> dict[str, Any]:
    directory = str(Path(root) / name.replace(" ", "_").replace("→", "to"))
    if name == "v1 current":
        cls = define("Deposited", 1)
        await write(directory, cls, n)
        reader = cls
    elif name == "v2 current":
        cls = define("Deposited", 2)
        await write(directory, cls, n)
        reader = cls
    elif name == "v1 → v2 upcast":
        await write(directory, define("Deposited", 1), n)
        reader = define("Deposited", 2)

        def up(data: dict[str, Any]) -> dict[str, Any]:
            return {**data, "note": data["note"].upper()}

        es.upcaster("Deposited", from_version=1)(up)
    else:
        await write(directory, define("Deposited", 1), n)
        events_module._registry.pop("Deposited", None)
        getattr(events_module, "_classes", {}).pop("Deposited", None)
        reader = define("AccountCredited", 1, aliases=("Deposited",))
    rate = await replay(directory, repeat, reader, n)
    cpu = decode_rate(directory, repeat, n)
    return {"case": name, "events": n, "rate": rate, "cpu": cpu}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", help="run only the cases whose names contain this")
    args = parser.parse_args()
    cases = ["v1 current"]
    if HAS_SCHEMA:
        cases += ["v2 current", "v1 → v2 upcast", "renamed"]
    if args.only:
        cases = [c for c in cases if args.only in c]
    rows = []
    with tempfile.TemporaryDirectory(prefix="aioes-schema-") as root:
        for name in cases:
            rows.append(await case(name, root, args.events, args.repeat))
    # the ratios are to the "v1 current" row; without it (--only) they are None, printed "-"
    base = next((r for r in rows if r["case"] == "v1 current"), None)
    for row in rows:
        row["ratio"] = row["rate"] / base["rate"] if base is not None else None
        row["cpu_ratio"] = row["cpu"] / base["cpu"] if base is not None else None
    if args.json:
        emit_json(rows)
    else:
        print_table(
            rows,
            [
                ("case", "case", ""),
                ("events", "events", ","),
                ("rate", "read_all events/s", ",.0f"),
                ("ratio", "vs v1 current", ".2f"),
                ("cpu", "decode events/CPU s", ",.0f"),
                ("cpu_ratio", "vs v1 current", ".2f"),
            ],
        )


if __name__ == "__main__":
    asyncio.run(main())
