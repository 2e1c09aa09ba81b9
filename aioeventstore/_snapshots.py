"""Snapshots: one file per stream, beside the segments, written atomically.

``SnapshotFiles`` does the blocking I/O, through the file-layer seam; ``Snapshots`` (the
store's side, on the event loop) encodes, checks versions against the index, and runs the file
calls on the store's snapshot threads: never on the event loop and never on the commit loop's
I/O thread, so a snapshot's fsync never delays a commit batch.

A save writes the whole file under a temporary name, syncs it, renames it over the stream's
snapshot and syncs the directory (FORMAT.md, "Snapshot file"). A crash at any step leaves the
previous snapshot or the new one, never a mix; a temporary file it leaves behind is removed
the next time the store opens. Recovery, ``verify`` and ``repair`` only look at segment files,
so snapshot files never touch the log.

Which snapshot is kept: the newest. A save for a version older than the stored snapshot's
writes nothing, unless the stored one no longer matches the log (the store judges that and
passes it as ``replace``). Saves of one stream are serialised by a per-stream thread lock, so a
cancelled caller (whose thread finishes the save regardless) never races the next save.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from pydantic import BaseModel

from ._codec import pack_state, unpack_state
from ._format import (
    MAX_SNAPSHOT_STATE_BYTES,
    SNAPSHOT_SUFFIX,
    SNAPSHOT_TEMP_SUFFIX,
    SnapshotFields,
    Stored,
    pack_snapshot,
    snapshot_name,
    unpack_snapshot,
)
from ._fs import FileSystem
from ._index import Index
from ._meta import StreamMetas
from ._reader import Reader
from .aggregate import Snapshot
from .errors import SnapshotFailed, SnapshotVersionError, StoreClosed, StreamDeleted

__all__ = ["SnapshotDamaged", "SnapshotFiles", "Snapshots", "Stored"]

S = TypeVar("S", bound=BaseModel)
T = TypeVar("T")
log = logging.getLogger("aioeventstore")


class SnapshotDamaged(Exception):
    """A snapshot file that does not check (internal: the store logs it and ignores the file)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


_NONE = Stored(-1, -1, b"")


class SnapshotFiles:
    """The snapshot files of one store directory. Any thread; see the module docstring."""

    def __init__(self, fs: FileSystem, directory: str) -> None:
        self.fs = fs
        self.directory = directory
        self._mu = threading.Lock()  # guards the two dicts below
        self._locks: dict[str, threading.Lock] = {}
        self._stored: dict[str, Stored] = {}  # what a save found or wrote on disk, per stream

    def path(self, stream: str) -> str:
        """The snapshot file of ``stream``."""
        return os.path.join(self.directory, snapshot_name(stream.encode("utf-8")))

    def remove_temporaries(self) -> int:
        """Remove the temporary files of saves a crash interrupted (on open, under the store's
        lock, before any save can run). Returns how many there were. No directory sync: a
        removal a crash undoes is simply done again next time."""
        n = 0
        for name in self.fs.listdir(self.directory):
            if name.endswith(SNAPSHOT_TEMP_SUFFIX):
                try:
                    self.fs.remove(os.path.join(self.directory, name))
                except OSError as exc:  # (never read: left for the next open, not an error)
                    log.warning("could not remove the temporary snapshot file %s: %s", name, exc)
                    continue
                n += 1
        return n

    # --- reading ------------------------------------------------------------------------------
    def read(self, stream: str) -> SnapshotFields | None:
        """The checked snapshot of ``stream``, or None when it has none. Raises
        SnapshotDamaged when the file does not check, OSError when it cannot be read."""
        path = self.path(stream)
        try:
            f = self.fs.open(path, write=False)
        except FileNotFoundError:
            return None
        try:
            raw = f.pread(f.size(), 0)
        finally:
            f.close()
        try:
            fields = unpack_snapshot(raw)
        except ValueError as exc:
            raise SnapshotDamaged(path, str(exc)) from None
        if fields.stream != stream:
            raise SnapshotDamaged(path, f"the file holds stream {fields.stream!r}, not {stream!r}")
        return fields

    def remove(self, stream: str) -> bool:
        """Remove ``stream``'s snapshot file (a hard-deleted stream's: no load would use it),
        after any save of it in progress; whether there was one. No directory sync: a file a
        crash brings back is ignored as before. Raises OSError."""
        with self._mu:
            lock = self._locks.setdefault(stream, threading.Lock())
        with lock:
            with self._mu:
                self._stored.pop(stream, None)
            try:
                self.fs.remove(self.path(stream))
            except FileNotFoundError:
                return False
            return True

    def forget(self, stream: str) -> None:
        """Drop what is remembered about ``stream``'s file: the next save reads it again (after
        a load found it damaged, so that any later save replaces it)."""
        with self._mu:
            self._stored.pop(stream, None)

    # --- writing ------------------------------------------------------------------------------
    def save(
        self, stream: str, stored_as: Stored, data: bytes, replace: Stored | None
    ) -> Stored | None:
        """Write ``data`` (a whole snapshot file, described by ``stored_as``) as ``stream``'s
        snapshot,
        atomically and durably, unless a newer snapshot is stored: then write nothing and
        return what is stored. ``replace`` names a stored snapshot that may be replaced even
        though it is newer (the caller found that it no longer matches the log). Returns None
        when written. Raises OSError; the previous snapshot is then still in place.
        """
        with self._mu:
            lock = self._locks.setdefault(stream, threading.Lock())
        with lock:
            with self._mu:
                stored = self._stored.get(stream)
            if stored is None:
                stored = self._read_stored(stream)
            if stored.version > stored_as.version and stored != replace:
                with self._mu:
                    self._stored[stream] = stored
                return stored
            with self._mu:  # unknown until the rename is durable: read it again next time
                self._stored.pop(stream, None)
            self._write(self.path(stream), data)
            with self._mu:
                self._stored[stream] = stored_as
            return None

    def _read_stored(self, stream: str) -> Stored:
        try:
            fields = self.read(stream)
        except SnapshotDamaged:
            return _NONE  # a damaged file is replaced by any save
        return _NONE if fields is None else fields.stored

    def _write(self, path: str, data: bytes) -> None:
        """Temporary file, write, sync, rename over ``path``, sync the directory."""
        fs = self.fs
        tmp = f"{path[: -len(SNAPSHOT_SUFFIX)]}.{os.urandom(8).hex()}{SNAPSHOT_TEMP_SUFFIX}"
        f = fs.open(tmp, write=True, create=True)
        try:
            try:
                f.pwrite(data, 0)
                f.sync()
            finally:
                f.close()
            fs.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):  # else it is removed on the next open
                fs.remove(tmp)
            raise
        fs.sync_dir(self.directory)


def _state_class(state_type: type[S], name: str) -> type[S] | None:
    """The class a snapshot saved as ``name`` (a ``__qualname__``) is loaded as: ``state_type``
    or one of its subclasses (``load_aggregate``'s ``apply`` may return one), else None."""
    todo: list[type[S]] = [state_type]
    seen: set[type[S]] = set()
    while todo:
        cls = todo.pop()
        if cls.__qualname__ == name:
            return cls
        seen.add(cls)
        todo += [sub for sub in cls.__subclasses__() if sub not in seen]
    return None


class Snapshots:
    """The store's snapshots, event-loop side (the store checks its arguments first).

    Uses the index (event loop thread only, as everywhere) for versions and positions, the
    reader for event ids, and ``executor`` (the store's snapshot threads, set while the store
    is open) for every file call.
    """

    def __init__(
        self, files: SnapshotFiles, index: Index, reader: Reader, metas: StreamMetas
    ) -> None:
        self.files = files
        self._index = index
        self._reader = reader
        self._metas = metas
        self.executor: Executor | None = None

    async def save(self, stream: str, state: BaseModel, version: int) -> bool:
        """See ``EventStore.save_snapshot``."""
        if self._deleted_meanwhile(stream):  # (no load would ever use it)
            raise StreamDeleted(stream)
        last = self._index.committed_last_version(stream)
        first = self._index.first_version(stream)
        if not 0 <= version <= last or version < first:
            raise SnapshotVersionError(stream, version, last, first)
        position = self._index.position_of(stream, version)
        state_b = pack_state(stream, state)  # now: later changes to the model are not saved
        if len(state_b) > MAX_SNAPSHOT_STATE_BYTES:
            raise ValueError(
                f"snapshot of stream {stream!r} encodes to {len(state_b)} bytes, over the limit "
                f"of {MAX_SNAPSHOT_STATE_BYTES}"
            )
        (event_id,) = await self._reader.stream_ids(stream, version, 1)
        data = pack_snapshot(
            stream.encode("utf-8"),
            type(state).__qualname__.encode("utf-8"),
            version,
            position,
            event_id,
            state_b,
        )
        save, this = self.files.save, Stored(version, position, event_id)
        kept = await self._call(stream, save, stream, this, data, None)
        await self._undo_if_deleted(stream)
        if kept is None:
            return True
        if await self._mismatch(stream, kept) is None:
            return False  # a newer snapshot that still matches the log: keep it
        # the stored snapshot no longer matches the log (see load): replace it
        replaced = await self._call(stream, save, stream, this, data, kept) is None
        await self._undo_if_deleted(stream)
        return replaced

    async def _undo_if_deleted(self, stream: str) -> None:
        """After a write: a hard delete that landed while the save awaited has had its own
        drop run, perhaps before the write; the file goes, and StreamDeleted is raised."""
        if self._deleted_meanwhile(stream):
            await self.drop(stream)
            raise StreamDeleted(stream)

    def _deleted_meanwhile(self, stream: str) -> bool:
        """Whether ``stream`` is hard-deleted (checked before a save and after its write: a
        delete may land while the save awaits)."""
        meta = self._metas.durable.get(stream)
        return meta is not None and meta.hard_deleted

    async def drop(self, stream: str) -> None:
        """Remove the snapshot of a stream just hard-deleted; a failure is logged (the file
        stays, and every load ignores it)."""
        try:
            await self._call(stream, self.files.remove, stream)
        except SnapshotFailed as exc:
            log.warning("could not remove the snapshot of hard-deleted stream %r: %s", stream, exc)

    async def load(self, stream: str, state_type: type[S]) -> Snapshot[S] | None:
        """See ``EventStore.load_snapshot``."""
        found = await self._call(stream, self._load_blocking, stream, state_type)
        if isinstance(found, str):
            log.warning("ignoring the snapshot of stream %r: %s", stream, found)
            return None
        if found is None:
            return None
        state, stored = found
        why = await self._mismatch(stream, stored)
        if why is not None:
            log.warning("ignoring the snapshot of stream %r: %s", stream, why)
            return None
        return Snapshot(state, stored.version)

    async def _mismatch(self, stream: str, stored: Stored) -> str | None:
        """Why a stored snapshot no longer matches the log, or None when it does: its version
        must be committed, still in the log and visible (not hidden by the stream's
        metadata: a delete, ``truncate_before`` or ``max_count`` past it, or the state
        would hold events that reads no longer yield), at the position and with the event id
        it was saved after."""
        last = self._index.committed_last_version(stream)
        if stored.version > last:
            return f"it is for version {stored.version}, the stream's last version is {last}"
        meta = self._metas.durable.get(stream)
        if meta is not None:
            if meta.hard_deleted:
                return "the stream was deleted for good"
            visible = meta.first_visible(last)
            if stored.version < visible:
                what = "deleted" if meta.deleted else f"hidden below version {visible}"
                return (
                    f"its version {stored.version} is {what} by the stream's metadata, so its "
                    "state holds events that reads no longer yield"
                )
        first = self._index.first_version(stream)
        if stored.version < first:
            return (
                f"its version {stored.version} was removed from the log (the stream now starts "
                f"at version {first}), so it can no longer be checked against it"
            )
        if self._index.position_of(stream, stored.version) != stored.position:
            return f"the event at version {stored.version} has another position than it had"
        if await self._reader.stream_ids(stream, stored.version, 1) != [stored.event_id]:
            return f"the event at version {stored.version} is not the one it was saved after"
        return None

    def _load_blocking(self, stream: str, state_type: type[S]) -> tuple[S, Stored] | str | None:
        """Read, check and decode (on a snapshot thread): the state, or why it is unusable."""
        try:
            fields = self.files.read(stream)
        except SnapshotDamaged as exc:
            self.files.forget(stream)
            return f"damaged file {exc.path}: {exc.reason}"
        if fields is None:
            return None
        cls = _state_class(state_type, fields.type_name)
        if cls is None:
            return f"it holds a {fields.type_name!r}, not a {state_type.__qualname__!r}"
        try:
            state = unpack_state(fields.state, cls)
        except ValueError as exc:  # pydantic's ValidationError is one
            return f"its state does not validate as {state_type.__qualname__}: {exc}"
        return state, fields.stored

    async def _call(self, stream: str, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking file call on the snapshot threads; OSError → SnapshotFailed."""
        executor = self.executor
        if executor is None:
            raise StoreClosed(f"store at {self.files.directory} is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except OSError as exc:
            raise SnapshotFailed(
                f"snapshot of stream {stream!r} in {self.files.directory}: {exc.strerror or exc}"
            ) from exc
