"""One commit batch mixing appends, rejected and cancelled appends, metadata writes (whose
frame bodies are made while the batch is planned, after its space was reserved), hard
deletes and checkpoints, in small segments that rotate often: what each caller was told is
what a reopened store reads back, and the log verifies clean."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import aioeventstore as es
from aioeventstore._verify import verify_store
from tests.helpers import Note


@pytest.mark.parametrize("compression", ["none", "zstd"])
async def test_mixed_batches_in_rotating_segments(tmp_path: Path, compression: Any) -> None:
    opts = es.StoreOptions(segment_bytes=4096, compression=compression)
    told: dict[str, list[tuple[int, int, str]]] = {}  # stream -> (position, version, text)
    async with es.EventStore(tmp_path, options=opts) as store:
        first = await store.append("s0-0", Note(text="first"))  # (a position to checkpoint)
        told["s0-0"] = [(first.position, first.version, "first")]
        for rnd in range(40):
            ops: list[Any] = []
            names: list[str] = []
            for s in range(6):
                stream = f"s{s}-{rnd // 20}"
                text = f"{rnd}-{s}"
                names.append(stream + "|" + text)
                ops.append(store.append(stream, Note(text=text)))
            ops.append(store.append("s0-0", Note(text="stale"), expected_version=10**6))
            ops.append(store.set_stream_metadata(f"s1-{rnd // 20}", max_count=1000 + rnd))
            ops.append(store.save_checkpoint("c", rnd))  # (at most the head, when called)
            if rnd == 25:
                ops.append(store.delete_stream("s5-1", hard=True))
            cancelled = asyncio.ensure_future(store.append("s2-0", Note(text="cancelled")))
            cancelled.cancel()
            got = await asyncio.gather(*ops, return_exceptions=True)
            for name, res in zip(names, got[:6], strict=True):
                stream, text = name.split("|")
                if isinstance(res, BaseException):
                    assert isinstance(res, es.StreamDeleted) and stream == "s5-1", res
                    continue
                told.setdefault(stream, []).append((res.position, res.version, text))
            assert isinstance(got[6], es.WrongExpectedVersion)
            assert not any(isinstance(r, BaseException) for r in got[7:9]), got
            with pytest.raises(asyncio.CancelledError):
                await cancelled
    assert verify_store(str(tmp_path)).ok
    async with es.EventStore(tmp_path, options=opts) as store:
        for stream, rows in told.items():
            if stream == "s5-1":
                continue
            read = [
                (r.position, r.version, r.data.text)  # type: ignore[union-attr]
                async for r in store.read_stream(stream)
            ]
            assert read == rows, stream
        assert store.stream_metadata("s1-1").max_count == 1039
        assert store.stream_metadata("s5-1").hard_deleted
        assert store.checkpoint("c") == 39
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".seg"]) > 5  # it did rotate
