"""The segment set: naming, recovery on open, rotation, and the one write path.

Recovery rules (FORMAT.md, "Recovery"):

* Every segment but the last must be whole: any bad frame in it is corruption.
* In the last segment, scanning stops at the first frame that is incomplete or fails its
  checks. If no well-formed frame from a *later write* follows it (every frame records the byte
  offset where its write began; a later write began after the bad frame's offset), the damage
  lies inside the last write: a torn tail. It is cut, and the cut is synced. Otherwise good data
  follows bad data, which no crash can produce: ``CorruptLog``. So is a damaged "tail"
  longer than one write can be: a crash tears at most the write in flight.
* A last segment whose header never became durable (and holds no frame) is removed.
* A segment whose intact header names a format newer than this build reads is
  ``UnsupportedFormat``, before anything is changed on disk.
* Writes never add to a segment of an older format version (an old reader would misread
  them): when the last segment is older and holds events, the first write starts a new
  segment; when it holds nothing at all, its header is rewritten to the current version.
* Gaps (see ``_scavenge.py``): a segment may start past the previous one's end (retention or
  scavenging removed a whole segment, or the oldest ones), and inside a segment whose header
  has the SCAVENGED flag positions may skip forwards. Anywhere else a skip is damage. A
  leftover ``*.seg.scavenge`` file (a scavenge cut short) is removed.

Threads: ``recover`` runs once, before the commit loop starts. ``reserve`` runs on the commit
loop's thread only; ``write`` runs on the store's single I/O thread only; ``read`` may run on
any thread, for ranges the index says are committed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from ._format import (
    BODY_HEAD_SIZE,
    FORMAT_VERSION,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    FRAME_MAGIC,
    MAX_STREAM_NAME_BYTES,
    SCAVENGE_SUFFIX,
    SEGMENT_FLAG_SCAVENGED,
    SEGMENT_HEADER_SIZE,
    SEGMENT_SUFFIX,
    FrameError,
    NewerFormat,
    check_frame,
    pack_segment_header,
    parse_segment_name,
    segment_name,
)
from ._fs import FileSystem
from ._segment import FrameSink, Segment
from .errors import CorruptLog, UnsupportedFormat
from .options import StoreOptions

log = logging.getLogger("aioeventstore")
# A library logs, the application decides what to show: without this handler Python's
# last-resort handler would print warnings to stderr when the application configured nothing.
log.addHandler(logging.NullHandler())
SEGMENT_SUFFIX_TMP = SEGMENT_SUFFIX + SCAVENGE_SUFFIX

LOCK_NAME = "LOCK"
_REWRITE_CHUNK = 1 << 20  # bytes of the tail read and written again at a time (_make_durable)


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening the log found: the end position and any torn tail that was cut."""

    segments: int
    next_position: int
    cut_path: str | None = None
    cut_offset: int = 0
    cut_bytes: int = 0
    cut_reason: str | None = None
    indexed_segments: int = 0
    """Segments whose index came (at least partly) from a sidecar file instead of a scan."""
    scanned_bytes: int = 0
    """Bytes of the log read frame by frame; everything else came from index sidecars."""


@dataclass(frozen=True, slots=True)
class WritePlan:
    """Where the commit loop's next write goes. Made on the loop thread, used on the I/O one."""

    ordinal: int  # index of the segment in the log's segment list
    offset: int
    new_segment_at: int | None  # first position of a segment to create first, if rotating


def frame_now_at(seg: Segment, offset: int) -> bool:
    """Whether a whole, well-formed frame starts at byte ``offset`` of ``seg`` now. For a file
    another process writes: bytes judged bad a moment ago (a torn tail a killed writer left)
    may since have been cut, and written again, by the next writer's recovery."""
    head = seg.read(FRAME_HEADER_SIZE, offset)
    if len(head) < FRAME_HEADER_SIZE:
        return False
    data = seg.read(FRAME_HEADER_SIZE + FRAME_HEADER.unpack_from(head)[2], offset)
    try:
        check_frame(data, 0, len(data))
    except FrameError:
        return False
    return True


def later_write_at(
    seg: Segment, start: int, bad_offset: int, size: int | None = None
) -> int | None:
    """Offset of the first well-formed frame at or after byte ``start`` of ``seg`` from a write
    that began after byte ``bad_offset`` (with ``bad_offset == -1``: any well-formed frame), or
    None. Such a frame after damage proves the damage is not a torn last write. Shared by
    recovery and ``_verify`` so that both always reach the same verdict. ``size``: look only
    at the bytes before it (a file another process writes: the bytes that were there when
    the scan that found the damage began; a write in progress then may have ended since and
    the next begun, which proves nothing)."""
    if size is None:
        size = seg.file.size()
    if start >= size:
        return None
    data = seg.read(size - start, start)
    i = data.find(FRAME_MAGIC)
    while i >= 0:
        try:
            info = check_frame(data, i, len(data))
        except FrameError:
            pass
        else:
            if info.write_offset > bad_offset:
                return start + i
        i = data.find(FRAME_MAGIC, i + 1)
    return None


class Log:
    """A directory of append-only segment files."""

    def __init__(self, fs: FileSystem, directory: str, options: StoreOptions) -> None:
        self.fs = fs
        self.directory = directory
        self.options = options
        self.segments: list[Segment] = []
        self._end = 0  # byte offset after the last reserved write in the tail segment
        self._tail = -1  # ordinal of the tail segment, as planned by reserve()
        self._planned: dict[int, int] = {}  # ordinal → first position of a planned segment
        self._tail_first = 0  # first position of the tail segment, as planned by reserve()
        self._old_tail = False  # the tail is of an older format: the next write rotates
        self._sync_failed: OSError | None = None  # the first failed sync (see _sync)

    # --- recovery -------------------------------------------------------------------------
    def recover(
        self,
        sink: Callable[[int, Segment], FrameSink],
        resume: Callable[[int, Segment, int, int], tuple[int, int]] | None = None,
    ) -> Recovery:
        """Open every segment, check every frame, cut a torn tail; blocking.

        ``sink(ordinal, segment)`` returns the callback that receives that segment's frames.
        ``resume(ordinal, segment, first position, segment files after it)``, when given,
        may account for a prefix of the segment itself (from an index sidecar) and returns
        where the scan starts: (byte offset, position there). Raises CorruptLog for damage
        that is not a torn tail.
        """
        listing = self.fs.listdir(self.directory)
        leftovers = [n for n in listing if n.endswith(SEGMENT_SUFFIX_TMP)]
        for name in leftovers:  # a scavenge cut short: its segment was never replaced
            log.warning("removing %s left by a scavenge that did not finish", name)
            self.fs.remove(os.path.join(self.directory, name))
        names = sorted(
            (first, name) for name in listing if (first := parse_segment_name(name)) is not None
        )
        position = 0
        cut: tuple[str, int, int, str] | None = None
        indexed = scanned = 0
        unsure: tuple[Segment, int] | None = None  # the tail, and where its unsure bytes start
        for i, (first, name) in enumerate(names):
            path = os.path.join(self.directory, name)
            last = i == len(names) - 1
            seg = Segment(path, first, self.fs.open(path, write=last))
            try:  # (closed on any error: it is not in self.segments yet)
                try:
                    header_first, flags = seg.read_header_flags()
                except NewerFormat as exc:
                    raise UnsupportedFormat(path, exc.found, FORMAT_VERSION) from None
                except ValueError as exc:
                    if last and later_write_at(seg, 0, -1) is None:
                        log.warning("removing segment %s whose header was never completed", path)
                        seg.close()
                        self.fs.remove(path)
                        self.fs.sync_dir(self.directory)
                        if self.segments:  # the previous segment becomes the writable tail
                            prev = self.segments.pop()
                            prev.close()
                            writable = Segment(
                                prev.path, prev.first_position, self.fs.open(prev.path, write=True)
                            )
                            writable.format_version = prev.format_version
                            self.segments.append(writable)
                        break
                    raise CorruptLog(path, 0, f"bad segment header: {exc}") from None
                # a segment may start past the previous one's end: removed segments (see above)
                if header_first != first or first < position:
                    raise CorruptLog(
                        path,
                        0,
                        f"segment starts at position {header_first} (named {first}); "
                        f"expected {position} or later",
                    )
            except BaseException:
                seg.close()
                raise
            self.segments.append(seg)
            position = first  # past a gap (removed segments), if there is one
            start = SEGMENT_HEADER_SIZE
            if resume is not None:
                later = len(names) - 1 - i
                start, position = resume(len(self.segments) - 1, seg, position, later)
                indexed += start > SEGMENT_HEADER_SIZE
            end, position, reason = seg.scan(
                start,
                position,
                self.options.read_chunk_bytes,
                sink(len(self.segments) - 1, seg),
                gaps=bool(flags & SEGMENT_FLAG_SCAVENGED),
            )
            scanned += end - start
            if last:  # what the index sidecar did not cover (a clean close covers it all)
                unsure = (seg, start)
            if reason is None:
                continue
            if not last or later_write_at(seg, end + 1, end) is not None:
                raise CorruptLog(path, end, reason)
            size = seg.file.size()
            if size - end > self.max_write_bytes():
                raise CorruptLog(
                    path,
                    end,
                    f"{reason}; the {size - end} bytes from there to the end are more than "
                    f"one write can hold ({self.max_write_bytes()}), so this is not a torn write",
                )
            log.warning(
                "cutting torn tail of %s at byte %d (%d bytes): %s", path, end, size - end, reason
            )
            seg.file.truncate(end)
            cut = (path, end, size - end, reason)  # (synced with the rest of the tail below)
        tail = self.segments[-1] if self.segments else None
        if (
            tail is not None
            and tail.format_version < FORMAT_VERSION
            and tail.file.size() == SEGMENT_HEADER_SIZE
        ):
            # An empty segment of an older format: nothing to keep, and no position to rotate
            # at (a new segment would take its name). Its header is rewritten in place (same
            # file, so a read-only follower keeps seeing it) and synced before anything is
            # appended: a torn rewrite leaves a bad header and no frame, which the next open
            # takes for an interrupted rotation (removed, then created afresh).
            log.info(
                "rewriting the header of empty segment %s from format version %d to %d",
                tail.path,
                tail.format_version,
                FORMAT_VERSION,
            )
            tail.file.pwrite(pack_segment_header(tail.first_position), 0)
            tail.file.sync()
            tail.format_version = FORMAT_VERSION
        elif not self.segments:
            self.segments.append(self._create(position))
        elif unsure is not None and unsure[0] is self.segments[-1]:
            self._make_durable(*unsure)
        else:  # (the tail is a sealed segment again: synced when its successor was made)
            self.segments[-1].file.sync()
        position = max(position, self.segments[-1].first_position)
        # Every open syncs the directory once: entries a failed earlier process created but
        # could not sync (a rotation whose sync_dir failed) become durable before anything
        # is appended to them.
        self.fs.sync_dir(self.directory)
        self._tail = len(self.segments) - 1
        self._tail_first = self.segments[-1].first_position
        self._end = self.segments[-1].file.size()
        self._old_tail = self.segments[-1].format_version < FORMAT_VERSION
        if cut is None:
            return Recovery(len(self.segments), position, None, 0, 0, None, indexed, scanned)
        return Recovery(len(self.segments), position, *cut, indexed, scanned)

    def _make_durable(self, tail: Segment, start: int) -> None:
        """Make the tail segment's bytes from ``start`` on durable, before anything is read or
        answered from them (recovery; ``start``: where its index sidecar, written on a clean
        close after a sync, stopped covering it).

        A process killed between a batch's write and its sync leaves the batch in the page
        cache: whole, read by recovery as committed, but not on disk. A retry of its appends
        with the same ids is then answered from it, writing nothing, so what this process
        sees must survive a power cut. A sync is not enough when an fsync failed before (in
        the dead process, or in an open before this one that failed at this very step):
        Linux may keep the failed pages readable while never writing them, and a later
        fsync does not write them either; this process would then append after bytes that a
        power cut takes away, and leave a hole in the log. So the bytes are written again
        (the same bytes, in place: nothing a reader sees changes, and a torn write of them
        leaves them as they were) and synced: after an unclean shutdown at most a segment's
        worth. A clean close's sidecar covers the tail up to its last event frame, so a
        clean open rewrites only the checkpoint and metadata frames after it (usually none
        or a few; a tail of checkpoints only has no sidecar and is rewritten whole). Only
        the tail can hold such bytes: a segment is synced before its successor exists. Its
        header is written again too: a rotation whose header sync failed leaves the new
        segment in that state, when the process dies before removing it (or the removal
        fails: ``_create``), and appends behind a header a power cut takes away are lost."""
        file = tail.file
        end = file.size()
        at = start
        if start > SEGMENT_HEADER_SIZE:
            file.pwrite(file.pread(SEGMENT_HEADER_SIZE, 0), 0)
        else:
            at = 0
        while at < end:
            data = file.pread(min(_REWRITE_CHUNK, end - at), at)
            if not data:
                break
            file.pwrite(data, at)
            at += len(data)
        file.sync()

    def _create(self, first_position: int) -> Segment:
        """A new segment file, its header written and synced (the caller syncs the directory).

        If that fails, the file is removed again (best effort) before the error is raised:
        after a failed sync its header may stay readable in the page cache without ever
        reaching the disk, and a reopen in the same boot would take it for a good segment
        and append after it (a power cut would then leave those appends behind a bad
        header). Left without a header, the next open removes it as an interrupted
        rotation."""
        try:
            return Segment.create(self.fs, self.directory, first_position)
        except FileExistsError:
            raise
        except OSError:
            with contextlib.suppress(OSError):
                self.fs.remove(os.path.join(self.directory, segment_name(first_position)))
            raise

    def max_write_bytes(self) -> int:
        """The most bytes one write (commit batch) can hold: a torn write cuts no more."""
        opts = self.options
        frame = opts.max_append_bytes + FRAME_HEADER_SIZE + BODY_HEAD_SIZE + MAX_STREAM_NAME_BYTES
        return max(opts.max_batch_bytes, frame)

    # --- writing ----------------------------------------------------------------------------
    def reserve(self, nbytes: int, first_position: int) -> WritePlan:
        """Plan the next write of ``nbytes`` (commit loop thread only).

        A write is never split across segments: when it would take a non-empty tail segment
        past ``segment_bytes``, it starts a new segment named after ``first_position``, but
        only if the tail already holds an event: segments are named by their first position, so
        a tail holding only checkpoint frames (or nothing) keeps growing instead. A tail of an
        older format version (from before an upgrade) is rotated away from at the first chance.
        """
        if (
            self._end > SEGMENT_HEADER_SIZE
            and (self._old_tail or self._end + nbytes > self.options.segment_bytes)
            and first_position > self._tail_first
        ):
            self._old_tail = False
            self._tail += 1
            self._tail_first = first_position
            self._end = SEGMENT_HEADER_SIZE + nbytes
            self._planned[self._tail] = first_position
            return WritePlan(self._tail, SEGMENT_HEADER_SIZE, first_position)
        plan = WritePlan(self._tail, self._end, None)
        self._end += nbytes
        return plan

    def settle(self, plan: WritePlan, nbytes: int) -> None:
        """The write planned by the last ``reserve`` takes ``nbytes``: less than it reserved
        for a compressed batch or one whose producers were turned away, a little more when a
        metadata frame's body was made after the reservation (commit loop thread only, before
        the next ``reserve``). A segment may then end a little past ``segment_bytes``, as it
        does for any batch larger than a segment."""
        assert plan.ordinal == self._tail and nbytes >= 0
        self._end = plan.offset + nbytes

    def write(self, plan: WritePlan, data: bytes, sync: bool) -> None:
        """Write one batch where ``plan`` says, rotating first if planned (I/O thread only).

        The old segment is synced before its successor exists, so every segment but the last
        is always whole on disk. Raises OSError; the caller then fails the store.

        A failed write or sync leaves nothing of the batch behind for a reader: the batch's
        bytes are cut off again (and a new segment whose header may not be on disk is removed)
        before the error is raised. After an fsync error Linux may keep the failed pages
        readable in the page cache although they will never be written ("fsyncgate"); a
        reopen in the same boot would otherwise take them for committed data, append after
        them, and a later power cut would leave a hole in the middle of the log. Best effort:
        if the clean-up fails too, recovery still treats the batch as an unacknowledged write.

        Once a sync failed (this batch's, or a maintenance sync's with ``durability="os"``,
        which fails the store while batches may already be queued here), nothing is written:
        a write after it would be cut off by nobody, and a reopen would show an append whose
        caller was told it failed.
        """
        if self._sync_failed is not None:
            failed = self._sync_failed
            raise OSError(
                failed.errno, f"an earlier sync of the log failed: {failed}", self.directory
            )
        if plan.new_segment_at is not None:
            self._sync(self.segments[-1])
            created = self._create(plan.new_segment_at)
            self.segments.append(created)
            self._planned.pop(plan.ordinal, None)
            self.fs.sync_dir(self.directory)
            log.info(
                "rotated to segment %s (first position %d)", created.path, created.first_position
            )
        assert plan.ordinal == len(self.segments) - 1, "writes follow their plans in order"
        seg = self.segments[plan.ordinal]
        try:
            seg.file.pwrite(data, plan.offset)
            if sync:
                self._sync(seg)
        except OSError:
            with contextlib.suppress(OSError):
                seg.file.truncate(plan.offset)
            raise
        seg.wrote(plan.offset, data)  # the running checksum, for the segment's index sidecar

    def sync(self) -> None:
        """Sync the tail segment (``durability="os"``: on close, and before maintenance
        removes frames)."""
        if self.segments:
            self._sync(self.segments[-1])

    def _sync(self, seg: Segment) -> None:
        """Sync a segment this process writes; once a sync failed, every later one raises
        too (I/O thread). A later fsync may succeed without writing the pages the failed one
        left ("fsyncgate"): nothing may then be taken for durable, the final sync of a
        ``close`` (which writes the tail's index sidecar after it) included."""
        if self._sync_failed is not None:
            failed = self._sync_failed
            raise OSError(failed.errno, f"an earlier sync of the log failed: {failed}", seg.path)
        try:
            seg.file.sync()
        except OSError as exc:
            self._sync_failed = exc
            raise

    # --- reading ----------------------------------------------------------------------------
    def read(self, ordinal: int, offset: int, size: int) -> bytes:
        """Bytes of a committed range of one segment (any thread)."""
        return self.segments[ordinal].read(size, offset)

    def sealed(self) -> list[tuple[int, Segment]]:
        """(ordinal, segment) of every segment but the tail, not dropped (loop thread). They
        are whole and synced (rotation syncs a segment before its successor exists) and never
        written again: only these may be rewritten or dropped."""
        tail = len(self.segments) - 1
        return [(i, s) for i, s in enumerate(self.segments[:tail]) if not s.retired]

    def replace_segment(self, ordinal: int, new: Segment | None) -> None:
        """Swap a sealed segment for its rewritten version (or, with None, mark it dropped),
        retiring the old one: reads already planned against it keep it open (loop thread)."""
        old = self.segments[ordinal]
        assert ordinal < len(self.segments) - 1, "the tail segment is never replaced"
        if new is None:
            new = Segment(old.path, old.first_position, _ClosedFile(old.path))
            new.retired = True
        self.segments[ordinal] = new
        old.retire()

    def path(self, ordinal: int) -> str:
        """File path of a segment, for error messages; never raises.

        A planned segment whose creation failed (the rotation's first steps can fail before
        the file exists) is named by the path it was to have: the commit loop reports a
        failed write with this, and an exception here would leave every producer waiting.
        """
        if 0 <= ordinal < len(self.segments):
            return self.segments[ordinal].path
        first = self._planned.get(ordinal)
        if first is None:
            return self.directory
        return os.path.join(self.directory, segment_name(first))

    def close(self) -> None:
        """Close every segment file."""
        for seg in self.segments:
            seg.close()
        self.segments.clear()


class _ClosedFile:
    """The file of a dropped segment: nothing may read it (the index holds no row for it)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _gone(self) -> OSError:
        return OSError(f"segment {self.path} was removed by retention or scavenging")

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        raise self._gone()

    def pread(self, size: int, offset: int) -> bytes:
        raise self._gone()

    def pread_many(self, sizes: list[int], offsets: list[int]) -> list[bytes]:
        raise self._gone()

    def pread_many_cached(self, sizes: list[int], offsets: list[int]) -> list[bytes] | None:
        return None  # (the read on a thread reports it)

    def sync(self) -> None:
        raise self._gone()

    def truncate(self, size: int) -> None:
        raise self._gone()

    def size(self) -> int:
        return 0

    def close(self) -> None:
        pass
