"""Reading committed events: index lookups on the loop thread, pread + decode off it.

The index is only touched on the event loop thread (see ``_index.py``); the frame list it yields
is handed to a reader thread, which reads adjacent frames with one ``pread``, checks each frame's
CRC again (so damage that happens after open is reported, never returned), and decodes only the
events in range and through the filter.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

from ._codec import decode_frame_events, decode_span, frame_event_ids
from ._format import FrameError, FrameInfo, check_frame
from ._index import FrameRef, Index, Span
from ._log import Log
from .errors import CorruptLog, StoreClosed
from .events import EventFilter, RecordedEvent

T = TypeVar("T")

_gc_lock = threading.Lock()
_gc_pauses = 0  # reader threads decoding right now
_gc_resume = False  # whether the collector was enabled when the first of them began


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while a reader thread decodes one chunk.

    Decoding a chunk creates thousands of container objects that are all still alive, so the
    collector would scan them again and again (it costs replay about a fifth of its speed);
    reference counting still frees everything as usual. The collector is resumed when the last
    concurrent decode ends, and only if it was enabled when the first began.
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


class Reader:
    """Chunked reads of committed events for ``read_all``, ``read_stream`` and subscriptions."""

    def __init__(self, log: Log, index: Index, chunk_bytes: int, pause_gc: bool = True) -> None:
        self._log = log
        self._index = index
        self._chunk = chunk_bytes
        self._pause_gc = pause_gc
        self.executor: Executor | None = None  # set while the store is open

    async def all_chunk(
        self,
        pos: int,
        backwards: bool,
        max_events: int | None,
        filt: EventFilter | None,
        raw: bool = False,
    ) -> tuple[list[RecordedEvent], int] | None:
        """Committed events from ``pos`` on (or back), and the position to continue from.

        None when there is nothing at ``pos`` (past the head, or before 0). With a filter the
        list may be empty while the returned position still moves on.
        """
        span = self._index.span_from(pos, self._chunk, backwards, max_events)
        if span is None:
            return None
        lo, hi = (0, pos) if backwards else (pos, self._index.head)
        records = await self._run_blocking(self._decode_span, span, lo, hi, backwards, filt, raw)
        return records, (span.first_position - 1 if backwards else span.end_position)

    def _decode_span(
        self,
        span: Span,
        lo: int,
        hi: int,
        backwards: bool,
        filt: EventFilter | None,
        raw: bool = False,
    ) -> list[RecordedEvent]:
        """One pread of a span of frames, checked and decoded (reader thread)."""
        data = self._log.read(span.ordinal, span.start, span.end - span.start)
        out: list[RecordedEvent] = []
        types = prefixes = None
        if filt is not None:
            types = filt.type_names or None
            prefixes = filt.stream_prefixes or None
        try:
            if len(data) != span.end - span.start:
                raise FrameError("segment shorter than the index says")
            with self._gc_guard():
                end = decode_span(data, span.first_position, lo, hi, types, prefixes, out, raw)
            if end != span.end_position:
                raise FrameError(f"frames end at position {end}, index says {span.end_position}")
        except FrameError as exc:
            path = self._log.path(span.ordinal)
            raise CorruptLog(path, span.start + exc.offset, exc.reason) from None
        if backwards:
            out.reverse()
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
        frames = index.stream_frames(stream, version, self._chunk, backwards, max_events)
        if not frames:
            return None
        bound = index.position_of(stream, version)
        lo, hi = (0, bound) if backwards else (bound, index.head)
        records = await self._run([f for f, _ in frames], lo, hi, backwards, None, raw)
        ref, first = frames[0] if backwards else frames[-1]
        return records, (first - 1 if backwards else first + ref.event_count)

    async def stream_ids(self, stream: str, first: int, count: int) -> list[bytes]:
        """The 16-byte ids of a stream's committed versions ``first`` .. ``first+count-1``
        (fewer if the stream is shorter)."""
        ids: list[bytes] = []
        for ref, ref_first in self._index.stream_frames(stream, first, 1 << 20, False, count):
            data = await self._run_blocking(self._log.read, ref.ordinal, ref.offset, ref.length)
            info = self._check(data, ref, 0)
            ids += frame_event_ids(data, 0, info)[max(0, first - ref_first) :]
        return ids[:count]

    async def _run(
        self,
        frames: list[FrameRef],
        lo: int,
        hi: int,
        backwards: bool,
        filt: EventFilter | None,
        raw: bool = False,
    ) -> list[RecordedEvent]:
        return await self._run_blocking(self._decode, frames, lo, hi, backwards, filt, raw)

    async def _run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        if self.executor is None:
            raise StoreClosed("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _check(self, data: bytes, ref: FrameRef, at: int) -> FrameInfo:
        try:
            info = check_frame(data, at, at + ref.length)
        except FrameError as exc:
            raise CorruptLog(self._log.path(ref.ordinal), ref.offset, exc.reason) from None
        if info.first_position != ref.first_position or info.length != ref.length:
            raise CorruptLog(
                self._log.path(ref.ordinal), ref.offset, "frame on disk does not match the index"
            )
        return info

    def _decode(
        self,
        frames: list[FrameRef],
        lo: int,
        hi: int,
        backwards: bool,
        filt: EventFilter | None,
        raw: bool = False,
    ) -> list[RecordedEvent]:
        """Read and decode frames (reader thread). Adjacent frames are read in one pread."""
        with self._gc_guard():
            out = self._decode_frames(frames, lo, hi, filt, raw)
        if backwards:
            out.reverse()
        return out

    def _decode_frames(
        self, frames: list[FrameRef], lo: int, hi: int, filt: EventFilter | None, raw: bool
    ) -> list[RecordedEvent]:
        out: list[RecordedEvent] = []
        types = filt.type_names if filt is not None and filt.event_types else None
        i = 0
        while i < len(frames):
            j = i + 1
            while (
                j < len(frames)
                and frames[j].ordinal == frames[i].ordinal
                and frames[j].offset == frames[j - 1].offset + frames[j - 1].length
            ):
                j += 1
            start = frames[i].offset
            end = frames[j - 1].offset + frames[j - 1].length
            data = self._log.read(frames[i].ordinal, start, end - start)
            for ref in frames[i:j]:
                at = ref.offset - start
                info = self._check(data, ref, at)
                if filt is not None and not filt.matches_stream(info.stream):
                    continue
                try:
                    decode_frame_events(data, at, info, lo, hi, types, out, raw)
                except FrameError as exc:
                    raise CorruptLog(self._log.path(ref.ordinal), ref.offset, exc.reason) from None
            i = j
        return out

    def _gc_guard(self) -> AbstractContextManager[None]:
        """The collector pause around one chunk's decoding, unless the options turned it off."""
        return gc_paused() if self._pause_gc else nullcontext()
