"""EventStore: the facade. Open and close, append, read, statistics.

Reading order for a newcomer: this module, then ``_commit.py`` (the group-commit loop), then
``_log.py`` / ``_segment.py`` (files on disk), ``_index.py`` and ``_codec.py``.

Threads: the event loop thread runs producers, the commit loop and the index. One I/O thread
(owned by the store) does every write and sync, one batch per hop. A small pool of reader
threads does ``pread`` and decoding for reads, so neither blocks the event loop.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Unpack
from weakref import WeakSet

from ._checks import (
    as_event_list,
    check_consumer_name,
    check_expected,
    check_filter,
    check_index,
    check_limit,
    check_stream,
)
from ._codec import encode_events, frame_event_ids
from ._commit import CommitLoop, PendingAppend, Recheck
from ._compress import expand, inner_frames, require
from ._format import (
    FRAME_KIND_CHECKPOINT,
    FRAME_KIND_COMPRESSED,
    FrameError,
    FrameInfo,
)
from ._fs import FileSystem, Lock, OsFileSystem
from ._index import Index
from ._log import LOCK_NAME, Log, Recovery
from ._reader import Reader
from ._segment import FrameSink, Segment
from ._subscriptions import LiveHub, Subscription
from ._verify import VerifyReport, verify_store
from .errors import CorruptLog, StoreClosed, StoreLocked, WrongExpectedVersion
from .events import (
    ANY,
    AppendResult,
    Event,
    EventFilter,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StartAt,
)
from .options import OptionOverrides, StoreOptions

__all__ = ["EventStore", "StoreStatistics", "Subscription"]


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """A snapshot of a store's counters (since it was opened) and sizes."""

    head: int
    """Position of the last durable event, -1 when the store is empty."""
    streams: int
    appends: int
    """Append calls resolved (written, idempotent repeats and version conflicts)."""
    events: int
    """Events written since open."""
    batches: int
    """Writes to the log (one per commit batch)."""
    syncs: int
    """fdatasync/F_FULLFSYNC calls made for batches."""
    bytes_written: int
    queued: int
    """Appends waiting for the commit loop right now (queued or waiting for queue space)."""
    queued_bytes: int
    """Encoded bytes in the append queue right now (at most ``max_queue_bytes``, or one
    append of any size when it is alone)."""
    index_bytes: int
    """Bytes held by the index arrays."""

    @property
    def events_per_sync(self) -> float:
        """Events made durable per sync: the group commit's payoff."""
        return self.events / self.syncs if self.syncs else 0.0


class EventStore:
    """An embedded, durable event store in one directory.

    ``async with EventStore("data/") as store:`` opens the directory (creating it if missing),
    recovers the log, starts the commit loop, and on exit commits what is queued, syncs, and
    stops every task and thread it started. Options are a :class:`StoreOptions` or its fields as
    keywords (``EventStore(path, durability="os")``).

    Opening raises :class:`StoreLocked` when another writer has the directory open, and
    :class:`CorruptLog` when the log is damaged other than by a torn tail (which is cut).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        options: StoreOptions | None = None,
        *,
        _fs: FileSystem | None = None,
        **overrides: Unpack[OptionOverrides],
    ) -> None:
        self._path = os.fspath(path)
        base = options if options is not None else StoreOptions()
        self._options = replace(base, **overrides) if overrides else base
        self._fs: FileSystem = _fs if _fs is not None else OsFileSystem()
        self._index = Index()
        self._log = Log(self._fs, self._path, self._options)
        self._lock: Lock | None = None
        self._io: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._commit: CommitLoop | None = None
        self._state = "new"  # new → open → closed
        self._checkpoints: dict[str, int] = {}  # named consumer → last acknowledged position
        self._reader = Reader(
            self._log,
            self._index,
            self._options.read_chunk_bytes,
            self._options.pause_gc_while_decoding,
        )
        self._hub = LiveHub()
        self._subscriptions: WeakSet[Subscription] = WeakSet()
        self.recovery: Recovery | None = None
        """What opening found (None before open): segments, end position, any torn tail cut."""

    # --- lifecycle ------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """The store's directory."""
        return self._path

    @property
    def options(self) -> StoreOptions:
        """The options this store runs with."""
        return self._options

    @property
    def head(self) -> int:
        """Position of the last durable event, or -1 when the store is empty."""
        return self._index.head

    async def open(self) -> EventStore:
        """Lock the directory, recover the log, and start the commit loop. Returns self."""
        if self._state != "new":
            raise StoreClosed(f"store at {self._path} was already opened; create a new EventStore")
        if self._options.compression == "zstd":
            require("StoreOptions.compression is 'zstd'")
        self._state = "opening"
        self._io = ThreadPoolExecutor(1, thread_name_prefix="aioeventstore-io")
        self._readers = ThreadPoolExecutor(4, thread_name_prefix="aioeventstore-read")
        loop = asyncio.get_running_loop()
        window: dict[bytes, tuple[tuple[bytes, ...], AppendResult]] = {}
        try:
            await loop.run_in_executor(self._io, self._open_blocking, window)
        except BaseException:
            self._state = "closed"
            await loop.run_in_executor(None, self._release_blocking)
            raise
        self._commit = CommitLoop(
            self._log, self._index, self._options, self._io, window, self._checkpoints
        )
        self._commit.listeners.append(self._hub.publish)
        self._reader.executor = self._readers
        self._commit.start()
        self._state = "open"
        return self

    def _open_blocking(self, window: dict[bytes, tuple[tuple[bytes, ...], AppendResult]]) -> None:
        fs = self._fs
        fs.makedirs(self._path)
        try:
            self._lock = fs.lock(os.path.join(self._path, LOCK_NAME))
        except BlockingIOError:
            raise StoreLocked(
                f"store at {self._path} is already open for writing (by this or another process)"
            ) from None
        # (segment ordinal, frame on disk, frame inside it when that one is a container)
        recent: deque[tuple[int, FrameInfo, FrameInfo | None]] = deque(
            maxlen=self._options.idempotency_window
        )
        index = self._index

        def sink(ordinal: int, seg: Segment) -> FrameSink:
            def on_frame(info: FrameInfo, buf: bytes, start: int) -> None:
                if info.kind != FRAME_KIND_COMPRESSED:
                    add(info, None)
                    return
                try:
                    inner = inner_frames(expand(buf, start, start + info.length), info)
                except FrameError as exc:
                    raise CorruptLog(seg.path, info.offset, exc.reason) from None
                for frame in inner:
                    add(frame, info)

            def add(info: FrameInfo, container: FrameInfo | None) -> None:
                if info.kind == FRAME_KIND_CHECKPOINT:
                    # the highest wins, as in memory (a lower one may come later on disk)
                    old = self._checkpoints.get(info.stream, -1)
                    self._checkpoints[info.stream] = max(old, info.first_version)
                    return
                at = info.offset if container is None else container.offset
                if info.first_version != index.last_version(info.stream) + 1:
                    raise CorruptLog(
                        seg.path,
                        at,
                        f"stream {info.stream!r} continues at version "
                        f"{info.first_version}, expected "
                        f"{index.last_version(info.stream) + 1}",
                    )
                index.add_frame(
                    ordinal,
                    at,
                    info.length if container is None else container.length,
                    info.stream,
                    info.first_position,
                    info.first_version,
                    info.event_count,
                )
                recent.append(
                    (ordinal, info, None) if container is None else (ordinal, container, info)
                )

            return on_frame

        self.recovery = self._log.recover(sink)
        index.head = index.next_position - 1
        expanded: tuple[int, int, bytes] = (-1, -1, b"")  # the last container decompressed
        for ordinal, info, inner in recent:
            data = self._log.read(ordinal, info.offset, info.length)
            at = 0
            if inner is not None:  # the ids are inside a container: decompress it once
                if expanded[:2] != (ordinal, info.offset):
                    expanded = (ordinal, info.offset, expand(data, 0, len(data)))
                data, info, at = expanded[2], inner, inner.offset
            ids = tuple(frame_event_ids(data, at, info))
            last = info.first_position + info.event_count - 1
            window[info.stream.encode("utf-8") + ids[0]] = (
                ids,
                AppendResult(last, info.first_version + info.event_count - 1),
            )

    def _release_blocking(self) -> None:
        self._log.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def close(self) -> None:
        """Commit what is queued, sync, stop every task and thread, release the lock.

        Idempotent. Appends after close raise :class:`StoreClosed`; reads already running end
        with it at their next step. Subscriptions end: their iteration stops (no exception);
        events they had not delivered yet are not delivered.
        """
        if self._state in ("closed", "new"):
            self._state = "closed"
            return
        self._state = "closed"
        loop = asyncio.get_running_loop()
        try:
            if self._commit is not None:
                await self._commit.close()
                if self._commit.failure is None and self._io is not None:
                    await loop.run_in_executor(self._io, self._log.sync)
        finally:
            for sub in list(self._subscriptions):
                sub._end()
            self._reader.executor = None
            for pool in (self._io, self._readers):
                if pool is not None:
                    await loop.run_in_executor(None, pool.shutdown)
            await loop.run_in_executor(None, self._release_blocking)

    aclose = close

    async def __aenter__(self) -> EventStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __del__(self) -> None:
        if getattr(self, "_state", "closed") == "open":
            warnings.warn(
                f"EventStore at {self._path} was never closed",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )

    def statistics(self) -> StoreStatistics:
        """A snapshot of counters and sizes."""
        st = self._commit.stats if self._commit is not None else None
        return StoreStatistics(
            head=self._index.head,
            streams=self._index.stream_count(),
            appends=st.appends if st else 0,
            events=st.events if st else 0,
            batches=st.batches if st else 0,
            syncs=st.syncs if st else 0,
            bytes_written=st.bytes_written if st else 0,
            queued=self._commit.queued if self._commit is not None else 0,
            queued_bytes=self._commit.queued_bytes if self._commit is not None else 0,
            index_bytes=self._index.memory_bytes(),
        )

    def _require_open(self) -> CommitLoop:
        if self._state != "open" or self._commit is None:
            raise StoreClosed(
                f"store at {self._path} is {self._state}; use it inside "
                "'async with EventStore(...)' or after 'await store.open()'"
            )
        return self._commit

    async def verify(self) -> VerifyReport:
        """Check every frame of every segment on disk and report per segment (read-only).

        Runs on the store's I/O thread, between two commit batches, so a write in progress is
        never mistaken for a torn tail; appends wait while it runs. ``python -m aioeventstore
        verify PATH`` does the same for a store that is not open.
        """
        self._require_open()
        assert self._io is not None
        return await asyncio.get_running_loop().run_in_executor(
            self._io, verify_store, self._path, self._fs, self._options
        )

    # --- append -----------------------------------------------------------------------------
    async def append(
        self,
        stream: str,
        events: Event | NewEvent | Sequence[Event | NewEvent],
        *,
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        """Append one event or an atomic, ordered sequence of events to ``stream``.

        Returns once every event is durable (per ``durability``), with the position and
        version of the last one. Raises :class:`WrongExpectedVersion` (nothing written) when
        ``expected_version`` does not match, :class:`StoreFailed` after a write or sync error,
        :class:`StoreClosed` after close, and TypeError/ValueError/:class:`EventTooLarge` for bad
        input, in the caller's task, before anything is queued.

        Idempotent retries: re-appending the same event ids (``NewEvent(id=...)``) to the same
        stream returns the first result and writes nothing. With an explicit expected version
        (an int or ``NO_STREAM``) this is exact: the ids stored at those versions are compared.
        With ``ANY`` it holds within the last ``idempotency_window`` appends.

        If the calling task is cancelled while waiting, its events may still be committed
        (when their batch was already being written); retrying with the same ids is safe.
        """
        commit = self._require_open()
        stream_b = check_stream(stream)
        check_expected(expected_version)
        items = as_event_list(stream, events)
        opts = self._options
        ids, entries, metas, own_ids = encode_events(
            stream, items, opts.max_event_bytes, opts.max_append_bytes
        )
        fut: asyncio.Future[AppendResult | Recheck] = asyncio.get_running_loop().create_future()
        pending = PendingAppend(
            stream, stream_b, expected_version, ids, entries, fut, items, metas, own_ids=own_ids
        )
        if not commit.try_submit(pending):  # the queue is full (or the store stopped): wait
            await commit.submit(pending)
        outcome = await fut
        if type(outcome) is AppendResult:
            return outcome
        assert isinstance(outcome, Recheck)
        return await self._recheck(stream, expected_version, ids, outcome)

    async def _recheck(
        self, stream: str, expected: ExpectedVersion, ids: tuple[bytes, ...], outcome: Recheck
    ) -> AppendResult:
        """An explicit expected version the stream has moved past: a retry of the same ids
        returns the original result; anything else is a conflict."""
        first, last = outcome.first_version, outcome.first_version + len(ids) - 1
        stored = await self._reader.stream_ids(stream, first, len(ids))
        if stored == list(ids):
            return AppendResult(self._index.position_of(stream, last), last)
        raise WrongExpectedVersion(stream, expected, outcome.actual)

    # --- reads ------------------------------------------------------------------------------
    async def read_stream(
        self,
        stream: str,
        *,
        from_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
        raw: bool = False,
    ) -> AsyncIterator[RecordedEvent]:
        """The durable events of one stream, in version order (or reverse with ``backwards``).

        ``from_version`` is inclusive; it defaults to 0 (forwards) or the last version
        (backwards). A stream with no events yields nothing. Reads stream from disk in chunks
        of ``read_chunk_bytes`` off the event loop, and may run while appends go on: events
        committed while iterating may be included; uncommitted ones never are.
        With ``raw=True`` ``rec.data`` is the stored dict and no model is built (faster, and
        readable whatever the registered classes say).
        """
        self._require_open()
        check_stream(stream)
        check_limit(limit)
        if from_version is None:
            from_version = self._index.committed_last_version(stream) if backwards else 0
        else:
            check_index("from_version", from_version)
            if backwards:  # as read_all does: a start past the end reads from the end
                from_version = min(from_version, self._index.committed_last_version(stream))
        remaining = limit
        version = from_version
        while remaining is None or remaining > 0:
            self._require_open()
            chunk = await self._reader.stream_chunk(stream, version, backwards, remaining, raw)
            if chunk is None:
                return
            records, version = chunk
            if remaining is not None:
                records = records[:remaining]
                remaining -= len(records)
            for rec in records:
                yield rec

    async def read_all(
        self,
        *,
        from_position: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
        filter: EventFilter | None = None,
        raw: bool = False,
    ) -> AsyncIterator[RecordedEvent]:
        """Every durable event of the store in position order (or reverse with ``backwards``).

        ``from_position`` is inclusive; it defaults to 0 (forwards) or the head (backwards).
        ``filter`` keeps only matching streams/types (``limit`` counts what passes); events
        filtered out are never decoded. Streams from disk in bounded chunks off the event loop;
        sees only committed events. ``raw=True``: ``rec.data`` is the stored dict, no model.
        """
        self._require_open()
        check_limit(limit)
        check_filter(filter)
        if from_position is None:
            from_position = self._index.head if backwards else 0
        else:
            check_index("from_position", from_position)
        pos = min(from_position, self._index.head) if backwards else from_position
        remaining = limit
        while remaining is None or remaining > 0:
            self._require_open()
            chunk = await self._reader.all_chunk(
                pos, backwards, remaining if filter is None else None, filter, raw
            )
            if chunk is None:
                return
            records, pos = chunk
            if remaining is not None:
                records = records[:remaining]
                remaining -= len(records)
            for rec in records:
                yield rec

    # --- subscriptions ----------------------------------------------------------------------
    def subscribe(
        self,
        *,
        from_position: int | StartAt = 0,
        stream: str | None = None,
        from_version: int | StartAt = 0,
        filter: EventFilter | None = None,
        name: str | None = None,
        buffer_events: int = 10_000,
    ) -> Subscription:
        """A subscription: every event from ``from_position`` on (inclusive), history from
        disk first, then live events as they become durable, with no gap and no duplicate.

        ``from_position=es.END`` delivers only events committed after the subscription opens.
        ``stream=`` follows one stream from ``from_version`` (or ``es.END``) instead of the
        whole store. ``filter`` keeps only matching streams/types (whole-store only).
        ``name=`` makes a durable consumer: it starts after its last ``ack``-ed position when it
        has one (``from_position``/``from_version`` only apply to a new name).
        ``buffer_events`` bounds the live buffer; a consumer that falls further behind is moved
        back to reading from disk, never dropped, and the writer never waits for it.

        Use as ``async with store.subscribe(...) as sub: async for rec in sub: ...``.
        """
        self._require_open()
        if stream is not None:
            check_stream(stream)
            if filter is not None:
                raise ValueError("filter applies to whole-store subscriptions, not stream=")
            if from_position != 0:
                raise ValueError(
                    "a stream subscription starts at from_version=, not from_position="
                )
        elif from_version != 0:
            raise ValueError("from_version= needs stream=; a whole-store one takes from_position=")
        if not isinstance(from_position, StartAt):
            check_index("from_position", from_position)
        if not isinstance(from_version, StartAt):
            check_index("from_version", from_version)
        check_filter(filter)
        if name is not None:
            check_consumer_name(name)
        if not isinstance(buffer_events, int) or buffer_events < 1:
            raise ValueError(f"buffer_events must be an int >= 1, not {buffer_events!r}")
        sub = Subscription(
            index=self._index,
            reader=self._reader,
            hub=self._hub,
            checkpoints=self,
            on_close=self._subscriptions.discard,
            from_position=from_position,
            stream=stream,
            from_version=from_version,
            filter=filter,
            name=name,
            buffer_events=buffer_events,
        )
        self._subscriptions.add(sub)
        return sub

    def checkpoint(self, name: str) -> int | None:
        """The last position acknowledged by the named consumer, or None if it has none."""
        return self._checkpoints.get(name)

    async def save_checkpoint(self, name: str, position: int) -> None:
        """Durably record a named consumer's position (what ``Subscription.ack`` calls).

        Goes through the group commit as a checkpoint frame: cheap, durable on return, never
        seen by reads. A lower position than the saved one is ignored.
        """
        commit = self._require_open()
        name_b = check_consumer_name(name)
        if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position < 2**63:
            raise ValueError(f"checkpoint position must be an int in [0, 2**63), not {position!r}")
        if position <= self._checkpoints.get(name, -1):
            return  # not an advance: nothing to write
        fut: asyncio.Future[AppendResult | Recheck] = asyncio.get_running_loop().create_future()
        await commit.submit(PendingAppend(name, name_b, ANY, (), b"", fut, checkpoint=position))
        await fut  # the commit loop records it in self._checkpoints once durable
