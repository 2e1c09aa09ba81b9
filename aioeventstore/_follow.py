"""Read-only stores: scan a log that another process may be writing, and follow it as it grows.

A read-only store takes no lock and changes nothing on disk, so it can run next to the writer
(``aioeventstore info``/``tail -f``). Its view of the log differs from recovery's in one rule:
bytes at the end of the last segment that do not form a whole, checked frame are *not written
yet* (a write in progress, or a torn tail the next writer will cut), never cut. Damage is
judged only on bytes that were there when the scan began: a write may end, and the next
begin, while a scan looks at the bytes after it. Otherwise it is judged as recovery judges it:
a bad frame followed by a frame of a later write, a bad frame in a segment that has a
successor, a segment with a bad header that has one, or a break in positions is
``CorruptLog``.

Following is polling: each :meth:`Follower.scan` re-reads the last segment from the end of
its last whole frame, then looks for the next segment: the lowest name past the last one's
(the writer's next segment after a rotation, or a later one: see below). Finding the
successor proves the old segment complete (the writer syncs a segment before creating the
next), so it is scanned once more to its end before the follower moves on: nothing written
before a rotation is missed.

The follower reads the page cache, so it can see a batch a moment before the writer's sync
makes it durable; if that sync then fails (or the power is cut, or a rotation's new segment
could not be made), the writer's recovery cuts the batch (or removes the segment) and the
follower, which already delivered it, stops with ``CorruptLog`` ("the log was cut behind this
reader"). It notices at its next scan: the last frame it read is no longer there (the file is
shorter, or other bytes are at that offset: the writer wrote on after the cut), or the tail
segment it holds with no frame yet was removed or replaced by another file of that name.

Retention and scavenging (``_scavenge.py``) remove frames the follower may not have read yet:
segments (retention drops the oldest ones, a scavenge drops any sealed one whose frames all
go) and frames inside segments (a scavenge rewrites them under the same name). So the
follower accepts the gaps recovery accepts (a segment starting past the previous one's end,
skips inside a segment with the SCAVENGED flag, a stream first seen past version 0 with as
many positions missing before it), and one more: a stream it has already indexed may skip
versions when at least as many positions are missing, *and* the segment holding the last
event it indexed for that stream was removed or rewritten since (``changed``): removal takes
a prefix of each stream, so the versions skipped went with that event. (Recovery never sees
that case: a scan of a log at rest sees each stream's removed versions as a prefix; a
segment deleted by hand still reads as ``CorruptLog``.) A reader overtaken by retention thus
goes on at the oldest segment left. Sealed segments whose files are gone are listed in
``removed`` for the store to drop from its index and close: a reader must not keep the disk
space they held. Nor the space of a segment that a scavenge rewrote under the same name
(shorter): at most every ``REWRITE_CHECK`` seconds the sealed segments' files are compared
with the ones held, and a rewritten one is listed in ``rewritten``; the store reads it (and
the one held) whole with :func:`read_rewrite` on a reader thread, one at a time, so that
following the tail never waits for it, and re-indexes the segment and swaps the new file in
as the writer does (reads planned against the old file keep it open until they end); what
the rewrite removed is then gone for this reader too.
Metadata frames are collected in ``metadata`` for the store to apply; they are not events.

Threads: one thread at a time calls ``scan`` (the store's I/O thread); the frames it finds are
added to the index on the event loop thread by :func:`frame_indexer` (before the store is
open, on the I/O thread during the first scan).
"""

from __future__ import annotations

import os
import time
from array import array
from collections.abc import Callable

from ._compress import expand, inner_frames
from ._format import (
    FORMAT_VERSION,
    FRAME_HEADER_SIZE,
    FRAME_KIND_CHECKPOINT,
    FRAME_KIND_COMPRESSED,
    FRAME_KIND_EVENTS,
    FRAME_KIND_METADATA,
    SEGMENT_FLAG_SCAVENGED,
    SEGMENT_HEADER_SIZE,
    FrameError,
    FrameInfo,
    NewerFormat,
    parse_segment_name,
    segment_name,
)
from ._fs import size_at
from ._index import Index
from ._log import Log, frame_now_at, later_write_at
from ._segment import Segment
from .errors import CorruptLog, UnsupportedFormat

FoundFrame = Callable[[int, FrameInfo], None]
"""Called with (segment ordinal, frame info) for each whole frame found, in log order."""

REWRITE_CHECK = 1.0
"""Seconds between two looks for sealed segments a scavenge rewrote (a file opened per
segment each time)."""
_REWRITE_TRIES = 3  # rewrites of one segment the index may refuse before it is left alone


class Follower:
    """Incremental read-only scanning of a store's log (see the module docstring)."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self.resume: Callable[[int, Segment, int], tuple[int, int, int | None]] | None = None
        """Set for the first scan: ``resume(ordinal, segment, first position)`` may account
        for a prefix of a newly opened segment (from its index sidecar) and returns where
        scanning goes on: (byte offset, position there, offset of the last frame before it
        or None)."""
        self.end = 0
        """Byte offset after the last whole frame of the last segment."""
        self.position = 0
        """Position the next event found will have."""
        self.metadata: list[tuple[str, int, bytes]] = []
        """(stream, revision, packed metadata) of the metadata frames found; the store takes
        them after each scan."""
        self.removed: list[int] = []
        """Ordinals of sealed segments whose files are gone from the directory, in order: the
        store drops them from its index and retires them after each scan
        (``Opener.drop_removed``)."""
        self.rewritten: list[int] = []
        """Ordinals of sealed segments a scavenge rewrote since this reader opened them, for
        the store to read and swap in (:func:`read_rewrite`, ``Opener.swap_rewritten``)."""
        self._rewrite_check = time.monotonic()
        self._rewrite_seen: dict[int, int] = {}  # ordinal → size of a new file already taken
        # ordinal → (the file size they were for, tries the index refused or could not read)
        self._rewrite_tries: dict[int, tuple[int | None, int]] = {}
        self.changed: set[int] = set()
        """Ordinals of segments whose files were removed or rewritten since this reader
        read them: what lets a stream skip versions (see the module docstring). Brought up
        to date at the end of a scan that met missing positions, and by
        :meth:`removed_since_read`."""
        self._gaps = False  # the tail segment is a scavenged one
        self._names: list[str] | None = None  # this scan's listing of the directory
        self._oldest = 0  # ordinal of the oldest segment not retired or removed yet
        self._last: tuple[int, bytes] | None = None  # the tail's last frame: offset, header
        self._events = 0  # events found by the current scan
        self._bound = 0  # the tail's size when its last scan began

    def scan(self, found: FoundFrame) -> None:
        """Feed every whole frame written since the last call to ``found``; blocking.

        Opens segments as they appear (adding them to the log's segment list, read-only).
        Raises CorruptLog for damage (or a cut behind this reader), OSError when a file
        cannot be read.
        """
        start, self._events = self.position, 0
        try:
            self._scan(found)
            self._note_removed()
            if time.monotonic() - self._rewrite_check >= REWRITE_CHECK:
                self._note_rewritten()
                self._rewrite_check = time.monotonic()
            if self.position - start > self._events:  # positions were removed: evidence
                for ordinal in range(self._oldest, len(self._log.segments)):
                    self.removed_since_read(ordinal)
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
                elif segs and self.end == SEGMENT_HEADER_SIZE:
                    self._check_not_replaced(segs[-1])  # (a writer's removed rotation)
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
                if nxt.first_position < self.position:
                    nxt.close()
                    raise CorruptLog(
                        nxt.path,
                        0,
                        f"segment starts at position {nxt.first_position}; expected "
                        f"{self.position}",
                    )
                # A successor past the expected position is a gap: the segments in between
                # were removed (retention overtook this reader, or a scavenge dropped them).
                # Not when the segment left holds no frame: the writer never rotates away
                # from such a segment, so it was a rotation the writer undid.
                if self.end == SEGMENT_HEADER_SIZE:
                    try:
                        self._check_not_replaced(segs[-1])
                    except CorruptLog:
                        nxt.close()
                        raise
            segs.append(nxt)
            self.end = SEGMENT_HEADER_SIZE
            self.position = nxt.first_position
            self._last = None
            self._gaps = bool(nxt.flags & SEGMENT_FLAG_SCAVENGED)  # (the old tail kept its own)
            if self.resume is not None:
                self.end, self.position, last = self.resume(len(segs) - 1, nxt, self.position)
                if last is not None:  # (what a cut behind this reader is checked against)
                    self._last = (last, nxt.read(FRAME_HEADER_SIZE, last))

    def _scan_tail(self, found: FoundFrame) -> str | None:
        seg = self._log.segments[-1]
        ordinal = len(self._log.segments) - 1
        size = seg.file.size()  # damage is judged on these bytes only (see the docstring)
        last = self._last
        if size < self.end or (
            last is not None and seg.read(FRAME_HEADER_SIZE, last[0]) != last[1]
        ):
            raise CorruptLog(
                seg.path,
                min(size, self.end),
                f"the log was cut behind this reader (it had read to byte {self.end}): the "
                "writer recovered from a crash or a write error; open the store again",
            )

        def sink(info: FrameInfo, buf: bytes, start: int) -> None:
            self._last = (info.offset, bytes(buf[start : start + FRAME_HEADER_SIZE]))
            if info.kind == FRAME_KIND_METADATA:
                packed = bytes(buf[start + info.entries_at : start + info.length])
                self.metadata.append((info.stream, info.first_version, packed))
            if info.kind != FRAME_KIND_COMPRESSED:
                if info.kind == FRAME_KIND_EVENTS:
                    self._events += info.event_count
                found(ordinal, info)
                return
            try:
                inner = _contained(info, buf, start)
            except FrameError as exc:
                raise CorruptLog(seg.path, info.offset, exc.reason) from None
            for frame in inner:
                if frame.kind == FRAME_KIND_EVENTS:
                    self._events += frame.event_count
                found(ordinal, frame)

        self.end, self.position, reason = seg.scan(
            self.end, self.position, self._log.options.read_chunk_bytes, sink, self._gaps
        )
        if reason is not None and self.end >= size:
            return None  # bytes written after the scan began: not judged yet (next scan)
        self._bound = size
        return reason

    def _check_unfinished(self, seg: Segment, reason: str) -> None:
        """The last segment ends in bytes that are not a whole frame: a write in progress
        (wait for it) unless a frame of a later write follows them (damage), among the bytes
        that were there when the scan began (a write may have ended, and the next begun,
        since)."""
        later = later_write_at(seg, self.end + 1, self.end, self._bound)
        if later is not None and not frame_now_at(seg, self.end):  # (else: recovered, go on)
            raise CorruptLog(
                seg.path, self.end, f"{reason}; a frame of a later write follows at byte {later}"
            )

    def _check_not_replaced(self, seg: Segment) -> None:
        """The tail holds no frame: it is the writer's newest segment, unless the writer
        removed it again (its header's sync failed: ``Log._create``, or the next open found
        it incomplete) and appended elsewhere, or made another file of that name. Then this
        reader, which moved on to it, is past a cut."""
        if seg.flags & SEGMENT_FLAG_SCAVENGED:
            return  # a rewrite left it with control frames only: a real segment
        now = size_at(self._log.fs, seg.path)  # (first: the held file can only have grown)
        replaced = now is None or now > seg.file.size()
        # a frame in it since this scan's look: a real segment, filled (and maybe removed by
        # retention) meanwhile; a failed rotation's segment is removed before any frame
        if replaced and seg.file.size() <= SEGMENT_HEADER_SIZE:
            raise CorruptLog(
                seg.path,
                0,
                "the log was cut behind this reader: the writer removed the segment it had "
                "moved on to (a rotation that failed); open the store again",
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
        while True:
            names = [parse_segment_name(n) for n in self._listdir()]
            found = [p for p in names if p is not None and p > after]
            if not found:  # nothing after the last segment (no rotation yet, or no segment)
                return None
            position = min(found)
            path = os.path.join(log.directory, segment_name(position))
            try:
                file = log.fs.open(path, write=False)
                break
            except FileNotFoundError:
                # removed since the listing (retention, or a scavenge that dropped it): the
                # next one is the one to open, not "none yet" (a first scan would end here,
                # and a read-only open see a store cut short, or empty)
                self._names = None
        seg = Segment(path, position, file)
        try:  # (closed on any error, an I/O error too: nobody else holds it)
            try:
                first = seg.read_header()  # (sets seg.flags)
            except NewerFormat as exc:  # the writer is a newer build: never read past here
                raise UnsupportedFormat(path, exc.found, FORMAT_VERSION) from None
            except ValueError as exc:
                # A rotation in progress (the header is written right after the file is
                # created), unless frames follow the header or a later segment exists: then
                # it is damaged.
                later = later_write_at(seg, 0, -1)
                if later is not None or any(p > position for p in found):
                    raise CorruptLog(path, 0, f"bad segment header: {exc}") from None
                seg.close()
                return None
            if first != position:
                raise CorruptLog(path, 0, f"segment starts at position {first} (named {position})")
        except BaseException:
            seg.close()
            raise
        return seg

    def _note_removed(self) -> None:
        """Add to ``removed`` (and ``changed``) the sealed segments whose names are gone from
        the directory: retention drops the oldest ones, a scavenge any whose frames all go."""
        segs = self._log.segments
        while self._oldest < len(segs) - 1 and segs[self._oldest].retired:
            self._oldest += 1
        if len(segs) - self._oldest < 2:
            return
        names = set(self._listdir())
        taken = set(self.removed)
        for ordinal in range(self._oldest, len(segs) - 1):  # never the tail: still read
            seg = segs[ordinal]
            if seg.retired or ordinal in taken:
                continue
            if os.path.basename(seg.path) not in names:
                self.removed.append(ordinal)
                self.changed.add(ordinal)

    def _note_rewritten(self) -> None:
        """Add to ``rewritten`` (and ``changed``) the sealed segments whose file is shorter
        than the one held: a scavenge rewrote it (temp file, sync, rename: the file at the
        name is whole). Each size is taken once: a new file the store could not use (see
        :func:`read_rewrite`) is not read again until it changes."""
        segs, log = self._log.segments, self._log
        gone = set(self.removed)
        for ordinal in range(self._oldest, len(segs) - 1):  # never the tail: still read
            seg = segs[ordinal]
            if seg.retired or ordinal in gone:
                continue
            now = size_at(log.fs, seg.path)
            if now is None or now >= seg.file.size() or self._rewrite_seen.get(ordinal) == now:
                continue
            self._rewrite_seen[ordinal] = now
            self.changed.add(ordinal)
            self.rewritten.append(ordinal)

    def retry_rewrite(self, ordinal: int) -> bool:
        """The store could not apply the rewrite of segment ``ordinal`` to its index (a check
        that ran while the writer's scavenge went on can find a segment rewritten before the
        ones it rewrote or dropped just before it, whose removals then are not a prefix of
        each stream yet), or could not read it (an I/O error). Look at it again at the next
        check, up to ``_REWRITE_TRIES`` times for one rewrite (a file of a new size is
        another: it gets tries of its own); False once given up."""
        size = self._rewrite_seen.get(ordinal)
        was_for, tries = self._rewrite_tries.get(ordinal, (size, 0))
        tries = tries + 1 if was_for == size else 1  # (a new rewrite: tries of its own)
        self._rewrite_tries[ordinal] = (size, tries)
        if tries > _REWRITE_TRIES:
            return False
        self._rewrite_seen.pop(ordinal, None)
        return True

    def rewrite_applied(self, ordinal: int) -> None:
        """The store swapped in a rewrite of segment ``ordinal``: a later scavenge's rewrite
        of it gets ``_REWRITE_TRIES`` tries of its own."""
        self._rewrite_tries.pop(ordinal, None)

    def removed_since_read(self, ordinal: int) -> bool:
        """Whether the file of segment ``ordinal`` was removed, or rewritten (shorter under
        the same name: a scavenge), since this reader opened it. Blocking: the I/O thread
        (``changed`` holds the answers found so far)."""
        if ordinal in self.changed:
            return True
        seg = self._log.segments[ordinal]
        if seg.retired:
            return True
        held = seg.file.size()  # (first: the same file can only have grown since)
        now = size_at(self._log.fs, seg.path)
        if now is None or now < held:
            self.changed.add(ordinal)
        return ordinal in self.changed


Rewrite = tuple[Segment, dict[int, int], list[tuple[str, int, int]]]
"""A rewritten segment as ``read_rewrite`` finds it: the new file opened, and what the rewrite
did as ``Index.replace_segment_rows`` takes it (kept frames' new offsets by old offset, and
the removed frames' (stream, first version, count) in position order)."""


def read_rewrite(log: Log, old: Segment) -> Rewrite | None:
    """The file now at ``old``'s path, opened, and how it rewrote ``old`` (blocking: a reader
    thread, with ``old`` pinned), or None when it is not such a rewrite (not ``old``'s
    frames less some) or either file cannot be read whole: the reader then reads on from
    the file it holds, and the writer's next open judges the new one. OSError for an I/O
    error."""
    try:
        file = log.fs.open(old.path, write=False)
    except FileNotFoundError:
        return None  # removed meanwhile: a scan lists it in ``removed``
    new = Segment(old.path, old.first_position, file)
    try:
        change = _rewrite(log, old, new)
    except BaseException:
        new.close()
        raise
    if change is None:
        new.close()
        return None
    return (new, *change)


def _rewrite(
    log: Log, old: Segment, new: Segment
) -> tuple[dict[int, int], list[tuple[str, int, int]]] | None:
    """Both files read in order, the new one's frames kept as columns (32 bytes a frame,
    not an object) and the old one's walked against them: a frame of the old file is kept
    when the new one holds a frame at its first position with its version, count and
    length, else removed."""
    kept = (array("q"), array("q"), array("q"), array("q"))  # position, version, count, length
    offsets = array("q")
    add_pos, add_ver, add_cnt, add_len = (col.append for col in kept)

    def take(info: FrameInfo) -> None:
        add_pos(info.first_position)
        add_ver(info.first_version)
        add_cnt(info.event_count)
        add_len(info.length)
        offsets.append(info.offset)

    moved: dict[int, int] = {}
    removed: list[tuple[str, int, int]] = []
    runs: dict[str, int] = {}  # stream → its last entry in ``removed``
    at = 0  # the next of the new file's frames

    def walk(info: FrameInfo) -> None:
        nonlocal at
        if at < len(offsets) and kept[0][at] == info.first_position:
            now = (kept[1][at], kept[2][at], kept[3][at])
            if now != (info.first_version, info.event_count, info.length):
                raise FrameError(f"the frame at position {info.first_position} differs")
            if moved.setdefault(info.offset, offsets[at]) != offsets[at]:
                raise FrameError("a container split")
            at += 1
        elif at < len(offsets) and kept[0][at] < info.first_position:
            raise FrameError(f"position {kept[0][at]} is not in the file held")
        else:  # (a stream's removed frames as one run: a prefix, listed once)
            run = runs.get(info.stream)
            if run is not None and sum(removed[run][1:]) == info.first_version:
                stream, first, count = removed[run]
                removed[run] = (stream, first, count + info.event_count)
            else:
                runs[info.stream] = len(removed)
                removed.append((info.stream, info.first_version, info.event_count))

    try:
        if new.read_header() != old.first_position:
            return None
        if not (_each_events_frame(new, log, take) and _each_events_frame(old, log, walk)):
            return None
    except (ValueError, FrameError):  # (NewerFormat is a ValueError too)
        return None
    return (moved, removed) if at == len(offsets) else None


def _contained(info: FrameInfo, buf: bytes, start: int) -> list[FrameInfo]:
    """The frames inside the compressed frame ``info`` (at ``buf[start:]``), as the index
    records them: pointing at the container (its offset and length). Raises FrameError."""
    inner = inner_frames(expand(buf, start, start + info.length), info)
    return [frame._replace(offset=info.offset, length=info.length) for frame in inner]


def _each_events_frame(seg: Segment, log: Log, each: Callable[[FrameInfo], None]) -> bool:
    """Call ``each`` with a sealed segment's events frames in order, a container's inner
    frames pointing at the container as the index does; False when it does not read whole.
    FrameError from ``each`` (or a bad container) stops it."""

    def sink(info: FrameInfo, buf: bytes, start: int) -> None:
        if info.kind == FRAME_KIND_EVENTS:
            each(info)
        elif info.kind == FRAME_KIND_COMPRESSED:
            for inner in _contained(info, buf, start):
                if inner.kind == FRAME_KIND_EVENTS:
                    each(inner)

    chunk = log.options.read_chunk_bytes
    end, _pos, reason = seg.scan(SEGMENT_HEADER_SIZE, seg.first_position, chunk, sink, True)
    return reason is None and end == seg.file.size()


def may_skip(index: Index, stream: str, changed: Callable[[int], bool]) -> bool:
    """Whether ``stream`` may skip versions in a reader's index (given enough positions are
    missing): it has no indexed event, or ``changed`` says the segment holding its last one
    was removed or rewritten since (removal takes a prefix of each stream)."""
    last = index.last_segment(stream)
    return last is None or changed(last)


def frame_indexer(
    index: Index,
    checkpoints: dict[str, int],
    path_of: Callable[[int], str],
    seen: list[int] | None = None,
    changed: Callable[[int], bool] = lambda ordinal: False,
) -> FoundFrame:
    """A ``found`` callback that adds each frame to the index (and each checkpoint frame to
    ``checkpoints``) at once. Call it on the event loop thread, or before the store is open;
    advance ``index.head`` after it. Raises CorruptLog when a stream's versions break.
    ``seen[0]`` counts the events indexed (share it between the indexers of one store): a
    stream may skip versions only with at least as many positions missing before it, and,
    when it has indexed events, only if ``changed(ordinal)`` says the segment holding the
    last of them was removed or rewritten since (``Follower.changed``); its older versions
    were then removed from the log, and the index forgets them (``Index.restart_stream``)."""
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
            if not (
                want < info.first_version <= want + missing
                and may_skip(index, info.stream, changed)
            ):
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
