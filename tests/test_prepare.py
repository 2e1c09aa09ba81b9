"""``Preparer.prepare`` writes the most common append out by hand (``_prepare.py``): what it
makes must be exactly what the general path makes, and every input it does not handle (or
handles wrongly if it tried) must reach the general path and its errors."""

from __future__ import annotations

import asyncio
import enum
from datetime import UTC, datetime
from typing import Any

import pytest

import aioeventstore as es
from aioeventstore._commit import PendingAppend
from aioeventstore._prepare import FAST_MAX_BYTES, Preparer
from aioeventstore.options import StoreOptions

ID_AT = slice(4, 20)  # an entry's event id: after its 4-byte size


class PPPlain(es.Event):
    name: str
    n: int


class PPNotPlain(es.Event):
    x: float


class PPVersioned(es.Event):
    __schema_version__ = 3
    name: str


def _slots(p: PendingAppend) -> dict[str, Any]:
    """Every field of a PendingAppend but its future and its event id (also taken out of its
    entry)."""
    out: dict[str, Any] = {}
    for name in PendingAppend.__slots__:
        if name in ("future", "ids"):
            continue
        value = getattr(p, name)
        if name == "tail":  # the stream's name, then the entry
            at = len(p.stream_b) + ID_AT.start
            value = value[:at] + bytes(16) + value[at + 16 :]
        out[name] = value
    return out


def _preparer(**options: Any) -> tuple[Preparer, list[asyncio.Future[Any]]]:
    loop = asyncio.new_event_loop()
    made: list[asyncio.Future[Any]] = []

    def new_future() -> asyncio.Future[Any]:
        made.append(loop.create_future())
        return made[-1]

    loop.close()  # futures are only made here, never awaited
    return Preparer(StoreOptions(**options), new_future), made


def _general_only(prep: Preparer) -> Preparer:
    def refuse(*args: object) -> PendingAppend:
        raise AssertionError("the fast path should have taken this append")

    prep._prepare = refuse  # type: ignore[method-assign,assignment]
    return prep


@pytest.mark.parametrize(
    "event",
    [
        PPPlain(name="a", n=1),
        PPPlain(name="é" * 50, n=2**64 - 1),
        PPNotPlain(x=float("inf")),
        PPVersioned(name="v"),
    ],
)
@pytest.mark.parametrize("stream", ["s", "ünï-cödé", "x" * 1000])
def test_the_fast_path_makes_what_the_general_path_makes(event: es.Event, stream: str) -> None:
    prep, futures = _preparer()
    general = prep.prepare(stream, event, es.ANY)  # the first of a class: the general path
    fast = _general_only(prep).prepare(stream, event, es.ANY)
    assert _slots(fast) == _slots(general)
    entry = fast.tail[len(fast.stream_b) :]
    assert fast.ids == entry[ID_AT] and len(fast.ids) == 16
    assert fast.ids != general.ids  # a fresh id each time
    assert fast.future is futures[-1] and general.future is futures[-2]
    assert fast.source is event and fast.flags == (0 if type(event) is not PPVersioned else 1)


@pytest.mark.parametrize(
    ("stream", "expected", "error"),
    [
        ("$reserved", es.ANY, ValueError),
        ("", es.ANY, ValueError),
        ("x" * 1500, es.ANY, ValueError),  # over the name limit in UTF-8 bytes
        ("é" * 800, es.ANY, ValueError),  # 800 characters, 1,600 bytes
        ("\ud800", es.ANY, ValueError),  # not encodable
        (b"bytes", es.ANY, TypeError),
        ("s", -5, ValueError),
        ("s", "1", TypeError),
    ],
)
def test_what_the_fast_path_refuses_raises_as_before(
    stream: Any, expected: Any, error: type[Exception]
) -> None:
    prep, _ = _preparer()
    prep.prepare("warm", PPPlain(name="a", n=1), es.ANY)  # the class is known from here on
    with pytest.raises(error):
        prep.prepare(stream, PPPlain(name="a", n=1), expected)


def test_other_appends_take_the_general_path() -> None:
    prep, _ = _preparer()
    event = PPPlain(name="a", n=1)
    prep.prepare("s", event, es.ANY)
    calls: list[tuple[Any, ...]] = []
    general = prep._prepare

    def spy(*args: Any) -> PendingAppend:
        calls.append(args)
        return general(*args)

    prep._prepare = spy  # type: ignore[method-assign,assignment]
    prep.prepare("s", event, 3)  # an expected version
    prep.prepare("s", [event], es.ANY)  # a list
    prep.prepare("s", es.NewEvent(event), es.ANY)  # a NewEvent
    assert len(calls) == 3
    prep.prepare("s", event, es.ANY)
    assert len(calls) == 3


class _Level(enum.IntEnum):
    HIGH = 3


class _Name(str):
    pass


@pytest.mark.parametrize(
    "value",
    [_Level.HIGH, _Name("sub"), 2**64 + 1, (1, 2), {"k": [1, "x", None, 1.5]}, [True, 2**63]],
)
def test_values_ormsgpack_refuses_are_packed_by_msgpack_as_before(value: Any) -> None:
    # model_construct skips validation: __dict__ may hold anything. The fast path's packer
    # refuses whatever is not a plain value and the general path (msgpack) packs it, or
    # raises as it always did (a ValueError naming the field, for an int past 64 bits).
    prep, _ = _preparer()
    prep.prepare("s", PPPlain(name="a", n=1), es.ANY)
    event = PPPlain.model_construct(name="a", n=value)
    try:
        expected = _slots(prep._prepare("s", event, es.ANY))
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            prep.prepare("s", event, es.ANY)
    else:
        assert _slots(prep.prepare("s", event, es.ANY)) == expected


def test_a_value_nothing_can_pack_raises_type_error() -> None:
    prep, _ = _preparer()
    prep.prepare("s", PPPlain(name="a", n=1), es.ANY)
    with pytest.raises(TypeError):
        prep.prepare("s", PPPlain.model_construct(name="a", n=datetime.now(UTC)), es.ANY)


def test_a_class_with_a_large_event_leaves_the_fast_path() -> None:
    # ormsgpack's buffer growth raised peak memory under large events: past FAST_MAX_BYTES a
    # class's events are packed by msgpack (the general path), the same bytes either way
    prep, _ = _preparer(max_event_bytes=1 << 20)
    general = prep._prepare
    calls: list[str] = []

    def spy(*args: Any) -> PendingAppend:
        calls.append(args[0])
        return general(*args)

    prep._prepare = spy  # type: ignore[method-assign,assignment]
    small, large = PPPlain(name="a", n=1), PPPlain(name="x" * FAST_MAX_BYTES, n=2)
    prep.prepare("first", small, es.ANY)  # the general path, then the fast path knows it
    prep.prepare("fast", small, es.ANY)
    big = prep.prepare("big", large, es.ANY)
    prep.prepare("after", small, es.ANY)
    assert calls == ["first", "big", "after"]
    assert _slots(big) == _slots(general("big", large, es.ANY))


def test_an_event_over_the_limit_raises_event_too_large() -> None:
    prep, _ = _preparer(max_event_bytes=100)
    prep.prepare("s", PPPlain(name="a", n=1), es.ANY)
    with pytest.raises(es.EventTooLarge, match="max_event_bytes"):
        prep.prepare("s", PPPlain(name="a" * 100, n=1), es.ANY)


async def test_fast_path_appends_read_back(tmp_path: Any) -> None:
    async with es.EventStore(tmp_path / "store") as store:
        events = [PPPlain(name=f"n{i}", n=i) for i in range(5)] + [PPVersioned(name="v")]
        for i, event in enumerate(events):
            result = await store.append("ünï", event)
            assert result == es.AppendResult(i, i)
        read = [e async for e in store.read_stream("ünï")]
    assert [e.data for e in read] == events
    assert len({e.id for e in read}) == len(events)
