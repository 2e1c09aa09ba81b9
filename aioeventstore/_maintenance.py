"""Background maintenance owned by a store: scavenging and store-wide retention.

Both run as tasks the store owns (cancelled and awaited on close) and do their file work on a
dedicated thread, one sealed segment per hop, so appends (the commit loop and its I/O thread)
and reads go on meanwhile. Each segment's outcome is applied to the index and the segment
list on the event loop thread in one synchronous step (see ``_scavenge.py`` for why readers
never see a half-swapped segment). One maintenance job runs at a time (``lock``), and
``EventStore.verify`` takes the same lock so that it never lists a directory mid-swap.

A caller awaiting ``scavenge()`` who is cancelled does not cancel the job: it is the store's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from bisect import bisect_left
from concurrent.futures import Executor, ThreadPoolExecutor
from operator import itemgetter
from typing import TYPE_CHECKING

from ._commit import CommitLoop, MetaOp, Recheck, SpecialAppend
from ._fs import FileSystem
from ._index import Index
from ._indexfile import SidecarWriter
from ._log import Log
from ._scavenge import (
    ScavengePlan,
    ScavengeReport,
    SegmentResult,
    drop_segment,
    scavenge_segment,
    segment_newest_us,
)
from .errors import CorruptLog, MaintenanceFailed, StreamDeleted
from .events import ANY, AppendResult
from .options import StoreOptions

if TYPE_CHECKING:
    from ._segment import Segment

log = logging.getLogger("aioeventstore")


class Maintenance:
    """Scavenge and retention jobs of one open store (event loop thread)."""

    def __init__(
        self,
        fs: FileSystem,
        log_: Log,
        index: Index,
        options: StoreOptions,
        commit: CommitLoop,
        checkpoints: dict[str, int],
        sidecars: SidecarWriter,
        pool: Executor | None = None,
    ) -> None:
        self._fs = fs
        self._log = log_
        self._index = index
        self._options = options
        self._commit = commit
        self._checkpoints = checkpoints
        self._sidecars = sidecars
        self._own_pool = pool is None  # a memory store runs it inline: no thread
        self._pool: Executor = (
            pool if pool is not None else ThreadPoolExecutor(1, "aioeventstore-scavenge")
        )
        self.lock = asyncio.Lock()
        self._scavenge: asyncio.Task[ScavengeReport] | None = None
        self._retention: asyncio.Task[ScavengeReport] | None = None
        self._segments_seen = len(log_.segments)
        self._closed = False

    # --- public entry points (through the store) --------------------------------------------
    def start_scavenge(self) -> asyncio.Task[ScavengeReport]:
        """The running scavenge, or a new one."""
        if self._scavenge is None or self._scavenge.done():
            self._scavenge = asyncio.get_running_loop().create_task(
                self._run_scavenge(), name="aioeventstore-scavenge"
            )
            self._scavenge.add_done_callback(_log_failure)
        return self._scavenge

    def start_retention(self) -> asyncio.Task[ScavengeReport]:
        """The running retention job, or a new one."""
        if self._retention is None or self._retention.done():
            self._retention = asyncio.get_running_loop().create_task(
                self._run_retention(), name="aioeventstore-retention"
            )
        return self._retention

    def on_commit(self, first: int, last: int, appends: object, recorded_us: int) -> None:
        """Commit listener (retention options set): after a rotation, enforce retention."""
        n = len(self._log.segments)
        if n != self._segments_seen and not self._closed:
            self._segments_seen = n
            task = self.start_retention()
            task.add_done_callback(_log_failure)

    async def close(self) -> None:
        """Cancel and await every job, then stop the thread (the store is closing)."""
        self._closed = True
        for task in (self._scavenge, self._retention):
            if task is not None and not task.done():
                task.cancel()
        for task in (self._scavenge, self._retention):
            if task is not None:
                with contextlib.suppress(BaseException):
                    await task
        if self._own_pool:
            await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)

    # --- scavenge ---------------------------------------------------------------------------
    def _plan(self) -> ScavengePlan:
        index = self._index
        metas = self._commit.metas
        hidden = dict(metas.hidden(index) or {})
        last = {s: index.committed_last_version(s) for s in hidden}
        keeps_end = {s: (rec.truncate_before or 0) <= last[s] for s, rec in metas.durable.items()}
        revisions = {s: rec.revision for s, rec in metas.durable.items()}
        return ScavengePlan(hidden, last, keeps_end, revisions, dict(self._checkpoints))

    async def _run_scavenge(self) -> ScavengeReport:
        try:
            return await self._scavenge_segments()
        except (OSError, CorruptLog) as exc:
            raise MaintenanceFailed(f"scavenging {self._log.directory} failed: {exc}") from exc

    async def _scavenge_segments(self) -> ScavengeReport:
        loop = asyncio.get_running_loop()
        async with self.lock:
            t0 = time.perf_counter()
            # sidecars queued before (at open, at rotations) describe the segments as they
            # are: let them be written before any of those segments is replaced
            await self._sidecars.wait_idle()
            before = self._log_bytes()
            plan = self._plan()
            # the checkpoints and metadata the plan keeps must be on disk before the older
            # frames they replace go (with durability="os" they may be in the page cache only)
            await self._commit.sync_log()
            sealed = self._log.sealed()
            rewritten = dropped = frames = events = 0
            fresh: list[int] = []
            for ordinal, seg in sealed:
                seg.pin()  # its file stays open while we read it, whatever happens meanwhile
                work = loop.run_in_executor(
                    self._pool,
                    scavenge_segment,
                    self._fs,
                    ordinal,
                    seg,
                    plan,
                    self._options.read_chunk_bytes,
                )
                try:
                    result = await asyncio.shield(work)
                except asyncio.CancelledError:
                    # the store is closing: the thread still finishes this segment (the old
                    # file stays in use, consistent with the index); release what it opens
                    work.add_done_callback(_close_new_segment)
                    raise
                finally:
                    seg.unpin()
                if result is None:
                    continue
                try:
                    await self._sidecars.wait_idle()  # no await from here until the rows change
                except asyncio.CancelledError:
                    # closing: the rewrite is on disk (the next open reads it) but not in the
                    # index, which still reads the old file: release the new one
                    if result.new is not None:
                        result.new.file.close()
                    raise
                self._apply(result)
                if not result.dropped:
                    fresh.append(ordinal)
                rewritten += not result.dropped
                dropped += result.dropped
                frames += result.frames_removed
                events += sum(c for _, _, c in result.removed)
            for ordinal in fresh:  # new index sidecars for the rewritten segments
                if not self._log.segments[ordinal].retired:
                    self._sidecars.export(ordinal)
            await self._sidecars.wait_idle()
            return ScavengeReport(
                len(sealed),
                rewritten,
                dropped,
                frames,
                events,
                before,
                self._log_bytes(),
                time.perf_counter() - t0,
            )

    def _apply(self, result: SegmentResult) -> None:
        """Index rows and segment object swapped together: no await in between. A rewritten
        segment gets a new index sidecar (in the background; its old one was removed first)."""
        index = self._index
        index.replace_segment_rows(result.ordinal, result.moved, result.removed)
        self._log.replace_segment(result.ordinal, result.new)
        if result.new is not None:
            index.set_segment_sids(result.ordinal, result.streams)
        else:
            index.forget_segment_entries(result.ordinal)

    def _log_bytes(self) -> int:
        total = 0
        for seg in self._log.segments:
            if not seg.retired:
                with contextlib.suppress(OSError):
                    total += seg.file.size()
        return total

    # --- retention --------------------------------------------------------------------------
    async def _run_retention(self) -> ScavengeReport:
        try:
            return await self._drop_segments()
        except (OSError, CorruptLog) as exc:
            raise MaintenanceFailed(
                f"enforcing retention on {self._log.directory} failed: {exc}"
            ) from exc

    async def _drop_segments(self) -> ScavengeReport:
        loop = asyncio.get_running_loop()
        async with self.lock:
            t0 = time.perf_counter()
            await self._sidecars.wait_idle()  # (as for a scavenge)
            before = self._log_bytes()
            drop = await self._retention_victims()
            if not drop:
                return ScavengeReport(0, 0, 0, 0, 0, before, before, time.perf_counter() - t0)
            # streams whose events all go, by their last position: (stream, last version)
            ending = sorted(
                self._index.streams_ending_before(
                    self._log.segments[drop[-1][0] + 1].first_position
                ),
                key=itemgetter(2),
            )
            ends = [p for _, _, p in ending]
            done = 0
            frames = events = 0
            for ordinal, seg in drop:
                # One segment at a time, so that a run cut short (a crash, an I/O error,
                # close) leaves a suffix of the log visible: what goes with this segment is
                # carried forward, and durable, before it is removed.
                upto = bisect_left(ends, self._log.segments[ordinal + 1].first_position)
                ended = [(s, v) for s, v, _ in ending[done:upto]]
                done = upto
                floors = self._commit.floors  # (until the segment is gone: see there)
                floors.update((s, v + 1) for s, v in ended)
                try:
                    await self._carry_forward(ordinal, ended)
                    await self._commit.sync_log()
                    lo, hi = self._index.segment_rows(ordinal)
                    frames += hi - lo
                    events += sum(self._index.frame(r).event_count for r in range(lo, hi))
                    await loop.run_in_executor(self._pool, drop_segment, self._fs, seg)
                    nxt = self._log.segments[ordinal + 1].first_position
                    await self._sidecars.wait_idle()  # no await from here until rows change
                    self._index.drop_oldest(ordinal, nxt)  # (its base now keeps the floor)
                    self._log.replace_segment(ordinal, None)
                finally:
                    for stream, _ in ended:
                        floors.pop(stream, None)
            return ScavengeReport(
                len(drop),
                0,
                len(drop),
                frames,
                events,
                before,
                self._log_bytes(),
                time.perf_counter() - t0,
            )

    async def _retention_victims(self) -> list[tuple[int, Segment]]:
        """The oldest sealed segments that retention drops (a prefix of the log)."""
        opts = self._options
        sealed = self._log.sealed()
        if not sealed or (opts.retention_bytes is None and opts.retention_age is None):
            return []
        loop = asyncio.get_running_loop()
        victims: list[tuple[int, Segment]] = []
        total = self._log_bytes()
        cutoff_us = None
        if opts.retention_age is not None:
            cutoff_us = time.time_ns() // 1000 - int(opts.retention_age_seconds * 1_000_000)
        for ordinal, seg in sealed:
            size = seg.file.size()
            over_size = opts.retention_bytes is not None and total > opts.retention_bytes
            too_old = False
            if cutoff_us is not None:
                lo, hi = self._index.segment_rows(ordinal)
                if hi == lo:
                    too_old = True  # no event left in it: only control frames (carried)
                else:
                    ref = self._index.frame(hi - 1)
                    seg.pin()
                    try:
                        newest = await loop.run_in_executor(
                            self._pool, segment_newest_us, seg, ref.offset, ref.length
                        )
                    finally:
                        seg.unpin()
                    too_old = newest < cutoff_us
            if not (over_size or too_old):
                break
            victims.append((ordinal, seg))
            total -= size
        return victims

    async def _carry_forward(self, ordinal: int, ending: list[tuple[str, int]]) -> None:
        """Before segment ``ordinal`` is dropped: rewrite the current checkpoint and metadata
        frames it holds, and record the end of every stream in ``ending`` (stream, last
        version: its events all go with this segment or went before) as its
        ``truncate_before``, through the commit loop; return once all of it is written
        (durable with durability="fsync"; the caller syncs otherwise)."""
        commit = self._commit
        index = self._index
        loop = asyncio.get_running_loop()
        items: list[SpecialAppend] = []
        names: set[str] = set()  # current checkpoints and metadata held in that segment
        streams: set[str] = set()
        for name, position in index.marks.get(ordinal, {}).items():
            if position >= self._checkpoints.get(name, -1):
                names.add(name)
        for stream, (revision, _) in index.metas.get(ordinal, {}).items():
            rec = commit.metas.durable.get(stream)
            if rec is not None and revision >= rec.revision:
                streams.add(stream)
        for name in sorted(names):
            fut: asyncio.Future[AppendResult | Recheck | None] = loop.create_future()
            name_b = name.encode("utf-8", "surrogatepass")
            position = self._checkpoints[name]
            items.append(SpecialAppend(name, name_b, ANY, fut, checkpoint=position))
        for stream in sorted(streams):
            fut = loop.create_future()
            op = MetaOp("carry", record=commit.metas.durable[stream])
            items.append(SpecialAppend(stream, stream.encode("utf-8"), ANY, fut, meta=op))
        for stream, last in ending:
            rec = commit.metas.durable.get(stream)
            if rec is not None and (rec.truncate_before or 0) > last:
                continue
            fut = loop.create_future()
            op = MetaOp("floor", changes={"truncate_before": last + 1})
            items.append(SpecialAppend(stream, stream.encode("utf-8"), ANY, fut, meta=op))
        submitted: list[asyncio.Future[AppendResult | Recheck | None]] = []
        try:
            for item in items:
                await commit.submit(item)
                submitted.append(item.future)
        finally:  # every answer is collected, so that none is left unretrieved
            outcomes = await asyncio.gather(*submitted, return_exceptions=True)
        for item, outcome in zip(items, outcomes, strict=False):
            # a hard delete queued before a floor: its tombstone keeps the stream closed
            if isinstance(outcome, StreamDeleted) and item.meta and item.meta.kind == "floor":
                continue
            if isinstance(outcome, BaseException):
                raise outcome


def _log_failure(task: asyncio.Task[ScavengeReport]) -> None:
    """Log a job's failure (its exception is then retrieved, also if nobody awaits it)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("aioeventstore: %s failed", task.get_name(), exc_info=task.exception())


def _close_new_segment(work: asyncio.Future[SegmentResult | None]) -> None:
    if work.cancelled() or work.exception() is not None:
        return
    result = work.result()
    if result is not None and result.new is not None:
        result.new.file.close()
