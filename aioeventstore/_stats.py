"""Observability: fixed log-scale histograms, and statistics of a log computed from its files.
(``_store_stats.py`` has ``store.statistics()`` and its Prometheus rendering.)

The commit loop pays for its counters per *batch*, never per event: one bucket index
(``int.bit_length``), one increment and one addition per histogram. Buckets are powers of
two, so the bucket of a value is its bit length and no search is needed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._codec import recorded_at
from ._format import (
    FRAME_KIND_CHECKPOINT,
    FRAME_KIND_METADATA,
    SEGMENT_HEADER,
    SEGMENT_MAGIC,
    FrameInfo,
)
from ._fs import FileSystem, OsFileSystem

__all__ = ["Histogram", "LogStatistics", "scan_log_statistics"]

LATENCY_BUCKETS = 25
"""Sync latency buckets: ≤ 1 µs, ≤ 2 µs, …, ≤ 2**24 µs (16.8 s), then +Inf."""
COUNT_BUCKETS = 21
"""Events-per-batch (and per-frame) buckets: ≤ 1, ≤ 2, ≤ 4, …, ≤ 2**20, then +Inf."""


def bucket_of(value: int, finite: int) -> int:
    """The bucket of a non-negative int among ``finite`` power-of-two buckets (+Inf last)."""
    return min((max(value, 1) - 1).bit_length(), finite)


class Recorder:
    """The mutable side of a :class:`Histogram` (owned by one task or thread)."""

    __slots__ = ("counts", "finite", "total")

    def __init__(self, finite: int) -> None:
        self.finite = finite
        self.counts = [0] * (finite + 1)
        self.total = 0

    def observe(self, value: int) -> None:
        """Count one observation."""
        self.counts[min((max(value, 1) - 1).bit_length(), self.finite)] += 1
        self.total += value

    def snapshot(self, unit: str) -> Histogram:
        """An immutable copy."""
        bounds = (*(float(1 << i) for i in range(self.finite)), math.inf)
        return Histogram(bounds, tuple(self.counts), self.total, unit)


@dataclass(frozen=True, slots=True)
class Histogram:
    """Counts of observations in fixed log-scale buckets: bucket *i* holds the values greater
    than ``bounds[i-1]`` and at most ``bounds[i]`` (powers of two; the last bound is
    infinity). Immutable; a snapshot taken by ``store.statistics()``.
    """

    bounds: tuple[float, ...]
    """Inclusive upper bound of each bucket, ascending; the last is ``math.inf``."""
    counts: tuple[int, ...]
    """Observations per bucket (not cumulative), one per bound."""
    sum: int
    """Sum of every observed value (in ``unit``)."""
    unit: str
    """What a value counts: ``"events"`` or ``"us"`` (microseconds)."""

    @property
    def count(self) -> int:
        """Number of observations."""
        return sum(self.counts)

    @property
    def mean(self) -> float:
        """Mean observed value, 0.0 when there is none."""
        n = self.count
        return self.sum / n if n else 0.0

    def cumulative(self) -> tuple[int, ...]:
        """Observations at most each bound (what Prometheus calls a bucket)."""
        out: list[int] = []
        running = 0
        for c in self.counts:
            running += c
            out.append(running)
        return tuple(out)

    def percentile(self, q: float) -> float | None:
        """An upper estimate of the ``q``-th percentile (0 < q ≤ 100): the upper bound of the
        bucket holding it, so the true value is at most this and more than half of it (or
        ``math.inf`` when it lies past the last finite bound). None when nothing was observed.
        Raises ValueError for ``q`` outside (0, 100]."""
        if not 0 < q <= 100:
            raise ValueError(f"percentile q must be in (0, 100], not {q!r}")
        n = self.count
        if n == 0:
            return None
        rank = math.ceil(n * q / 100)
        for bound, running in zip(self.bounds, self.cumulative(), strict=True):
            if running >= rank:
                return bound
        return math.inf  # pragma: no cover - the last cumulative count is n


def empty_histogram(finite: int, unit: str) -> Histogram:
    """A histogram with no observations."""
    return Recorder(finite).snapshot(unit)


# --- statistics of a log, from its files ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LogStatistics:
    """What a store's files hold, computed by reading every frame (``aioeventstore stats``).

    ``frames`` counts appends', checkpoints' and stream metadata's frames (the latter two hold
    no events). ``batches`` counts commit batches (frames that share one write);
    ``incomplete_bytes`` are bytes at the end of the last segment that do not (yet) form a
    whole frame: a write in progress, or a torn tail a crash left.
    """

    path: str
    segments: int
    bytes: int
    frames: int
    checkpoint_frames: int
    metadata_frames: int
    events: int
    streams: int
    batches: int
    frame_events: Histogram
    batch_events: Histogram
    first_recorded_at: datetime | None
    last_recorded_at: datetime | None
    incomplete_bytes: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (RFC 8259: a percentile past the last bucket bound is the str
        ``"+Inf"``, as that bucket's key is)."""

        def finite(p: float | None) -> float | str | None:
            return "+Inf" if p == math.inf else p  # (past the last bound, as its bucket's key)

        def hist(h: Histogram) -> dict[str, Any]:
            return {
                "buckets": {
                    ("+Inf" if b == math.inf else str(int(b))): c
                    for b, c in zip(h.bounds, h.counts, strict=True)
                    if c
                },
                "count": h.count,
                "sum": h.sum,
                "p50": finite(h.percentile(50)),
                "p99": finite(h.percentile(99)),
            }

        return {
            "path": self.path,
            "segments": self.segments,
            "bytes": self.bytes,
            "frames": self.frames,
            "checkpoint_frames": self.checkpoint_frames,
            "metadata_frames": self.metadata_frames,
            "events": self.events,
            "streams": self.streams,
            "batches": self.batches,
            "events_per_frame": hist(self.frame_events),
            "events_per_batch": hist(self.batch_events),
            "first_recorded_at": None
            if self.first_recorded_at is None
            else self.first_recorded_at.isoformat(),
            "last_recorded_at": None
            if self.last_recorded_at is None
            else self.last_recorded_at.isoformat(),
            "incomplete_bytes": self.incomplete_bytes,
        }


def scan_log_statistics(
    path: str | os.PathLike[str],
    fs: FileSystem | None = None,
    progress: Callable[[int, int], None] | None = None,
    read_chunk_bytes: int = 1 << 20,
) -> LogStatistics:
    """Read every frame of the store at ``path`` without changing anything or taking its lock
    (a writer may be running) and count; blocking. ``progress(bytes_done, bytes_total)`` is
    called after each frame (callers rate-limit). Raises CorruptLog for damage a crash cannot
    leave; like a read-only store, it takes a missing segment for the end of the log (``verify``
    reports it)."""
    from ._follow import Follower
    from ._log import Log
    from .options import StoreOptions

    directory = os.fspath(path)
    fs = fs if fs is not None else OsFileSystem()
    log = Log(fs, directory, StoreOptions(read_chunk_bytes=max(read_chunk_bytes, 4096)))
    follower = Follower(log)
    frame_events = Recorder(COUNT_BUCKETS)
    batch_events = Recorder(COUNT_BUCKETS)
    streams: set[str] = set()
    counts = {"frames": 0, "checkpoints": 0, "metadata": 0, "events": 0, "batches": 0}
    batch: list[int] = [-1, -1, 0]  # ordinal, write offset, events of the batch being counted
    times: list[int] = []  # recorded_at of the first and the last event (µs)
    total = sum(
        _size(fs, os.path.join(directory, name))
        for name in fs.listdir(directory)
        if name.endswith(".seg")
    )
    base = [0, 0]  # ordinal of the segment being read, bytes of the segments before it

    def sink(ordinal: int, info: FrameInfo) -> None:
        if progress is not None:
            while base[0] < ordinal:
                base[1] += log.segments[base[0]].file.size()
                base[0] += 1
            progress(base[1] + info.offset + info.length, total)
        counts["frames"] += 1
        if (ordinal, info.write_offset) != (batch[0], batch[1]):
            if batch[0] >= 0:
                batch_events.observe(batch[2])
            batch[:] = [ordinal, info.write_offset, 0]
            counts["batches"] += 1
        if info.kind == FRAME_KIND_CHECKPOINT:
            counts["checkpoints"] += 1
            return
        if info.kind == FRAME_KIND_METADATA:  # no events, and not an append
            counts["metadata"] += 1
            return
        batch[2] += info.event_count
        counts["events"] += info.event_count
        frame_events.observe(info.event_count)
        streams.add(info.stream)
        if times:
            times[1] = info.recorded_at_us
        else:
            times.extend((info.recorded_at_us, info.recorded_at_us))

    try:
        follower.scan(sink)
        if batch[0] >= 0:
            batch_events.observe(batch[2])
        sizes = [seg.file.size() for seg in log.segments]
        incomplete = sizes[-1] - follower.end if sizes else 0
    finally:
        log.close()

    return LogStatistics(
        directory,
        len(sizes),
        sum(sizes),
        counts["frames"],
        counts["checkpoints"],
        counts["metadata"],
        counts["events"],
        len(streams),
        counts["batches"],
        frame_events.snapshot("events"),
        batch_events.snapshot("events"),
        recorded_at(times[0]) if times else None,
        recorded_at(times[1]) if times else None,
        incomplete,
    )


def _size(fs: FileSystem, path: str) -> int:
    try:
        f = fs.open(path, write=False)
    except OSError:
        return 0
    try:
        return f.size()
    finally:
        f.close()


def segment_format_versions(fs: FileSystem, paths: list[str]) -> list[int]:
    """The format version in each segment header (0 when the header is not readable), in
    ``paths`` order (a directory's segments, oldest first). Left out: a segment removed
    since the listing (the writer's retention), and a last one shorter than its header (a
    rotation in progress: the header is written right after the file is made)."""
    out = []
    for i, p in enumerate(paths):
        try:
            f = fs.open(p, write=False)
        except FileNotFoundError:
            continue
        except OSError:
            out.append(0)
            continue
        try:
            raw = f.pread(SEGMENT_HEADER.size, 0)
        finally:
            f.close()
        if len(raw) < SEGMENT_HEADER.size and i == len(paths) - 1:
            continue
        if len(raw) < SEGMENT_HEADER.size or raw[:8] != SEGMENT_MAGIC:
            out.append(0)
        else:
            out.append(int(SEGMENT_HEADER.unpack_from(raw)[1]))
    return out
