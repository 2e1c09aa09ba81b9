"""Values at the edges of what is stored: names that are not UTF-8, metadata keys that are not
str, floats and bytes that JSON has no form for. Each is refused with a message, or read back
and printed as valid JSON; none stops a store, a read or a live subscription."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import msgpack
import pytest

import aioeventstore as es
from aioeventstore import _codec, _subscriptions
from aioeventstore._cli import EXIT_ERROR, EXIT_OK, main
from aioeventstore._format import FRAME_HEADER_SIZE, FRAME_LENGTH_AT, crc32c
from aioeventstore._stats import Histogram, LogStatistics

from .helpers import Note, take


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def strict_json(line: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


# --- names ------------------------------------------------------------------------------------
async def test_a_consumer_name_that_is_not_utf8_is_refused(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await store.append("s", Note(text="a"))
        with pytest.raises(ValueError, match="consumer name 'proj\\\\udcff' is not valid UTF-8"):
            await store.save_checkpoint("proj\udcff", 0)
        with pytest.raises(ValueError, match="not valid UTF-8"):
            store.subscribe(name="proj\udcff")
        await store.append("s", Note(text="b"))
    async with es.EventStore(store_path) as store:
        assert store.head == 1 and store.checkpoints() == {}


def test_a_type_name_that_is_not_utf8_is_refused_with_its_class() -> None:
    with pytest.raises(TypeError, match="Odd: type name 'x\\\\udcff' is not valid UTF-8"):

        class Odd(es.Event):
            __event_type__ = "x\udcff"

    with pytest.raises(TypeError, match="type name 'y\\\\ud800' is not valid UTF-8"):

        class Odd2(es.Event):
            __event_aliases__ = ("y\ud800",)


async def test_a_checkpoint_name_an_earlier_build_stored_with_a_surrogate_opens(
    store_path: Path,
) -> None:
    """Earlier builds stored such a name ("surrogatepass"); opening then raised CorruptLog and
    `repair` would have cut every event written after it. Played by patching a stored name."""
    async with es.EventStore(store_path) as store:
        await store.append("s", Note(text="a"))
        await store.save_checkpoint("projXYZ", 0)
        await store.append("s", Note(text="b"))
    for sidecar in store_path.glob("*.idx"):
        sidecar.unlink()
    (segment,) = store_path.glob("*.seg")
    raw = bytearray(segment.read_bytes())
    at = raw.index(b"projXYZ")
    raw[at : at + 7] = "proj\udcff".encode("utf-8", "surrogatepass")
    start = at - FRAME_HEADER_SIZE - 40  # (the body head: FORMAT.md)
    body = int.from_bytes(raw[start + FRAME_LENGTH_AT : start + FRAME_HEADER_SIZE], "little")
    crc = crc32c(bytes(raw[start + FRAME_LENGTH_AT : start + FRAME_HEADER_SIZE + body]))
    raw[start + 4 : start + 8] = crc.to_bytes(4, "little")
    segment.write_bytes(bytes(raw))

    for _ in range(2):  # (the second open through the sidecars the first close wrote)
        async with es.EventStore(store_path) as store:
            assert store.checkpoints() == {"proj\udcff": 0}
            assert [r.data async for r in store.read_all()] == [Note(text="a"), Note(text="b")]
    code, out, _ = await asyncio.to_thread(cli, "info", str(store_path))
    assert code == EXIT_OK and "'proj\\udcff': at 0 (lag 1)" in out
    code, out, _ = await asyncio.to_thread(cli, "verify", str(store_path))
    assert code == EXIT_OK, out


async def test_info_escapes_consumer_names_a_terminal_would_act_on(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await store.append("s", Note(text="a"))
        await store.save_checkpoint("p\x1b[2J\nconsumers  forged", 0)
        await store.save_checkpoint("été", 0)
    code, out, _ = await asyncio.to_thread(cli, "info", str(store_path))
    assert code == EXIT_OK
    rows = [line for line in out.splitlines() if "at 0" in line]
    assert rows == [
        "consumers  'p\\x1b[2J\\nconsumers  forged': at 0 (lag 0)",
        "           été: at 0 (lag 0)",
    ]


# --- metadata keys ----------------------------------------------------------------------------
async def test_metadata_keys_that_are_not_str_are_refused_at_any_depth(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        cases: list[tuple[dict[Any, Any], str]] = [
            ({"h": {1: "x"}}, "key 1 in ['h'] is not a str or bytes"),
            ({"h": [{"a": 1}, {None: 2}]}, "key None in ['h'][1] is not a str or bytes"),
            ({"h": {b"ok": {1.5: 1}}}, "key 1.5 in ['h'][b'ok'] is not a str or bytes"),
            ({b"k": 1}, "key b'k' is not a str"),  # (at the top: str keys only)
        ]
        for metadata, where in cases:
            with pytest.raises(
                ValueError, match=re.escape(f"stream 's': event 0 metadata {where}")
            ):
                await store.append("s", es.NewEvent(Note(text="x"), metadata=metadata))
        deep = {"h": {"a": [{"b": (1, {"c": "d", b"e": b"f"})}]}, "n": None}
        await store.append("s", es.NewEvent(Note(text="y"), metadata=deep))
        assert [r.metadata async for r in store.read_all()] == [
            {"h": {"a": [{"b": [1, {"c": "d", b"e": b"f"}]}]}, "n": None}
        ]


async def test_metadata_keys_earlier_builds_stored_read_back(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Earlier builds checked only top-level keys: an int key one level down was stored, and
    every read of it raised CorruptLog (`verify` said ok)."""

    def unchecked(stream: str, index: int, metadata: Any) -> bytes:
        return msgpack.packb(dict(metadata))  # type: ignore[no-any-return]

    odd = {"h": {1: "x", math.nan: 2, -math.inf: 3}}
    async with es.EventStore(store_path) as store:
        with monkeypatch.context() as patch:
            patch.setattr(_codec, "_pack_metadata", unchecked)
            await store.append("s", es.NewEvent(Note(text="a"), metadata=odd))
        await store.append("s", Note(text="b"))
    async with es.EventStore(store_path) as store:
        got = [(r.data, r.metadata) async for r in store.read_all()]
    assert [d for d, _m in got] == [Note(text="a"), Note(text="b")]
    assert [sorted(map(str, m.get("h", {}).items())) for _d, m in got] == [
        ["(-inf, 3)", "(1, 'x')", "(nan, 2)"],
        [],
    ]
    code, out, _ = await asyncio.to_thread(cli, "dump", str(store_path))
    assert code == EXIT_OK
    assert [strict_json(line)["metadata"] for line in out.splitlines()] == [
        {"h": {"1": "x", "NaN": 2, "-Infinity": 3}},
        {},
    ]


def nested(levels: int) -> dict[str, Any]:
    """Metadata of ``levels`` maps, one in the other."""
    deep: dict[str, Any] = {"v": 1}
    for _ in range(levels - 1):
        deep = {"d": deep}
    return deep


def ladder(width: int) -> dict[str, Any]:
    """600 levels, each holding the level below and one list of ``width`` items shared by
    all: walked again at every level it cost seconds (and a dict holding itself under many
    keys, gigabytes)."""
    shared = list(range(width))
    rung: Any = [shared]
    for _ in range(600):
        rung = [rung, shared]
    return {"l": rung}


def shared_chain() -> dict[str, Any]:
    """1,024 levels through "a", built of three 341-level chains that "b" and "c" also hold
    (met first where they lie shallower: each must be walked again where it lies deeper)."""
    x3: Any = b"leaf"
    for _ in range(341):
        x3 = [x3]
    x2: Any = x3
    for _ in range(341):
        x2 = [x2]
    x1: Any = x2
    for _ in range(341):
        x1 = [x1]
    return {"a": x1, "b": x2, "c": x3}


async def test_metadata_too_deep_or_holding_itself_is_a_value_error(store_path: Path) -> None:
    """msgpack packs 1,025 levels but reads 1,024: such metadata was acknowledged, then every
    read of its chunk raised CorruptLog (and verify said ok)."""
    loop: list[Any] = []
    loop.append(loop)
    async with es.EventStore(store_path) as store:
        for metadata, problem in [
            (nested(1025), "is nested more than 512 maps and lists deep"),
            (nested(513), "is nested more than 512 maps and lists deep"),
            (nested(3000), "is nested more than 512 maps and lists deep"),
            ({"loop": loop}, re.escape("holds itself (at ['loop'][0])")),
            (ladder(1000), "is nested more than 512 maps and lists deep"),
            (shared_chain(), "is nested more than 512 maps and lists deep"),
        ]:
            with pytest.raises(ValueError, match=f"stream 's': event 0 metadata {problem}"):
                await store.append("s", es.NewEvent(Note(text="x"), metadata=metadata))
        deepest = nested(511)
        deepest["bytes"] = b"\x00"  # (to_json then converts it all, one frame per level)
        await store.append("s", es.NewEvent(Note(text="ok"), metadata=deepest))
        assert store.head == 0
        (rec,) = [r async for r in store.read_all()]
        assert rec.data == Note(text="ok")
        assert strict_json(rec.to_json())["metadata"]["bytes"] == {"$base64": "AA=="}
    code, out, _ = await asyncio.to_thread(cli, "dump", str(store_path))
    assert code == EXIT_OK and len(out.splitlines()) == 1


async def test_a_live_subscriber_reads_from_disk_when_the_fan_out_fails(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The batch whose records cannot be built for live subscribers was dropped for them,
    with a log line: a silent gap. They now read it from disk."""
    real = _subscriptions.build_records

    def fails_for_bad(item: Any, *args: Any) -> Any:
        if item.stream == "bad":
            raise RuntimeError("cannot build")
        return real(item, *args)

    monkeypatch.setattr(_subscriptions, "build_records", fails_for_bad)
    async with es.EventStore(store_path) as store:
        await store.append("a", Note(text="0"))
        async with store.subscribe(from_position=0) as sub, store.subscribe(stream="bad") as own:
            assert [r.position for r in await take(sub, 1)] == [0]
            with caplog.at_level(logging.ERROR, logger="aioeventstore"):
                await asyncio.gather(
                    *(
                        store.append(stream, Note(text=str(i)))
                        for i, stream in enumerate(["a", "bad", "c"], 1)
                    )
                )
                await store.append("a", Note(text="4"))
                got = await take(sub, 4)
                mine = await take(own, 1)
                for i in range(5, 8):  # (failing for every batch: logged once a minute)
                    await store.append("bad", Note(text=str(i)))
                assert [r.position for r in await take(own, 3)] == [5, 6, 7]
            assert [r.position for r in got] == [1, 2, 3, 4]
            assert [(r.stream, r.data) for r in mine] == [("bad", Note(text="2"))]
    failures = [r for r in caplog.records if "live fan-out failed" in r.getMessage()]
    assert len(failures) == 1 and "(1 times" in failures[0].getMessage()


# --- JSON output ------------------------------------------------------------------------------
async def test_dump_and_tail_print_valid_json_for_every_stored_value(store_path: Path) -> None:
    class Gauge(es.Event):
        __event_type__ = "odd.Gauge"
        value: float

    values = [math.nan, math.inf, -math.inf, 1.5]
    async with es.EventStore(store_path) as store:
        for v in values:
            await store.append("g", Gauge(value=v))
        await store.append(
            "m",
            es.NewEvent(
                Note(text="x"),
                metadata={
                    "sig": b"\xff\x00",
                    "text": "b'\\xff\\x00'",
                    "gain": math.inf,
                    "ext": msgpack.ExtType(5, b"ab"),
                },
            ),
        )
    for command in ("dump", "tail"):
        code, out, err = await asyncio.to_thread(cli, command, str(store_path))
        assert code == EXIT_OK, err
        docs = [strict_json(line) for line in out.splitlines()]
        assert [d["data"]["value"] for d in docs[:4]] == ["NaN", "Infinity", "-Infinity", 1.5]
        assert docs[4]["metadata"] == {
            "sig": {"$base64": "/wA="},
            "text": "b'\\xff\\x00'",
            "gain": "Infinity",
            "ext": {"$ext": 5, "$base64": "YWI="},
        }


def test_stats_json_gives_a_percentile_past_the_last_bound_as_plus_inf() -> None:
    past = Histogram((1.0, 2.0, math.inf), (0, 0, 3), 3 << 21, "events")
    stats = LogStatistics("p", 1, 1, 3, 0, 0, 3 << 21, 1, 3, past, past, None, None, 0)
    doc = stats.to_json()
    assert doc["events_per_frame"]["p50"] == doc["events_per_batch"]["p99"] == "+Inf"
    strict_json(json.dumps(doc))


async def test_tail_refuses_an_interval_that_is_not_finite(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await store.append("s", Note(text="a"))
    for interval in ("inf", "1e400", "nan", "0"):
        code, _out, err = await asyncio.to_thread(
            cli, "tail", "--interval", interval, str(store_path)
        )
        assert code == EXIT_ERROR and "--interval must be > 0 seconds and finite" in err


async def test_records_without_metadata_pickle_and_dump_as_json(store_path: Path) -> None:
    """DESIGN.md: each event has a metadata dict. Without metadata it was a MappingProxyType:
    pickle and json.dumps refused it."""
    import pickle

    async with es.EventStore(store_path) as store:
        await store.append("s", Note(text="a"))
        (rec,) = [r async for r in store.read_all()]
    assert isinstance(rec.metadata, dict) and json.dumps(rec.metadata) == "{}"
    again = pickle.loads(pickle.dumps(rec))
    assert again == rec and again.metadata is rec.metadata
    with pytest.raises(TypeError, match="read-only"):
        rec.metadata["k"] = 1
    assert rec.metadata == {}


class _LyingDict(dict[str, Any]):
    """A dict whose items() are not its storage: msgpack packs what items() gives."""

    def items(self) -> Any:
        return [(1, v) for v in self.values()]


async def test_metadata_keys_are_checked_as_msgpack_sees_them(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        with pytest.raises(ValueError, match=re.escape("key 1 in ['m'] is not a str or bytes")):
            await store.append("s", es.NewEvent(Note(text="x"), metadata={"m": _LyingDict(a=1)}))
        assert store.head == -1
