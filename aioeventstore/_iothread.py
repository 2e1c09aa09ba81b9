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
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from queue import Empty, SimpleQueue
from time import perf_counter
from typing import Any, ParamSpec, TypeVar

_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()  # (False on a free-threaded build)
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
        # For lend_gil, about the commit loop's batch writes (the jobs of ``call``): how many
        # are handed over and not finished, since when the thread has been at the one it is
        # at (or was handed it), an event set while there are none, whether a job of
        # ``submit`` (another kind of work, maybe long in Python) is running, and the last
        # time the loop lent the thread the GIL.
        self._calls = 0
        self._call_since = 0.0
        self._no_calls = threading.Event()
        self._no_calls.set()
        self._other_running = False
        self._lent_at = 0.0
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Queue ``fn(*args, **kwargs)``; RuntimeError after :meth:`shutdown`."""
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            fut: Future[T] = Future()
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

    def _handed_over(self) -> None:  # (a call's job; under self._lock)
        self._calls += 1
        if self._calls == 1:
            self._call_since = perf_counter()
            self._no_calls.clear()

    def _call_finished(self) -> None:
        with self._lock:
            self._calls -= 1
            if self._calls:
                self._call_since = perf_counter()  # (the next one starts now)
            else:
                self._no_calls.set()

    def lend_gil(self, after: float, at_most: float) -> bool:
        """Give this thread the GIL for a while, if a batch write seems to need it: called on
        the event loop's thread by work that keeps the loop busy (a read decoded on it). When
        the thread has been at (or been handed) a job of :meth:`call` for ``after`` seconds or
        more, is not running a job of :meth:`submit` (other work, which may run Python for
        milliseconds), and was not lent the GIL in the last ``after`` seconds, waits with the
        GIL released up to ``at_most`` seconds for it to finish its calls' jobs. True if it
        waited. Taking the GIL back may then wait for the thread's next system call (a
        batch write runs microseconds of Python between two), or, where the thread moves on
        meanwhile to other work queued before the batch write, up to the GIL's switch
        interval (5 ms).

        Why: a thread that comes back from a system call (a batch's write or sync) needs the
        GIL, and CPython's GIL starts its 5 ms wait again whenever the holder lets go of the
        GIL for a moment, which a busy loop's thread does at every ``select`` and ``pread``:
        the I/O thread then waits hundreds of milliseconds at every step of a batch, and
        appends crawl while a replay runs (see the README's "A busy event loop starves
        appends"). A sync that is merely slow costs the loop at most ``at_most`` every
        ``after``. Nothing to lend without a GIL (a free-threaded build)."""
        if not self._calls or self._other_running or not _GIL:
            return False
        now = perf_counter()
        if now - self._call_since < after or now - self._lent_at < after:
            return False
        self._no_calls.wait(at_most)
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
                    while True:
                        try:  # (the thread may take the last one meanwhile)
                            job = self._jobs.get_nowait()
                        except Empty:
                            break
                        if job is not None and job[0] is not None:
                            job[0].cancel()
                        elif job is not None:
                            kept.append(job)
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
            cfut, target, fn, args, kwargs = job
            if cfut is not None:
                if not cfut.set_running_or_notify_cancel():
                    continue
                self._other_running = True
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # delivered to whoever waits, as the pool does
                    cfut.set_exception(exc)
                else:
                    cfut.set_result(result)
                finally:
                    self._other_running = False
                continue
            assert target is not None
            loop, afut = target
            try:
                result = fn(*args)
            except BaseException as exc:
                _deliver(loop, _set_exception, afut, exc)
            else:
                _deliver(loop, _set_result, afut, result)
            finally:
                self._call_finished()  # (after the delivery, which needs the GIL too)


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
