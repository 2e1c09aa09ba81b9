"""The store's I/O thread: one thread and one FIFO of jobs for every file write of a store.

One thread keeps the store's file operations in one order (batch writes, sidecar steps,
rotation, close), which is what the crash sweeps rely on. It is a
``concurrent.futures.Executor``, so whatever hands it work with ``run_in_executor`` or
``submit`` is served in that same order, and it has one more way in, for the commit loop's
batch writes: :meth:`IoThread.call` returns an asyncio future that the thread resolves
itself with ``call_soon_threadsafe``. That skips what ``run_in_executor`` does around every
job (a ``concurrent.futures.Future`` with its condition variable, a second future chained to
it with two callbacks, and a Python callback on the loop to copy the result across), which
is on the path of every batch: with one producer, every append waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from queue import SimpleQueue
from time import perf_counter
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

# (concurrent future or None, (loop, asyncio future) or None, function, args, kwargs)
_Job = tuple[
    "Future[Any] | None",
    "tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]] | None",
    Callable[..., Any],
    tuple[Any, ...],
    dict[str, Any],
]


class IoThread(Executor):
    """A single worker thread running jobs in the order they were handed over.

    ``shutdown`` lets the jobs already queued run, then ends the thread. The thread is a
    daemon: a process that exits without closing its store does not hang on it (what is
    acknowledged is already on disk; an unfinished job is as a crash would leave it).
    """

    def __init__(self, name: str) -> None:
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        # For lend_gil: jobs handed over and not finished, since when the thread has been at
        # the one it is at (or was handed it), the last time the loop lent it the GIL, and
        # an event set while it has nothing to do.
        self._pending = 0
        self._busy_since = 0.0
        self._lent_at = 0.0
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Queue ``fn(*args, **kwargs)``; RuntimeError after :meth:`shutdown`."""
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            fut: Future[T] = Future()
            self._handed_over()
            self._jobs.put((fut, None, fn, args, kwargs))
        return fut

    def call(
        self, loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        """Queue ``fn(*args)``; its result (or exception) arrives in the returned future on
        ``loop``. Cancelling that future does not stop the job: its result is then dropped.
        RuntimeError after :meth:`shutdown`."""
        fut: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._handed_over()
            self._jobs.put((None, (loop, fut), fn, args, {}))
        return fut

    def _handed_over(self) -> None:  # (under self._lock)
        self._pending += 1
        if self._pending == 1:
            self._busy_since = perf_counter()
            self._idle.clear()

    def _finished(self) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending:
                self._busy_since = perf_counter()  # (the next job starts now)
            else:
                self._idle.set()

    def lend_gil(self, after: float, at_most: float) -> bool:
        """Give this thread the GIL for a while, if it seems to need it: called on the event
        loop's thread by work that keeps the loop busy (a read decoded on it), at most once
        every ``after`` seconds, when the thread has been at a job for ``after`` seconds or
        more. Then waits, with the GIL released, up to ``at_most`` seconds for the thread to
        run out of jobs. True if it waited.

        Why: a thread that comes back from a system call (a batch's write or sync) needs the
        GIL, and CPython's GIL starts its 5 ms wait again whenever the holder lets go of the
        GIL for a moment, which a busy loop's thread does at every ``select`` and ``pread``:
        the I/O thread then waits hundreds of milliseconds at every step of a batch, and
        appends crawl while a replay runs (see the README's "A busy event loop starves
        appends"). A job that is merely slow (a sync on a slow disk) costs the loop at most
        ``at_most`` every ``after``."""
        if not self._pending:
            return False
        now = perf_counter()
        if now - self._busy_since < after or now - self._lent_at < after:
            return False
        self._idle.wait(at_most)
        self._lent_at = perf_counter()
        return True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking jobs; run those queued (or, with ``cancel_futures``, cancel those not
        started that were handed over with :meth:`submit`), then end the thread."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if cancel_futures:
                    kept: list[_Job] = []
                    while not self._jobs.empty():
                        job = self._jobs.get_nowait()
                        if job is not None and job[0] is not None:
                            job[0].cancel()
                            self._pending -= 1  # (it will not run)
                        elif job is not None:
                            kept.append(job)
                    if not self._pending:
                        self._idle.set()
                    for job in kept:
                        self._jobs.put(job)
                self._jobs.put(None)
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                self._run(job)
            finally:
                self._finished()

    @staticmethod
    def _run(job: _Job) -> None:
        cfut, target, fn, args, kwargs = job
        if cfut is not None:
            if not cfut.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # delivered to whoever waits, as the pool does
                cfut.set_exception(exc)
            else:
                cfut.set_result(result)
            return
        assert target is not None
        loop, afut = target
        try:
            result = fn(*args)
        except BaseException as exc:
            _deliver(loop, _set_exception, afut, exc)
        else:
            _deliver(loop, _set_result, afut, result)


def _deliver(
    loop: asyncio.AbstractEventLoop,
    how: Callable[[asyncio.Future[Any], Any], None],
    fut: asyncio.Future[Any],
    value: Any,
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(how, fut, value)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():  # its waiter may have been cancelled
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
