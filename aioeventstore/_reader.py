"""Reading committed events: index lookups on the loop thread, pread + decode on it when the
bytes are already in memory, else off it.

The index is only touched on the event loop thread (see ``_index.py``); the frames it names
are read (adjacent frames with one ``pread``), each frame's CRC is checked again (so damage that
happens after open is reported, never returned), and only the events in range and through the
filter are decoded. A step of at most ``_INLINE_CHUNK`` bytes and ``_INLINE_EVENTS`` events
whose bytes are all in the page cache (``FileHandle.pread_many_cached``: Linux's RWF_NOWAIT)
is read and decoded on the loop's own thread: it cannot block on the disk, the round trip to a
thread cost more than a small read, and a long one decodes faster there (see
``_INLINE_BYTES``). Anything else is read in steps of ``read_chunk_bytes`` on a reader thread
(``Reader._read_chunk``).

Compressed frames (containers, see ``_compress.py``): the index points every frame a container
holds at the container. A reader decompresses a container once and keeps the result in a small
cache shared by its threads (bounded in bytes), so the frames of one container read in one chunk,
or in the next chunks of a paged or backwards read, cost one decompression.

Retention metadata: events hidden by their stream's metadata are skipped before they are
decoded (a snapshot of it is taken with the index lookup, on the loop thread).

Scavenging may replace a segment (new file, new offsets) between a lookup and its ``pread``:
so a read takes the ``Segment`` objects its frames live in at lookup time, on the loop thread,
and pins them until it is done; the old file stays open and readable until then. The
decompression cache is keyed by segment object, not ordinal, for the same reason.
"""

from __future__ import annotations

import asyncio
import gc
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from itertools import compress, groupby, repeat
from operator import add, and_, eq, itemgetter, not_, or_, sub
from typing import Any, NamedTuple, TypeVar

from ._codec import (
    DecodeElsewhere,
    SharedTypeCaches,
    TypeCache,
    decode_frame_events,
    decode_span,
    decode_stream_run,
    frame_event_ids,
    new_type_caches,
)
from ._compress import expand
from ._format import (
    BODY_HEAD_SIZE,
    FRAME_HEADER_SIZE,
    FRAME_KIND_COMPRESSED,
    FRAME_KIND_EVENTS,
    FrameError,
    FrameInfo,
    check_frame,
)
from ._index import FrameRef, Index, Span, StreamFrames
from ._log import Log
from ._meta import StreamMetas
from ._segment import Segment
from .errors import CorruptLog, ReadFailed, StoreClosed
from .events import EventFilter, RecordedEvent

T = TypeVar("T")

_gc_lock = threading.Lock()
_gc_pauses = 0  # reader threads decoding right now
_gc_resume = False  # whether the collector was enabled when the first of them began
_PAUSE_BYTES = 16 * 1024  # decodes of fewer bytes on the loop (a hundred events) are not paused
_NO_PAUSE = nullcontext()


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while a reader thread decodes one chunk.

    Decoding a chunk creates thousands of container objects that are all still alive, so the
    collector would scan them again and again (it costs replay about a fifth of its speed);
    reference counting still frees everything as usual. The collector is resumed when the last
    concurrent decode ends, and only if it was enabled when the first began; its counts go on
    as they were, so its collections (and their heuristics) are only put off, never skipped.

    (Large chunks' objects were once moved to the oldest generation on resuming, with
    ``gc.freeze()`` then ``gc.unfreeze()``, to spare the collection that walks them once:
    8-14% of replay's time. But that moved every young object of the process, and CPython
    does not count such moves towards a full collection: in a process that read often, the
    application's dead reference cycles piled up in the oldest generation, never collected.)
    """
    global _gc_pauses, _gc_resume
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_resume:
                gc.enable()


# What a stream read decodes as a batch: frames back to back, or a frame of many events (the
# batch's set-up costs more than it saves on a lone frame of a few events).
_MIN_RUN = 2
# A read of at most this many bytes whose bytes are all in memory (the page cache) is read and
# decoded on the event loop's own thread: handing it to a reader thread and back cost more
# than the read (about 130 µs a round trip on the development VM; a one-event read_stream took
# about 160 µs, 30 µs without the trip), and a long read decodes about 5% faster there (the
# records are made on the core that consumes them, and no thread contends with the loop for
# the GIL). Its decoding holds the loop for a few ms (see ``_INLINE_EVENTS``), about as long
# as a reader thread decoding may hold it (the GIL's switch interval, 5 ms); a compressed
# container, which may expand to many times its size, is left to a thread (``_expanded``).
_INLINE_BYTES = 512 * 1024
# A step is first planned at this size (a span ends with the frame that starts before it: the
# room left is for that frame) and this many events, and decoded on the loop's thread when
# its bytes are in memory; else the whole chunk is planned again and read on a reader thread.
# The events bound the time the loop is held where bytes do not: a step of the benchmark's
# ≈150-byte events holds it 3.2 ms (median; 5.4 ms at most); one of 448 KiB of events of one
# int (93 bytes a frame) held it 6.4 ms (4,918 events) before the bound, 2.7 ms with it.
_INLINE_CHUNK = _INLINE_BYTES - 64 * 1024
_INLINE_EVENTS = 2048
# Steps on the loop's thread lend the I/O thread the GIL (IoThread.lend_gil) for up to
# _LEND_AT_MOST seconds, at most once every _LEND_AFTER, when it has been at a batch write
# that long.
_LEND_AFTER = 0.001
_LEND_AT_MOST = 0.0002
_RUN_START, _RUN_END, _RUN_DATA = itemgetter(3), itemgetter(4), itemgetter(5)  # of _read_runs'
_MIN_EVENTS = 8
# A stream read's step whose versions all lie back to back in the log (nothing else was
# appended between them), or whose next this many do, reads them as a span
# (Reader._decode_stream_span), as read_all would. A shorter run, followed by other
# streams' frames, is left to the step that reads the stream's frames wherever they lie:
# taken as a span of its own, each such run (an append of a few events among others) would
# be a step.
_MIN_SPAN = 512
_MAX_RUN = 1 << 62
_STREAM, _VERSION, _POSITION = itemgetter(0), itemgetter(1), 2  # of a RecordedEvent
_WALK = struct.Struct("<4sIIBBHIQ")  # frame header + body head up to the first position


class _Expanded:
    """A decompressed container: its inner frames' bytes, and where each events frame starts
    in them by first position, learnt by walking the frame headers only as far as asked.

    Shared by reader threads through the cache; concurrent walks only ever store the same
    values, so the worst a race does is walk some headers twice.
    """

    __slots__ = ("frames", "raw", "walked")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.frames: dict[int, int] = {}
        self.walked = 0  # headers before this offset are in ``frames``

    def find(self, first_position: int) -> int:
        """Offset of the events frame holding ``first_position`` first (unchecked: the caller
        checks it); FrameError when there is none."""
        at = self.frames.get(first_position)
        if at is not None:
            return at
        raw, frames, unpack = self.raw, self.frames, _WALK.unpack_from
        walk, size = self.walked, len(self.raw) - _WALK.size
        while walk <= size:
            _magic, _crc, body_len, kind, _fl, _sl, _n, first = unpack(raw, walk)
            if body_len < BODY_HEAD_SIZE:
                break
            here, walk = walk, walk + FRAME_HEADER_SIZE + body_len
            if kind == FRAME_KIND_EVENTS:
                frames[first] = here
                if first >= first_position:
                    break
        self.walked = max(self.walked, walk)
        at = frames.get(first_position)
        if at is None:
            raise FrameError(f"no frame at position {first_position} in the compressed frame")
        return at


class _NotCached(DecodeElsewhere):
    """Internal: a read on the event loop's thread found bytes that are not in memory, or a
    compressed container (see ``Reader._expanded``): it is done on a reader thread."""


def _read(seg: Segment, sizes: list[int], offsets: list[int], cached: bool) -> list[bytes]:
    if not cached:
        return seg.read_many(sizes, offsets)
    got = seg.read_many_cached(sizes, offsets)
    if got is None:
        raise _NotCached
    return got


def _read_runs(
    segs: dict[int, Segment], frames: StreamFrames, cached: bool = False
) -> list[tuple[int, int, Segment, int, int, bytes]]:
    """The frames' bytes, run by run: ``(i, j, segment, start, end, bytes)`` for frames
    ``i:j``, which lie back to back in one segment (or share a container) and are read with
    one ``pread``. Runs are found in C, column by column (a stream read of frames that lie
    apart has as many runs as frames), and a segment's runs are read with one call.
    ``cached``: only from memory (raises :class:`_NotCached` when a read could block)."""
    ords, offs, lens = frames.ordinals, frames.offsets, frames.lengths
    n = len(ords)
    if n == 1:  # (a short stream's read: one frame, as the general case below would read it)
        seg = segs[ords[0]]
        off = offs[0]
        return [(0, 1, seg, off, off + lens[0], _read(seg, lens, offs, cached)[0])]
    ends = list(map(add, offs, lens))
    after = offs[1:]
    starts: Sequence[int]
    run_ords: Sequence[int]
    run_starts: Sequence[int]
    run_ends: Sequence[int]
    if ords[0] == ords[-1] and ends[:-1] == after:  # one segment, frames back to back: one run
        starts = [0]
        run_ords, run_starts, run_ends = ords[:1], offs[:1], ends[-1:]
    elif not any(map(eq, after, ends)) and not any(map(eq, after, offs)):
        starts = range(n)  # no frame next to the one before it (the usual in a stream read)
        run_ords, run_starts, run_ends = ords, offs, ends
    else:
        goes_on = map(
            and_, map(eq, ords[1:], ords), map(or_, map(eq, after, ends), map(eq, after, offs))
        )
        starts = [0, *compress(range(1, n), map(not_, goes_on))]
        run_ords = list(map(ords.__getitem__, starts))
        run_starts = list(map(offs.__getitem__, starts))
        run_ends = list(map(ends.__getitem__, map(sub, starts[1:], repeat(1))))
        run_ends.append(ends[-1])
    sizes = list(map(sub, run_ends, run_starts))
    if run_ords[0] == run_ords[-1]:  # one segment (ordinals never decrease)
        seg = segs[run_ords[0]]
        datas = _read(seg, sizes, list(run_starts), cached)
        run_segs: Iterable[Segment] = repeat(seg, len(sizes))
    else:
        datas = []
        run_segs = []
        at = 0
        for ordinal, group in groupby(run_ords):
            k = at + len(list(group))
            seg = segs[ordinal]
            datas += _read(seg, sizes[at:k], list(run_starts[at:k]), cached)
            run_segs += repeat(seg, k - at)
            at = k
    stops = [*starts[1:], n]
    return list(zip(starts, stops, run_segs, run_starts, run_ends, datas, strict=True))


def _fewer(a: int | None, b: int | None) -> int | None:
    """The lower of two event limits, None meaning none."""
    return a if b is None else b if a is None else min(a, b)


class _Plan(NamedTuple):
    """A chunk's read, as ``Reader._read_chunk`` runs it: ``fn(*args, cached)`` reads and
    decodes ``size`` bytes of the segments ``segs``; the next chunk starts at ``after``."""

    size: int
    segs: list[Segment]
    fn: Callable[..., list[RecordedEvent]]
    args: tuple[Any, ...]
    after: int


class Reader:
    """Chunked reads of committed events for ``read_all``, ``read_stream`` and subscriptions."""

    def __init__(
        self,
        log: Log,
        index: Index,
        chunk_bytes: int,
        pause_gc: bool = True,
        metas: StreamMetas | None = None,
    ) -> None:
        self._log = log
        self._index = index
        self._chunk = chunk_bytes
        self._pause_gc = pause_gc
        self._metas = metas if metas is not None else StreamMetas()
        self.executor: Executor | None = None  # set while the store is open
        # The I/O thread's IoThread.lend_gil, while a store with one is open (see _read_chunk)
        self.lend_gil: Callable[[float, float], bool] | None = None
        self._cache: OrderedDict[tuple[Segment, int], _Expanded] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_size = 0
        self._cache_max = 4 * chunk_bytes  # bytes of decompressed containers kept
        self._loop_thread: int | None = None  # while a read runs on the loop's thread
        # Set once a read on the loop's thread met a compressed container (which it leaves to
        # a thread): from then on a step is not tried on the loop unless it is small whole.
        self._containers = False
        self._type_caches = SharedTypeCaches()
        self.decompressions = 0  # containers decompressed (cache misses)

    async def _pinned(self, segs: list[Segment], fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on a reader thread with ``segs`` pinned (taken on the loop thread, in the
        same step as the index lookup that planned the read)."""
        for seg in segs:
            seg.pin()
        try:
            return await self._run_blocking(fn, *args)
        except ReadFailed:
            raise
        except OSError as exc:  # an I/O error reading a segment: the read stops, with context
            reason = f"reading the log failed: {exc.strerror or exc}"
            raise ReadFailed(exc.errno, reason, exc.filename) from exc
        finally:
            for seg in segs:
                seg.unpin()

    async def _read_chunk(
        self, plan: Callable[[int, int | None], _Plan | None]
    ) -> tuple[list[RecordedEvent], int] | None:
        """The step ``plan(max_bytes, max_events)`` describes (None: nothing to read), decoded,
        and where the next one starts.

        The step is first planned at ``_INLINE_CHUNK`` bytes and ``_INLINE_EVENTS`` events
        (or the whole ``read_chunk_bytes`` once a compressed container was met): if that is
        at most ``_INLINE_BYTES``, all in memory and without a compressed container, it is
        read and decoded on the event loop's thread (``fn(*args, True)``, which raises
        :class:`_NotCached` otherwise), followed by a turn for the loop's other tasks as a
        thread's trip gave them. (Without that turn a one-event read costs 4.5 µs less, but
        a task reading many short streams in a row holds the loop, and the GIL, for as long
        as it does without one: given one every millisecond, such a task cut the appends of
        16 other tasks to a third, the I/O thread waiting for the GIL.) Else the whole step
        is planned again (in the same step of the loop: the index has not moved, so it
        starts at the same frame) and read on a reader thread, with its segments pinned
        (``fn(*args, False)``)."""
        small = not self._containers
        if small:
            got = plan(min(self._chunk, _INLINE_CHUNK), _INLINE_EVENTS)
        else:
            got = plan(self._chunk, None)
        if got is None:  # (either way a step starts at the same frame, or there is none)
            return None
        if got.size <= _INLINE_BYTES:
            if self.executor is None:
                raise StoreClosed("the store is closed")
            self._loop_thread = threading.get_ident()  # (see _expanded)
            try:
                records: list[RecordedEvent] | None = got.fn(*got.args, True)
            except _NotCached:
                records = None
            finally:
                self._loop_thread = None
            if records is not None:
                lend = self.lend_gil
                if lend is not None:  # a read that keeps the loop busy must not starve it
                    lend(_LEND_AFTER, _LEND_AT_MOST)
                await asyncio.sleep(0)
                return records, got.after
        if small:
            full = plan(self._chunk, None)
            assert full is not None, "the same step, planned in full, starts at the same frame"
            got = full
        return await self._pinned(got.segs, got.fn, *got.args, False), got.after

    def _expanded(self, seg: Segment, offset: int, buf: bytes, start: int, end: int) -> _Expanded:
        """The container at ``offset`` of segment ``seg`` (``buf[start:end]``, checked),
        decompressed, from the cache when it is there (any reader thread). In a step that
        ``_read_chunk`` runs on the event loop's thread it raises :class:`_NotCached` instead:
        a container may expand to many times its stored size, which is decoded on a reader
        thread."""
        if self._loop_thread == threading.get_ident():
            self._containers = True
            raise _NotCached
        key = (seg, offset)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        got = _Expanded(expand(buf, start, end))
        with self._cache_lock:
            self.decompressions += 1
            if key not in self._cache and len(got.raw) <= self._cache_max:
                self._cache[key] = got
                self._cache_size += len(got.raw)
                while self._cache_size > self._cache_max:
                    _, old = self._cache.popitem(last=False)
                    self._cache_size -= len(old.raw)
        return got

    async def all_chunk(
        self,
        pos: int,
        backwards: bool,
        max_events: int | None,
        filt: EventFilter | None,
        raw: bool = False,
        until: int | None = None,
    ) -> tuple[list[RecordedEvent], int] | None:
        """Committed events from ``pos`` on (or back), and the position to continue from.

        None when there is nothing at ``pos`` (past the head or ``until``, or before 0).
        With a filter the list may be empty while the returned position still moves on.
        """
        if until is not None and pos > until:
            return None
        head = self._index.head if until is None else min(until, self._index.head)
        lo, hi = (0, pos) if backwards else (pos, head)
        hidden = self._metas.hidden(self._index)

        def plan(max_bytes: int, most: int | None) -> _Plan | None:
            span = self._index.span_from(pos, max_bytes, backwards, _fewer(max_events, most))
            if span is None:
                return None
            seg = self._log.segments[span.ordinal]
            args = (seg, span, lo, hi, backwards, filt, raw, hidden)
            after = span.first_position - 1 if backwards else span.end_position
            return _Plan(span.end - span.start, [seg], self._decode_span, args, after)

        return await self._read_chunk(plan)

    def _decode_span(
        self,
        seg: Segment,
        span: Span,
        lo: int,
        hi: int,
        backwards: bool,
        filt: EventFilter | None,
        raw: bool = False,
        hidden: dict[str, tuple[int, int]] | None = None,
        cached: bool = False,
    ) -> list[RecordedEvent]:
        """One pread of a span of frames, checked and decoded (reader thread; or the loop's,
        reading only from memory with ``cached``)."""
        out = self._span_events(seg, span, lo, hi, filt, raw, hidden, cached, new_type_caches())
        if backwards:
            out.reverse()
        return out

    def _span_events(
        self,
        seg: Segment,
        span: Span,
        lo: int,
        hi: int,
        filt: EventFilter | None,
        raw: bool,
        hidden: dict[str, tuple[int, int]] | None,
        cached: bool,
        caches: tuple[TypeCache, TypeCache],
    ) -> list[RecordedEvent]:
        """The events of ``span`` in ``[lo, hi]`` passing ``filt``, in position order, decoded
        with the type decoders ``caches`` (see ``_decode_span``)."""
        data = _read(seg, [span.end - span.start], [span.start], cached)[0]
        out: list[RecordedEvent] = []
        types = prefixes = None
        if filt is not None:
            types = filt.stored_type_names() or None
            prefixes = filt.stream_prefixes or None
        # A span may start or end inside a container (the index points at whole containers):
        # only the span's own positions are returned, the next span goes on from there.
        lo = max(lo, span.first_position)
        hi = min(hi, span.end_position - 1)

        def expanded(buf: bytes, start: int, end: int) -> bytes:
            return self._expanded(seg, span.start + start, buf, start, end).raw

        try:
            if len(data) != span.end - span.start:
                raise FrameError("segment shorter than the index says")
            with self._gc_guard(len(data), cached):
                last, end = decode_span(
                    data,
                    span.first_position,
                    lo,
                    hi,
                    types,
                    prefixes,
                    out,
                    raw,
                    expanded,
                    caches,
                    hidden,
                )
            if not last < span.end_position <= end:
                raise FrameError(f"frames end at position {end}, index says {span.end_position}")
        except FrameError as exc:
            path = self._log.path(span.ordinal)
            raise CorruptLog(path, span.start + exc.offset, exc.reason) from None
        return out

    async def stream_chunk(
        self,
        stream: str,
        version: int,
        backwards: bool,
        max_events: int | None,
        raw: bool = False,
    ) -> tuple[list[RecordedEvent], int] | None:
        """Committed events of ``stream`` from ``version`` on (or back), and the version to
        continue from; None when the stream has no committed event at ``version``."""
        index = self._index
        hidden = self._metas.hidden(index)
        segments = self._log.segments

        def plan(max_bytes: int, most: int | None) -> _Plan | None:
            most = _fewer(max_events, most)
            if not backwards and not (hidden and stream in hidden):
                start = max(version, index.first_version(stream))
                n, whole = index.stream_run(stream, start, _MAX_RUN if most is None else most)
                if whole or n >= _MIN_SPAN:  # versions that lie back to back in the log
                    lo = index.position_of(stream, start)
                    span = index.span_from(lo, max_bytes, False, n)
                    assert span is not None, "a committed position has a frame"
                    hi = min(lo + n, span.end_position) - 1
                    seg = segments[span.ordinal]
                    args: tuple[Any, ...] = (seg, span, stream, start, lo, hi, raw)
                    after = start + hi - lo + 1
                    fn = self._decode_stream_span
                    return _Plan(span.end - span.start, [seg], fn, args, after)
            frames = index.stream_frames(stream, version, max_bytes, backwards, most)
            if not frames.firsts:
                return None
            start = version if backwards else max(version, index.first_version(stream))
            bound = index.position_of(stream, start)
            lo, hi = (0, bound) if backwards else (bound, index.head)
            segs = {ordinal: segments[ordinal] for ordinal in set(frames.ordinals)}
            args = (segs, frames, lo, hi, backwards, raw, hidden, stream)
            last = frames.versions[-1] + frames.counts[-1] - 1
            after = frames.versions[0] - 1 if backwards else last + 1
            return _Plan(sum(frames.lengths), list(segs.values()), self._decode, args, after)

        return await self._read_chunk(plan)

    def _decode_stream_span(
        self,
        seg: Segment,
        span: Span,
        stream: str,
        version: int,
        lo: int,
        hi: int,
        raw: bool,
        cached: bool = False,
    ) -> list[RecordedEvent]:
        """A stream's versions ``version`` on, whose positions ``[lo, hi]`` the index says are
        consecutive (see ``Index.stream_run``), read and decoded as ``read_all`` reads
        ``span`` (its tighter loop; the index's claim is checked after: every event is the
        stream's, at the versions and positions it says). Raises CorruptLog otherwise."""
        caches = self._type_caches.get(raw)
        out = self._span_events(seg, span, lo, hi, None, raw, None, cached, caches)
        n = hi - lo + 1
        if (
            len(out) != n
            or out[0][_POSITION] != lo
            or out[-1][_POSITION] != hi
            or list(map(_VERSION, out)) != list(range(version, version + n))
            or list(map(_STREAM, out)).count(stream) != n
        ):
            raise CorruptLog(
                self._log.path(span.ordinal),
                span.start,
                f"the index says positions {lo}..{hi} are versions {version}.. of stream "
                f"{stream!r}, the log does not",
            )
        return out

    async def stream_ids(self, stream: str, first: int, count: int) -> list[bytes]:
        """The 16-byte ids of a stream's committed versions ``first`` .. ``first+count-1``
        (fewer if the stream is shorter, or if some of them were removed from the log)."""
        ids: list[bytes] = []
        if first < self._index.first_version(stream):
            return ids
        frames = self._index.stream_frames(stream, first, 1 << 20, False, count)
        # every segment taken and pinned in the step that planned the read: a scavenge may
        # swap one for its rewrite (new offsets) while an earlier frame is read
        segs = {ordinal: self._log.segments[ordinal] for ordinal in set(frames.ordinals)}
        for seg in segs.values():
            seg.pin()
        try:
            for ref, ref_first in zip(frames.refs(), frames.versions, strict=True):
                seg = segs[ref.ordinal]
                data = await self._pinned([], seg.read, ref.length, ref.offset)
                buf, at, info, _ = await self._pinned(
                    [], self._locate, data, ref, 0, None, seg, stream
                )
                ids += frame_event_ids(buf, at, info)[max(0, first - ref_first) :]
        finally:
            for seg in segs.values():
                seg.unpin()
        return ids[:count]

    async def _run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        if self.executor is None:
            raise StoreClosed("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _locate(
        self,
        data: bytes,
        ref: FrameRef,
        at: int,
        outer: FrameInfo | None,
        seg: Segment,
        stream: str | None = None,
    ) -> tuple[bytes, int, FrameInfo, FrameInfo | None]:
        """The frame ``ref`` (at ``data[at:]``), checked: ``(buffer, offset in it, info,
        container)``; for a frame inside a container, the buffer is the container's
        decompressed bytes and ``container`` its checked info (None otherwise). ``outer`` is
        that info when the caller has it already. With ``stream``, the frame must belong to
        it (a stream read never returns another stream's events, even if the index were
        wrong). Raises CorruptLog."""
        path = self._log.path(ref.ordinal)
        got_data, got_at, info, container = self._find(data, ref, at, outer, seg, path)
        if stream is not None and info.stream != stream:
            raise CorruptLog(
                path,
                ref.offset,
                f"the index points at a frame of stream {info.stream!r} for stream {stream!r}",
            )
        return got_data, got_at, info, container

    def _find(
        self,
        data: bytes,
        ref: FrameRef,
        at: int,
        outer: FrameInfo | None,
        seg: Segment,
        path: str,
    ) -> tuple[bytes, int, FrameInfo, FrameInfo | None]:
        try:
            info = outer if outer is not None else check_frame(data, at, at + ref.length)
        except FrameError as exc:
            raise CorruptLog(path, ref.offset, exc.reason) from None
        if info.length != ref.length:
            raise CorruptLog(path, ref.offset, "frame on disk does not match the index")
        if info.kind != FRAME_KIND_COMPRESSED:
            if info.first_position != ref.first_position:
                raise CorruptLog(path, ref.offset, "frame on disk does not match the index")
            return data, at, info, None
        if not info.first_position <= ref.first_position < info.first_position + info.event_count:
            raise CorruptLog(path, ref.offset, "frame on disk does not match the index")
        try:
            got = self._expanded(seg, ref.offset, data, at, at + ref.length)
            inner_at = got.find(ref.first_position)
            inner = check_frame(got.raw, inner_at, len(got.raw))
            if inner.kind != FRAME_KIND_EVENTS or inner.first_position != ref.first_position:
                raise FrameError("inner frame does not match the index")
        except FrameError as exc:
            raise CorruptLog(path, ref.offset, f"in compressed frame: {exc.reason}") from None
        return got.raw, inner_at, inner, info

    def _decode(
        self,
        segs: dict[int, Segment],
        frames: StreamFrames,
        lo: int,
        hi: int,
        backwards: bool,
        raw: bool,
        hidden: dict[str, tuple[int, int]] | None,
        stream: str,
        cached: bool = False,
    ) -> list[RecordedEvent]:
        """Read and decode a stream's frames (reader thread; or the loop's, reading only from
        memory with ``cached``). Adjacent frames are read in one pread. Every frame must
        belong to ``stream``. The bytes are read before the collector is paused: a read on
        the loop's thread that finds them not in memory then leaves before any of it."""
        runs = _read_runs(segs, frames, cached)
        with self._gc_guard(sum(frames.lengths), cached):
            out = self._decode_frames(frames, runs, lo, hi, raw, hidden, stream)
        if backwards:
            out.reverse()
        return out

    def _decode_frames(
        self,
        frames: StreamFrames,
        runs: list[tuple[int, int, Segment, int, int, bytes]],
        lo: int,
        hi: int,
        raw: bool,
        hidden: dict[str, tuple[int, int]] | None,
        stream: str,
    ) -> list[RecordedEvent]:
        out: list[RecordedEvent] = []
        caches = self._type_caches.get(raw)
        # A stream's frames that lie back to back are decoded as one batch (see _codec); for a
        # lone frame of a few events, or if the batch refuses, frame by frame.
        firsts = frames.firsts
        # A stream whose frames lie apart in the log (other streams were appended in between):
        # its frames, read one by one above, are decoded as one batch too, as if they were
        # back to back (each is self-contained and checked as ever). Anything the batch
        # refuses is decoded run by run below, from the same bytes.
        if (
            len(runs) >= _MIN_RUN
            # every run read whole (in C: as many runs as frames, when they lie apart)
            and list(map(len, map(_RUN_DATA, runs)))
            == list(map(sub, map(_RUN_END, runs), map(_RUN_START, runs)))
        ):
            joined = b"".join(map(_RUN_DATA, runs))
            got = decode_stream_run(joined, firsts, lo, hi, stream, raw, caches, hidden)
            if got is not None:
                return got
        refs: list[FrameRef] | None = None  # built only if a run is decoded frame by frame
        for i, j, seg, start, end, data in runs:
            many = j - i >= _MIN_RUN or frames.counts[i] >= _MIN_EVENTS
            if many and len(data) == end - start:
                got = decode_stream_run(data, firsts[i:j], lo, hi, stream, raw, caches, hidden)
                if got is not None:
                    out += got
                    continue
            if refs is None:
                refs = frames.refs()
            outer: FrameInfo | None = None  # the container the previous frame was in
            for ref in refs[i:j]:
                at = ref.offset - start
                if outer is not None and outer.offset != at:
                    outer = None
                buf, fat, info, outer = self._locate(data, ref, at, outer, seg, stream)
                try:
                    decode_frame_events(buf, fat, info, lo, hi, None, out, raw, caches, hidden)
                except FrameError as exc:
                    raise CorruptLog(self._log.path(ref.ordinal), ref.offset, exc.reason) from None
        return out

    def _gc_guard(self, size: int, on_loop: bool) -> AbstractContextManager[None]:
        """The collector pause around decoding ``size`` bytes of frames, unless the options
        turned it off, or the decode runs on the loop's thread (``on_loop``: the ``cached``
        of the read) and its frames are too few to set off more than a collection or two (a
        short stream's read: pausing would cost it more than it saves; there a compressed
        container is never expanded, so ``size`` is what is decoded)."""
        if not self._pause_gc or (on_loop and size < _PAUSE_BYTES):
            return _NO_PAUSE
        return gc_paused()
