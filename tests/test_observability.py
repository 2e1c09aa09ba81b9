"""statistics(): counters, histograms, subscribers' lag, files on disk; the Prometheus text;
logging of lifecycle events (silent unless the application configures logging)."""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import aioeventstore as es

from .helpers import FaultyFileSystem, Note


def test_histogram_buckets_and_percentiles() -> None:
    h = es.Histogram(
        bounds=(1.0, 2.0, 4.0, 8.0, math.inf), counts=(5, 0, 3, 1, 1), sum=120, unit="events"
    )
    assert h.count == 10 and h.mean == 12.0
    assert h.cumulative() == (5, 5, 8, 9, 10)
    assert h.percentile(50) == 1.0
    assert h.percentile(51) == 4.0
    assert h.percentile(90) == 8.0
    assert h.percentile(100) == math.inf
    with pytest.raises(ValueError, match="percentile"):
        h.percentile(0)
    empty = es.Histogram(bounds=(1.0, math.inf), counts=(0, 0), sum=0, unit="us")
    assert empty.percentile(99) is None and empty.mean == 0.0


async def test_statistics_count_batches_latency_and_files(store_path: Path) -> None:
    async with es.EventStore(store_path, segment_bytes=4096) as store:
        for _ in range(20):
            await asyncio.gather(
                *(store.append(f"s{i}", [Note(text="x" * 30)] * (1 + i % 3)) for i in range(8))
            )
        await store.save_checkpoint("c", 5)
        st = store.statistics()
        assert st.events == store.head + 1 == 20 * sum(1 + i % 3 for i in range(8))
        assert st.batch_events.count == st.batches and st.batch_events.sum == st.events
        assert st.batch_events.unit == "events" and st.sync_latency.unit == "us"
        assert st.sync_latency.count == st.batches == st.syncs
        assert st.sync_latency.sum > 0 and st.sync_latency.percentile(50) is not None
        assert st.batch_events.counts[0] >= 1  # the checkpoint-only batch: 0 events
        files = sorted(store_path.glob("*.seg"))
        assert st.segments == len(files) > 1
        assert st.disk_bytes == sum(f.stat().st_size for f in files)
        assert st.queued == 0 and not st.failed and st.subscribers == {}
        assert st.events_per_sync == st.events / st.syncs


async def test_statistics_show_each_subscribers_lag(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        for i in range(10):
            await store.append("s", Note(text=str(i)))
        async with store.subscribe(name="projector") as named, store.subscribe() as anon:
            assert store.statistics().subscribers == {"projector": 10, f"#{anon.id}": 10}
            for _ in range(4):
                await anon.__anext__()
            await named.__anext__()
            subs = store.statistics().subscribers
            assert subs == {"projector": 9, f"#{anon.id}": 6}
        assert store.statistics().subscribers == {}


async def test_failed_store_is_visible_and_logged(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fs = FaultyFileSystem()
    async with es.EventStore(store_path, _fs=fs) as store:
        await store.append("s", Note(text="ok"))
        fs.faults.fail_sync = OSError(errno.EIO, "injected EIO")
        with (
            caplog.at_level(logging.ERROR, logger="aioeventstore"),
            pytest.raises(es.StoreFailed),
        ):
            await store.append("s", Note(text="lost"))
        assert store.statistics().failed
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "injected EIO" in errors[0].getMessage()
    assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], OSError)


async def test_lifecycle_is_logged(store_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="aioeventstore"):
        async with es.EventStore(store_path, segment_bytes=4096) as store:
            for i in range(40):
                await store.append("s", Note(text="y" * 100 + str(i)))
        seg = sorted(store_path.glob("*.seg"))[-1]
        with seg.open("ab") as f:
            f.write(b"\xc1AEF" + bytes(9))
        async with es.EventStore(store_path):
            pass
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    text = "\n".join(m for _, m in messages)
    assert f"opened {store_path}: 0 events, 0 streams, 1 segments in " in text
    assert "rotated to segment" in text
    assert "closed" in text and "40 events in 40 batches written since open" in text
    cut = [m for level, m in messages if level == "WARNING"]
    assert len(cut) == 1 and str(seg) in cut[0] and "(13 bytes)" in cut[0]
    assert f"opened {store_path}: 40 events, 1 streams" in text


def test_no_log_output_unless_the_application_configures_logging(tmp_path: Path) -> None:
    """A torn tail is cut with a warning, but an application that configured no logging sees
    nothing on stderr (a NullHandler stops Python's last-resort handler)."""
    script = textwrap.dedent(
        f"""
        import asyncio, pathlib
        import aioeventstore as es

        class E(es.Event):
            n: int

        async def main():
            path = pathlib.Path({str(tmp_path / "s")!r})
            async with es.EventStore(path) as s:
                await s.append("s", E(n=1))
            seg = sorted(path.glob("*.seg"))[-1]
            seg.write_bytes(seg.read_bytes() + b"\\xc1AEF" + bytes(5))
            async with es.EventStore(path) as s:
                assert s.recovery is not None and s.recovery.cut_bytes == 9

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""


def _parse(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


async def test_prometheus_text(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        for i in range(5):
            await store.append("s", Note(text=str(i)))
        async with store.subscribe(name='we"ird\\name') as sub:
            await sub.__anext__()
            text = es.prometheus_text(store.statistics(), labels={"store": "orders"})
    assert text.endswith("\n")
    samples = _parse(text)
    assert samples['aioeventstore_events_total{store="orders"}'] == 5
    assert samples['aioeventstore_head{store="orders"}'] == 4
    assert (
        samples['aioeventstore_subscriber_lag{store="orders",subscriber="we\\"ird\\\\name"}'] == 4
    )
    for hist in ("batch_events", "sync_latency_seconds"):
        buckets = [v for k, v in samples.items() if k.startswith(f"aioeventstore_{hist}_bucket")]
        assert buckets == sorted(buckets)  # cumulative
        inf = samples[f'aioeventstore_{hist}_bucket{{store="orders",le="+Inf"}}']
        assert inf == samples[f'aioeventstore_{hist}_count{{store="orders"}}'] == 5
    assert 'le="1e-06"' in text  # latency buckets are in seconds
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            assert line.split()[-1] in ("gauge", "counter", "histogram")


async def test_appends_counts_append_calls_only(store_path: Path) -> None:
    """Checkpoints, stream metadata and retention's own writes went through the append
    counter: one append and five acks counted six append calls."""
    async with es.EventStore(store_path) as store:
        await store.append("s", [Note(text="a"), Note(text="b")])
        async with store.subscribe(name="c") as sub:
            async for rec in sub:
                await sub.ack(rec)
                if rec.position == 1:
                    break
        await store.set_stream_metadata("s", max_count=1)
        st = store.statistics()
        assert (st.appends, st.events) == (1, 2)
        assert "aioeventstore_appends_total 1" in es.prometheus_text(st)


async def test_subscriber_keys_never_collide(store_path: Path) -> None:
    async with es.EventStore(store_path) as store:
        await store.append("s", Note(text="a"))
        a = store.subscribe(name="x")
        b = store.subscribe(name="x")
        async with a, b:
            c = store.subscribe(name=f"x#{b.id}")
            d = store.subscribe(name=f"x#{a.id}")
            async with c, d:
                keys = store.statistics().subscribers
                assert len(keys) == 4 and keys["x"] == 1
                assert store.statistics().subscribers == keys  # (the same keys each time)


async def test_a_read_only_store_says_what_opening_read(store_path: Path) -> None:
    async with es.EventStore(store_path, segment_bytes=4096) as store:
        for i in range(200):
            await store.append(f"s-{i % 7}", Note(text="x" * 40))
    segments = sorted(store_path.glob("*.seg"))
    assert len(segments) > 2
    async with es.EventStore(store_path, read_only=True) as reader:
        rec = reader.recovery
        assert rec is not None
        assert (rec.indexed_segments, rec.scanned_bytes) == (len(segments), 0)
    for sidecar in store_path.glob("*.idx"):
        sidecar.unlink()
    async with es.EventStore(store_path, read_only=True) as reader:
        rec = reader.recovery
        assert rec is not None and rec.indexed_segments == 0
        assert rec.scanned_bytes == sum(p.stat().st_size - 32 for p in segments)
