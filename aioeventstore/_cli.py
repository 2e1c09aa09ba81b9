"""The command line: ``aioeventstore COMMAND PATH`` (also ``python -m aioeventstore``).

Commands: ``info``, ``dump``, ``tail`` (``-f`` follows a running writer), ``stats``,
``verify``, ``repair``. Every command but ``repair`` only reads, takes no lock, and can run
while a writer has the store open. The read commands live in ``_cli_read.py``.

Exit status (also in ``--help``): 0 ok; 1 a problem was found in the store (``verify``/
``repair`` found damage, or a read hit ``CorruptLog``); 2 usage error, or the store could not
be used (no such directory, unreadable, locked by a writer for ``repair``); 130 interrupted
(Ctrl-C) except for ``tail -f``, for which Ctrl-C (or SIGTERM) is the normal end: 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from ._checks import check_stream
from ._verify import RepairReport, SegmentReport, VerifyReport, repair_store, verify_store
from .errors import (
    CompressionUnavailable,
    CorruptLog,
    EventStoreError,
    StoreLocked,
    UnsupportedFormat,
)
from .options import StoreOptions

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _positions(seg: SegmentReport) -> str:
    if seg.first_position is None or seg.last_position is None:
        return "-"
    return f"{seg.first_position}-{seg.last_position}"


def _status(seg: SegmentReport) -> str:
    p = seg.problem
    if p is None:
        return "ok"
    what = "torn tail" if p.torn else "CORRUPT"
    return f"{what} at byte {p.offset:,} ({seg.bytes - p.offset:,} bytes): {p.reason}"


def print_report(report: VerifyReport, out: TextIO) -> None:
    """The per-segment table and a one-line verdict."""
    rows = [("segment", "frames", "events", "positions", "bytes", "status")]
    for s in report.segments:
        rows.append(
            (s.name, f"{s.frames:,}", f"{s.events:,}", _positions(s), f"{s.bytes:,}", _status(s))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:5], widths[1:], strict=True)
        ]
        print("  ".join([*cells, r[5]]), file=out)
    first = report.first_problem
    summary = (
        f"{len(report.segments)} segments, {report.events:,} events, {report.streams:,} streams"
    )
    if first is None:
        print(f"{summary}: ok", file=out)
    elif first[1].torn:
        print(
            f"{summary}: torn tail in {first[0].name} at byte {first[1].offset:,} "
            "(a crash left it; opening the store cuts it, or run `repair` to keep the bytes)",
            file=out,
        )
    else:
        print(
            f"{summary}: CORRUPT: {first[0].name} at byte {first[1].offset:,} "
            "(opening the store raises CorruptLog; `repair` cuts the log there, moving what "
            "follows into side files)",
            file=out,
        )


def _print_repair(rep: RepairReport, dry_run: bool, out: TextIO) -> None:
    print_report(rep.before, out)
    if not rep.actions:
        print("nothing to repair", file=out)
        return
    verb = "would" if dry_run else "did"
    for a in rep.actions:
        if a.kind == "move":
            print(f"{verb} move {a.path} ({a.bytes:,} bytes) to {a.side_path}", file=out)
        else:
            print(
                f"{verb} cut {a.path} at byte {a.offset:,}, keeping the {a.bytes:,} bytes cut "
                f"in {a.side_path}",
                file=out,
            )
    if rep.after is not None:
        print("after repair:", file=out)
        print_report(rep.after, out)


class Progress:
    """Progress on stderr for long commands: one line rewritten in place, at most four times a
    second, and nothing at all when stderr is not a terminal or with ``--quiet``."""

    INTERVAL = 0.25

    def __init__(self, err: TextIO, enabled: bool) -> None:
        self._err = err
        self._enabled = enabled
        self._last = 0.0
        self._shown = False

    def __call__(self, done: int, total: int, what: str = "") -> None:
        """Report ``done`` of ``total`` (rate-limited)."""
        if not self._enabled:
            return
        now = time.monotonic()
        if now - self._last < self.INTERVAL:
            return
        self._last = now
        pct = f" ({100 * done // total}%)" if total > 0 else ""
        self._err.write(f"\r{done:,} of {total:,} {what}{pct}\x1b[K")
        self._err.flush()
        self._shown = True

    def done(self) -> None:
        """Clear the progress line, if one was shown."""
        if self._shown:
            self._err.write("\r\x1b[K")
            self._err.flush()
            self._shown = False


EXAMPLES = """\
examples:
  aioeventstore info data/                      what is in the store (also while it runs)
  aioeventstore dump data/ --stream order-7     one stream as JSON lines
  aioeventstore dump data/ --type Deposited --from-position 1000 --limit 50
  aioeventstore dump data/ | jq -c 'select(.data.amount > 100)'
  aioeventstore tail data/ -n 20                the last 20 events
  aioeventstore tail -f data/                   follow new events as the writer commits them
  aioeventstore stats data/                     events per frame and per batch, from the files
  aioeventstore verify data/                    check every frame (read-only)
  aioeventstore repair --dry-run data/          what repair would cut (only takes the lock)

Events are printed as one JSON object per line: stream, version, position, id, type, data,
metadata, recorded_at. Progress goes to stderr, only when it is a terminal (--quiet: never).

exit status:
  0    ok
  1    a problem was found in the store (verify/repair found damage, or CorruptLog)
  2    usage error, or the store could not be used (missing, unreadable, locked for repair)
  130  interrupted (Ctrl-C); `tail -f` ends with 0 on Ctrl-C or SIGTERM
"""


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="aioeventstore",
        description="Inspect, follow, check or repair an aioeventstore directory.\n"
        "Every command but `repair` only reads, takes no lock, and can run while a writer\n"
        "has the store open.",
        epilog=EXAMPLES,
        formatter_class=fmt,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str, example: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=help_, epilog=example, formatter_class=fmt)
        c.add_argument("path", help="the store directory")
        c.add_argument("-q", "--quiet", action="store_true", help="no progress output on stderr")
        return c

    def filters(c: argparse.ArgumentParser) -> None:
        c.add_argument("--stream", type=_stream, help="only this stream (exact name)")
        c.add_argument(
            "--type",
            dest="types",
            action="append",
            default=[],
            metavar="TYPE",
            help="only events of this type name (repeatable: any of them)",
        )

    info = command(
        "info",
        "streams, events, segments, bytes, format version, head, named consumers",
        "example:\n  aioeventstore info data/\n  aioeventstore info --json data/ | jq .events",
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")

    dump = command(
        "dump",
        "print events as JSON lines, oldest first",
        "examples:\n  aioeventstore dump data/ > all.jsonl\n"
        "  aioeventstore dump data/ --stream order-7\n"
        "  aioeventstore dump data/ --type Deposited --type Withdrawn --limit 100\n"
        "  aioeventstore dump data/ --from-position 5000",
    )
    filters(dump)
    dump.add_argument(
        "--from-position", type=_count, default=0, metavar="N", help="start at this position"
    )
    dump.add_argument("--limit", type=_count, metavar="N", help="print at most N events")

    tail = command(
        "tail",
        "print the last events; with -f, keep following new ones as the writer commits them",
        "examples:\n  aioeventstore tail data/                 the last 10 events\n"
        "  aioeventstore tail -n 100 data/\n"
        "  aioeventstore tail -f data/              follow; Ctrl-C to stop (exit 0)\n"
        "  aioeventstore tail -f --from-position 0 --limit 1000 data/\n\n"
        "-f runs next to the writer (another process): it polls the files every --interval\n"
        "seconds and picks up new segments when the log rotates. It can print an event a\n"
        "moment before the writer's fsync makes it durable.",
    )
    filters(tail)
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    tail.add_argument(
        "-n", "--lines", type=_count, default=10, metavar="N", help="how many last events (10)"
    )
    tail.add_argument(
        "--from-position",
        type=_count,
        metavar="N",
        help="start at this position instead of the last -n events",
    )
    tail.add_argument(
        "--limit", type=_count, metavar="N", help="exit after printing N events in all"
    )
    tail.add_argument(
        "--interval",
        type=float,
        default=0.1,
        metavar="SECONDS",
        help="how often -f checks the files (0.1)",
    )

    stats = command(
        "stats",
        "statistics of the store read from its files: events, streams, segments, bytes, "
        "events per frame (append) and per batch (fsync)",
        "example:\n  aioeventstore stats data/\n  aioeventstore stats --json data/",
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object")

    v = command(
        "verify",
        "check every frame of every segment (read-only); exit 1 when damaged",
        "examples:\n  aioeventstore verify data/\n  aioeventstore verify --json data/",
    )
    r = command(
        "repair",
        "cut damage away into side files (refuses while a writer has the store open)",
        "examples:\n  aioeventstore repair --dry-run data/\n  aioeventstore repair data/",
    )
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="only print what would be done (the directory's LOCK file is still taken, so no "
        "writer runs meanwhile)",
    )
    defaults = StoreOptions()
    for cmd in (v, r):
        cmd.add_argument("--json", action="store_true", help="print the report(s) as JSON")
        for name in ("max_batch_bytes", "max_append_bytes"):
            cmd.add_argument(
                "--" + name.replace("_", "-"),
                type=int,
                default=getattr(defaults, name),
                help=f"the store's StoreOptions.{name} (default {getattr(defaults, name)}): "
                "a damaged tail longer than one write is corruption, not a torn tail",
            )
    return p


def _stream(text: str) -> str:
    """A --stream argument, checked as the store checks stream names (a usage error, exit 2,
    rather than a traceback from the read)."""
    try:
        check_stream(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, not {value}")
    return value


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    path = os.fspath(args.path)
    if not os.path.isdir(path):
        print(f"aioeventstore: {path} is not a directory", file=stderr)
        return EXIT_ERROR
    # Progress only on a terminal, and not when events stream to that terminal too.
    streams_out = args.command in ("dump", "tail")
    shown = not args.quiet and stderr.isatty() and not (streams_out and stdout.isatty())
    progress = Progress(stderr, shown)
    try:
        if args.command in ("verify", "repair"):
            return _check(args, path, stdout, stderr, progress)
        from ._cli_read import run_read_command

        return run_read_command(args, path, stdout, stderr, progress)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `dump | head`: the reader is gone, which is fine
        _silence_stdout()
        return EXIT_OK
    except CorruptLog as exc:
        print(f"aioeventstore: {exc}", file=stderr)
        return EXIT_PROBLEM
    except (EventStoreError, OSError) as exc:
        print(f"aioeventstore: {path}: {exc}", file=stderr)
        return EXIT_ERROR
    finally:
        progress.done()


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush
    does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (tests)
        pass


def _check(
    args: argparse.Namespace, path: str, stdout: TextIO, stderr: TextIO, progress: Progress
) -> int:
    try:
        options = StoreOptions(
            max_batch_bytes=args.max_batch_bytes,
            max_append_bytes=args.max_append_bytes,
            max_event_bytes=min(args.max_append_bytes, StoreOptions().max_event_bytes),
        )
    except ValueError as exc:
        print(f"aioeventstore: {exc}", file=stderr)
        return EXIT_ERROR
    try:
        if args.command == "verify":
            report = verify_store(
                path, None, options, progress=lambda d, t: progress(d, t, "segments")
            )
        else:
            rep = repair_store(path, None, options, dry_run=args.dry_run)
    except (StoreLocked, CompressionUnavailable, UnsupportedFormat) as exc:
        print(f"aioeventstore: {exc}", file=stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"aioeventstore: cannot read {path}: {exc}", file=stderr)
        return EXIT_ERROR
    # (printing comes after: a closed stdout is main's BrokenPipeError, not a read failure)
    if args.command == "verify":
        progress.done()
        if args.json:
            json.dump(report.to_json(), stdout, indent=2)
            print(file=stdout)
        else:
            print_report(report, stdout)
        return EXIT_OK if report.ok else EXIT_PROBLEM
    if args.json:
        doc = {
            "before": rep.before.to_json(),
            "actions": [
                {
                    "kind": a.kind,
                    "path": a.path,
                    "offset": a.offset,
                    "bytes": a.bytes,
                    "side_path": a.side_path,
                }
                for a in rep.actions
            ],
            "after": None if rep.after is None else rep.after.to_json(),
        }
        json.dump(doc, stdout, indent=2)
        print(file=stdout)
    else:
        _print_repair(rep, args.dry_run, stdout)
    final = rep.after if rep.after is not None else rep.before
    return EXIT_OK if final.ok else EXIT_PROBLEM
