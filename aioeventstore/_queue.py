"""The bounded append queue between producers and the commit loop.

Bounded by bytes, not by count, so that a flood of large events waits instead of growing memory.
When it is full, producers wait in FIFO order; the consumer moves waiting items in as space
frees, so a waiting producer is never overtaken by a later one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Generic, Protocol, TypeVar


class Sized(Protocol):
    """Anything with a byte size."""

    size: int


T = TypeVar("T", bound=Sized)


class ByteBoundedQueue(Generic[T]):
    """A FIFO holding at most ``max_bytes`` of items (or one item of any size when empty)."""

    def __init__(self, max_bytes: int) -> None:
        self._items: deque[T] = deque()
        self._bytes = 0
        self._max = max_bytes
        # Waiting producers, in order: [future, item]; a cancelled one's item is None (it is
        # let go at once, and the entry dropped when it reaches the head, or compacted away)
        self._putters: deque[list[Any]] = deque()
        self._dead = 0  # entries of cancelled producers still in _putters
        self._getter: asyncio.Future[None] | None = None
        self.drained_bytes = 0
        """Bytes of the items the last :meth:`drain` returned."""

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes of items in the queue (not counting waiting producers)."""
        return self._bytes

    @property
    def waiting(self) -> int:
        """Producers waiting for space."""
        return len(self._putters) - self._dead

    def _fits(self, item: T) -> bool:
        return not self._items or self._bytes + item.size <= self._max

    def _push(self, item: T) -> None:
        self._items.append(item)
        self._bytes += item.size
        getter = self._getter
        if getter is not None:  # the consumer waits: wake it, once
            self._getter = None
            if not getter.done():
                getter.set_result(None)

    def put_nowait(self, item: T) -> bool:
        """Enqueue ``item`` if it fits now and nobody is waiting ahead of it."""
        # _fits and _push written out: this is every append's path
        items = self._items
        # (an empty queue has no waiting producer: a drain admits them until one is queued)
        if items and (self._bytes + item.size > self._max or self._putters):
            return False
        items.append(item)
        self._bytes += item.size
        getter = self._getter
        if getter is not None:  # the consumer waits: wake it, once
            self._getter = None
            if not getter.done():
                getter.set_result(None)
        return True

    async def put(self, item: T) -> None:
        """Enqueue ``item``, waiting while the queue is full.

        If the caller is cancelled while waiting, the item was not enqueued, unless the space
        arrived in the same step, in which case it stays enqueued.
        """
        if not self._putters and self._fits(item):
            self._push(item)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry: list[Any] = [fut, item]
        self._putters.append(entry)
        try:
            await fut  # _admit() enqueues the item and then resolves fut
        except asyncio.CancelledError:
            if fut.cancelled() and entry[1] is not None:  # not admitted: let go of the item
                entry[1] = None  # now (a producer retrying after each timeout while the disk
                self._dead += 1  # is slow must not pile up appends), in O(1)
                putters = self._putters
                if putters[0] is entry:
                    self._admit()  # (those behind it may fit)
                elif self._dead > 64 and self._dead * 2 > len(putters):
                    self._putters = deque(e for e in putters if e[1] is not None)
                    self._dead = 0
            raise

    def _admit(self) -> None:
        while self._putters:
            entry = self._putters[0]
            fut, item = entry
            if item is None:  # its producer was cancelled while waiting (see put)
                self._putters.popleft()
                self._dead -= 1
                continue
            if fut.done():  # cancelled, and its producer not told yet: put sees None
                self._putters.popleft()
                entry[1] = None
                continue
            if not self._fits(item):
                return
            self._putters.popleft()
            self._push(item)
            fut.set_result(None)

    def drain(self, max_bytes: int) -> list[T]:
        """Take items in order, at least one, stopping before ``max_bytes`` is exceeded."""
        items = self._items
        if self._bytes <= max_bytes or len(items) == 1:  # all of it: the usual case
            out = list(items)
            items.clear()
            self.drained_bytes = self._bytes
            self._bytes = 0
            self._admit()
            return out
        out = []
        taken = 0
        while items and (not out or taken + items[0].size <= max_bytes):
            item = items.popleft()
            taken += item.size
            out.append(item)
        self._bytes -= taken
        self.drained_bytes = taken
        self._admit()
        return out

    async def wait(self) -> None:
        """Return once the queue is non-empty or ``wake()`` was called."""
        if self._items:
            return
        self._getter = asyncio.get_running_loop().create_future()
        try:
            await self._getter
        finally:
            self._getter = None

    def wake(self) -> None:
        """Wake the consumer without an item (used on close)."""
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)

    def take_all(self) -> list[T]:
        """Remove and return every queued and waiting item (their producers are told by the
        caller through the items themselves); waiting producers are released."""
        out = list(self._items)
        self._items.clear()
        self._bytes = 0
        while self._putters:
            fut, item = self._putters.popleft()
            if item is not None and not fut.done():
                out.append(item)
                fut.set_result(None)
        self._dead = 0
        return out
