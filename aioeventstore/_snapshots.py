"""Snapshot files: one per stream, beside the segments, written atomically. Blocking I/O only,
through the file-layer seam; the store runs these calls on its snapshot threads, never on the
event loop and never on the commit loop's I/O thread.

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

import contextlib
import os
import threading

from ._format import (
    SNAPSHOT_SUFFIX,
    SNAPSHOT_TEMP_SUFFIX,
    SnapshotFields,
    Stored,
    snapshot_name,
    unpack_snapshot,
)
from ._fs import FileSystem

__all__ = ["SnapshotDamaged", "SnapshotFiles", "Stored"]


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
                self.fs.remove(os.path.join(self.directory, name))
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
