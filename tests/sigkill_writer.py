"""A writer process for the SIGKILL test: many producers, one line per acknowledged append.

Usage: python sigkill_writer.py STORE_DIR ROUND [DURABILITY]. Prints ``ack STREAM VERSION
ID`` after each append returns (so the parent knows it was acknowledged), flushing every
line.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import aioeventstore as es


class Tick(es.Event):
    round: int
    n: int


async def main(path: str, round_no: int, durability: es.Durability) -> None:
    async with es.EventStore(path, durability=durability) as store:
        print("ready", flush=True)

        async def producer(p: int) -> None:
            for n in range(1_000_000):
                eid = uuid.uuid4()
                ev = es.NewEvent(Tick(round=round_no, n=n), id=eid)
                r = await store.append(
                    f"r{round_no}-p{p % 20}", [ev, es.NewEvent(Tick(round=round_no, n=-n))]
                )
                sys.stdout.write(f"ack r{round_no}-p{p % 20} {r.version - 1} {eid}\n")
                sys.stdout.flush()

        await asyncio.gather(*(producer(p) for p in range(64)))


if __name__ == "__main__":
    durability: es.Durability = "os" if sys.argv[3:] == ["os"] else "fsync"
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), durability))
