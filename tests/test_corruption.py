"""Damage anywhere in real segment files: open and read never crash with an unexpected
exception and never yield a wrong event; ``verify_store`` reaches the same verdict as
recovery; ``repair`` makes the store whole again without destroying a byte, also when the
power fails in the middle of it; and the command line reports and exits accordingly.

Each damaged copy of a store must end one of two ways: it opens, and its events are exactly a
prefix of what was written (a torn tail was cut, or the log simply ends early), or opening
raises ``CorruptLog`` naming the damaged segment and the offset ``verify_store`` reports.
"""

from __future__ import annotations

import io
import itertools
import random
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import aioeventstore as es
from aioeventstore._cli import main as cli
from aioeventstore._verify import repair_store, verify_store
from tests.crashload import STORE, run_workload
from tests.helpers import Note
from tests.simfs import PowerCut, SimFS

ROOT = Path(__file__).parent.parent
Row = tuple[str, int, int, Any, Any]


SMALL_WRITES = es.StoreOptions(
    segment_bytes=4096, max_batch_bytes=1024, max_append_bytes=512, max_event_bytes=512
)


async def make_store(path: Path, options: es.StoreOptions | None = None) -> list[Row]:
    """About 4 segments of 4 KiB: one- to three-event appends over five streams, the last
    segment at least 3,000 bytes (longer than one write with ``SMALL_WRITES``)."""
    opts = options if options is not None else es.StoreOptions(segment_bytes=4096)
    async with es.EventStore(path, opts) as store:
        i = 0
        while i < 100 or sorted(path.glob("*.seg"))[-1].stat().st_size < 3000:
            n = 1 + i % 3
            await store.append(
                f"s{i % 5}", [Note(text=f"{i}/{k}" + "x" * (i % 40)) for k in range(n)]
            )
            i += 1
        return await rows(store)


async def rows(store: es.EventStore) -> list[Row]:
    return [(r.stream, r.version, r.position, r.id, r.data) async for r in store.read_all()]


def damage(rng: random.Random, work: Path) -> str:
    """One random kind of damage to one random segment (sometimes two); returns a label."""
    segs = sorted(work.glob("*.seg"))
    labels = []
    for _ in range(1 if rng.random() < 0.8 else 2):
        seg = rng.choice(segs)
        data = bytearray(seg.read_bytes())
        kind = rng.choice(["flip", "flips", "bytes", "sector", "zeros", "truncate", "garbage"])
        at = rng.randrange(len(data)) if data else 0
        if kind == "flip" and data:
            data[at] ^= 1 << rng.randrange(8)
        elif kind == "flips" and data:
            for _ in range(rng.randint(2, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "bytes" and data:
            n = rng.randint(1, 64)
            data[at : at + n] = rng.randbytes(len(data[at : at + n]))
        elif kind == "sector" and data:
            s = at // 512 * 512
            data[s : s + 512] = bytes(len(data[s : s + 512]))
        elif kind == "zeros":  # everything from here on never written (a lost extent)
            data[at:] = bytes(len(data) - at)
        elif kind == "truncate":
            del data[at:]
        else:
            del data[at:]
            data += rng.randbytes(rng.randint(1, 300))
        seg.write_bytes(bytes(data))
        labels.append(f"{kind}@{seg.name}:{at}")
    return " ".join(labels)


@pytest.mark.parametrize("verify_on_open", [True, False], ids=["verify-on-open", "trust-index"])
@pytest.mark.parametrize("small_writes", [False, True], ids=["default", "small-writes"])
async def test_random_damage_never_yields_a_wrong_event(
    tmp_path: Path, small_writes: bool, verify_on_open: bool
) -> None:
    """500 damaged copies per option set; with small write limits a damaged tail longer than
    one write (about 1.6 KiB) must be corruption, not a torn tail, for verify as for open.

    The store was closed cleanly, so every segment has an index sidecar. With
    ``verify_on_open`` opening checksums what they cover and reports any damage itself. By
    default opening trusts a sidecar that matches its segment's size and last frame: damage
    inside what it covers is then reported by the first read that reaches it, with the same
    ``CorruptLog`` verdict; either way no wrong event is ever returned."""
    opts = SMALL_WRITES if small_writes else es.StoreOptions(segment_bytes=4096)
    opts = replace(opts, verify_on_open=verify_on_open)
    original = tmp_path / "original"
    truth = await make_store(original, opts)
    assert len(list(original.glob("*.idx"))) == len(list(original.glob("*.seg")))
    assert len(list(original.glob("*.seg"))) >= 4
    rng = random.Random(20261127 + small_writes)
    outcomes = {"prefix": 0, "cut": 0, "corrupt": 0, "repaired": 0, "too-long": 0}
    for trial in range(500):
        work = tmp_path / f"t{trial}"
        shutil.copytree(original, work)
        label = damage(rng, work)
        report = verify_store(work, options=opts)
        first = report.first_problem
        opened = False
        try:
            async with es.EventStore(work, opts) as store:
                opened = True
                got = await rows(store)
                rec = store.recovery
                assert rec is not None
        except es.CorruptLog as exc:
            assert not (opened and verify_on_open), label
            assert first is not None and not first[1].torn, (label, report)
            if verify_on_open:
                assert (exc.path, exc.offset) == (first[0].path, first[1].offset), label
            else:  # a trusted segment's damage may surface after a later segment's
                found = {(s.path, s.problem.offset) for s in report.segments if s.problem}
                assert (exc.path, exc.offset) in found, label
            outcomes["corrupt"] += 1
            outcomes["too-long"] += "more than one write" in exc.reason
            # repair destroys nothing: compare with the files as repair finds them (a
            # trusting open may already have cut a torn tail before a read hit damage)
            before = {p.name: p.read_bytes() for p in work.glob("*.seg")}
            fixed = repair_store(work, options=opts)
            assert fixed.after is not None and fixed.after.ok, (label, fixed)
            for a in fixed.actions:  # nothing destroyed: kept bytes + side file = what was there
                kept = Path(a.path).read_bytes() if a.kind == "truncate" else b""
                assert kept + Path(a.side_path).read_bytes() == before[Path(a.path).name]
            async with es.EventStore(work, opts) as store:
                got = await rows(store)
            assert got == truth[: len(got)], label
            outcomes["repaired"] += 1
        else:
            assert got == truth[: len(got)], label  # exactly a prefix: never a wrong event
            if rec.cut_path is not None:
                assert first is not None and first[1].torn, label
                assert (rec.cut_path, rec.cut_offset) == (first[0].path, first[1].offset)
                outcomes["cut"] += 1
            else:
                assert first is None or (first[1].torn and first[1].offset == 0), label
                outcomes["prefix"] += 1
        shutil.rmtree(work)
    assert outcomes["corrupt"] > 300 and outcomes["cut"] > 20 and outcomes["prefix"] > 0, outcomes
    assert (outcomes["too-long"] > 3) == small_writes, outcomes


async def test_verify_reports_every_segment(tmp_path: Path) -> None:
    truth = await make_store(tmp_path / "s")
    report = verify_store(tmp_path / "s")
    assert report.ok and not report.corrupt and report.first_problem is None
    assert report.events == len(truth) and report.streams == 5
    segs = report.segments
    assert [s.path for s in segs] == [str(p) for p in sorted((tmp_path / "s").glob("*.seg"))]
    assert segs[0].first_position == 0 and segs[-1].last_position == len(truth) - 1
    for a, b in itertools.pairwise(segs):
        assert a.last_position is not None and b.first_position == a.last_position + 1
    assert all(s.bytes == Path(s.path).stat().st_size for s in segs)
    assert sum(s.frames for s in segs) >= 100
    doc = report.to_json()
    assert doc["verdict"] == "ok" and len(doc["segments"]) == len(segs)


async def test_repair_survives_a_power_cut_at_every_step() -> None:
    """Damage in an older segment of a store on the simulated file system; ``repair`` is cut
    at each of its operations in turn. At every cut, each damaged byte is still somewhere
    durable (in its segment or a side file), and running repair again finishes the job."""
    base = SimFS(0)
    run = await run_workload(base, appends=24)
    assert run.error is None
    segs = [p for p in base.walk(STORE) if p.endswith(".seg")]
    assert len(segs) > 5
    victim = segs[2]
    data = bytearray(base.read_file(victim))
    data[100] ^= 0x10
    base.write_file(victim, bytes(data))
    originals = {p: base.read_file(p) for p in segs}
    reference = base.clone()
    before = reference.ops
    plan = repair_store(STORE, reference)
    assert plan.before.corrupt and plan.after is not None and plan.after.ok
    steps = reference.ops - before
    assert steps >= len(plan.actions) + 3
    for j in range(steps):
        fs = base.clone()
        fs.cut_after(j)
        with pytest.raises(PowerCut):
            repair_store(STORE, fs)
        fs.reboot("torn", random.Random(j), tear=True)
        files = {p: fs.read_file(p) for p in fs.walk(STORE)}
        for path, content in originals.items():
            here = files.get(path, b"")
            sides = [v for k, v in files.items() if k.startswith(path + ".cut-")]
            assert content == here or any(content == here + s for s in sides), (j, path)
        again = repair_store(STORE, fs)
        assert again.after is not None and again.after.ok
        async with es.EventStore(STORE, _fs=fs, segment_bytes=4096) as store:
            assert store.head >= 0


async def test_repair_refuses_while_a_writer_has_the_store(tmp_path: Path) -> None:
    await make_store(tmp_path / "s")
    async with es.EventStore(tmp_path / "s"):
        with pytest.raises(es.StoreLocked, match="close it before repairing"):
            repair_store(tmp_path / "s")
        out = io.StringIO()
        assert cli(["repair", str(tmp_path / "s")], out) == 2
    assert cli(["repair", str(tmp_path / "s")], io.StringIO()) == 0  # nothing to repair


async def test_cli_verify_and_repair(tmp_path: Path) -> None:
    path = tmp_path / "s"
    truth = await make_store(path)
    out = io.StringIO()
    assert cli(["verify", str(path)], out) == 0
    text = out.getvalue()
    assert "00000000000000000000.seg" in text and f"{len(truth)} events" in text
    assert text.rstrip().endswith(": ok")
    last = sorted(path.glob("*.seg"))[-1]
    last.write_bytes(last.read_bytes()[:-7])  # a torn tail
    out = io.StringIO()
    assert cli(["verify", str(path)], out) == 1
    assert "torn tail" in out.getvalue()
    second = sorted(path.glob("*.seg"))[1]
    raw = bytearray(second.read_bytes())
    raw[200] ^= 4
    second.write_bytes(bytes(raw))
    out = io.StringIO()
    assert cli(["verify", "--json", str(path)], out) == 1
    assert '"verdict": "corruption"' in out.getvalue()
    out = io.StringIO()
    assert cli(["repair", "--dry-run", str(path)], out) == 1
    assert "would cut" in out.getvalue() and "would move" in out.getvalue()
    assert len(list(path.glob("*.cut-*"))) == 0
    out = io.StringIO()
    assert cli(["repair", str(path)], out) == 0
    assert "after repair" in out.getvalue() and len(list(path.glob("*.cut-*"))) >= 2
    async with es.EventStore(path) as store:
        got = await rows(store)
    assert 0 < len(got) < len(truth) and got == truth[: len(got)]
    assert cli(["verify", str(tmp_path / "missing")], io.StringIO()) == 2


async def test_cli_takes_the_stores_write_limits(tmp_path: Path) -> None:
    """A store opened with small write limits: a damaged tail longer than one write is
    corruption to ``open``; ``verify`` says the same when told the limits."""
    path = tmp_path / "s"
    await make_store(path, SMALL_WRITES)
    last = sorted(path.glob("*.seg"))[-1]
    raw = bytearray(last.read_bytes())
    raw[40:] = bytes(len(raw) - 40)  # everything after the first frame's start: zeros
    last.write_bytes(bytes(raw))
    with pytest.raises(es.CorruptLog, match="more than one write"):
        await es.EventStore(path, SMALL_WRITES).open()
    out = io.StringIO()
    assert cli(["verify", str(path)], out) == 1
    assert "torn tail" in out.getvalue()  # with the default limits it could be one write
    out = io.StringIO()
    flags = ["--max-batch-bytes", "1024", "--max-append-bytes", "512"]
    assert cli(["verify", *flags, str(path)], out) == 1
    assert "CORRUPT" in out.getvalue() and "more than one write" in out.getvalue()


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "aioeventstore", "verify", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "0 segments, 0 events" in done.stdout
