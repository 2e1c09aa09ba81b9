"""What ``EventStore.statistics()`` returns: :class:`StoreStatistics`, how it is gathered from
the store's live parts, and its rendering in the Prometheus text format.

:func:`gather` reads the commit loop's counters (kept per batch, see ``_commit.py``), the
index, the log's segments (one ``fstat`` each) and the open subscriptions' lag; it does no
other I/O and changes nothing. Call it on the event loop thread: the counters and the index
are only written there. The histograms themselves are ``_stats.py``'s.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._commit import CommitLoop
from ._index import Index
from ._log import Log
from ._stats import COUNT_BUCKETS, LATENCY_BUCKETS, Histogram, empty_histogram
from ._subscriptions import Subscription

__all__ = ["StoreStatistics", "gather", "prometheus_text"]


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """A snapshot of a store's counters (since it was opened) and sizes."""

    head: int
    """Position of the last durable event, -1 when the store is empty."""
    streams: int
    """Streams the index knows (every stream ever appended to, hidden or deleted ones too;
    also one whose first append is being written, or whose first append's write failed:
    see ``failed``)."""
    stored_events: int
    """Events the log holds now, up to ``head``: unlike ``head + 1``, not counting those
    removed by retention or scavenging (events hidden by stream metadata or a delete count
    until then)."""
    appends: int
    """Append calls resolved (written, idempotent repeats and version conflicts)."""
    events: int
    """Events written since open."""
    batches: int
    """Writes to the log (one per commit batch)."""
    syncs: int
    """fdatasync/F_FULLFSYNC calls made for batches."""
    bytes_written: int
    """Bytes written to the log since open (frames of events, checkpoints and metadata)."""
    queued: int
    """Appends waiting for the commit loop right now (queued or waiting for queue space)."""
    queued_bytes: int
    """Encoded bytes in the append queue right now (at most ``max_queue_bytes``, or one
    append of any size when it is alone)."""
    index_bytes: int
    """Bytes held by the index arrays."""
    batch_events: Histogram
    """Events per commit batch written (checkpoint-only batches count 0)."""
    sync_latency: Histogram
    """Microseconds each batch's write and sync took on the I/O thread (the write alone with
    ``durability="os"``)."""
    subscribers: Mapping[str, int]
    """Each open subscription's lag (committed events it has not examined yet), keyed by its
    name, or ``"#<id>"`` for an unnamed one (``Subscription.id``); a key already taken gets
    ``"#<id>"`` added."""
    segments: int
    """Segment files of the log."""
    disk_bytes: int
    """Bytes in the log's segment files."""
    failed: bool
    """Whether the store has failed stop for writes (after a write or sync error)."""

    @property
    def events_per_sync(self) -> float:
        """Events made durable per sync: the group commit's payoff."""
        return self.events / self.syncs if self.syncs else 0.0


def gather(
    commit: CommitLoop | None,
    index: Index,
    log: Log,
    subscriptions: Iterable[Subscription],
) -> StoreStatistics:
    """A :class:`StoreStatistics` of a store's parts now (``commit`` is None before a writer
    opens and for a read-only store: its counters are then 0). Subscriptions that are not
    open (not entered yet, or closed) are left out."""
    st = commit.stats if commit is not None else None
    subscribers: dict[str, int] = {}
    # (oldest first, so that a key stays with its subscription from one call to the next)
    for sub in sorted(subscriptions, key=lambda s: s.id):
        if sub._state != "open":  # not entered yet, or closed
            continue
        key = sub.name if sub.name is not None else f"#{sub.id}"
        while key in subscribers:  # (a name used twice, or one that looks like a made key)
            key = f"{key}#{sub.id}"
        subscribers[key] = sub.lag
    segments = [seg for seg in log.segments if not seg.retired]  # (not the removed ones)
    disk = 0
    for seg in segments:
        with contextlib.suppress(OSError):
            disk += seg.file.size()
    return StoreStatistics(
        head=index.head,
        streams=index.stream_count(),
        stored_events=index.event_count(),
        appends=st.appends if st else 0,
        events=st.events if st else 0,
        batches=st.batches if st else 0,
        syncs=st.syncs if st else 0,
        bytes_written=st.bytes_written if st else 0,
        queued=commit.queued if commit is not None else 0,
        queued_bytes=commit.queued_bytes if commit is not None else 0,
        index_bytes=index.memory_bytes(),
        batch_events=st.batch_events.snapshot("events")
        if st
        else empty_histogram(COUNT_BUCKETS, "events"),
        sync_latency=st.sync_latency.snapshot("us")
        if st
        else empty_histogram(LATENCY_BUCKETS, "us"),
        subscribers=subscribers,
        segments=len(segments),
        disk_bytes=disk,
        failed=commit is not None and commit.failure is not None,
    )


# --- Prometheus text exposition ---------------------------------------------------------------
def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(base: Mapping[str, str], **more: str) -> str:
    items = {**base, **more}
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items.items()) + "}"


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def prometheus_text(
    stats: StoreStatistics,
    *,
    prefix: str = "aioeventstore",
    labels: Mapping[str, str] | None = None,
) -> str:
    """Render ``store.statistics()`` in the Prometheus text exposition format (version 0.0.4).

    No dependency: serve the returned text from any HTTP handler with content type
    ``text/plain; version=0.0.4``. ``labels`` (e.g. ``{"store": "orders"}``) are added to
    every sample. Counters count since the store was opened. Sync latency is in seconds.
    """
    base = dict(labels or {})
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, value: float, **extra: str) -> None:
        full = f"{prefix}_{name}"
        lines.append(f"# HELP {full} {help_}")
        lines.append(f"# TYPE {full} {kind}")
        lines.append(f"{full}{_labels(base, **extra)} {_number(value)}")

    def histogram(name: str, help_: str, h: Histogram, scale: float) -> None:
        full = f"{prefix}_{name}"
        lines.append(f"# HELP {full} {help_}")
        lines.append(f"# TYPE {full} histogram")
        for bound, running in zip(h.bounds, h.cumulative(), strict=True):
            le = _number(bound * scale) if bound != math.inf else "+Inf"
            lines.append(f"{full}_bucket{_labels(base, le=le)} {running}")
        lines.append(f"{full}_sum{_labels(base)} {_number(h.sum * scale)}")
        lines.append(f"{full}_count{_labels(base)} {h.count}")

    metric("head", "gauge", "Position of the last durable event (-1: empty).", stats.head)
    metric("streams", "gauge", "Streams in the store.", stats.streams)
    metric("stored_events", "gauge", "Events the log holds now.", stats.stored_events)
    metric("appends_total", "counter", "Append calls resolved since open.", stats.appends)
    metric("events_total", "counter", "Events written since open.", stats.events)
    metric("batches_total", "counter", "Commit batches written since open.", stats.batches)
    metric("syncs_total", "counter", "Syncs of the log since open.", stats.syncs)
    metric("written_bytes_total", "counter", "Bytes written since open.", stats.bytes_written)
    metric("queued_appends", "gauge", "Appends waiting for the commit loop.", stats.queued)
    metric(
        "queued_bytes", "gauge", "Encoded bytes waiting for the commit loop.", stats.queued_bytes
    )
    metric("index_bytes", "gauge", "Bytes held by the in-memory index.", stats.index_bytes)
    metric("segments", "gauge", "Segment files of the log.", stats.segments)
    metric("disk_bytes", "gauge", "Bytes of the log's segment files.", stats.disk_bytes)
    metric("failed", "gauge", "1 when the store has failed stop for writes.", int(stats.failed))
    histogram("batch_events", "Events per commit batch.", stats.batch_events, 1.0)
    histogram(
        "sync_latency_seconds",
        "Time of each batch's write and sync on the I/O thread.",
        stats.sync_latency,
        1e-6,
    )
    full = f"{prefix}_subscriber_lag"
    lines.append(f"# HELP {full} Committed events a subscriber has not examined yet.")
    lines.append(f"# TYPE {full} gauge")
    for sub, lag in sorted(stats.subscribers.items()):
        lines.append(f"{full}{_labels(base, subscriber=sub)} {lag}")
    return "\n".join(lines) + "\n"
