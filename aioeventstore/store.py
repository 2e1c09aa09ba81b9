"""EventStore: the facade. Open and close, append, read, statistics.

Reading order for a newcomer: this module, then ``_commit.py`` (the group-commit loop), then
``_log.py`` / ``_segment.py`` (files on disk), ``_index.py`` and ``_codec.py``. What this
module delegates: building the state from the files at open (and following them, read-only)
to ``_open.py``, the ``statistics()`` snapshot to ``_store_stats.py``, argument checks to
``_checks.py``.

Threads: the event loop thread runs producers, the commit loop and the index. One I/O thread
(owned by the store) does every write and sync, one batch per hop. A small pool of reader
threads does ``pread`` and decoding for reads, so neither blocks the event loop. Snapshot files
(``_snapshots.py``) are written and read on two threads of their own, so a snapshot's fsync
never delays a commit batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import math
import os
import time
import warnings
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from typing import Any, Final, Literal, TypeVar, Unpack, overload
from weakref import WeakSet

from pydantic import BaseModel

from ._checks import (
    check_consumer_name,
    check_expected,
    check_filter,
    check_index,
    check_limit,
    check_snapshot,
    check_state_type,
    check_stream,
    check_subscription,
)
from ._commit import CommitLoop, MetaOp, PendingAppend, Recheck, SpecialAppend, failed_again
from ._compress import require
from ._fs import FileSystem, OsFileSystem
from ._index import Index
from ._indexfile import SidecarWriter
from ._iothread import IoThread
from ._log import Log, Recovery
from ._maintenance import Maintenance
from ._memfs import InlineExecutor, MemoryFileSystem, MemoryStorage
from ._meta import StreamMetadata, StreamMetas, check_max_age, check_max_count
from ._open import Opener
from ._prepare import Preparer
from ._reader import Reader
from ._scavenge import ScavengeReport
from ._snapshots import SnapshotFiles, Snapshots
from ._store_stats import StoreStatistics, gather
from ._subscriptions import LiveHub, Subscription
from ._verify import VerifyReport, verify_store
from .aggregate import Snapshot
from .errors import (
    EventStoreError,
    OpenFailed,
    ReadFailed,
    StoreClosed,
    StoreFailed,
    StoreReadOnly,
    WrongExpectedVersion,
)
from .events import (
    ANY,
    AppendResult,
    AppendSpec,
    Event,
    EventFilter,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StartAt,
)
from .options import OptionOverrides, StoreOptions

__all__ = [
    "EventStore",
    "MemoryStorage",
    "ScavengeReport",
    "StoreStatistics",
    "StreamMetadata",
    "Subscription",
]

MEMORY_PATH = ":memory:"
"""The path of an in-memory store (``EventStore.memory()``, or this path as SQLite takes it)."""

S = TypeVar("S", bound=BaseModel)
log = logging.getLogger("aioeventstore")
_new_tuple = tuple.__new__  # AppendResult without NamedTuple's Python-level __new__


def _not_open(*args: object) -> PendingAppend:
    raise AssertionError("appends are prepared only on an open, writable store")


def _no_future() -> asyncio.Future[Any]:
    raise AssertionError("futures are made only on an open, writable store")


def _forget(fut: asyncio.Future[Any]) -> None:
    """Retrieve an outcome nobody waits for any more (no "never retrieved" warning)."""
    if not fut.cancelled():
        fut.exception()


class _Unset(enum.Enum):
    UNSET = "unset"  # a keyword not given: keep that field as it is


_UNSET: Final = _Unset.UNSET


class EventStore:
    """An embedded, durable event store in one directory.

    ``async with EventStore("data/") as store:`` opens the directory (creating it if missing),
    recovers the log, starts the commit loop, and on exit commits what is queued, syncs, and
    stops every task and thread it started. Options are a :class:`StoreOptions` or its fields as
    keywords (``EventStore(path, durability="os")``).

    Opening raises :class:`StoreLocked` when another writer has the directory open, and
    :class:`CorruptLog` when the log is damaged other than by a torn tail (which is cut).

    ``EventStore(":memory:")`` (as in SQLite) is :meth:`EventStore.memory`: a store held in
    this process's memory, not a directory of that name.

    ``read_only=True`` opens an existing store for reading next to its writer (in this or
    another process): no lock, no commit loop, nothing on disk is ever changed (bytes at the
    end of the log that are not a whole frame count as not written yet, never cut). It
    follows the files, checking every ``poll_interval`` seconds, so reads, ``head`` and
    subscriptions see what the writer commits. Appends and checkpoints raise
    :class:`StoreReadOnly`; opening a directory that does not exist raises
    :class:`StoreNotFound`. It reads the page cache, so it can see a batch a moment before
    the writer's sync makes it durable.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        options: StoreOptions | None = None,
        *,
        read_only: bool = False,
        poll_interval: float = 0.1,
        _fs: FileSystem | None = None,
        **overrides: Unpack[OptionOverrides],
    ) -> None:
        if isinstance(poll_interval, bool) or not isinstance(poll_interval, (int, float)):
            raise TypeError(f"poll_interval must be a number of seconds, not {poll_interval!r:.60}")
        if not 0 < poll_interval < math.inf:
            raise ValueError(f"poll_interval must be > 0 seconds and finite, not {poll_interval!r}")
        self._read_only = bool(read_only)
        self._poll_interval = float(poll_interval)
        self._follow_task: asyncio.Task[None] | None = None
        self.follow_error: EventStoreError | None = None
        """Why a read-only store stopped following the log (None while it follows)."""
        self._sub_ids = itertools.count(1)
        self._path = os.fspath(path)
        if options is not None and not isinstance(options, StoreOptions):
            raise TypeError(
                f"options must be a StoreOptions, not {type(options).__name__} (give single "
                "options as keywords: EventStore(path, durability='os'))"
            )
        base = options if options is not None else StoreOptions()
        self._options = replace(base, **overrides) if overrides else base
        if _fs is None:
            _fs = MemoryFileSystem() if self._path == MEMORY_PATH else OsFileSystem()
        self._fs: FileSystem = _fs
        self._index = Index()
        self._log = Log(self._fs, self._path, self._options)
        self._io: Executor | None = None
        self._readers: Executor | None = None
        self._snapshot_io: Executor | None = None
        self._commit: CommitLoop | None = None
        self._writer: CommitLoop | None = None  # the commit loop while appends are accepted
        self._prepare: Callable[..., PendingAppend] = _not_open
        """Check and encode one append (``Preparer.prepare``, once open for writes). Its
        futures come from the loop's create_future, bound at open: every append's future is
        made on the loop the store was opened on (an append from another loop then fails
        loudly when it awaits that future, instead of being answered from the wrong
        thread)."""
        self._new_future: Callable[[], asyncio.Future[Any]] = _no_future
        """The loop's create_future, bound at open (see ``_prepare``): a checkpoint or
        metadata write from another loop then fails loudly too, instead of hanging."""
        self._loop: asyncio.AbstractEventLoop | None = None  # the one that opened it
        self._state = "new"  # new → open → closed
        self._closing: asyncio.Task[None] | None = None  # the closing, once close() began
        self._checkpoints: dict[str, int] = {}  # named consumer → last acknowledged position
        self._metas = StreamMetas()  # stream retention metadata (see _meta.py)
        self._reader = Reader(
            self._log,
            self._index,
            self._options.read_chunk_bytes,
            self._options.pause_gc_while_decoding,
            self._metas,
        )
        self._maintenance: Maintenance | None = None
        self._snapshots = Snapshots(
            SnapshotFiles(self._fs, self._path), self._index, self._reader, self._metas
        )
        self._hub = LiveHub()
        self._sidecars = SidecarWriter(self._log, self._index, self._fs)
        self._opener = Opener(
            self._fs,
            self._path,
            self._options,
            self._log,
            self._index,
            self._metas,
            self._checkpoints,
            self._snapshots.files,
        )
        self._subscriptions: WeakSet[Subscription] = WeakSet()
        self.recovery: Recovery | None = None
        """What opening found (None before open): segments, end position, any torn tail cut."""

    @classmethod
    def memory(
        cls,
        options: StoreOptions | None = None,
        *,
        storage: MemoryStorage | None = None,
        **overrides: Unpack[OptionOverrides],
    ) -> EventStore:
        """A store held in this process's memory, for tests and throw-away work.

        It runs the same engine as a disk store (segments, frames, index, commit loop and
        subscriptions over an in-memory file system), so it has the same semantics: every
        method, result, error and ordering guarantee is the disk store's. What differs is what
        "durable" means: an acknowledged append is in memory, which is all the durability
        there is; nothing survives the process, and ``durability`` changes nothing.

        Each call without ``storage`` starts from an empty store that no one else can reach.
        To open the same store again (to test a restart, a named consumer resuming, or
        recovery), pass the same :class:`MemoryStorage` each time; while one store has it
        open, opening another on it raises :class:`StoreLocked`, as for a directory.

        File operations are memory copies, so the store runs them inline on the event loop
        instead of on I/O threads. ``path`` is ``":memory:"``.
        """
        if storage is not None and not isinstance(storage, MemoryStorage):
            raise TypeError(f"storage must be an es.MemoryStorage, not {type(storage).__name__}")
        fs = storage._fs if storage is not None else MemoryFileSystem()
        return cls(MEMORY_PATH, options, _fs=fs, **overrides)

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
    def read_only(self) -> bool:
        """Whether the store was opened with ``read_only=True``."""
        return self._read_only

    @property
    def head(self) -> int:
        """Position of the last durable event, or -1 when the store is empty."""
        return self._index.head

    def stream_version(self, stream: str) -> int:
        """The version of ``stream``'s last durable event, -1 when it has none: what an append
        with an int ``expected_version`` is checked against. Events hidden by retention or a
        delete count (a soft-deleted stream's next event gets the next version), so this can
        be past the last event ``read_stream`` yields.
        """
        self._require_open()
        check_stream(stream)
        return self._index.committed_last_version(stream)

    async def open(self) -> EventStore:
        """Lock the directory, recover the log, and start the commit loop. Returns self.

        Raises :class:`StoreLocked` (another writer has the directory), :class:`CorruptLog`
        (damage recovery must not cut), :class:`StoreNotFound` (a read-only open of a missing
        directory), :class:`OpenFailed` (an OS error: I/O, permissions, a full disk), and
        :class:`StoreClosed` when ``close()`` was called before the open finished (the store
        is then closed, its lock released)."""
        if self._state != "new":
            done = "was closed" if self._state == "closed" else "was already opened"
            raise StoreClosed(f"store at {self._path} {done}; create a new EventStore")
        if self._options.compression == "zstd":
            require("StoreOptions.compression is 'zstd'")
        self._state = "opening"
        if isinstance(self._fs, MemoryFileSystem):  # nothing blocks: no thread to hop to
            self._io = self._readers = self._snapshot_io = InlineExecutor()
        else:
            self._io = IoThread("aioeventstore-io")
            self._readers = ThreadPoolExecutor(4, thread_name_prefix="aioeventstore-read")
            self._snapshot_io = ThreadPoolExecutor(2, thread_name_prefix="aioeventstore-snapshot")
        loop = self._loop = asyncio.get_running_loop()
        opener = self._opener  # the work is in _open.py
        window: dict[bytes, tuple[bytes, AppendResult]] = {}
        started = time.perf_counter()
        try:
            if self._read_only:
                await loop.run_in_executor(self._io, opener.open_read_only)
            else:
                await loop.run_in_executor(self._io, opener.open_writer, window)
        except BaseException as exc:
            self.recovery = opener.recovery
            self._state = "closed"
            # the cleaning up is the store's closing: a close() meanwhile waits for it
            cleanup = self._closing = loop.create_task(
                self._after_failed_open(), name="aioeventstore-close"
            )
            await asyncio.shield(cleanup)
            if isinstance(exc, OSError) and not isinstance(exc, EventStoreError):
                reason = f"opening the store at {self._path} failed: {exc.strerror or exc}"
                raise OpenFailed(exc.errno, reason, exc.filename) from exc
            raise
        self.recovery = opener.recovery
        if self._state != "opening":  # close() was called meanwhile: its task cleans up
            raise StoreClosed(f"store at {self._path} was closed while it was being opened")
        if log.isEnabledFor(logging.INFO):
            log.info(
                "opened %s%s: %d events, %d streams, %d segments in %.3f s",
                self._path,
                " read-only" if self._read_only else "",
                self._index.head + 1,
                self._index.stream_count(),
                len(self._log.segments),
                time.perf_counter() - started,
            )
        self._reader.executor = self._readers
        if isinstance(self._io, IoThread):
            self._reader.lend_gil = self._io.lend_gil
        self._snapshots.executor = self._snapshot_io
        if self._read_only:
            self._follow_task = loop.create_task(self._follow(), name="aioeventstore-follow")
            self._state = "open"
            return self
        self._commit = CommitLoop(
            self._log, self._index, self._options, self._io, window, self._checkpoints, self._metas
        )
        self._commit.listeners.append(self._hub.publish)
        self._commit.on_sealed = self._sidecars.export
        self._commit.background = self._sidecars
        self._sidecars.executor = self._io
        for ordinal in opener.unsaved:  # sealed segments that were scanned: save them now
            self._sidecars.export(ordinal)
        opener.unsaved = []
        self._maintenance = Maintenance(
            self._fs,
            self._log,
            self._index,
            self._options,
            self._commit,
            self._checkpoints,
            self._sidecars,
            self._io if isinstance(self._io, InlineExecutor) else None,
        )
        if self._options.retention_bytes is not None or self._options.retention_age is not None:
            self._commit.listeners.append(self._maintenance.on_commit)
        self._new_future = loop.create_future  # (see _prepare)
        self._prepare = Preparer(self._options, loop.create_future).prepare
        self._commit.start()
        self._state = "open"
        self._writer = self._commit
        return self

    def _chores(self) -> Executor | None:
        """Where closing runs its blocking steps: the loop's default executor, or inline for
        a memory store (which then starts no thread at all)."""
        return self._io if isinstance(self._io, InlineExecutor) else None

    async def _follow(self) -> None:
        """A read-only store's poller (``Opener.follow``); when it stops, subscriptions end."""
        assert self._io is not None and self._readers is not None
        self.follow_error = await self._opener.follow(
            self._io, self._readers, self._poll_interval, self._hub.refresh
        )
        for sub in list(self._subscriptions):
            sub._end()

    def _release_blocking(self) -> None:
        self._log.close()
        self._opener.release()

    async def _after_failed_open(self) -> None:
        """A failed open owns no more threads than a closed store (the I/O thread is running;
        the pools start theirs on first use, which never came), and no lock."""
        loop = asyncio.get_running_loop()
        chores = self._chores()
        try:
            for pool in dict.fromkeys((self._io, self._readers, self._snapshot_io)):
                if pool is not None:
                    await loop.run_in_executor(chores, pool.shutdown)
            await loop.run_in_executor(chores, self._release_blocking)
        except OSError:  # (the open's own error is the one to raise)
            log.exception("aioeventstore: cleaning up after a failed open of %s", self._path)

    async def close(self) -> None:
        """Commit what is queued, sync, stop every task and thread, release the lock.

        Idempotent: every call returns once the store is closed (a call made while another
        is closing waits for it). Appends after close raise :class:`StoreClosed`; reads
        already running end with it at their next step. Subscriptions end: their iteration
        stops (no exception); events they had not delivered yet are not delivered.

        The closing runs in a task of the store's: cancelling a caller of ``close`` does not
        stop it half way (the appends queued before it are still committed, the threads
        still stopped and the lock released); it goes on in the background.

        Raises :class:`StoreFailed` (its ``__cause__`` the OS error) when the final sync of
        the log fails, or, with ``durability="os"``, when the store had stopped after a
        failed write or sync (appends acknowledged since the last good sync may then not be
        durable; a reopen recovers what is on disk), to the calls made while it closed; the
        store is closed all the same, and a later ``close`` returns quietly.
        """
        closing = self._closing
        if closing is None:
            if self._state in ("closed", "new"):
                self._state = "closed"
                return
            self._state = "closed"
            self._writer = None
            closing = self._closing = asyncio.get_running_loop().create_task(
                self._close(), name="aioeventstore-close"
            )
        elif closing.done():  # closed before: its outcome went to the calls made meanwhile
            return
        await asyncio.shield(closing)

    async def _close(self) -> None:
        """The work of :meth:`close`, once (the store's closing task)."""
        loop = asyncio.get_running_loop()
        try:
            if self._follow_task is not None:
                self._follow_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._follow_task
            if self._maintenance is not None:
                await self._maintenance.close()
            if self._commit is not None:
                await self._commit.close()
                failure = self._commit.failure
                if failure is not None and self._options.durability == "os":
                    # stopped by a failed write or sync (maybe a maintenance one nobody
                    # awaited): what was acknowledged since the last good sync may be lost,
                    # and no sync can be believed now (see Log._sync)
                    raise StoreFailed(
                        f"closing the store at {self._path}: the store had stopped ({failure}); "
                        'appends acknowledged since the last sync with durability="os" may '
                        "not be durable (reopen to recover)"
                    ) from failure.__cause__
                if failure is None and self._io is not None:
                    try:
                        await loop.run_in_executor(self._io, self._log.sync)
                    except OSError as exc:  # (the closing goes on: threads, lock)
                        reason = exc.strerror or str(exc)
                        raise StoreFailed(
                            f"closing the store at {self._path}: syncing the log failed: "
                            f"{reason}; appends acknowledged since the last sync with "
                            'durability="os" may not be durable (reopen to recover)'
                        ) from exc
                    # the tail segment's sidecar: the next open then scans nothing
                    tail = len(self._log.segments) - 1
                    await loop.run_in_executor(self._io, self._sidecars.export_now, tail)
        finally:
            chores = self._chores()
            try:
                await loop.run_in_executor(chores, self._sidecars.drain)
            except Exception:  # (a cache: the threads must stop and the lock go all the same)
                log.exception("aioeventstore: finishing the index sidecars on close failed")
            self._sidecars.executor = None
            for sub in list(self._subscriptions):
                sub._end()
            self._reader.executor = None
            self._reader.lend_gil = None
            self._snapshots.executor = None
            # (one object in a memory store)
            for pool in dict.fromkeys((self._io, self._readers, self._snapshot_io)):
                if pool is not None:
                    await loop.run_in_executor(chores, pool.shutdown)
            await loop.run_in_executor(chores, self._release_blocking)
            if log.isEnabledFor(logging.INFO):
                st = self._commit.stats if self._commit is not None else None
                log.info(
                    "closed %s: %d events in %d batches written since open",
                    self._path,
                    st.events if st else 0,
                    st.batches if st else 0,
                )

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
        """A snapshot of counters (since open) and sizes. Cheap: no I/O but one ``fstat`` per
        segment; the commit loop pays a few integer operations per batch for it.
        ``es.prometheus_text(store.statistics())`` renders it for Prometheus."""
        return gather(self._commit, self._index, self._log, self._subscriptions)

    def checkpoints(self) -> dict[str, int]:
        """Every named consumer's last acknowledged position (a copy)."""
        return dict(self._checkpoints)

    def _require_open(self) -> None:
        if self._state != "open":
            raise StoreClosed(
                f"store at {self._path} is {self._state}; use it inside "
                "'async with EventStore(...)' or after 'await store.open()'"
            )

    def _require_loop(self) -> None:
        """RuntimeError when the caller runs on another event loop than the store's (whose
        futures would never wake it there): for calls that would otherwise hang or race."""
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(
                f"store at {self._path} belongs to the event loop that opened it, not this one "
                "(a different loop): hand the call over with "
                "asyncio.run_coroutine_threadsafe(..., store_loop)"
            )

    def _require_writer(self) -> CommitLoop:
        self._require_open()
        if self._read_only:
            raise StoreReadOnly(
                f"store at {self._path} was opened with read_only=True; open it without "
                "read_only to append, or to save checkpoints, snapshots or metadata"
            )
        assert self._commit is not None
        return self._commit

    async def verify(self) -> VerifyReport:
        """Check every frame of every segment on disk and report per segment (read-only).

        Runs on the store's I/O thread, between two commit batches, so a write in progress is
        never mistaken for a torn tail; appends wait while it runs. ``python -m aioeventstore
        verify PATH`` does the same for a store that is not open. On a read-only store, a
        write in progress in the writer's process may show as a torn tail. An I/O error
        reading the files raises :class:`ReadFailed`.
        """
        self._require_open()
        self._require_loop()
        assert self._io is not None
        run = asyncio.get_running_loop().run_in_executor
        try:
            if self._maintenance is None:  # read-only: no scavenge of ours to wait for
                return await run(self._io, verify_store, self._path, self._fs, self._options)
            async with self._maintenance.lock:  # never while a scavenge swaps files
                return await run(self._io, verify_store, self._path, self._fs, self._options)
        except OSError as exc:
            if isinstance(exc, EventStoreError):
                raise
            reason = f"verifying the store at {self._path} failed: {exc.strerror or exc}"
            raise ReadFailed(exc.errno, reason, exc.filename) from exc

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
        input, in the caller's task, before anything is queued. An empty sequence is bad
        input (ValueError): an append has a position to return, and a version check alone is
        :meth:`stream_version`.

        Idempotent retries: re-appending the same event ids (``NewEvent(id=...)``) to the same
        stream returns the first result and writes nothing. With an explicit expected version
        (an int or ``NO_STREAM``) this is exact: the ids stored at those versions are compared.
        With ``ANY`` it holds within the last ``idempotency_window`` appends.

        If the calling task is cancelled while waiting, its events may still be committed
        (when their batch was already being written); retrying with the same ids is safe.
        """
        commit = self._writer
        if commit is None:
            commit = self._require_writer()  # raises
        pending = self._prepare(stream, events, expected_version)
        if not commit.try_submit(pending):  # the queue is full (or the store stopped): wait
            await commit.submit(pending)
        outcome = await pending.future
        if outcome is None:  # PendingAppend.result(), inline
            n = pending.count - 1
            if not n:
                return _new_tuple(AppendResult, (pending.position, pending.first_version))
            return _new_tuple(AppendResult, (pending.position + n, pending.first_version + n))
        if type(outcome) is AppendResult:
            return outcome
        assert isinstance(outcome, Recheck)
        return await self._recheck(stream, pending.expected, pending.ids, outcome)

    @overload
    async def append_many(
        self,
        appends: Iterable[AppendSpec],
        *,
        return_exceptions: Literal[False] = False,
    ) -> list[AppendResult]: ...

    @overload
    async def append_many(
        self,
        appends: Iterable[AppendSpec],
        *,
        return_exceptions: Literal[True],
    ) -> list[AppendResult | EventStoreError]: ...

    async def append_many(
        self,
        appends: Iterable[AppendSpec],
        *,
        return_exceptions: bool = False,
    ) -> list[AppendResult] | list[AppendResult | EventStoreError]:
        """Several appends from one task, with one wait: each ``(stream, events)`` or
        ``(stream, events, expected_version)`` is an :meth:`append` of its own (atomic, its
        expected version checked on its own, idempotent retries as there), queued in order
        in one step, so they usually share one commit batch and one fsync.

        What it saves against ``asyncio.gather`` of as many ``append`` calls is a task and a
        coroutine per append: the bulk path for an importer or a projection that has many
        appends for many streams at hand. It is not a transaction across streams: when one
        append fails (``WrongExpectedVersion``, say) the others are still written. Every
        append is validated and encoded before any is queued, so bad input raises
        (TypeError/ValueError/:class:`EventTooLarge`) with nothing written.

        Returns the results in order once every append is resolved. Raises the first
        failure then, or with ``return_exceptions=True`` puts each failure (an
        :class:`EventStoreError`) in its place in the list. Cancellation is as for
        :meth:`append`: appends already being written may still be committed. When the
        store is closed (or stops) while the call waits for queue space, the appends already
        queued are answered (written, when it was closed), and the rest get that
        :class:`StoreClosed` (or :class:`StoreFailed`).
        """
        commit = self._require_writer()
        self._require_loop()  # (asyncio.wait below would wait forever on another loop)
        pendings: list[PendingAppend] = []
        try:
            specs = iter(appends)
        except TypeError:
            raise TypeError(
                "append_many takes an iterable of (stream, events) or (stream, events, "
                f"expected_version) tuples, not {type(appends).__name__}"
            ) from None
        for i, spec in enumerate(specs):
            if not isinstance(spec, tuple) or len(spec) not in (2, 3):
                raise TypeError(
                    f"append_many: item {i} must be a (stream, events) or (stream, events, "
                    f"expected_version) tuple, not {type(spec).__name__}"
                )
            expected = spec[2] if len(spec) == 3 else ANY
            pendings.append(self._prepare(spec[0], spec[1], expected))
        queued = 0
        refused: EventStoreError | None = None
        try:
            for pending in pendings:
                if not commit.try_submit(pending):
                    try:
                        await commit.submit(pending)
                    except EventStoreError as exc:  # closed or stopped while it waited:
                        refused = exc  # this one and the rest were never queued, and those
                        break  # queued are written and answered (close commits them)
                queued += 1
            if queued:
                await asyncio.wait([p.future for p in pendings[:queued]])
        except BaseException:
            for pending in pendings[:queued]:  # as a cancelled append: dropped unless the
                pending.future.cancel()  # commit loop already took it into a batch
                pending.future.add_done_callback(_forget)
            raise
        if refused is not None:  # each in its place, as single appends would have been told
            for pending in pendings[queued:]:
                pending.future.set_exception(failed_again(refused))
        results: list[AppendResult | EventStoreError] = []
        try:
            for pending in pendings:
                try:
                    outcome = pending.future.result()
                    if outcome is None:
                        outcome = pending.result()
                    elif type(outcome) is not AppendResult:
                        assert isinstance(outcome, Recheck)
                        outcome = await self._recheck(
                            pending.stream, pending.expected, pending.ids, outcome
                        )
                except EventStoreError as exc:
                    if not return_exceptions:
                        raise
                    results.append(exc)
                else:
                    results.append(outcome)
        except BaseException:  # the first failure, or cancelled in a recheck: the outcomes
            for pending in pendings:  # not looked at are retrieved (asyncio would log each
                _forget(pending.future)  # failure as "never retrieved")
            raise
        return results

    async def _recheck(
        self, stream: str, expected: ExpectedVersion, ids: bytes, outcome: Recheck
    ) -> AppendResult:
        """An explicit expected version the stream has moved past: a retry of the same ids
        (16 bytes each, back to back) returns the original result; anything else is a
        conflict."""
        count = len(ids) >> 4
        first, last = outcome.first_version, outcome.first_version + count - 1
        if first < self._index.first_version(stream):  # removed from the log: not comparable
            raise WrongExpectedVersion(stream, expected, outcome.actual)
        # (now: a scavenge or retention may remove those versions while their ids are read
        # from the files the read pinned)
        position = self._index.position_of(stream, last)
        stored = await self._reader.stream_ids(stream, first, count)
        if b"".join(stored) == ids:
            return AppendResult(position, last)
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
    ) -> AsyncGenerator[RecordedEvent, None]:
        """The durable events of one stream, in version order (or reverse with ``backwards``).

        ``from_version`` is inclusive; it defaults to 0 (forwards) or the last version
        (backwards). A stream with no events yields nothing. Reads stream from disk in chunks
        of ``read_chunk_bytes`` off the event loop (bytes already in the page cache are read
        and decoded on it, up to 448 KiB or 2,048 events at a time: that takes less than the
        trip to a thread), and may run while appends go on: it reads
        up to the stream's last version as it is when the read starts (events committed
        while iterating are left to the next read or to a subscription; uncommitted ones are
        never read).
        With ``raw=True`` ``rec.data`` is the stored dict and no model is built (faster, and
        readable whatever the registered classes say).
        """
        self._require_open()
        self._require_loop()
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
        metas, index = self._metas, self._index
        last = None if backwards else index.committed_last_version(stream)
        while remaining is None or remaining > 0:
            self._require_open()
            if stream in metas.durable:  # skip what is hidden by version, unread
                visible = metas.durable[stream].first_visible(index.committed_last_version(stream))
                if backwards and version < visible:
                    return
                version = max(version, visible)
            cap = remaining
            if last is not None:  # forwards: no further than the last version at the start
                # (retention or a scavenge may have removed versions since the last chunk:
                # the read goes on at the oldest left, and the cap counts from there)
                version = max(version, index.first_version(stream))
                if version > last:
                    return
                cap = last - version + 1 if cap is None else min(cap, last - version + 1)
            chunk = await self._reader.stream_chunk(stream, version, backwards, cap, raw)
            if chunk is None:
                return
            records, version = chunk
            if stream in metas.durable:  # metadata written while the chunk was read
                records = [r for r in records if not metas.is_hidden(index, r)]
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
    ) -> AsyncGenerator[RecordedEvent, None]:
        """Every durable event of the store in position order (or reverse with ``backwards``).

        Reads up to the head as it is when the read starts: events committed while it runs
        are left to the next read or to a subscription (a read that took in every new event
        might never end on a busy store).
        ``from_position`` is inclusive; it defaults to 0 (forwards) or the head (backwards).
        ``filter`` keeps only matching streams/types (``limit`` counts what passes); events
        filtered out are never decoded. Streams from disk in bounded chunks off the event loop
        (a small chunk already in the page cache on it, as for ``read_stream``);
        sees only committed events. ``raw=True``: ``rec.data`` is the stored dict, no model.
        """
        self._require_open()
        self._require_loop()
        check_limit(limit)
        check_filter(filter)
        if from_position is None:
            from_position = self._index.head if backwards else 0
        else:
            check_index("from_position", from_position)
        pos = min(from_position, self._index.head) if backwards else from_position
        until = None if backwards else self._index.head
        remaining = limit
        if remaining == 0:
            return

        def fetch(
            at: int, left: int | None
        ) -> asyncio.Future[tuple[list[RecordedEvent], int] | None]:
            return asyncio.ensure_future(
                self._reader.all_chunk(
                    at, backwards, left if filter is None else None, filter, raw, until
                )
            )

        # The next chunk is read and decoded on a reader thread while the caller consumes
        # this one (a small one in memory: on this thread, when the caller next waits): at
        # most two chunks are held at a time.
        self._require_open()
        nxt: asyncio.Future[tuple[list[RecordedEvent], int] | None] | None = fetch(pos, remaining)
        try:
            while nxt is not None:
                chunk = await nxt
                nxt = None
                self._require_open()
                if chunk is None:
                    return
                records, pos = chunk
                if self._metas.durable:  # metadata written while the chunk was read
                    records = [r for r in records if not self._metas.is_hidden(self._index, r)]
                if remaining is not None:
                    records = records[:remaining]
                    remaining -= len(records)
                if remaining is None or remaining > 0:
                    nxt = fetch(pos, remaining)
                for rec in records:
                    yield rec
        finally:
            if nxt is not None:  # the caller stopped early: drop the chunk read ahead
                if not nxt.done():
                    nxt.cancel()
                elif not nxt.cancelled():
                    nxt.exception()  # retrieved: a failed read-ahead nobody needs is no error

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
        if asyncio._get_running_loop() not in (None, self._loop):  # (made outside one: fine)
            self._require_loop()
        check_subscription(stream, from_position, from_version, filter, name, buffer_events)
        sub = Subscription(
            metas=self._metas,
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
            check_loop=self._require_loop,
        )
        sub.id = next(self._sub_ids)
        self._subscriptions.add(sub)
        return sub

    def checkpoint(self, name: str) -> int | None:
        """The last position acknowledged by the named consumer, or None if it has none."""
        return self._checkpoints.get(name)

    async def save_checkpoint(self, name: str, position: int) -> None:
        """Durably record a named consumer's position (what ``Subscription.ack`` calls).

        Goes through the group commit as a checkpoint frame: cheap, durable on return, never
        seen by reads. A lower position than the saved one is ignored. Raises ValueError for a
        position past the store's head (no event there was ever delivered: a consumer resuming
        after it would skip the events appended up to it).
        """
        commit = self._require_writer()
        self._require_loop()
        name_b = check_consumer_name(name)
        if not isinstance(position, int) or isinstance(position, bool):
            raise TypeError(f"checkpoint position must be an int, not {position!r:.60}")
        if not 0 <= position <= self._index.head:
            where = (
                f"in [0, {self._index.head}] (the head)"
                if self._index.head >= 0
                else "and the store has no events yet"
            )
            raise ValueError(
                f"checkpoint position for consumer {name!r} must be the position of an event "
                f"in the store, {where}, not {position!r:.60}"
            )
        if position <= self._checkpoints.get(name, -1):
            return  # not an advance: nothing to write
        fut: asyncio.Future[AppendResult | Recheck | None] = self._new_future()
        await commit.submit(SpecialAppend(name, name_b, ANY, fut, checkpoint=position))
        await fut  # the commit loop records it in self._checkpoints once durable

    # --- snapshots --------------------------------------------------------------------------
    async def save_snapshot(self, stream: str, state: BaseModel, version: int) -> bool:
        """Durably save ``state`` (any pydantic model) as the state of ``stream`` after its
        events ``0..version``; ``load_snapshot`` and ``es.load_aggregate`` start from it.

        Durable when it returns: the snapshot file is written under a temporary name, synced,
        renamed over the previous one and the directory synced, so a crash at any moment leaves
        the previous snapshot or this one, never a mix. The state is encoded when called (later
        changes to the model are not saved). Snapshots are files beside the log: they never go
        through the commit loop, never delay an append, and reads and subscriptions never see
        them. One snapshot is kept per stream, the newest: returns True when this one was
        written, False when the stored one has a higher version (nothing written). If the
        calling task is cancelled, the save may still complete.

        Raises :class:`SnapshotVersionError` unless ``0 <= version <=`` the stream's last
        committed version (a stream with no events has no snapshot) and that version's event
        is still in the log (retention and scavenging remove a stream's oldest events; a
        snapshot is checked against its event whenever it is loaded), :class:`SnapshotFailed`
        when the file system refuses (the previous snapshot stays), :class:`StreamDeleted`
        for a hard-deleted stream, :class:`StoreClosed`, TypeError/ValueError for a state that
        is not a model or cannot be stored, and :class:`StoreReadOnly` for a read-only store
        (it changes nothing on disk).
        """
        self._require_writer()
        self._require_loop()
        check_stream(stream)
        check_snapshot(state, version)
        return await self._snapshots.save(stream, state, version)

    async def load_snapshot(self, stream: str, state_type: type[S]) -> Snapshot[S] | None:
        """The latest snapshot of ``stream`` as ``Snapshot(state, version)``, or None.

        A snapshot is a cache of what the stream's events define, so whatever makes one
        unusable makes this return None (and log a warning on the ``"aioeventstore"`` logger)
        instead of raising: a damaged file (its CRC32C does not match), a snapshot saved from
        a model class other than ``state_type`` and its subclasses (by ``__qualname__``) or
        that the class no longer validates, and one that no longer matches the log: past the
        stream's last committed version, or whose event at ``version`` is not the one it was
        saved for (after ``repair`` cut the log, or a power cut lost appends acknowledged with
        ``durability="os"``), or whose event retention or scavenging removed from the log (it
        can no longer be checked: keep a snapshot's event, truncating a stream before a
        version at most the snapshot's), or whose event the stream's metadata now hides (a
        delete, ``truncate_before`` or ``max_count`` past it: its state holds events reads no
        longer yield; not ``max_age``). The next ``save_snapshot`` of the stream replaces an
        unusable snapshot.

        Raises :class:`SnapshotFailed` when the file cannot be read (an OS error),
        :class:`StoreClosed`, and TypeError when ``state_type`` is not a pydantic model class.
        """
        self._require_open()
        self._require_loop()
        check_stream(stream)
        check_state_type(state_type)
        return await self._snapshots.load(stream, state_type)

    # --- retention and deletion (the work is in _meta.py, _maintenance.py, _scavenge.py) ----
    def stream_metadata(self, stream: str) -> StreamMetadata:
        """The stream's durable retention metadata (all defaults when it never had any)."""
        self._require_open()
        check_stream(stream)
        return self._metas.public(stream, self._index)

    async def set_stream_metadata(
        self,
        stream: str,
        *,
        max_count: int | _Unset | None = _UNSET,
        max_age: timedelta | float | _Unset | None = _UNSET,
        truncate_before: int | _Unset | None = _UNSET,
    ) -> StreamMetadata:
        """Change a stream's retention: only the fields given change (None clears one).

        ``max_count``: keep the newest *n* events visible (n >= 1). ``max_age``: hide events
        recorded longer ago (a timedelta or seconds). ``truncate_before``: hide versions below
        it (at most the stream's last version + 1). Durable on return, written through the
        group commit as a metadata frame; from then on reads and subscriptions skip the
        hidden events (already-delivered ones are not recalled). Hidden events keep their
        disk space until ``scavenge()``. Lowering a limit shows events again unless a
        scavenge removed them. Raises :class:`StreamDeleted` for a hard-deleted stream,
        ValueError for a ``truncate_before`` past the end or a bad value, TypeError for a
        ``max_age`` that is not a timedelta or a number.
        """
        commit = self._require_writer()
        self._require_loop()
        stream_b = check_stream(stream)
        changes: dict[str, object] = {}
        if not isinstance(max_count, _Unset):
            changes["max_count"] = check_max_count(max_count)
        if not isinstance(max_age, _Unset):
            changes["max_age"] = check_max_age(max_age)
        if not isinstance(truncate_before, _Unset):
            if truncate_before is not None:
                check_index("truncate_before", truncate_before)
            changes["truncate_before"] = truncate_before
        return await self._write_meta(commit, stream, stream_b, ANY, MetaOp("set", changes))

    async def delete_stream(
        self, stream: str, *, expected_version: ExpectedVersion = ANY, hard: bool = False
    ) -> StreamMetadata:
        """Delete a stream: hide every event it holds now (durable on return).

        Soft (default): like KurrentDB, this sets ``truncate_before`` to the last version + 1
        and marks the stream deleted. ``read_stream`` then yields nothing, and the stream
        can be appended to again: the next event gets the next version (e.g. 5 after versions
        0..4 were deleted), ``read_stream`` shows only the new events, and ``deleted`` turns
        False. ``hard=True`` writes a permanent tombstone: reads yield nothing (they do not
        raise), later appends and metadata changes raise :class:`StreamDeleted`, and the
        stream's snapshot file is removed. Either way ``scavenge()`` frees the space.
        ``expected_version`` is checked as for ``append`` (:class:`WrongExpectedVersion`,
        nothing written).
        """
        commit = self._require_writer()
        self._require_loop()
        stream_b = check_stream(stream)
        expected_version = check_expected(expected_version)
        op = MetaOp("delete", hard=bool(hard))
        meta = await self._write_meta(commit, stream, stream_b, expected_version, op)
        if hard:  # its snapshot can never be used again: its file goes too
            await self._snapshots.drop(stream)
        return meta

    async def _write_meta(
        self,
        commit: CommitLoop,
        stream: str,
        stream_b: bytes,
        expected: ExpectedVersion,
        op: MetaOp,
    ) -> StreamMetadata:
        fut: asyncio.Future[AppendResult | Recheck | None] = self._new_future()
        await commit.submit(SpecialAppend(stream, stream_b, expected, fut, meta=op))
        await fut  # durable: the commit loop applied it to self._metas
        return self._metas.public(stream, self._index)

    async def scavenge(self) -> ScavengeReport:
        """Free the disk space of hidden events; returns once done, with a report.

        Rewrites sealed segments (never the one being written) without the frames whose
        events are all hidden by stream metadata (and superseded checkpoint and metadata
        frames), or removes a segment left empty. Surviving events keep their positions: the
        log then has gaps, and a stream may start at a version above 0 on disk. A frame only
        partly hidden is kept; its hidden events stay skipped by reads. A stream's last event
        is kept unless a delete or ``truncate_before`` covers it. The metadata in force when
        it starts is applied. Runs on its own thread in the background: appends and reads go
        on meanwhile, and a read planned before a segment is swapped reads the old file.
        Crash-safe (temp file, sync, rename, directory sync). Cancelling the caller does not
        stop it; closing the store does (the caller then gets :class:`StoreClosed`). A call
        while one runs waits for that one. Raises :class:`MaintenanceFailed` on an I/O error
        (what was done stays done), :class:`StoreFailed` when the sync it makes first with
        ``durability="os"`` fails (the store is then stopped, as after a failed batch sync),
        and :class:`StoreReadOnly` for a read-only store.
        """
        self._require_writer()
        self._require_loop()
        assert self._maintenance is not None
        return await self._maintained(self._maintenance.start_scavenge())

    def start_scavenge(self) -> asyncio.Future[ScavengeReport]:
        """Start ``scavenge()`` in the background (owned by the store) and return at once;
        await the result for the report. Each call gets a future of its own: cancelling it
        (a timeout around the await, say) does not stop the run, and it raises what
        ``scavenge()`` raises (:class:`StoreClosed` when closing the store stopped the run).
        Its failure need not be retrieved: the store logs it."""
        self._require_writer()
        self._require_loop()
        assert self._maintenance is not None
        result = asyncio.ensure_future(self._maintained(self._maintenance.start_scavenge()))
        result.add_done_callback(_forget)
        return result

    async def enforce_retention(self) -> ScavengeReport:
        """Apply ``StoreOptions.retention_bytes``/``retention_age`` now: drop whole oldest
        sealed segments past them (also done after each rotation when they are set), one at
        a time. The current checkpoint and metadata frames in a segment, and the end of every
        stream whose events all go with it, are first written at the end of the log and
        synced, so nothing but events is lost. Raises :class:`MaintenanceFailed` on an I/O
        error, :class:`StoreFailed`, :class:`StoreClosed` and :class:`StoreReadOnly` as
        ``scavenge()`` does."""
        self._require_writer()
        self._require_loop()
        assert self._maintenance is not None
        return await self._maintained(self._maintenance.start_retention())

    async def _maintained(self, run: asyncio.Future[ScavengeReport]) -> ScavengeReport:
        """Await a maintenance run (shielded: cancelling the caller does not stop it); one
        that closing the store stopped raises StoreClosed in the caller, as other calls in
        flight do, not a CancelledError in a task nobody cancelled."""
        try:
            return await asyncio.shield(run)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if run.cancelled() and (task is None or not task.cancelling()):
                raise StoreClosed(
                    f"the store at {self._path} was closed while the maintenance run went on"
                ) from None
            raise
