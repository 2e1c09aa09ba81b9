"""Schema evolution: stored schema versions, upcasters, renamed types, and the format version.

Each test defines its event classes inside itself: the ``registry`` fixture restores the type
registry and the upcasters afterwards, and ``forget`` plays "the next release of the code" by
dropping a class so that a new definition can take its name.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

import aioeventstore as es
from aioeventstore import _schema
from aioeventstore import events as events_module
from aioeventstore._cli import main as cli
from aioeventstore._format import (
    FORMAT_VERSION,
    FRAME_FLAG_SCHEMA,
    FRAME_KIND_COMPRESSED,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    crc32c,
)
from aioeventstore._verify import verify_store
from tests.test_compression import kinds

FIXTURE = Path(__file__).parent / "fixtures" / "schema_v1_store"


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    registry, classes = dict(events_module._registry), dict(events_module._classes)
    upcasters = dict(_schema._upcasters)
    yield
    events_module._registry.clear()
    events_module._registry.update(registry)
    events_module._classes.clear()
    events_module._classes.update(classes)
    _schema._upcasters.clear()
    _schema._upcasters.update(upcasters)
    events_module._generation[0] += 1


def forget(*names: str) -> None:
    """Unregister the classes of these type names (and their aliases)."""
    for name in names:
        cls = events_module._classes.pop(name, None)
        events_module._registry.pop(name, None)
        for alias in cls.__event_aliases__ if cls is not None else ():
            events_module._registry.pop(alias, None)
    events_module._generation[0] += 1


def set_format_version(seg: Path, version: int) -> None:
    """Rewrite a segment header's format version (and its CRC), as another build would."""
    raw = bytearray(seg.read_bytes())
    magic, _v, hlen, flags, first, res, _crc = SEGMENT_HEADER.unpack_from(raw)
    head = SEGMENT_HEADER.pack(magic, version, hlen, flags, first, res, 0)[:-4]
    raw[:SEGMENT_HEADER_SIZE] = head + crc32c(head).to_bytes(4, "little")
    seg.write_bytes(bytes(raw))


async def everything(store: es.EventStore, **kwargs: Any) -> list[es.RecordedEvent]:
    return [r async for r in store.read_all(**kwargs)]


# --- declaring versions -----------------------------------------------------------------------
def test_schema_version_and_aliases_are_class_variables() -> None:
    class Plain(es.Event):
        x: int

    class Versioned(es.Event):
        __schema_version__ = 3
        __event_aliases__ = ("OldVersioned",)
        x: int

    class Child(Versioned):  # not inherited: a subclass is its own type
        pass

    assert Plain.__schema_version__ == 1 and Plain.__event_aliases__ == ()
    assert Versioned.__schema_version__ == 3 and Versioned.__event_aliases__ == ("OldVersioned",)
    assert Child.__schema_version__ == 1 and not Child.__event_aliases__
    assert es.event_types()["Versioned"] is Versioned
    assert "OldVersioned" not in es.event_types()  # aliases are not type names
    for bad in (0, 65536, "2", 1.0):
        with pytest.raises(TypeError, match="__schema_version__"):
            type("Bad", (es.Event,), {"__schema_version__": bad, "__module__": __name__})
    with pytest.raises(TypeError, match="__event_aliases__"):
        type("Bad", (es.Event,), {"__event_aliases__": (1,), "__module__": __name__})


def test_an_alias_cannot_take_another_classs_name() -> None:
    class Taken(es.Event):
        x: int

    with pytest.raises(es.DuplicateEventType, match=r"'Taken'.*alias"):

        class Thief(es.Event):
            __event_aliases__ = ("Taken",)
            x: int

    class Renamed(es.Event):
        __event_aliases__ = ("Gone",)
        x: int

    with pytest.raises(es.DuplicateEventType, match="'Gone'"):

        class Gone(es.Event):
            x: int


def test_upcaster_registration_rules() -> None:
    def up(data: dict[str, Any]) -> dict[str, Any]:
        return data

    def other(data: dict[str, Any]) -> dict[str, Any]:
        return data

    assert es.upcaster("T", from_version=1)(up) is up
    es.upcaster("T", from_version=1)(up)  # the same function again: fine (a reload)
    with pytest.raises(ValueError, match="already registered"):
        es.upcaster("T", from_version=1)(other)
    with pytest.raises(ValueError, match="from_version"):
        es.upcaster("T", from_version=0)
    with pytest.raises(TypeError, match="type_name"):
        es.upcaster("", from_version=1)


# --- writing versions -------------------------------------------------------------------------
async def test_versions_are_stored_per_event_and_current_ones_need_no_upcaster(
    store_path: Path,
) -> None:
    class Plain(es.Event):
        x: int

    class Shiny(es.Event):
        __schema_version__ = 4
        y: int

    async with es.EventStore(store_path) as store:
        await store.append("a", Plain(x=1))  # all version 1: the format 1 layout
        await store.append("a", [Plain(x=2), Shiny(y=3)])  # mixed: every entry has a version
        recs = await everything(store)
        stream = [r async for r in store.read_stream("a")]
    assert [r.data for r in recs] == [Plain(x=1), Plain(x=2), Shiny(y=3)]
    assert [r.data for r in stream] == [r.data for r in recs]
    raw = next(store_path.glob("*.seg")).read_bytes()
    first, second = raw.index(b"\xc1AEF"), raw.index(b"\xc1AEF", 40)
    assert raw[first + 13] == 0 and raw[second + 13] == FRAME_FLAG_SCHEMA  # body flags byte
    assert b"Plain\x01\x00" in raw and b"Shiny\x04\x00" in raw
    assert raw.count(b"Plain") == 2  # the first frame's entry has no version


# --- reading old versions ---------------------------------------------------------------------
async def test_upcasters_chain_on_every_read_path_and_live_events_skip_them(
    store_path: Path,
) -> None:
    class OpenedV1(es.Event):  # the first release: one name field
        __event_type__ = "Opened"
        name: str

    async with es.EventStore(store_path) as store:
        await store.append("acc-1", [OpenedV1(name="Ada Lovelace"), OpenedV1(name="Bob Smith")])

    forget("Opened")
    calls: list[tuple[int, dict[str, Any]]] = []

    class Opened(es.Event):  # v3: the name split, then a tier added
        __schema_version__ = 3
        first: str
        last: str
        tier: str

    @es.upcaster("Opened", from_version=1)
    def split(data: dict[str, Any]) -> dict[str, Any]:
        calls.append((1, dict(data)))
        first, last = data.pop("name").split(" ", 1)
        return {**data, "first": first, "last": last}

    @es.upcaster(Opened, from_version=2)
    def tier(data: dict[str, Any]) -> dict[str, Any]:
        calls.append((2, dict(data)))
        return {**data, "tier": "basic"}

    want = [
        Opened(first="Ada", last="Lovelace", tier="basic"),
        Opened(first="Bob", last="Smith", tier="basic"),
    ]
    async with es.EventStore(store_path) as store:
        assert [r.data for r in await everything(store)] == want
        assert [r.data async for r in store.read_stream("acc-1")] == want
        assert [r.data async for r in store.read_stream("acc-1", backwards=True)] == want[::-1]
        filt = es.EventFilter(event_types=[Opened])
        assert [r.data for r in await everything(store, filter=filt)] == want
        assert calls[:2] == [
            (1, {"name": "Ada Lovelace"}),
            (2, {"first": "Ada", "last": "Lovelace"}),
        ]
        # raw reads hand back what is stored, not upcast
        raw = await everything(store, raw=True)
        assert [r.data for r in raw] == [{"name": "Ada Lovelace"}, {"name": "Bob Smith"}]

        calls.clear()
        fresh = Opened(first="Cy", last="Young", tier="gold")
        async with store.subscribe(from_position=0) as sub:
            got: list[es.RecordedEvent] = []
            async for rec in sub:
                got.append(rec)
                if len(got) == 2:  # history done: the next one is delivered live
                    await sub.caught_up()
                    await store.append("acc-1", fresh)
                if len(got) == 3:
                    break
        assert [r.data for r in got] == [*want, fresh]
        assert len(calls) == 4  # 2 upcasts for each of the 2 stored events, none for the live one
        # and once on disk, the new event is at version 3: read back without upcasters
        calls.clear()
        assert (await everything(store, from_position=2))[0].data == fresh
        async with store.subscribe(from_position=2) as sub:
            async for rec in sub:
                assert rec.data == fresh
                break
        assert calls == []


async def test_an_open_store_reads_with_the_classes_and_upcasters_registered_since(
    store_path: Path,
) -> None:
    """A store's reads share their decoders while the registry stays as it is (a short
    read would otherwise build its decoder every time); registering a class, or an
    upcaster, takes effect from the next read of the same open store, on every read path."""

    class TicketV1(es.Event):
        __event_type__ = "Ticket"
        title: str

    async with es.EventStore(store_path) as store:
        await store.append("t-1", [TicketV1(title="a")])
        forget("Ticket")
        await store.append("t-2", [TicketV1(title="b")])  # (classes stay usable for writes)
        assert [r.data async for r in store.read_stream("t-1")] == [{"title": "a"}]
        assert [r.data for r in await everything(store)] == [{"title": "a"}, {"title": "b"}]

        class Ticket(es.Event):  # registered while the store is open: read from now on
            title: str

        assert [r.data async for r in store.read_stream("t-1")] == [Ticket(title="a")]
        assert [r.data for r in await everything(store)] == [Ticket(title="a"), Ticket(title="b")]
        forget("Ticket")

        class TicketV2(es.Event):  # the next release: a field added, with an upcaster
            __event_type__ = "Ticket"
            __schema_version__ = 2
            title: str
            seats: int

        with pytest.raises(es.MissingUpcaster):
            [r async for r in store.read_stream("t-1")]

        @es.upcaster("Ticket", from_version=1)
        def seats(data: dict[str, Any]) -> dict[str, Any]:
            return {**data, "seats": 1}

        assert [r.data async for r in store.read_stream("t-2")] == [TicketV2(title="b", seats=1)]
        got = [r.data for r in await everything(store)]
        assert got == [TicketV2(title="a", seats=1), TicketV2(title="b", seats=1)]


async def test_a_missing_link_names_the_type_and_versions(store_path: Path) -> None:
    class PaidV1(es.Event):
        __event_type__ = "Paid"
        amount: int

    async with es.EventStore(store_path) as store:
        await store.append("p", PaidV1(amount=3))

    forget("Paid")

    class Paid(es.Event):
        __schema_version__ = 3
        amount: int
        currency: str

    @es.upcaster("Paid", from_version=1)
    def v2(data: dict[str, Any]) -> dict[str, Any]:
        return data

    async with es.EventStore(store_path) as store:
        with pytest.raises(es.MissingUpcaster) as info:
            await everything(store)
        err = info.value
        assert (err.type_name, err.stored_version, err.class_version, err.missing_from) == (
            "Paid",
            1,
            3,
            2,
        )
        assert err.stream == "p" and err.position == 0
        assert "no upcaster is registered for 'Paid' from version 2 to 3" in str(err)
        assert isinstance(err, es.EventDecodeError)
        with pytest.raises(es.MissingUpcaster):
            _ = [r async for r in store.read_stream("p")]
        # what it cannot decode stays readable raw, and filters skip it without decoding
        (raw,) = await everything(store, raw=True)
        assert raw.type == "Paid" and raw.data == {"amount": 3}
        assert await everything(store, filter=es.EventFilter(event_types=["Other"])) == []


async def test_an_event_newer_than_its_class_is_refused(store_path: Path) -> None:
    class MovedV2(es.Event):
        __event_type__ = "Moved"
        __schema_version__ = 2
        to: str

    async with es.EventStore(store_path) as store:
        await store.append("m", MovedV2(to="x"))
    forget("Moved")

    class Moved(es.Event):  # an older build of the code
        to: str

    async with es.EventStore(store_path) as store:
        with pytest.raises(es.MissingUpcaster, match="newer than the registered class") as info:
            await everything(store)
    assert info.value.missing_from is None
    assert (info.value.stored_version, info.value.class_version) == (2, 1)


async def test_an_upcaster_that_raises_is_a_decode_error(store_path: Path) -> None:
    class TaggedV1(es.Event):
        __event_type__ = "Tagged"
        tag: str

    async with es.EventStore(store_path) as store:
        await store.append("t", TaggedV1(tag="a"))
    forget("Tagged")

    class Tagged(es.Event):
        __schema_version__ = 2
        tags: list[str]

    @es.upcaster("Tagged", from_version=1)
    def broken(data: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("tags")

    async with es.EventStore(store_path) as store:
        with pytest.raises(es.EventDecodeError, match=r"upcaster.*broken.*from version 1"):
            await everything(store)


async def test_a_validator_that_raises_anything_is_a_decode_error(store_path: Path) -> None:
    """A release's class whose own validator raises a KeyError on an old payload (a
    hand-written migration) is an EventDecodeError naming stream, position and type on every
    read path, as an upcaster's is; not a bare KeyError."""

    class MovedV1(es.Event):
        __event_type__ = "Moved2"
        x: int

    async with es.EventStore(store_path) as store:
        for i in range(3):
            await store.append("s-1", MovedV1(x=i))
    forget("Moved2")

    class Moved2(es.Event):
        x: int
        y: int

        @pydantic.model_validator(mode="before")
        @classmethod
        def need_y(cls, data: Any) -> Any:
            return {"x": data["x"], "y": data["y"]}

    want = r"position 0 of stream 's-1' as type 'Moved2': KeyError: 'y'"
    async with es.EventStore(store_path) as store:
        with pytest.raises(es.EventDecodeError, match=want):
            await everything(store)
        for backwards in (False, True):
            with pytest.raises(es.EventDecodeError, match="KeyError"):
                _ = [r async for r in store.read_stream("s-1", backwards=backwards)]
        with pytest.raises(es.EventDecodeError, match=want):
            async with store.subscribe(from_position=0) as sub:
                async for _rec in sub:
                    pass


async def test_an_added_optional_field_needs_no_upcaster(store_path: Path) -> None:
    class ShippedV1(es.Event):
        __event_type__ = "Shipped"
        order: str

    async with es.EventStore(store_path) as store:
        await store.append("o", ShippedV1(order="1"))
    forget("Shipped")

    class Shipped(es.Event):  # same version, one more optional field
        order: str
        carrier: str | None = None

    async with es.EventStore(store_path) as store:
        await store.append("o", Shipped(order="2", carrier="ups"))
        recs = await everything(store)
    assert [r.data for r in recs] == [Shipped(order="1"), Shipped(order="2", carrier="ups")]


async def test_a_renamed_type_reads_as_its_new_class(store_path: Path) -> None:
    forget("Deposited")  # tests.helpers registers its own Deposited

    class Deposited(es.Event):
        amount: int

    async with es.EventStore(store_path) as store:
        await store.append("acc", Deposited(amount=1))
    forget("Deposited")

    class AccountCredited(es.Event):
        __event_aliases__ = ("Deposited",)
        __schema_version__ = 2
        cents: int

    @es.upcaster("Deposited", from_version=1)  # the old name works, as does the new one
    def cents(data: dict[str, Any]) -> dict[str, Any]:
        return {"cents": data["amount"] * 100}

    async with es.EventStore(store_path) as store:
        await store.append("acc", AccountCredited(cents=5))
        recs = await everything(store)
        assert [(r.type, r.data) for r in recs] == [
            ("AccountCredited", AccountCredited(cents=100)),
            ("AccountCredited", AccountCredited(cents=5)),
        ]
        # a filter naming either name matches events stored under both
        for name in ("Deposited", "AccountCredited"):
            filt = es.EventFilter(event_types=[name])
            history = len(await everything(store, filter=filt))
            assert history == len(await everything(store)) >= 2
            async with store.subscribe(from_position=0, filter=filt) as sub:
                n = 0
                async for rec in sub:
                    n += 1
                    assert rec.type == "AccountCredited"
                    if n == history:  # the next one is delivered live
                        await sub.caught_up()
                        await store.append("acc", AccountCredited(cents=n))
                    if n == history + 1:
                        assert rec.data == AccountCredited(cents=history)
                        break
        (raw, *_) = await everything(store, raw=True)
        assert raw.type == "Deposited" and raw.data == {"amount": 1}  # as stored


# --- the store written before this change ---------------------------------------------------
async def test_a_store_written_by_v1_classes_in_format_1_reads_with_new_classes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store"
    shutil.copytree(FIXTURE, path)
    old = {p.name: p.read_bytes() for p in path.glob("*.seg")}
    assert len(old) == 2 and all(b[8] == 1 for b in old.values())  # format version 1
    forget("Deposited", "Opened", "Withdrawn", "Legacy")

    class Opened(es.Event):  # unchanged
        account: str
        owner: str

    class AccountCredited(es.Event):  # renamed from Deposited, amounts now in cents + currency
        __event_aliases__ = ("Deposited",)
        __schema_version__ = 3
        account: str
        amount_cents: int
        currency: str

    @es.upcaster("Deposited", from_version=1)
    def to_cents(data: dict[str, Any]) -> dict[str, Any]:
        return {"account": data["account"], "amount_cents": data["amount"] * 100}

    @es.upcaster("AccountCredited", from_version=2)
    def add_currency(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "currency": "EUR"}

    class Withdrawn(es.Event):  # one optional field more, same version
        account: str
        amount: int
        reason: str | None = None

    async with es.EventStore(path) as store:
        recs = await everything(store)
        assert len(recs) == 47 and [r.position for r in recs] == list(range(47))
        assert [r.id for r in recs] == [uuid.UUID(int=i + 1) for i in range(47)]
        head = [(r.stream, r.version, r.type, r.data) for r in recs[:7]]

        def credit(account: str, cents: int) -> AccountCredited:
            return AccountCredited(account=account, amount_cents=cents, currency="EUR")

        assert head == [
            ("account-1", 0, "Opened", Opened(account="1", owner="ada")),
            ("account-1", 1, "AccountCredited", credit("1", 1000)),
            ("account-1", 2, "AccountCredited", credit("1", 25000)),
            ("account-1", 3, "Withdrawn", Withdrawn(account="1", amount=5)),
            ("account-2", 0, "Opened", Opened(account="2", owner="bob")),
            ("account-2", 1, "AccountCredited", credit("2", 700)),
            ("account-2", 2, "Legacy", {"note": "no class reads this"}),
        ]
        assert recs[1].metadata == recs[2].metadata == {"correlation_id": "c-1"}
        acc3 = [r.data async for r in store.read_stream("account-3")]
        assert acc3 == [credit("3", i * 100) for i in range(40)]
        credited = es.EventFilter(event_types=[AccountCredited])
        assert len(await everything(store, filter=credited)) == 43

        # new events go to a new segment of the current format; the old files stay as they were
        await store.append(
            "account-1", AccountCredited(account="1", amount_cents=1, currency="USD")
        )
        await store.append("account-1", Withdrawn(account="1", amount=1, reason="fee"))
    segs = sorted(path.glob("*.seg"))
    assert [p.name for p in segs[:2]] == sorted(old) and segs[2].name == es_segment_name(47)
    assert all(p.read_bytes() == old[p.name] for p in segs[:2])
    assert segs[2].read_bytes()[8] == FORMAT_VERSION
    async with es.EventStore(path) as store:
        recs = await everything(store)
    assert recs[-2].data == AccountCredited(account="1", amount_cents=1, currency="USD")
    assert recs[-1].data == Withdrawn(account="1", amount=1, reason="fee")
    assert len(recs) == 49 and verify_store(path).ok


def test_the_cli_reports_the_format_1_fixture_without_changing_it(tmp_path: Path) -> None:
    path = tmp_path / "store"
    shutil.copytree(FIXTURE, path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    out, err = io.StringIO(), io.StringIO()
    assert cli(["info", "--json", str(path)], out, err) == 0, err.getvalue()
    doc = json.loads(out.getvalue())
    assert doc["format_versions"] == [1] and doc["events"] == 47
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.suffix == ".seg"} == before


def es_segment_name(first: int) -> str:
    return f"{first:020d}.seg"


async def test_an_empty_format_1_tail_gets_a_current_header(store_path: Path) -> None:
    async with es.EventStore(store_path):
        pass
    (seg,) = store_path.glob("*.seg")
    set_format_version(seg, 1)
    inode = seg.stat().st_ino
    async with es.EventStore(store_path) as store:
        assert seg.read_bytes()[8] == FORMAT_VERSION  # nothing was in it; rewritten at open
        assert seg.stat().st_ino == inode  # in place: a follower's open file still sees it

        class Later(es.Event):
            __schema_version__ = 2
            x: int

        await store.append("s", Later(x=1))
    async with es.EventStore(store_path) as store:
        assert [r.data for r in await everything(store)] == [Later(x=1)]


async def test_a_format_1_tail_left_by_an_interrupted_rotation_is_not_appended_to(
    store_path: Path,
) -> None:
    class Counted(es.Event):
        __schema_version__ = 2
        n: int

    async with es.EventStore(store_path) as store:
        await store.append("c", [Counted(n=0), Counted(n=1)])
    (seg,) = store_path.glob("*.seg")
    set_format_version(seg, 1)  # as if format 1 had written it (its frame reads the same)
    old = seg.read_bytes()
    (store_path / es_segment_name(2)).write_bytes(b"AIOESLOG\x01")  # a rotation cut short
    async with es.EventStore(store_path) as store:
        await store.append("c", Counted(n=2))
        assert [r.data async for r in store.read_stream("c")] == [Counted(n=i) for i in range(3)]
    assert seg.read_bytes() == old
    assert (store_path / es_segment_name(2)).read_bytes()[8] == FORMAT_VERSION


# --- the on-disk format version -------------------------------------------------------------
@pytest.mark.parametrize("with_events", [True, False])
async def test_a_store_in_a_newer_format_is_refused_and_left_alone(
    store_path: Path, with_events: bool
) -> None:
    class Noted(es.Event):
        text: str

    async with es.EventStore(store_path) as store:
        if with_events:
            await store.append("n", Noted(text="hi"))
    (seg,) = store_path.glob("*.seg")
    set_format_version(seg, FORMAT_VERSION + 1)
    before = seg.read_bytes()
    with pytest.raises(es.UnsupportedFormat) as info:
        async with es.EventStore(store_path):
            pass
    err = info.value
    assert (err.path, err.found, err.supported) == (str(seg), FORMAT_VERSION + 1, FORMAT_VERSION)
    assert str(seg) in str(err) and f"format version {FORMAT_VERSION + 1}" in str(err)
    # before this check, an empty last segment with a header it could not read was removed
    # as an interrupted rotation, and one with events was reported as corrupt
    assert seg.read_bytes() == before
    with pytest.raises(es.UnsupportedFormat):
        verify_store(store_path)
    assert cli(["repair", str(store_path)], io.StringIO()) == 2  # an error, nothing repaired
    assert seg.read_bytes() == before
    with pytest.raises(es.UnsupportedFormat):  # nor does a read-only store
        async with es.EventStore(store_path, read_only=True):
            pass
    # an older store can be opened again once the header says so
    set_format_version(seg, FORMAT_VERSION)
    async with es.EventStore(store_path) as store:
        assert len(await everything(store)) == (1 if with_events else 0)


async def test_a_type_name_too_long_for_its_field_fails_the_append(store_path: Path) -> None:
    class Long(es.Event):
        __event_type__ = "x" * 65534  # with the 2-byte schema version: past the 16-bit length
        a: int

    async with es.EventStore(store_path) as store:
        with pytest.raises(ValueError, match="65534 bytes, over the limit of 65533"):
            await store.append("s", Long(a=1))
        assert await everything(store) == []


async def test_a_follower_refuses_a_newer_segment_the_writer_rotated_into(store_path: Path) -> None:
    class Noted(es.Event):
        text: str

    async with es.EventStore(store_path) as store:
        await store.append("n", [Noted(text="a"), Noted(text="b")])
    newer = store_path / es_segment_name(2)
    shutil.copy(next(store_path.glob("*.seg")), newer)
    newer.write_bytes(newer.read_bytes()[:SEGMENT_HEADER_SIZE])
    raw = bytearray(newer.read_bytes())
    raw[16:24] = (2).to_bytes(8, "little")  # its first position
    newer.write_bytes(bytes(raw))
    set_format_version(newer, FORMAT_VERSION + 1)
    with pytest.raises(es.UnsupportedFormat) as info:
        async with es.EventStore(store_path, read_only=True):
            pass
    assert info.value.path == str(newer)


async def test_versions_and_upcasters_inside_compressed_containers(store_path: Path) -> None:
    pytest.importorskip("zstandard", reason="compression needs the zstandard package")

    class ScoreV1(es.Event):
        __event_type__ = "Score"
        points: int

    async with es.EventStore(store_path, compression="zstd") as store:
        await asyncio.gather(*(store.append(f"s-{i % 7}", ScoreV1(points=i)) for i in range(300)))
    forget("Score")

    class Score(es.Event):
        __schema_version__ = 2
        points: int
        doubled: int

    @es.upcaster("Score", from_version=1)
    def double(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "doubled": data["points"] * 2}

    async with es.EventStore(store_path, compression="zstd") as store:
        await asyncio.gather(
            *(store.append("s-0", Score(points=i, doubled=-i)) for i in range(300, 400))
        )
        recs = await everything(store)
        by_stream = [r.data async for r in store.read_stream("s-0")]
    assert kinds(store_path)[FRAME_KIND_COMPRESSED] >= 2  # the events are in containers
    assert sorted(r.data.points for r in recs if isinstance(r.data, Score)) == list(range(400))
    for rec in recs:
        assert isinstance(rec.data, Score)
        want = rec.data.points * 2 if rec.data.points < 300 else -rec.data.points
        assert rec.data.doubled == want
    assert len(by_stream) == 43 + 100 and all(isinstance(d, Score) for d in by_stream)
