"""The simulated file system models what it claims (tests/simfs.py): the crash tests are only
as good as this model."""

from __future__ import annotations

import errno
import random
import threading

import pytest

from tests.simfs import Fault, PowerCut, SimFS

D = "/d"


def fresh() -> SimFS:
    fs = SimFS(0)
    fs.makedirs(D)
    return fs


def test_unsynced_writes_are_lost_or_kept_by_mode() -> None:
    for mode, expected in (("lost", b"synced"), ("kept", b"synced+more")):
        fs = fresh()
        f = fs.open(f"{D}/a", write=True, create=True)
        fs.sync_dir(D)
        f.pwrite(b"synced", 0)
        f.sync()
        f.pwrite(b"+more", 6)
        assert f.pread(100, 0) == b"synced+more"  # reads see the page cache
        fs.power_cut(mode)  # type: ignore[arg-type]
        assert fs.read_file(f"{D}/a") == expected


def test_an_entry_is_durable_only_after_sync_dir() -> None:
    fs = fresh()
    f = fs.open(f"{D}/a", write=True, create=True)
    f.pwrite(b"data", 0)
    f.sync()  # the data is durable, the name is not
    fs.power_cut("lost")
    assert fs.listdir(D) == []
    g = fs.open(f"{D}/b", write=True, create=True)
    fs.sync_dir(D)
    g.pwrite(b"x", 0)
    fs.remove(f"{D}/b")  # a removal is pending too
    fs.power_cut("lost")
    assert fs.listdir(D) == ["b"] and fs.read_file(f"{D}/b") == b""


def test_rename_and_makedirs() -> None:
    fs = SimFS(0)
    fs.makedirs("/x/y")
    f = fs.open("/x/y/a", write=True, create=True)
    fs.sync_dir("/x/y")
    fs.rename("/x/y/a", "/x/y/b")
    fs.power_cut("lost")
    assert list(fs.walk()) == ["/x/y/a"]  # makedirs made /x/y durable; the rename was lost
    fs.rename("/x/y/a", "/x/y/b")
    fs.sync_dir("/x/y")
    fs.power_cut("lost")
    assert list(fs.walk()) == ["/x/y/b"]
    assert f is not None


def test_torn_mode_keeps_a_prefix_of_writes_and_may_tear_the_next() -> None:
    old = b"o" * 1500
    new = bytes(range(256)) * 8  # 2048 bytes at offset 1000
    images = set()
    for seed in range(200):
        fs = fresh()
        f = fs.open(f"{D}/a", write=True, create=True)
        fs.sync_dir(D)
        f.pwrite(old, 0)
        f.sync()
        f.pwrite(new, 1000)
        f.pwrite(b"after", 3048)
        fs.power_cut("torn", random.Random(seed))
        img = fs.read_file(f"{D}/a")
        images.add(img)
        assert img[:1000] == old[:1000]
        body = img[1000:3048]
        for i, b in enumerate(body):  # each byte: the new one, the old one, or never written
            assert b in (new[i], old[1000 + i] if 1000 + i < len(old) else 0, 0)
        if img[3048:]:  # a later write survives (maybe torn) only after the whole earlier one
            assert body == new
            assert all(b in (c, 0) for b, c in zip(img[3048:], b"after", strict=False))
    assert old in images and old[:1000] + new + b"after" in images
    assert len(images) > 20  # prefixes, zero-filled ends and scattered sectors


def test_cut_at_an_operation_kills_every_later_call() -> None:
    fs = fresh()
    f = fs.open(f"{D}/a", write=True, create=True)
    start = fs.ops
    fs.cut_after(2)
    f.pwrite(b"1", 0)
    f.truncate(0)  # truncate and create are counted operations too
    with pytest.raises(PowerCut):
        fs.open(f"{D}/b", write=True, create=True)
    assert fs.ops == start + 2 and fs.trace[-2:] == ["pwrite a", "truncate a"]
    with pytest.raises(PowerCut):
        f.pread(1, 0)
    with pytest.raises(PowerCut):
        fs.listdir(D)
    fs.reboot("kept")  # the unsynced entry and data too
    with pytest.raises(PowerCut):  # handles from before the cut stay dead
        f.size()
    f.close()  # never raises: it only frees resources
    assert fs.listdir(D) == ["a"] and fs.read_file(f"{D}/a") == b""


def test_a_process_crash_keeps_the_page_cache_and_nothing_more() -> None:
    """``process_crash``: the process's handles and locks die, the machine does not: what it
    wrote stays visible to the next process but pending, so a later power cut loses it."""
    fs = fresh()
    f = fs.open(f"{D}/a", write=True, create=True)
    f.pwrite(b"synced", 0)
    f.sync()
    fs.sync_dir(D)
    f.pwrite(b"+more", 6)
    fs.open(f"{D}/b", write=True, create=True).pwrite(b"b", 0)
    lock = fs.lock(f"{D}/LOCK")
    fs.cut_after(0)
    with pytest.raises(PowerCut):
        f.sync()
    fs.process_crash()
    with pytest.raises(PowerCut):  # the dead process's handles stay dead
        f.size()
    lock.release()  # (never raises)
    fs.lock(f"{D}/LOCK").release()  # its lock went with it
    assert fs.read_file(f"{D}/a") == b"synced+more"  # the next process sees it all
    assert sorted(fs.listdir(D)) == ["LOCK", "a", "b"]
    fs.power_cut("lost")  # nothing of it was made durable by the crash
    assert fs.read_file(f"{D}/a") == b"synced"
    assert fs.listdir(D) == ["a"]


def test_faults_enospc_and_short_writes() -> None:
    fs = fresh()
    f = fs.open(f"{D}/a", write=True, create=True)
    fs.sync_dir(D)
    fs.inject(Fault(op="pwrite"))
    with pytest.raises(OSError) as info:
        f.pwrite(b"abc", 0)
    assert info.value.errno == errno.ENOSPC and f.size() == 0
    fs.inject(Fault(op="pwrite", short=True))
    with pytest.raises(OSError):
        f.pwrite(b"0123456789", 0)
    assert 0 < f.size() < 10  # part of it was written


@pytest.mark.parametrize("policy", ["doom", "keep"])
def test_after_an_fsync_error_the_pages_stay_readable(policy: str) -> None:
    """ "doom" (Linux): a later successful sync does not write the failed pages, although
    reads still see them; "keep": they stay dirty and a later sync writes them."""
    for seed in range(20):
        fs = SimFS(seed, sync_error="doom" if policy == "doom" else "keep")
        fs.makedirs(D)
        f = fs.open(f"{D}/a", write=True, create=True)
        fs.sync_dir(D)
        f.pwrite(b"doomed", 0)
        fs.inject(Fault(op="sync"))
        with pytest.raises(OSError) as info:
            f.sync()
        assert info.value.errno == errno.EIO
        before = fs.clone()
        f.sync()  # succeeds
        assert f.pread(6, 0) == b"doomed"
        before.power_cut("lost")
        fs.power_cut("lost")
        if policy == "doom":
            assert fs.read_file(f"{D}/a") == before.read_file(f"{D}/a")
        else:
            assert fs.read_file(f"{D}/a") == b"doomed"


def test_operations_from_many_threads_are_all_counted() -> None:
    fs = fresh()
    files = [fs.open(f"{D}/{i}", write=True, create=True) for i in range(8)]
    start = fs.ops

    def work(i: int) -> None:
        for k in range(200):
            files[i].pwrite(b"x" * 10, k * 10)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fs.ops == start + 1600
    assert all(f.size() == 2000 for f in files)
