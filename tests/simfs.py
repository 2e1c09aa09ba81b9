"""A simulated file system for crash tests: an in-memory model of the OS page cache.

It implements the ``FileSystem`` / ``FileHandle`` / ``Lock`` protocols of
``aioeventstore._fs`` and is handed to ``EventStore(path, _fs=...)``.

The model
---------
* A file has a *visible* content (what reads see: the page cache), a *durable* content (what
  the disk holds) and the ordered list of *pending* operations (``pwrite``, ``truncate``) made
  since its last successful ``sync``. ``sync`` applies the pending operations to the durable
  content, in order.
* A directory has visible and durable entries (name → node) and the ordered list of pending
  entry operations (create, mkdir, remove, rename); ``sync_dir`` makes them durable. A file
  whose entry never became durable may vanish in a power cut, whatever its data.
* ``power_cut`` turns the current state into what survives. Per loss mode:
  ``"lost"``: every pending operation is lost (only synced data and entries survive);
  ``"kept"``: every pending operation survives (as if the disk had written the page cache
  back before the cut);
  ``"torn"``: per file and per directory a random prefix of the pending operations survives,
  and the first write not kept whole may survive torn: a prefix of its bytes, or its full
  length with a zero-filled end (delayed allocation: where it overwrote bytes already on
  disk, those stay as they were), or a random subset of its 512-byte sectors. Directories
  always keep a prefix of their entry operations, as a journal does.
* Every call goes through one lock (the store calls from several threads). Calls that change
  state or sync are *counted operations* (``create``, ``pwrite``, ``sync``, ``truncate``,
  ``mkdir``, ``remove``, ``rename``, ``sync_dir``, ``lock``): ``cut_at = k`` cuts the power
  just before counted operation ``k`` (0-based), which then fails, as does every later call
  of any kind: the process is dead. ``close`` and ``release`` never fail; they only free
  resources. ``reboot`` (or ``power_cut``) brings the machine back with the surviving image.
* ``process_crash`` is a ``kill -9`` instead: the process's handles and locks go, the machine
  stays up, and so does its page cache: every write stays visible and no more durable than
  it was (pending), for the next process to read and a later power cut to lose.
* Any call can be made to fail with a :class:`Fault`: an ``OSError`` instead of the
  operation, or for ``pwrite`` a short write (a part of the data is written, then ENOSPC).
  A failed ``sync`` models Linux after an fsync error ("fsyncgate"): a prefix of the
  pending writes reached the disk (random, or ``Fault.written_back``), the rest never will,
  yet stays visible in the page cache, and a later successful ``sync`` does not write it;
  size changes (truncate) are journaled metadata and stay pending (``sync_error="keep"``
  instead leaves everything pending, as on systems that keep the pages dirty). A failed
  ``sync_dir`` leaves the entry operations pending (a journal that did not commit).
"""

from __future__ import annotations

import copy
import errno as errno_mod
import posixpath
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from aioeventstore._fs import FileHandle, Lock

LossMode = Literal["lost", "kept", "torn"]
LOSS_MODES: tuple[LossMode, ...] = ("lost", "kept", "torn")
SECTOR = 512

COUNTED = frozenset(
    {"create", "pwrite", "sync", "truncate", "mkdir", "remove", "rename", "sync_dir", "lock"}
)
_DEFAULT_ERRNO = {"pwrite": errno_mod.ENOSPC, "create": errno_mod.ENOSPC, "mkdir": errno_mod.ENOSPC}


def fault_error(fault: Fault, op: str, path: str) -> OSError:
    """The error a fault makes an operation raise."""
    code = fault.errno if fault.errno is not None else _DEFAULT_ERRNO.get(op, errno_mod.EIO)
    return OSError(code, f"injected {errno_mod.errorcode.get(code, code)} on {op}", path)


class PowerCut(OSError):
    """Raised by every call once the power is cut: the process is dead from then on."""

    def __init__(self, detail: str) -> None:
        super().__init__(errno_mod.EIO, f"power cut: {detail}")


@dataclass
class Fault:
    """One injected failure: a matching call raises ``OSError(errno)`` instead of completing.

    ``op`` matches an operation name (``pwrite``, ``sync``, ``truncate``, ``create``, ``mkdir``,
    ``remove``, ``rename``, ``sync_dir``, ``lock``, or the uncounted ``open``, ``pread``,
    ``size``, ``listdir``), None any counted one; ``at`` matches a counted operation index;
    ``path`` a substring of the path. ``errno`` defaults to ENOSPC for pwrite/create/mkdir and
    EIO otherwise. ``short``: a pwrite writes part of its data first. ``written_back``: for a
    failing sync, how many of the pending operations reached the disk before the error
    (None: a random number, the next one maybe torn). ``times`` matching calls fail (0: every
    one from now on).
    """

    op: str | None = None
    at: int | None = None
    path: str | None = None
    errno: int | None = None
    short: bool = False
    written_back: int | None = None
    times: int = 1
    hits: int = 0

    def matches(self, op: str, index: int | None, path: str) -> bool:
        if self.times and self.hits >= self.times:
            return False
        if self.op is not None and self.op != op:
            return False
        if self.op is None and index is None:
            return False
        if self.at is not None and self.at != index:
            return False
        return self.path is None or self.path in path


@dataclass(frozen=True, slots=True)
class _Write:
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class _Truncate:
    size: int


_FileOp = _Write | _Truncate


class _File:
    __slots__ = ("durable", "pending", "visible")

    def __init__(self) -> None:
        self.visible = bytearray()
        self.durable = bytearray()
        self.pending: list[_FileOp] = []


@dataclass(frozen=True, slots=True)
class _Set:
    name: str
    node: _File | _Dir


@dataclass(frozen=True, slots=True)
class _Del:
    name: str


@dataclass(frozen=True, slots=True)
class _Rename:
    src: str
    dst: str


_DirOp = _Set | _Del | _Rename


class _Dir:
    __slots__ = ("durable", "entries", "pending")

    def __init__(self) -> None:
        self.entries: dict[str, _File | _Dir] = {}
        self.durable: dict[str, _File | _Dir] = {}
        self.pending: list[_DirOp] = []


def _apply_file_op(content: bytearray, op: _FileOp) -> None:
    if isinstance(op, _Truncate):
        if op.size < len(content):
            del content[op.size :]
        else:
            content.extend(bytes(op.size - len(content)))
        return
    end = op.offset + len(op.data)
    if len(content) < op.offset:
        content.extend(bytes(op.offset - len(content)))
    content[op.offset : end] = op.data


def _apply_torn(content: bytearray, op: _Write, rng: random.Random) -> None:
    """Apply part of a write, one of the ways a disk can tear it."""
    data = op.data
    if not data:
        return
    style = rng.randrange(3)
    if style == 0:  # a prefix of the bytes, the file only as long as that prefix
        _apply_file_op(content, _Write(op.offset, data[: rng.randrange(len(data))]))
    elif style == 1:  # full length, the end never written: zeros (delayed allocation) where
        # the file grew; where it overwrote bytes already on disk, those bytes as they were
        keep = rng.randrange(len(data))
        old = bytes(content[op.offset + keep : op.offset + len(data)])
        rest = old + bytes(len(data) - keep - len(old))
        _apply_file_op(content, _Write(op.offset, data[:keep] + rest))
    else:  # each sector independently written or not
        old = bytes(content[op.offset : op.offset + len(data)])
        old += bytes(len(data) - len(old))
        out = bytearray(old)
        start = op.offset
        while start < op.offset + len(data):
            stop = min((start // SECTOR + 1) * SECTOR, op.offset + len(data))
            if rng.random() < 0.5:
                out[start - op.offset : stop - op.offset] = data[
                    start - op.offset : stop - op.offset
                ]
            start = stop
        _apply_file_op(content, _Write(op.offset, bytes(out)))


def _surviving_content(
    f: _File, mode: LossMode, rng: random.Random, keep: int | None = None, tear: bool = False
) -> bytearray:
    """The durable content plus the pending operations ``mode`` lets survive (for "torn",
    the first ``keep`` of them, random when None, and maybe the next one torn; with
    ``tear`` a pending write is always torn)."""
    out = bytearray(f.durable)
    if mode == "lost":
        return out
    if mode == "kept":
        keep = len(f.pending)
    elif keep is None:
        keep = rng.randint(0, len(f.pending) - 1 if tear and f.pending else len(f.pending))
    for op in f.pending[:keep]:
        _apply_file_op(out, op)
    if (
        keep < len(f.pending)
        and isinstance(f.pending[keep], _Write)
        and (tear or rng.random() < 0.5)
    ):
        torn = f.pending[keep]
        assert isinstance(torn, _Write)
        _apply_torn(out, torn, rng)
    return out


def _apply_dir_ops(entries: dict[str, _File | _Dir], ops: list[_DirOp]) -> None:
    for op in ops:
        if isinstance(op, _Set):
            entries[op.name] = op.node
        elif isinstance(op, _Del):
            entries.pop(op.name, None)
        elif op.src in entries:
            entries[op.dst] = entries.pop(op.src)


class SimFS:
    """The simulated file system (see the module docstring for the model)."""

    def __init__(self, seed: int = 0, *, sync_error: Literal["doom", "keep"] = "doom") -> None:
        self._mu = threading.RLock()
        self._root = _Dir()
        self.rng = random.Random(seed)
        self.sync_error = sync_error
        self.ops = 0
        """Counted operations so far (never reset, also not by a reboot)."""
        self.cut_at: int | None = None
        """Cut the power just before the counted operation with this index."""
        self.dead = False
        self.boot = 0
        self.faults: list[Fault] = []
        self.trace: list[str] = []
        """One ``"op name"`` line per counted operation (for determinism checks)."""
        self.before_op: Callable[[str, str], None] | None = None
        """Called (outside the lock, on the calling thread) before each counted operation."""
        self._locks: set[str] = set()

    # --- test controls ------------------------------------------------------------------------
    def cut_after(self, n: int) -> None:
        """Cut the power just before the ``n``-th counted operation from now (0: the next)."""
        self.cut_at = self.ops + n

    def inject(self, fault: Fault) -> Fault:
        """Add a fault; returns it (its ``hits`` counts how often it fired)."""
        with self._mu:
            self.faults.append(fault)
        return fault

    def power_cut(
        self, mode: LossMode, rng: random.Random | None = None, *, tear: bool = False
    ) -> None:
        """Cut the power now (if not already cut) and boot again with what survived."""
        with self._mu:
            self.dead = True
            self.reboot(mode, rng, tear=tear)

    def reboot(
        self, mode: LossMode, rng: random.Random | None = None, *, tear: bool = False
    ) -> None:
        """After a cut: build the surviving image and bring the machine back up.

        With ``mode="torn"`` and ``tear``, every file with pending writes keeps a random
        prefix of them followed by the next one torn (the worst case, made common). Every
        handle and lock from before is stale (calls on them raise PowerCut); faults and the
        cut point are cleared; ``ops`` and ``trace`` go on.
        """
        with self._mu:
            assert self.dead, "reboot() follows a power cut; use power_cut() to cut now"
            r = rng if rng is not None else self.rng
            files: dict[int, bytearray] = {}

            def survive(d: _Dir) -> None:
                entries = dict(d.durable)
                keep = len(d.pending) if mode == "kept" else 0
                if mode == "torn":
                    keep = r.randint(0, len(d.pending))
                _apply_dir_ops(entries, d.pending[:keep])
                d.entries = entries
                d.durable = dict(entries)
                d.pending = []
                for node in entries.values():
                    if isinstance(node, _Dir):
                        survive(node)
                    elif id(node) not in files:
                        files[id(node)] = _surviving_content(node, mode, r, tear=tear)
                        node.visible = bytearray(files[id(node)])
                        node.durable = bytearray(files[id(node)])
                        node.pending = []

            survive(self._root)
            self.dead = False
            self.boot += 1
            self.cut_at = None
            self.faults = []
            self._locks = set()

    def process_crash(self) -> None:
        """Kill the process now (or, after ``cut_at`` fired, at that operation) without cutting
        the power: every handle and lock from before is stale (calls on them raise
        PowerCut), faults and the cut point are cleared, ``ops`` and ``trace`` go on; files
        and directories keep their visible state and their pending operations."""
        with self._mu:
            self.dead = False
            self.boot += 1
            self.cut_at = None
            self.faults = []
            self._locks = set()

    def clone(self) -> SimFS:
        """An independent copy of the whole state (only between operations, no handles)."""
        with self._mu:
            other = SimFS(self.rng.randrange(1 << 30), sync_error=self.sync_error)
            other._root = copy.deepcopy(self._root)
            other.ops = self.ops
            return other

    def read_file(self, path: str) -> bytes:
        """The visible content of a file (for test assertions; not an operation)."""
        with self._mu:
            node = self._lookup(path)
            if not isinstance(node, _File):
                raise IsADirectoryError(errno_mod.EISDIR, "is a directory", path)
            return bytes(node.visible)

    def write_file(self, path: str, data: bytes) -> None:
        """Replace a file's content durably (for test set-up; not an operation)."""
        with self._mu:
            node = self._lookup(path)
            assert isinstance(node, _File)
            node.visible = bytearray(data)
            node.durable = bytearray(data)
            node.pending = []

    def walk(self, path: str = "/") -> Iterator[str]:
        """Visible file paths under ``path`` (for test assertions; not an operation)."""
        with self._mu:
            node = self._lookup(path)
            assert isinstance(node, _Dir)
            for name, child in sorted(node.entries.items()):
                sub = posixpath.join(path, name)
                if isinstance(child, _Dir):
                    yield from self.walk(sub)
                else:
                    yield sub

    # --- plumbing -----------------------------------------------------------------------------
    def _enter(self, op: str, path: str, boot: int) -> Fault | None:
        """Check power and faults for one call (lock held); count it. Returns a short-write
        fault for the caller to carry out, raises any other fault."""
        if self.dead or boot != self.boot:
            raise PowerCut(f"{op} {path} after the power was cut")
        index: int | None = None
        if op in COUNTED:
            index = self.ops
            if self.cut_at is not None and index >= self.cut_at:
                self.dead = True
                raise PowerCut(f"at operation {index} ({op} {path})")
            self.ops += 1
            self.trace.append(f"{op} {posixpath.basename(path)}")
        for fault in self.faults:
            if fault.matches(op, index, path):
                fault.hits += 1
                if (fault.short and op == "pwrite") or op == "sync":
                    return fault
                raise fault_error(fault, op, path)
        return None

    def _hook(self, op: str, path: str) -> None:
        hook = self.before_op
        if hook is not None:
            hook(op, path)

    def _lookup(self, path: str) -> _File | _Dir:
        node: _File | _Dir = self._root
        for part in _parts(path):
            if not isinstance(node, _Dir) or part not in node.entries:
                raise FileNotFoundError(errno_mod.ENOENT, "No such file or directory", path)
            node = node.entries[part]
        return node

    def _parent(self, path: str) -> tuple[_Dir, str]:
        parts = _parts(path)
        if not parts:
            raise PermissionError(errno_mod.EPERM, "cannot change the root", path)
        parent = self._lookup("/" + "/".join(parts[:-1]))
        if not isinstance(parent, _Dir):
            raise NotADirectoryError(errno_mod.ENOTDIR, "Not a directory", path)
        return parent, parts[-1]

    # --- FileSystem protocol ------------------------------------------------------------------
    def open(self, path: str, *, write: bool, create: bool = False) -> FileHandle:
        if create:
            self._hook("create", path)
        with self._mu:
            if create:
                self._enter("create", path, self.boot)
                parent, name = self._parent(path)
                if name in parent.entries:
                    raise FileExistsError(errno_mod.EEXIST, "File exists", path)
                node: _File | _Dir = _File()
                parent.entries[name] = node
                parent.pending.append(_Set(name, node))
            else:
                self._enter("open", path, self.boot)
                node = self._lookup(path)
            if not isinstance(node, _File):
                raise IsADirectoryError(errno_mod.EISDIR, "Is a directory", path)
            return SimFile(self, node, path, write, self.boot)

    def listdir(self, path: str) -> list[str]:
        with self._mu:
            self._enter("listdir", path, self.boot)
            node = self._lookup(path)
            if not isinstance(node, _Dir):
                raise NotADirectoryError(errno_mod.ENOTDIR, "Not a directory", path)
            return list(node.entries)

    def makedirs(self, path: str) -> None:
        """Like ``OsFileSystem.makedirs``: create each missing directory and sync it into its
        parent; sync each one that exists into its parent too, ignoring errors."""
        parts = _parts(path)
        for i in range(len(parts)):
            sub = "/" + "/".join(parts[: i + 1])
            with self._mu:
                if self.dead:
                    raise PowerCut(f"makedirs {sub} after the power was cut")
                parent, name = self._parent(sub)
                exists = name in parent.entries
                if exists and not isinstance(parent.entries[name], _Dir):
                    raise FileExistsError(errno_mod.EEXIST, "File exists", sub)
            if exists:
                try:
                    self.sync_dir(posixpath.dirname(sub))
                except PowerCut:
                    raise
                except OSError:
                    pass
                continue
            self._hook("mkdir", sub)
            with self._mu:
                self._enter("mkdir", sub, self.boot)
                parent, name = self._parent(sub)
                node = _Dir()
                parent.entries[name] = node
                parent.pending.append(_Set(name, node))
            self.sync_dir(posixpath.dirname(sub))

    def remove(self, path: str) -> None:
        self._hook("remove", path)
        with self._mu:
            self._enter("remove", path, self.boot)
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if node is None:
                raise FileNotFoundError(errno_mod.ENOENT, "No such file or directory", path)
            if isinstance(node, _Dir):
                raise IsADirectoryError(errno_mod.EISDIR, "Is a directory", path)
            del parent.entries[name]
            parent.pending.append(_Del(name))

    def rename(self, src: str, dst: str) -> None:
        if posixpath.dirname(src) != posixpath.dirname(dst):
            raise NotImplementedError("the simulated file system renames within a directory")
        self._hook("rename", src)
        with self._mu:
            self._enter("rename", src, self.boot)
            parent, s = self._parent(src)
            d = posixpath.basename(dst)
            if s not in parent.entries:
                raise FileNotFoundError(errno_mod.ENOENT, "No such file or directory", src)
            parent.entries[d] = parent.entries.pop(s)
            parent.pending.append(_Rename(s, d))

    def sync_dir(self, path: str) -> None:
        self._hook("sync_dir", path)
        with self._mu:
            self._enter("sync_dir", path, self.boot)
            node = self._lookup(path)
            if not isinstance(node, _Dir):
                raise NotADirectoryError(errno_mod.ENOTDIR, "Not a directory", path)
            _apply_dir_ops(node.durable, node.pending)
            node.pending = []

    def lock(self, path: str) -> Lock:
        self._hook("lock", path)
        with self._mu:
            self._enter("lock", path, self.boot)
            if path in self._locks:
                raise BlockingIOError(errno_mod.EWOULDBLOCK, "Resource temporarily unavailable")
            parent, name = self._parent(path)
            if name not in parent.entries:
                node = _File()
                parent.entries[name] = node
                parent.pending.append(_Set(name, node))
            self._locks.add(path)
            return SimLock(self, path, self.boot)


class SimLock:
    """An exclusive lock on a path of a SimFS, held until released or the power is cut."""

    def __init__(self, fs: SimFS, path: str, boot: int) -> None:
        self._fs = fs
        self._path = path
        self._boot = boot
        self._held = True

    def release(self) -> None:
        with self._fs._mu:
            if self._held and self._boot == self._fs.boot:
                self._fs._locks.discard(self._path)
            self._held = False


class SimFile:
    """An open file of a SimFS."""

    def __init__(self, fs: SimFS, node: _File, path: str, write: bool, boot: int) -> None:
        self._fs = fs
        self._node = node
        self.path = path
        self._write = write
        self._boot = boot
        self._closed = False

    def _check(self, writing: bool) -> None:
        if self._closed:
            raise OSError(errno_mod.EBADF, "file is closed", self.path)
        if writing and not self._write:
            raise OSError(errno_mod.EBADF, "file is open for reading only", self.path)

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        fs = self._fs
        fs._hook("pwrite", self.path)
        with fs._mu:
            self._check(True)
            short = fs._enter("pwrite", self.path, self._boot)
            raw = bytes(data)
            if short is not None:
                raw = raw[: fs.rng.randint(1, len(raw) - 1)] if len(raw) > 1 else b""
            op = _Write(offset, raw)
            _apply_file_op(self._node.visible, op)
            self._node.pending.append(op)
            if short is not None:
                raise OSError(errno_mod.ENOSPC, "injected short write (ENOSPC)", self.path)

    def pread(self, size: int, offset: int) -> bytes:
        with self._fs._mu:
            self._check(False)
            self._fs._enter("pread", self.path, self._boot)
            return bytes(self._node.visible[offset : offset + size])

    def pread_many(self, sizes: list[int], offsets: list[int]) -> list[bytes]:
        return list(map(self.pread, sizes, offsets))  # each read faults as on its own

    def pread_many_cached(self, sizes: list[int], offsets: list[int]) -> list[bytes] | None:
        return None  # reads go to a thread, where their faults are modelled

    def sync(self) -> None:
        fs = self._fs
        fs._hook("sync", self.path)
        with fs._mu:
            self._check(False)
            fault = fs._enter("sync", self.path, self._boot)
            if fault is not None:
                self._fail_sync(fault.written_back)
                raise fault_error(fault, "sync", self.path)
            node = self._node
            for op in node.pending:
                _apply_file_op(node.durable, op)
            node.pending = []

    def _fail_sync(self, written_back: int | None) -> None:
        """A failed fsync: some writeback happened, and with ``sync_error="doom"`` the rest
        of the pending writes will never reach the disk although reads still see them."""
        fs = self._fs
        if fs.sync_error == "keep":
            return
        node = self._node
        keep = fs.rng.randint(0, len(node.pending)) if written_back is None else written_back
        if written_back is None:
            node.durable = _surviving_content(node, "torn", fs.rng, keep)
        else:
            for op in node.pending[:keep]:
                _apply_file_op(node.durable, op)
        # size changes are metadata (journaled): they stay pending; data pages are lost
        node.pending = [op for op in node.pending[keep:] if isinstance(op, _Truncate)]

    def truncate(self, size: int) -> None:
        fs = self._fs
        fs._hook("truncate", self.path)
        with fs._mu:
            self._check(True)
            fs._enter("truncate", self.path, self._boot)
            op = _Truncate(size)
            _apply_file_op(self._node.visible, op)
            self._node.pending.append(op)

    def size(self) -> int:
        with self._fs._mu:
            self._check(False)
            self._fs._enter("size", self.path, self._boot)
            return len(self._node.visible)

    def close(self) -> None:
        self._closed = True


def _parts(path: str) -> list[str]:
    norm = posixpath.normpath(path)
    if not norm.startswith("/"):
        raise ValueError(f"the simulated file system wants absolute paths, not {path!r}")
    return [p for p in norm.split("/") if p]
