"""Check a store directory frame by frame, read-only; and the explicit repair that cuts damage
away without destroying a byte. Blocking I/O only, through the file-layer seam.

``verify_store`` applies the same rules as recovery on open (FORMAT.md, "Recovery"), without
changing anything, and reports per segment: how many frames and events it holds, their
positions, its size, and the first problem with its byte offset, classified as a *torn tail*
(what a crash leaves; opening the store cuts it) or *corruption* (opening raises
``CorruptLog`` naming the same file and offset). It also checks what recovery does not: the
structure of every event entry inside each frame.

``repair_store`` is never run implicitly. Under the store's lock (so never while a writer has
the store open) it truncates the first damaged segment after its last good frame and moves
every later segment aside; the bytes cut off go to side files next to their segment
(``<segment>.cut-<offset>``, ``<segment>.cut-0`` for a whole file), which the store ignores.
Each step is synced before the next, and running it again after a crash mid-repair is safe.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ._codec import unpack_stream_metadata
from ._compress import expand, inner_frames
from ._format import (
    ENTRY_HEAD,
    ENTRY_HEAD_SIZE,
    FORMAT_VERSION,
    FRAME_FLAG_SCHEMA,
    FRAME_KIND_COMPRESSED,
    FRAME_KIND_EVENTS,
    FRAME_KIND_METADATA,
    SCHEMA_VERSION,
    SCHEMA_VERSION_SIZE,
    SEGMENT_FLAG_SCAVENGED,
    SEGMENT_HEADER_SIZE,
    FrameError,
    FrameInfo,
    NewerFormat,
    parse_segment_name,
)
from ._fs import FileSystem, OsFileSystem, size_at
from ._indexfile import sidecar_path
from ._log import LOCK_NAME, Log, frame_now_at, later_write_at
from ._segment import Segment
from .errors import StoreLocked, UnsupportedFormat
from .options import StoreOptions

__all__ = [
    "RepairAction",
    "RepairReport",
    "SegmentProblem",
    "SegmentReport",
    "VerifyReport",
    "repair_store",
    "verify_store",
]

ProblemKind = Literal["torn_tail", "corruption"]
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class SegmentProblem:
    """The first thing wrong in one segment file.

    ``kind`` is ``"torn_tail"`` for damage a crash can leave (an incomplete last write, or a
    new segment whose header never reached the disk): opening the store cuts or removes it,
    losing nothing that was acknowledged. ``"corruption"`` is anything else (a bad frame with
    data from a later write after it, a bad frame in an older segment, a missing segment, a
    gap in positions or stream versions): opening raises ``CorruptLog`` with this path and
    offset. ``offset`` is the byte offset of the first bad frame (0: the segment header).
    """

    kind: ProblemKind
    """``"torn_tail"`` or ``"corruption"`` (see above)."""
    offset: int
    """Byte offset of the first bad frame in the file (0: the segment header)."""
    reason: str
    """What is wrong, for people (e.g. "bad checksum")."""

    @property
    def torn(self) -> bool:
        """Whether this is a torn tail (cut on open) rather than corruption."""
        return self.kind == "torn_tail"


@dataclass(frozen=True, slots=True)
class SegmentReport:
    """What verification found in one segment file.

    ``frames`` and ``events`` count the good frames before the first problem (checkpoint
    frames hold no events); ``first_position``/``last_position`` are those of its good events
    (None when it holds none); ``bytes`` is the file size.
    """

    path: str
    """The segment file."""
    frames: int
    """Good frames before the first problem."""
    events: int
    """Events in those frames."""
    first_position: int | None
    """Position of the first good event (None: none)."""
    last_position: int | None
    """Position of the last good event (None: none)."""
    bytes: int
    """The file's size."""
    problem: SegmentProblem | None = None
    """The first thing wrong in the file (None: it is whole)."""

    @property
    def ok(self) -> bool:
        """Whether the segment is whole."""
        return self.problem is None

    @property
    def name(self) -> str:
        """The segment's file name."""
        return os.path.basename(self.path)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What verification found in a store directory: one report per segment, in log order.

    After the first problem, later segments are still checked frame by frame, but positions
    and stream versions are only checked within each of them (their place in the log is
    unknown once something before them is damaged).
    """

    path: str
    """The store directory."""
    segments: tuple[SegmentReport, ...]
    """One report per segment file, in log order."""
    streams: int
    """Streams seen in the good frames before the first problem."""

    @property
    def events(self) -> int:
        """Events in good frames, in every segment."""
        return sum(s.events for s in self.segments)

    @property
    def ok(self) -> bool:
        """Whether every segment is whole."""
        return all(s.ok for s in self.segments)

    @property
    def first_problem(self) -> tuple[SegmentReport, SegmentProblem] | None:
        """The first damaged segment and its problem: where opening stops."""
        for seg in self.segments:
            if seg.problem is not None:
                return seg, seg.problem
        return None

    @property
    def corrupt(self) -> bool:
        """Whether opening the store would raise ``CorruptLog`` (a torn tail is not)."""
        first = self.first_problem
        return first is not None and not first[1].torn

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for the CLI's ``--json`` and for tools)."""
        first = self.first_problem
        return {
            "path": self.path,
            "ok": self.ok,
            "verdict": "ok" if first is None else first[1].kind,
            "events": self.events,
            "streams": self.streams,
            "segments": [
                {
                    "path": s.path,
                    "frames": s.frames,
                    "events": s.events,
                    "first_position": s.first_position,
                    "last_position": s.last_position,
                    "bytes": s.bytes,
                    "problem": None
                    if s.problem is None
                    else {
                        "kind": s.problem.kind,
                        "offset": s.problem.offset,
                        "reason": s.problem.reason,
                    },
                }
                for s in self.segments
            ],
        }


class _Stop(Exception):
    """A frame that checks but does not fit the log (stops a segment's scan)."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def _check_entries(buf: bytes | memoryview, start: int, info: FrameInfo) -> str | None:
    """Why the event entries of a checked frame do not fill it exactly, or None."""
    at = start + info.entries_at
    end = start + info.length
    if info.flags & ~FRAME_FLAG_SCHEMA:
        return f"unknown frame flags {info.flags:#04x}"
    versioned = SCHEMA_VERSION_SIZE if info.flags & FRAME_FLAG_SCHEMA else 0
    for k in range(info.event_count):
        if end - at < ENTRY_HEAD_SIZE:
            return f"event entry {k} runs past its frame"
        size, _eid, tlen, mlen = ENTRY_HEAD.unpack_from(buf, at)
        nxt = at + 4 + size
        if nxt > end or size < ENTRY_HEAD_SIZE - 4 + tlen + mlen or tlen < versioned:
            return f"event entry {k} runs past its frame"
        t0 = at + ENTRY_HEAD_SIZE
        if versioned and SCHEMA_VERSION.unpack_from(buf, t0 + tlen - versioned)[0] == 0:
            return f"event entry {k} has schema version 0"
        try:
            bytes(buf[t0 : t0 + tlen - versioned]).decode("utf-8")
        except UnicodeDecodeError:
            return f"event entry {k} has a type name that is not UTF-8"
        at = nxt
    if at != end:
        return f"{end - at} bytes after the last event entry of the frame"
    return None


def _segments(fs: FileSystem, path: str) -> list[tuple[int, str]]:
    return sorted(
        (first, os.path.join(path, name))
        for name in fs.listdir(path)
        if (first := parse_segment_name(name)) is not None
    )


def verify_store(
    path: str | os.PathLike[str],
    fs: FileSystem | None = None,
    options: StoreOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Check every frame of every segment of the store at ``path``; read-only, blocking.

    ``progress(segments_done, segments_total)`` is called after each segment.

    Uses ``fs`` (default: the real file system) for every read. ``options`` are those the
    store is opened with (default: ``StoreOptions()``): recovery judges a damaged tail longer
    than one write can be (from ``max_batch_bytes`` and ``max_append_bytes``) as corruption,
    and so does this. Safe to run while a writer has the store open: on the writer's own
    I/O thread (``EventStore.verify``) it sees the log between two batches; from anywhere
    else a write in progress may show as a torn tail, and what the writer's retention or
    scavenging removes meanwhile is accepted as removed (a segment gone before it was
    opened, a stream skipping versions whose last segment read was removed or rewritten
    since). Raises OSError when the directory cannot be read.
    """
    directory = os.fspath(path)
    fs = fs if fs is not None else OsFileSystem()
    opts = options if options is not None else StoreOptions()
    max_write = Log(fs, directory, opts).max_write_bytes()
    chunk_bytes = opts.read_chunk_bytes
    names = _segments(fs, directory)
    reports: list[SegmentReport] = []
    expected: int | None = 0  # next position; None once the log's order is broken
    versions: dict[str, int] = {}
    seen = [0]  # events in good frames so far: positions missing = a position minus this
    where: dict[str, tuple[str, int]] = {}  # stream → (path, size) of its last segment read
    for i, (first, seg_path) in enumerate(names):
        last = i == len(names) - 1
        try:
            file = fs.open(seg_path, write=False)
        except FileNotFoundError:  # removed since the listing: a running writer's retention
            continue
        seg = Segment(seg_path, first, file)
        try:
            report = _verify_segment(
                seg, last, expected, versions, chunk_bytes, max_write, seen, (fs, where)
            )
        finally:
            seg.close()
        reports.append(report)
        if progress is not None:
            progress(i + 1, len(names))
        if report.problem is not None:
            expected = None
        elif expected is not None and report.last_position is not None:
            expected = report.last_position + 1
    return VerifyReport(directory, tuple(reports), len(versions))


def _gone(fs: FileSystem, path: str, size: int) -> bool:
    """Whether the segment file read at ``path`` (``size`` bytes then) was removed or
    rewritten (a scavenge's rewrite is shorter) since."""
    now = size_at(fs, path)
    return now is None or now < size


def _verify_segment(
    seg: Segment,
    last: bool,
    expected: int | None,
    versions: dict[str, int],
    chunk: int,
    max_write: int,
    seen: list[int],
    removal: tuple[FileSystem, dict[str, tuple[str, int]]],
) -> SegmentReport:
    size = seg.file.size()
    fs, where = removal
    problem: SegmentProblem | None = None
    try:
        header_first, flags = seg.read_header_flags()
    except NewerFormat as exc:
        raise UnsupportedFormat(seg.path, exc.found, FORMAT_VERSION) from None
    except ValueError as exc:
        if last and later_write_at(seg, 0, -1, size) is None:
            problem = SegmentProblem(
                "torn_tail",
                0,
                f"segment header never completed ({exc}): a rotation cut short by a crash",
            )
        else:
            problem = SegmentProblem("corruption", 0, f"bad segment header: {exc}")
        return SegmentReport(seg.path, 0, 0, None, None, size, problem)
    # A segment may start past the previous one's end (retention or scavenging removed
    # segments), never before it.
    if header_first != seg.first_position or (expected is not None and header_first < expected):
        want = header_first if expected is None else expected
        problem = SegmentProblem(
            "corruption",
            0,
            f"segment starts at position {header_first} (named {seg.first_position}); "
            f"expected {want} or later",
        )
    checking = problem is None and expected is not None
    local: dict[str, int] = {}  # stream versions within this segment, when not checking
    stats = {"frames": 0, "events": 0, "first": -1, "last": -1}

    def sink(info: FrameInfo, buf: bytes, start: int) -> None:
        if info.kind == FRAME_KIND_METADATA:
            try:
                unpack_stream_metadata(buf[start + info.entries_at : start + info.length])
            except FrameError as exc:
                raise _Stop(info.offset, exc.reason) from None
        if info.kind == FRAME_KIND_COMPRESSED:
            try:
                raw = expand(buf, start, start + info.length)
                inner = inner_frames(raw, info)
            except FrameError as exc:
                raise _Stop(info.offset, f"compressed frame: {exc.reason}") from None
            for frame in inner:
                try:
                    events(frame, raw, frame.offset)
                except _Stop as stop:
                    raise _Stop(info.offset, f"in compressed frame: {stop.reason}") from None
        else:
            events(info, buf, start)
        stats["frames"] += 1

    def events(info: FrameInfo, buf: bytes, start: int) -> None:
        if info.kind == FRAME_KIND_EVENTS:
            known = versions if checking else local
            prev = known.get(info.stream)
            want = -1 if prev is None else prev
            # a stream whose oldest frames were removed first shows up past version 0, with
            # at least that many positions missing before it (as recovery checks); next to a
            # running writer, one already seen may skip as many, if the segment of the last
            # event read of it was removed or rewritten since (a scavenge, retention)
            missing = info.first_position - seen[0]
            removed = want + 1 < info.first_version <= want + 1 + missing and (
                prev is None or _gone(fs, *where[info.stream])
            )
            if (checking or prev is not None) and info.first_version != want + 1 and not removed:
                raise _Stop(
                    info.offset,
                    f"stream {info.stream!r} continues at version {info.first_version}, "
                    f"expected {want + 1}",
                )
            bad = _check_entries(buf, start, info)
            if bad is not None:
                raise _Stop(info.offset, bad)
            known[info.stream] = info.first_version + info.event_count - 1
            where[info.stream] = (seg.path, size)
            seen[0] += info.event_count
            if stats["first"] < 0:
                stats["first"] = info.first_position
            stats["last"] = info.first_position + info.event_count - 1
            stats["events"] += info.event_count

    try:
        gaps = bool(flags & SEGMENT_FLAG_SCAVENGED)
        end, _pos, reason = seg.scan(SEGMENT_HEADER_SIZE, header_first, chunk, sink, gaps)
    except _Stop as stop:
        end, reason = stop.offset, None
        if problem is None:
            problem = SegmentProblem("corruption", stop.offset, stop.reason)
    if reason is not None and problem is None:
        if not last:
            problem = SegmentProblem("corruption", end, f"{reason} (in a segment before the last)")
        else:
            # (only the bytes there when the check began: next to a running writer, a write
            # in progress then may have ended since and the next begun, which proves nothing)
            later = later_write_at(seg, end + 1, end, size)
            if later is not None and frame_now_at(seg, end):
                later = None  # a writer's recovery cut it and wrote on since: not damage
            size = max(size, end)
            if later is None and size - end > max_write:
                problem = SegmentProblem(
                    "corruption",
                    end,
                    f"{reason}; the {size - end} bytes from there to the end are more than "
                    f"one write can hold ({max_write}), so this is not a torn write",
                )
            elif later is None:
                problem = SegmentProblem("torn_tail", end, f"{reason}; nothing written after it")
            else:
                problem = SegmentProblem(
                    "corruption",
                    end,
                    f"{reason}; a frame of a later write follows at byte {later}",
                )
    return SegmentReport(
        seg.path,
        stats["frames"],
        stats["events"],
        stats["first"] if stats["first"] >= 0 else None,
        stats["last"] if stats["last"] >= 0 else None,
        size,
        problem,
    )


# --- repair ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RepairAction:
    """One change made (or, in a dry run, planned) by ``repair_store``.

    ``"truncate"``: bytes ``offset..`` of ``path`` were copied to ``side_path``, then cut.
    ``"move"``: the whole file ``path`` was renamed to ``side_path`` (``offset`` is 0).
    """

    kind: Literal["truncate", "move"]
    path: str
    offset: int
    bytes: int
    side_path: str


@dataclass(frozen=True, slots=True)
class RepairReport:
    """What ``repair_store`` found, did, and found afterwards."""

    before: VerifyReport
    actions: tuple[RepairAction, ...]
    after: VerifyReport | None = field(default=None)
    """The store verified again after the repair (None for a dry run)."""


def _side_path(fs: FileSystem, seg_path: str, offset: int) -> str:
    directory = os.path.dirname(seg_path)
    taken = set(fs.listdir(directory))
    base = f"{os.path.basename(seg_path)}.cut-{offset}"
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}.{n}"
    return os.path.join(directory, name)


def plan_repair(report: VerifyReport, fs: FileSystem | None = None) -> list[RepairAction]:
    """The actions that would make the store whole again: every segment after the first
    damaged one moved aside (last first), then the damaged one cut after its last good
    frame (or moved aside whole when its header or start is bad)."""
    fs = fs if fs is not None else OsFileSystem()
    first = report.first_problem
    if first is None:
        return []
    damaged, problem = first
    at = report.segments.index(damaged)
    actions = [
        RepairAction("move", s.path, 0, s.bytes, _side_path(fs, s.path, 0))
        for s in reversed(report.segments[at + 1 :])
    ]
    if problem.offset < SEGMENT_HEADER_SIZE:
        actions.append(
            RepairAction("move", damaged.path, 0, damaged.bytes, _side_path(fs, damaged.path, 0))
        )
    else:
        actions.append(
            RepairAction(
                "truncate",
                damaged.path,
                problem.offset,
                damaged.bytes - problem.offset,
                _side_path(fs, damaged.path, problem.offset),
            )
        )
    return actions


def repair_store(
    path: str | os.PathLike[str],
    fs: FileSystem | None = None,
    options: StoreOptions | None = None,
    *,
    dry_run: bool = False,
) -> RepairReport:
    """Make a damaged store openable again without destroying anything; blocking.

    Takes the store's lock first (raises ``StoreLocked`` while a writer has it open), then
    verifies (with ``options``, see :func:`verify_store`), then carries out
    :func:`plan_repair`: moves go first (a rename each, then one directory sync), the cut
    bytes are copied to their side file and synced (file and directory) before the segment
    is truncated and synced. With ``dry_run`` nothing is changed and the planned actions are
    returned.
    """
    directory = os.fspath(path)
    fs = fs if fs is not None else OsFileSystem()
    fs.listdir(directory)  # a missing directory raises here, before LOCK would be created
    try:
        lock = fs.lock(os.path.join(directory, LOCK_NAME))
    except BlockingIOError:
        raise StoreLocked(
            f"store at {directory} is open for writing (by this or another process); "
            "close it before repairing"
        ) from None
    try:
        before = verify_store(directory, fs, options)
        actions = plan_repair(before, fs)
        if dry_run or not actions:
            return RepairReport(before, tuple(actions), None if dry_run else before)
        # The index sidecars of segments about to change would describe bytes that are gone
        # (they would be found stale on open, but what they say about named consumers'
        # checkpoints could outlive the cut checkpoint frames): remove them first.
        dropped = False
        for a in actions:
            with contextlib.suppress(FileNotFoundError):
                fs.remove(sidecar_path(a.path))
                dropped = True
        if dropped:
            fs.sync_dir(directory)
        moves = [a for a in actions if a.kind == "move"]
        for a in moves:
            fs.rename(a.path, a.side_path)
        if moves:
            fs.sync_dir(directory)
        for a in actions:
            if a.kind == "truncate":
                _cut(fs, a, _COPY_CHUNK)
        after = verify_store(directory, fs, options)
        return RepairReport(before, tuple(actions), after)
    finally:
        lock.release()


def _cut(fs: FileSystem, action: RepairAction, chunk: int) -> None:
    """Copy ``action.path`` from ``action.offset`` on into the side file, sync it and the
    directory, then truncate and sync the segment."""
    seg = fs.open(action.path, write=True)
    try:
        side = fs.open(action.side_path, write=True, create=True)
        try:
            for at, data in _chunks(seg.size(), action.offset, chunk, seg.pread):
                side.pwrite(data, at - action.offset)
            side.sync()
        finally:
            side.close()
        fs.sync_dir(os.path.dirname(action.path))
        seg.truncate(action.offset)
        seg.sync()
    finally:
        seg.close()


def _chunks(
    size: int, start: int, chunk: int, pread: Callable[[int, int], bytes]
) -> Iterator[tuple[int, bytes]]:
    at = start
    while at < size:
        data = pread(min(chunk, size - at), at)
        if not data:
            return
        yield at, data
        at += len(data)
