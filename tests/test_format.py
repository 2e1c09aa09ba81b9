"""FORMAT.md is the spec: its worked example must open and read back as it says."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

import aioeventstore as es
from aioeventstore import events as events_module
from aioeventstore._format import FORMAT_VERSION, FRAME_FLAG_SCHEMA, crc32c
from tests.helpers import Deposited, registry_changed

FORMAT_MD = Path(__file__).parent.parent / "FORMAT.md"


def example_bytes(section: str = "## Worked example", start: int = 0) -> bytes:
    text = FORMAT_MD.read_text()
    block = text.split(section, 1)[1].split("```", 2)[1]
    out = bytearray()
    for line in block.strip().splitlines():
        m = re.match(r"^([0-9a-f]{4})  ((?:[0-9a-f]{2} ?)+)", line)
        assert m, line
        assert int(m.group(1), 16) == start + len(out)
        out += bytes.fromhex(m.group(2))
    return bytes(out)


def format_1_example() -> bytes:
    """The worked example as format version 1 wrote it: FORMAT.md gives the two header bytes
    that differ (the version and the header CRC)."""
    data = bytearray(example_bytes())
    data[8:10] = b"\x01\x00"
    data[0x1C:0x20] = bytes.fromhex("40e03448")
    return bytes(data)


async def test_worked_example_reads_back_as_documented(store_path: Path) -> None:
    data = example_bytes()
    assert len(data) == 150
    store_path.mkdir()
    (store_path / "00000000000000000000.seg").write_bytes(data)
    async with es.EventStore(store_path) as store:
        assert store.recovery is not None and store.recovery.cut_bytes == 0
        (rec,) = [r async for r in store.read_all()]
        assert rec.stream == "acc-42" and rec.version == 0 and rec.position == 0
        assert rec.id == uuid.UUID(int=1)
        assert rec.type == "Deposited"
        assert rec.data == Deposited(account="42", amount=10)
        assert rec.metadata == {"c": "x"}
        assert rec.recorded_at == datetime(2026, 11, 27, 11, 44, 7, 258404, tzinfo=UTC)
        # and the store appends after it
        r = await store.append("acc-42", Deposited(account="42", amount=1), expected_version=0)
        assert (r.position, r.version) == (1, 1)


async def test_the_format_1_example_reads_back_the_same(store_path: Path) -> None:
    data = format_1_example()
    assert crc32c(data[:28]).to_bytes(4, "little") == data[28:32]
    store_path.mkdir()
    seg = store_path / "00000000000000000000.seg"
    seg.write_bytes(data)
    async with es.EventStore(store_path) as store:
        (rec,) = [r async for r in store.read_all()]
        assert rec.type == "Deposited" and rec.data == Deposited(account="42", amount=10)
        assert rec.metadata == {"c": "x"} and rec.id == uuid.UUID(int=1)
        # a writer never adds to a format 1 segment: the append starts a new one
        await store.append("acc-42", Deposited(account="42", amount=1), expected_version=0)
    assert seg.read_bytes() == data
    new = store_path / "00000000000000000001.seg"
    assert new.read_bytes()[8:10] == FORMAT_VERSION.to_bytes(2, "little")


async def test_the_documented_schema_version_entry(store_path: Path) -> None:
    documented = example_bytes("### With a schema version", 0x5A)
    assert len(documented) == 65
    saved = events_module._registry.pop("Deposited"), events_module._classes.pop("Deposited")
    try:

        class VersionedDeposited(es.Event):
            __event_type__ = "Deposited"
            __schema_version__ = 2
            account: str
            amount_cents: int

        event = VersionedDeposited(account="42", amount_cents=1000)
        async with es.EventStore(store_path) as store:
            ev = es.NewEvent(event, id=uuid.UUID(int=2))
            await store.append("acc-42", ev, expected_version=es.NO_STREAM)
            (rec,) = [r async for r in store.read_all()]
            assert rec.data == event
    finally:
        events_module._registry["Deposited"], events_module._classes["Deposited"] = saved
        registry_changed()
    written = (store_path / "00000000000000000000.seg").read_bytes()
    assert written[0x2D] == FRAME_FLAG_SCHEMA and written[0x28] == 0x6F  # flags, body length
    assert len(written) == 155 and written[0x5A:] == documented


async def test_the_store_writes_the_documented_layout(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        ev = es.NewEvent(
            Deposited(account="42", amount=10), id=uuid.UUID(int=1), metadata={"c": "x"}
        )
        await store.append("acc-42", ev, expected_version=es.NO_STREAM)
    written = (store_path / "00000000000000000000.seg").read_bytes()
    documented = example_bytes()
    # identical except the commit time (0x44..0x4b) and the frame CRC that covers it
    assert len(written) == len(documented)
    for lo, hi in ((0, 0x24), (0x28, 0x44), (0x4C, len(documented))):
        assert written[lo:hi] == documented[lo:hi], (lo, hi)


class Balance(BaseModel):
    total: int


def snapshot_example() -> tuple[str, bytes]:
    text = FORMAT_MD.read_text()
    section = text.split("### Snapshot worked example", 1)[1]
    name = re.search(r"`([0-9a-f]{32}\.snap)`", section)
    assert name
    block = section.split("```", 2)[1]
    out = bytearray()
    for line in block.strip().splitlines():
        m = re.match(r"^([0-9a-f]{4})  ((?:[0-9a-f]{2} ?)+)", line)
        assert m, line
        assert int(m.group(1), 16) == len(out)
        out += bytes.fromhex(m.group(2))
    return name.group(1), bytes(out)


async def test_snapshot_worked_example_is_what_the_store_writes_and_reads(
    store_path: Path,
) -> None:
    name, documented = snapshot_example()
    assert len(documented) == 77
    async with es.EventStore(store_path) as store:
        ev = es.NewEvent(Deposited(account="42", amount=10), id=uuid.UUID(int=1))
        await store.append("acc-42", ev, expected_version=es.NO_STREAM)
        await store.save_snapshot("acc-42", Balance(total=10), 0)
    assert (store_path / name).read_bytes() == documented
    (store_path / name).write_bytes(documented)
    async with es.EventStore(store_path) as store:
        assert await store.load_snapshot("acc-42", Balance) == (Balance(total=10), 0)
