"""A deterministic concurrent workload for crash and fault tests, and the check that a store
recovered from a crash holds exactly what it must.

Determinism: with many producers the composition of each commit batch depends on how fast the
I/O thread returns. :class:`Lockstep` removes that race: the simulated file system holds every
``pwrite`` on the I/O thread until the event loop has gone quiet (every producer is waiting for
its append), so each batch holds exactly the appends queued while the previous one was being
written, and the sequence of file operations is the same on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aioeventstore as es
from aioeventstore._format import SEGMENT_HEADER_SIZE
from aioeventstore._verify import VerifyReport, verify_store
from tests.helpers import Note
from tests.simfs import SimFS

STORE = "/sim/store"
PAD = "." * 150  # makes frames a few hundred bytes, so that 4 KiB segments rotate often
HANG_SECONDS = 20  # a guard against a hung store, not a wait: a run takes milliseconds


@dataclass
class Attempt:
    """One append call of the workload and how it ended."""

    stream: str
    ids: list[uuid.UUID]
    texts: list[str]
    expected: es.ExpectedVersion
    outcome: es.AppendResult | BaseException | None = None

    @property
    def acked(self) -> bool:
        """The append returned: its events were durable before the power was cut."""
        return isinstance(self.outcome, es.AppendResult)

    @property
    def rejected(self) -> bool:
        """The append was refused before anything was written."""
        return isinstance(self.outcome, es.WrongExpectedVersion)


@dataclass
class Run:
    """What a workload run did: every append attempt, in the order producers made them."""

    attempts: list[Attempt] = field(default_factory=list)
    checkpoints: list[tuple[int, bool]] = field(default_factory=list)
    """Positions saved for the consumer ``"proj"``, in order, and whether each returned."""
    opened: bool = False
    error: BaseException | None = None

    def acked(self) -> list[Attempt]:
        return [a for a in self.attempts if a.acked]


class Lockstep:
    """Holds each ``pwrite`` of the I/O thread to a segment until the event loop is quiet
    (see module doc)."""

    def __init__(self, fs: SimFS, loop: asyncio.AbstractEventLoop) -> None:
        self._fs = fs
        self._loop = loop
        self.enabled = False
        self.arrived = asyncio.Event()
        self._go = threading.Semaphore(0)
        fs.before_op = self._before_op

    def _before_op(self, op: str, path: str) -> None:
        if op != "pwrite" or not self.enabled or self._fs.dead:
            return
        if not path.endswith(".seg"):  # only the commit loop's writes are held
            return
        self._loop.call_soon_threadsafe(self.arrived.set)
        if not self._go.acquire(timeout=60):  # pragma: no cover - a test bug, not a store bug
            raise RuntimeError("lockstep: the driver never released a write")

    async def drive(self, work: asyncio.Future[Any]) -> None:
        """Release one write at a time, each once every producer is blocked, until ``work``
        is done."""
        while not work.done():
            arrived: asyncio.Future[Any] = asyncio.ensure_future(self.arrived.wait())
            await asyncio.wait({arrived, work}, return_when=asyncio.FIRST_COMPLETED)
            if not arrived.done():
                arrived.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await arrived
                break
            self.arrived.clear()
            await settle()
            self._go.release()

    def stop(self) -> None:
        """Release any write still waiting and stop holding new ones."""
        self.enabled = False
        self._go.release()


async def settle() -> None:
    """Let every ready task run until it blocks (counts loop iterations, no clock)."""
    for _ in range(50):
        await asyncio.sleep(0)


def _ids(rng: random.Random, n: int) -> list[uuid.UUID]:
    return [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(n)]


async def run_workload(
    fs: SimFS,
    *,
    seed: int = 0,
    appends: int = 24,
    durability: es.Durability = "fsync",
    segment_bytes: int = 4096,
    after: Callable[[es.EventStore, Run], Awaitable[None]] | None = None,
    compression: es.Compression = "none",
) -> Run:
    """Open a store on ``fs``, run six concurrent producers, call ``after`` (if given) with
    the still open store, and close. Never raises, but for what ``after`` raises.

    Producers 0-3 each own a stream and append 1-3 events at a time with exact expected
    versions (``NO_STREAM`` first, then the int version); producer 4 appends 1-4 events at a
    time to a shared stream with ``ANY``; producer 5 mixes ``STREAM_EXISTS`` (right), wrong int
    versions and ``STREAM_EXISTS`` on streams that do not exist; producer 6 saves the
    checkpoint of a named consumer ``"proj"`` (checkpoint frames) after each of its appends.
    A producer stops at its first error that is not a version conflict (the power was cut or
    the store failed). ``compression`` is the store's option (see ``test_compression.py``).
    """
    rng = random.Random(seed)
    run = Run()
    loop = asyncio.get_running_loop()
    lockstep = Lockstep(fs, loop)
    store = es.EventStore(
        STORE,
        _fs=fs,
        durability=durability,
        segment_bytes=segment_bytes,
        compression=compression,
    )
    try:
        await store.open()
    except OSError as exc:
        run.error = exc
        fs.before_op = None
        return run
    run.opened = True

    async def attempt(
        stream: str, texts: list[str], expected: es.ExpectedVersion
    ) -> es.AppendResult | None:
        a = Attempt(stream, _ids(rng, len(texts)), texts, expected)
        run.attempts.append(a)
        events = [es.NewEvent(Note(text=t + PAD), id=i) for t, i in zip(texts, a.ids, strict=True)]
        try:
            a.outcome = await store.append(stream, events, expected_version=expected)
        except es.WrongExpectedVersion as exc:
            a.outcome = exc
            return None
        except (es.EventStoreError, OSError) as exc:
            a.outcome = exc
            raise
        return a.outcome

    async def owner(p: int) -> None:
        version: es.ExpectedVersion = es.NO_STREAM
        for i in range(appends):
            n = 1 + (i + p) % 3
            r = await attempt(f"acct-{p}", [f"{p}/{i}/{k}" for k in range(n)], version)
            assert r is not None, "an exact expected version of its own stream cannot conflict"
            version = r.version

    async def shared() -> None:
        for i in range(appends):
            await attempt("shared", [f"s/{i}/{k}" for k in range(1 + i % 4)], es.ANY)

    async def mixed() -> None:
        last = -1
        for i in range(appends):
            texts = [f"m/{i}"]
            if i == 0:
                r = await attempt("mixed", texts, es.NO_STREAM)
            elif i % 3 == 1:
                r = await attempt("mixed", texts, es.STREAM_EXISTS)
            elif i % 3 == 2:
                r = await attempt("mixed", texts, last + 7)  # ahead of the stream: a conflict
            else:
                r = await attempt(f"ghost-{i}", texts, es.STREAM_EXISTS)
            if r is not None:
                last = r.version

    async def projector() -> None:
        for i in range(appends):
            r = await attempt("proj-out", [f"p/{i}"], es.ANY)
            assert r is not None
            run.checkpoints.append((r.position, False))
            await store.save_checkpoint("proj", r.position)
            run.checkpoints[-1] = (r.position, True)

    async def guarded(coro: Coroutine[Any, Any, None]) -> None:
        with contextlib.suppress(es.EventStoreError, OSError):
            await coro

    lockstep.enabled = True
    work = asyncio.ensure_future(
        asyncio.gather(
            *(guarded(owner(p)) for p in range(4)),
            guarded(shared()),
            guarded(mixed()),
            guarded(projector()),
        )
    )
    try:
        try:
            async with asyncio.timeout(HANG_SECONDS):
                await lockstep.drive(work)
                await work
        except TimeoutError:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            raise AssertionError(f"an append never returned (after {HANG_SECONDS} s)") from None
        lockstep.stop()
        fs.before_op = None
        if after is not None:
            await after(store, run)
    finally:
        lockstep.stop()
        fs.before_op = None
        try:
            await store.close()
        except es.StoreFailed as exc:  # the power was cut during close's final sync
            assert isinstance(exc.__cause__, OSError)
            run.error = exc.__cause__
    return run


def check_recovered(
    records: list[es.RecordedEvent], attempts: list[Attempt], *, exact: bool
) -> list[Attempt]:
    """Assert what a recovered store must hold; returns the unacknowledged appends it kept.

    * positions are 0..n-1 and each stream's versions are 0..m-1;
    * every event belongs to an append that was made, with its stream and data;
    * every acknowledged append is there whole, at the position and versions it was given;
    * a rejected append left nothing; any other append is all there, contiguous, or absent;
    * with ``exact``, nothing unacknowledged survived.
    """
    assert [r.position for r in records] == list(range(len(records)))
    versions: dict[str, list[int]] = defaultdict(list)
    for r in records:
        versions[r.stream].append(r.version)
    for stream, vs in versions.items():
        assert vs == list(range(len(vs))), f"versions of {stream} are not dense: {vs}"
    owner: dict[uuid.UUID, tuple[Attempt, int]] = {}
    for a in attempts:
        for k, i in enumerate(a.ids):
            owner[i] = (a, k)
    found: dict[int, list[es.RecordedEvent]] = defaultdict(list)
    for r in records:
        assert r.id in owner, f"event {r.id} at position {r.position} was never appended"
        a, k = owner[r.id]
        assert r.stream == a.stream
        assert isinstance(r.data, Note) and r.data.text == a.texts[k] + PAD
        found[id(a)].append(r)
    kept: list[Attempt] = []
    for a in attempts:
        recs = found.get(id(a), [])
        if isinstance(a.outcome, es.AppendResult):
            res = a.outcome
            n = len(a.ids)
            assert [r.id for r in recs] == a.ids, f"acknowledged append lost: {a}"
            assert [r.position for r in recs] == list(range(res.position - n + 1, res.position + 1))
            assert [r.version for r in recs] == list(range(res.version - n + 1, res.version + 1))
        elif a.rejected:
            assert not recs, f"rejected append is visible: {a}"
        elif recs:
            assert not exact, f"unacknowledged append survived a loss of unsynced data: {a}"
            assert [r.id for r in recs] == a.ids, f"append partly visible: {a}"
            p0, v0 = recs[0].position, recs[0].version
            assert [r.position for r in recs] == list(range(p0, p0 + len(recs)))
            assert [r.version for r in recs] == list(range(v0, v0 + len(recs)))
            kept.append(a)
    return kept


def check_checkpoint(saved: int | None, run: Run, *, exact: bool) -> None:
    """The recovered checkpoint is at least the last acknowledged one and was attempted; with
    ``exact`` it is exactly the last acknowledged one."""
    acked = [pos for pos, ok in run.checkpoints if ok]
    tried = [pos for pos, _ in run.checkpoints]
    if exact or not tried:
        assert saved == (acked[-1] if acked else None), (saved, run.checkpoints)
    else:
        assert saved in tried or (saved is None and not acked), (saved, run.checkpoints)
        assert saved is None or not acked or saved >= acked[-1], (saved, run.checkpoints)


def verify_image(fs: SimFS) -> VerifyReport | None:
    """``verify_store`` on the surviving image (None when the store directory did not
    survive); a power cut must never look like corruption."""
    try:
        report = verify_store(STORE, fs)
    except FileNotFoundError:
        return None
    assert not report.corrupt, f"a power cut left corruption: {report.first_problem}"
    return report


async def reopen_and_check(fs: SimFS, run: Run, *, exact: bool) -> es.EventStore:
    """Verify and open the surviving image, check it with :func:`check_recovered`, and append
    once more (the store must accept new appends right after the recovered head). Recovery must
    cut exactly the torn tail that ``verify_store`` reported. Returns the closed store (for its
    ``recovery`` report)."""
    report = verify_image(fs)
    store = es.EventStore(STORE, _fs=fs, segment_bytes=4096)
    async with store:
        rec = store.recovery
        assert rec is not None
        first = report.first_problem if report is not None else None
        if first is not None and first[1].offset >= SEGMENT_HEADER_SIZE:
            assert (rec.cut_path, rec.cut_offset) == (first[0].path, first[1].offset)
            assert rec.cut_bytes == first[0].bytes - first[1].offset
        else:  # whole, or a new segment without a header (removed, not cut)
            assert rec.cut_path is None
        records = [r async for r in store.read_all()]
        check_recovered(records, run.attempts, exact=exact)
        assert store.head == len(records) - 1
        check_checkpoint(store.checkpoint("proj"), run, exact=exact)
        r = await store.append("after-recovery", Note(text="new"))
        assert r.position == len(records)
        assert [x.position async for x in store.read_all(from_position=r.position)] == [r.position]
    return store
