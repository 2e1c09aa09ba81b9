"""Events as callers write them and as the store hands them back.

``Event`` is the pydantic v2 base class of every domain event. Each subclass is registered under
its type name (the class name, or ``__event_type__`` when the class sets it), and under any
former names it lists in ``__event_aliases__``, so that reads can turn stored data back into the
right class; a type this process does not know comes back as a plain ``dict``, so old or foreign
data can always be read. ``__schema_version__`` is stored with every event; older payloads are
brought up to date by upcasters (``_schema.py``).
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple, NoReturn

from pydantic import BaseModel, ConfigDict

from .errors import DuplicateEventType

__all__ = [
    "ANY",
    "END",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendResult",
    "Event",
    "EventFilter",
    "ExpectedVersion",
    "NewEvent",
    "RecordedEvent",
    "StreamState",
    "event_types",
]


class StreamState(enum.Enum):
    """The symbolic expected versions: ``ANY``, ``NO_STREAM`` and ``STREAM_EXISTS``."""

    ANY = "any"
    NO_STREAM = "no_stream"
    STREAM_EXISTS = "stream_exists"

    def __repr__(self) -> str:
        return f"es.{self.name}"


ANY: Final = StreamState.ANY
"""Append whatever the stream's state (the default)."""
NO_STREAM: Final = StreamState.NO_STREAM
"""Append only if the stream has no events yet."""
STREAM_EXISTS: Final = StreamState.STREAM_EXISTS
"""Append only if the stream has at least one event."""


class StartAt(enum.Enum):
    """Symbolic start points of a subscription."""

    END = "end"

    def __repr__(self) -> str:
        return f"es.{self.name}"


END: Final = StartAt.END
"""Subscribe from the current end: only events committed after the subscription starts."""

ExpectedVersion = int | StreamState
"""An int (the version of the stream's last event) or one of the three symbolic states."""


_classes: dict[str, type[Event]] = {}  # current type name -> class
_registry: dict[str, type[Event]] = {}  # every stored name reads decode: names and aliases
_generation = [0]  # bumped whenever a name, alias or upcaster is (re)registered


class Event(BaseModel):
    """Base class of domain events: an immutable pydantic v2 model.

    Its type name (stored with every event) is the class name unless the class sets
    ``__event_type__ = "some.name"``. Defining two different classes with one type name raises
    :class:`DuplicateEventType`; redefining the same class (same module and qualified name, as
    on a reload) replaces the earlier one.

    Schema evolution (class variables, set on the class itself, not inherited):

    * ``__schema_version__ = 2`` (default 1): written with every event of this class. Events
      stored with an older version are passed through the upcasters registered with
      :func:`upcaster` on read, one version at a time, before the model validates them.
    * ``__event_aliases__ = ("OldName",)``: former type names of this class. Events stored
      under an alias decode to this class and report its current name as ``rec.type``;
      filters naming either name match both. An alias claimed by another class, or equal to
      another class's type name, raises :class:`DuplicateEventType`.
    """

    model_config = ConfigDict(frozen=True)

    __event_type__: ClassVar[str] = ""
    __schema_version__: ClassVar[int] = 1
    __event_aliases__: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        name = cls.__dict__.get("__event_type__") or cls.__name__
        if not isinstance(name, str):
            raise TypeError(f"{cls.__qualname__}.__event_type__ must be a str, not {name!r}")
        version = cls.__dict__.get("__schema_version__", 1)
        if type(version) is not int or not 1 <= version <= 0xFFFF:
            raise TypeError(
                f"{cls.__qualname__}.__schema_version__ must be an int from 1 to 65535, "
                f"not {version!r}"
            )
        aliases = cls.__dict__.get("__event_aliases__", ())
        if isinstance(aliases, str):
            aliases = (aliases,)
        if not isinstance(aliases, tuple | list) or not all(
            isinstance(a, str) and a for a in aliases
        ):
            raise TypeError(
                f"{cls.__qualname__}.__event_aliases__ must be a tuple of type names, "
                f"not {aliases!r}"
            )
        for n in (name, *aliases):
            try:
                n.encode("utf-8")
            except UnicodeEncodeError:  # (a lone surrogate: the type field is UTF-8)
                raise TypeError(f"{cls.__qualname__}: type name {n!r} is not valid UTF-8") from None
        cls.__event_type__ = name
        cls.__schema_version__ = version
        cls.__event_aliases__ = tuple(a for a in aliases if a != name)
        _register(cls)


def _same_class(a: type[Event], b: type[Event]) -> bool:
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _register(cls: type[Event]) -> None:
    name = cls.__event_type__
    for claimed in (name, *cls.__event_aliases__):
        old = _registry.get(claimed)
        if old is not None and not _same_class(old, cls):
            what = "type name" if claimed == name else "alias"
            raise DuplicateEventType(
                f"event type name {claimed!r} ({what} of {cls.__module__}.{cls.__qualname__}) "
                f"is already claimed by {old.__module__}.{old.__qualname__}; "
                "set __event_type__ or __event_aliases__ on one of them"
            )
    # A reload (the same module and name): forget every name the earlier definition claimed,
    # also when the reload renamed it (another __event_type__): a fresh process would not
    # know them either.
    for old_name, old in [(n, c) for n, c in _classes.items() if _same_class(c, cls)]:
        del _classes[old_name]
        for claimed in (old_name, *old.__event_aliases__):
            if _registry.get(claimed) is old:
                del _registry[claimed]
    _classes[name] = cls
    _registry[name] = cls
    for alias in cls.__event_aliases__:
        _registry[alias] = cls
    _generation[0] += 1


def event_types() -> Mapping[str, type[Event]]:
    """A read-only view of the registry: event type name → ``Event`` subclass (current names;
    aliases are listed on each class's ``__event_aliases__``)."""
    return MappingProxyType(_classes)


def lookup_event_type(name: str) -> type[Event] | None:
    """The class that decodes events stored under ``name`` (its type name or one of its
    aliases), or None (internal; reads use it)."""
    return _registry.get(name)


def stored_names_of(names: Iterable[str]) -> frozenset[str]:
    """Every stored type name that reads as one of ``names``: each name, the current name of
    the class it resolves to, and all that class's aliases (internal; filters use it)."""
    out: set[str] = set()
    for name in names:
        out.add(name)
        cls = _registry.get(name)
        if cls is not None:
            out.add(cls.__event_type__)
            out.update(cls.__event_aliases__)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event plus the envelope fields a caller may set: its id and its metadata.

    ``id`` defaults to a fresh random UUID. Giving your own ids makes retries safe: re-appending
    the same ids to the same stream returns the first result and writes nothing.
    ``metadata`` holds JSON-like values (str keys; str, int, float, bool, None, lists and
    dicts; UUIDs and datetimes are stored as strings), e.g. correlation and causation ids.
    """

    event: Event
    id: uuid.UUID | None = None
    metadata: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.event, Event):
            raise TypeError(
                f"NewEvent.event must be an es.Event instance, not {type(self.event).__name__}"
            )
        if self.id is not None and not isinstance(self.id, uuid.UUID):
            raise TypeError(
                f"NewEvent.id must be a uuid.UUID or None, not {type(self.id).__name__}"
            )
        if self.metadata is not None and not isinstance(self.metadata, Mapping):
            raise TypeError(
                f"NewEvent.metadata must be a mapping or None, not {type(self.metadata).__name__}"
            )


AppendSpec = (
    tuple[str, Event | NewEvent | Sequence[Event | NewEvent]]
    | tuple[str, Event | NewEvent | Sequence[Event | NewEvent], ExpectedVersion]
)
"""One append for ``EventStore.append_many``: ``(stream, events)`` or ``(stream, events,
expected_version)``."""


class AppendResult(NamedTuple):
    """What an append returns: the global position and stream version of its last event."""

    position: int
    version: int


AppendResult.position.__doc__ = "Global position of the append's last event (0-based, dense)."
AppendResult.version.__doc__ = "Stream version of the append's last event (0-based)."

_UUID = uuid.UUID
_SAFE_UNKNOWN = uuid.SafeUUID.unknown
_new_object = object.__new__
_set_attr = object.__setattr__


def uuid_from_bytes(raw: bytes) -> uuid.UUID:
    """``uuid.UUID(bytes=raw)`` without re-checking 16 bytes the store wrote itself (2x faster)."""
    u = _new_object(_UUID)
    _set_attr(u, "int", int.from_bytes(raw, "big"))
    _set_attr(u, "is_safe", _SAFE_UNKNOWN)
    return u


try:  # the descriptor namedtuple uses for its fields
    from _collections import _tuplegetter as _field  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - other Pythons
    from operator import itemgetter

    def _field(index: int, doc: str) -> Any:
        return property(itemgetter(index), doc=doc)


def _json_ready(value: Any) -> Any:
    """``_codec.json_ready``, which replaces this when the codec is imported (it imports
    this module: no import from here at load); the import below serves a reloaded module."""
    from ._codec import json_ready

    return json_ready(value)


class _NoMetadata(dict[str, Any]):
    """The type of :data:`NO_METADATA`: an empty dict (so ``json.dumps``, ``pickle`` and
    ``isinstance(m, dict)`` treat it as the metadata of any other event) that refuses to be
    changed, since every record without metadata shares it."""

    __slots__ = ()

    def __init__(self) -> None:  # (no arguments: ``__init__(k=1)`` would fill it)
        super().__init__()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("the metadata of an event appended without any is read-only (shared)")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (_no_metadata, ())


def _no_metadata() -> Mapping[str, Any]:
    return NO_METADATA


NO_METADATA: Final[Mapping[str, Any]] = _NoMetadata()
"""The (read-only, shared) metadata of events that were appended without any: an empty
dict that raises TypeError when changed."""


class RecordedEvent(tuple[str, int, int, bytes, str, Any, Mapping[str, Any], datetime]):
    """One committed event, as reads and subscriptions deliver it. Immutable.

    Fields: ``stream``, ``version``, ``position``, ``id`` (a UUID), ``type`` (the type name),
    ``data``, ``metadata``, ``recorded_at``. ``data`` is an instance of the registered ``Event``
    subclass for ``type``, or a plain dict when this process has no class registered under that
    name. ``metadata`` is a dict; for events appended without metadata, a shared empty one
    that cannot be changed.
    ``recorded_at`` is the commit time of the append that wrote it, an aware UTC datetime
    (microsecond precision).

    A tuple underneath, so replay can build hundreds of thousands per second; the UUID object
    for ``id`` is only made when ``id`` is read.
    """

    __slots__ = ()

    def __new__(
        cls,
        stream: str,
        version: int,
        position: int,
        id: uuid.UUID | bytes,
        type: str,
        data: Event | dict[str, Any],
        metadata: Mapping[str, Any],
        recorded_at: datetime,
    ) -> RecordedEvent:
        raw = id.bytes if isinstance(id, uuid.UUID) else bytes(id)
        return tuple.__new__(
            cls, (stream, version, position, raw, type, data, metadata, recorded_at)
        )

    if TYPE_CHECKING:

        @property
        def stream(self) -> str:
            """The stream the event belongs to."""

        @property
        def version(self) -> int:
            """The event's 0-based index within its stream."""

        @property
        def position(self) -> int:
            """The event's 0-based position in the whole store (dense, but for gaps where
            retention or scavenging removed events)."""

        @property
        def type(self) -> str:
            """The event's type name."""

        @property
        def data(self) -> Event | dict[str, Any]:
            """The registered Event instance, or a dict for an unknown type."""

        @property
        def metadata(self) -> Mapping[str, Any]:
            """The event's metadata (correlation/causation ids and the like)."""

        @property
        def recorded_at(self) -> datetime:
            """Commit time of the append that wrote the event (aware, UTC)."""

    else:  # C-level field access, as namedtuple does it: consumers read these per event
        stream = _field(0, "The stream the event belongs to.")
        version = _field(1, "The event's 0-based index within its stream.")
        position = _field(
            2,
            "The event's 0-based position in the whole store (dense, but for gaps where "
            "retention or scavenging removed events).",
        )
        type = _field(4, "The event's type name.")
        data = _field(5, "The registered Event instance, or a dict for an unknown type.")
        metadata = _field(6, "The event's metadata (correlation/causation ids and the like).")
        recorded_at = _field(7, "Commit time of the append that wrote the event (aware, UTC).")

    @property
    def id(self) -> uuid.UUID:
        """The event's UUID (given by the appender, or generated)."""
        return uuid_from_bytes(self[3])

    def __repr__(self) -> str:
        return (
            f"RecordedEvent(stream={self[0]!r}, version={self[1]}, position={self[2]}, "
            f"id={self.id!r}, type={self[4]!r}, data={self[5]!r}, metadata={dict(self[6])!r}, "
            f"recorded_at={self[7]!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (RecordedEvent, tuple(self))

    def to_json(self) -> str:
        """The event as one line of JSON (RFC 8259), for people and tools (not the storage
        format). Values JSON has no form for are written as: bytes, ``{"$base64": "..."}``;
        a MessagePack extension type, ``{"$ext": code, "$base64": "..."}``; a MessagePack
        timestamp, its ISO 8601 text; a float that is not finite, the str ``"NaN"``,
        ``"Infinity"`` or ``"-Infinity"``; a bytes map key, the str ``"$base64:..."``. (So a
        str or map that looks like one of these reads the same: the JSON is for reading.)"""
        data = self.data.model_dump(mode="json") if isinstance(self.data, Event) else self.data
        doc = {
            "stream": self.stream,
            "version": self.version,
            "position": self.position,
            "id": str(self.id),
            "type": self.type,
            "data": data,
            "metadata": dict(self.metadata),
            "recorded_at": self.recorded_at.isoformat(),
        }
        try:  # (the common case: nothing to convert)
            return json.dumps(doc, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError):
            return json.dumps(_json_ready(doc), allow_nan=False, separators=(",", ":"))


class EventFilter:
    """Which events a read or a subscription delivers.

    ``stream_prefixes``: stream names starting with any of these; ``event_types``: type names
    (or Event classes; one alone, or an iterable of them) to keep. An empty axis does not
    restrict; with both, both must match.
    Filtering happens before decoding: events thrown away are never decoded. A type name
    matches the events of its class whatever name they were stored under (its current name or
    one of its ``__event_aliases__``), resolved against the classes registered when reading.
    """

    __slots__ = ("_expanded", "_types", "event_types", "stream_prefixes")

    def __init__(
        self,
        *,
        stream_prefixes: Iterable[str] = (),
        event_types: str | type[Event] | Iterable[str | type[Event]] = (),
    ) -> None:
        prefixes = (stream_prefixes,) if isinstance(stream_prefixes, str) else stream_prefixes
        try:
            self.stream_prefixes: tuple[str, ...] = tuple(prefixes)
        except TypeError:
            raise TypeError(
                f"EventFilter stream_prefixes must be a str or an iterable of str, "
                f"not {stream_prefixes!r:.60}"
            ) from None
        for p in self.stream_prefixes:
            if not isinstance(p, str):
                raise TypeError(f"EventFilter stream prefixes must be str, not {p!r}")
        names: list[str] = []
        if isinstance(event_types, (str, type)):  # one name or one class
            event_types = (event_types,)
        try:
            given = tuple(event_types)
        except TypeError:
            raise TypeError(
                f"EventFilter event_types must be a type name, an Event class or an iterable "
                f"of them, not {event_types!r:.60}"
            ) from None
        for t in given:
            if isinstance(t, type) and issubclass(t, Event):
                names.append(t.__event_type__)
            elif isinstance(t, str):
                names.append(t)
            else:
                raise TypeError(f"EventFilter event types must be str or Event classes, not {t!r}")
        self.event_types: tuple[str, ...] = tuple(names)
        self._types = frozenset(names)
        self._expanded: tuple[int, frozenset[str]] = (-1, self._types)

    @property
    def type_names(self) -> frozenset[str]:
        """The event type names kept (empty: all), as given."""
        return self._types

    def stored_type_names(self) -> frozenset[str]:
        """Every stored type name the filter keeps: the names given, plus the current names and
        aliases of the classes they resolve to now (empty: all)."""
        gen, expanded = self._expanded
        if gen != _generation[0]:
            expanded = stored_names_of(self._types) if self._types else self._types
            self._expanded = (_generation[0], expanded)
        return expanded

    def matches_stream(self, stream: str) -> bool:
        """Whether events of ``stream`` pass the stream-prefix part of the filter."""
        return not self.stream_prefixes or stream.startswith(self.stream_prefixes)

    def matches(self, rec: RecordedEvent) -> bool:
        """Whether a recorded event passes the filter."""
        return self.matches_names(rec.stream, rec.type)

    def matches_names(self, stream: str, type_name: str) -> bool:
        """Whether an event of ``stream`` stored under ``type_name`` passes the filter."""
        return (not self._types or type_name in self.stored_type_names()) and self.matches_stream(
            stream
        )

    def __repr__(self) -> str:
        return (
            f"EventFilter(stream_prefixes={self.stream_prefixes!r}, "
            f"event_types={self.event_types!r})"
        )
