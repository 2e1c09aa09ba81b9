"""StoreOptions: every tunable of a store, each stated as what it means for the caller."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, TypedDict

from ._meta import MAX_AGE_LIMIT as _MAX_AGE_LIMIT
from ._meta import MAX_AGE_SECONDS as _MAX_AGE_SECONDS  # (retention_age in µs: 63 bits)

__all__ = ["Compression", "Durability", "OptionOverrides", "StoreOptions"]

Durability = Literal["fsync", "os"]
Compression = Literal["none", "zstd"]

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """How a store trades durability, memory and file sizes. Pass to ``EventStore(path, ...)``.

    durability
        ``"fsync"`` (default): an append is acknowledged only after its bytes are on stable
        storage (``fdatasync`` on Linux, ``F_FULLFSYNC`` on macOS), so it survives a power cut.
        ``"os"``: acknowledged once handed to the OS (``write`` returned); survives a crash of
        this process, not a power cut or kernel crash.
    segment_bytes
        Size at which the log rotates to a new segment file (default 64 MiB). A segment can
        exceed it by at most one commit batch, since a batch is never split across files.
    max_event_bytes
        Largest encoded event (type, metadata and data) accepted (default 4 MiB); a larger one
        raises ``EventTooLarge`` in the caller's task.
    max_append_bytes
        Largest encoded append (all its events) accepted (default 16 MiB).
    max_batch_bytes
        The commit loop stops draining the queue into one batch past this many bytes (default
        8 MiB); a single larger append still goes alone.
    max_queue_bytes
        Bytes of encoded appends allowed to wait for the commit loop (default 64 MiB). When it
        is full, ``append`` waits (backpressure) instead of growing memory without end.
    idempotency_window
        How many recent appends (default 10,000) whose event ids the caller chose
        (``NewEvent(id=...)``) are remembered, so that a retry with ``expected_version=ANY``
        (or ``STREAM_EXISTS``) and the same ids returns the first result instead of writing
        again. Appends with generated ids are not remembered: no retry can repeat those ids.
        The window is rebuilt from the log's tail on open. Retries with an explicit expected
        version are checked exactly against the log, with no window.
    read_chunk_bytes
        How many bytes one read step takes from disk (default 1 MiB); bounds a reader's memory.
        Bytes already in the page cache are read and decoded on the event loop instead, at
        most 448 KiB or 2,048 events a step (see the README's "Performance").
    pause_gc_while_decoding
        While a chunk is decoded, CPython's cyclic garbage collector is paused (default
        True; not for a step of under 16 KiB decoded on the event loop's thread, such as a
        short stream's read, for which the pause would cost more than the collection it
        saves): a chunk creates thousands of live objects that the collector would otherwise
        scan over and over, costing replay about a fifth of its speed. Reference counting
        frees memory as usual; the collector resumes after the chunk (if it was enabled);
        after a chunk of 64 KiB or more, with the chunk's objects moved to the oldest
        generation (``gc.freeze()`` + ``gc.unfreeze()``; not when the process has frozen
        objects) rather than walked by a young collection. Set False if your application
        manages ``gc`` itself.
    verify_on_open
        Opening loads each segment's index from its sidecar file instead of rescanning the
        segment, checking the sidecar against the segment's size and last frame. With
        ``verify_on_open=True`` (default False) every byte a sidecar covers is also
        checksummed (one fast CRC32C pass, no decoding), so damage anywhere in the log is
        reported by opening (``CorruptLog``) rather than by the first read that reaches it.
        Reads check every frame's checksum either way; ``verify()`` checks everything.
    compression
        ``"none"`` (default) or ``"zstd"``: each commit batch's frames are written as zstd
        compressed containers of about 16 KiB of frames, where that makes them smaller (a
        batch under 1 KiB, e.g. one small append alone, is written as it is). Needs the
        ``zstandard`` package (``pip install 'aioeventstore[zstd]'``); opening raises
        ``CompressionUnavailable`` without it. Chosen per open: a store may hold compressed and
        uncompressed frames side by side, and every read decompresses transparently, whatever
        this option says now. Durability, recovery and verification are unchanged.
    compression_level
        The zstd level (default 3; 1 is fastest, 22 smallest). Only used when compressing.
    retention_bytes
        Store-wide retention by size, like Kafka's ``retention.bytes`` (default None: keep
        everything). When the log's files total more, whole oldest *sealed* segments are
        dropped (never the one being written) until it is at most this, or only the tail is
        left. Applied after each rotation and by ``await store.enforce_retention()``.
    retention_age
        Store-wide retention by age, like Kafka's ``retention.ms`` (a timedelta or seconds;
        default None): oldest sealed segments whose newest event was recorded longer ago are
        dropped, at the same moments. Dropped events are gone for every stream and reader:
        ``read_all``/subscriptions from position 0 start at the first retained position,
        named consumers behind it continue from there, and a stream all of whose events were
        dropped keeps its version (its ``truncate_before`` is set to its end first).
    """

    durability: Durability = "fsync"
    segment_bytes: int = 64 * MiB
    max_event_bytes: int = 4 * MiB
    max_append_bytes: int = 16 * MiB
    max_batch_bytes: int = 8 * MiB
    max_queue_bytes: int = 64 * MiB
    idempotency_window: int = 10_000
    read_chunk_bytes: int = 1 * MiB
    pause_gc_while_decoding: bool = True
    verify_on_open: bool = False
    compression: Compression = "none"
    compression_level: int = 3
    retention_bytes: int | None = None
    retention_age: timedelta | float | None = None

    @property
    def retention_age_seconds(self) -> float:
        """``retention_age`` in seconds (infinity when None)."""
        age = self.retention_age
        if age is None:
            return float("inf")
        return age.total_seconds() if isinstance(age, timedelta) else float(age)

    def __post_init__(self) -> None:
        if self.retention_bytes is not None and (
            not isinstance(self.retention_bytes, int)
            or isinstance(self.retention_bytes, bool)
            or self.retention_bytes < 0
        ):
            raise ValueError(
                f"StoreOptions.retention_bytes must be None or an int >= 0, "
                f"not {self.retention_bytes!r}"
            )
        age = self.retention_age
        if age is not None:
            seconds = math.nan
            if not isinstance(age, bool) and isinstance(age, (int, float, timedelta)):
                with contextlib.suppress(OverflowError):  # (an int past a float)
                    seconds = self.retention_age_seconds
            if not 0 < seconds <= _MAX_AGE_SECONDS:  # (NaN, infinity: None means no limit)
                raise ValueError(
                    "StoreOptions.retention_age must be None (no limit) or a positive timedelta "
                    f"or number of seconds, {_MAX_AGE_LIMIT}, not {age!r:.60}"
                )
        for name in ("pause_gc_while_decoding", "verify_on_open"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"StoreOptions.{name} must be True or False, not {getattr(self, name)!r}"
                )
        if self.durability not in ("fsync", "os"):
            raise ValueError(f"durability must be 'fsync' or 'os', not {self.durability!r}")
        if self.compression not in ("none", "zstd"):
            raise ValueError(
                f"StoreOptions.compression must be 'none' or 'zstd', not {self.compression!r}"
            )
        level = self.compression_level
        if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= 22:
            raise ValueError(
                f"StoreOptions.compression_level must be an int in 1..22, not {level!r}"
            )
        positive = {
            "segment_bytes": (self.segment_bytes, 4 * KiB),
            "max_event_bytes": (self.max_event_bytes, 64),
            "max_append_bytes": (self.max_append_bytes, 64),
            "max_batch_bytes": (self.max_batch_bytes, 1),
            "max_queue_bytes": (self.max_queue_bytes, 1),
            "idempotency_window": (self.idempotency_window, 0),
            "read_chunk_bytes": (self.read_chunk_bytes, 4 * KiB),
        }
        for name, (value, low) in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"StoreOptions.{name} must be an int >= {low}, not {value!r}")
        if self.max_append_bytes >= 1 << 31:
            raise ValueError(
                "StoreOptions.max_append_bytes must be below 2 GiB (frame length limit)"
            )
        if self.max_event_bytes > self.max_append_bytes:
            raise ValueError(
                f"StoreOptions.max_event_bytes ({self.max_event_bytes}) cannot exceed "
                f"max_append_bytes ({self.max_append_bytes})"
            )


class OptionOverrides(TypedDict, total=False):
    """StoreOptions fields given as keywords to ``EventStore(path, **overrides)``."""

    durability: Durability
    segment_bytes: int
    max_event_bytes: int
    max_append_bytes: int
    max_batch_bytes: int
    max_queue_bytes: int
    idempotency_window: int
    read_chunk_bytes: int
    pause_gc_while_decoding: bool
    verify_on_open: bool
    compression: Compression
    compression_level: int
    retention_bytes: int | None
    retention_age: timedelta | float | None
