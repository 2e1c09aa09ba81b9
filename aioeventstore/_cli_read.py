"""The read commands of the command line: ``info``, ``dump``, ``tail [-f]`` and ``stats``.

Each opens the store with ``read_only=True``: no lock, nothing on disk changed, so they run
next to a writer in another process. Events print as ``RecordedEvent.to_json()`` lines, read
with ``raw=True``: this process registers no event classes, so ``data`` is the stored dict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TextIO

from ._format import parse_segment_name
from ._fs import OsFileSystem
from ._stats import Histogram, LogStatistics, scan_log_statistics, segment_format_versions
from .events import EventFilter, RecordedEvent
from .store import EventStore


class ProgressFn(Protocol):
    """The command line's progress line (``_cli.Progress``)."""

    def __call__(self, done: int, total: int, what: str = "") -> None: ...

    def done(self) -> None:
        """Clear the line before the command prints its result."""
        ...


def run_read_command(
    args: argparse.Namespace, path: str, out: TextIO, err: TextIO, progress: ProgressFn
) -> int:
    """Run ``info``/``dump``/``tail``/``stats``; returns the exit status. Raises CorruptLog,
    EventStoreError and OSError for ``_cli.main`` to report."""
    if args.command == "stats":
        return _stats(args, path, out, progress)
    if args.command == "info":
        return asyncio.run(_info(args, path, out))
    if args.command == "dump":
        return asyncio.run(_dump(args, path, out, progress))
    assert args.command == "tail"
    if not 0 < args.interval < math.inf:
        print("aioeventstore: --interval must be > 0 seconds and finite", file=err)
        return 2
    return asyncio.run(_tail(args, path, out, err))


# --- info -------------------------------------------------------------------------------------
def _events_row(stored: int, head: int) -> str:
    """The events the log holds, and how many of the positions used were removed since (by
    retention or scavenging) when some were."""
    gone = head + 1 - stored
    return f"{stored:,}" + (f" ({gone:,} of positions 0..{head:,} removed)" if gone else "")


async def _info(args: argparse.Namespace, path: str, out: TextIO) -> int:
    # verify_on_open: one CRC32C pass over what the index sidecars cover, so that a summary
    # of a damaged store says so (exit status 1) without decoding every frame
    async with EventStore(path, read_only=True, verify_on_open=True) as store:
        st = store.statistics()
        consumers = store.checkpoints()
        last_at = None
        async for rec in store.read_all(backwards=True, limit=1, raw=True):
            last_at = rec.recorded_at.isoformat()
    names = sorted(
        (first, name)
        for name in os.listdir(path)
        if (first := parse_segment_name(name)) is not None
    )
    versions = sorted(
        set(segment_format_versions(OsFileSystem(), [os.path.join(path, n) for _, n in names]))
    )
    doc: dict[str, Any] = {
        "path": path,
        "format_versions": versions,
        "segments": st.segments,
        "bytes": st.disk_bytes,
        "events": st.stored_events,
        "streams": st.streams,
        "head": st.head,
        "last_recorded_at": last_at,
        "consumers": {
            name: {"position": pos, "lag": max(0, st.head - pos)}
            for name, pos in sorted(consumers.items())
        },
    }
    if args.json:
        json.dump(doc, out, indent=2)
        print(file=out)
        return 0
    fmt = ", ".join(f"version {v}" if v else "unreadable header" for v in versions) or "-"
    rows = [
        ("store", path),
        ("format", fmt),
        ("segments", f"{st.segments:,} ({st.disk_bytes:,} bytes)"),
        ("events", _events_row(st.stored_events, st.head)),
        ("streams", f"{st.streams:,}"),
        (
            "head",
            f"{st.head} (last visible event recorded {last_at})" if last_at else str(st.head),
        ),
    ]
    if not consumers:
        rows.append(("consumers", "none"))
    for i, (name, c) in enumerate(doc["consumers"].items()):
        rows.append(
            (
                "consumers" if i == 0 else "",
                f"{_shown(name)}: at {c['position']:,} (lag {c['lag']:,})",
            )
        )
    for key, value in rows:
        print(f"{key:<10} {value}", file=out)
    return 0


def _shown(name: str) -> str:
    """A name as a terminal may show it: as it is when every character is printable, else
    quoted with escapes (a newline would forge a row, an escape sequence reach the
    terminal, a lone surrogate fail to print)."""
    return name if name.isprintable() else repr(name)


# --- dump -------------------------------------------------------------------------------------
async def _dump(args: argparse.Namespace, path: str, out: TextIO, progress: ProgressFn) -> int:
    async with EventStore(path, read_only=True) as store:
        head = store.head  # a snapshot: events committed after the start are not printed
        start = args.from_position
        total = max(0, head - start + 1)
        printed = 0
        if args.limit == 0:
            return 0
        async for rec in _matching(store, args, start, head):
            out.write(rec.to_json() + "\n")
            printed += 1
            progress(rec.position - start + 1, total, "positions")
            if args.limit is not None and printed >= args.limit:
                break
        out.flush()
    return 0


async def _matching(
    store: EventStore, args: argparse.Namespace, start: int, head: int
) -> AsyncIterator[RecordedEvent]:
    """The events matching --stream/--type from position ``start`` through ``head``."""
    types = frozenset(args.types)
    if args.stream is not None:
        async for rec in store.read_stream(args.stream, raw=True):
            if rec.position > head:
                return
            if rec.position >= start and (not types or rec.type in types):
                yield rec
        return
    filt = EventFilter(event_types=args.types) if types else None
    async for rec in store.read_all(from_position=start, filter=filt, raw=True):
        if rec.position > head:
            return
        yield rec


# --- tail -------------------------------------------------------------------------------------
async def _last(store: EventStore, args: argparse.Namespace, head: int) -> list[RecordedEvent]:
    """The last ``args.lines`` matching events at or before ``head``, oldest first."""
    want = args.lines
    if want == 0 or head < 0:
        return []
    types = frozenset(args.types)
    got: list[RecordedEvent] = []
    if args.stream is not None:
        async for rec in store.read_stream(args.stream, backwards=True, raw=True):
            if rec.position <= head and (not types or rec.type in types):
                got.append(rec)
                if len(got) >= want:
                    break
    else:
        filt = EventFilter(event_types=args.types) if types else None
        async for rec in store.read_all(
            from_position=head, backwards=True, limit=want, filter=filt, raw=True
        ):
            got.append(rec)
    got.reverse()
    return got


async def _tail(args: argparse.Namespace, path: str, out: TextIO, err: TextIO) -> int:
    async with EventStore(path, read_only=True, poll_interval=args.interval) as store:
        head = store.head
        limit: int | None = args.limit
        printed = 0

        def emit(rec: RecordedEvent) -> bool:
            """Print one event; True once --limit is reached."""
            nonlocal printed
            out.write(rec.to_json() + "\n")
            printed += 1
            return limit is not None and printed >= limit

        if limit == 0:
            return 0
        if args.from_position is None:
            for rec in await _last(store, args, head):
                if emit(rec):
                    out.flush()
                    return 0
            start = head + 1
        else:
            start = args.from_position
            if not args.follow:
                async for rec in _matching(store, args, start, head):
                    if emit(rec):
                        break
                out.flush()
                return 0
        out.flush()
        if not args.follow:
            return 0
        return await _follow(store, args, start, emit, out, err)


async def _follow(
    store: EventStore,
    args: argparse.Namespace,
    start: int,
    emit: Callable[[RecordedEvent], bool],
    out: TextIO,
    err: TextIO,
) -> int:
    """Print events from ``start`` on as the writer commits them, until --limit, Ctrl-C or
    SIGTERM (exit 0), or until following fails (exit 1)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    stream = args.stream
    filt = None
    if args.types or stream is not None:
        filt = EventFilter(
            stream_prefixes=[stream] if stream is not None else (), event_types=args.types
        )

    async def consume() -> None:
        async with store.subscribe(from_position=start, filter=filt) as sub:
            async for batch in sub.batches():
                for rec in batch:
                    if stream is not None and rec.stream != stream:
                        continue  # the prefix filter also passes longer names
                    if emit(rec):
                        out.flush()
                        return
                out.flush()

    task = asyncio.ensure_future(consume())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for t in (task, stopper):
            t.cancel()
        for t in (task, stopper):
            with contextlib.suppress(asyncio.CancelledError):
                await t
    if store.follow_error is not None:
        print(f"aioeventstore: stopped following: {store.follow_error}", file=err)
        return 1
    return 0


# --- stats ------------------------------------------------------------------------------------
def _stats(args: argparse.Namespace, path: str, out: TextIO, progress: ProgressFn) -> int:
    st = scan_log_statistics(path, progress=lambda done, total: progress(done, total, "bytes"))
    progress.done()
    if args.json:
        json.dump(st.to_json(), out, indent=2)
        print(file=out)
        return 0
    _print_stats(st, out)
    return 0


def _print_stats(st: LogStatistics, out: TextIO) -> None:
    ratio = f"{st.bytes / st.events:,.0f} bytes per event" if st.events else "no events"
    rows = [
        ("store", st.path),
        ("segments", f"{st.segments:,} ({st.bytes:,} bytes, {ratio})"),
        ("events", f"{st.events:,} in {st.streams:,} streams"),
        (
            "frames",
            f"{st.frames:,} ({st.frames - st.checkpoint_frames - st.metadata_frames:,} appends, "
            f"{st.checkpoint_frames:,} checkpoints, {st.metadata_frames:,} stream metadata)",
        ),
        ("batches", f"{st.batches:,} writes (one sync each with durability='fsync')"),
        ("first", st.first_recorded_at.isoformat() if st.first_recorded_at else "-"),
        ("last", st.last_recorded_at.isoformat() if st.last_recorded_at else "-"),
    ]
    if st.incomplete_bytes:
        rows.append(
            (
                "tail",
                f"{st.incomplete_bytes:,} bytes at the end are not a whole frame (a write in "
                "progress, or a torn tail the next open cuts)",
            )
        )
    for key, value in rows:
        print(f"{key:<9} {value}", file=out)
    for title, h in (
        ("events per append (frame)", st.frame_events),
        ("events per batch", st.batch_events),
    ):
        print(file=out)
        _print_histogram(title, h, out)


def _print_histogram(title: str, h: Histogram, out: TextIO) -> None:
    if h.count == 0:
        print(f"{title}: none", file=out)
        return
    print(
        f"{title}: mean {h.mean:,.1f}, p50 <= {_bound(h.percentile(50))}, "
        f"p99 <= {_bound(h.percentile(99))}",
        file=out,
    )
    peak = max(h.counts)
    lo = 0
    for bound, count in zip(h.bounds, h.counts, strict=True):
        if count:
            bar = "#" * max(1, round(40 * count / peak))
            label = f"{lo + 1}-{_bound(bound)}" if bound != lo + 1 else _bound(bound)
            print(f"  {label:>13}  {count:>12,}  {bar}", file=out)
        lo = int(bound) if bound != math.inf else lo


def _bound(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if value == math.inf else f"{int(value):,}"
