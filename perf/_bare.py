"""A bare group-commit loop: about the least Python can do for durable appends (perf only).

The "limit of Python" row of ``bench_append.py``. Producers encode their record themselves,
put ``(record, future)`` on a list and await the future. One task drains everything queued,
frames each record (body length + CRC32C of the body, then the body), and hands the batch to
one executor thread for one ``write`` and one ``fdatasync``; then it resolves the batch's
futures. While batch k is being synced, producers keep queueing: that is batch k+1.

What it leaves out, and aioeventstore does not: expected-version checks, an index, event ids,
timestamps, idempotency, segments and rotation, recovery, reads, subscriptions, a bounded
queue, and most error handling (a failed write fails every waiter and stops the loop).
"""

from __future__ import annotations

import asyncio
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import crc32c

_HEAD = struct.Struct("<II")  # body length, crc32c(body)
_sync = getattr(os, "fdatasync", os.fsync)


class BareLog:
    """An append-only file with group commit. Use as ``async with BareLog(path) as log``."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(directory)  # the new file's name is durable too
        finally:
            os.close(directory)
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare-io")
        self._queued: list[tuple[bytes, asyncio.Future[None]]] = []
        self._wakeup: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failure: BaseException | None = None
        self.batches = 0  # one write + one fdatasync each
        self.appends = 0

    async def __aenter__(self) -> BareLog:
        self._task = asyncio.create_task(self._run(), name="bare-commit")
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def append(self, record: bytes) -> None:
        """Return once ``record`` is on stable storage (one frame, written whole or not)."""
        if self._failure is not None or self._closing:
            raise RuntimeError("the bare log is closed or failed")
        future = asyncio.get_running_loop().create_future()
        self._queued.append((record, future))
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
        await future

    async def aclose(self) -> None:
        """Commit what is queued, stop the loop, close the file."""
        self._closing = True
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        try:
            if self._task is not None:
                await self._task
        finally:
            self._io.shutdown(wait=True)
            os.close(self._fd)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pack = _HEAD.pack
        crc = crc32c.crc32c
        while True:
            if not self._queued:
                if self._closing:
                    return
                self._wakeup = loop.create_future()
                await self._wakeup
                self._wakeup = None
                continue
            batch, self._queued = self._queued, []
            parts: list[bytes] = []
            for record, _ in batch:
                parts.append(pack(len(record), crc(record)))
                parts.append(record)
            try:
                await loop.run_in_executor(self._io, self._write, b"".join(parts))
            except BaseException as exc:
                self._failure = exc
                for _, future in batch + self._queued:
                    if not future.done():
                        future.set_exception(exc)
                raise
            self.batches += 1
            self.appends += len(batch)
            for _, future in batch:
                if not future.done():  # its producer may have been cancelled
                    future.set_result(None)

    def _write(self, data: bytes) -> None:  # the I/O thread only
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        _sync(self._fd)
