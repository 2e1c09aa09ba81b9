"""What is particular to ``EventStore.memory()``: where its bytes live, who can reach them, and
the POSIX semantics of the in-memory file system it runs on. Its contract with users is
tested in test_contract.py, against a disk store side by side."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

import aioeventstore as es
from aioeventstore._memfs import InlineExecutor, MemoryFileSystem
from tests.helpers import Note


async def test_memory_stores_are_independent_and_touch_no_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with es.EventStore.memory() as a, es.EventStore(":memory:") as b:
        assert a.path == b.path == ":memory:"
        await a.append("s", Note(text="only in a"))
        assert a.head == 0 and b.head == -1
        assert [r async for r in b.read_all()] == []
        assert (await b.append("s", Note(text="b")), b.head) == (es.AppendResult(0, 0), 0)
    assert os.listdir(tmp_path) == []  # not even a directory named ":memory:"
    async with es.EventStore.memory() as fresh:  # nothing survives the store without storage
        assert fresh.head == -1


async def test_storage_reopens_and_recovers_like_a_directory() -> None:
    storage = es.MemoryStorage()
    async with es.EventStore.memory(storage=storage, segment_bytes=4096) as store:
        for i in range(100):
            await store.append(f"s{i % 3}", Note(text=f"event {i}"))
        segments = len(store._log.segments)
    assert segments > 1
    fs = storage._fs
    tail = sorted(n for n in fs.listdir(":memory:") if n.endswith(".seg"))[-1]
    handle = fs.open(f":memory:/{tail}", write=True)
    end = handle.size()
    handle.pwrite(b"\x01\x02torn", end)  # what a write cut short would leave
    handle.close()
    async with es.EventStore.memory(storage=storage, segment_bytes=4096) as store:
        assert store.recovery is not None and store.recovery.cut_bytes == 6
        assert store.head == 99
        assert [r.position async for r in store.read_all()] == list(range(100))


def test_storage_must_be_a_memory_storage(store_path: Path) -> None:
    with pytest.raises(TypeError, match=r"storage must be an es\.MemoryStorage, not PosixPath"):
        es.EventStore.memory(storage=store_path)  # type: ignore[arg-type]


async def test_memory_store_runs_no_threads() -> None:
    before = set(threading.enumerate())
    storage = es.MemoryStorage()
    async with es.EventStore.memory(storage=storage) as store:
        await store.append("s", Note(text="x"))
        assert [r.position async for r in store.read_all()] == [0]
        assert store._io is store._readers and isinstance(store._io, InlineExecutor)
        assert set(threading.enumerate()) <= before
    assert set(threading.enumerate()) <= before  # closing starts none either
    with pytest.raises(es.StoreLocked):  # nor does a failed open
        async with es.EventStore.memory(storage=storage), es.EventStore.memory(storage=storage):
            pass
    assert set(threading.enumerate()) <= before


def test_memory_fs_follows_posix() -> None:
    fs = MemoryFileSystem()
    fs.makedirs("/a/b")
    fs.makedirs("a/b")  # exists: fine; relative paths are rooted
    f = fs.open("/a/b/f", write=True, create=True)
    with pytest.raises(FileExistsError):
        fs.open("a/b/f", write=True, create=True)  # O_EXCL
    with pytest.raises(FileNotFoundError):
        fs.open("/a/b/missing", write=False)
    with pytest.raises(FileNotFoundError):
        fs.open("/nope/f", write=True, create=True)
    with pytest.raises(IsADirectoryError):
        fs.open("/a/b", write=False)
    f.pwrite(b"hello", 0)
    f.pwrite(memoryview(b"XY"), 7)  # past the end: the hole reads as zeros
    assert f.size() == 9 and f.pread(100, 0) == b"hello\0\0XY" and f.pread(4, 20) == b""
    f.truncate(3)
    assert f.pread(10, 0) == b"hel"
    f.truncate(5)
    assert f.pread(10, 0) == b"hel\0\0"
    f.sync()
    r = fs.open("/a/b/f", write=False)
    with pytest.raises(OSError) as info:
        r.pwrite(b"x", 0)
    assert info.value.errno == errno.EBADF
    fs.rename("/a/b/f", "/a/b/g")  # open handles keep their file
    fs.open("/a/b/h", write=True, create=True).pwrite(b"old", 0)
    fs.rename("/a/b/g", "/a/b/h")  # replaces, as os.replace does
    assert sorted(fs.listdir("/a/b")) == ["h"] and r.pread(3, 0) == b"hel"
    fs.remove("/a/b/h")
    f.pwrite(b"!", 0)  # an unlinked file stays usable through its handle
    assert r.pread(1, 0) == b"!" and fs.listdir("/a/b") == []
    with pytest.raises(FileNotFoundError):
        fs.remove("/a/b/h")
    with pytest.raises(IsADirectoryError):
        fs.remove("/a/b")
    fs.open("/a/b/x", write=True, create=True).close()
    with pytest.raises(NotADirectoryError):
        fs.listdir("/a/b/../b/x")
    with pytest.raises(FileExistsError):
        fs.makedirs("/a/b/x/y")
    with pytest.raises(FileNotFoundError):
        fs.sync_dir("/zzz")
    f.close()
    with pytest.raises(OSError):
        f.pread(1, 0)


def test_memory_fs_locks_exclude_until_released() -> None:
    fs = MemoryFileSystem()
    fs.makedirs("/d")
    lock = fs.lock("/d/LOCK")
    assert fs.listdir("/d") == ["LOCK"]
    with pytest.raises(BlockingIOError):
        fs.lock("d/LOCK")
    other = MemoryFileSystem()  # another instance is another machine, as it were
    other.makedirs("/d")
    other.lock("/d/LOCK").release()
    lock.release()
    lock.release()  # idempotent
    fs.lock("/d/LOCK").release()


def test_inline_executor_delivers_results_and_errors() -> None:
    ex = InlineExecutor()
    assert ex.submit(pow, 2, 10).result() == 1024
    fut = ex.submit(int, "x")
    assert isinstance(fut.exception(), ValueError)
    ex.shutdown()
