"""The one error hierarchy of aioeventstore.

Every error the public API raises on purpose derives from :class:`EventStoreError`, and each
class is named after the state it reports. Misuse of an argument (a wrong type, an empty stream
name) raises plain :class:`TypeError`/:class:`ValueError` in the caller's task instead, because
it is a bug in the caller, not a state of the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .events import StreamState


class EventStoreError(Exception):
    """Base class of every error aioeventstore raises about the state of a store."""


class WrongExpectedVersion(EventStoreError):
    """Raised when an append's expected version does not match the stream; nothing is written.

    ``expected`` is what the caller passed (-1 as ``NO_STREAM``, which it means); ``actual``
    is the version of the stream's last event at the moment the commit loop checked it (-1
    when the stream does not exist).
    """

    def __init__(self, stream: str, expected: int | StreamState, actual: int) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"wrong expected version for stream {stream!r}: expected {expected!r}, "
            f"actual {actual} ({'no stream' if actual < 0 else 'last event version'})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.stream, self.expected, self.actual))


class EventTooLarge(EventStoreError, ValueError):
    """Raised when an event (or a whole append) encodes to more bytes than the store allows."""

    def __init__(self, stream: str, what: str, size: int, limit: int, option: str) -> None:
        self.stream = stream
        self.size = size
        self.limit = limit
        super().__init__(
            f"{what} for stream {stream!r} encodes to {size} bytes, over the limit of "
            f"{limit} bytes (StoreOptions.{option})"
        )


class DuplicateEventType(EventStoreError, TypeError):
    """Raised when two different Event classes claim the same event type name."""


class EventDecodeError(EventStoreError):
    """Raised when a stored event cannot be turned back into its registered Event class.

    The bytes on disk are intact (their checksum held); the registered class no longer accepts
    them, e.g. after an incompatible schema change. ``__cause__`` is the pydantic error.
    """

    def __init__(self, stream: str, position: int, type_name: str, reason: str) -> None:
        self.stream = stream
        self.position = position
        self.type_name = type_name
        super().__init__(
            f"cannot decode event at position {position} of stream {stream!r} "
            f"as type {type_name!r}: {reason}"
        )


class MissingUpcaster(EventDecodeError):
    """Raised when a stored event's schema version cannot be brought up to its class's version.

    Either no upcaster is registered for one step of the chain (``missing_from`` is the version
    with no upcaster to ``missing_from + 1``), or the event was written with a schema version
    newer than the class this process has (``missing_from`` is None). ``stored_version`` is the
    event's version on disk and ``class_version`` the registered class's ``__schema_version__``.
    """

    def __init__(
        self,
        stream: str,
        position: int,
        type_name: str,
        stored_version: int,
        class_version: int,
        missing_from: int | None,
    ) -> None:
        self.stored_version = stored_version
        self.class_version = class_version
        self.missing_from = missing_from
        if missing_from is None:
            reason = (
                f"it was written with schema version {stored_version}, newer than the "
                f"registered class's version {class_version}"
            )
        else:
            reason = (
                f"it was written with schema version {stored_version} and the class is at "
                f"version {class_version}, but no upcaster is registered for {type_name!r} "
                f"from version {missing_from} to {missing_from + 1}"
            )
        super().__init__(stream, position, type_name, reason)

    def __reduce__(self) -> tuple[object, ...]:
        return (
            type(self),
            (
                self.stream,
                self.position,
                self.type_name,
                self.stored_version,
                self.class_version,
                self.missing_from,
            ),
        )


class UnsupportedFormat(EventStoreError):
    """Raised on open when a segment was written in an on-disk format newer than this build
    reads (by a newer aioeventstore); nothing is changed on disk.

    ``path`` is the segment file, ``found`` the format version in its header and ``supported``
    the newest version this build reads.
    """

    def __init__(self, path: str | Path, found: int, supported: int) -> None:
        self.path = str(path)
        self.found = found
        self.supported = supported
        super().__init__(
            f"{self.path} is in on-disk format version {found}; this build of aioeventstore "
            f"reads format versions 1 to {supported}: open it with a newer aioeventstore"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.found, self.supported))


class StoreLocked(EventStoreError):
    """Raised when another writer (in this or another process) holds the store's lock."""


class StoreClosed(EventStoreError):
    """Raised when a store is used before it was opened or after it was closed."""


class StoreReadOnly(EventStoreError):
    """Raised by every call that would write to a store opened with ``read_only=True``:
    appends, checkpoints (``ack``), snapshots, stream metadata and deletes, scavenging and
    retention."""


class StoreNotFound(EventStoreError, FileNotFoundError):
    """Raised when a store opened with ``read_only=True`` does not exist (read-only opening
    never creates anything)."""


class StoreFailed(EventStoreError):
    """Raised when a write or sync of the log failed: the store is fail-stopped.

    The batch that failed and every later append raise this; reads of committed events keep
    working; reopening the store recovers from what is on disk. ``__cause__`` is the OS error.
    """


class ReadFailed(EventStoreError, OSError):
    """Raised when reading the log failed in the operating system (an I/O error on a segment
    file): the read stops; the store and its other reads go on. Also an ``OSError`` with the
    same ``errno`` and ``filename``; ``__cause__`` is the OS error."""


class OpenFailed(EventStoreError, OSError):
    """Raised by ``open()`` when opening a store failed in the operating system (an I/O
    error reading, writing or syncing its files, a permission, a full disk): nothing is
    open (no lock held, no thread left); what recovery could not finish, the next open
    does again. Also an ``OSError`` with the same ``errno`` and ``filename``; ``__cause__``
    is the OS error."""


class CompressionUnavailable(EventStoreError):
    """Raised when a store must compress (``compression="zstd"``) or read compressed frames
    and the ``zstandard`` package is not installed (``pip install 'aioeventstore[zstd]'``)."""


class CorruptLog(EventStoreError):
    """Raised when the log holds damaged data that is not a torn tail.

    ``path`` is the segment file and ``offset`` the byte offset of the first bad frame. A torn
    tail (an incomplete or bad frame with nothing valid after it) is cut on open instead.
    """

    def __init__(self, path: str | Path, offset: int, reason: str) -> None:
        self.path = str(path)
        self.offset = offset
        self.reason = reason
        super().__init__(f"corrupt log: {self.path} at byte offset {offset}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.offset, self.reason))


class SnapshotVersionError(EventStoreError, ValueError):
    """Raised when a snapshot is saved for a version its stream does not have (yet).

    A snapshot holds the state after the events ``0..version`` of a stream, so ``version``
    must be >= 0 and at most ``last_version``, the stream's last committed version
    (-1 when the stream has no events), and its event still in the log: at least
    ``first_version`` (above 0 once retention or scavenging removed the stream's oldest
    events; the snapshot is checked against that event whenever it is loaded). Nothing is
    written.
    """

    def __init__(
        self, stream: str, version: int, last_version: int, first_version: int = 0
    ) -> None:
        self.stream = stream
        self.version = version
        self.last_version = last_version
        self.first_version = first_version
        if last_version < 0:
            why = "the stream has no committed events"
        elif version < 0:
            why = f"versions start at 0 (the stream's last committed version is {last_version})"
        elif version < first_version:
            why = (
                f"its events before version {first_version} were removed from the log "
                "(retention or scavenging)"
            )
        else:
            why = f"the stream's last committed version is {last_version}"
        super().__init__(f"cannot save a snapshot of stream {stream!r} at version {version}: {why}")

    def __reduce__(self) -> tuple[object, ...]:
        args = (self.stream, self.version, self.last_version, self.first_version)
        return (type(self), args)


class SnapshotFailed(EventStoreError):
    """Raised when a snapshot file could not be written or read: the file system refused.

    ``__cause__`` is the OS error. The log is not affected (the store keeps running), and a
    failed save leaves the previous snapshot of the stream in place.
    """


class StreamDeleted(EventStoreError):
    """Raised when appending to (or changing the metadata of) a stream that was hard-deleted
    (``delete_stream(..., hard=True)``): its tombstone is permanent. ``stream`` names it."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        super().__init__(f"stream {stream!r} was hard-deleted; it can never be written again")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.stream,))


class MaintenanceFailed(EventStoreError):
    """Raised when a scavenge or retention run fails (an I/O error, or damage it found).

    The store keeps working: each segment is swapped only once its replacement is complete
    and synced, so readers and writers see either the old or the new segment, and a later
    run (or reopening) picks up where this one stopped. ``__cause__`` is the error.
    """
