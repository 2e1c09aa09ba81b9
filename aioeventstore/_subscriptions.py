"""Subscriptions: history from disk, then the live fan-out, with no gap and no duplicate.

A subscription has a cursor: the next position (whole-store subscriptions) or the next version
(stream subscriptions) it has not yet examined. It reads history from disk in chunks until the
cursor passes what is committed; then, in the same synchronous step (no ``await`` in between,
so no batch can be published in between), it registers with the :class:`LiveHub`. The hub is
called by the commit loop after each batch is durable and pushes that batch's events to every
live subscription. Nothing is ever delivered before it is durable.

Each live subscription has a bounded buffer. The hub never waits: when a push would overflow
the buffer, the subscription leaves the hub, keeps what it had buffered (which is contiguous
with its cursor), and once that is delivered reads the rest from disk and rejoins live later.
So a slow consumer never slows the writer, is never dropped, and never sees a gap.

Threads: everything here runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, cast

from ._codec import TYPE_FIELDS, recorded_at, unpack_metadata, unpack_stored
from ._format import ENTRY_HEAD, ENTRY_HEAD_SIZE
from ._index import Index
from ._meta import StreamMetas
from ._reader import Reader
from ._schema import validator
from .errors import StoreClosed
from .events import END, NO_METADATA, Event, EventFilter, RecordedEvent, StartAt

if TYPE_CHECKING:
    from ._commit import PendingAppend

log = logging.getLogger("aioeventstore")
_new_tuple = tuple.__new__


def build_records(
    item: PendingAppend,
    first_position: int,
    when: datetime,
    keeps: Callable[[str, str], bool] | None = None,
) -> list[RecordedEvent]:
    """The RecordedEvents of one committed append, from what its producer queued.

    An event of a class whose stored form is its instance's fields as they are (str, int,
    bool, None: ``plain_fields``), immutable and frozen, is handed over as it is: no copy,
    no decoding. Any other event is made again from the bytes stored, as a read makes it:
    its JSON-mode dump may differ from the instance (excluded fields, serializers), and the
    producer may still change a list or dict inside it; live
    events and replayed ones must be the same. (Should that fail, which a read of it would
    report, the producer's instance is handed over.) ``keeps(stream, type name)``: whether
    some live subscriber may keep such an event (None: all may); the others are never
    delivered, so they are not made again.
    """
    out = []
    metas = item.metas
    version = item.first_version
    source = item.source
    if isinstance(source, Event):  # a one-event append keeps its event as it is
        source = (source,)
    stored: list[bytes] | None = None
    for k in range(item.count):
        src = source[k]
        event = src if isinstance(src, Event) else src.event
        cls = type(event)
        fields = TYPE_FIELDS.get(cls)
        if (  # (not a plain, frozen class: see above)
            fields is None or fields[4] < 0 or not cls.model_config.get("frozen")
        ) and (keeps is None or keeps(item.stream, event.__event_type__)):
            if stored is None:
                stored = _stored_data(item)
            with contextlib.suppress(Exception):
                event = validator(cls)(unpack_stored(stored[k]))
        meta = unpack_metadata(metas[k]) if metas is not None else NO_METADATA
        out.append(
            _new_tuple(
                RecordedEvent,
                (
                    item.stream,
                    version + k,
                    first_position + k,
                    item.ids[k << 4 : (k + 1) << 4],
                    event.__event_type__,
                    event,
                    meta,
                    when,
                ),
            )
        )
    return out


def _stored_data(item: PendingAppend) -> list[bytes]:
    """Each event's data as the append's frame stores it (its entries follow the stream's
    name in ``item.tail``; see FORMAT.md)."""
    tail, at = item.tail, len(item.stream_b)
    out = []
    for _ in range(item.count):
        size, _id, type_len, meta_len = ENTRY_HEAD.unpack_from(tail, at)
        start = at + ENTRY_HEAD_SIZE + type_len + meta_len
        at += 4 + size
        out.append(tail[start:at])
    return out


class LiveHub:
    """Fan-out of durable batches to live subscriptions (event loop thread only)."""

    def __init__(self) -> None:
        self._all: set[Subscription] = set()
        self._by_stream: dict[str, set[Subscription]] = {}
        self._failures = 0  # fan-out failures not logged yet (see publish)
        self._logged_at = -math.inf

    def __len__(self) -> int:
        return len(self._all) + sum(len(s) for s in self._by_stream.values())

    def add(self, sub: Subscription) -> None:
        """Start pushing batches to ``sub``."""
        if sub.stream is None:
            self._all.add(sub)
        else:
            self._by_stream.setdefault(sub.stream, set()).add(sub)

    def remove(self, sub: Subscription) -> None:
        """Stop pushing to ``sub`` (idempotent)."""
        if sub.stream is None:
            self._all.discard(sub)
        else:
            subs = self._by_stream.get(sub.stream)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_stream[sub.stream]

    def publish(
        self, first: int, last: int, appends: list[PendingAppend], recorded_us: int
    ) -> None:
        """Push a durable batch to every live subscription (the commit loop's listener).

        Records are built once per batch and shared; a stream subscription only gets (and
        only costs) the appends of its own stream. Should building them fail, every live
        subscription goes back to reading from disk (as after a buffer overflow), where it
        reads these events or the error that stops it: never a silent gap.
        """
        if not self._all and not self._by_stream:
            return
        try:
            self._fan_out(first, last, appends, recorded_us)
        except Exception:
            self.refresh()
            self._failures += 1
            now = time.monotonic()
            if now - self._logged_at >= 60.0:  # (once a minute: it may fail for every batch)
                self._logged_at = now
                log.exception(
                    "aioeventstore: live fan-out failed (%d times since the last such "
                    "message); subscriptions read from disk",
                    self._failures,
                )
                self._failures = 0

    def _fan_out(
        self, first: int, last: int, appends: list[PendingAppend], recorded_us: int
    ) -> None:
        when = recorded_at(recorded_us)
        everything: list[RecordedEvent] = []  # shared by every subscriber, as a tuple
        by_stream = self._by_stream
        pos = first
        for item in appends:
            subs = by_stream.get(item.stream)
            if subs or self._all:
                # (a stream subscription keeps all its stream's events)
                records = build_records(item, pos, when, None if subs else self._keeps)
                if subs:
                    own = tuple(records)
                    for sub in list(subs):
                        sub._push(own, own[-1].position)
                everything += records
            pos += item.count
        if self._all:
            shared = tuple(everything)
            for sub in list(self._all):
                sub._push(shared, last)

    def _keeps(self, stream: str, type_name: str) -> bool:
        """Whether some whole-store subscription's filter keeps events of this stream and
        type (see ``build_records``; asked only for events of classes that are not plain)."""
        for sub in self._all:
            filt = sub.filter
            if filt is None or filt.matches_names(stream, type_name):
                return True
        return False

    def refresh(self) -> None:
        """New events were found on disk (a read-only store following the files): every live
        subscription leaves the hub and reads them from disk, as after a buffer overflow."""
        for sub in list(self._all):
            sub._back_to_disk()
        for subs in list(self._by_stream.values()):
            for sub in list(subs):
                sub._back_to_disk()

    def close_all(self) -> None:
        """End every live subscription (store closing)."""
        for sub in list(self._all):
            sub._end()
        for subs in list(self._by_stream.values()):
            for sub in list(subs):
                sub._end()


class Checkpointer(Protocol):
    """What a named subscription needs of the store to save and load its position."""

    def checkpoint(self, name: str) -> int | None: ...
    def save_checkpoint(self, name: str, position: int) -> Awaitable[None]: ...


def _anywhere() -> None:
    """No loop check (a subscription made without a store's)."""


class Subscription:
    """An async iterator of RecordedEvent: history first, then live events, never a gap.

    Use it as ``async with store.subscribe(...) as sub: async for rec in sub: ...``. Leaving
    the ``async with``, calling ``aclose()``, or closing the store ends it: iteration then stops
    (``StopAsyncIteration``), it does not raise. Cancelling the consuming task is harmless.

    * ``await sub.caught_up()`` returns once the subscription has delivered everything that was
      committed at that moment (at once if it already has).
    * ``sub.lag``: events committed but not yet examined by this subscription (whole-store:
      positions; stream subscriptions: versions of that stream).
    * ``await sub.ack(rec)`` (named subscriptions only) durably saves ``rec.position`` so that a
      subscription with the same name resumes after it, also after a restart.
    * ``sub.filter``: the EventFilter it was created with (None: every event).
    """

    def __init__(
        self,
        *,
        index: Index,
        reader: Reader,
        hub: LiveHub,
        checkpoints: Checkpointer,
        on_close: Callable[[Subscription], None],
        from_position: int | StartAt,
        stream: str | None,
        from_version: int | StartAt,
        filter: EventFilter | None,
        name: str | None,
        buffer_events: int,
        metas: StreamMetas | None = None,
        check_loop: Callable[[], None] | None = None,
    ) -> None:
        self.stream = stream
        """The stream followed, or None for the whole store."""
        self.name = name
        """The durable consumer name, or None."""
        self.filter = filter
        self._index = index
        self._metas = metas if metas is not None else StreamMetas()
        self._reader = reader
        self._hub = hub
        self._checkpoints = checkpoints
        self._on_close = on_close
        # the store's check that the caller runs on its loop (live events are handed over on
        # it: nothing would wake a wait on another, and reads there would race it)
        self._check_loop: Callable[[], None] = check_loop if check_loop is not None else _anywhere
        self._from_position = from_position
        self._from_version = from_version
        self._cap = buffer_events
        self._cursor = 0  # next position (whole store) or version (stream) not yet examined
        self._start = 0
        self._cur: Sequence[RecordedEvent] = ()
        self._i = 0
        self._cur_end = -1  # position (or version) through which _cur covers the log
        self._mark_at = -1  # 1-based index in _cur whose delivery reaches the head, or -1
        self._gen: AsyncGenerator[RecordedEvent, None] | None = None
        self._through = -1  # position/version through which everything was delivered
        self._buffer: deque[tuple[Sequence[RecordedEvent], int]] = deque()
        self._buffered = 0
        self._live = False
        self._waiter: asyncio.Future[None] | None = None
        self._state = "new"  # new → open → closed
        self._caught_up = asyncio.Event()
        self._reached_head = False
        self._acked = -1
        self.overflows = 0
        """How many times the live buffer overflowed and the subscription went back to disk."""
        self.id = 0
        """A number unique within its store (``statistics().subscribers`` key when unnamed)."""

    # --- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> Subscription:
        self._check_loop()
        self._open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _open(self) -> None:
        if self._state != "new":
            if self._state == "closed":
                raise StoreClosed("this subscription is closed")
            return
        self._state = "open"
        index = self._index
        saved = self._checkpoints.checkpoint(self.name) if self.name is not None else None
        if self.stream is None:
            if saved is not None:
                self._cursor = saved + 1
            elif self._from_position is END:
                self._cursor = index.head + 1
            else:
                assert isinstance(self._from_position, int)
                self._cursor = self._from_position
            self._through = self._cursor - 1
        else:
            if saved is not None:
                self._cursor = index.committed_version_after(self.stream, saved)
            elif self._from_version is END:
                self._cursor = index.committed_last_version(self.stream) + 1
            else:
                assert isinstance(self._from_version, int)
                self._cursor = self._from_version
            self._through = self._cursor - 1
        self._start = self._cursor  # a start past the head skips live events before it
        self._go_live()  # with no history to read, it is live (and caught up) from the start

    async def aclose(self) -> None:
        """End the subscription and release what it holds (idempotent). RuntimeError on
        another event loop than the store's."""
        self._check_loop()
        self._end()

    def _end(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        self._hub.remove(self)
        self._live = False
        self._buffer.clear()
        self._buffered = 0
        self._cur = ()
        self._i = 0
        # The iterator left suspended (a consumer that broke out of ``async for``) holds the
        # list it was handing out, and this subscription: let it go, or the two keep each
        # other (and a whole chunk of records) alive until a full collection. A consumer
        # still iterating holds it itself, and it ends at its next step.
        self._gen = None
        self._wake()
        self._caught_up.set()  # release caught_up() waiters; they see _reached_head
        self._on_close(self)

    @property
    def closed(self) -> bool:
        """Whether the subscription has ended (closed by the caller or by the store)."""
        return self._state == "closed"

    @property
    def is_live(self) -> bool:
        """Whether events currently come from the live fan-out (not from disk)."""
        return self._live

    @property
    def lag(self) -> int:
        """Committed events this subscription has not examined yet (0 when caught up)."""
        return max(0, self._head() - self._delivered_through())

    def _delivered_through(self) -> int:
        """Position (or version) through which everything was examined and handed out."""
        if self._i:
            last = self._cur[self._i - 1]
            return max(self._through, last[1] if self.stream is not None else last[2])
        return self._through

    async def caught_up(self) -> None:
        """Return once the subscription has delivered everything committed at that moment
        (its first ``lag == 0``): right after the last historical event was handed out, or when
        it switched to live. Returns at once if that already happened. Raises StoreClosed if
        the subscription ends before it catches up."""
        self._check_loop()
        await self._caught_up.wait()
        if not self._reached_head:
            raise StoreClosed("the subscription ended before it caught up")

    async def ack(self, rec: RecordedEvent | int) -> None:
        """Durably record that everything up to ``rec`` (or a position) was processed.

        A named subscription resumes after the highest acknowledged position when it is opened
        again, also after a restart. Checkpoints go through the same group commit as appends
        and are never seen by reads. At-least-once: events after the last ack are delivered
        again after a restart.
        """
        if self.name is None:
            raise ValueError("ack() needs a named subscription: store.subscribe(name=...)")
        if isinstance(rec, RecordedEvent):
            position = rec.position
        elif isinstance(rec, int) and not isinstance(rec, bool):
            position = rec
        else:
            raise TypeError(f"ack takes a RecordedEvent or a position (an int), not {rec!r:.60}")
        if position < 0:
            raise ValueError(f"ack position must be an int >= 0, not {position!r}")
        if position <= self._acked:
            return
        await self._checkpoints.save_checkpoint(self.name, position)
        self._acked = max(self._acked, position)

    # --- delivery ---------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[RecordedEvent]:
        gen = self._gen
        if gen is None or cast(Any, gen).ag_frame is None:  # new, or ended by a cancellation
            gen = self._gen = self._events()
        return gen

    async def __anext__(self) -> RecordedEvent:
        return await self.__aiter__().__anext__()

    async def _events(self) -> AsyncGenerator[RecordedEvent, None]:
        # All state lives on self, so a new generator (after a cancelled consumer) goes on
        # exactly where the last one stopped.
        while True:
            cur = self._cur
            i = self._i
            n = len(cur)
            mark = self._mark_at
            metas = self._metas
            while i < n:
                rec = cur[i]
                i += 1
                self._i = i  # the whole per-event bookkeeping: lag is derived from it
                if i == mark:
                    self._mark_caught_up()
                # stream metadata written after this event was read hides it at once
                if metas.durable and metas.is_hidden(self._index, rec):
                    continue
                yield rec
                # closed while the consumer held the event, or it took the rest of the list
                # with batches() meanwhile: go on from where the subscription is
                if self._cur is not cur or self._i != i:
                    break
            if not await self._advance():
                return

    async def batches(self) -> AsyncGenerator[Sequence[RecordedEvent], None]:
        """Deliver events a list at a time (what is ready, in order) instead of one by one.

        The same subscription, cursor and guarantees as ``async for rec in sub`` (the two may
        be used in turn); a consumer that handles events in bulk saves the per-event
        ``await`` of the async iterator. Each list is a tuple, or a list of its own when
        stream metadata hid some of its events: copy it to change it.
        """
        while True:
            cur = self._cur
            i = self._i
            if i < len(cur):
                batch = cur if i == 0 else cur[i:]  # (tuples: safe to hand over, see _load)
                self._i = len(cur)
                if self._mark_at >= 0:
                    self._mark_caught_up()
                metas = self._metas
                if metas.durable:  # metadata written after these were read hides them
                    batch = [r for r in batch if not metas.is_hidden(self._index, r)]
                    if not batch:
                        continue
                yield batch
            if not await self._advance():
                return

    async def _advance(self) -> bool:
        """Make the next non-empty list of events current; False once the subscription ended."""
        self._check_loop()  # (once a list: it may wait, or read)
        if self._state == "new":
            self._open()
        while True:
            if self._state == "closed":
                return False
            if self._cur_end > self._through:
                self._through = self._cur_end  # the whole current list was examined
            if not self._reached_head and self._through >= self._head():
                self._mark_caught_up()  # e.g. everything after the last match was filtered
            if self._buffer:
                records, end = self._buffer.popleft()
                self._buffered -= len(records)
                self._load(records, end, self.filter)
            elif self._live:
                await self._wait()
                continue
            elif self._go_live():
                continue
            else:
                await self._read_history()
            if self._i < len(self._cur):
                return True

    def _load(
        self, records: Sequence[RecordedEvent], end: int, filt: EventFilter | None = None
    ) -> None:
        """Make ``records`` current; ``end`` is the last position the list covers."""
        if records and self._key(records[0]) < self._start:
            records = [r for r in records if self._key(r) >= self._start]
        if filt is not None:
            records = [r for r in records if filt.matches(r)]
        # a tuple: batches() hands the current list itself to the consumer, who may change a
        # list (the cursor's bookkeeping indexes it); live lists are shared tuples already
        self._cur = records if type(records) is tuple else tuple(records)
        self._i = 0
        if self.stream is None:
            self._cur_end = end
            self._cursor = end + 1
        elif records:
            self._cur_end = records[-1].version
            self._cursor = self._cur_end + 1
        self._mark_at = -1
        if not self._reached_head and records and self._cur_end >= self._head():
            self._mark_at = len(records)  # reached when the last one is handed out

    async def _read_history(self) -> None:
        if self.stream is None:
            chunk = await self._reader.all_chunk(self._cursor, False, None, self.filter)
        else:
            chunk = await self._reader.stream_chunk(self.stream, self._cursor, False, None)
        if self._state == "closed":
            return
        if chunk is None:
            # Nothing committed from the cursor on is left in the log (retention or
            # scavenging removed it all, e.g. every event of the stream): the history ends
            # here. The cursor moves past it in the same step as that answer (no await
            # between), so the subscription goes live instead of asking again forever
            # without ever yielding (which froze the event loop).
            last = self._head()
            if self._cursor <= last:
                self._cursor = last + 1
                self._cur_end = last
            return
        records, nxt = chunk
        self._load(records, nxt - 1)
        if self.stream is not None:
            self._cur_end = nxt - 1
            self._cursor = nxt

    def _key(self, rec: RecordedEvent) -> int:
        return rec.position if self.stream is None else rec.version

    def _go_live(self) -> bool:
        """Register with the hub if history is exhausted. Synchronous on purpose: no batch
        can be published between the check and the registration."""
        index = self._index
        if self.stream is None:
            if self._cursor <= index.head:
                return False
        elif self._cursor <= index.committed_last_version(self.stream):
            return False
        self._live = True
        self._hub.add(self)
        self._mark_caught_up()
        return True

    def _head(self) -> int:
        if self.stream is None:
            return self._index.head
        return self._index.committed_last_version(self.stream)

    def _mark_caught_up(self) -> None:
        self._reached_head = True
        self._caught_up.set()

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _back_to_disk(self) -> None:
        """Leave the live fan-out and read what follows from disk (event loop thread)."""
        if self._live:
            self._live = False
            self._hub.remove(self)
            self._wake()

    def _push(self, records: Sequence[RecordedEvent], end: int) -> None:
        """A durable batch from the hub (synchronous; never waits)."""
        if not self._live:
            return
        if self._buffered + len(records) > self._cap and self._buffer:
            self._live = False  # too slow: deliver what is buffered, then read from disk
            self._hub.remove(self)
            self.overflows += 1
        else:
            self._buffer.append((records, end))
            self._buffered += len(records)
        self._wake()
