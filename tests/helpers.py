"""Shared test events and a fault-injecting file system."""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass, field

import aioeventstore as es
from aioeventstore import events as events_module
from aioeventstore._fs import FileHandle, FileSystem, Lock, OsFileSystem


def registry_changed() -> None:
    """Tell the readers that a test changed the type registry behind its back (a
    ``monkeypatch`` of ``events._registry``), as every registration does: a store's stream
    reads keep their decoders while the registry's generation stays the same."""
    events_module._generation[0] += 1


class Deposited(es.Event):
    account: str
    amount: int


class Withdrawn(es.Event):
    __event_type__ = "tests.withdrawn.v1"
    account: str
    amount: int


class Note(es.Event):
    text: str


@dataclass
class Faults:
    """What the faulty file system should do next. Shared by every file it opens."""

    fail_sync: OSError | None = None
    fail_write: OSError | None = None
    short_write: bool = False
    gate: threading.Event | None = None  # when set to a cleared Event, writes block on it
    writes: int = 0
    syncs: int = 0
    log: list[str] = field(default_factory=list)


class FaultyFile:
    def __init__(self, inner: FileHandle, faults: Faults) -> None:
        self._inner = inner
        self._faults = faults
        self.path = inner.path

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        f = self._faults
        if f.gate is not None:
            f.gate.wait(30)
        f.writes += 1
        if f.fail_write is not None:
            raise f.fail_write
        if f.short_write:
            self._inner.pwrite(bytes(data)[: max(1, len(data) // 2)], offset)
            raise OSError(errno.ENOSPC, "No space left on device (short write)", self.path)
        self._inner.pwrite(data, offset)

    def pread(self, size: int, offset: int) -> bytes:
        return self._inner.pread(size, offset)

    def pread_many(self, sizes: list[int], offsets: list[int]) -> list[bytes]:
        return list(map(self.pread, sizes, offsets))

    def pread_many_cached(self, sizes: list[int], offsets: list[int]) -> list[bytes] | None:
        return self._inner.pread_many_cached(sizes, offsets)

    def sync(self) -> None:
        f = self._faults
        f.syncs += 1
        if f.fail_sync is not None:
            raise f.fail_sync
        self._inner.sync()

    def truncate(self, size: int) -> None:
        self._inner.truncate(size)

    def size(self) -> int:
        return self._inner.size()

    def close(self) -> None:
        self._inner.close()


class FaultyFileSystem:
    """The real file system, with faults injected per ``self.faults``."""

    def __init__(self) -> None:
        self.faults = Faults()
        self._os: FileSystem = OsFileSystem()

    def open(self, path: str, *, write: bool, create: bool = False) -> FileHandle:
        return FaultyFile(self._os.open(path, write=write, create=create), self.faults)

    def listdir(self, path: str) -> list[str]:
        return self._os.listdir(path)

    def makedirs(self, path: str) -> None:
        self._os.makedirs(path)

    def remove(self, path: str) -> None:
        self._os.remove(path)

    def rename(self, src: str, dst: str) -> None:
        self._os.rename(src, dst)

    def sync_dir(self, path: str) -> None:
        self._os.sync_dir(path)

    def lock(self, path: str) -> Lock:
        return self._os.lock(path)


async def take(sub: es.Subscription, n: int) -> list[es.RecordedEvent]:
    """The next ``n`` events a subscription delivers (waits for them)."""
    out: list[es.RecordedEvent] = []
    if n == 0:
        return out
    async for rec in sub:
        out.append(rec)
        if len(out) == n:
            break
    return out
