"""Event and snapshot models of every pydantic shape read back as they were appended.

Data is stored as the model's JSON-mode dump by field name (FORMAT.md). Reads validate it by
name and alias (strict models as JSON), and without the computed fields that earlier builds
stored: aliased,
strict, and computed-field models come back equal on every path: live, replayed, after a
reopen, and as snapshots.
"""

from __future__ import annotations

import functools
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import pytest
from pydantic import StrictInt
from pydantic.alias_generators import to_camel

import aioeventstore as es
from tests.helpers import take
from tests.test_schema import forget, registry  # noqa: F401  (registry: autouse fixture)


class _Camel(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(alias_generator=to_camel, frozen=True)
    line_count: int = 0


class OrderNoted(es.Event):
    """Aliased fields with defaults: read by alias they came back as the defaults."""

    __event_type__ = "shapes.OrderNoted"

    model_config = pydantic.ConfigDict(alias_generator=to_camel)
    order_id: str = ""
    total_cents: int = 0
    detail: _Camel = _Camel()


class TicketNoted(es.Event):
    """A required aliased field: read by alias every replay was refused."""

    __event_type__ = "shapes.TicketNoted"

    ticket_ref: str = pydantic.Field(alias="ticketRef")


class PaymentNoted(es.Event):
    """Strict: its dump holds the UUID and datetime as strings."""

    __event_type__ = "shapes.PaymentNoted"

    model_config = pydantic.ConfigDict(strict=True)
    payment_id: uuid.UUID
    at: datetime


async def replayed(store: es.EventStore, stream: str) -> list[Any]:
    return [r.data async for r in store.read_stream(stream)]


async def test_aliased_and_strict_events_read_back_on_every_path(store_path: Path) -> None:
    events: list[es.Event] = []
    for i in range(20):  # runs long enough for the list validator, and short ones
        events.append(
            OrderNoted.model_validate(
                {"orderId": f"A-{i}", "totalCents": i, "detail": {"lineCount": i}}
            )
        )
        if i % 3 == 0:
            events.append(TicketNoted(ticketRef=f"T-{i}"))
            events.append(PaymentNoted(payment_id=uuid.uuid4(), at=datetime.now(UTC)))
    async with es.EventStore(store_path) as store:
        async with store.subscribe(from_position=es.END) as live:
            for event in events:
                await store.append("orders", event)
            got_live = [r.data for r in await take(live, len(events))]
        assert got_live == events
        assert await replayed(store, "orders") == events
        assert [r.data async for r in store.read_all()] == events
        raw = [r.data async for r in store.read_all(raw=True)]
        assert raw[0] == {"order_id": "A-0", "total_cents": 0, "detail": {"line_count": 0}}
    async with es.EventStore(store_path) as store:
        assert await replayed(store, "orders") == events
        async with store.subscribe(from_position=0) as catch_up:
            assert [r.data for r in await take(catch_up, len(events))] == events


class Priced(es.Event):
    """Computed field with extra="forbid": its key in the dump was refused on read."""

    __event_type__ = "shapes.Priced"

    model_config = pydantic.ConfigDict(extra="forbid")
    net: int

    @pydantic.computed_field  # type: ignore[prop-decorator]
    @property
    def gross(self) -> int:
        return self.net * 2


class Tagged(es.Event):
    """Computed field with extra="allow": its key came back as extra data (unequal)."""

    __event_type__ = "shapes.Tagged"

    model_config = pydantic.ConfigDict(extra="allow")
    name: str

    @pydantic.computed_field  # type: ignore[prop-decorator]
    @property
    def upper(self) -> str:
        return self.name.upper()


async def test_computed_fields_are_not_stored_and_models_read_back_equal(
    store_path: Path,
) -> None:
    events: list[es.Event] = [
        Priced(net=1),
        Tagged.model_validate({"name": "a", "colour": "red"}),
        Priced(net=2),
    ]
    async with es.EventStore(store_path) as store:
        for event in events:
            await store.append("s", event)
        assert await replayed(store, "s") == events
        raw = [r.data async for r in store.read_all(raw=True)]
        assert raw == [{"net": 1}, {"name": "a", "colour": "red"}, {"net": 2}]
        got = await replayed(store, "s")
        assert got[1].model_extra == {"colour": "red"}  # and no "upper"


async def test_computed_fields_stored_by_earlier_builds_are_dropped_on_read(
    store_path: Path,
) -> None:
    """An earlier build stored computed fields in the dump: played here by classes with a
    plain field of that name, replaced by the computed-field classes."""

    class PricedV1(es.Event):
        __event_type__ = "shapes.PricedOld"
        net: int
        gross: int

    class TaggedV1(es.Event):
        __event_type__ = "shapes.TaggedOld"
        name: str
        upper: str

    async with es.EventStore(store_path) as store:
        for i in range(10):  # (a run long enough for the list validator)
            await store.append("s", PricedV1(net=i, gross=2 * i))
        await store.append("s", TaggedV1(name="a", upper="A"))
    forget("shapes.PricedOld", "shapes.TaggedOld")

    class PricedOld(Priced):
        __event_type__ = "shapes.PricedOld"

    class TaggedOld(Tagged):
        __event_type__ = "shapes.TaggedOld"

    async with es.EventStore(store_path) as store:
        got = await replayed(store, "s")
    assert got == [PricedOld(net=i) for i in range(10)] + [TaggedOld(name="a")]
    assert got[-1].model_extra == {}


class _LineV1(pydantic.BaseModel):
    qty: int
    total: int


class _Line(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    qty: int

    @pydantic.computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        return self.qty * 10


class _LabelV1(pydantic.BaseModel):
    a: int
    twice: int
    colour: str = "red"


class _Label(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    a: int

    @pydantic.computed_field  # type: ignore[prop-decorator]
    @property
    def twice(self) -> int:
        return self.a * 2


async def test_nested_computed_fields_stored_by_earlier_builds_are_dropped_on_read(
    store_path: Path,
) -> None:
    """The same, for computed fields of models inside the event: in a list, in a dict, in
    an optional field; next to real extra data, which is kept."""

    class OrderV1(es.Event):
        __event_type__ = "shapes.Order"
        lines: list[_LineV1]
        labels: dict[str, _LabelV1]
        first: _LineV1 | None = None

    async with es.EventStore(store_path) as store:
        for i in range(10):
            await store.append(
                "o",
                OrderV1(
                    lines=[_LineV1(qty=i, total=10 * i)],
                    labels={"x": _LabelV1(a=i, twice=2 * i)},
                    first=_LineV1(qty=1, total=10) if i % 2 else None,
                ),
            )
    forget("shapes.Order")

    class Order(es.Event):
        __event_type__ = "shapes.Order"
        lines: list[_Line]
        labels: dict[str, _Label]
        first: _Line | None = None

    async with es.EventStore(store_path) as store:
        got = await replayed(store, "o")
    assert got == [
        Order(
            lines=[_Line(qty=i)],
            labels={"x": _Label.model_validate({"a": i, "colour": "red"})},
            first=_Line(qty=1) if i % 2 else None,
        )
        for i in range(10)
    ]
    assert all(d.labels["x"].model_extra == {"colour": "red"} for d in got if isinstance(d, Order))


class Balance(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(alias_generator=to_camel)
    total_balance: int = 0


class Deposit(es.Event):
    __event_type__ = "shapes.Deposit"
    amount: int


def deposit(state: Balance, rec: es.RecordedEvent) -> Balance:
    assert isinstance(rec.data, Deposit)
    return Balance.model_validate({"totalBalance": state.total_balance + rec.data.amount})


async def test_a_snapshot_of_an_aliased_state_loads_its_values(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        for _ in range(4):
            await store.append("acct", Deposit(amount=5))
        await store.save_snapshot("acct", Balance.model_validate({"totalBalance": 15}), 2)
        snap = await store.load_snapshot("acct", Balance)
        assert snap is not None and snap.state == Balance.model_validate({"totalBalance": 15})
        loaded = await es.load_aggregate(store, "acct", Balance, deposit)
        assert (loaded.state.total_balance, loaded.version) == (20, 3)


class Tags(pydantic.BaseModel):
    tags: list[str] = []


async def test_a_snapshot_state_class_whose_validator_raises_is_not_an_error(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A later release's state class whose "before" validator raises a non-ValueError on
    the old state: the snapshot is a cache, so the load warns and folds every event."""

    class Count(es.Event):
        __event_type__ = "shapes.Count"

        tag: str

    async with es.EventStore(store_path) as store:
        for tag in "aba":
            await store.append("t", Count(tag=tag))
        await store.save_snapshot("t", Tags(tags=["a", "b"]), 1)

    class Tags2(pydantic.BaseModel):
        tags: dict[str, int] = {}

        @pydantic.model_validator(mode="before")
        @classmethod
        def counted(cls, data: Any) -> Any:
            return {"tags": dict(data["tags"].items())}  # AttributeError on a list

    Tags2.__qualname__ = Tags.__qualname__  # the same class, as the next release has it

    def count(state: Tags2, rec: es.RecordedEvent) -> Tags2:
        assert isinstance(rec.data, Count)
        tags = dict(state.tags)
        tags[rec.data.tag] = tags.get(rec.data.tag, 0) + 1
        return Tags2(tags={"x": 0}).model_copy(update={"tags": tags})

    async with es.EventStore(store_path) as store:
        with caplog.at_level(logging.WARNING, logger="aioeventstore"):
            assert await store.load_snapshot("t", Tags2) is None
        assert "AttributeError" in caplog.text
        loaded = await es.load_aggregate(store, "t", Tags2, count, initial=Tags2.model_construct)
        assert (loaded.state.tags, loaded.version) == ({"a": 2, "b": 1}, 2)


def test_an_ordinary_class_is_validated_by_its_compiled_validator_alone() -> None:
    """The options above cost a call per event: classes that need none do without them."""
    from aioeventstore._schema import many_validator, validator

    plain = validator(Deposit)
    assert plain == Deposit.__pydantic_validator__.validate_python
    many = many_validator(plain)
    assert many is not None and not isinstance(many, functools.partial)
    assert isinstance(many_validator(validator(OrderNoted)), functools.partial)  # (aliases)
    assert validator(PaymentNoted) != PaymentNoted.__pydantic_validator__.validate_python
    assert many_validator(validator(PaymentNoted)) is None  # (strict: read as JSON, one by one)
    assert many_validator(validator(Priced)) is None  # (old data may need a second try)


class Flagged(es.Event):
    """Strict, with unions a lax validation would coerce: read as JSON, as strict mode
    allows, they come back as appended."""

    __event_type__ = "shapes.Flagged"
    model_config = pydantic.ConfigDict(strict=True)
    answer: bool | int | str
    score: Annotated[StrictInt | str, pydantic.Field(union_mode="left_to_right")]
    at: datetime


class Invoiced(es.Event):
    """serialize_by_alias: stored by field name all the same."""

    __event_type__ = "shapes.Invoiced"
    model_config = pydantic.ConfigDict(
        alias_generator=pydantic.AliasGenerator(serialization_alias=to_camel),
        serialize_by_alias=True,
    )
    invoice_no: str = "unknown"
    cents: int = pydantic.Field(0, serialization_alias="amountCents")


async def test_strict_unions_and_serialization_aliases_read_back(store_path: Path) -> None:
    now = datetime.now(UTC)
    events: list[es.Event] = [
        Flagged(answer="yes", score="5", at=now),
        Flagged(answer="1", score=5, at=now),
        Flagged(answer=True, score="x", at=now),
        Invoiced(invoice_no="INV-7", cents=5),
    ]
    async with es.EventStore(store_path) as store:
        async with store.subscribe(from_position=es.END) as live:
            for event in events:
                await store.append("s", event)
            assert [r.data for r in await take(live, len(events))] == events
        assert await replayed(store, "s") == events
        raw = [r.data async for r in store.read_all(raw=True)]
        assert raw[3] == {"invoice_no": "INV-7", "cents": 5}


class Account(pydantic.BaseModel):
    """A state class that migrates an older state in its own ``model_validate``, stored by
    serialization alias."""

    model_config = pydantic.ConfigDict(serialize_by_alias=True)
    total_cents: int = pydantic.Field(1, serialization_alias="totalCents")

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Account:
        if isinstance(obj, dict) and "balance" in obj:
            obj = {"total_cents": obj["balance"] + 1}
        return super().model_validate(obj, **kwargs)


class AccountV1(pydantic.BaseModel):
    balance: int


async def test_a_snapshot_goes_through_its_state_classs_model_validate(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        for _ in range(3):
            await store.append("acct", Deposit(amount=100))
        await store.save_snapshot("acct", Account(total_cents=300), 2)
        snap = await store.load_snapshot("acct", Account)
        assert snap is not None and snap.state == Account(total_cents=300)
    AccountV1.__qualname__ = Account.__qualname__  # the previous release's class
    try:
        async with es.EventStore(store_path) as store:
            await store.save_snapshot("acct", AccountV1(balance=300), 2)
            snap = await store.load_snapshot("acct", Account)
    finally:
        AccountV1.__qualname__ = "AccountV1"
    assert snap is not None and snap.state == Account(total_cents=301)


class _LineOld(pydantic.BaseModel):
    kind: Literal["line"] = "line"
    qty: int
    total: int


class _FeeOld(pydantic.BaseModel):
    kind: Literal["fee"] = "fee"
    cents: int


class _Fee(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    kind: Literal["fee"] = "fee"
    cents: int


class _TaggedLine(_Line):
    kind: Literal["line"] = "line"


async def test_old_computed_fields_inside_unions_are_dropped_too(store_path: Path) -> None:
    """The error locations of union members name the member (a tag), not a key: passed
    over, and a plain union's other member's errors do not stop the second try."""

    class BillV1(es.Event):
        __event_type__ = "shapes.Bill"
        tagged: list[Annotated[_LineOld | _FeeOld, pydantic.Field(discriminator="kind")]]
        plain: _LineOld | _FeeOld

    async with es.EventStore(store_path) as store:
        await store.append(
            "b",
            BillV1(
                tagged=[_LineOld(qty=2, total=20), _FeeOld(cents=5)],
                plain=_LineOld(qty=3, total=30),
            ),
        )
    forget("shapes.Bill")

    class Bill(es.Event):
        __event_type__ = "shapes.Bill"
        tagged: list[Annotated[_TaggedLine | _Fee, pydantic.Field(discriminator="kind")]]
        plain: _TaggedLine | _Fee

    async with es.EventStore(store_path) as store:
        assert await replayed(store, "b") == [
            Bill(tagged=[_TaggedLine(qty=2), _Fee(cents=5)], plain=_TaggedLine(qty=3))
        ]


class _Tree(pydantic.BaseModel):
    """Children linked back to their parent after validation: a cycle in the instance."""

    model_config = pydantic.ConfigDict(extra="allow")
    name: str
    children: list[_Tree] = []
    parent: Any = pydantic.Field(default=None, exclude=True, repr=False)

    @pydantic.model_validator(mode="after")
    def _link(self) -> _Tree:
        for child in self.children:
            child.parent = self
        return self

    @pydantic.computed_field  # type: ignore[prop-decorator]
    @property
    def size(self) -> int:
        return len(self.children)


class TreeGrown(es.Event):
    __event_type__ = "shapes.TreeGrown"
    root: _Tree
    computed_fields: int = 0  # (a field of that name is not a schema's list of them)
    tag: str = pydantic.Field(
        default="t", json_schema_extra={"strict": True, "validation_alias": "x"}
    )


async def test_odd_shapes_read_back_and_ordinary_ones_pay_nothing(store_path: Path) -> None:
    leaf = _Tree.model_validate({"name": "a", "colour": "red"})
    tree = _Tree(name="r", children=[leaf, _Tree(name="b")])
    event = TreeGrown.model_validate({"root": tree, "computed_fields": 3})
    async with es.EventStore(store_path) as store:
        await store.append("t", event)
        (got,) = await replayed(store, "t")
    assert isinstance(got, TreeGrown)
    assert got.model_dump() == event.model_dump() and got.computed_fields == 3
    assert got.root.children[0].parent is got.root
    assert got.root.children[0].model_extra == {"colour": "red"}

    from aioeventstore._schema import _features

    f = _features(TreeGrown.__pydantic_core_schema__)
    assert (f.aliases, f.strict, f.computed, f.allows, f.forbids) == (
        False,
        False,
        frozenset({"size"}),
        True,
        False,
    )
    g = _features(TicketNoted.__pydantic_core_schema__)
    assert (g.aliases, g.strict, g.legacy) == (True, False, False)


async def test_metadata_holding_one_dict_many_times_is_refused_at_once(store_path: Path) -> None:
    shared: dict[str, Any] = {}
    shared["a"] = shared
    shared["b"] = shared  # (2**512 paths, if each were walked: a walk per level instead)
    async with es.EventStore(store_path) as store:
        with pytest.raises(ValueError, match=r"metadata holds itself \(at \['m'\]\['\w'\]\)"):
            await store.append("s", es.NewEvent(Deposit(amount=1), metadata={"m": shared}))


class Deep(es.Event):
    """Strict, nested deeper than the JSON parser goes (200): read lax instead."""

    __event_type__ = "shapes.Deep"
    model_config = pydantic.ConfigDict(strict=True)
    inner: Any


async def test_a_strict_model_nested_deeper_than_json_reads_back(store_path: Path) -> None:
    nested: Any = 1
    for _ in range(210):
        nested = [nested]
    async with es.EventStore(store_path) as store:
        await store.append("d", Deep(inner=nested))
        assert await replayed(store, "d") == [Deep(inner=nested)]


class Narrow(pydantic.BaseModel):
    """An aliased state class overriding ``model_validate`` without ``**kwargs``."""

    model_config = pydantic.ConfigDict(alias_generator=to_camel, validate_by_name=True)
    total_cents: int = 0

    @classmethod
    def model_validate(cls, obj: Any) -> Narrow:  # type: ignore[override]
        return super().model_validate(obj)


async def test_a_state_class_with_a_narrow_model_validate_loads(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await store.append("n", Deposit(amount=1))
        await store.save_snapshot("n", Narrow(total_cents=7), 0)
        snap = await store.load_snapshot("n", Narrow)
    assert snap is not None and snap.state == Narrow(total_cents=7)
