"""Opening a store: build its in-memory state from its files (and keep a read-only one current).

The facade (``store.py``) makes one :class:`Opener` per store and runs its blocking ``open_*``
method once, on the store's I/O thread, before any task can touch the state. What it fills is
the facade's own objects, which the reader, the subscriptions and the commit loop share: the
:class:`~aioeventstore._index.Index`, the stream metadata (``StreamMetas``) and the named
consumers' checkpoints. What else opening found is left in the opener's attributes for the
facade to take: ``lock``, ``recovery`` and ``unsaved``.

Writer (:meth:`Opener.open_writer`): create the directory, take its lock (``StoreLocked`` when
another writer has it), recover the log (each segment's index sidecar loaded when it checks out,
the rest scanned frame by frame, a torn tail cut: ``_log.py``), remove the half-written
temporaries a crash left, check the stream metadata against the log, and rebuild the
idempotency window from the last appends on disk. Raises ``CorruptLog`` for damage a crash
cannot leave. After a failure the facade still calls :meth:`Opener.release` (with closing the
log), so a lock taken is given back.

Read-only (:meth:`Opener.open_read_only`, then :meth:`Opener.follow` as a task): no lock and
nothing changed on disk; the first scan of a ``_follow.Follower`` (from the sidecars where they
check out), then a poll every interval that adds what the writer committed. ``StoreNotFound``
when the directory does not exist.

Threads: ``open_*`` run on the I/O thread while nothing else uses the state; ``follow`` runs on
the event loop and touches the index only there (its scans run on the I/O thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import cast

from ._codec import frame_event_ids, unpack_stream_metadata
from ._compress import expand, inner_frames
from ._follow import Follower, Rewrite, frame_indexer, may_skip, read_rewrite
from ._format import (
    FRAME_KIND_CHECKPOINT,
    FRAME_KIND_COMPRESSED,
    FRAME_KIND_METADATA,
    SEGMENT_HEADER_SIZE,
    FrameError,
    FrameInfo,
    check_frame,
)
from ._fs import FileSystem, Lock
from ._index import Index, StreamIds
from ._indexfile import Sidecar, sidecar_path
from ._indexfile import load as load_sidecar
from ._indexfile import remove_temporaries as remove_sidecar_temporaries
from ._log import LOCK_NAME, Log, Recovery
from ._meta import StreamMetadata, StreamMetas
from ._segment import FrameSink, Segment
from ._snapshots import SnapshotFiles
from .errors import CorruptLog, EventStoreError, ReadFailed, StoreLocked, StoreNotFound
from .events import AppendResult
from .options import StoreOptions

log = logging.getLogger("aioeventstore")

Window = dict[bytes, tuple[bytes, AppendResult]]
"""The commit loop's idempotency window: stream + first event id → (event ids, result)."""


def _collect(frames: list[tuple[int, FrameInfo]]) -> Callable[[int, FrameInfo], None]:
    def found(ordinal: int, info: FrameInfo) -> None:
        frames.append((ordinal, info))

    return found


def _drop_rewrite(old: Segment, done: asyncio.Future[Rewrite | None]) -> None:
    """A rewritten segment read while the store closed: unpin the old file, close the new."""
    old.unpin()
    if not done.cancelled() and done.exception() is None and (found := done.result()):
        found[0].close()


class Opener:
    """Builds one store's state from its files (see the module docstring for the contract)."""

    def __init__(
        self,
        fs: FileSystem,
        path: str,
        options: StoreOptions,
        log: Log,
        index: Index,
        metas: StreamMetas,
        checkpoints: dict[str, int],
        snapshot_files: SnapshotFiles,
    ) -> None:
        self._fs = fs
        self._path = path
        self._options = options
        self._log = log
        self._index = index
        self._metas = metas
        self._checkpoints = checkpoints
        self._snapshot_files = snapshot_files
        self._follower: Follower | None = None
        self._seen = [0]  # events a read-only store has indexed (see frame_indexer)
        self.lock: Lock | None = None
        """The directory's writer lock once taken (writer only); :meth:`release` gives it back."""
        self.recovery: Recovery | None = None
        """What opening found: segments, end position, any torn tail cut (None before)."""
        self.unsaved: list[int] = []
        """Sealed segments that were scanned (no usable sidecar, or one that covers only a
        prefix): the facade has their sidecars written once its sidecar writer runs."""

    def open_writer(self, window: Window) -> None:
        """Lock the directory and recover the log into the state, and fill ``window`` (the
        commit loop's idempotency window) from the last appends on disk (blocking, I/O
        thread)."""
        fs = self._fs
        fs.makedirs(self._path)
        try:
            self.lock = fs.lock(os.path.join(self._path, LOCK_NAME))
        except BlockingIOError:
            raise StoreLocked(
                f"store at {self._path} is already open for writing (by this or another process)"
            ) from None
        index = self._index
        metas = self._metas
        scanned: list[int] = []  # sealed segments without a usable sidecar
        # Sealed segments whose sidecar covers only a prefix (their export after the seal
        # was lost to a crash): where the scan past it finds events, the sidecar is written
        # again; else every open would rescan them.
        prefix_only: set[int] = set()
        rows_scanned: set[int] = set()  # segments where the scan added events rows
        seen = [0]  # events so far: a frame's position minus this = positions missing before

        def meta_frame(ordinal: int, stream: str, revision: int, packed: bytes) -> None:
            """A metadata frame (scanned or from a sidecar): the highest revision wins."""
            fields = unpack_stream_metadata(packed)
            index.add_meta(ordinal, stream, revision, packed)
            metas.commit(stream, StreamMetadata.from_fields(fields, revision))

        def resume(ordinal: int, seg: Segment, position: int, later: int) -> tuple[int, int]:
            # Stream ids are translated now for the last two segment files only: the tail is
            # exported again on close or rotation, and recovery may remove a half-made last
            # segment, making the one before it the tail. Older rows keep their sidecar's
            # ids (Index.load_rows): translating every row was a third of the open time of a
            # 10-million-event store. Only a segment the sidecar may not cover whole can
            # need its sidecar written again: its ids are translated if an export reads them.
            keep_sids = later <= 1
            car = load_sidecar(fs, seg, position, self._options.verify_on_open, keep_sids)
            if car is None:
                if later:
                    scanned.append(ordinal)
                return SEGMENT_HEADER_SIZE, position
            ids: StreamIds = "now"
            if not keep_sids:
                ids = "on export" if car.covered_end < seg.file.size() else "never"
            self._apply_sidecar(ordinal, seg, car, seen, ids)
            if not later:  # the tail: sealing it later need not read it back
                seg.seed(car.range_crc, car.covered_end)
            elif ids != "never":
                prefix_only.add(ordinal)
            for name, mark in car.marks.items():
                index.add_mark(ordinal, name, mark)
            try:
                for stream, (revision, packed) in car.metas.items():
                    meta_frame(ordinal, stream, revision, packed)
            except FrameError as exc:
                raise CorruptLog(sidecar_path(seg.path), 0, exc.reason) from None
            return car.covered_end, car.end_position

        def sink(ordinal: int, seg: Segment) -> FrameSink:
            def on_frame(info: FrameInfo, buf: bytes, start: int) -> None:
                if info.kind == FRAME_KIND_METADATA:  # never inside a container
                    packed = bytes(buf[start + info.entries_at : start + info.length])
                    try:
                        meta_frame(ordinal, info.stream, info.first_version, packed)
                    except FrameError as exc:
                        raise CorruptLog(seg.path, info.offset, exc.reason) from None
                    return
                if info.kind != FRAME_KIND_COMPRESSED:
                    add(info, None)
                    return
                try:
                    inner = inner_frames(expand(buf, start, start + info.length), info)
                except FrameError as exc:
                    raise CorruptLog(seg.path, info.offset, exc.reason) from None
                for frame in inner:
                    if frame.kind == FRAME_KIND_METADATA:
                        raise CorruptLog(seg.path, info.offset, "metadata frame in a container")
                    add(frame, info)

            def add(info: FrameInfo, container: FrameInfo | None) -> None:
                if info.kind == FRAME_KIND_CHECKPOINT:
                    # the highest wins, as in memory (a lower one may come later on disk)
                    old = self._checkpoints.get(info.stream, -1)
                    self._checkpoints[info.stream] = max(old, info.first_version)
                    index.add_mark(ordinal, info.stream, info.first_version)
                    return
                at = info.offset if container is None else container.offset
                # Versions are dense per stream, except that a stream's oldest frames may have
                # been removed (retention, scavenging): then it first shows up at a version
                # above 0, and at least that many positions before it must be missing.
                want = index.last_version(info.stream) + 1
                missing = info.first_position - seen[0]
                if info.first_version != want and not (want == 0 and info.first_version <= missing):
                    raise CorruptLog(
                        seg.path,
                        at,
                        f"stream {info.stream!r} continues at version "
                        f"{info.first_version}, expected {want}"
                        + (f" (at most {missing} removed before it)" if want == 0 else ""),
                    )
                seen[0] += info.event_count
                rows_scanned.add(ordinal)
                index.add_frame(
                    ordinal,
                    at,
                    info.length if container is None else container.length,
                    info.stream,
                    info.first_position,
                    info.first_version,
                    info.event_count,
                )

            return on_frame

        self.recovery = self._log.recover(sink, resume)
        if removed := self._snapshot_files.remove_temporaries():
            log.info("removed %d snapshot file(s) a crash left half-written", removed)
        if removed := remove_sidecar_temporaries(fs, self._path):
            log.info("removed %d index sidecar file(s) a crash left half-written", removed)
        index.next_position = max(index.next_position, self.recovery.next_position)
        index.head = index.next_position - 1
        self._set_floors(metas.durable, short_is_damage=True)
        # The idempotency window: the last appends on disk, oldest first.
        rows = index.row_count()
        # the last container decompressed: (ordinal, offset), its bytes, its event frames
        expanded: tuple[tuple[int, int], bytes, dict[int, FrameInfo]] = ((-1, -1), b"", {})
        for row in range(max(0, rows - self._options.idempotency_window), rows):
            ref = index.frame(row)
            data = self._log.read(ref.ordinal, ref.offset, ref.length)
            try:
                info = check_frame(data, 0, len(data))
                at = 0
                if info.kind == FRAME_KIND_COMPRESSED:  # decompress each container once
                    if expanded[0] != (ref.ordinal, ref.offset):
                        raw = expand(data, 0, len(data))
                        frames = {
                            f.first_position: f
                            for f in inner_frames(raw, info)
                            if f.kind != FRAME_KIND_CHECKPOINT
                        }
                        expanded = ((ref.ordinal, ref.offset), raw, frames)
                    data = expanded[1]
                    found = expanded[2].get(ref.first_position)
                    if found is None:
                        raise FrameError("no frame for its position inside the container")
                    info, at = found, found.offset
            except FrameError as exc:  # in a range an index sidecar vouched for
                raise CorruptLog(self._log.path(ref.ordinal), ref.offset, exc.reason) from None
            ids = b"".join(frame_event_ids(data, at, info))
            last = info.first_position + info.event_count - 1
            key = info.stream.encode("utf-8") + ids[:16]
            window.pop(key, None)  # (a key appended again is the newest)
            window[key] = (
                ids,
                AppendResult(last, info.first_version + info.event_count - 1),
            )
        tail = len(self._log.segments) - 1  # (exported on close or rotation anyway)
        self.unsaved = scanned + sorted(o for o in prefix_only & rows_scanned if o < tail)

    def _apply_sidecar(
        self, ordinal: int, seg: Segment, car: Sidecar, seen: list[int], ids: StreamIds
    ) -> None:
        """Add a checked sidecar's rows and checkpoints (open only, in segment order).
        ``seen`` counts the events added so far; raises CorruptLog when the rows break a
        stream's or the log's continuity, as a scan of the segment would."""
        index = self._index
        rows = car.rows
        for i, name in enumerate(rows.names):  # a version-1 sidecar: streams continue
            if rows.firsts[i] < 0:
                rows.firsts[i] = index.last_version(name) + 1
        follower = self._follower
        skips: Callable[[str], bool] | None = None
        if follower is not None:  # a reader (see frame_indexer; blocking: the I/O thread)
            skips = functools.partial(may_skip, index, changed=follower.removed_since_read)
        problem = index.rows_problem(rows, rows.pos[0] - seen[0], skips)
        if problem is not None:  # what a scan would have found: the log is damaged
            raise CorruptLog(seg.path, problem[1], problem[0])
        if skips is not None:
            for name, first in zip(rows.names, rows.firsts, strict=True):
                if first != index.last_version(name) + 1:
                    index.restart_stream(name, first)
        index.load_rows(ordinal, rows, car.end_position, ids)
        seen[0] += len(rows.positions)
        for name, mark in car.marks.items():
            self._checkpoints[name] = max(self._checkpoints.get(name, -1), mark)

    def open_read_only(self) -> None:
        """A read-only store's first scan into the state (blocking, I/O thread)."""
        try:
            self._fs.listdir(self._path)
        except FileNotFoundError:
            raise StoreNotFound(f"no store at {self._path}: the directory does not exist") from None
        self._follower = Follower(self._log)
        follower = self._follower
        seen = self._seen

        starts: dict[int, int] = {}  # where the scan of each segment began (for Recovery)

        def resume(ordinal: int, seg: Segment, position: int) -> tuple[int, int, int | None]:
            car = load_sidecar(self._fs, seg, position, self._options.verify_on_open)
            if car is None:
                return SEGMENT_HEADER_SIZE, position, None
            starts[ordinal] = car.covered_end
            self._apply_sidecar(ordinal, seg, car, seen, "never")  # never exported
            for stream, (revision, packed) in car.metas.items():
                follower.metadata.append((stream, revision, packed))
            return car.covered_end, car.end_position, car.last_offset

        follower.resume = resume  # the first scan only: later ones run on the I/O
        add = frame_indexer(
            self._index,
            self._checkpoints,
            self._log.path,
            self._seen,
            follower.removed_since_read,  # (blocking: this scan runs on the I/O thread)
        )
        try:  # thread; as recovery does: the index is not in use yet, fill it from here
            follower.scan(add)
        finally:
            self._follower.resume = None
            self._index.head = self._index.next_position - 1
        self._take_metadata()
        self.drop_removed()
        scanned = 0
        for ordinal, seg in enumerate(self._log.segments):
            with contextlib.suppress(OSError):  # (as the writer's: what the scan read)
                scanned += max(0, seg.file.size() - starts.get(ordinal, SEGMENT_HEADER_SIZE))
        self.recovery = Recovery(
            len(self._log.segments),
            self._index.next_position,
            indexed_segments=len(starts),
            scanned_bytes=scanned,
        )

    def drop_removed(self) -> None:
        """A read-only store: forget the segments its follower found removed (by the writer's
        retention, or a scavenge that dropped them). Their rows leave the index
        (``Index.forget_segment``), and their files are closed once no read has them pinned,
        so that this reader does not keep the disk space they held (loop thread, or before
        open)."""
        assert self._follower is not None
        removed, self._follower.removed = self._follower.removed, []
        segs = self._log.segments
        for ordinal in removed:
            self._index.forget_segment(ordinal, segs[ordinal + 1].first_position)
            self._log.replace_segment(ordinal, None)

    def swap_rewritten(self, ordinal: int, old: Segment, found: Rewrite | None) -> None:
        """A read-only store: re-index segment ``ordinal``, which the writer's scavenge
        rewrote (``found``: see :func:`read_rewrite`, which read it from ``old``), and swap
        in its new file as the writer does (``Maintenance._apply``): reads planned against
        the old file keep it open until they end, then it is closed and its disk space comes
        back. Not when the segment was removed or swapped meanwhile, nor a rewrite that does
        not fit the index (yet: see ``Follower.retry_rewrite``; logged once given up): the
        reader then reads on from the old file (loop thread)."""
        if found is None:
            return
        new, moved, removed = found
        if self._log.segments[ordinal] is not old or old.retired:
            new.close()
            return
        if not self._index.fits_rewrite(ordinal, moved, removed):
            new.close()
            assert self._follower is not None
            if not self._follower.retry_rewrite(ordinal):
                log.warning("not re-reading %s: its rewrite does not fit the index", new.path)
            return
        self._index.replace_segment_rows(ordinal, moved, removed, forgotten=True)
        self._log.replace_segment(ordinal, new)
        assert self._follower is not None
        self._follower.rewrite_applied(ordinal)

    def _take_metadata(self) -> None:
        """A read-only store: apply the metadata frames its follower found."""
        assert self._follower is not None
        found, self._follower.metadata = self._follower.metadata, []
        for stream, revision, packed in found:
            try:
                fields = unpack_stream_metadata(packed)
            except FrameError as exc:
                raise CorruptLog(self._path, 0, f"stream {stream!r}: {exc.reason}") from None
            self._metas.commit(stream, StreamMetadata.from_fields(fields, revision))
        self._set_floors({stream for stream, _, _ in found}, short_is_damage=False)

    def _set_floors(self, streams: Iterable[str], short_is_damage: bool) -> None:
        """A stream whose events were all removed ends where its (newest) ``truncate_before``
        says: its versions go on from there (``stream_version``, the next append). A stream
        that still has events in the log, ending below that, is damage for a writer's open
        (``short_is_damage``: CorruptLog); a reader following the writer leaves it alone."""
        index = self._index
        for stream in streams:
            rec = self._metas.durable.get(stream)
            end = (rec.truncate_before or 0) - 1 if rec is not None else -1
            last = index.last_version(stream)
            if end <= last:
                continue
            if not index.holds_events(stream):
                index.set_stream_floor(stream, end)
            elif short_is_damage:
                raise CorruptLog(
                    self._path,
                    0,
                    f"stream {stream!r} ends at version {last} in the log, but its "
                    f"metadata truncates it before version {end + 1}",
                )

    async def follow(
        self, io: Executor, readers: Executor, poll_interval: float, refresh: Callable[[], None]
    ) -> EventStoreError:
        """A read-only store's poller, after :meth:`open_read_only`: every ``poll_interval``
        seconds, scan on ``io`` and add what the writer committed (on the loop thread), then
        call ``refresh`` when there was any. Segments the writer's scavenge rewrote are read
        on ``readers``, one at a time, and swapped in at the poll after (following the tail
        never waits for them). Runs until cancelled; returns why it stopped following (logged
        as an error) when a scan fails."""
        assert self._follower is not None
        loop = asyncio.get_running_loop()
        follower = self._follower
        # (on the loop thread: what the scan found changed, no I/O here)
        changed = follower.changed.__contains__
        add = frame_indexer(self._index, self._checkpoints, self._log.path, self._seen, changed)
        rewrite: asyncio.Future[Rewrite | None] | None = None
        ordinal, old = -1, cast(Segment, None)  # the segment being read, pinned meanwhile
        try:
            while True:
                await asyncio.sleep(poll_interval)
                frames: list[tuple[int, FrameInfo]] = []
                try:
                    # scan on the I/O thread; the index is only touched here, on the loop thread
                    await loop.run_in_executor(io, follower.scan, _collect(frames))
                    try:
                        for at, info in frames:
                            add(at, info)
                    finally:
                        self._index.head = self._index.next_position - 1
                    self._take_metadata()
                    self.drop_removed()  # (after the frames: some may be in those segments)
                except (EventStoreError, OSError) as exc:
                    err: EventStoreError
                    if isinstance(exc, EventStoreError):
                        err = exc
                    else:  # an I/O error reading the log, as reads report it
                        reason = f"following the log failed: {exc.strerror or exc}"
                        err = ReadFailed(exc.errno, reason, exc.filename)
                        err.__cause__ = exc
                    log.error("stopped following %s: %s", self._path, exc)
                    return err
                if rewrite is not None and rewrite.done():
                    done, rewrite = rewrite, None
                    old.unpin()
                    found = None
                    try:
                        found = done.result()
                    except Exception as exc:  # (the old file is still read: nothing lost)
                        # (looked at again at the next check: a transient error must not
                        # leave the old file held, nor the next rewrites unfit, for good)
                        again = follower.retry_rewrite(ordinal)
                        log.warning(
                            "could not re-read %s: %s%s",
                            old.path,
                            exc,
                            "" if again else " (given up: reading on from the old file)",
                        )
                    self.swap_rewritten(ordinal, old, found)
                while rewrite is None and follower.rewritten:
                    ordinal = follower.rewritten.pop(0)
                    old = self._log.segments[ordinal]
                    if not old.retired:
                        old.pin()
                        rewrite = loop.run_in_executor(readers, read_rewrite, self._log, old)
                if frames:
                    refresh()
        finally:
            if rewrite is not None:  # closing while a segment is read: let it go when done
                rewrite.add_done_callback(functools.partial(_drop_rewrite, old))

    def release(self) -> None:
        """Give back the directory lock if this opener holds it (blocking; idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
