"""Replay's batch decoding (``_codec._span_batch``, ``decode_stream_run``).

Reads decode a chunk's events in columns (payloads unpacked and validated with ``map``) and
leave anything unusual to the event-by-event reference loop. These tests read the same stores
with the batch on and with it forced off, and require the very same records, and the very same
errors (an event its class rejects, an upcaster that raises, a damaged byte), from every read
path; and they check that the batch really is the path clean data takes.
"""

from __future__ import annotations

import random
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest
from pydantic import field_validator, model_validator

import aioeventstore as es
from aioeventstore import _codec
from aioeventstore._format import (
    ENTRY_HEAD,
    FRAME_FLAG_SCHEMA,
    FRAME_KIND_CHECKPOINT,
    FRAME_KIND_COMPRESSED,
    FRAME_KIND_METADATA,
    SCHEMA_VERSION,
    pack_frame,
)
from aioeventstore._schema import many_validator
from aioeventstore.errors import CorruptLog
from tests.test_compression import kinds
from tests.test_schema import forget, registry  # noqa: F401 - the autouse registry fixture

ZSTD = es.StoreOptions(compression="zstd")
SMALL = es.StoreOptions(read_chunk_bytes=4096)


@pytest.fixture
def loop_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the reference loop's top-level calls (from decode_span, not its recursion)."""
    calls = [0]
    loop = _codec._span_loop

    def counted(*args: Any) -> tuple[int, int]:
        calls[0] += 1
        return loop(*args)

    monkeypatch.setattr(_codec, "_span_loop", counted)
    yield calls


def batch_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise _codec._Bail

    monkeypatch.setattr(_codec, "_span_batch", refuse)


async def every_read(store: es.EventStore, streams: list[str]) -> dict[str, Any]:
    """The results (or the error, as type and message) of every read path over the store."""
    got: dict[str, Any] = {}

    async def take(name: str, it: Any) -> None:
        out: list[Any] = []
        try:
            async for rec in it:
                out.append(rec)
        except es.EventStoreError as exc:
            out.append((type(exc).__name__, str(exc)))
        got[name] = out

    middle = store.head // 2
    await take("all", store.read_all())
    await take("all-raw", store.read_all(raw=True))
    await take("all-back", store.read_all(backwards=True))
    await take("all-middle", store.read_all(from_position=middle, limit=store.head))
    await take("all-back-middle", store.read_all(from_position=middle, backwards=True))
    for s in streams:
        await take(f"{s}", store.read_stream(s))
        await take(f"{s}-raw", store.read_stream(s, raw=True))
        await take(f"{s}-back", store.read_stream(s, backwards=True))
        await take(f"{s}-from-3", store.read_stream(s, from_version=3))
    sub: list[Any] = []
    try:
        async with store.subscribe(from_position=0) as subscription:
            async for rec in subscription:
                sub.append(rec)
                if rec.position == store.head:
                    break
    except es.EventStoreError as exc:
        sub.append((type(exc).__name__, str(exc)))
    got["subscribe"] = sub
    return got


async def both_ways(
    path: Path, options: es.StoreOptions, streams: list[str], mp: pytest.MonkeyPatch
) -> tuple[dict[str, Any], dict[str, Any]]:
    async with es.EventStore(path, options=options) as store:
        batched = await every_read(store, streams)
    with mp.context() as m:
        batch_off(m)
        async with es.EventStore(path, options=options) as store:
            reference = await every_read(store, streams)
    return batched, reference


@pytest.mark.parametrize("options", [es.StoreOptions(), SMALL, ZSTD], ids=["1MiB", "4KiB", "zstd"])
async def test_batch_records_equal_the_reference_loops(
    tmp_path: Path,
    options: es.StoreOptions,
    monkeypatch: pytest.MonkeyPatch,
    loop_calls: list[int],
) -> None:
    """Single- and many-event frames, mixed types in one append, metadata, an unregistered
    type (dicts), non-scalar fields, schema-versioned frames next to version 1 frames of the
    same name (the upcaster runs on the old ones), and more events than one flush."""

    class ThingV1(es.Event):
        __event_type__ = "Thing"
        name: str

    class Point(es.Event):
        x: int
        tags: list[str]
        at: datetime
        ref: uuid.UUID

    class Gone(es.Event):
        n: int

    when = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    streams = ["a", "b", "c-1"]
    async with es.EventStore(tmp_path, options=options) as store:
        for i in range(300):  # one event per append: one frame each
            await store.append(
                streams[i % 3], Point(x=i, tags=["t"] * (i % 3), at=when, ref=uuid.UUID(int=i))
            )
        await store.append("a", [ThingV1(name=f"n{i}") for i in range(40)])
        await store.append(
            "b",
            [
                es.NewEvent(Gone(n=1), metadata={"by": "me", "n": 1}),
                Point(x=-1, tags=[], at=when, ref=uuid.UUID(int=7)),
                es.NewEvent(ThingV1(name="meta"), metadata={"k": [1, 2]}),
                Gone(n=2),
            ],
        )
        await store.append("c-1", [Gone(n=i) for i in range(300)])

    forget("Thing", "Gone")

    class Thing(es.Event):
        __schema_version__ = 2
        first: str
        last: str

    @es.upcaster("Thing", from_version=1)
    def split(raw: dict[str, Any]) -> dict[str, Any]:
        return {"first": raw["name"], "last": "?"}

    async with es.EventStore(tmp_path, options=options) as store:
        for i in range(30):  # frames flagged with schema versions, the same type name
            await store.append("a", Thing(first=f"f{i}", last="l"))
        await store.append(
            "b", [Thing(first="x", last="y"), Point(x=5, tags=[], at=when, ref=uuid.UUID(int=5))]
        )

    if options.compression == "zstd":
        assert kinds(tmp_path)[FRAME_KIND_COMPRESSED] >= 1
    batched, reference = await both_ways(tmp_path, options, streams, monkeypatch)
    assert batched == reference
    everything = batched["all"]
    assert len(everything) == 300 + 40 + 4 + 300 + 30 + 2
    assert isinstance(everything[300].data, Thing) and everything[300].data.first == "n0"
    assert everything[340].metadata == {"by": "me", "n": 1} and everything[340].data == {"n": 1}
    assert isinstance(everything[-1].data, Point) and everything[-1].data.ref == uuid.UUID(int=5)
    assert [r.position for r in everything] == list(range(len(everything)))
    assert batched["all-raw"][300].data == {"name": "n0"}  # raw: as stored, no upcaster
    # the batch is what decoded the clean store: the reference loop ran only when forced off
    loops_with_batch_off = loop_calls[0]
    loop_calls[0] = 0
    async with es.EventStore(tmp_path, options=options) as store:
        await every_read(store, streams)
    assert loop_calls[0] == 0 < loops_with_batch_off


@pytest.mark.parametrize("per_append", [1, 7])
async def test_an_event_its_class_rejects_fails_the_same_way(
    tmp_path: Path, per_append: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Counted(es.Event):
        n: int

    async with es.EventStore(tmp_path, options=SMALL) as store:
        for i in range(0, 140, per_append):
            batch = [Counted(n=i + k) for k in range(per_append)]
            await store.append(f"s-{i // per_append % 2}", batch if per_append > 1 else batch[0])

    forget("Counted")

    class Bounded(es.Event):  # the next release: a bound the stored events break from n=100 on
        __event_type__ = "Counted"
        n: int

        @field_validator("n")
        @classmethod
        def small(cls, v: int) -> int:
            if v >= 100:
                raise ValueError("too big")
            return v

    batched, reference = await both_ways(tmp_path, SMALL, ["s-0", "s-1"], monkeypatch)
    assert batched == reference
    err = batched["all"][-1]
    stream = "s-0" if per_append == 1 else f"s-{100 // per_append % 2}"
    assert err[0] == "EventDecodeError"
    assert f"position 100 of stream {stream!r}" in err[1] and "too big" in err[1]
    assert [r.position for r in batched["all"][:-1]] == list(range(len(batched["all"]) - 1))
    assert batched["all-raw"][-1].position == 139  # raw reads never validate
    assert batched["s-1"][-1][0] == "EventDecodeError"


async def test_runs_validated_as_one_list_give_the_models_one_by_one_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of events of one class is validated with one call of its list validator: the
    models are those of one call each, whatever the class's validators do with the data, and
    a rejected event is still named by its own position."""

    class Inner(es.Event):
        tag: str

    class Shaped(es.Event):
        n: int
        label: str = "none"
        inner: Inner | None = None

        @model_validator(mode="before")
        @classmethod
        def upper(cls, data: Any) -> Any:
            return {**data, "label": str(data.get("label", "none")).upper()}

        @field_validator("n")
        @classmethod
        def odd_only_below_50(cls, v: int) -> int:
            if v >= 50 and v % 2 == 0:
                raise ValueError("even from 50 on")
            return v

    validate = many_validator
    used = [0]

    def counted(decode: Any) -> Any:
        many = validate(decode)
        if many is None:
            return None

        def call(items: list[Any]) -> list[Any]:
            used[0] += len(items)
            return many(items)

        return call

    monkeypatch.setattr(_codec, "many_validator", counted)
    async with es.EventStore(tmp_path) as store:
        for i in range(40):
            await store.append("s", Shaped(n=i, label=f"l{i}", inner=Inner(tag=str(i))))
        for i in range(40, 60):
            await store.append("s", Shaped(n=2 * i + 1))
    batched, reference = await both_ways(tmp_path, es.StoreOptions(), ["s"], monkeypatch)
    assert batched == reference
    assert used[0] >= 60
    models = [r.data for r in batched["all"]]
    assert [m.label for m in models[:3]] == ["L0", "L1", "L2"]
    assert models[5].inner == Inner(tag="5") and models[45].inner is None

    async with es.EventStore(tmp_path) as store:  # n=100 from here on is rejected
        await store.append("s", [Shaped(n=99), Shaped.model_construct(n=100)])
    batched, reference = await both_ways(tmp_path, es.StoreOptions(), ["s"], monkeypatch)
    assert batched == reference
    assert batched["all"][-1][0] == "EventDecodeError"
    assert "position 61 of stream 's'" in batched["all"][-1][1]


async def test_an_upcaster_that_raises_fails_the_same_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class TagV1(es.Event):
        __event_type__ = "Tag"
        v: int

    async with es.EventStore(tmp_path) as store:
        await store.append("t", [TagV1(v=i) for i in range(50)])
        for i in range(50):
            await store.append("t", TagV1(v=50 + i))

    forget("Tag")

    class Tag(es.Event):
        __schema_version__ = 2
        v: int

    @es.upcaster("Tag", from_version=1)
    def bump(raw: dict[str, Any]) -> dict[str, Any]:
        if raw["v"] == 70:
            raise KeyError("seventy")
        return {"v": raw["v"] + 1000}

    batched, reference = await both_ways(tmp_path, SMALL, ["t"], monkeypatch)
    assert batched == reference
    values = [r.data.v for r in batched["all"][:-1]]  # the chunks before the failing one
    assert values == [1000 + i for i in range(len(values))] and len(values) < 70
    assert batched["all"][-1][0] == "EventDecodeError" and "seventy" in batched["all"][-1][1]


async def test_a_damaged_byte_is_reported_the_same_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Blob(es.Event):
        text: str

    async with es.EventStore(tmp_path) as store:
        await store.append("x", [Blob(text=f"t{i:03d}") for i in range(20)])
        for i in range(20):
            await store.append("x", Blob(text=f"u{i:03d}"))
    seg = sorted(tmp_path.glob("*.seg"))[0]
    intact = seg.read_bytes()
    damaged = bytearray(intact)
    damaged[intact.rindex(b"u010")] ^= 0x20  # "U010": the frame's checksum no longer holds

    async def read_damaged() -> dict[str, Any]:
        seg.write_bytes(intact)  # (opening checks the newest frames)
        async with es.EventStore(tmp_path, options=SMALL) as store:
            seg.write_bytes(bytes(damaged))
            return await every_read(store, ["x"])

    batched = await read_damaged()
    with monkeypatch.context() as m:
        batch_off(m)
        reference = await read_damaged()
    assert batched == reference
    assert batched["all"][-1][0] == CorruptLog.__name__
    assert "checksum" in batched["all"][-1][1]
    assert batched["x"][-1][0] == CorruptLog.__name__


async def test_a_stream_run_is_only_decoded_when_it_is_what_the_index_says(
    tmp_path: Path,
) -> None:
    class Step(es.Event):
        k: int

    async with es.EventStore(tmp_path) as store:
        for k in range(5):
            await store.append("only", Step(k=k))
        refs = store._index.stream_frames("only", 0, 1 << 20, False).refs()
    seg = sorted(tmp_path.glob("*.seg"))[0]
    start, end = refs[0].offset, refs[-1].offset + refs[-1].length
    buf = seg.read_bytes()[start:end]
    firsts = [r.first_position for r in refs]
    caches = _codec.new_type_caches()
    got = _codec.decode_stream_run(buf, firsts, 0, 10, "only", False, caches)
    assert got is not None and [r.data for r in got] == [Step(k=k) for k in range(5)]
    assert _codec.decode_stream_run(buf, firsts, 2, 3, "only", False, caches) is not None
    assert [
        r.version for r in _codec.decode_stream_run(buf, firsts, 2, 3, "only", False, caches) or []
    ] == [2, 3]
    assert _codec.decode_stream_run(buf, firsts, 0, 10, "other", False, caches) is None
    assert _codec.decode_stream_run(buf, firsts[:-1], 0, 10, "only", False, caches) is None
    assert (
        _codec.decode_stream_run(buf, [f + 1 for f in firsts], 0, 10, "only", False, caches) is None
    )


async def test_retention_hides_the_same_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop_calls: list[int]
) -> None:
    class Kept(es.Event):
        i: int

    async with es.EventStore(tmp_path, options=SMALL) as store:
        for i in range(60):
            await store.append(f"r-{i % 2}", Kept(i=i))
        await store.append("r-0", [Kept(i=100 + k) for k in range(30)])  # versions 30..59
        await store.append("r-1", [Kept(i=200 + k) for k in range(30)])
        await store.set_stream_metadata("r-0", truncate_before=45)  # inside the 30-event frame
        await store.set_stream_metadata("r-1", max_count=40)
    batched, reference = await both_ways(tmp_path, SMALL, ["r-0", "r-1"], monkeypatch)
    assert batched == reference
    assert [r.version for r in batched["r-0"]] == list(range(45, 60))
    assert [r.version for r in batched["r-1"]] == list(range(20, 60))
    assert len(batched["all"]) == 15 + 40
    loop_calls[0] = 0
    async with es.EventStore(tmp_path, options=SMALL) as store:
        await every_read(store, ["r-0", "r-1"])
    assert loop_calls[0] == 0


async def test_damage_in_a_stream_whose_frames_lie_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop_calls: list[int]
) -> None:
    """Streams appended in turn: each stream's frames lie apart in the log and are read one
    by one, then decoded as one batch. A damaged frame among them makes the batch refuse, and
    the run-by-run path reports it as it would have, from the same bytes."""

    class Tick(es.Event):
        text: str

    async with es.EventStore(tmp_path) as store:
        for i in range(60):
            await store.append("abc"[i % 3], Tick(text=f"{'abc'[i % 3]}{i:03d}"))
    async with es.EventStore(tmp_path) as store:
        clean = [r.data.text async for r in store.read_stream("b")]  # type: ignore[union-attr]
    assert clean == [f"b{i:03d}" for i in range(1, 60, 3)]
    assert loop_calls[0] == 0  # the batch decoded them
    seg = sorted(tmp_path.glob("*.seg"))[0]
    intact = seg.read_bytes()
    damaged = bytearray(intact)
    at = intact.rindex(b"b031")
    damaged[at] ^= 0x20

    async def read_damaged() -> dict[str, Any]:
        seg.write_bytes(intact)  # (opening checks the newest frames)
        async with es.EventStore(tmp_path) as store:
            seg.write_bytes(bytes(damaged))
            return await every_read(store, ["a", "b", "c"])

    batched = await read_damaged()
    with monkeypatch.context() as m:
        batch_off(m)
        reference = await read_damaged()
    assert batched == reference
    assert batched["b"][-1][0] == CorruptLog.__name__ and "checksum" in batched["b"][-1][1]
    assert batched["b"][:-1] == []  # its 20 frames are one chunk: the chunk fails whole
    assert len(batched["a"]) == 20 and len(batched["c"]) == 20  # other streams read fine


async def test_runs_of_single_event_frames_and_what_interrupts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop_calls: list[int]
) -> None:
    """Whole-log reads take runs of single-event frames alike in layout in a tighter loop.
    Everything that may interrupt a run (another type of the same name length, a schema
    version flag, metadata, a many-event frame, a stream with retention, positions that skip
    after a scavenge, a read that starts or stops inside a run) gives the same records as the
    reference loop, and clean data never needs it."""

    class Alpha(es.Event):
        n: int

    class Omega(es.Event):
        n: int

    class Gamma(es.Event):
        __schema_version__ = 2
        n: int

    async with es.EventStore(tmp_path, options=SMALL) as store:
        for i in range(400):
            stream = f"s-{i % 10}"
            if i % 97 == 5:
                await store.append(stream, es.NewEvent(Alpha(n=i), metadata={"i": i}))
            elif i % 89 == 7:
                await store.append(stream, [Alpha(n=i), Omega(n=i)])
            elif i % 50 == 3:
                await store.append(stream, Gamma(n=i))
            elif i % 30 >= 25:
                await store.append(stream, Omega(n=i))
            else:
                await store.append(stream, Alpha(n=i))
        await store.delete_stream("s-4")
        await store.scavenge()  # s-4's frames go: the positions skip
        await store.set_stream_metadata("s-7", max_count=5)
        for i in range(300):  # a run longer than a flush of the columns
            await store.append(f"s-{i % 4}", Alpha(n=1000 + i))
    streams = [f"s-{k}" for k in range(10)]
    batched, reference = await both_ways(tmp_path, SMALL, streams, monkeypatch)
    assert batched == reference
    big_chunks, reference = await both_ways(tmp_path, es.StoreOptions(), streams, monkeypatch)
    assert big_chunks == reference == batched
    everything = batched["all"]
    # 400 appends, 5 of them of two events; s-4 (41 events) scavenged; s-7 keeps 5 of 41
    assert len(everything) == 405 - 41 - 36 + 300
    assert [r.data.n for r in everything if r.stream == "s-7"] == [357, 367, 377, 387, 397]
    with_meta = [r for r in everything if r.metadata]
    assert [r.metadata for r in with_meta] == [{"i": i} for i in (5, 102, 199, 296, 393)]
    assert any(isinstance(r.data, Gamma) for r in everything)
    loop_calls[0] = 0
    async with es.EventStore(tmp_path, options=SMALL) as store:
        for lo in (0, 1, 17, 250, 401):
            got = [r async for r in store.read_all(from_position=lo, limit=37)]
            assert got == [r for r in everything if r.position >= lo][:37]
    assert loop_calls[0] == 0


async def test_payloads_the_fast_unpacker_refuses_read_as_msgpack_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay unpacks with ormsgpack; what it refuses and msgpack reads (here metadata with
    a bytes map key inside) reads the same, on every path."""

    class Plain(es.Event):
        n: int

    async with es.EventStore(tmp_path) as store:
        for i in range(20):
            meta = {"raw": {b"k": i}} if i == 11 else None
            await store.append("p", es.NewEvent(Plain(n=i), metadata=meta))
    batched, reference = await both_ways(tmp_path, es.StoreOptions(), ["p"], monkeypatch)
    assert batched == reference
    assert batched["all"][11].metadata == {"raw": {b"k": 11}}
    assert [r.data.n for r in batched["all"]] == list(range(20))


# Payloads ormsgpack must refuse (msgpack then reads them, or names the damage), because a
# version that reads them returns something else than msgpack: ormsgpack 1.5 and 1.6 read a
# bytes map key as a str and a str that is not UTF-8 as bytes.
_READ_OTHERWISE = [
    msgpack.packb({b"k": 1}),
    msgpack.packb({"raw": {b"k": 1}}),  # (metadata of that shape is stored as it is)
    b"\xa2\xff\xfe",  # a str that is not UTF-8
    b"\xa3\xed\xa0\x80",  # a UTF-8-encoded surrogate
]
# Damaged lengths: an array, a map, a str, a bin that claim up to 4 GiB in a few bytes.
# ormsgpack before 1.13.1 kills the process on some of them (SIGSEGV or a Rust panic).
_HUGE_LENGTHS = [
    "ddffffffff00",
    "ddcfffffff00",
    "dfcf000000a16b00",
    "dbffffffff00",
    "c6ffffffff00",
    "81a16b81a26b3293c0ffddcf0000a70000000000",
]


def test_the_fast_unpacker_refuses_what_msgpack_reads_otherwise() -> None:
    """``unpack_stored`` is exact only if ormsgpack raises wherever it would read a payload
    otherwise than msgpack (pyproject.toml's lower bound for it says which versions do), and
    a damaged length must raise, not end the process (checked in a child process)."""
    for packed in _READ_OTHERWISE:
        with pytest.raises(ValueError):
            _codec._unpack_fast(packed)
        try:
            expected: Any = msgpack.unpackb(packed)
        except ValueError as exc:  # (UnicodeDecodeError)
            expected = type(exc)
        try:
            got: Any = _codec.unpack_stored(packed)
        except ValueError as exc:
            got = type(exc)
        assert got == expected
    code = (
        "import sys\n"
        "from aioeventstore._codec import _unpack_fast\n"
        "for h in sys.argv[1:]:\n"
        "    try:\n"
        "        _unpack_fast(bytes.fromhex(h))\n"
        "    except ValueError:\n"
        "        continue\n"
        "    raise SystemExit(f'{h} was read')\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, *_HUGE_LENGTHS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])


def _random_span(rng: random.Random) -> tuple[bytes, int, int]:
    """Back-to-back frames, mostly single-event ones alike in layout, interrupted by all that
    ends a run: another stream or type field of the same length, the same type field bytes
    in a frame with schema versions (they name another type there), metadata, many-event
    frames, checkpoint and metadata frames, positions that skip, a new commit time."""
    streams = [b"s-1", b"s-2", b"abcd", b"q"]
    plain = [b"AB\x01\x00", b"AB\x02\x00", b"Omega"]
    versioned = [b"AB" + SCHEMA_VERSION.pack(1), b"AB" + SCHEMA_VERSION.pack(2)]
    frames: list[bytes] = []
    first = pos = rng.randrange(3)
    versions: dict[bytes, int] = {}
    us = 1_700_000_000_000_000
    for _ in range(rng.randrange(1, 400)):
        r = rng.random()
        if r < 0.04:
            kind, body = FRAME_KIND_CHECKPOINT, b""
            frames.append(b"".join(pack_frame(b"proj", 0, 0, pos, us, 0, body, kind=kind)))
            continue
        if r < 0.06:
            kind, body = FRAME_KIND_METADATA, msgpack.packb({"max_count": 3})
            frames.append(b"".join(pack_frame(b"s-2", 0, 0, 1, us, 0, body, kind=kind)))
            continue
        pos += rng.random() < 0.04  # a frame removed by a scavenge
        us += rng.random() < 0.2
        stream = streams[0] if rng.random() < 0.6 else rng.choice(streams)
        flags = FRAME_FLAG_SCHEMA if rng.random() < 0.2 else 0
        count = 1 if rng.random() < 0.85 else rng.randrange(1, 4)
        entries = b""
        for _k in range(count):
            field = rng.choice(versioned) if flags else plain[0 if rng.random() < 0.7 else 1]
            meta = msgpack.packb({"m": 1}) if rng.random() < 0.04 else b""
            data = msgpack.packb({"n": rng.randrange(1 << 40)})
            size = ENTRY_HEAD.size - 4 + len(field) + len(meta) + len(data)
            head = ENTRY_HEAD.pack(size, rng.randbytes(16), len(field), len(meta))
            entries += head + field + meta + data
        version = versions.get(stream, 0)
        versions[stream] = version + count
        frames.append(
            b"".join(pack_frame(stream, count, pos, version, us, 0, entries, flags=flags))
        )
        pos += count
    return b"".join(frames), first, pos


def test_the_batch_path_returns_what_the_reference_loop_does_on_random_spans() -> None:
    """Random spans (see ``_random_span``), read whole or from and to random positions, with
    or without retention hiding some events, now and then with a flipped bit: whenever the
    batch path (and its tight loop for runs of single-event frames) returns, it returns the
    reference loop's records, last frame and end."""
    rng = random.Random(20261127)
    cut = 1_700_000_000_000_010  # events recorded before this hidden (retention by age)
    records = 0
    for _ in range(150):
        buf, first, end = _random_span(rng)
        if rng.random() < 0.1:
            damaged = bytearray(buf)
            damaged[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            buf = bytes(damaged)
        lo = rng.choice([0, rng.randrange(end + 2)])
        hi = rng.choice([1 << 62, rng.randrange(lo, end + 3)])
        hidden = None
        if rng.random() < 0.3:
            hidden = {rng.choice(["s-1", "s-2"]): (rng.randrange(20), rng.choice([0, cut]))}
        out: list[es.RecordedEvent] = []
        try:
            last, stop = _codec._span_loop(
                buf, first, lo, hi, None, None, out, True, None, None, hidden
            )
            reference: Any = (out, last, stop)
        except Exception as exc:
            reference = exc
        try:
            got = _codec._span_batch(
                buf, first, lo, hi, True, None, _codec.new_type_caches(), hidden
            )
        except Exception:
            continue  # the reference loop decides
        assert not isinstance(reference, Exception), reference
        assert got == reference
        records += len(got[0])
    assert records > 10_000  # (most spans are read whole)


def test_a_stream_run_returns_what_the_reference_loop_does_on_random_frames() -> None:
    """A stream read's batch (``decode_stream_run``, and its loop for runs of single-event
    frames) over one stream's frames cut out of random spans (see ``_random_span``: other
    streams with names of the same length, types, metadata, many-event frames...), joined as
    a stream read joins frames that lie apart: it returns what the reference loop returns
    frame by frame, or None (the caller then reads frame by frame). Now and then a bit is
    flipped, or the index's positions are wrong: never a record that was not asked for."""
    head = struct.Struct("<4sIIBBHIQ")  # up to the first position
    rng = random.Random(1127)
    records = 0
    for _ in range(200):
        buf, _first, end = _random_span(rng)
        stream = rng.choice(["s-1", "s-2", "abcd"])
        lied = False
        mine: list[tuple[bytes, int]] = []
        foreign = rng.random() < 0.3  # the index wrongly lists another stream's frame
        at = 0
        while at < len(buf):
            _m, _c, blen, kind, _f, slen, _n, fpos = head.unpack_from(buf, at)
            frame = buf[at : at + 12 + blen]
            if kind == 1 and frame[52 : 52 + slen] == stream.encode():
                mine.append((frame, fpos))
            elif kind == 1 and foreign and mine and slen == len(stream):
                mine.append((frame, fpos))
                foreign = False
                lied = True
            at += 12 + blen
        if not mine:
            continue
        lo = rng.choice([0, rng.randrange(end + 2)])
        hi = rng.choice([1 << 62, rng.randrange(lo, end + 3)])
        hidden = None
        if rng.random() < 0.2:
            hidden = {rng.choice([stream, "q"]): (rng.randrange(20), 0)}  # or another one
        firsts = [fpos for _, fpos in mine]
        joined = b"".join(frame for frame, _ in mine)
        lie = lied or rng.random() < 0.1
        if lie and not lied:
            firsts[rng.randrange(len(firsts))] += 1
        if rng.random() < 0.1:
            damaged = bytearray(joined)
            damaged[rng.randrange(len(joined))] ^= 1 << rng.randrange(8)
            joined = bytes(damaged)
        caches = _codec.new_type_caches()
        got = _codec.decode_stream_run(joined, firsts, lo, hi, stream, True, caches, hidden)
        if got is None:
            continue
        assert not lie
        reference: list[es.RecordedEvent] = []
        at = 0
        for frame, fpos in mine:  # the frame-by-frame path: each frame checked on its own
            n = len(frame)
            _codec._span_loop(
                joined[at : at + n], fpos, lo, hi, None, None, reference, True, None, None, hidden
            )
            at += n
        assert got == reference
        records += len(got)
    assert records > 3_000
