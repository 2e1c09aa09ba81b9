"""Argument checks for the public API: bad input fails in the caller's task, before anything
is queued, with a message that names the stream, the field and the limit."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from ._format import MAX_STREAM_NAME_BYTES
from .events import NO_STREAM, Event, EventFilter, ExpectedVersion, NewEvent, StartAt, StreamState


def check_stream(stream: object) -> bytes:
    """The stream name's UTF-8, or TypeError/ValueError naming what is wrong.

    No cache: the common case (a str not starting with ``$`` whose UTF-8 fits) costs about
    what a dict lookup would, and a cache of names thrashes once a store has more streams
    than it holds.
    """
    if type(stream) is str and stream and stream[0] != "$":
        try:
            b = stream.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            if len(b) <= MAX_STREAM_NAME_BYTES:
                return b
    return _check_stream(stream)


def _check_stream(stream: object) -> bytes:
    if not isinstance(stream, str):
        raise TypeError(f"stream name must be a str, not {type(stream).__name__}")
    if not stream:
        raise ValueError("stream name must not be empty")
    if stream.startswith("$"):
        raise ValueError(
            f"stream name {stream[:64]!r} starts with '$', which is reserved for the store"
        )
    try:
        b = stream.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"stream name {stream[:64]!r} is not valid UTF-8: {exc}") from None
    if len(b) > MAX_STREAM_NAME_BYTES:
        raise ValueError(
            f"stream name {stream[:64]!r}... is {len(b)} bytes of UTF-8, over the limit of "
            f"{MAX_STREAM_NAME_BYTES}"
        )
    return b


def check_expected(expected: object) -> ExpectedVersion:
    """An ``expected_version`` argument, checked; -1 (the last version of a stream with no
    events, as ``load_aggregate`` returns it, and KurrentDB's ``NoStream``) is ``NO_STREAM``."""
    if isinstance(expected, StreamState):
        return expected
    if not isinstance(expected, int) or isinstance(expected, bool):
        raise TypeError(
            "expected_version must be an int or es.ANY / es.NO_STREAM / es.STREAM_EXISTS, "
            f"not {expected!r:.60}"
        )
    if expected == -1:
        return NO_STREAM
    if not 0 <= expected < 1 << 63:
        raise ValueError(
            f"expected_version must be the version of the stream's last event (an int in "
            f"[0, 2**63), or -1 for none), not {expected!r:.60}; use es.NO_STREAM for a stream "
            "that must not exist"
        )
    return expected


def check_index(what: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} must be an int >= 0, not {value!r}")


def check_filter(filt: object) -> None:
    if filt is not None and not isinstance(filt, EventFilter):
        raise TypeError(f"filter must be an es.EventFilter or None, not {type(filt).__name__}")


def check_consumer_name(name: object) -> bytes:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a consumer name must be a non-empty str, not {name!r}")
    try:
        b = name.encode("utf-8")
    except UnicodeEncodeError as exc:  # (a lone surrogate: stored names are UTF-8)
        raise ValueError(f"consumer name {name[:64]!r} is not valid UTF-8: {exc}") from None
    if len(b) > MAX_STREAM_NAME_BYTES:
        raise ValueError(f"consumer name {name[:64]!r}... is over {MAX_STREAM_NAME_BYTES} bytes")
    return b


def check_limit(limit: object) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, not {limit!r}")


def as_event_list(stream: str, events: object) -> Sequence[Event | NewEvent]:
    if isinstance(events, (Event, NewEvent)):
        return (events,)
    if isinstance(events, (list, tuple)):
        if not events:
            raise ValueError(f"append to stream {stream!r}: the sequence of events is empty")
        return tuple(events)  # a copy: the caller may change its list while we wait
    raise TypeError(
        f"append to stream {stream!r}: expected an es.Event, an es.NewEvent or a list/tuple of "
        f"them, not {type(events).__name__}"
    )


def check_subscription(
    stream: str | None,
    from_position: int | StartAt,
    from_version: int | StartAt,
    filt: EventFilter | None,
    name: str | None,
    buffer_events: int,
) -> None:
    """The arguments of ``EventStore.subscribe`` (its docstring says what combines)."""
    if stream is not None:
        check_stream(stream)
        if filt is not None:
            raise ValueError("filter applies to whole-store subscriptions, not stream=")
        if from_position != 0:
            raise ValueError("a stream subscription starts at from_version=, not from_position=")
    elif from_version != 0:
        raise ValueError("from_version= needs stream=; a whole-store one takes from_position=")
    if not isinstance(from_position, StartAt):
        check_index("from_position", from_position)
    if not isinstance(from_version, StartAt):
        check_index("from_version", from_version)
    check_filter(filt)
    if name is not None:
        check_consumer_name(name)
    if not isinstance(buffer_events, int) or buffer_events < 1:
        raise ValueError(f"buffer_events must be an int >= 1, not {buffer_events!r}")


def check_snapshot(state: object, version: object) -> None:
    """``save_snapshot``'s state (a pydantic model) and version (an int; its range is checked
    against the stream when saving)."""
    if not isinstance(state, BaseModel):
        raise TypeError(f"snapshot state must be a pydantic model, not {type(state).__name__}")
    if not isinstance(version, int) or isinstance(version, bool):
        raise TypeError(f"snapshot version must be an int, not {version!r}")


def check_state_type(state_type: object) -> None:
    """``load_snapshot``'s state type: a pydantic model class."""
    if not (isinstance(state_type, type) and issubclass(state_type, BaseModel)):
        raise TypeError(f"state_type must be a pydantic model class, not {state_type!r}")
