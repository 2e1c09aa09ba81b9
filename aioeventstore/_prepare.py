"""A caller's append, checked and encoded in the caller's task, as the commit loop's work item.

Everything that can reject an append happens here, before anything is queued: bad input
raises (TypeError, ValueError, :class:`EventTooLarge`) in the caller's task with nothing
written. What comes out is a :class:`PendingAppend` holding the frame's body, ready for
the commit loop to give versions and positions to.

The most common append (one event of a class already encoded once, to a stream with a
plain name, with ``ANY``) is written out in :meth:`Preparer.prepare` without a call: at
P=1024 this path is a quarter of the event loop's work per append, and each call, tuple
and class instantiation on it showed (callgrind over a whole run: 51.3k instructions per
append through the general path, 47.5k with this one). It makes exactly the entry
:func:`encode_event` makes (tests compare the two); anything else takes the general path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import ormsgpack

from ._checks import as_event_list, check_expected, check_stream
from ._codec import (
    ID_POOL,
    STORED_DUMP,
    TYPE_FIELDS,
    TypeFields,
    encode_event,
    encode_events,
    new_event_id,
)
from ._commit import FRAME_OVERHEAD, PendingAppend
from ._format import ENTRY_HEAD_SIZE, MAX_STREAM_NAME_BYTES
from .events import ANY, AppendResult, Event, ExpectedVersion, NewEvent
from .options import StoreOptions

_new = object.__new__
_packb = ormsgpack.packb
_NATIVE_ONLY = (
    ormsgpack.OPT_PASSTHROUGH_BIG_INT
    | ormsgpack.OPT_PASSTHROUGH_DATACLASS
    | ormsgpack.OPT_PASSTHROUGH_DATETIME
    | ormsgpack.OPT_PASSTHROUGH_ENUM
    | ormsgpack.OPT_PASSTHROUGH_SUBCLASS
    | ormsgpack.OPT_PASSTHROUGH_TUPLE
    | ormsgpack.OPT_PASSTHROUGH_UUID
)
"""ormsgpack packs only str, int, float, bool, None, and lists and str-keyed dicts of them
(it refuses everything else with a TypeError): exactly the bytes msgpack makes for those, in
two thirds of its time."""
_ENTRY_FIXED = ENTRY_HEAD_SIZE - 4  # an entry's size field counts what follows it
FAST_MAX_BYTES = 64 * 1024
"""Events of a class the fast path takes are at most this large (see ``Preparer._fast``)."""
_DOLLAR = ord("$")


class Preparer:
    """Prepares the appends of one store (its limits and its loop's futures)."""

    def __init__(
        self,
        options: StoreOptions,
        new_future: Callable[[], asyncio.Future[AppendResult | Any]],
    ) -> None:
        self._max_event_bytes = options.max_event_bytes
        self._max_append_bytes = options.max_append_bytes
        self._new_future = new_future
        # (an entry is its size field and the size: the append's limit counts both)
        self._fast_max = min(options.max_event_bytes, options.max_append_bytes - 4, FAST_MAX_BYTES)
        self._fast: dict[type, TypeFields] = {}
        """The event classes the fast path takes (its own ``TYPE_FIELDS``): those appended
        once through the general path, unless one of their events was ever over
        ``FAST_MAX_BYTES``."""
        self._big: set[type] = set()  # classes taken off the fast path for good

    def prepare(
        self,
        stream: str,
        events: Event | NewEvent | Sequence[Event | NewEvent],
        expected_version: ExpectedVersion,
    ) -> PendingAppend:
        """The PendingAppend of one append, with the future its caller waits on. Raises for
        bad input; nothing is queued here."""
        fields = self._fast.get(type(events))
        if fields is not None and expected_version is ANY and type(stream) is str:
            try:
                stream_b = stream.encode()
            except UnicodeEncodeError:  # check_stream says what is wrong
                stream_b = b""
            if 0 < len(stream_b) <= MAX_STREAM_NAME_BYTES and stream_b[0] != _DOLLAR:
                # encode_event, written out
                _plain, _versioned, type_b, flags, plain, head = fields
                value = events.__dict__
                try:
                    if len(value) != plain:  # not a plain class (plain is -1), or a key added
                        serializer = type(events).__pydantic_serializer__  # type: ignore[union-attr]
                        value = serializer.to_python(events, **STORED_DUMP)
                    data = _packb(value, option=_NATIVE_ONLY)
                except (TypeError, ValueError):
                    # not a plain value: msgpack packs it, as it always did (and the general
                    # path says what is wrong with a value neither can store)
                    return self._prepare(stream, events, expected_version)
                size = _ENTRY_FIXED + len(type_b) + len(data)
                if size <= self._fast_max:
                    try:
                        eid = ID_POOL.pop()  # new_event_id(), without the call while it lasts
                    except IndexError:  # (the pool is shared by threads: no check-then-pop)
                        eid = new_event_id()
                    tail = stream_b + head(size, eid, len(type_b), 0, type_b) + data
                    # PendingAppend.__init__, written out (a class call is not cheap)
                    pending: PendingAppend = _new(PendingAppend)
                    pending.stream = stream
                    pending.stream_b = stream_b
                    pending.expected = ANY
                    pending.ids = eid
                    pending.count = 1
                    pending.tail = tail
                    pending.size = FRAME_OVERHEAD + len(tail)
                    pending.future = self._new_future()
                    pending.source = events  # type: ignore[assignment]
                    pending.metas = None
                    pending.first_version = -1
                    pending.position = -1
                    pending.outcome = None
                    pending.key = None
                    pending.flags = flags
                    return pending
                # A large event: ormsgpack grows its buffer for it, which raised the peak
                # memory of tests/test_load.py by up to 25 MB; msgpack packs its class's
                # events from now on (what ormsgpack saves is on small events).
                del self._fast[type(events)]
                self._big.add(type(events))
        return self._prepare(stream, events, expected_version)

    def _prepare(
        self,
        stream: str,
        events: Event | NewEvent | Sequence[Event | NewEvent],
        expected_version: ExpectedVersion,
    ) -> PendingAppend:
        """:meth:`prepare` for every append (and the errors)."""
        stream_b = check_stream(stream)
        if expected_version is not ANY:
            expected_version = check_expected(expected_version)
        source: Event | Sequence[Event | NewEvent]
        if isinstance(events, Event):
            source = events
            ids, entries, metas, own_ids, flags = encode_event(
                stream, events, self._max_event_bytes, self._max_append_bytes
            )
            cls = type(events)
            if expected_version is ANY and cls not in self._big and cls in TYPE_FIELDS:
                self._fast[cls] = TYPE_FIELDS[cls]  # the next one may take the fast path
        else:
            source = as_event_list(stream, events)
            ids, entries, metas, own_ids, flags = encode_events(
                stream, source, self._max_event_bytes, self._max_append_bytes
            )
        return PendingAppend(
            stream,
            stream_b,
            expected_version,
            ids,
            entries,
            self._new_future(),
            source,
            metas,
            own_ids,
            flags,
        )
