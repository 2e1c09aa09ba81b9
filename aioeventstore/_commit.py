"""The group-commit loop: queue → batch → one write + one sync → futures.

One task, the only writer. Producers encode their events in their own task and enqueue a
:class:`PendingAppend`; the loop drains whatever is queued (up to ``max_batch_bytes``), checks
expected versions in queue order, lays the accepted appends out as one contiguous buffer, and
hands it to the store's single I/O thread for one write and one sync (one thread hop per
batch). While that runs, the event loop is free: producers encode and queue the next batch.
When the sync returns, the index head advances, commit listeners (subscriptions) are told,
and the producers' futures are resolved: all at once for a small batch; for a large one,
three quarters at once and the rest once the I/O thread takes the next batch's write, so
that their work overlaps that write (see ``_run``).

With ``compression="zstd"`` the I/O thread also compresses the batch (``_compress.py``), in the
same hop and off the event loop: the batch is planned at its uncompressed size, and once it is
written the log's end and the batch's index rows are moved to where its frames ended up. Both
happen before the batch is committed, so no reader ever sees the provisional places.

Failure is fail-stop, as in LevelDB and PostgreSQL after an fsync error: the page cache can no
longer be trusted, so the batch and everything after it fail with ``StoreFailed``; reads of
what was durable keep working; reopening recovers from what is on disk.

Cancellation: a producer cancelled while waiting never cancels its batch. If its append was not
yet taken into a batch, it is dropped; if it was, it is written all the same. Either way, a
retry with the same event ids is safe (see idempotency in ``store.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import struct
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any, NamedTuple, Protocol

from ._codec import pack_stream_metadata
from ._compress import BatchCompressor, PlannedFrame
from ._format import (
    BODY_HEAD,
    BODY_HEAD_SIZE,
    FRAME_HEADER_SIZE,
    FRAME_KIND_CHECKPOINT,
    FRAME_KIND_EVENTS,
    FRAME_KIND_METADATA,
    FRAME_MAGIC,
    crc32c,
    pack_frame,
)
from ._index import Index
from ._iothread import IoThread
from ._log import Log, WritePlan
from ._meta import StreamMetadata, StreamMetas
from ._queue import ByteBoundedQueue
from ._stats import COUNT_BUCKETS, LATENCY_BUCKETS, Recorder
from .errors import StoreClosed, StoreFailed, StreamDeleted, WrongExpectedVersion
from .events import ANY, NO_STREAM, STREAM_EXISTS, AppendResult, Event, ExpectedVersion, NewEvent
from .options import StoreOptions

FRAME_OVERHEAD = FRAME_HEADER_SIZE + BODY_HEAD_SIZE
_new_tuple = tuple.__new__  # NamedTuple's own __new__ is a Python function
_MAGIC_CRC = struct.Struct("<4sI")  # a frame's first 8 bytes
_LENGTH_HEAD = struct.Struct("<I" + BODY_HEAD.format[1:])  # body length, then the body's head
log = logging.getLogger("aioeventstore")


class Recheck(NamedTuple):
    """Outcome for an append whose explicit expected version the stream has moved past far
    enough that it may be a retry: the producer compares its ids with those stored at
    ``first_version`` on; if they match, it returns the original result."""

    actual: int
    first_version: int


Outcome = AppendResult | Recheck | BaseException


class MetaOp(NamedTuple):
    """A metadata write: ``kind`` is "set" (``changes`` holds the fields to change), "delete"
    (``hard``) or "carry" (rewrite ``record`` as it is, so that it outlives the segment it
    lives in when retention drops that segment)."""

    kind: str
    changes: dict[str, object] | None = None
    hard: bool = False
    record: StreamMetadata | None = None


class PendingAppend:
    """One encoded append of events waiting for the commit loop (see :class:`SpecialAppend`
    for the other writes that go through it)."""

    __slots__ = (
        "count",
        "expected",
        "first_version",
        "flags",
        "future",
        "ids",
        "key",
        "metas",
        "outcome",
        "position",
        "size",
        "source",
        "stream",
        "stream_b",
        "tail",
    )
    # What only a SpecialAppend sets (as slots of its own): an append of events reads these
    # class defaults, and its constructor, run for every append, does not store them.
    special: bool = False  # a checkpoint or metadata write, not an append of events
    checkpoint: int = -1  # >= 0: a named consumer's acknowledged position
    meta: MetaOp | None = None  # a stream metadata write (its frame's body is made when planned)
    planned_meta: StreamMetadata | None = None  # what that write sets, once planned

    def __init__(
        self,
        stream: str,
        stream_b: bytes,
        expected: ExpectedVersion,
        ids: bytes,
        entries: bytes,
        future: asyncio.Future[AppendResult | Recheck | None],
        source: Event | Sequence[Event | NewEvent] = (),
        metas: tuple[bytes, ...] | None = None,
        own_ids: bool = False,
        flags: int = 0,
    ) -> None:
        self.stream = stream
        self.stream_b = stream_b
        self.expected = expected
        self.ids = ids  # the events' 16-byte ids, back to back
        self.count = len(ids) >> 4
        # the frame's body after its fixed head, as the plan writes it: one concatenation
        # here, none there (for a SpecialAppend: its stream's name; see its ``entries``)
        self.tail = stream_b + entries
        self.size = FRAME_OVERHEAD + len(self.tail)
        self.future = future
        self.source = source  # the caller's events (or its one event), for the live fan-out
        self.metas = metas  # their packed metadata, or None when none has any
        self.first_version = -1  # set when the commit loop accepts the append
        self.position = -1  # of its first event, set then too
        self.outcome: Outcome | None = None  # what its producer gets, set when planned
        # The idempotency window key, only when the caller chose every id: generated ids are
        # fresh, so a retry can never repeat them and remembering them would be wasted work.
        self.key = stream_b + ids[:16] if own_ids and ids else None
        self.flags = flags  # the frame flags its entries need (FRAME_FLAG_SCHEMA or 0)

    def result(self) -> AppendResult:
        """What an accepted, committed append of events returns. Its future resolves to None
        then: the result is made here, by the producer, so that it is not one more object
        kept alive (and walked by the cyclic GC) for every append waiting on its batch."""
        n = self.count - 1
        return _new_tuple(AppendResult, (self.position + n, self.first_version + n))


_LONGEST = 2**64 - 1
META_BODY_MAX = len(
    pack_stream_metadata(
        {"max_count": _LONGEST, "max_age_us": _LONGEST, "truncate_before": _LONGEST, "deleted": 2}
    )
)
"""The longest body a metadata frame can have after its stream name (StreamMetadata.to_fields)."""


class SpecialAppend(PendingAppend):
    """A write through the commit loop that is not an append of events: a named consumer's
    checkpoint (``checkpoint`` >= 0) or a stream metadata write (``meta``). It is batched,
    written and synced with the appends around it, in queue order; its future resolves to
    an AppendResult (or the error it failed with) when its batch is durable."""

    __slots__ = ("checkpoint", "entries", "meta", "planned_meta", "special")

    def __init__(
        self,
        stream: str,
        stream_b: bytes,
        expected: ExpectedVersion,
        future: asyncio.Future[AppendResult | Recheck | None],
        *,
        checkpoint: int = -1,
        meta: MetaOp | None = None,
    ) -> None:
        assert (checkpoint >= 0) != (meta is not None), "a checkpoint or a metadata write"
        super().__init__(stream, stream_b, expected, b"", b"", future)
        self.entries = b""  # its frame's body after the stream name (a metadata write's is
        # made when it is planned)
        self.checkpoint = checkpoint
        self.meta = meta
        self.planned_meta = None
        self.special = True
        if meta is not None:  # the most its body can take (made when planned, see above):
            self.size += META_BODY_MAX  # a batch is cut at max_batch_bytes by these sizes,
            # and recovery takes a damaged tail longer than that for damage, not a torn write


@dataclass(slots=True)
class CommitStats:
    """Counters of the commit loop since the store was opened (commit task only)."""

    appends: int = 0
    events: int = 0
    batches: int = 0
    syncs: int = 0
    bytes_written: int = 0
    batch_events: Recorder = field(default_factory=lambda: Recorder(COUNT_BUCKETS))
    sync_latency: Recorder = field(default_factory=lambda: Recorder(LATENCY_BUCKETS))


class Background(Protocol):
    """File work done on the I/O thread a bounded piece at a time, between batch writes."""

    def pump(self, everything: bool) -> None:
        """Queue the next piece on the I/O thread, or with ``everything`` all that waits."""
        ...

    def waiting(self) -> bool:
        """Whether any piece waits to be queued."""
        ...


SPLIT_ANSWER = 64
"""A clean batch of at least this many appends has its producers answered in two parts,
three quarters at once and the rest once the next write is handed over (see
``CommitLoop._run``)."""

HOLD_AT_MOST = 0.002
"""Seconds a durable append's producer is held, at most, once the next write is handed over
(the I/O thread usually takes it in a fraction of that)."""

IDLE_TURNS = 3
"""Loop turns the commit loop waits, with nothing queued, before it takes the store for idle."""

CommitListener = Callable[[int, int, "list[PendingAppend]", int], None]
"""Called on the loop thread for each durable batch with events: (first position, last
position, the event appends in position order, recorded_at in microseconds)."""


class CommitLoop:
    """Owns the append queue and the commit task. Only the commit task touches the index's
    rows, the log's write side and the idempotency window."""

    def __init__(
        self,
        log: Log,
        index: Index,
        options: StoreOptions,
        io: Executor,
        window: dict[bytes, tuple[bytes, AppendResult]],
        checkpoints: dict[str, int],
        metas: StreamMetas | None = None,
    ) -> None:
        self._log = log
        self._index = index
        self._options = options
        self._io = io
        self._queue: ByteBoundedQueue[PendingAppend] = ByteBoundedQueue(options.max_queue_bytes)
        self._window = window
        self.checkpoints = checkpoints  # named consumer -> last durable acknowledged position
        self.metas = metas if metas is not None else StreamMetas()  # stream retention metadata
        self._task: asyncio.Task[None] | None = None
        self._current: _Batch | None = None  # the batch being written, for _fail on cancel
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start
        self._durable: list[PendingAppend] = []
        """Appends of a durable, published batch whose producers are answered once the next
        batch's write is handed over (see ``_run``); whatever happens, they get success."""
        self._closing = False
        self.failure: StoreFailed | None = None
        self.stats = CommitStats()
        self.listeners: list[CommitListener] = []
        self.floors: dict[str, int] = {}
        """Stream → the ``truncate_before`` a retention run recorded for it, while the
        segment holding its last events is being removed: a metadata change meanwhile may
        not lower it (that stream's version would be lost with the segment)."""
        self.on_sealed: Callable[[int], None] | None = None
        """Called on the loop thread with a segment's ordinal once it is sealed: every frame
        in it is durable and the log has moved on to a new segment."""
        self.background: Background | None = None
        """Background file work that takes turns with the batch writes on the I/O thread
        (the index sidecars' exports): one bounded piece is queued right after each batch's
        write is handed over; all of it once the queue stays empty (see ``_run``) and before
        the loop ends."""
        self._compressor = (
            BatchCompressor(options.compression_level) if options.compression == "zstd" else None
        )
        self._hop: Callable[..., asyncio.Future[Any]] = _not_started
        """Run a function on the I/O thread, for an awaitable result (set by ``start``)."""
        self.try_submit: Callable[[PendingAppend], bool] = self._queue.put_nowait
        """Queue an append if there is room now (the fast path: no coroutine, no wait).

        False when the caller must ``await submit(item)``: the queue is full, or the store
        stopped (``submit`` then raises). The queue's own method while appends are accepted
        (no call in between, on every append's path); once the loop stops accepting them,
        one that always says False (see ``_stop_accepting``).
        """

    def start(self) -> None:
        """Start the commit task on the running loop."""
        assert self._task is None
        loop = self._loop = asyncio.get_running_loop()
        io = self._io
        if isinstance(io, IoThread):  # the short way there and back, for every batch
            self._hop = functools.partial(io.call, loop)
        else:
            self._hop = functools.partial(loop.run_in_executor, io)
        self._task = loop.create_task(self._run(), name="aioeventstore-commit")

    @property
    def queued(self) -> int:
        """Appends queued or waiting for queue space."""
        return len(self._queue) + self._queue.waiting

    @property
    def queued_bytes(self) -> int:
        """Bytes of appends in the queue."""
        return self._queue.nbytes

    async def submit(self, item: PendingAppend) -> None:
        """Queue an append (waits while the queue is full). Raises StoreFailed/StoreClosed."""
        self.check_open()
        try:
            await self._queue.put(item)
        except asyncio.CancelledError:
            item.future.cancel()  # if it did get in, the loop will skip or still write it
            raise

    def _stop_accepting(self) -> None:
        self._closing = True
        self.try_submit = _refuse

    def check_open(self) -> None:
        """Raise if appends are no longer accepted."""
        if self.failure is not None:
            raise failed_again(self.failure)
        if self._closing:
            raise StoreClosed("the store is closed; appends are no longer accepted")

    async def sync_log(self) -> None:
        """Make every batch written so far durable, whatever ``durability`` says: for
        maintenance, before it removes older frames that newer checkpoint, metadata or floor
        frames replace (with durability="os" those may be in the page cache only; with
        "fsync" every batch answered was synced, so this returns at once). On the I/O
        thread, after the writes handed to it before. A failed sync stops the store, as a
        failed batch sync does, and raises StoreFailed; a stopped store raises at once."""
        if self._options.durability == "fsync":
            return
        self.check_open()
        syncing = self._hop(self._log.sync)
        syncing.add_done_callback(self._after_sync)  # (also when the caller is cancelled)
        try:
            await asyncio.shield(syncing)
        except OSError as exc:
            raise failed_again(self.failure or StoreClosed("the store is closed")) from exc

    def _after_sync(self, syncing: asyncio.Future[Any]) -> None:
        """A maintenance sync's outcome: a failure stops the store (batches handed to the
        I/O thread after it fail too: see ``_run``)."""
        if syncing.cancelled() or syncing.exception() is None or self.failure is not None:
            return
        exc = syncing.exception()
        assert exc is not None
        self._fail(exc, None)

    async def close(self) -> None:
        """Stop accepting appends, commit everything already queued, and end the task."""
        self._stop_accepting()
        self._queue.wake()
        if self._task is not None:
            await asyncio.shield(self._task)

    # --- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        sync = self._options.durability == "fsync"
        try:
            while True:
                if not len(self._queue):
                    if self._durable:  # no write to overlap with: answer them now
                        self._answer_durable()
                        continue
                    if self._closing and not self._queue.waiting:
                        self._pump(True)
                        return
                    if self.background is not None and self.background.waiting():
                        # Give the producers just answered a few loop turns (no clock: the
                        # I/O thread's order of work must not depend on timing) to queue their
                        # next appends; if none does, the store is idle: hand it all over.
                        for _ in range(IDLE_TURNS):
                            await asyncio.sleep(0)
                        if not len(self._queue):
                            self._pump(True)
                        continue
                    await self._queue.wait()
                    continue
                items = self._queue.drain(self._options.max_batch_bytes)
                try:
                    batch = self._current = self._plan(items, self._queue.drained_bytes)
                except Exception as exc:  # a bug: the index may be half-updated, so stop
                    log.exception("aioeventstore: planning a batch failed")
                    self._fail(exc, _Batch(items, None, b"", -1, -1, [], 0, []))
                    return
                if batch.plan is not None:
                    try:
                        # (self._durable, see below: answered once the I/O thread takes this
                        # write, so that they run while it is written and synced)
                        held = bool(self._durable)
                        if held:  # whatever the I/O thread has to do before it takes this
                            assert self._loop is not None
                            self._loop.call_later(HOLD_AT_MOST, self._answer_durable)
                        if batch.frames is None:
                            plain = self._hop(self._write, batch.plan, batch.data, sync, held)
                            self._pump(False)
                            took_ns = await plain
                            written = len(batch.data)
                        else:
                            packed = self._hop(self._write_compressed, batch, sync, held)
                            self._pump(False)
                            written, took_ns = await packed
                            self._log.settle(batch.plan, written)
                            if batch.relocated is not None:
                                self._index.relocate_last(batch.relocated)
                    except Exception as exc:
                        self._fail(exc, batch)
                        return
                    if self.failure is not None:  # a sync failed while it was in flight
                        self._fail(self.failure, batch)
                        return
                    st = self.stats
                    st.batches += 1
                    st.syncs += sync
                    st.bytes_written += written
                    # per batch, never per event: a bit length, an increment and an add each
                    st.sync_latency.observe(took_ns // 1000)
                    st.batch_events.observe(batch.last - batch.first + 1 if batch.first >= 0 else 0)
                self._answer_durable()  # (nothing was written: now)
                self._publish(batch)
                self._current = None
                n = len(batch.items)
                if batch.clean and n >= SPLIT_ANSWER:
                    # Answer three quarters of the producers now and the rest once the next
                    # batch's write is handed over: the first ones' next appends make that
                    # batch while the rest wait, and the rest make theirs while it is written
                    # and synced. Answered all at once, every producer would be waiting on the
                    # same write and the event loop idle for the whole of it (with many
                    # producers that was a seventh of the time). The rest wait for the others
                    # to queue their next appends, that batch to be planned, and the I/O
                    # thread to take its write, or HOLD_AT_MOST after it is handed over (other
                    # file work, a verify say, may be queued on the I/O thread before it).
                    # (Three quarters, not half: at P=1024, 0.83-0.84 of the bare loop's
                    # throughput against 0.81 on both loops, in alternating runs.)
                    held_from = n - (n >> 2)
                    self._answer_clean(batch.items[:held_from])
                    self._hold(batch.items[held_from:])
                    split = True
                else:
                    self._answer(batch)
                    split = False
                plan = batch.plan
                # Let go of the batch now, not when the next one is drained: each append's
                # PendingAppend and future then die with its producer's call, one by one, as
                # the producers make their next ones. Held to the next drain, they were two
                # objects per append that the cyclic GC counted as new without any freed in
                # between: twice as many gen-0 collections under load.
                del batch, items
                if plan is not None and plan.new_segment_at is not None and self.on_sealed:
                    try:
                        self.on_sealed(plan.ordinal - 1)
                    except Exception:
                        log.exception("aioeventstore: a segment-sealed hook failed")
                if split:  # let the answered producers queue their next appends
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            self._stop_accepting()
            self._fail(StoreClosed("the store's commit loop was cancelled"), self._current)
            raise

    def _pump(self, everything: bool) -> None:
        if self.background is not None:
            try:
                self.background.pump(everything)
            except Exception:  # background work is never worth a batch
                log.exception("aioeventstore: queueing background file work failed")

    def _taken(self) -> None:
        """The I/O thread has this batch's write in hand (I/O thread): answer the held
        producers now, on the loop.

        Not before: the I/O thread needs the GIL to start the write, and a loop thread busy
        running producers would hold it for up to the interpreter's switch interval (5 ms),
        by which time they would all have run and the write would start only then.
        """
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._answer_durable)

    def _hold(self, items: list[PendingAppend]) -> None:
        """Hold durable appends until the next write is taken (see ``_run``).

        Nothing but ``_durable`` may refer to them meanwhile (no local of ``_run``): each
        answered producer then frees its append and future as it makes its next ones, and
        the cyclic GC's young generation barely grows under load. One list kept a batch
        longer brought back a young collection every ~900 appends (0.5 µs per append).
        """
        for item in items:  # durable: its frame's bytes are not needed any more
            item.tail = b""
        self._durable = items

    def _answer_durable(self) -> None:
        """Answer the producers of ``_durable`` (loop thread; a no-op once done)."""
        durable, self._durable = self._durable, []
        self._answer_clean(durable)

    def _write(self, plan: WritePlan, data: bytes, sync: bool, held: bool = False) -> int:
        """One batch's write and sync (I/O thread); returns the nanoseconds they took."""
        if held:
            self._taken()
        started = time.perf_counter_ns()
        self._log.write(plan, data, sync)
        return time.perf_counter_ns() - started

    def _write_compressed(self, batch: _Batch, sync: bool, held: bool = False) -> tuple[int, int]:
        """Compress and write one batch (I/O thread). Returns the bytes written and the
        nanoseconds the write and sync took; the batch's ``relocated`` says where its event
        frames went, for the commit task."""
        if held:
            self._taken()
        assert self._compressor is not None and batch.plan is not None and batch.frames
        data, where = self._compressor.pack(batch.frames, batch.plan.offset, batch.recorded_us)
        started = time.perf_counter_ns()
        self._log.write(batch.plan, data, sync)
        took = time.perf_counter_ns() - started
        if where is not None:
            batch.relocated = [w for w, f in zip(where, batch.frames, strict=True) if f.event_count]
        return len(data), took

    def _plan(self, items: list[PendingAppend], queued: int) -> _Batch:
        """Check versions in queue order and lay out accepted appends (commit task only).
        ``queued`` is the bytes of ``items`` (what the queue's drain counted).

        Hot, so one pass: each accepted append is added to the index (which gives it its
        version, so the next append to the same stream sees it there) and packed into its
        frame (``pack_frame``, inline) at once. The log space is reserved at the first
        accepted append, for the queued bytes from there on (exact for appends of events; a
        metadata frame's body is only made when it is planned), and settled to what the
        batch took at the end. What a producer gets is left on its PendingAppend
        (``outcome``; None for the common success, see ``PendingAppend.result``). A batch of
        nothing but accepted appends of events (the usual one) is its own list of planned,
        written and published appends; the lists are only filtered when something else
        happened.
        """
        index = self._index
        window = self._window
        remember = self._options.idempotency_window > 0
        first_pos = pos = index.next_position
        metas = self.metas
        tombstones = metas.tombstones
        has_meta = False
        clean = True  # every item so far an accepted append of events
        plan: WritePlan | None = None
        now_us = time.time_ns() // 1000
        ordinal = woff = off = 0
        parts: list[bytes] = []
        frames: list[PlannedFrame] | None = [] if self._compressor is not None else None
        last_version = index.last_version
        stage = index.stage_next
        length_head = _LENGTH_HEAD.pack
        magic_crc = _MAGIC_CRC.pack
        frame: Sequence[bytes]
        for item in items:
            if item.future.done():  # producer cancelled before its batch: drop it
                clean = False
                if plan is None:
                    queued -= item.size
                continue
            stream = item.stream
            if item.special:
                assert isinstance(item, SpecialAppend)
                clean = False
                if item.checkpoint < 0:  # a metadata write
                    if tombstones and stream in tombstones:
                        assert item.meta is not None
                        if item.meta.kind != "carry":  # a hard-deleted stream keeps its own
                            item.outcome = StreamDeleted(stream)
                            if plan is None:
                                queued -= item.size
                            continue
                    size_before = item.size
                    new = self._plan_meta(item, last_version(stream))
                    if isinstance(new, BaseException):
                        item.outcome = new
                        if plan is None:
                            queued -= size_before
                        continue
                    queued += item.size - size_before  # its body was made just now
                    item.first_version = new.revision
                    item.outcome = AppendResult(-1, new.revision)
                    has_meta = True
                else:
                    item.first_version = item.checkpoint
                    item.outcome = AppendResult(item.checkpoint, -1)
                item.position = pos
                if plan is None:
                    plan = self._log.reserve(queued, first_pos)
                    ordinal = plan.ordinal
                    woff = off = plan.offset
                frame = pack_frame(
                    item.stream_b,
                    0,
                    pos,
                    item.first_version,
                    now_us,
                    woff,
                    item.entries,
                    FRAME_KIND_CHECKPOINT if item.meta is None else FRAME_KIND_METADATA,
                )
                if item.meta is None:
                    index.add_mark(ordinal, stream, item.checkpoint)
                else:
                    index.add_meta(ordinal, stream, item.first_version, item.entries)
                count = 0
            else:
                if tombstones and stream in tombstones:  # hard-deleted
                    item.outcome = StreamDeleted(stream)
                    clean = False
                    if plan is None:
                        queued -= item.size
                    continue
                exp = item.expected
                if exp is not ANY:
                    last = last_version(stream)  # this batch's earlier appends included
                    if exp is NO_STREAM:
                        if last != -1:
                            item.outcome = self._mismatch(item, last)
                    elif exp is STREAM_EXISTS:
                        if last < 0:
                            item.outcome = self._mismatch(item, last)
                    elif last != exp:
                        item.outcome = self._mismatch(item, last)
                    if item.outcome is not None:
                        clean = False
                        if plan is None:
                            queued -= item.size
                        continue
                key = item.key
                if key is not None and (exp is ANY or exp is STREAM_EXISTS):
                    hit = window.get(key)
                    if hit is not None:  # a retry: the same ids, or the first of them
                        item.outcome = self._retried(item, hit, last_version(stream))
                        clean = False
                        if plan is None:
                            queued -= item.size
                        continue
                if plan is None:
                    plan = self._log.reserve(queued, first_pos)
                    ordinal = plan.ordinal
                    woff = off = plan.offset
                count = item.count
                size = item.size
                item.first_version = version = stage(off, size, stream, pos, count)
                item.position = pos
                # item.outcome stays None: the producer makes its AppendResult from the item
                if key is not None and remember:
                    result = _new_tuple(AppendResult, (pos + count - 1, version + count - 1))
                    window.pop(key, None)  # (a key appended again is the newest)
                    window[key] = (item.ids, result)
                # pack_frame, inline: the body (from its length on) is one bytes object, so
                # that its CRC32C is one call; no other copy until the batch's join
                body = (
                    length_head(
                        size - FRAME_HEADER_SIZE,
                        FRAME_KIND_EVENTS,
                        item.flags,
                        len(item.stream_b),
                        count,
                        pos,
                        version,
                        now_us,
                        woff,
                    )
                    + item.tail
                )
                if frames is None:  # the usual case, written out
                    parts += (magic_crc(FRAME_MAGIC, crc32c(body)), body)
                    pos += count
                    off += size
                    continue
                frame = (magic_crc(FRAME_MAGIC, crc32c(body)), body)
            if frames is None:
                parts += frame
            else:  # compressed on the I/O thread, in ``_write_compressed``
                frames.append(PlannedFrame(b"".join(frame), pos, count))
            pos += count
            off += item.size
        if clean:  # every item an accepted append of events (the usual batch)
            planned = accepted = events = items
        else:
            # accepted items have a position; the rest of the live ones have an outcome
            planned = [i for i in items if i.position >= 0 or i.outcome is not None]
            accepted = [i for i in items if i.position >= 0]
            events = [i for i in accepted if not i.special]
        if plan is None:
            return _Batch(planned, None, b"", -1, -1, [], 0, [])
        index.flush_staged(ordinal)
        self._log.settle(plan, off - woff)
        if frames is not None and has_meta:
            # metadata frames are never put in containers (recovery, index sidecars and
            # scavenging find them as frames of their own): such a rare batch goes uncompressed
            parts = [f.data for f in frames]
            frames = None
        data = b"".join(parts)
        assert frames is not None or len(data) == off - woff
        excess = len(window) - self._options.idempotency_window
        if excess > 0:
            for key in list(islice(window, excess)):
                del window[key]
        # (only special appends are checkpoints, and those make a batch not clean)
        marks = [] if clean else [(i.stream, i.checkpoint) for i in accepted if i.checkpoint >= 0]
        meta_recs = (
            [(i.stream, i.planned_meta) for i in accepted if i.planned_meta] if has_meta else []
        )
        return _Batch(
            planned,
            plan,
            data,
            first_pos,
            pos - 1,
            events,
            now_us,
            marks,
            frames,
            None,
            meta_recs,
            clean,
        )

    def _plan_meta(self, item: SpecialAppend, last: int) -> StreamMetadata | BaseException:
        """The metadata a metadata write gives its stream, with its frame body laid out in
        ``item`` (commit task only); or the error it fails with."""
        op = item.meta
        assert op is not None
        stream = item.stream
        old = self.metas.current(stream)
        revision = (old.revision if old is not None else -1) + 1
        base = old if old is not None else StreamMetadata()
        if op.kind == "carry":
            assert op.record is not None
            new = op.record
            item.entries = pack_stream_metadata(new.to_fields())
            item.size = FRAME_OVERHEAD + len(item.stream_b) + len(item.entries)
            if old is None or old.revision <= new.revision:
                item.planned_meta = new
                self.metas.plan(stream, new)
            return new
        elif op.kind == "delete":
            exp = item.expected
            if not (
                exp is ANY
                or (exp is STREAM_EXISTS and last >= 0)
                or (exp is NO_STREAM and last == -1)
                or (isinstance(exp, int) and not isinstance(exp, bool) and exp == last)
            ):
                return WrongExpectedVersion(stream, exp, last)
            new = replace(
                base,
                truncate_before=last + 1,
                deleted=True,
                hard_deleted=op.hard,
                revision=revision,
            )
        else:
            changes = dict(op.changes or {})
            tb = changes.get("truncate_before")
            if isinstance(tb, int) and tb > last + 1:
                return ValueError(
                    f"truncate_before={tb} for stream {stream!r} is past its end (last version "
                    f"{last}); at most {last + 1} hides every event so far"
                )
            if op.kind == "floor":  # retention dropped every event: keep the version
                assert isinstance(tb, int)
                changes["truncate_before"] = max(tb, base.truncate_before or 0)
            # a stream with no event left in the log (or none once retention removes the
            # segment it is removing) keeps its end in truncate_before
            floor = max(self._index.first_version(stream), self.floors.get(stream, 0))
            if floor > 0 and last < floor and "truncate_before" in changes:
                cur = changes["truncate_before"]
                changes["truncate_before"] = max(floor, cur if isinstance(cur, int) else 0)
            if base.deleted and not base.hard_deleted and last + 1 > (base.truncate_before or 0):
                # appended to since its soft delete: no longer deleted (as ``public`` says),
                # so a later floor at its end does not make it read as deleted again
                changes["deleted"] = False
            new = replace(base, **changes, revision=revision)  # type: ignore[arg-type]
        item.entries = pack_stream_metadata(new.to_fields())
        item.size = FRAME_OVERHEAD + len(item.stream_b) + len(item.entries)
        item.planned_meta = new
        self.metas.plan(stream, new)
        return new

    @staticmethod
    def _retried(
        item: PendingAppend, hit: tuple[bytes, AppendResult], last: int
    ) -> AppendResult | WrongExpectedVersion:
        """The outcome of an ``ANY``/``STREAM_EXISTS`` append whose first id the window holds
        for its stream: as for an explicit expected version, the same ids, or the first of
        them, are a retry (the result of those events, nothing written); more ids, or other
        ones after the first, conflict with what was written."""
        ids, result = hit
        n = len(item.ids)
        if ids[:n] != item.ids:
            return WrongExpectedVersion(item.stream, item.expected, last)
        fewer = (len(ids) - n) >> 4
        if not fewer:
            return result
        return _new_tuple(AppendResult, (result.position - fewer, result.version - fewer))

    @staticmethod
    def _mismatch(item: PendingAppend, last: int) -> BaseException | Recheck:
        exp = item.expected
        base = -1 if exp is NO_STREAM else exp
        if isinstance(base, int) and last >= base + item.count:
            return Recheck(last, base + 1)
        return WrongExpectedVersion(item.stream, exp, last)

    def _publish(self, batch: _Batch) -> None:
        """The batch is durable: make it visible (head, listeners, checkpoints, metadata)."""
        if batch.last >= batch.first >= 0:
            self._index.head = batch.last
            st = self.stats
            st.events += batch.last - batch.first + 1
            for listener in self.listeners:
                try:
                    listener(batch.first, batch.last, batch.appends, batch.recorded_us)
                except Exception:  # a listener's bug must not cost producers their answer
                    log.exception("aioeventstore: a commit listener failed")
        for name, position in batch.checkpoints:  # durable now, whoever still waits
            if position > self.checkpoints.get(name, -1):
                self.checkpoints[name] = position
        for stream, rec in batch.metas:  # reads honour it from now on
            self.metas.commit(stream, rec)
        items = batch.items  # (checkpoint and metadata writes are not append calls)
        self.stats.appends += len(items) if batch.clean else sum(not i.special for i in items)

    @staticmethod
    def _answer_clean(items: list[PendingAppend]) -> None:
        """Resolve durable, accepted appends of events (each outcome None: see
        PendingAppend.result)."""
        for item in items:
            try:
                item.future.set_result(None)
            except asyncio.InvalidStateError:  # its producer was cancelled meanwhile
                continue

    def _answer(self, batch: _Batch) -> None:
        """Resolve the producers of a published batch, each with its outcome."""
        if batch.clean:
            self._answer_clean(batch.items)
            return
        for item in batch.items:
            fut = item.future
            if fut.done():
                continue
            outcome = item.outcome
            if outcome is None or type(outcome) is AppendResult:  # None: see result()
                fut.set_result(outcome)
            elif isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

    def _fail(self, exc: BaseException, batch: _Batch | None) -> None:
        """Fail-stop: every producer of this batch, and every later one, gets StoreFailed.

        Written so that nothing in here can raise before every waiting producer is answered.
        """
        failure: StoreFailed | StoreClosed
        # (self.failure already: a batch that was in flight when a maintenance sync failed)
        if isinstance(exc, StoreClosed) or (isinstance(exc, StoreFailed) and exc is self.failure):
            failure = exc
        else:
            try:
                where = (
                    self._log.path(batch.plan.ordinal)
                    if batch and batch.plan
                    else self._log.directory
                )
            except Exception:  # the message must not cost anyone their answer
                where = self._log.directory
            failure = self.failure = StoreFailed(
                f"writing the log failed at {where}: {exc}; the store "
                "is stopped for writes (reads still work; reopen to recover)"
            )
            failure.__cause__ = exc
        self._stop_accepting()
        durable, self._durable = self._durable, []
        with contextlib.suppress(Exception):  # durable before the failure: they succeeded
            self._answer_clean(durable)
        self.metas.forget_planned()
        pending = list(batch.items) if batch else []
        pending += self._queue.take_all()
        for item in pending:
            if not item.future.done():
                item.future.set_exception(failed_again(failure))
        if failure is self.failure and exc is not failure:
            with contextlib.suppress(Exception):  # a broken handler must not break fail-stop
                log.error("%s", failure, exc_info=exc)


def _not_started(*args: object) -> asyncio.Future[Any]:
    raise AssertionError("the commit loop is not started")


def _refuse(item: PendingAppend) -> bool:
    """``CommitLoop.try_submit`` once appends are no longer accepted."""
    return False


def failed_again(failure: BaseException) -> BaseException:
    """A fresh exception for each raiser, so tracebacks do not pile up on one instance."""
    if isinstance(failure, StoreFailed):
        again = StoreFailed(*failure.args)
        again.__cause__ = failure.__cause__
        return again
    return StoreClosed(*failure.args)


@dataclass(slots=True)
class _Batch:
    items: list[PendingAppend]  # every append planned (each with its outcome), queue order
    plan: WritePlan | None
    data: bytes
    first: int  # position of the batch's first event (-1: no events)
    last: int
    appends: list[PendingAppend]  # the event appends written, in position order
    recorded_us: int
    checkpoints: list[tuple[str, int]]  # (consumer name, position) written
    frames: list[PlannedFrame] | None = None  # set when the I/O thread compresses the batch
    relocated: list[tuple[int, int]] | None = None  # where its event frames went, if moved
    metas: list[tuple[str, StreamMetadata]] = field(default_factory=list)  # metadata written
    clean: bool = False  # every item an accepted append of events (the usual batch)
