"""Index sidecar files: one per segment, so that opening a large store does not rescan its log.

A sidecar ``<first position>.idx`` holds the index rows of the frames of segment
``<first position>.seg`` up to a byte offset (``covered_end``), the streams' positions in them
grouped by stream (with each stream's first version there, and each row's event count: after
retention or scavenging neither follows from the rest), the named-consumer checkpoints and
the stream metadata written there. Open loads it and scans
the segment only from ``covered_end`` on, so a store opened after a clean close scans nothing,
and after a crash only what was written since its segment's sidecar.

Sidecars are a cache of the log, never a source of truth:

* Written only for committed, durable frames: when a segment is sealed (in the background,
  a bounded step at a time between batch writes: see ``SidecarWriter``) and for the tail
  segment on a clean close; atomically (temporary file, sync, rename, sync of the directory),
  all through the file-layer seam. The segment checksum it records comes from the running
  checksum the segment keeps of what this process wrote to it (``Segment.checksum``), or
  from reading the segment when that does not cover it.
* Checked on open against the segment they describe: the checksum of the whole file, the
  segment's first position, its size (at least ``covered_end``), and the last covered frame
  (read and checked in full: damage at a log's end is the likely kind). Anything wrong and
  the segment is scanned as if the sidecar were absent (and a new sidecar is written later),
  so a repaired, truncated or replaced segment is never described by a stale sidecar.
* A failure to write one is logged and otherwise ignored: the store is correct without them.

Frames before ``covered_end`` are not re-checked on open (that is the point); ``verify`` still
reads every frame.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import struct
import sys
from array import array
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Executor, Future
from typing import Final, NamedTuple

from ._format import FRAME_HEADER, FRAME_HEADER_SIZE, FrameError, check_frame, crc32c
from ._fs import FileSystem
from ._index import Index, SegmentRows
from ._log import Log
from ._segment import Segment

log = logging.getLogger("aioeventstore")

SUFFIX: Final = ".idx"
TMP_SUFFIX: Final = ".tmp"
MAGIC: Final = b"AIOESIDX"
VERSION: Final = 2
"""Version 2 added the rows' event counts, the streams' first versions and the stream
metadata (retention); a version-1 sidecar is still read (its segments had no gaps)."""
_LITTLE: Final = 1 if sys.byteorder == "little" else 0
# magic 8s | version H | little-endian B | reserved B | first position q | covered end q |
# end position q | last frame offset q | last frame length q | last frame crc I | crc32c of the
# segment's bytes [0, covered end) I | rows I | streams I | marks I | names bytes I |
# mark names bytes I
HEAD: Final = struct.Struct("<8sHBBqqqqqIIIIIII")
# version 2 only, after the marks: stream metadata count I | their names bytes I | their
# packed metadata bytes I
META_HEAD: Final = struct.Struct("<III")
CHUNK: Final = 8 << 20
CRC_STEP: Final = 4 << 20
"""Bytes of a segment a background export checksums per step, for a segment whose running
checksum does not cover them (one this process did not create)."""
ROWS_STEP: Final = 16384
STREAMS_STEP: Final = 512
"""A background export groups at most this many rows, or this many streams, per step."""
WRITE_STEP: Final = 1 << 20
"""Bytes of a sidecar file a background export writes and syncs per step."""
MAX_QUEUED: Final = 2
"""Exports waiting for steps beyond this many: the oldest is handed over whole."""


class Sidecar(NamedTuple):
    """A sidecar file's contents."""

    first_position: int  # of its segment
    covered_end: int  # byte offset in the segment after the last frame it describes
    end_position: int  # position after the last event it describes
    last_offset: int  # of the last covered frame (an event frame)
    last_length: int
    last_crc: int  # that frame's stored checksum
    range_crc: int  # crc32c of the segment's bytes [0, covered_end)
    rows: SegmentRows
    marks: dict[str, int]
    metas: dict[str, tuple[int, bytes]]  # stream → (revision, packed metadata)


def sidecar_path(segment_path: str) -> str:
    """The sidecar file of a segment file."""
    return os.path.splitext(segment_path)[0] + SUFFIX


def pack(car: Sidecar) -> bytes:
    """The bytes of a sidecar file (native byte order, recorded in the header)."""
    rows = car.rows
    names_b = [n.encode("utf-8") for n in rows.names]
    mark_names = [n.encode("utf-8", "surrogatepass") for n in car.marks]  # (see check_frame)
    meta_names = [n.encode("utf-8") for n in car.metas]
    head = HEAD.pack(
        MAGIC,
        VERSION,
        _LITTLE,
        0,
        car.first_position,
        car.covered_end,
        car.end_position,
        car.last_offset,
        car.last_length,
        car.last_crc,
        car.range_crc,
        len(rows.pos),
        len(rows.names),
        len(car.marks),
        sum(map(len, names_b)),
        sum(map(len, mark_names)),
    )
    # arrays go in as they are (join reads any buffer), and the checksum is taken piece by
    # piece: one copy of the file's bytes in all, not three (a segment's sidecar is ~10 MB,
    # made on the I/O thread between batch writes)
    parts: list[bytes | array[int]] = [
        head,
        rows.pos,
        rows.off,
        rows.length,
        rows.sids,
        array("I", map(len, names_b)),
        rows.counts,
        b"".join(names_b),
        rows.positions,
        array("I", map(len, mark_names)),
        array("q", car.marks.values()),
        b"".join(mark_names),
        rows.cnt,
        rows.firsts,
        META_HEAD.pack(
            len(car.metas), sum(map(len, meta_names)), sum(len(p) for _, p in car.metas.values())
        ),
        array("I", map(len, meta_names)),
        array("q", (r for r, _ in car.metas.values())),
        array("I", (len(p) for _, p in car.metas.values())),
        b"".join(meta_names),
        b"".join(p for _, p in car.metas.values()),
    ]
    crc = 0
    for part in parts:
        crc = crc32c(part, crc)
    parts.append(crc.to_bytes(4, "little"))
    return b"".join(parts)


def unpack(raw: bytes) -> Sidecar:
    """Parse a sidecar file; ValueError saying what is wrong."""
    if len(raw) < HEAD.size + 4:
        raise ValueError("shorter than its header")
    view = memoryview(raw)  # (slices of it copy nothing: a sidecar is megabytes)
    if int.from_bytes(raw[-4:], "little") != crc32c(view[:-4]):
        raise ValueError("checksum mismatch")
    (magic, version, little, _r, first, covered, end_pos, last_off, last_len, last_crc, range_crc,
     nrows, nstreams, nmarks, names_len, mark_names_len) = HEAD.unpack_from(raw)  # fmt: skip
    if magic != MAGIC or version not in (1, VERSION):
        raise ValueError(f"not a version-1 or version-{VERSION} sidecar")
    if little != _LITTLE:
        raise ValueError("written with another byte order")
    at = HEAD.size

    def take(code: str, n: int) -> array[int]:
        nonlocal at
        out = array(code)
        size = out.itemsize * n
        if n < 0 or at + size > len(raw) - 4:  # (a negative count would move ``at`` back)
            raise ValueError("sections do not add up")
        out.frombytes(view[at : at + size])
        at += size
        return out

    def take_bytes(n: int) -> bytes:
        nonlocal at
        out = bytes(view[at : at + n])
        at += n
        return out

    pos, off, length, sids = take("q", nrows), take("q", nrows), take("I", nrows), take("I", nrows)
    name_lens, counts = take("I", nstreams), take("q", nstreams)
    names_blob = take_bytes(names_len)
    if counts and min(counts) < 0:
        raise ValueError("a stream with a negative number of events")
    total = sum(counts)  # (one per stream)
    positions = take("q", total)
    mark_lens, mark_pos = take("I", nmarks), take("q", nmarks)
    mark_blob = take_bytes(mark_names_len)
    metas: dict[str, tuple[int, bytes]] = {}
    if version == 1:  # written before removal existed: rows abut, streams continue
        cnt = array("I", (b - a for a, b in itertools.pairwise(pos)))
        if nrows:
            cnt.append(end_pos - pos[-1])
        firsts = array("q", [-1]) * nstreams  # filled in by the loader (see load)
    else:
        cnt, firsts = take("I", nrows), take("q", nstreams)
        if len(raw) - 4 - at < META_HEAD.size:
            raise ValueError("sections do not add up")
        nmetas, meta_names_len, meta_bytes = META_HEAD.unpack_from(raw, at)
        at += META_HEAD.size
        meta_lens, meta_revs = take("I", nmetas), take("q", nmetas)
        packed_lens = take("I", nmetas)
        meta_blob, packed_blob = take_bytes(meta_names_len), take_bytes(meta_bytes)
        if sum(meta_lens) != meta_names_len or sum(packed_lens) != meta_bytes:
            raise ValueError("sections do not add up")
        i = j = 0
        for n, rev, plen in zip(meta_lens, meta_revs, packed_lens, strict=True):
            metas[meta_blob[i : i + n].decode("utf-8")] = (rev, packed_blob[j : j + plen])
            i += n
            j += plen
    if at != len(raw) - 4 or sum(name_lens) != names_len or sum(mark_lens) != mark_names_len:
        raise ValueError("sections do not add up")
    names: list[str] = []
    i = 0
    for n in name_lens:
        names.append(names_blob[i : i + n].decode("utf-8"))
        i += n
    marks: dict[str, int] = {}
    i = 0
    for n, p in zip(mark_lens, mark_pos, strict=True):
        marks[mark_blob[i : i + n].decode("utf-8", "surrogatepass")] = p
        i += n
    # (each row's stream id is checked only where it is used: the last segment's, on load)
    if nrows and (total != _total(cnt) or pos[-1] + cnt[-1] != end_pos):
        raise ValueError("rows and streams disagree")
    rows = SegmentRows(pos, off, length, sids, names, counts, positions, cnt, firsts)
    return Sidecar(
        first, covered, end_pos, last_off, last_len, last_crc, range_crc, rows, marks, metas
    )


def _total(cnt: array[int]) -> int:
    """``sum(cnt)``, without a Python int per row when every row holds as many events as the
    first (one ``memcmp``: a log of one kind of append, the usual one; ``sum`` over the ten
    million rows of a big store was a tenth of its open time)."""
    if not cnt:
        return 0
    raw = cnt.tobytes()
    if raw == raw[: cnt.itemsize] * len(cnt):
        return cnt[0] * len(cnt)
    return sum(cnt)


def range_crc(seg: Segment, end: int) -> int:
    """crc32c of the segment's bytes ``[0, end)``, read in chunks."""
    crc = 0
    at = 0
    while at < end:
        chunk = seg.read(min(CHUNK, end - at), at)
        if not chunk:
            break
        crc = crc32c(chunk, crc)
        at += len(chunk)
    return crc


def describes(
    car: Sidecar, seg: Segment, position: int, checksum: bool, last: bool = False
) -> str | None:
    """Why ``car`` does not describe ``seg`` (whose first event is ``position``), or None.
    With ``checksum`` the segment's covered bytes are checksummed too; with ``last`` (the
    rows' stream ids will be kept) every row's stream id is checked against its names."""
    if car.first_position != seg.first_position or car.first_position != position:
        return "it is for another segment"
    if not car.rows.pos or car.rows.pos[0] < position:
        return "its rows start before the segment's first position"
    if last and max(car.rows.sids, default=0) >= len(car.rows.names):
        return "its rows name streams it does not list"
    if seg.file.size() < car.covered_end:
        return "the segment is shorter than what it describes"
    if car.last_offset + car.last_length != car.covered_end:
        return "its last frame does not end where it says"
    raw = seg.read(car.last_length, car.last_offset)
    try:
        info = check_frame(raw, 0, len(raw))
    except FrameError:
        return "the segment's last covered frame is damaged or missing"
    if info.length != car.last_length or int.from_bytes(raw[4:8], "little") != car.last_crc:
        return "the segment's frame there is not the one it describes"
    if checksum and range_crc(seg, car.covered_end) != car.range_crc:
        return "the segment's bytes do not match its checksum"
    return None


def load(
    fs: FileSystem, seg: Segment, position: int, checksum: bool, last: bool = False
) -> Sidecar | None:
    """The sidecar of ``seg`` if there is one that describes it, else None (logged).
    ``checksum``: also checksum the segment's covered bytes (``verify_on_open``)."""
    path = sidecar_path(seg.path)
    try:
        handle = fs.open(path, write=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot open index sidecar %s (%s); scanning the segment", path, exc)
        return None
    try:
        raw = handle.pread(handle.size(), 0)
    except OSError as exc:
        log.warning("cannot read index sidecar %s (%s); scanning the segment", path, exc)
        return None
    finally:
        handle.close()
    try:
        car = unpack(raw)
    except (ValueError, OverflowError) as exc:  # (OverflowError: rows that go backwards)
        log.warning("ignoring damaged index sidecar %s (%s); scanning the segment", path, exc)
        return None
    why = describes(car, seg, position, checksum, last)
    if why is not None:
        log.warning("ignoring stale index sidecar %s: %s; scanning the segment", path, why)
        return None
    return car


def write_steps(
    fs: FileSystem, directory: str, segment_path: str, data: bytes, piece: int
) -> Generator[None, None, None]:
    """Write a sidecar atomically: temporary file, written and synced ``piece`` bytes at a
    time, rename, sync of the directory; yielding once the file is created and after each
    piece. The caller runs it to its end; a failure removes the temporary file."""
    path = sidecar_path(segment_path)
    tmp = path + TMP_SUFFIX
    with contextlib.suppress(FileNotFoundError):  # a crash's leftover must not block it
        fs.remove(tmp)
    handle = fs.open(tmp, write=True, create=True)
    try:
        try:
            handle.truncate(0)
            yield
            view = memoryview(data)
            for at in range(0, len(data), piece):
                handle.pwrite(view[at : at + piece], at)
                handle.sync()
                yield
        finally:
            handle.close()
        fs.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.remove(tmp)
        raise
    fs.sync_dir(directory)


def remove_temporaries(fs: FileSystem, directory: str) -> int:
    """Remove ``*.idx.tmp`` files a crash left (a writer's open, under the lock)."""
    removed = 0
    for name in fs.listdir(directory):
        if name.endswith(SUFFIX + TMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                fs.remove(os.path.join(directory, name))
                removed += 1
    return removed


class _Job:
    """One sidecar export: its steps, and how many of them the loop thread has yet to hand
    to the I/O thread (an estimate: the last one it hands over runs the rest)."""

    __slots__ = ("left", "ordinal", "steps")

    def __init__(self, ordinal: int, steps: Iterator[None], left: int) -> None:
        self.ordinal = ordinal
        self.steps = steps
        self.left = left


class SidecarWriter:
    """Writes sidecars in the background for the store that owns it.

    ``export`` snapshots which rows to save on the commit loop's thread (cheap: two
    bisections) and makes a job of bounded steps, each a few milliseconds at most: catch up
    the segment's running checksum (``Segment.checksum``: only for a segment this process did
    not create, 4 MB a step; for one it did, the checksum of what the sidecar covers is
    known without reading), group the rows (``ROWS_STEP`` rows or ``STREAMS_STEP`` streams a
    step), pack them and create the temporary file, write and sync it ``WRITE_STEP`` bytes a
    step, rename it.

    The trade-off: the steps run on the store's I/O thread, the one thread for all file
    writes, so the order of file operations stays deterministic (the crash sweeps rely on it,
    and cut the power with an export's file half written between batch writes); and they
    take turns with the commit loop's batch writes (``pump``): one step is queued behind each
    batch's write. Under load a batch waits for at most one step instead of a whole export
    (reading a 64 MB segment back to checksum it, grouping its rows, writing and syncing the
    sidecar: tens of milliseconds once per segment, which every append in flight then
    waited for). The cost: a sidecar is on disk some batches after its segment is sealed
    (a crash before then only means a scan of that segment on open); and an export's steps
    still take CPU time and the GIL from the event loop, spread over those batches.

    Every remaining step is handed over at once when the store is idle (the commit loop's
    queue stayed empty for a few loop turns after a batch: an append that comes just then
    waits for the rest of the export, as every append did before), before anything changes
    the rows (``wait_idle``), when the store closes (``drain``), and for the oldest export
    whenever more than ``MAX_QUEUED`` wait (segments sealing faster than batches go by).

    Nothing here depends on timing, so the order of work on the I/O thread is the same on
    every run: steps are handed over only at those points of the commit loop (not when the
    I/O thread finishes one), and how many steps an export gets is estimated on the loop
    thread when it is made, from what that thread knows; the last step it is given runs
    whatever the estimate left.
    """

    def __init__(self, log_: Log, index: Index, fs: FileSystem) -> None:
        self._log = log_
        self._index = index
        self._fs = fs
        self.executor: Executor | None = None
        """The store's I/O thread, set while the store is open."""
        self._jobs: deque[_Job] = deque()  # exports with steps not handed over (loop thread)
        self._pending: list[Future[None]] = []
        self.written = 0
        """Sidecars written since open."""

    def _job(self, ordinal: int) -> _Job | None:
        index = self._index
        r0, r1 = index.segment_rows(ordinal)
        if r1 <= r0:
            return None
        last = index.frame(r1 - 1)
        end_position = last.first_position + last.event_count
        seg = self._log.segments[ordinal]
        marks = dict(index.marks.get(ordinal, {}))
        metas = dict(index.metas.get(ordinal, {}))
        covered = last.offset + last.length
        # How many steps it takes, estimated from what the loop thread knows (so the same on
        # every run: the order of file operations must not depend on thread timing).
        rows = r1 - r0
        events = end_position - index.frame(r0).first_position
        streams = min(rows, index.stream_count())
        size = HEAD.size + 28 * rows + 8 * events + 48 * streams
        steps = 0 if seg.created else -(-covered // CRC_STEP)
        # (yields: rows; file created; each piece written; then the last step renames it)
        steps += -(-rows // ROWS_STEP) + streams // STREAMS_STEP + 1 + -(-size // WRITE_STEP) + 1

        def run() -> Iterator[None]:
            while seg.crc_end < covered:  # not created here: checksummed a step at a time
                seg.catch_up(covered, CRC_STEP)
                yield
            crc = seg.checksum(covered, CHUNK)
            raw = seg.read(FRAME_HEADER_SIZE, last.offset)
            _magic, last_crc, _len = FRAME_HEADER.unpack_from(raw)
            rows = yield from index.export_steps(r0, r1, end_position, ROWS_STEP, STREAMS_STEP)
            yield
            car = Sidecar(
                seg.first_position,
                covered,
                end_position,
                last.offset,
                last.length,
                last_crc,
                crc,
                rows,
                marks,
                metas,
            )
            data = pack(car)
            yield from write_steps(self._fs, self._log.directory, seg.path, data, WRITE_STEP)
            self.written += 1

        return _Job(ordinal, run(), steps)

    def export(self, ordinal: int) -> None:
        """Save segment ``ordinal``'s committed rows in the background (loop thread only)."""
        job = self._job(ordinal)
        if job is None or self.executor is None:
            return
        self._jobs.append(job)
        while len(self._jobs) > MAX_QUEUED:
            self._submit(self._jobs.popleft(), True)

    def pump(self, everything: bool) -> None:
        """Hand the I/O thread the next step of the oldest export, or with ``everything``
        every remaining step of every export (loop thread: the commit loop's
        ``Background``)."""
        if self.executor is None:
            return
        if everything:
            while self._jobs:
                self._submit(self._jobs.popleft(), True)
        elif self._jobs:
            job = self._jobs[0]
            job.left -= 1
            if job.left <= 0:
                self._jobs.popleft()
            self._submit(job, job.left <= 0)

    def waiting(self) -> bool:
        """Whether an export has steps not handed over yet (loop thread). ``pump(True)``
        takes each export off the list before it hands it over, so even a failing hand-over
        ends this."""
        return self.executor is not None and bool(self._jobs)

    def _submit(self, job: _Job, to_end: bool) -> None:
        assert self.executor is not None
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self.executor.submit(self._step, job, to_end))

    def export_now(self, ordinal: int) -> None:
        """Save segment ``ordinal``'s rows on this thread (close, after the loop stopped)."""
        job = self._job(ordinal)
        if job is not None:
            self._step(job, True)

    def _step(self, job: _Job, to_end: bool) -> None:
        """Run one step of ``job``, or with ``to_end`` all that remain (I/O thread)."""
        try:
            if to_end:
                for _ in job.steps:
                    pass
            else:
                next(job.steps, None)
        except Exception as exc:  # a cache: the store stays correct without it
            log.warning(
                "could not write the index sidecar of %s: %s", self._log.path(job.ordinal), exc
            )

    def idle(self) -> bool:
        """Whether no export is waiting, queued or running (the index may then lose rows)."""
        self._pending = [f for f in self._pending if not f.done()]
        return not self._jobs and not self._pending

    async def wait_idle(self) -> None:
        """Hand over every export's remaining steps and wait until ``idle()`` (loop thread);
        the caller must not await again before it changes rows, so that no export can start
        in between."""
        while True:
            self.pump(True)  # (again after each wait: a segment may have been sealed meanwhile)
            if self.idle() or not self._pending:
                return
            # (shielded: a cancelled caller, a scavenge stopped by close say, must not cancel
            # the export step it waits for; close then waits for it in drain)
            await asyncio.shield(asyncio.wrap_future(self._pending[0]))

    def drain(self) -> None:
        """Hand over what remains and wait for it (blocking; on close, once the commit loop
        has stopped and before the I/O thread does: nothing else touches the jobs then)."""
        self.pump(True)
        concurrent.futures.wait(self._pending)  # (a step logs its own failure: see _step)
        self._pending.clear()
