"""The in-memory index: stream → version → position, and position → frame on disk.

Compact by construction: six parallel ``array`` columns with one row per frame (one frame per
append call) and one ``bytearray`` per stream holding its id and then its positions, native
8-byte ints, so an event costs 8 bytes in its stream's buffer plus its share of its frame's
32-byte row; no Python object per event.

Invisible to the cyclic garbage collector, whatever the number of streams. A full collection
walks every tracked object, and every reference a tracked container holds: with a million
streams held as ``array`` objects in a list (and their names in another list) that was about
100 ms per full collection, over a tenth of the writer's CPU under load. So nothing per stream
is tracked: its buffer is a ``bytearray`` (never tracked), found by name in a dict whose keys
and values are never tracked (so neither is the dict: one lookup gives an append the stream's
id and its positions); the names, by id, are one UTF-8 blob cut by an ``array`` of ends; and
the buffers by id (for the sidecar export) sit in tuples of 1,024, which the collector
untracks once it has seen them, as they hold only untracked objects. (CPython 3.14 tracks
every dict: a full collection then visits the dict's values too, one pass over its table.)

Positions are read one 8-byte ``struct`` unpack at a time (``_at``, ``_bisect``), or copied in
one call (``array("q", buf)``): no view of a buffer outlives a C call, which is what lets the
sidecar export read streams on the I/O thread while the commit loop grows them (a
``bytearray`` cannot be resized while a ``memoryview`` of it exists: ``BufferError``).

Gaps (retention and scavenging, see ``_scavenge.py``): once frames are removed from the log,
positions are no longer dense and a stream's oldest versions may be gone. So each row stores
its event count (``_frame_cnt``: a row's end is no longer the next row's first position), and
a stream whose oldest versions were removed has a *base*, the version of the first entry of
its positions (``_base``, by stream name; absent means 0). Removal is always a prefix of
each stream (scavenging keeps a stream's frames from its first kept one on; retention drops
the oldest segments), so a stream's versions stay dense from its base to its last version.
Rows are removed or moved only by ``replace_segment_rows`` and ``drop_oldest``, on the loop
thread, for sealed segments (never the tail one the commit loop appends to), and never while
a sidecar export reads rows on another thread (the store waits for those first).

Each segment's rows can be saved to a sidecar file (``_indexfile.py``) so that opening a large
store loads them instead of rescanning the log.

Ownership: only the commit loop's thread mutates or reads the index. Rows are added when a batch
is *planned* (so version checks see the batch in flight), and ``head`` advances only when the
batch is durable; readers clamp everything to ``head``, so they never see an uncommitted event.
"""

from __future__ import annotations

import itertools
import struct
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Generator
from itertools import accumulate, compress, repeat
from operator import ne, sub
from typing import Final, Literal, NamedTuple, cast

_SHIFT: Final = 10
_BLOCK: Final = 1 << _SHIFT  # streams per tuple in Index._blocks
_POSITION: Final = struct.Struct("=q")  # native, as array("q") and the sidecars store them
_pack = _POSITION.pack
_unpack_from = _POSITION.unpack_from
_new_tuple = tuple.__new__  # a FrameRef without NamedTuple's Python-level __new__
_RUN: Final = 4096  # at most this many frames of a stream looked up in one go (stream_frames)
_FIRST_RUN: Final = 16  # after a block that stopped short (see there)
_TAIL: Final = 64  # positions a sidecar export first copies from the end of a stream's buffer


def _count(buf: bytearray) -> int:
    """How many positions a stream's buffer holds (its first slot is the stream's id)."""
    return (len(buf) >> 3) - 1


def _sid(buf: bytearray) -> int:
    """The stream id in a stream's buffer."""
    return int(_unpack_from(buf)[0])


def _at(buf: bytearray, i: int) -> int:
    """The ``i``-th position in a stream's buffer."""
    return int(_unpack_from(buf, (i + 1) << 3)[0])


def _run(buf: bytearray, lo: int, hi: int) -> tuple[int, array[int]]:
    """How many positions in ``buf`` are below ``lo``, and those in ``[lo, hi)``.

    For a sidecar export, where the run is near the end of the buffer: copies a tail of it
    (in one C call, so safe on any thread while the loop thread appends), eight times longer
    each time until it starts below ``lo``, and bisects the copy in C.
    """
    n = len(buf) >> 3  # slots: the stream id, then its positions
    s = max(1, n - _TAIL)
    while True:
        tail = array("q", buf[s << 3 :])
        if s == 1 or tail[0] < lo:
            break
        s = max(1, n - ((n - s) << 3))
    k = bisect_left(tail, lo)
    return s - 1 + k, tail[k : bisect_left(tail, hi, k)]


def _bisect(buf: bytearray, x: int, right: bool = False) -> int:
    """How many positions in ``buf`` are below ``x`` (or at most ``x`` with ``right``).

    Safe on any thread while the loop thread appends to ``buf``: each probe is one C call
    (no view of the buffer survives it) and positions are only ever appended meanwhile.
    """
    lo, hi = 0, _count(buf)
    if not hi or _at(buf, 0) > x or (not right and _at(buf, 0) == x):
        return 0
    last = _at(buf, hi - 1)
    if last <= x:  # positions are strictly increasing
        return hi if right or last < x else hi - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        v = _at(buf, mid)
        if v < x or (right and v == x):
            lo = mid + 1
        else:
            hi = mid
    return lo


class FrameRef(NamedTuple):
    """Where one frame lives on disk and which positions it holds."""

    ordinal: int  # segment index in the log
    offset: int
    length: int
    first_position: int
    event_count: int


class Span(NamedTuple):
    """Contiguous whole frames in one segment: bytes ``[start, end)`` holding positions
    ``[first_position, end_position)`` (checkpoint frames in between hold none)."""

    ordinal: int
    start: int
    end: int
    first_position: int
    end_position: int


class StreamFrames(NamedTuple):
    """A stream read's frames (``Index.stream_frames``), in position order, as columns of one
    entry per frame: its segment ordinal, offset and length, its first position, its number
    of events, and the stream version of its first event. Columns rather than a ``FrameRef``
    per frame: a stream of single-event frames has a frame per event, and building, then
    taking apart, a tuple for each was a good part of such a read's time."""

    ordinals: list[int]
    offsets: list[int]
    lengths: list[int]
    firsts: list[int]
    counts: list[int]
    versions: list[int]

    def refs(self) -> list[FrameRef]:
        """One ``FrameRef`` per frame (for the paths that take frames one at a time)."""
        cols = zip(self.ordinals, self.offsets, self.lengths, self.firsts, self.counts, strict=True)
        return list(map(_new_tuple, repeat(FrameRef), cols))


StreamIds = Literal["now", "on export", "never"]
"""What ``Index.load_rows`` does with a sidecar's stream ids (see there)."""


class SegmentRows(NamedTuple):
    """One segment's index rows, as a sidecar file stores them: frame columns, each frame's
    stream as a local id, and every stream's positions in this segment, grouped."""

    pos: array[int]
    off: array[int]
    length: array[int]
    sids: array[int]  # local stream id of each row: an index into names
    names: list[str]
    counts: array[int]  # events of names[i] in this segment
    positions: array[int]  # those events' positions, stream after stream
    cnt: array[int]  # events of each row (rows need not abut once frames were removed)
    firsts: array[int]  # version of names[i]'s first event in this segment


def _block(
    fpos: array[int],
    fseg: array[int],
    foff: array[int],
    flen: array[int],
    fcnt: array[int],
    packed: bytes | bytearray,
    row: int,
) -> tuple[list[int], list[int], list[int], list[int], list[int]] | None:
    """For ``Index.stream_frames``: the frames of a stream's next positions ``packed`` (a
    slice of its buffer; the first is the first position of ``row``), as long as the rows of
    the frame table at those positions less ``fpos[row] - row`` start at them (the rows'
    first positions less their row numbers never decrease, so this holds while every frame
    between holds one event). None when that is fewer than two frames; else ``(first
    positions, ordinals, offsets, lengths, counts)``: each frame but the last holds one event
    of the stream. All in C: where the positions are consecutive (nothing else was appended
    between them) the rows are too, and the columns are sliced; otherwise each frame is looked
    up by its row, stopping at the first that does not match (work in proportion to what is
    found, whatever ``packed`` holds)."""
    ps = array("q", packed)
    k = len(ps)
    if k < 2:
        return None
    shift = ps[0] - row
    if ps[-1] - ps[0] == k - 1:  # consecutive positions: rows row .. row + k - 1, if any
        end = row + k
        if end <= len(fpos) and fpos[row:end] == ps:
            return (
                ps.tolist(),
                fseg[row:end].tolist(),
                foff[row:end].tolist(),
                flen[row:end].tolist(),
                fcnt[row:end].tolist(),
            )
    k = bisect_right(ps, len(fpos) - 1 + shift, 0, k)  # no row past the table's end
    looked_up = map(fpos.__getitem__, map(sub, ps, repeat(shift, k)))
    k = next(compress(itertools.count(), map(ne, looked_up, ps)), k)  # (stops at a miss)
    if k < 2:
        return None
    first_positions = ps[:k].tolist()
    got = list(map(sub, first_positions, repeat(shift, k)))
    return (
        first_positions,
        list(map(fseg.__getitem__, got)),
        list(map(foff.__getitem__, got)),
        list(map(flen.__getitem__, got)),
        [*repeat(1, k - 1), fcnt[got[-1]]],  # (each but the last holds one event: see above)
    )


class Index:
    """Frames and streams of the log. See the module docstring for ownership."""

    def __init__(self) -> None:
        self._frame_pos = array("q")
        self._frame_seg = array("I")
        self._frame_off = array("q")
        self._frame_len = array("I")
        # Stream ids: a frame row records its stream as a small int, so that a sealed segment's
        # rows can be grouped by stream for its sidecar file without touching every stream.
        self._frame_sid = array("I")
        self._frame_cnt = array("I")  # events in the frame (see "Gaps" above)
        self._sidless: dict[int, tuple[int, array[int] | None]] = {}
        """Segment ordinal → (how many of its first rows hold their sidecar's own stream ids,
        the index's stream id for each of those, or None when no export is expected): rows
        loaded at open without translating their ids (``load_rows``), translated when an
        export reads them."""
        # Nothing below holds a GC-tracked object per stream (see the module docstring).
        self._streams: dict[str, bytearray] = {}
        """Stream → its buffer of native 8-byte ints: its stream id, then its positions in
        version order (one lookup gives an append both)."""
        self._name_blob = bytearray()  # every stream's name in UTF-8, by stream id
        self._name_end = array("q")  # by stream id: where its name ends in _name_blob
        # By stream id, for the sidecar export: the buffers of streams 1,024 * i on, in
        # tuples (the collector untracks a tuple of untracked objects once it has seen it),
        # and those past the last full tuple.
        self._blocks: list[tuple[bytearray, ...]] = []
        self._block: list[bytearray] = []
        self._base: dict[str, int] = {}  # stream → version of its first position, when not 0
        self.marks: dict[int, dict[str, int]] = {}
        """Segment ordinal → named consumer → highest checkpoint planned in that segment."""
        self.metas: dict[int, dict[str, tuple[int, bytes]]] = {}
        """Segment ordinal → stream → (highest metadata revision planned in that segment, its
        packed metadata): for sidecars, so that opening finds metadata without a scan."""
        self.head = -1
        """Position of the last durable event, or -1 for an empty store."""
        self.next_position = 0
        """Position the next planned event gets (past the batch in flight)."""
        self._staged: list[int] = []  # rows of the batch being planned (see stage_next)
        # (rows, events): the events of the first ``rows`` rows, as event_count last summed
        # them; rows are only appended between removals, which reset it
        self._counted = (0, 0)

    def add_frame(
        self,
        ordinal: int,
        offset: int,
        length: int,
        stream: str,
        first_position: int,
        first_version: int,
        count: int,
    ) -> None:
        """Record a frame; its events get positions ``first_position`` on, in stream order.

        Positions may skip forwards (recovery of a log with removed frames: the log checks
        that such gaps are allowed); a stream seen for the first time may start at a version
        above 0 (its older versions were removed). After that, its versions are dense.
        """
        assert first_position >= self.next_position, "frames are added in position order"
        if stream not in self._streams:
            self._new_stream(stream, first_version)
        version = self.add_next(ordinal, offset, length, stream, first_position, count)
        assert version == first_version, "dense"

    def add_next(
        self, ordinal: int, offset: int, length: int, stream: str, first_position: int, count: int
    ) -> int:
        """Record a frame holding ``stream``'s next ``count`` versions; returns the first.

        No checks: :meth:`add_frame` checks what recovery hands it, then calls this. (The
        commit loop's appends go through :meth:`stage_next` instead.)
        """
        positions = self._streams.get(stream)
        if positions is None:
            positions = self._new_stream(stream, 0)
        base = self._base
        version = (base.get(stream, 0) if base else 0) + (len(positions) >> 3) - 1
        self._frame_pos.append(first_position)
        self._frame_seg.append(ordinal)
        self._frame_off.append(offset)
        self._frame_len.append(length)
        self._frame_sid.append(_unpack_from(positions)[0])
        self._frame_cnt.append(count)
        if count == 1:
            positions += _pack(first_position)
        else:
            positions += array("q", range(first_position, first_position + count))
        self.next_position = first_position + count
        return version

    def stage_next(
        self, offset: int, length: int, stream: str, first_position: int, count: int
    ) -> int:
        """:meth:`add_next` for the commit loop's plan, with the frame's row staged: the
        stream's versions are taken at once (the next append to it in the same batch sees
        them), and the row reaches the frame table at :meth:`flush_staged`, in one step for
        the whole batch (a sixth of the calls per append). The plan flushes before it returns,
        without yielding in between, and reads stop at ``head``, behind the batch: nothing
        looks at the table while rows are staged."""
        positions = self._streams.get(stream)
        if positions is None:
            positions = self._new_stream(stream, 0)
        self._staged += (first_position, offset, length, _unpack_from(positions)[0], count)
        if count == 1:
            positions += _pack(first_position)
        else:
            positions += array("q", range(first_position, first_position + count))
        base = self._base
        return (base.get(stream, 0) if base else 0) + (len(positions) >> 3) - 1 - count

    def flush_staged(self, ordinal: int) -> None:
        """Add the rows :meth:`stage_next` staged, as frames of segment ``ordinal``."""
        staged = self._staged
        if staged:
            self._frame_pos.fromlist(staged[0::5])
            self._frame_seg.fromlist([ordinal] * (len(staged) // 5))
            self._frame_off.fromlist(staged[1::5])
            self._frame_len.fromlist(staged[2::5])
            self._frame_sid.fromlist(staged[3::5])
            self._frame_cnt.fromlist(staged[4::5])
            self.next_position = staged[-5] + staged[-1]
            staged.clear()

    def _new_stream(self, stream: str, first_version: int) -> bytearray:
        positions = self._streams[stream] = bytearray(_pack(len(self._name_end)))
        self._name_blob += stream.encode("utf-8", "surrogatepass")
        self._name_end.append(len(self._name_blob))
        self._block.append(positions)
        if len(self._block) == _BLOCK:
            self._blocks.append(tuple(self._block))
            self._block = []  # (after the append: see _buffers)
        if first_version:
            self._base[stream] = first_version
        return positions

    def _new_streams(self, names: list[str], firsts: list[int]) -> list[bytearray]:
        """``_new_stream`` for many streams at once (loading a sidecar): the per-stream work
        in C."""
        sid = len(self._name_end)
        encoded = [name.encode("utf-8", "surrogatepass") for name in names]
        start = len(self._name_blob)
        self._name_blob += b"".join(encoded)
        self._name_end.extend(map(start.__add__, itertools.accumulate(map(len, encoded))))
        made = list(map(bytearray, map(_pack, range(sid, sid + len(names)))))
        self._streams.update(zip(names, made, strict=True))
        at = 0
        while at < len(made):
            room = _BLOCK - len(self._block)
            self._block += made[at : at + room]
            at += room
            if len(self._block) == _BLOCK:
                self._blocks.append(tuple(self._block))
                self._block = []
        self._base.update((n, f) for n, f in zip(names, firsts, strict=True) if f)
        return made

    def _buffers(self, sids: list[int]) -> list[bytearray]:
        """The buffers of streams ``sids`` (any thread: what it reads only grows, and a full
        block is in ``_blocks`` before it leaves ``_block``)."""
        block = self._block
        blocks = self._blocks
        n = len(blocks)
        mask = _BLOCK - 1
        return [blocks[g >> _SHIFT][g & mask] if g >> _SHIFT < n else block[g & mask] for g in sids]

    def add_mark(self, ordinal: int, name: str, position: int) -> None:
        """Note a named consumer's checkpoint frame in segment ``ordinal``."""
        marks = self.marks.setdefault(ordinal, {})
        if position > marks.get(name, -1):
            marks[name] = position

    def relocate_last(self, locations: list[tuple[int, int]]) -> None:
        """Set ``(offset, length)`` of the last ``len(locations)`` frames, in order: where a
        batch's frames ended up once the I/O thread compressed them (several frames then share
        one container's location). Only for rows not yet committed (past ``head``)."""
        n = len(self._frame_off)
        assert len(locations) <= n
        for row, (offset, length) in enumerate(locations, n - len(locations)):
            assert self._frame_pos[row] > self.head, "committed rows never move"
            self._frame_off[row] = offset
            self._frame_len[row] = length

    def add_meta(self, ordinal: int, stream: str, revision: int, packed: bytes) -> None:
        """Note a stream's metadata frame in segment ``ordinal``."""
        metas = self.metas.setdefault(ordinal, {})
        old = metas.get(stream)
        if old is None or revision >= old[0]:
            metas[stream] = (revision, packed)

    def last_version(self, stream: str) -> int:
        """Version of the stream's last planned event, or -1 when it has none."""
        positions = self._streams.get(stream)
        if positions is None:
            return -1
        return self._base.get(stream, 0) + (len(positions) >> 3) - 2  # - 1 for the stream id

    def holds_events(self, stream: str) -> bool:
        """Whether any event of ``stream`` is in the index (planned or durable)."""
        positions = self._streams.get(stream)
        return positions is not None and _count(positions) > 0

    def committed_last_version(self, stream: str) -> int:
        """Version of the stream's last durable event, or -1."""
        positions = self._streams.get(stream)
        if positions is None:
            return -1
        return self._base.get(stream, 0) + _bisect(positions, self.head, True) - 1

    def first_version(self, stream: str) -> int:
        """The oldest version of ``stream`` still in the log (0 unless frames were removed)."""
        return self._base.get(stream, 0)

    def committed_version_after(self, stream: str, position: int) -> int:
        """The first version of ``stream`` whose position is past ``position``."""
        positions = self._streams.get(stream)
        if positions is None:
            return 0
        return self._base.get(stream, 0) + _bisect(positions, position, True)

    def position_of(self, stream: str, version: int) -> int:
        """Position of a (planned) stream version; the caller checks the range (it must be at
        least ``first_version(stream)``)."""
        base = self._base.get(stream, 0)
        assert version >= base, "the version was removed from the log"
        return _at(self._streams[stream], version - base)

    def stream_run(self, stream: str, version: int, most: int) -> tuple[int, bool]:
        """How many of the committed versions of ``stream`` from ``version`` on (at most
        ``most``) hold consecutive positions, from the first on, when that is two or more:
        nothing else was appended between them, so they lie in the log as a span of whole
        frames (:meth:`span_from`) that a stream read can decode as ``read_all`` does; and
        whether that is all of the versions asked for. ``(0, False)`` when there are not two
        such versions (the usual for a stream appended to among others: one probe says so;
        or ``version`` out of range). The caller checks ``version >= first_version(stream)``.
        """
        positions = self._streams.get(stream)
        if positions is None or most < 2:
            return 0, False
        i = version - self._base.get(stream, 0)
        count = (len(positions) >> 3) - 1  # planned versions (the first slot is the id)
        if not 0 <= i < count - 1:
            return 0, False
        unpack = _unpack_from
        first = unpack(positions, (i + 1) << 3)[0]
        if unpack(positions, (i + 2) << 3)[0] != first + 1:
            return 0, False
        last = count - 1  # the last committed version's slot: the last one, unless in flight
        if unpack(positions, count << 3)[0] > self.head:
            last = _bisect(positions, self.head, True) - 1
        k = min(most, last - i + 1)
        if k < 2:
            return 0, False
        if unpack(positions, (i + k) << 3)[0] == first + k - 1:
            return k, True
        # Positions increase, so "the j-th is first + j" holds for a prefix: find its end.
        lo, hi = 1, k - 1  # it holds at lo, not at hi
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if unpack(positions, (i + mid + 1) << 3)[0] == first + mid:
                lo = mid
            else:
                hi = mid
        return lo + 1, False

    def last_segment(self, stream: str) -> int | None:
        """Ordinal of the segment holding the stream's last indexed event, or None."""
        positions = self._streams.get(stream)
        if positions is None or not _count(positions):
            return None
        row = bisect_right(self._frame_pos, _at(positions, _count(positions) - 1)) - 1
        return self._frame_seg[row]

    def forget_segment(self, ordinal: int, end: int) -> None:
        """A read-only store: forget segment ``ordinal``, whose file the writer removed (by
        retention, or a scavenge that dropped every frame in it), ``end`` being the position
        its successor starts at. Its rows go, and so does every stream's prefix up to its
        last event in it: removal is a prefix of each stream, so those events are gone from
        the log too (the rows of older segments this reader still reads through handles it
        holds stay). One pass over the streams, as :meth:`drop_oldest`."""
        lo, hi = self.segment_rows(ordinal)
        self._counted = (0, 0)
        if hi > lo:
            first = self._frame_pos[lo]
            cols = (self._frame_pos, self._frame_seg, self._frame_off, self._frame_len)
            for col in (*cols, self._frame_sid, self._frame_cnt):
                del col[lo:hi]
            for stream, positions in self._streams.items():
                k = _bisect(positions, end)
                if k and _at(positions, k - 1) >= first:
                    del positions[8 : (k + 1) << 3]
                    self._base[stream] = self._base.get(stream, 0) + k
        self.forget_segment_entries(ordinal)

    def restart_stream(self, stream: str, version: int) -> None:
        """Make ``stream`` continue at ``version``, forgetting the versions before it: a
        read-only store found its next frame past its next version, after positions it never
        saw (the writer removed them; removal is a prefix of each stream, so every version
        before that frame is gone from the log; the caller checked that the segment of its
        last indexed event was removed or rewritten). The rows of frames already indexed
        stay, for the whole-log reads of the files this reader still has open (a reader
        exports no sidecar, which would find rows and streams disagree)."""
        assert version > self.last_version(stream)
        positions = self._streams.get(stream)
        if positions is None:
            self._new_stream(stream, version)
            return
        del positions[8:]
        self._base[stream] = version

    def set_stream_floor(self, stream: str, last_version: int) -> None:
        """Make ``stream`` continue after ``last_version`` although none of its events are in
        the log any more (recovery of a deleted or truncated stream whose frames were all
        removed: its metadata's ``truncate_before`` says where it ended)."""
        assert self.last_version(stream) < last_version
        positions = self._streams.get(stream)
        if positions is None:
            positions = self._new_stream(stream, 0)
        assert not _count(positions), "only for a stream with no event in the log"
        self._base[stream] = last_version + 1

    # --- removal: scavenging and retention (loop thread; see "Gaps" above) ------------------
    def replace_segment_rows(
        self,
        ordinal: int,
        moved: dict[int, int],
        removed: list[tuple[str, int, int]],
        forgotten: bool = False,
    ) -> None:
        """Apply a rewrite (or the removal) of sealed segment ``ordinal``.

        ``moved`` maps the old offset of every events frame that was kept to its new offset
        (lengths are unchanged); every other row of the segment is dropped. ``removed`` lists
        the dropped frames' events as (stream, first version, event count), in position
        order (a stream's frames may be listed one by one or as one run): they leave their
        streams' position arrays, each one a prefix of its stream, cut once per stream.
        ``forgotten``: a read-only store's index may have forgotten a prefix of a stream
        already (:meth:`restart_stream`), so a removed frame's versions may be below the
        stream's base (check with :meth:`fits_rewrite` first).
        """
        lo, hi = self.segment_rows(ordinal)
        self._counted = (0, 0)
        foff, fcnt = self._frame_off, self._frame_cnt
        keep = [r for r in range(lo, hi) if foff[r] in moved]
        assert sum(fcnt[lo:hi]) - sum(map(fcnt.__getitem__, keep)) == sum(
            c for _, _, c in removed
        ), "the rewrite and the index disagree"
        cols = (self._frame_pos, self._frame_seg, self._frame_len, self._frame_sid)
        for col in (*cols, fcnt):
            col[lo:hi] = array(col.typecode, [col[r] for r in keep])
        foff[lo:hi] = array("q", [moved[foff[r]] for r in keep])
        own = self._sidless.get(ordinal)
        if own is not None:  # the kept rows that hold their sidecar's ids: still the first
            self._sidless[ordinal] = (bisect_left(keep, lo + own[0]), own[1])
        ends: dict[str, int] = {}  # stream → the version after its removed prefix
        for stream, first_version, count in removed:
            base = ends.get(stream, self._base.get(stream, 0))
            assert first_version == base or (forgotten and first_version < base), (
                f"removal of {stream!r} is not a prefix"
            )
            ends[stream] = max(base, first_version + count)
        for stream, end in ends.items():  # (one cut per stream: a cut moves its buffer)
            base = self._base.get(stream, 0)
            if end > base:
                del self._streams[stream][8 : (end - base + 1) << 3]
                self._base[stream] = end

    def forget_segment_entries(self, ordinal: int) -> None:
        """Segment ``ordinal`` was removed whole (retention, or a scavenge that left it no
        frame): drop its checkpoint and metadata entries too (kept per segment for its
        sidecar)."""
        self.marks.pop(ordinal, None)
        self.metas.pop(ordinal, None)
        self._sidless.pop(ordinal, None)

    def fits_rewrite(
        self, ordinal: int, moved: dict[int, int], removed: list[tuple[str, int, int]]
    ) -> bool:
        """Whether :meth:`replace_segment_rows` can apply this rewrite of segment ``ordinal``
        with ``forgotten`` (a read-only store's, found by its follower rather than made by
        this process): every row is kept or removed, and the removed frames are a prefix of
        each stream's versions, some of which this index may have forgotten already."""
        lo, hi = self.segment_rows(ordinal)
        foff, fcnt = self._frame_off, self._frame_cnt
        gone = sum(fcnt[r] for r in range(lo, hi) if foff[r] not in moved)
        if gone != sum(c for _, _, c in removed):
            return False
        bases: dict[str, int] = {}
        for stream, first_version, count in removed:
            positions = self._streams.get(stream)
            base = bases.get(stream, self._base.get(stream, 0))
            if positions is None or first_version > base:
                return False
            bases[stream] = max(base, first_version + count)
            if bases[stream] - self._base.get(stream, 0) > _count(positions):
                return False
        return True

    def set_segment_sids(self, ordinal: int, streams: list[str]) -> None:
        """Set the stream of each row of segment ``ordinal`` (rows loaded from a sidecar may
        have none; a rewritten segment's sidecar needs them)."""
        lo, hi = self.segment_rows(ordinal)
        assert hi - lo == len(streams)
        self._frame_sid[lo:hi] = array("I", [_sid(self._streams[s]) for s in streams])
        self._sidless.pop(ordinal, None)

    def streams_ending_before(self, position: int) -> list[tuple[str, int, int]]:
        """(stream, last version, its position) of every stream with events, all before
        ``position``."""
        out = []
        for stream, positions in self._streams.items():
            n = _count(positions)
            if n and (last := _at(positions, n - 1)) < position:
                out.append((stream, self._base.get(stream, 0) + n - 1, last))
        return out

    def drop_oldest(self, last_ordinal: int, before_position: int) -> None:
        """Forget the rows of segments up to ``last_ordinal`` (the oldest ones, dropped by
        retention) and every stream's events before ``before_position``.

        Retention drops a prefix of the log, hence a prefix of each stream: the streams'
        arrays lose their first entries and their bases grow by as many.
        """
        hi = bisect_right(self._frame_seg, last_ordinal)
        self._counted = (0, 0)
        assert hi == len(self._frame_pos) or self._frame_pos[hi] >= before_position
        cols = (self._frame_pos, self._frame_seg, self._frame_off, self._frame_len)
        for col in (*cols, self._frame_sid, self._frame_cnt):
            del col[:hi]
        for stream, positions in self._streams.items():
            k = _bisect(positions, before_position)
            if k:
                del positions[8 : (k + 1) << 3]
                self._base[stream] = self._base.get(stream, 0) + k
        for ordinal in [o for o in (*self.marks, *self.metas, *self._sidless) if o <= last_ordinal]:
            self.forget_segment_entries(ordinal)

    def frame(self, row: int) -> FrameRef:
        """The frame in row ``row``."""
        return FrameRef(
            self._frame_seg[row],
            self._frame_off[row],
            self._frame_len[row],
            self._frame_pos[row],
            self._frame_cnt[row],
        )

    def span_from(
        self, position: int, max_bytes: int, backwards: bool, max_events: int | None = None
    ) -> Span | None:
        """A byte range of whole committed frames in one segment: from the frame holding
        ``position`` forwards (or back to it), about ``max_bytes`` and ``max_events`` events
        long (always at least that frame). None past the head or before 0.

        Computed with bisections only, no object per frame: replay is bounded by decoding.
        """
        if position < 0 or position > self.head:
            return None
        fpos, fseg, foff, flen = self._frame_pos, self._frame_seg, self._frame_off, self._frame_len
        row = bisect_right(fpos, position) - 1
        # ``position`` may lie in a gap (removed frames) or before the first frame: forwards
        # starts at the next frame, backwards at the one before.
        if backwards:
            if row < 0:
                return None
        elif row < 0 or position >= fpos[row] + self._frame_cnt[row]:
            row += 1
            if row >= len(fpos) or fpos[row] > self.head:
                return None
        seg = fseg[row]
        if backwards:
            first_row = bisect_left(fseg, seg)  # first row of this segment
            lo_off = foff[row] + flen[row] - max_bytes
            r0 = max(first_row, bisect_left(foff, lo_off, first_row, row))
            if max_events is not None:
                target = position - max_events + 1  # the row holding it starts the span
                r0 = max(r0, bisect_right(fpos, target, first_row, row + 1) - 1)
            r0 = min(r0, row)
            return Span(seg, foff[r0], foff[row] + flen[row], fpos[r0], self._row_end(row))
        nrows = bisect_right(fpos, self.head)  # rows holding committed events
        last_row = min(nrows, bisect_right(fseg, seg, row)) - 1  # last committed row here
        r1 = bisect_right(foff, foff[row] + max_bytes, row, last_row + 1) - 1
        if max_events is not None:
            r1 = min(r1, bisect_left(fpos, position + max_events, row, last_row + 1) - 1)
        r1 = max(r1, row)
        return Span(seg, foff[row], foff[r1] + flen[r1], fpos[row], self._row_end(r1))

    def _row_end(self, row: int) -> int:
        """Position after the last event of the frame in ``row``."""
        return self._frame_pos[row] + self._frame_cnt[row]

    def stream_frames(
        self,
        stream: str,
        version: int,
        max_bytes: int,
        backwards: bool,
        max_events: int | None = None,
    ) -> StreamFrames:
        """Committed frames of ``stream`` from the one holding ``version`` on (or back), with
        each frame's first version, in position order; about ``max_bytes`` (at least one).
        Forwards from a version older than the stream's first one still in the log starts at
        that first one; backwards from there finds nothing (no frames)."""
        out = StreamFrames([], [], [], [], [], [])
        positions = self._streams.get(stream)
        if positions is None:
            return out
        base = self._base.get(stream, 0)
        last = base + _bisect(positions, self.head, True) - 1
        if not backwards:
            version = max(version, base)
        if version < base or version > last:
            return out
        ords, offs, lens, firsts, counts, versions = out
        total = 0
        have = 0
        want = (1 << 62) if max_events is None else max_events
        v = version
        # the row's lookup, frame and _at written out: a stream read of single-event frames
        # spread through the log spends a good part of its time here, once per frame
        fpos, fseg, foff, flen, fcnt = (
            self._frame_pos,
            self._frame_seg,
            self._frame_off,
            self._frame_len,
            self._frame_cnt,
        )
        unpack = _unpack_from
        rows = len(fpos)
        # A frame's row is found by a guess, checked, before a bisection of every row: rows'
        # first positions less their row numbers never decrease (each row holds an event at
        # least), so the next frame of the stream is usually at its position less the
        # previous frame's difference (always, where every frame between holds one event).
        # Going back, the difference is a later row's: the guess may then be below row 0.
        shift = -1
        # Frames looked up in one go (see _block): back to a few when a block stops short (a
        # stream whose single events lie between other streams' frames of many: each block
        # is then short, and costs little), doubled again while every one asked for is found.
        span = _RUN
        while base <= v <= last and (not firsts or (total < max_bytes and have < want)):
            pos = unpack(positions, (v - base + 1) << 3)[0]
            row = pos - shift
            if shift < 0 or not 0 <= row < rows or fpos[row] != pos:  # (back: row < 0)
                row = bisect_right(fpos, pos) - 1
                shift = fpos[row] - row
            if (
                not backwards
                and v < last
                and have + 1 < want  # (two versions at least: one is not worth a block)
                and fpos[row] == pos
                and fcnt[row] == 1
            ):
                # The next versions in one go, when each is the first event of the frame its
                # position less ``shift`` names (checked in C: a stream of single events,
                # with none but single events between them): every frame but the last of
                # the block then holds one event of the stream.
                k = min(last - v + 1, want - have, (max_bytes - total) // flen[row] + 2, span)
                at = (v - base + 1) << 3
                block = _block(fpos, fseg, foff, flen, fcnt, positions[at : at + (k << 3)], row)
                span = _FIRST_RUN if block is None or len(block[0]) < k else min(2 * span, _RUN)
                if block is not None:
                    ps, segs, offsets, lengths, cnts = block
                    acc = list(accumulate(lengths, initial=total))
                    n = max(1, bisect_left(acc, max_bytes, 0, len(ps)))
                    if n < len(ps):
                        del ps[n:], segs[n:], offsets[n:], lengths[n:], cnts[n:]
                    ords += segs
                    offs += offsets
                    lens += lengths
                    firsts += ps
                    counts += cnts
                    versions += range(v, v + n)
                    total += sum(lengths)
                    have += n - 1 + cnts[-1]
                    v += n - 1 + cnts[-1]
                    continue
            first = fpos[row]
            count = fcnt[row]
            length = flen[row]
            first_version = v - (pos - first)
            ords.append(fseg[row])
            offs.append(foff[row])
            lens.append(length)
            firsts.append(first)
            counts.append(count)
            versions.append(first_version)
            total += length
            have += (v - first_version + 1) if backwards else (first_version + count - v)
            v = first_version - 1 if backwards else first_version + count
        if backwards:
            for column in out:
                column.reverse()
        return out

    # --- sidecar files (see _indexfile.py) ----------------------------------------------------
    def segment_rows(self, ordinal: int) -> tuple[int, int]:
        """Rows ``[r0, r1)`` of the frames in segment ``ordinal`` (rows are in segment order)."""
        return bisect_left(self._frame_seg, ordinal), bisect_right(self._frame_seg, ordinal)

    def export_rows(self, r0: int, r1: int, end_position: int) -> SegmentRows:
        """The rows ``[r0, r1)`` grouped for a sidecar file; ``end_position`` is the position
        after the last event of row ``r1 - 1``. See ``export_steps``."""
        steps = self.export_steps(r0, r1, end_position, max(1, r1 - r0), max(1, r1 - r0))
        while True:
            try:
                next(steps)
            except StopIteration as done:
                rows: SegmentRows = done.value
                return rows

    def export_steps(
        self, r0: int, r1: int, end_position: int, rows_per_step: int, streams_per_step: int
    ) -> Generator[None, None, SegmentRows]:
        """``export_rows`` a bounded step at a time: yields once it has looked at
        ``rows_per_step`` more rows or ``streams_per_step`` more streams, and returns the rows.

        Safe on a thread other than the commit loop's for committed rows: rows, streams and
        positions are only appended while it runs (the store never removes rows while an
        export is pending), each slice is taken in one step under the GIL, and no view of a
        stream's buffer outlives a C call.

        The work per row is in C, per stream in Python, and never per event: a stream's
        events in the segment are a contiguous run of its positions (from the segment's first
        position to ``end_position``), near the end of its buffer, copied in one slice.
        """
        # rows loaded at open may still hold their sidecar's stream ids: translated as read
        # (an id the sidecar does not list raises IndexError: that export fails, is logged)
        own = self._sidless.get(self._frame_seg[r0]) if r1 > r0 else None
        cut = -1  # the rows before it hold their sidecar's ids
        glob = array("I")
        if own is not None:
            cut = bisect_left(self._frame_seg, self._frame_seg[r0]) + own[0]
            if own[1] is None:
                if own[0]:  # would file the rows under whatever streams the ids name here
                    raise AssertionError(f"rows of segment {self._frame_seg[r0]} have no ids")
            else:
                glob = own[1]
        start = self._frame_pos[r0] if r1 > r0 else end_position
        local: dict[int, int] = {}
        lsids = array("I")
        names: list[str] = []
        firsts = array("q")
        counts = array("q")
        flat = array("q")
        base, blob, ends = self._base, self._name_blob, self._name_end
        for a in range(r0, r1, rows_per_step):
            if a > r0:
                yield
            sids = self._frame_sid[a : min(a + rows_per_step, r1)]
            if a < cut:
                k = min(len(sids), cut - a)
                sids = array("I", map(glob.__getitem__, sids[:k])) + sids[k:]
            new = [g for g in dict.fromkeys(sids) if g not in local]  # by first row
            local.update(zip(new, range(len(local), len(local) + len(new)), strict=True))
            lsids += array("I", map(local.__getitem__, sids))
            for i in range(0, len(new), streams_per_step):
                if i:
                    yield
                group = new[i : i + streams_per_step]
                for g, buf in zip(group, self._buffers(group), strict=True):
                    name = blob[ends[g - 1] if g else 0 : ends[g]].decode("utf-8", "surrogatepass")
                    names.append(name)
                    k, run = _run(buf, start, end_position)
                    firsts.append(base.get(name, 0) + k)
                    counts.append(len(run))
                    flat += run
        pos = self._frame_pos[r0:r1]
        cnt = self._frame_cnt[r0:r1]
        if len(flat) != sum(cnt):  # rows and streams disagree: never write such a sidecar
            raise ValueError(
                f"the index's streams hold {len(flat)} events in rows {r0}..{r1 - 1}, "
                f"its rows {sum(cnt)}"
            )
        assert not cnt or pos[-1] + cnt[-1] == end_position
        return SegmentRows(
            pos,
            self._frame_off[r0:r1],
            self._frame_len[r0:r1],
            lsids,
            names,
            counts,
            flat,
            cnt,
            firsts,
        )

    def load_rows(self, ordinal: int, rows: SegmentRows, end_position: int, ids: StreamIds) -> None:
        """Append a sidecar file's rows for segment ``ordinal`` (open only, in segment order).

        ``ids`` says what becomes of the rows' stream ids, which only an export of the
        segment's sidecar needs (a per-row translation at open is a third of the open time
        of a 10-million-event store): ``"now"`` translates them to the index's ids;
        ``"on export"`` keeps the sidecar's own and remembers the index's id for each
        (``_sidless``), and an export translates them as it reads them (a segment that may
        need its sidecar written again); ``"never"`` keeps the sidecar's own only, and an
        export of them raises AssertionError (a segment no export can reach). A scavenge
        that rewrites the segment sets them anew (``set_segment_sids``). The caller checked
        the rows with ``rows_problem``.
        """
        n = len(rows.pos)
        assert n and rows.pos[0] >= self.next_position, "segments are loaded in order"
        self._frame_pos += rows.pos
        self._frame_off += rows.off
        self._frame_len += rows.length
        self._frame_cnt += rows.cnt
        self._frame_seg += array("I", [ordinal]) * n
        found = list(map(self._streams.get, rows.names))
        new = [i for i, buf in enumerate(found) if buf is None]
        if new:
            made = self._new_streams([rows.names[i] for i in new], [rows.firsts[i] for i in new])
            for i, buf in zip(new, made, strict=True):
                found[i] = buf
        bufs = cast("list[bytearray]", found)  # none is None now
        raw = memoryview(rows.positions).cast("B")  # one copy per stream, not two
        size = rows.positions.itemsize
        ends = itertools.accumulate(map(size.__mul__, rows.counts))
        at = 0
        for buf, end in zip(bufs, ends, strict=True):
            buf += raw[at:end]
            at = end
        if ids == "never":
            self._frame_sid += rows.sids
            self._sidless[ordinal] = (n, None)
        else:
            glob = array("I", [_unpack_from(buf)[0] for buf in bufs])  # their ids in the index
            if ids == "now":
                self._frame_sid += array("I", map(glob.__getitem__, rows.sids))
            else:
                self._frame_sid += rows.sids
                self._sidless[ordinal] = (n, glob)
        self.next_position = end_position

    def rows_problem(
        self, rows: SegmentRows, missing: int, skips: Callable[[str], bool] | None = None
    ) -> tuple[str, int] | None:
        """Why a sidecar's rows cannot continue the index (as a scan would have found), and
        the offset of the frame where it shows (the stream's first in the segment), or
        None. ``missing``: positions missing from the log before these rows. A stream may
        start past version 0 with at least as many positions missing before it; a read-only
        store (see ``frame_indexer``) passes ``skips``, which says whether a stream it has
        already indexed may skip versions the same way (the caller then restarts it:
        :meth:`restart_stream`). One step per stream; only a skip costs more."""
        at = 0
        cum: list[int] | None = None  # events of the rows before each row
        for name, count, first in zip(rows.names, rows.counts, rows.firsts, strict=True):
            want = self.last_version(name) + 1
            if first != want:
                problem = f"stream {name!r} continues at version {first}, expected {want}"
                p = rows.positions[at] if count else rows.pos[0]  # its first position here
                where = (problem, rows.off[bisect_right(rows.pos, p) - 1])
                if first < want or not count or (want != 0 and not (skips and skips(name))):
                    return where
                if cum is None:
                    cum = list(itertools.accumulate(rows.cnt, initial=0))
                gap = missing + (p - rows.pos[0]) - cum[bisect_left(rows.pos, p)]
                if first - want > gap:  # fewer positions missing before it than versions
                    return where
            at += count
        return None

    def event_count(self) -> int:
        """Events the log holds at positions up to ``head``: those not removed by retention
        or scavenging (events hidden by stream metadata or a delete count until they are
        removed). Sums only the rows added since the last call, unless rows were removed."""
        k = bisect_right(self._frame_pos, self.head)
        rows, total = self._counted
        if rows > k:  # (rows are removed only with _counted reset; never on a sound index)
            rows, total = 0, 0
        total += sum(self._frame_cnt[rows:k])
        self._counted = (k, total)
        return total

    def row_count(self) -> int:
        """Number of frame rows (planned frames holding events)."""
        return len(self._frame_pos)

    def stream_count(self) -> int:
        """Number of streams with at least one planned event."""
        return len(self._name_end)

    def memory_bytes(self) -> int:
        """Approximate bytes held by the frame columns and the streams' positions: the cost
        per event (not counting what each stream costs once: its name, id and dict entry)."""
        cols: tuple[array[int], ...] = (self._frame_pos, self._frame_seg, self._frame_off)
        cols += (self._frame_len, self._frame_sid, self._frame_cnt)
        buffers = sum(map(len, self._streams.values())) - 8 * len(self._streams)
        return sum(a.itemsize * len(a) for a in cols) + buffers
