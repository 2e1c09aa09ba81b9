"""The command line: ``python -m aioeventstore verify|repair PATH`` (also ``aioeventstore``).

``verify`` checks a store read-only and prints one line per segment; exit status 0 when the
store is whole, 1 when a problem (torn tail or corruption) was found, 2 when it could not be
checked. ``repair`` is the explicit fix: it refuses to run while a writer holds the store's
lock, cuts the damage away into side files next to the segments (nothing is deleted), and
exits 0 when the store is whole afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from ._verify import RepairReport, SegmentReport, VerifyReport, repair_store, verify_store
from .errors import CompressionUnavailable, StoreLocked
from .options import StoreOptions

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_ERROR = 2


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aioeventstore", description="Check or repair an aioeventstore directory."
    )
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check every frame of every segment (read-only)")
    r = sub.add_parser(
        "repair",
        help="cut damage away into side files (refuses while a writer has the store open)",
    )
    r.add_argument("--dry-run", action="store_true", help="only print what would be done")
    defaults = StoreOptions()
    for cmd in (v, r):
        cmd.add_argument("path", help="the store directory")
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


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit status."""
    stdout = out if out is not None else sys.stdout
    args = _parser().parse_args(argv)
    path = os.fspath(args.path)
    if not os.path.isdir(path):
        print(f"aioeventstore: {path} is not a directory", file=sys.stderr)
        return EXIT_ERROR
    try:
        options = StoreOptions(
            max_batch_bytes=args.max_batch_bytes,
            max_append_bytes=args.max_append_bytes,
            max_event_bytes=min(args.max_append_bytes, StoreOptions().max_event_bytes),
        )
    except ValueError as exc:
        print(f"aioeventstore: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        if args.command == "verify":
            report = verify_store(path, None, options)
            if args.json:
                json.dump(report.to_json(), stdout, indent=2)
                print(file=stdout)
            else:
                print_report(report, stdout)
            return EXIT_OK if report.ok else EXIT_PROBLEM
        rep = repair_store(path, None, options, dry_run=args.dry_run)
    except (StoreLocked, CompressionUnavailable) as exc:
        print(f"aioeventstore: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"aioeventstore: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_ERROR
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
