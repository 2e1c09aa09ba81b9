"""The command line (``aioeventstore`` / ``python -m aioeventstore``), run in-process through
``main(argv)`` and as a real subprocess; ``tail -f`` follows a writer in another process."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from uuid import UUID, uuid4

import pytest

import aioeventstore as es
from aioeventstore._cli import EXIT_ERROR, EXIT_OK, EXIT_PROBLEM, Progress, main
from aioeventstore._format import FORMAT_VERSION

from .helpers import Deposited, Note

ROOT = Path(__file__).parent.parent


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


async def make_store(path: Path) -> list[tuple[str, int, str]]:
    """Three streams, two event types, a named consumer's checkpoint, several segments."""
    written = []
    async with es.EventStore(path, segment_bytes=4096) as store:
        for i in range(60):
            stream = f"acc-{i % 3}"
            event: es.Event = Note(text=f"n{i}") if i % 4 == 0 else Deposited(account="a", amount=i)
            await store.append(stream, event)
            written.append((stream, i, type(event).__event_type__))
        await store.save_checkpoint("projector", 41)
    return written


def test_info(tmp_path: Path) -> None:
    asyncio.run(make_store(tmp_path / "s"))
    code, out, _ = cli("info", str(tmp_path / "s"))
    assert code == EXIT_OK
    assert "events     60" in out and "streams    3" in out and f"version {FORMAT_VERSION}" in out
    assert "projector: at 41 (lag 18)" in out
    code, out, _ = cli("info", "--json", str(tmp_path / "s"))
    doc = json.loads(out)
    assert doc["events"] == 60 and doc["head"] == 59 and doc["streams"] == 3
    assert doc["segments"] == len(list((tmp_path / "s").glob("*.seg"))) > 1
    assert doc["bytes"] == sum(p.stat().st_size for p in (tmp_path / "s").glob("*.seg"))
    assert doc["format_versions"] == [FORMAT_VERSION]
    assert doc["consumers"] == {"projector": {"position": 41, "lag": 18}}


def test_info_counts_the_events_left_after_scavenge_and_retention(tmp_path: Path) -> None:
    """The "events" info prints are what the log holds, not the positions ever used (head +
    1): a scavenge or retention run removes events, and info, statistics() and its
    Prometheus text say so as the writer runs, and after a reopen (sidecars or a scan)."""
    path = tmp_path / "s"
    asyncio.run(make_store(path))

    async def shrink() -> tuple[int, int, int, str]:
        async with es.EventStore(path, segment_bytes=4096) as store:
            await store.delete_stream("acc-0")
            await store.scavenge()
            after_scavenge = store.statistics().stored_events
            assert after_scavenge == (await store.verify()).events < 60
        sizes = sorted(p.stat().st_size for p in path.glob("*.seg"))
        keep = sum(sizes) - sizes[0] - sizes[1]
        async with es.EventStore(path, segment_bytes=4096, retention_bytes=keep) as store:
            await store.enforce_retention()
            st = store.statistics()
            assert st.stored_events == (await store.verify()).events < after_scavenge
            await store.append("acc-1", Note(text="one more"))
            st = store.statistics()
            return after_scavenge, st.stored_events, st.head, es.prometheus_text(st)

    after_scavenge, stored, head, text = asyncio.run(shrink())
    assert head == 60 and stored < after_scavenge
    assert f"aioeventstore_stored_events {stored}" in text
    for _ in range(2):  # the writer's sidecars, then a scan once they are gone
        code, out, _ = cli("info", "--json", str(path))
        assert code == EXIT_OK and json.loads(out)["events"] == stored
        code, out, _ = cli("info", str(path))
        assert f"events     {stored} ({head + 1 - stored} of positions 0..{head} removed)" in out
        for sidecar in path.glob("*.idx"):
            sidecar.unlink()


def test_info_during_a_rotation_shows_no_unreadable_header(tmp_path: Path) -> None:
    """A last segment file still without its header (a rotation between making the file and
    writing it, or a writer killed there) is not reported as an unreadable header."""
    asyncio.run(make_store(tmp_path / "s"))
    path = tmp_path / "s"
    last = sorted(path.glob("*.seg"))[-1]
    (path / f"{int(last.stem) + 10_000:020d}.seg").write_bytes(b"")
    code, out, _ = cli("info", "--json", str(path))
    assert code == EXIT_OK and json.loads(out)["format_versions"] == [FORMAT_VERSION]


def test_dump_filters(tmp_path: Path) -> None:
    written = asyncio.run(make_store(tmp_path / "s"))
    path = str(tmp_path / "s")
    code, out, _ = cli("dump", path)
    assert code == EXIT_OK
    got = lines(out)
    assert [(r["stream"], r["position"], r["type"]) for r in got] == written
    assert got[1]["data"] == {"account": "a", "amount": 1}  # unregistered here: raw data
    assert got[0]["data"] == {"text": "n0"}
    code, out, _ = cli("dump", path, "--stream", "acc-1", "--from-position", "10", "--limit", "3")
    assert [r["position"] for r in lines(out)] == [10, 13, 16]
    assert [r["version"] for r in lines(out)] == [3, 4, 5]
    code, out, _ = cli("dump", path, "--type", "Note", "--type", "nothing")
    assert [r["position"] for r in lines(out)] == list(range(0, 60, 4))
    code, out, _ = cli("dump", path, "--type", "Deposited", "--stream", "acc-0", "--limit", "2")
    assert [r["position"] for r in lines(out)] == [3, 6]
    code, out, _ = cli("dump", path, "--from-position", "58")
    assert [r["position"] for r in lines(out)] == [58, 59]
    assert cli("dump", path, "--limit", "0")[1] == ""
    assert cli("dump", path, "--stream", "nope")[1] == ""


def test_tail_without_follow(tmp_path: Path) -> None:
    asyncio.run(make_store(tmp_path / "s"))
    path = str(tmp_path / "s")
    code, out, _ = cli("tail", path)
    assert code == EXIT_OK and [r["position"] for r in lines(out)] == list(range(50, 60))
    _, out, _ = cli("tail", "-n", "2", "--stream", "acc-2", path)
    assert [r["position"] for r in lines(out)] == [56, 59]
    _, out, _ = cli("tail", "-n", "3", "--type", "Note", path)
    assert [r["position"] for r in lines(out)] == [48, 52, 56]
    _, out, _ = cli("tail", "--from-position", "57", path)
    assert [r["position"] for r in lines(out)] == [57, 58, 59]
    assert cli("tail", "-n", "0", path)[1] == ""


async def _stats_store(path: Path) -> es.StoreStatistics:
    async with es.EventStore(path, segment_bytes=4096) as store:
        await asyncio.gather(*(store.append(f"s{i}", [Note(text="x")] * 3) for i in range(10)))
        for i in range(5):
            await store.append("one", Note(text=str(i)))
        await store.save_checkpoint("c", 3)
        return store.statistics()


def test_stats_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "s"
    live = asyncio.run(_stats_store(path))
    code, out, _ = cli("stats", "--json", str(path))
    assert code == EXIT_OK
    doc = json.loads(out)
    assert doc["events"] == 35 and doc["streams"] == 11 and doc["checkpoint_frames"] == 1
    assert doc["frames"] == 16 and doc["segments"] == 1
    assert doc["events_per_frame"]["buckets"] == {"1": 5, "4": 10}  # 3 events: bucket <= 4
    assert doc["events_per_batch"]["count"] == doc["batches"] == live.batches
    assert doc["events_per_batch"]["sum"] == 35
    assert doc["bytes"] == (path / "00000000000000000000.seg").stat().st_size
    code, out, _ = cli("stats", str(path))
    assert "35 in 11 streams" in out and "events per batch" in out and "3-4" in out


def test_stats_counts_stream_metadata_apart_from_appends(tmp_path: Path) -> None:
    """Metadata frames (no events) were counted as appends of one event, their streams as
    streams, and their time as the last event's."""

    async def build() -> str:
        async with es.EventStore(tmp_path / "s") as store:
            await store.append("a", [Note(text="1"), Note(text="2"), Note(text="3")])
            r = await store.append("a", [Note(text="4"), Note(text="5"), Note(text="6")])
            last = await anext(store.read_all(from_position=r.position))
            await store.set_stream_metadata("a", max_count=10)
            await store.set_stream_metadata("sensor-7", max_count=1000)
            await store.delete_stream("cart-3")
            return last.recorded_at.isoformat()

    last = asyncio.run(build())
    _, out, _ = cli("stats", "--json", str(tmp_path / "s"))
    doc = json.loads(out)
    assert (doc["events"], doc["streams"], doc["frames"], doc["metadata_frames"]) == (6, 1, 5, 3)
    assert doc["events_per_frame"]["buckets"] == {"4": 2}
    assert doc["last_recorded_at"] == last
    _, out, _ = cli("stats", str(tmp_path / "s"))
    assert "6 in 1 streams" in out and "(2 appends, 0 checkpoints, 3 stream metadata)" in out


def test_verify_and_exit_codes(tmp_path: Path) -> None:
    asyncio.run(make_store(tmp_path / "s"))
    path = str(tmp_path / "s")
    assert cli("verify", path)[0] == EXIT_OK
    assert cli("verify", str(tmp_path / "missing"))[0] == EXIT_ERROR
    assert cli("info", str(tmp_path / "missing"))[0] == EXIT_ERROR
    assert cli("dump", path, "--limit", "-1")[0] == EXIT_ERROR  # usage error
    assert cli("frobnicate", path)[0] == EXIT_ERROR
    code, out, _ = cli("--help")
    assert code == EXIT_OK and "examples:" in out and "exit status" in out and "tail -f" in out
    code, out, _ = cli("tail", "--help")
    assert code == EXIT_OK and "--from-position" in out and "examples:" in out
    # damage in an older segment: reads report CorruptLog with exit status 1
    first = sorted((tmp_path / "s").glob("*.seg"))[0]
    raw = bytearray(first.read_bytes())
    raw[100] ^= 0xFF
    first.write_bytes(bytes(raw))
    for command in ("verify", "dump", "info", "stats"):
        code, _, err = cli(command, path)
        assert code == EXIT_PROBLEM, command
        if command != "verify":
            assert "corrupt log" in err and first.name in err


def test_progress_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    p = Progress(err, True)
    for i in range(1000):  # a burst: rate-limited to one line
        p(i, 1000, "events")
    p.done()
    assert err.getvalue().count("of 1,000 events") == 1
    quiet = Tty()
    p = Progress(quiet, False)
    p(1, 2, "events")
    p.done()
    assert quiet.getvalue() == ""


def test_progress_is_cleared_before_the_result_is_printed(tmp_path: Path) -> None:
    """On a terminal (stdout and stderr the same one), the progress line is cleared before
    ``stats``/``verify`` print: their first line is not glued to it."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    asyncio.run(make_store(tmp_path / "s"))
    for command, first in (("stats", "store "), ("verify", "segment ")):
        term = Tty()
        assert main([command, str(tmp_path / "s")], term, term) == EXIT_OK
        shown = term.getvalue()
        assert "\r\x1b[K" + first in shown and " of " in shown.split(first)[0]


def test_a_closed_stdout_is_not_a_read_error(tmp_path: Path) -> None:
    """``verify | head`` (and the others): stdout closed by the reader is exit 0, not the
    exit 2 of a store that cannot be read."""

    class Closed(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    asyncio.run(make_store(tmp_path / "s"))
    path = str(tmp_path / "s")
    for argv in (["verify"], ["verify", "--json"], ["stats"], ["repair", "--dry-run"]):
        err = io.StringIO()
        assert main([*argv, path], Closed(), err) == EXIT_OK, argv
        assert "cannot read" not in err.getvalue()


@pytest.mark.parametrize("name", ["$all", "", "x" * 2000])
def test_a_bad_stream_name_is_a_usage_error(tmp_path: Path, name: str) -> None:
    asyncio.run(make_store(tmp_path / "s"))
    for command in (["dump"], ["tail"], ["tail", "-f"]):
        code, _, err = cli(*command, "--stream", name, str(tmp_path / "s"))
        assert code == EXIT_ERROR and "argument --stream: stream name" in err
        assert "Traceback" not in err


def test_quiet_and_non_tty_print_no_progress(tmp_path: Path) -> None:
    asyncio.run(make_store(tmp_path / "s"))
    for argv in (["dump", str(tmp_path / "s")], ["stats", "-q", str(tmp_path / "s")]):
        assert cli(*argv)[2] == ""  # StringIO is not a terminal


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioeventstore", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_console_script_and_python_dash_m(tmp_path: Path) -> None:
    asyncio.run(make_store(tmp_path / "s"))
    done = _run("info", "--json", str(tmp_path / "s"))
    assert done.returncode == 0 and json.loads(done.stdout)["events"] == 60
    assert done.stderr == ""
    script = Path(sys.executable).parent / "aioeventstore"
    if script.exists():  # installed by `pip install -e .`
        done = subprocess.run(
            [str(script), "tail", "-n", "1", str(tmp_path / "s")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0 and json.loads(done.stdout)["position"] == 59


async def _read_lines(
    stream: asyncio.StreamReader, into: list[dict[str, object]], until: int
) -> None:
    while len(into) < until:
        line = await stream.readline()
        if not line:
            return
        into.append(json.loads(line))


async def test_tail_follow_across_rotations_misses_and_repeats_nothing(tmp_path: Path) -> None:
    """A follower process prints what a writer (this process) appends while it runs, across
    segment rotations (4 KiB segments), every event exactly once and in order."""
    path = tmp_path / "s"
    total = 400
    ids: list[UUID] = []
    async with es.EventStore(path, segment_bytes=4096) as store:

        async def write(n: int, per: int) -> None:
            for _ in range(n):
                new = [uuid4() for _ in range(per)]
                batch = [es.NewEvent(Note(text="x" * 40), id=u) for u in new]
                await store.append(f"s-{len(ids) % 7}", batch)
                ids.extend(new)
                await asyncio.sleep(0.002)

        await write(10, 2)  # history the follower reads first
        follower = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aioeventstore",
            "tail",
            "-f",
            "--from-position",
            "0",
            "--limit",
            str(total),
            "--interval",
            "0.01",
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert follower.stdout is not None and follower.stderr is not None
        got: list[dict[str, object]] = []
        await asyncio.wait_for(_read_lines(follower.stdout, got, 20), 30)
        assert len(got) == 20  # it has caught up with the history and is following now
        reader = asyncio.ensure_future(_read_lines(follower.stdout, got, total))
        # single events, 3-event appends and a 1-event tail, racing the follower's polls
        await write(60, 1)
        await write(100, 3)
        await write(20, 1)
        assert len(ids) == total
        segments = len(list(path.glob("*.seg")))
        await asyncio.wait_for(reader, 30)
        rc = await asyncio.wait_for(follower.wait(), 30)
        err = (await follower.stderr.read()).decode()
    assert rc == 0, err
    assert segments >= 5  # it followed the log across several rotations
    assert [r["position"] for r in got] == list(range(total))
    assert [UUID(str(r["id"])) for r in got] == ids
    assert await follower.stdout.read() == b""  # nothing after the limit


async def test_tail_follow_ends_cleanly_on_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "s"
    async with es.EventStore(path) as store:
        await store.append("a", Note(text="first"))
        follower = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aioeventstore",
            "tail",
            "-f",
            "--interval",
            "0.01",
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert follower.stdout is not None
        first = json.loads(await asyncio.wait_for(follower.stdout.readline(), 30))
        assert first["data"] == {"text": "first"}
        await store.append("a", Note(text="second"))
        second = json.loads(await asyncio.wait_for(follower.stdout.readline(), 30))
        assert second["position"] == 1
        follower.terminate()
        assert await asyncio.wait_for(follower.wait(), 30) == 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a POSIX pipe")
def test_dump_into_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    asyncio.run(make_store(tmp_path / "s"))
    done = subprocess.run(
        f"{sys.executable} -m aioeventstore dump {tmp_path / 's'} | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert json.loads(done.stdout)["position"] == 0
    assert "Traceback" not in done.stderr
