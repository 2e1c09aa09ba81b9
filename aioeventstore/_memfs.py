"""An in-memory file system for ``EventStore.memory()``: the same engine, no disk.

It implements the ``FileSystem`` / ``FileHandle`` / ``Lock`` protocols of ``_fs.py`` with
POSIX semantics (the ones the log relies on), so a memory store runs exactly the code a disk
store runs: the same segments, frames, recovery, index and commit loop. Only the bytes live
elsewhere:

* a file is a ``bytearray``; a directory is a dict of name → node; paths are normalised, and
  a relative path means the same as the absolute one (there is no working directory);
* ``sync`` and ``sync_dir`` do nothing: what is written is as durable as it will ever be, for
  as long as this object lives (nothing survives the process);
* ``open(create=True)`` is ``O_CREAT | O_EXCL``; ``remove`` unlinks the name (an open handle
  keeps its file, as on POSIX); ``rename`` replaces its target as ``os.replace`` does;
  errors are the ``OSError`` subclasses ``os`` would raise;
* ``lock`` excludes a second lock on the same path of the same instance (``BlockingIOError``,
  as ``flock(LOCK_NB)`` does), so two stores cannot write one in-memory directory at once.

Every call takes one mutex: the store calls from its I/O thread and its reader threads.
Calls never block on anything else, so the store may also run them inline on the event loop
(see :class:`InlineExecutor`).
"""

from __future__ import annotations

import errno
import posixpath
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import ParamSpec, TypeVar

from ._fs import FileHandle, Lock

P = ParamSpec("P")
T = TypeVar("T")


class _Dir:
    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[str, _Dir | bytearray] = {}


def _parts(path: str) -> list[str]:
    norm = posixpath.normpath("/" + path)  # "/.." is "/": a relative path is rooted here
    return [p for p in norm.split("/") if p]


class MemoryFileSystem:
    """A file system held in this process's memory (see the module docstring)."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._root = _Dir()
        self._locks: set[tuple[str, ...]] = set()

    # --- plumbing (mutex held) ----------------------------------------------------------------
    def _lookup(self, path: str) -> _Dir | bytearray:
        node: _Dir | bytearray = self._root
        for part in _parts(path):
            if not isinstance(node, _Dir):
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
            try:
                node = node.entries[part]
            except KeyError:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path) from None
        return node

    def _dir(self, path: str) -> _Dir:
        node = self._lookup(path)
        if not isinstance(node, _Dir):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        return node

    def _parent(self, path: str) -> tuple[_Dir, str]:
        parts = _parts(path)
        if not parts:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        return self._dir("/".join(parts[:-1])), parts[-1]

    # --- FileSystem protocol ------------------------------------------------------------------
    def open(self, path: str, *, write: bool, create: bool = False) -> FileHandle:
        """Open a file; ``create`` makes a new one and fails if the name exists (O_EXCL)."""
        with self._mu:
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if create:
                if node is not None:
                    raise FileExistsError(errno.EEXIST, "File exists", path)
                node = parent.entries[name] = bytearray()
            elif node is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            if isinstance(node, _Dir):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            return MemoryFile(self._mu, node, path, write)

    def listdir(self, path: str) -> list[str]:
        """The names in a directory, in no particular order."""
        with self._mu:
            return list(self._dir(path).entries)

    def makedirs(self, path: str) -> None:
        """Create ``path`` and its missing parents (nothing to sync)."""
        with self._mu:
            node = self._root
            for part in _parts(path):
                child = node.entries.get(part)
                if child is None:
                    child = node.entries[part] = _Dir()
                elif not isinstance(child, _Dir):
                    raise FileExistsError(errno.EEXIST, "File exists", path)
                node = child

    def remove(self, path: str) -> None:
        """Unlink a file (handles still open keep reading and writing it)."""
        with self._mu:
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if node is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            if isinstance(node, _Dir):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            del parent.entries[name]

    def rename(self, src: str, dst: str) -> None:
        """Move a file, replacing ``dst`` if it is a file (``os.replace``)."""
        with self._mu:
            sparent, sname = self._parent(src)
            dparent, dname = self._parent(dst)
            node = sparent.entries.get(sname)
            if node is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", src)
            if isinstance(node, _Dir):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", src)
            if isinstance(dparent.entries.get(dname), _Dir):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", dst)
            del sparent.entries[sname]
            dparent.entries[dname] = node

    def sync_dir(self, path: str) -> None:
        """Nothing to sync; checks that the directory exists."""
        with self._mu:
            self._dir(path)

    def lock(self, path: str) -> Lock:
        """Create the lock file if missing and take an exclusive lock on it; a second lock on
        the same path raises BlockingIOError until the first is released."""
        key = tuple(_parts(path))
        with self._mu:
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if isinstance(node, _Dir):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            if key in self._locks:
                raise BlockingIOError(errno.EWOULDBLOCK, "Resource temporarily unavailable", path)
            if node is None:
                parent.entries[name] = bytearray()
            self._locks.add(key)
            return MemoryLock(self, key)


class MemoryLock:
    """An exclusive lock on a path of a MemoryFileSystem, held until released."""

    __slots__ = ("_fs", "_key")

    def __init__(self, fs: MemoryFileSystem, key: tuple[str, ...]) -> None:
        self._fs: MemoryFileSystem | None = fs
        self._key = key

    def release(self) -> None:
        """Release the lock (idempotent)."""
        fs, self._fs = self._fs, None
        if fs is not None:
            with fs._mu:
                fs._locks.discard(self._key)


class MemoryFile:
    """An open file of a MemoryFileSystem."""

    __slots__ = ("_buf", "_mu", "_open", "_write", "path")

    def __init__(self, mu: threading.Lock, buf: bytearray, path: str, write: bool) -> None:
        self._mu = mu
        self._buf = buf
        self.path = path
        self._write = write
        self._open = True

    def _check(self, writing: bool) -> None:
        if not self._open:
            raise OSError(errno.EBADF, "Bad file descriptor (closed)", self.path)
        if writing and not self._write:
            raise OSError(errno.EBADF, "Bad file descriptor (open for reading)", self.path)

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        with self._mu:
            self._check(True)
            buf = self._buf
            if offset > len(buf):  # a hole reads as zeros
                buf.extend(bytes(offset - len(buf)))
            buf[offset : offset + len(data)] = data

    def pread(self, size: int, offset: int) -> bytes:
        with self._mu:
            self._check(False)
            with memoryview(self._buf) as view:  # released before anyone may resize it
                return view[offset : offset + size].tobytes()

    def pread_many(self, sizes: list[int], offsets: list[int]) -> list[bytes]:
        return list(map(self.pread, sizes, offsets))

    def pread_many_cached(self, sizes: list[int], offsets: list[int]) -> list[bytes] | None:
        try:  # in memory: it never blocks (the lock is only held for a copy)
            return self.pread_many(sizes, offsets)
        except OSError:  # a closed file: the read on a thread reports it
            return None

    def sync(self) -> None:
        with self._mu:
            self._check(False)

    def truncate(self, size: int) -> None:
        with self._mu:
            self._check(True)
            buf = self._buf
            if size < len(buf):
                del buf[size:]
            else:
                buf.extend(bytes(size - len(buf)))

    def size(self) -> int:
        with self._mu:
            self._check(False)
            return len(self._buf)

    def close(self) -> None:
        self._open = False


class InlineExecutor(Executor):
    """Runs each submitted call at once, in the submitting thread.

    For a memory store, whose file operations are memory copies that never block: handing
    them to a thread would cost more than doing them. ``run_in_executor`` still returns an
    awaitable, so every ``await`` in the store stays a point where other tasks run (reads
    from memory, decoded on the loop's thread, end with a turn of it: ``Reader._read_chunk``).
    """

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        fut: Future[T] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # delivered to the awaiting task, as a thread would
            fut.set_exception(exc)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing runs in the background: nothing to wait for."""


class MemoryStorage:
    """Where an in-memory store keeps its bytes, for as long as this object lives.

    ``EventStore.memory(storage=s)`` opens the store held in ``s`` (empty the first time);
    closing it leaves the bytes in ``s``, so a later ``EventStore.memory(storage=s)`` reopens
    it, recovering from what was written as a disk store would. One store may have it open
    at a time (another raises ``StoreLocked``). Nothing in it survives the process.
    """

    __slots__ = ("_fs",)

    def __init__(self) -> None:
        self._fs = MemoryFileSystem()
