"""The file layer: the one seam every byte of storage I/O goes through.

Everything above it (segments, the log) calls these methods and nothing in ``os`` directly, so
that tests can swap in a file system that tears writes, loses unsynced data, or fails with
ENOSPC or EIO. All calls block: callers run them off the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
from itertools import repeat
from typing import Protocol


class FileHandle(Protocol):
    """An open file. ``pwrite`` writes all of ``data`` or raises; short writes are retried."""

    path: str

    def pwrite(self, data: bytes | memoryview, offset: int) -> None: ...
    def pread(self, size: int, offset: int) -> bytes: ...
    def pread_many(self, sizes: list[int], offsets: list[int]) -> list[bytes]:
        """``pread`` of each ``(size, offset)`` pair, in order (a stream read's frames that
        lie apart: one call for all of them, and no Python frame per read on real files)."""
        ...

    def pread_many_cached(self, sizes: list[int], offsets: list[int]) -> list[bytes] | None:
        """:meth:`pread_many`, but only if it cannot block: the bytes when every range is
        whole and already in memory (the page cache), else None, and None wherever that
        cannot be known. Never raises for I/O: the caller then reads with :meth:`pread_many`
        on a thread, which reports errors as ever. Called on the event loop's thread."""
        ...

    def sync(self) -> None: ...
    def truncate(self, size: int) -> None: ...
    def size(self) -> int: ...
    def close(self) -> None: ...


class Lock(Protocol):
    """An exclusive lock on a store directory, held until released."""

    def release(self) -> None: ...


class FileSystem(Protocol):
    """The operations the log needs of a file system."""

    def open(self, path: str, *, write: bool, create: bool = False) -> FileHandle: ...
    def listdir(self, path: str) -> list[str]: ...
    def makedirs(self, path: str) -> None:
        """Create ``path`` and its missing parents, durably: each directory created is synced
        into its parent before this returns (else a power cut can lose a new store directory
        with everything later synced inside it). Directories that exist already are synced
        into their parents all the same, best effort, in case an earlier call created them
        and failed to sync."""
        ...

    def remove(self, path: str) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def sync_dir(self, path: str) -> None: ...
    def lock(self, path: str) -> Lock: ...


_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)  # Linux 4.14 and later
_NO_NOWAIT = frozenset(  # what a kernel or file system without it answers
    {errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP), errno.ENOSYS, errno.EINVAL}
)


def size_at(fs: FileSystem, path: str) -> int | None:
    """The size of the file at ``path`` now, or None when there is none: for a file another
    process may remove or replace (a reader next to the writer compares it with the file it
    holds open)."""
    try:
        file = fs.open(path, write=False)
    except FileNotFoundError:
        return None
    try:
        return file.size()
    finally:
        file.close()


def _data_sync(fd: int) -> None:
    """Flush a file's data (and the metadata needed to read it) to stable storage."""
    if sys.platform == "darwin":  # fsync on macOS only reaches the drive cache
        fcntl.fcntl(fd, getattr(fcntl, "F_FULLFSYNC", 51))
    elif hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - platforms without fdatasync
        os.fsync(fd)


class OsFile:
    """A real file, by file descriptor."""

    __slots__ = ("fd", "nowait", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.nowait = _NOWAIT is not None  # until the file system says it cannot

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            if n <= 0:  # pragma: no cover - the kernel reports errors by raising
                raise OSError(errno.EIO, "pwrite wrote nothing", self.path)
            view = view[n:]
            offset += n

    def pread(self, size: int, offset: int) -> bytes:
        out = os.pread(self.fd, size, offset)
        if len(out) == size or not out:
            return out
        parts = [out]
        got = len(out)
        while got < size:
            more = os.pread(self.fd, size - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def pread_many(self, sizes: list[int], offsets: list[int]) -> list[bytes]:
        out = list(map(os.pread, repeat(self.fd, len(sizes)), sizes, offsets))
        if list(map(len, out)) != sizes:  # a short read: as pread goes on with it
            out = list(map(self.pread, sizes, offsets))
        return out

    def pread_many_cached(self, sizes: list[int], offsets: list[int]) -> list[bytes] | None:
        if not self.nowait or _NOWAIT is None:
            return None
        bufs = list(map(bytearray, sizes))
        try:  # preadv2 with RWF_NOWAIT: EAGAIN, or a short read, unless it is all in memory
            got = list(map(os.preadv, repeat(self.fd), zip(bufs), offsets, repeat(_NOWAIT)))
        except OSError as exc:
            if exc.errno in _NO_NOWAIT:  # never on this file: not asked again
                self.nowait = False
            return None
        if got != sizes:
            return None
        return list(map(bytes, bufs))

    def sync(self) -> None:
        _data_sync(self.fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class OsLock:
    """``flock(LOCK_EX | LOCK_NB)`` on a lock file: per open file, so it excludes other
    processes and other stores in this process alike.

    A process forked from the one that took it shares that open file: there, ``release``
    only closes the child's descriptor (unlocking would release the parent's lock, and let
    a second writer in while the parent writes)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pid = os.getpid()

    def release(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                if os.getpid() == self._pid:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


class OsFileSystem:
    """The real file system."""

    def open(self, path: str, *, write: bool, create: bool = False) -> FileHandle:
        flags = os.O_RDWR if write else os.O_RDONLY
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        return OsFile(path, os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o644))

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def makedirs(self, path: str) -> None:
        full = os.path.abspath(path)
        chain: list[str] = []  # full, its parent, ..., the child of the root
        p = full
        while os.path.dirname(p) != p:
            chain.append(p)
            p = os.path.dirname(p)
        for d in reversed(chain):
            try:
                os.mkdir(d)
            except FileExistsError:
                if not os.path.isdir(d):  # a file where a directory should be
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), d) from None
                # It existed: an earlier call may have created it and failed to sync it, so
                # sync it into its parent, best effort (that parent may not be readable).
                with contextlib.suppress(OSError):
                    self.sync_dir(os.path.dirname(d))
            else:
                self.sync_dir(os.path.dirname(d))

    def remove(self, path: str) -> None:
        os.remove(path)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def lock(self, path: str) -> Lock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return OsLock(fd)
