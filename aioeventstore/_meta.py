"""Stream metadata: per-stream retention (max count, max age, truncate before, deletion).

Metadata is written through the group commit as a metadata frame (FORMAT.md) and applied in
memory only once that frame is durable, like a named consumer's checkpoint: so reads hide
exactly what a reopened store would hide. It never shows up as an event.

What is hidden, for a stream with metadata (a *prefix* of the stream, plus max age):

* versions below ``truncate_before``;
* versions below ``last version + 1 - max_count``;
* events whose ``recorded_at`` is older than ``now - max_age`` (checked per frame: all events
  of one append share one ``recorded_at``).

A soft delete sets ``truncate_before`` to the last version + 1 and marks the stream deleted
until it is appended to again; a hard delete does the same and leaves a permanent tombstone.

Threads: only the event loop thread touches a :class:`StreamMetas` (the commit loop plans and
commits through it; reads take snapshots from it to hand to reader threads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ._index import Index
    from .events import RecordedEvent

__all__ = ["StreamMetadata"]

_NEVER: Final = -(1 << 63)  # an oldest-visible timestamp that hides nothing
MAX_AGE_SECONDS: Final = 9_000_000_000_000
"""The longest ``max_age`` (and ``StoreOptions.retention_age``): its microseconds fit 63 bits."""
_MAX_AGE: Final = timedelta(seconds=MAX_AGE_SECONDS)
MAX_AGE_LIMIT: Final = f"at most {MAX_AGE_SECONDS:,} (about 290,000 years: microseconds in 63 bits)"
"""How errors about either limit state the bound."""


@dataclass(frozen=True, slots=True)
class StreamMetadata:
    """A stream's retention settings, as ``EventStore.stream_metadata(stream)`` returns them.

    ``max_count``: at most this many of the newest events are visible (None: no limit).
    ``max_age``: events recorded longer ago than this are hidden (None: no limit).
    ``truncate_before``: versions below it are hidden (None: none).
    ``deleted``: the stream was deleted (soft or hard) and nothing was appended since.
    ``hard_deleted``: a permanent tombstone; appends raise ``StreamDeleted``.
    ``revision``: how many times the metadata was written, minus one (-1: never).

    Hidden events are skipped by reads and subscriptions from the moment the call that set the
    metadata returns; ``EventStore.scavenge()`` later frees their space on disk.
    """

    max_count: int | None = None
    max_age: timedelta | None = None
    truncate_before: int | None = None
    deleted: bool = False
    hard_deleted: bool = False
    revision: int = -1

    def to_fields(self) -> dict[str, int]:
        """The MessagePack map stored in a metadata frame (FORMAT.md)."""
        out: dict[str, int] = {}
        if self.max_count is not None:
            out["max_count"] = self.max_count
        if self.max_age is not None:
            out["max_age_us"] = self.max_age // timedelta(microseconds=1)
        if self.truncate_before is not None:
            out["truncate_before"] = self.truncate_before
        if self.hard_deleted:
            out["deleted"] = 2
        elif self.deleted:
            out["deleted"] = 1
        return out

    @classmethod
    def from_fields(cls, fields: dict[str, int], revision: int) -> StreamMetadata:
        """Inverse of ``to_fields``; unknown keys are ignored (a later version's additions)."""
        age = fields.get("max_age_us")
        deleted = fields.get("deleted", 0)
        return cls(
            max_count=fields.get("max_count"),
            max_age=None if age is None else timedelta(microseconds=age),
            truncate_before=fields.get("truncate_before"),
            deleted=deleted >= 1,
            hard_deleted=deleted == 2,
            revision=revision,
        )

    def first_visible(self, last_version: int) -> int:
        """The lowest version not hidden by ``truncate_before``/``max_count``."""
        low = self.truncate_before or 0
        if self.max_count is not None:
            low = max(low, last_version + 1 - self.max_count)
        return low

    def oldest_visible_us(self, now_us: int) -> int:
        """The oldest recorded_at (µs since the epoch) not hidden by ``max_age``."""
        if self.max_age is None:
            return _NEVER
        return now_us - self.max_age // timedelta(microseconds=1)


def check_max_count(value: object) -> int | None:
    """A ``max_count`` argument: None or an int in [1, 2**63) (stored as a 64-bit int)."""
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < 1 << 63
    ):
        raise ValueError(f"max_count must be None or an int in [1, 2**63), not {value!r:.60}")
    return value


def check_max_age(value: object) -> timedelta | None:
    """A ``max_age`` argument as a timedelta (seconds may be given as int/float), positive and
    at most ``MAX_AGE_SECONDS`` (stored in microseconds as a 64-bit int)."""
    if value is None:
        return None
    given = value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # (NaN and infinity are out of range too)
        value = timedelta(seconds=value) if 0 < value <= MAX_AGE_SECONDS else None
    elif not isinstance(value, timedelta):
        raise TypeError(f"max_age must be a timedelta, seconds or None, not {value!r:.60}")
    if value is None or not timedelta(microseconds=1) <= value <= _MAX_AGE:
        raise ValueError(
            f"max_age must be None or a positive timedelta or number of seconds, "
            f"{MAX_AGE_LIMIT}, not {given!r:.60}"
        )
    return value


class StreamMetas:
    """Every stream's metadata: durable (what reads honour) and planned (in-flight writes, what
    the commit loop checks appends against). Event loop thread only."""

    def __init__(self) -> None:
        self.durable: dict[str, StreamMetadata] = {}
        self._planned: dict[str, StreamMetadata] = {}
        self.tombstones: set[str] = set()  # hard-deleted streams, planned or durable
        self._cache: dict[str, tuple[int, int]] | None = None
        self._dynamic = 0  # streams whose hidden range moves by itself (max_count, max_age)

    def current(self, stream: str) -> StreamMetadata | None:
        """The newest metadata of ``stream``, durable or planned (commit loop)."""
        rec = self._planned.get(stream)
        return rec if rec is not None else self.durable.get(stream)

    def plan(self, stream: str, rec: StreamMetadata) -> None:
        """A metadata frame for ``stream`` was laid out in a batch (commit loop)."""
        self._planned[stream] = rec
        if rec.hard_deleted:
            self.tombstones.add(stream)

    def commit(self, stream: str, rec: StreamMetadata) -> None:
        """``rec`` is durable: reads honour it from now on."""
        old = self.durable.get(stream)
        if old is not None and old.revision > rec.revision:
            return
        if self._planned.get(stream) is rec:
            del self._planned[stream]
        self.durable[stream] = rec
        if rec.hard_deleted:
            self.tombstones.add(stream)
        self._dynamic += _dynamic(rec) - (_dynamic(old) if old is not None else 0)
        self._cache = None

    def forget_planned(self) -> None:
        """The store failed: planned metadata never became durable."""
        self._planned.clear()
        self.tombstones = {s for s, r in self.durable.items() if r.hard_deleted}

    def hidden(self, index: Index) -> dict[str, tuple[int, int]] | None:
        """A snapshot for a reader thread: stream → (first visible version, oldest visible
        recorded_at µs) for every stream with metadata, or None when none has any."""
        if not self.durable:
            return None
        if self._cache is not None:
            return self._cache
        now_us = time.time_ns() // 1000
        snap = {
            s: (
                rec.first_visible(index.committed_last_version(s)),
                rec.oldest_visible_us(now_us),
            )
            for s, rec in self.durable.items()
        }
        if not self._dynamic:
            self._cache = snap
        return snap

    def is_hidden(self, index: Index, event: RecordedEvent) -> bool:
        """Whether an event already read is hidden right now (checked again before delivery,
        so metadata written while a chunk was in flight applies at once)."""
        rec = self.durable.get(event.stream)
        if rec is None:
            return False
        if event.version < rec.first_visible(index.committed_last_version(event.stream)):
            return True
        if rec.max_age is None:
            return False
        try:
            return event.recorded_at < datetime.now(UTC) - rec.max_age
        except OverflowError:  # a limit reaching back before the year 1 hides nothing
            return False

    def public(self, stream: str, index: Index) -> StreamMetadata:
        """What ``stream_metadata`` returns: ``deleted`` holds only until the next append."""
        rec = self.durable.get(stream)
        if rec is None:
            return StreamMetadata()
        if rec.deleted and not rec.hard_deleted:
            last = index.committed_last_version(stream)
            if last + 1 > (rec.truncate_before or 0):
                rec = replace(rec, deleted=False)
        return rec


def _dynamic(rec: StreamMetadata) -> int:
    return int(rec.max_count is not None or rec.max_age is not None)
