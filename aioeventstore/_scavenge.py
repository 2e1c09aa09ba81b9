"""Scavenging and store-wide retention: freeing the disk space of hidden events.

Blocking I/O only, through the file-layer seam; the store (``store.py``) plans on the event
loop thread, runs one segment at a time here on its scavenge thread, and applies each result
to the index and the segment list on the loop thread in one synchronous step.

**Scavenge** rewrites sealed segments (never the tail one the commit loop appends to) without
the frames it may remove:

* an events frame whose events are *all* hidden by their stream's metadata, as long as every
  older frame of that stream was removed too (removal is always a prefix of a stream, so its
  versions stay dense from its oldest stored version on) and unless it holds the stream's
  last event while ``truncate_before`` does not cover that event (as in KurrentDB, the last
  event keeps the stream's version; a deleted stream keeps it in its metadata instead);
* a checkpoint frame below its consumer's current position, a metadata frame below its
  stream's current revision (superseded: the current one is durable in this or a later
  segment).

A frame of which only some events are hidden is kept whole; reads skip its hidden events.
Kept frames are copied byte for byte (same positions, same checksums). The new segment is
written to ``<segment>.scavenge``, synced, renamed over the old one, and the directory
synced; a segment left with no frame is removed instead (and the directory synced). A crash
leaves either the old or the new file, both valid, and perhaps a ``.scavenge`` file that
opening removes. The rewritten segment's header has the SCAVENGED flag: positions may skip
inside it (FORMAT.md).

**Retention** (``retention_bytes``/``retention_age``) drops whole oldest sealed segments,
oldest first, one ``remove`` + ``sync_dir`` at a time, so a crash leaves a prefix dropped.

Readers never see a half-swapped segment: a read pins the ``Segment`` object it planned
against (see ``_segment.py``), whose open file keeps reading the old file after the rename
or removal; the file is closed when the last such read ends.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from ._compress import expand, inner_frames
from ._format import (
    FRAME_KIND_CHECKPOINT,
    FRAME_KIND_COMPRESSED,
    FRAME_KIND_EVENTS,
    FRAME_KIND_METADATA,
    SCAVENGE_SUFFIX,
    SEGMENT_FLAG_SCAVENGED,
    SEGMENT_HEADER_SIZE,
    FrameError,
    FrameInfo,
    pack_segment_header,
)
from ._fs import FileHandle, FileSystem
from ._indexfile import sidecar_path
from ._segment import Segment
from .errors import CorruptLog

__all__ = ["ScavengeReport"]

_WRITE_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ScavengeReport:
    """What ``EventStore.scavenge()`` (or ``enforce_retention()``) did.

    ``bytes_before``/``bytes_after`` are the sizes of all segment files (the whole log)
    before and after; ``events_removed`` counts events whose frames were removed from disk
    (events hidden but kept in a partly hidden frame are not counted); ``duration`` is in
    seconds.
    """

    segments_scanned: int
    """Sealed segments examined (the segment being written is never scavenged)."""
    segments_rewritten: int
    """Segments copied without their removable frames and swapped in atomically."""
    segments_dropped: int
    """Segments deleted whole: every frame in them was removable."""
    frames_removed: int
    """Frames removed from disk (of events, and checkpoints or metadata superseded)."""
    events_removed: int
    """Events whose frames were removed from disk."""
    bytes_before: int
    """Bytes in all segment files before the run."""
    bytes_after: int
    """Bytes in all segment files after the run."""
    duration: float
    """Seconds the run took."""

    @property
    def bytes_freed(self) -> int:
        """Bytes the log shrank by."""
        return self.bytes_before - self.bytes_after


@dataclass(slots=True)
class ScavengePlan:
    """What may be removed, decided on the loop thread from durable state only."""

    hidden: dict[str, tuple[int, int]]  # stream → (first visible version, oldest visible µs)
    last: dict[str, int]  # stream → committed last version (streams with metadata)
    keeps_end: dict[str, bool]  # stream → its last event must stay (truncate_before short)
    revisions: dict[str, int]  # stream → current metadata revision
    checkpoints: dict[str, int]  # consumer → current position
    started: set[str] = field(default_factory=set)  # streams with a kept frame seen


@dataclass(slots=True)
class SegmentResult:
    """The outcome for one sealed segment (``new`` None and ``dropped``: removed)."""

    ordinal: int
    new: Segment | None
    dropped: bool
    moved: dict[int, int]  # old offset → new offset of every kept events frame (or container)
    streams: list[str]  # the stream of each index row kept, in order
    removed: list[tuple[str, int, int]]  # (stream, first version, count) of removed frames
    frames_removed: int
    bytes_before: int
    bytes_after: int


def scavenge_segment(
    fs: FileSystem, ordinal: int, seg: Segment, plan: ScavengePlan, chunk: int
) -> SegmentResult | None:
    """Rewrite (or remove) one sealed segment without what ``plan`` allows removing; None when
    nothing in it can go (the file is left alone). Blocking; raises OSError or CorruptLog.

    One pass: frames are checked as they are scanned; the temporary file is only created at
    the first frame that goes (the frames before it are copied with one read), and kept frames
    are then copied from the scan's buffer, written in chunks of about 1 MiB.
    """
    moved: dict[int, int] = {}
    streams: list[str] = []
    removed: list[tuple[str, int, int]] = []
    hidden, started = plan.hidden, plan.started
    tmp = seg.path + SCAVENGE_SUFFIX
    state = _Copy()

    def removable(info: FrameInfo, started: set[str]) -> bool:
        if info.kind == FRAME_KIND_EVENTS:
            s = info.stream
            h = hidden.get(s)
            if h is None or s in started:
                return False
            end = info.first_version + info.event_count
            go = end <= h[0] or info.recorded_at_us < h[1]
            # the stream's last event keeps its version, unless truncate_before keeps it
            return go and not (end - 1 >= plan.last[s] and plan.keeps_end[s])
        if info.kind == FRAME_KIND_CHECKPOINT:
            return info.first_version < plan.checkpoints.get(info.stream, -1)
        if info.kind == FRAME_KIND_METADATA:
            return info.first_version < plan.revisions.get(info.stream, -1)
        return False

    def on_frame(info: FrameInfo, buf: bytes, start: int) -> None:
        if info.kind == FRAME_KIND_COMPRESSED:  # a container goes whole or stays whole
            try:
                inner = inner_frames(expand(buf, start, start + info.length), info)
            except FrameError as exc:
                raise CorruptLog(seg.path, info.offset, exc.reason) from None
            trial = set(started)
            go = all(removable(f, trial) for f in inner)
            frames = [f for f in inner if f.kind == FRAME_KIND_EVENTS]
        else:
            go = removable(info, started)
            frames = [info] if info.kind == FRAME_KIND_EVENTS else []
        if go:
            removed.extend((f.stream, f.first_version, f.event_count) for f in frames)
        elif frames:
            started.update(f.stream for f in frames)
            moved[info.offset] = state.at
            streams.extend(f.stream for f in frames)
        if go:
            state.removed += 1
            if state.out is None:  # the first frame to go: start the new file
                with contextlib.suppress(FileNotFoundError):
                    fs.remove(tmp)  # a leftover of an earlier attempt in this process
                out = fs.open(tmp, write=True, create=True)
                header = pack_segment_header(
                    seg.first_position, SEGMENT_FLAG_SCAVENGED, seg.format_version
                )
                before = seg.read(info.offset - SEGMENT_HEADER_SIZE, SEGMENT_HEADER_SIZE)
                state.start(out, header + before)
        elif state.out is not None:
            state.append(bytes(buf[start : start + info.length]))
        else:
            state.at += info.length

    size = seg.file.size()
    try:
        end, _pos, reason = seg.scan(SEGMENT_HEADER_SIZE, seg.first_position, chunk, on_frame, True)
        if reason is not None or end != size:
            raise CorruptLog(seg.path, end, f"scavenge: {reason or 'bytes after the last frame'}")
        if state.out is None:
            return None
        state.flush()
        if not moved and state.at == SEGMENT_HEADER_SIZE:  # nothing kept: drop the segment
            state.out.close()
            fs.remove(tmp)
            drop_segment(fs, seg)
            return SegmentResult(ordinal, None, True, {}, [], removed, state.removed, size, 0)
        state.out.sync()
        _remove_sidecar(fs, seg)
        fs.rename(tmp, seg.path)
        fs.sync_dir(os.path.dirname(seg.path))
    except BaseException:
        if state.out is not None:
            state.out.close()
        raise
    new = Segment(seg.path, seg.first_position, state.out)
    new.format_version, new.flags = seg.format_version, SEGMENT_FLAG_SCAVENGED
    return SegmentResult(
        ordinal, new, False, moved, streams, removed, state.removed, size, state.at
    )


class _Copy:
    """The new segment being written, buffered; ``at`` is where its next frame goes."""

    def __init__(self) -> None:
        self.out: FileHandle | None = None
        self.at = SEGMENT_HEADER_SIZE  # until ``start``: the old offsets, nothing moved yet
        self.removed = 0
        self._parts: list[bytes] = []
        self._buffered = 0
        self._written = 0

    def start(self, out: FileHandle, prefix: bytes) -> None:
        """The header and every frame before the first removed one (``at`` bytes)."""
        assert len(prefix) == self.at
        self.out = out
        self._parts.append(prefix)
        self._buffered = len(prefix)

    def append(self, data: bytes) -> None:
        self._parts.append(data)
        self._buffered += len(data)
        self.at += len(data)
        if self._buffered >= _WRITE_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._parts and self.out is not None:
            self.out.pwrite(b"".join(self._parts), self._written)
            self._written += self._buffered
            self._parts.clear()
            self._buffered = 0


def drop_segment(fs: FileSystem, seg: Segment) -> int:
    """Remove a sealed segment's file (and its index sidecar) durably; returns its size."""
    size = seg.file.size()
    _remove_sidecar(fs, seg)
    fs.remove(seg.path)
    fs.sync_dir(os.path.dirname(seg.path))
    return size


def _remove_sidecar(fs: FileSystem, seg: Segment) -> None:
    """Remove the index sidecar of a segment about to be replaced or removed: it would no
    longer describe it (opening would notice and scan; removing it first is simpler)."""
    with contextlib.suppress(FileNotFoundError):
        fs.remove(sidecar_path(seg.path))


def segment_newest_us(seg: Segment, offset: int, length: int) -> int:
    """recorded_at (µs) of the events frame at ``offset`` of ``seg`` (its last one).
    Raises CorruptLog when that frame is damaged (on disk since the index was built)."""
    from ._format import FrameError, check_frame  # local: only retention needs them

    data = seg.read(length, offset)
    try:
        return check_frame(data, 0, len(data)).recorded_at_us
    except FrameError as exc:
        raise CorruptLog(seg.path, offset, exc.reason) from None
