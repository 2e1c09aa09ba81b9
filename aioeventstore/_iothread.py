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
            self._jobs.put((None, (loop, fut), fn, args, {}))
        return fut

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
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # delivered to whoever waits, as the pool does
                    cfut.set_exception(exc)
                else:
                    cfut.set_result(result)
                continue
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
