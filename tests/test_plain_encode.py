"""The append path packs a plain model's ``__dict__`` instead of calling its serializer
(``_codec.plain_fields``): what it stores must be exactly what the serializer would give, and
every class that could dump differently must keep using the serializer."""

from __future__ import annotations

import functools
import uuid
import warnings
from datetime import datetime
from typing import Annotated, Any, Literal

import msgpack
import pytest
from pydantic import (
    ConfigDict,
    Field,
    PlainSerializer,
    computed_field,
    field_serializer,
    field_validator,
    model_serializer,
)

import aioeventstore as es
from aioeventstore._codec import encode_event, encode_events, plain_fields

ENTRY_DATA_AT = 26  # entry head; the type name follows, then the data


class PEPlain(es.Event):
    name: str
    n: int
    flag: bool = False
    note: str | None = None
    kind: Literal["a", "b", 3] = "a"
    short: Annotated[str, Field(max_length=8)] = "x"


class PEWithFloat(es.Event):
    x: float


class PEWithDatetime(es.Event):
    at: datetime


class PEWithFieldSerializer(es.Event):
    n: int

    @field_serializer("n")
    def _n(self, v: int) -> str:
        return str(v)


class PEWithAnnotatedSerializer(es.Event):
    n: Annotated[int, PlainSerializer(lambda v: v * 2)]


class PEWithComputed(es.Event):
    n: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def double(self) -> int:
        return self.n * 2


class PEWithExcluded(es.Event):
    n: int
    secret: str = Field(default="s", exclude=True)


class PEWithExtra(es.Event):
    model_config = ConfigDict(frozen=True, extra="allow")
    n: int


class PEWithValidator(es.Event):
    n: int

    @field_validator("n")
    @classmethod
    def _double(cls, v: int) -> int:
        return v


class PEWithNested(es.Event):
    inner: PEPlain


class PEWithList(es.Event):
    items: list[int]


class PEWithCachedProperty(es.Event):
    n: int

    @functools.cached_property
    def double(self) -> int:
        return self.n * 2


def _uuid_one() -> Any:
    return uuid.UUID(int=1)


class PEWithUnvalidatedFactory(es.Event):
    # a common slip: pydantic does not validate a default_factory's value, so a UUID is kept
    id: str = Field(default_factory=_uuid_one)


def _bytes_xy() -> Any:
    return b"xy"


class PEWithBytesFactory(es.Event):
    b: str = Field(default_factory=_bytes_xy)  # stored bytes; the serializer dumps a str


class PEWithBoolDefaultForInt(es.Event):
    n: int = True  # stored True; the serializer dumps 1


class PEWithValidatedFactory(es.Event):
    id: str = Field(default_factory=lambda: "x", validate_default=True)
    note: str | None = None
    kind: Literal["a", 3] | None = 3


def stored_data(event: es.Event) -> Any:
    """The event's data as the single-event append path stores it."""
    _eid, entry, _m, _own, _flags = encode_event("s", event, 1 << 20)
    name = type(event).__event_type__.encode()
    return msgpack.unpackb(entry[ENTRY_DATA_AT + len(name) :])


def test_plain_classes_are_recognised() -> None:
    assert plain_fields(PEPlain) == 6
    assert plain_fields(PEWithValidatedFactory) == 3


@pytest.mark.parametrize(
    "cls", [PEWithUnvalidatedFactory, PEWithBytesFactory, PEWithBoolDefaultForInt]
)
def test_unvalidated_defaults_use_the_serializer(cls: type[es.Event]) -> None:
    # pydantic keeps a default (or a default_factory's value) as it is, whatever its type:
    # the serializer then dumps it by its actual type (with a warning), __dict__ would not
    assert plain_fields(cls) == -1
    event = cls()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PydanticSerializationUnexpectedValue
        expected = cls.__pydantic_serializer__.to_python(event, mode="json")
        assert stored_data(event) == expected


@pytest.mark.parametrize(
    "cls",
    [
        PEWithFloat,
        PEWithDatetime,
        PEWithFieldSerializer,
        PEWithAnnotatedSerializer,
        PEWithComputed,
        PEWithExcluded,
        PEWithExtra,
        PEWithValidator,
        PEWithNested,
        PEWithList,
    ],
)
def test_classes_that_may_dump_differently_use_the_serializer(cls: type[es.Event]) -> None:
    assert plain_fields(cls) == -1


@pytest.mark.parametrize(
    "event",
    [
        PEPlain(name="a", n=1),
        PEPlain(name="é" * 40, n=-(2**63), flag=True, note="z", kind=3, short="12345678"),
        PEPlain(name="", n=2**64 - 1, note=None, kind="b"),
        PEWithFieldSerializer(n=5),
        PEWithAnnotatedSerializer(n=5),
        PEWithComputed(n=5),
        PEWithExcluded(n=5, secret="hidden"),
        PEWithExtra(n=5, more="kept"),  # type: ignore[call-arg]
        PEWithNested(inner=PEPlain(name="in", n=2)),
        PEWithFloat(x=float("inf")),
    ],
)
def test_stored_data_is_the_serializers_dump(event: es.Event) -> None:
    expected = type(event).__pydantic_serializer__.to_python(
        event, mode="json", by_alias=False, exclude_computed_fields=True
    )
    assert stored_data(event) == expected
    ids, entries, _m, _own, _flags = encode_events("s", [event, event], 1 << 20, 1 << 21)
    assert len(ids) == 2 * 16 and len(entries) == 2 * (len(entries) // 2)


def test_a_cached_property_value_is_not_stored() -> None:
    # functools.cached_property writes into the instance __dict__: the key count gives it away
    assert plain_fields(PEWithCachedProperty) == 1
    event = PEWithCachedProperty(n=4)
    assert event.double == 8
    assert stored_data(event) == {"n": 4}


async def test_plain_events_round_trip_through_a_store(tmp_path: Any) -> None:
    events = [
        PEPlain(name=f"n{i}", n=i, flag=i % 2 == 0, note=None if i % 3 else "t") for i in range(20)
    ]
    async with es.EventStore(tmp_path / "s") as store:
        await store.append("one", events[0])
        await store.append("many", events[1:])
    async with es.EventStore(tmp_path / "s") as store:
        got = [r.data async for r in store.read_all()]
    assert got == events


class PEExtrasOnly(es.Event):
    """No fields of its own: its data is its extra fields."""

    model_config = ConfigDict(extra="allow")


class PESerializedOnly(es.Event):
    """No fields of its own: its data is what its serializer returns."""

    @model_serializer
    def _dump(self) -> dict[str, Any]:
        return {"kind": "ping"}


class PENoFields(es.Event):
    pass


async def test_classes_without_fields_of_their_own_store_their_dump(tmp_path: Any) -> None:
    """plain_fields said 0 both for "not plain" and for a plain class of no fields, whose
    empty ``__dict__`` then passed for its dump: extras and a serializer's output were
    stored as ``{}`` (acknowledged, and lost)."""
    assert (plain_fields(PEExtrasOnly), plain_fields(PESerializedOnly)) == (-1, -1)
    assert plain_fields(PENoFields) == 0
    events = [PEExtrasOnly.model_validate({"user": "alice", "amount": 10}), PENoFields()]
    async with es.EventStore(tmp_path / "s") as store:
        await store.append("a", events[0])
        await store.append("a", events)
        await store.append_many([("a", events[0])])
        await store.append("b", PESerializedOnly())
    async with es.EventStore(tmp_path / "s") as store:
        raw = [r.data async for r in store.read_all(raw=True)]
    extras = {"user": "alice", "amount": 10}
    assert raw == [extras, extras, {}, extras, {"kind": "ping"}]


class PEPostInit(es.Event):
    """Plain fields, but model_post_init sets values nobody validated."""

    hits: int
    perfect: int = 0

    def model_post_init(self, context: Any) -> None:
        object.__setattr__(self, "perfect", self.hits > 0)  # a bool in an int field


class PEOwnInit(es.Event):
    """Plain fields, but its own __init__ sets one after validation."""

    order: str = ""

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        object.__setattr__(self, "order", uuid.UUID(int=7))  # a UUID in a str field


def test_classes_with_their_own_init_or_post_init_use_the_serializer() -> None:
    """They were taken for plain: a bool was stored where the serializer gives 1, and a
    UUID made the append fail where the serializer gives its text."""
    assert (plain_fields(PEPostInit), plain_fields(PEOwnInit)) == (-1, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the serializer warns about the unexpected types)
        for event in (PEPostInit(hits=3), PEOwnInit()):
            expected = type(event).__pydantic_serializer__.to_python(
                event, mode="json", by_alias=False, exclude_computed_fields=True
            )
            assert stored_data(event) == expected
    assert stored_data(PEPostInit(hits=3)) == {"hits": 3, "perfect": 1}
