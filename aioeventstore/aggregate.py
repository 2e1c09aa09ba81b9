"""Snapshots as the store hands them back, and loading an aggregate from "latest snapshot +
the events after it".

A snapshot is a cache of state that the events of a stream define: anything wrong with it
(damaged, of another type, ahead of the log) makes ``load_snapshot`` return None, and the
state is rebuilt from the events. Built on the public API only (``load_snapshot``,
``read_stream``, ``save_snapshot``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from pydantic import BaseModel

from .errors import SnapshotFailed, SnapshotVersionError, StreamDeleted
from .events import RecordedEvent

if TYPE_CHECKING:
    from .store import EventStore

__all__ = ["Snapshot", "load_aggregate"]

S = TypeVar("S", bound=BaseModel)
log = logging.getLogger("aioeventstore")


class Snapshot(NamedTuple, Generic[S]):
    """A state and the version of its stream it stands for: that of the last event folded
    into it (``save_snapshot``), or, from ``load_aggregate``, past it when the stream's later
    events are hidden; -1 for the initial state of a stream with no events.
    """

    state: S
    version: int


vars(Snapshot)["state"].__doc__ = "The state: a model of the caller's state type."
vars(Snapshot)["version"].__doc__ = "The stream version the state stands for (-1: no events)."


async def load_aggregate(
    store: EventStore,
    stream: str,
    state_type: type[S],
    apply: Callable[[S, RecordedEvent], S],
    *,
    initial: S | Callable[[], S] | None = None,
    snapshot_every: int | None = None,
) -> Snapshot[S]:
    """The state of ``stream``: its latest usable snapshot (``store.load_snapshot``) with the
    events after it folded in by ``apply``, or, without one, every event folded into the
    initial state. Returns the state and the stream's version it stands for: that of the last
    event folded in, or past it when the events after it are hidden (deleted, truncated,
    expired), -1 for a stream with no events. Pass that version as ``expected_version`` to
    append the aggregate's next events.

    ``apply(state, record)`` returns the next state (a new model, or the one it was given,
    changed); it must return a ``state_type`` (TypeError otherwise). ``initial`` is the state
    before the first event: a ``state_type`` instance (copied, so ``apply`` may change it), a
    callable making one, or None for ``state_type()``.

    ``snapshot_every=N`` saves a snapshot of the result when N or more events were folded in
    on top of the snapshot loaded (or from the start): each load then replays fewer than N
    events plus what was appended since. A snapshot that cannot be saved (``SnapshotFailed``,
    or a delete, retention or scavenge that came in while the events were folded) is logged
    as a warning and the state is returned all the same; a read-only store saves none (it
    changes nothing on disk). One that cannot be read is logged too, and every event folded,
    when the stream's events all are still there (it has none, or its first readable one is
    version 0).

    Raises what ``read_stream`` raises (e.g. ``EventDecodeError``, ``StoreClosed``), and
    ``SnapshotFailed`` when the snapshot cannot be read and the stream's first events are
    gone or hidden (the snapshot may hold their only record; a stream deleted and appended
    to again is one such, to be safe).
    """
    if not (isinstance(state_type, type) and issubclass(state_type, BaseModel)):
        raise TypeError(f"state_type must be a pydantic model class, not {state_type!r}")
    if snapshot_every is not None and (
        not isinstance(snapshot_every, int)
        or isinstance(snapshot_every, bool)
        or snapshot_every < 1
    ):
        raise ValueError(f"snapshot_every must be None or an int >= 1, not {snapshot_every!r}")
    # The stream's version now: if what is read ends below it, the versions in between are
    # hidden (the read goes at least this far), and appending at this version is right.
    head = store.stream_version(stream)
    try:
        snap = await store.load_snapshot(stream, state_type)
    except SnapshotFailed as exc:
        # A cache, when the events are the whole truth: the stream has none, or its first
        # readable event is its version 0. Otherwise (truncated, expired, scavenged,
        # deleted) the snapshot may be the only record of the events before: folding without
        # it would return a wrong state (and snapshot_every would save it over the good
        # one). The error is raised then.
        first = [r.version async for r in store.read_stream(stream, limit=1, raw=True)]
        if head >= 0 and first != [0]:
            raise
        log.warning(
            "could not read the snapshot of stream %r (folding every event): %s", stream, exc
        )
        snap = None
    folded = None
    if snap is not None:
        folded = await _fold(store, stream, state_type, apply, snap.state, snap.version, head)
    if folded is None:  # no snapshot, or hidden since it was checked: every visible event
        folded = await _fold(store, stream, state_type, apply, _initial(state_type, initial), -1)
        assert folded is not None
    state, version, count = folded
    if snapshot_every is not None and count >= snapshot_every and not store.read_only:
        try:
            await store.save_snapshot(stream, state, version)
        except (SnapshotFailed, SnapshotVersionError, StreamDeleted) as exc:
            # (the file system refused, or a delete, retention or scavenge came in while
            # the events were folded: the state read is returned all the same)
            log.warning("could not save a snapshot of stream %r: %s", stream, exc)
    return Snapshot(state, max(version, head))


async def _fold(
    store: EventStore,
    stream: str,
    state_type: type[S],
    apply: Callable[[S, RecordedEvent], S],
    state: S,
    version: int,
    head: int | None = None,
) -> tuple[S, int, int] | None:
    """Fold the visible events after ``version`` into ``state``: the state, the version of
    the last event folded, and how many were. With ``head`` (on a snapshot at ``version``):
    None, having folded nothing, when the stream's visible floor moved past the snapshot
    after it was checked (a delete, ``truncate_before``, or appends past ``max_count``
    meanwhile): its next event is not the next one read, and gluing the two would skip
    events, and save that as a snapshot."""
    count = 0
    async for rec in store.read_stream(stream, from_version=version + 1):
        if head is not None and not count and rec.version != version + 1:
            return None
        state = apply(state, rec)
        if not isinstance(state, state_type):
            raise TypeError(
                f"apply returned a {type(state).__name__} for event {rec.version} of stream "
                f"{stream!r}; it must return the next {state_type.__name__}"
            )
        version = rec.version
        count += 1
    if head is not None and not count and head > version:  # all after it hidden: so is it
        return None
    return state, version, count


def _initial(state_type: type[S], initial: S | Callable[[], S] | None) -> S:
    if initial is None:
        return state_type()
    if isinstance(initial, BaseModel):
        if not isinstance(initial, state_type):
            raise TypeError(f"initial must be a {state_type.__name__}, not {type(initial)!r}")
        return initial.model_copy(deep=True)
    if not callable(initial):
        raise TypeError(
            f"initial must be a {state_type.__name__}, a callable making one, or None, "
            f"not {initial!r:.60}"
        )
    made = initial()
    if not isinstance(made, state_type):
        raise TypeError(f"initial() returned a {type(made).__name__}, not a {state_type.__name__}")
    return made
