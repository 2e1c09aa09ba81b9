"""aioeventstore: an asyncio-native, embedded, durable event store.

Only re-exports live here; see ``store.py`` for where reading the code starts.
"""

from ._schema import upcaster
from ._stats import Histogram
from ._store_stats import prometheus_text
from ._verify import SegmentProblem, SegmentReport, VerifyReport
from .aggregate import Snapshot, load_aggregate
from .errors import (
    CompressionUnavailable,
    CorruptLog,
    DuplicateEventType,
    EventDecodeError,
    EventStoreError,
    EventTooLarge,
    MaintenanceFailed,
    MissingUpcaster,
    ReadFailed,
    SnapshotFailed,
    SnapshotVersionError,
    StoreClosed,
    StoreFailed,
    StoreLocked,
    StoreNotFound,
    StoreReadOnly,
    StreamDeleted,
    UnsupportedFormat,
    WrongExpectedVersion,
)
from .events import (
    ANY,
    END,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    AppendSpec,
    Event,
    EventFilter,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StartAt,
    StreamState,
    event_types,
)
from .options import Compression, Durability, OptionOverrides, StoreOptions
from .store import (
    EventStore,
    MemoryStorage,
    ScavengeReport,
    StoreStatistics,
    StreamMetadata,
    Subscription,
)

__version__ = "0.1.0"

__all__ = [
    "ANY",
    "END",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendResult",
    "AppendSpec",
    "Compression",
    "CompressionUnavailable",
    "CorruptLog",
    "DuplicateEventType",
    "Durability",
    "Event",
    "EventDecodeError",
    "EventFilter",
    "EventStore",
    "EventStoreError",
    "EventTooLarge",
    "ExpectedVersion",
    "Histogram",
    "MaintenanceFailed",
    "MemoryStorage",
    "MissingUpcaster",
    "NewEvent",
    "OptionOverrides",
    "ReadFailed",
    "RecordedEvent",
    "ScavengeReport",
    "SegmentProblem",
    "SegmentReport",
    "Snapshot",
    "SnapshotFailed",
    "SnapshotVersionError",
    "StartAt",
    "StoreClosed",
    "StoreFailed",
    "StoreLocked",
    "StoreNotFound",
    "StoreOptions",
    "StoreReadOnly",
    "StoreStatistics",
    "StreamDeleted",
    "StreamMetadata",
    "StreamState",
    "Subscription",
    "UnsupportedFormat",
    "VerifyReport",
    "WrongExpectedVersion",
    "__version__",
    "event_types",
    "load_aggregate",
    "prometheus_text",
    "upcaster",
]
