"""Read-only stores: scan a log that another process may be writing, and follow it as it grows.

A read-only store takes no lock and changes nothing on disk, so it can run next to the writer
(``aioeventstore info``/``tail -f``). Its view of the log differs from recovery's in one rule:
bytes at the end of the last segment that do not form a whole, checked frame are *not written
yet* (a write in progress, or a torn tail the next writer will cut), never cut. Everything else
is judged as recovery judges it: a bad frame followed by a frame of a later write, a bad frame
in a segment that has a successor, or a break in positions is ``CorruptLog``.

Following is polling: each :meth:`Follower.scan` re-reads the last segment from the end of
its last whole frame, then looks for the segment named after the next position (the writer's
next segment after a rotation). Finding the successor proves the old segment complete (the
writer syncs a segment before creating the next), so it is scanned once more to its end
before the follower moves on: nothing written before a rotation is missed.

Limits: the follower reads the page cache, so it can see a batch a moment before the writer's
sync makes it durable; if that sync then fails (or the power is cut), the writer's recovery
cuts the batch and the follower, which already delivered it, stops with ``CorruptLog`` ("the
log was cut behind this reader").

Retention and scavenging (``_scavenge.py``): every scan accepts the gaps recovery accepts (a
segment starting past the previous one's end, skips inside a segment with the SCAVENGED flag,
a stream continuing past its next version with as many positions missing before it, see
:func:`frame_indexer`). So the first scan starts at the oldest segment there is, and a reader
that falls behind the writer's retention goes on at the oldest segment left after the one it
was reading: the next segment is the one with the lowest name past the last one's, not the
exact next name. (A segment missing for another reason, an operator's ``rm``, is skipped the
same way, as recovery skips it; ``verify`` reports it.) Sealed segments whose files were
removed, oldest first, are listed in ``removed`` for the store to drop from its index and close:
a reader must not keep the disk space retention frees. A segment that scavenging rewrote under
the same name stays readable through the handle already open (its old file's space is kept
until the reader closes). Metadata frames are collected in ``metadata`` for the store to apply;
they are not events.

Threads: one thread at a time calls ``scan`` (the store's I/O thread); the frames it finds are
added to the index on the event loop thread by :func:`frame_indexer`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ._compress import expand, inner_frames
from ._format import (
    FORMAT_VERSION,
    FRAME_KIND_CHECKPOINT,
    FRAME_KIND_COMPRESSED,
    FRAME_KIND_METADATA,
    SEGMENT_FLAG_SCAVENGED,
    SEGMENT_HEADER_SIZE,
    FrameError,
    FrameInfo,
    NewerFormat,
    parse_segment_name,
    segment_name,
)
from ._index import Index
from ._log import Log, later_write_at
from ._segment import Segment
from .errors import CorruptLog, UnsupportedFormat

FoundFrame = Callable[[int, FrameInfo], None]
"""Called with (segment ordinal, frame info) for each whole frame found, in log order."""


class Follower:
    """Incremental read-only scanning of a store's log (see the module docstring)."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self.resume: Callable[[int, Segment, int], tuple[int, int]] | None = None
        """Set for the first scan: ``resume(ordinal, segment, first position)`` may account
        for a prefix of a newly opened segment (from its index sidecar) and returns where
        scanning goes on: (byte offset, position there)."""
        self.end = 0
        """Byte offset after the last whole frame of the last segment."""
        self.position = 0
        """Position the next event found will have."""
        self.metadata: list[tuple[str, int, bytes]] = []
        """(stream, revision, packed metadata) of the metadata frames found; the store takes
        them after each scan."""
        self.removed: list[int] = []
        """Ordinals of sealed segments whose files are gone from the directory, oldest first
        (a prefix of the live ones): the store drops them from its index and retires them
        after each scan (:meth:`Opener.drop_removed`)."""
        self._gaps = False  # the tail segment is a scavenged one
        self._names: list[str] | None = None  # this scan's listing of the directory
        self._oldest = 0  # ordinal of the oldest segment not in ``removed`` yet

    def scan(self, found: FoundFrame) -> None:
        """Feed every whole frame written since the last call to ``found``; blocking.

        Opens segments as they appear (adding them to the log's segment list, read-only).
        Raises CorruptLog for damage, OSError when a file cannot be read.
        """
        try:
            self._scan(found)
            self._note_removed()
        finally:
            self._names = None

    def _scan(self, found: FoundFrame) -> None:
        segs = self._log.segments
        while True:
            reason = self._scan_tail(found) if segs else None
            nxt = self._open_next()
            if nxt is None:
                if reason is not None:
                    self._check_unfinished(segs[-1], reason)
                return
            if segs:
                # The successor exists, so the old segment is complete: read what was written
                # to it since our scan (e.g. a checkpoint frame) before moving on.
                reason = self._scan_tail(found)
                if reason is not None:
                    nxt.close()
                    raise CorruptLog(
                        segs[-1].path, self.end, f"{reason} (in a segment before the last)"
                    )
                # A successor past the expected position is a gap: the segments in between
                # were removed (retention overtook this reader, or a scavenge dropped them).
                if nxt.first_position < self.position:
                    nxt.close()
                    raise CorruptLog(
                        nxt.path,
                        0,
                        f"segment starts at position {nxt.first_position}; expected "
                        f"{self.position}",
                    )
            segs.append(nxt)
            self.end = SEGMENT_HEADER_SIZE
            self.position = nxt.first_position
            if self.resume is not None:
                self.end, self.position = self.resume(len(segs) - 1, nxt, self.position)

    def _scan_tail(self, found: FoundFrame) -> str | None:
        seg = self._log.segments[-1]
        ordinal = len(self._log.segments) - 1
        size = seg.file.size()
        if size < self.end:
            raise CorruptLog(
                seg.path,
                size,
                f"the log was cut behind this reader (it had read to byte {self.end}): the "
                "writer recovered from a crash or a write error; open the store again",
            )

        def sink(info: FrameInfo, buf: bytes, start: int) -> None:
            if info.kind == FRAME_KIND_METADATA:
                packed = bytes(buf[start + info.entries_at : start + info.length])
                self.metadata.append((info.stream, info.first_version, packed))
            if info.kind != FRAME_KIND_COMPRESSED:
                found(ordinal, info)
                return
            try:  # the index points every frame inside a container at the container
                inner = inner_frames(expand(buf, start, start + info.length), info)
            except FrameError as exc:
                raise CorruptLog(seg.path, info.offset, exc.reason) from None
            for frame in inner:
                found(ordinal, frame._replace(offset=info.offset, length=info.length))

        self.end, self.position, reason = seg.scan(
            self.end, self.position, self._log.options.read_chunk_bytes, sink, self._gaps
        )
        return reason

    def _check_unfinished(self, seg: Segment, reason: str) -> None:
        """The last segment ends in bytes that are not a whole frame: a write in progress
        (wait for it) unless a frame of a later write follows them (damage)."""
        later = later_write_at(seg, self.end + 1, self.end)
        if later is not None:
            raise CorruptLog(
                seg.path, self.end, f"{reason}; a frame of a later write follows at byte {later}"
            )

    def _listdir(self) -> list[str]:
        """The directory's names, listed once per scan (names of removed segments never come
        back, and new segments are looked for again at the next scan)."""
        if self._names is None:
            self._names = self._log.fs.listdir(self._log.directory)
        return self._names

    def _open_next(self) -> Segment | None:
        """The segment after the last one (the lowest name past its name: retention or
        scavenging may have removed the ones in between), once its header is complete."""
        log = self._log
        after = log.segments[-1].first_position if log.segments else -1
        names = (parse_segment_name(n) for n in self._listdir())
        found = [p for p in names if p is not None and p > after]
        if not found:  # nothing after the last segment (no rotation yet, or no segment)
            return None
        position = min(found)
        path = os.path.join(log.directory, segment_name(position))
        try:
            file = log.fs.open(path, write=False)
        except FileNotFoundError:
            return None
        seg = Segment(path, position, file)
        try:
            first, flags = seg.read_header_flags()
        except NewerFormat as exc:  # the writer is a newer build: never read past this point
            seg.close()
            raise UnsupportedFormat(path, exc.found, FORMAT_VERSION) from None
        except ValueError as exc:
            # A rotation in progress (the header is written right after the file is created),
            # unless frames follow the header: then the header is damaged.
            later = later_write_at(seg, 0, -1)
            seg.close()
            if later is not None:
                raise CorruptLog(path, 0, f"bad segment header: {exc}") from None
            return None
        if first != position:
            seg.close()
            raise CorruptLog(path, 0, f"segment starts at position {first} (named {position})")
        self._gaps = bool(flags & SEGMENT_FLAG_SCAVENGED)
        return seg

    def _note_removed(self) -> None:
        """Add to ``removed`` the oldest live sealed segments whose names are gone from the
        directory (retention removes a prefix of the log; a later segment that a scavenge
        dropped is kept until the ones before it go too)."""
        segs = self._log.segments
        if len(segs) - self._oldest < 2:
            return
        names = set(self._listdir())
        while self._oldest < len(segs) - 1:  # never the tail: it is still being read
            if os.path.basename(segs[self._oldest].path) in names:
                return
            self.removed.append(self._oldest)
            self._oldest += 1


def frame_indexer(
    index: Index,
    checkpoints: dict[str, int],
    path_of: Callable[[int], str],
    seen: list[int] | None = None,
) -> FoundFrame:
    """A ``found`` callback that adds each frame to the index (and each checkpoint frame to
    ``checkpoints``) at once. Call it on the event loop thread, or before the store is open;
    advance ``index.head`` after it. Raises CorruptLog when a stream's versions break.
    ``seen[0]`` counts the events indexed (share it between the indexers of one store): a
    stream may skip versions (first appear past version 0, or continue past its next version)
    only with at least as many positions missing before it; its older versions were then
    removed from the log (retention and scavenging remove a prefix of each stream), and the
    index forgets them (``Index.restart_stream``)."""
    seen = seen if seen is not None else [0]

    def found(ordinal: int, info: FrameInfo) -> None:
        if info.kind == FRAME_KIND_CHECKPOINT:
            if info.first_version > checkpoints.get(info.stream, -1):
                checkpoints[info.stream] = info.first_version
            return
        if info.kind == FRAME_KIND_METADATA:  # the Follower collected it
            return
        want = index.last_version(info.stream) + 1
        if info.first_version != want:
            missing = info.first_position - seen[0]
            if not want < info.first_version <= want + missing:
                raise CorruptLog(
                    path_of(ordinal),
                    info.offset,
                    f"stream {info.stream!r} continues at version {info.first_version}, "
                    f"expected {want}",
                )
            index.restart_stream(info.stream, info.first_version)
        index.add_frame(
            ordinal,
            info.offset,
            info.length,
            info.stream,
            info.first_position,
            info.first_version,
            info.event_count,
        )
        seen[0] += info.event_count

    return found
