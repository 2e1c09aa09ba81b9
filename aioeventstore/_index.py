"""The in-memory index: stream → version → position, and position → frame on disk.

Compact by construction: five parallel ``array`` columns with one row per frame (one frame per
append call) and one ``array('q')`` of positions per stream, so an event costs 8 bytes in its
stream's array plus its share of its frame's 28-byte row; no Python object per event.

Each segment's rows can be saved to a sidecar file (``_indexfile.py``) so that opening a large
store loads them instead of rescanning the log.

Ownership: only the commit loop's thread mutates or reads the index. Rows are added when a batch
is *planned* (so version checks see the batch in flight), and ``head`` advances only when the
batch is durable; readers clamp everything to ``head``, so they never see an uncommitted event.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from typing import NamedTuple


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
        self._sids: dict[str, int] = {}
        self._names: list[str] = []
        self._positions: list[array[int]] = []  # by stream id: positions in version order
        self.marks: dict[int, dict[str, int]] = {}
        """Segment ordinal → named consumer → highest checkpoint planned in that segment."""
        self.head = -1
        """Position of the last durable event, or -1 for an empty store."""
        self.next_position = 0
        """Position the next planned event gets (past the batch in flight)."""

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
        """Record a frame; its events get positions ``first_position`` on, in stream order."""
        assert first_position == self.next_position, "frames are added in position order"
        sid = self._sids.get(stream)
        if sid is None:
            sid = self._sids[stream] = len(self._names)
            self._names.append(stream)
            self._positions.append(array("q"))
        positions = self._positions[sid]
        assert first_version == len(positions), "stream versions are dense"
        self._frame_pos.append(first_position)
        self._frame_seg.append(ordinal)
        self._frame_off.append(offset)
        self._frame_len.append(length)
        self._frame_sid.append(sid)
        if count == 1:
            positions.append(first_position)
        else:
            positions.extend(range(first_position, first_position + count))
        self.next_position = first_position + count

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

    def last_version(self, stream: str) -> int:
        """Version of the stream's last planned event, or -1 when it has none."""
        sid = self._sids.get(stream)
        return -1 if sid is None else len(self._positions[sid]) - 1

    def committed_last_version(self, stream: str) -> int:
        """Version of the stream's last durable event, or -1."""
        positions = self._stream(stream)
        if positions is None:
            return -1
        return bisect_right(positions, self.head) - 1

    def committed_version_after(self, stream: str, position: int) -> int:
        """The first version of ``stream`` whose position is past ``position``."""
        positions = self._stream(stream)
        if positions is None:
            return 0
        return bisect_right(positions, position)

    def _stream(self, stream: str) -> array[int] | None:
        sid = self._sids.get(stream)
        return None if sid is None else self._positions[sid]

    def position_of(self, stream: str, version: int) -> int:
        """Position of a (planned) stream version; the caller checks the range."""
        return self._positions[self._sids[stream]][version]

    def frame_at(self, position: int) -> int:
        """Row of the frame holding ``position`` (which must be < next_position)."""
        return bisect_right(self._frame_pos, position) - 1

    def frame(self, row: int) -> FrameRef:
        """The frame in row ``row``."""
        first = self._frame_pos[row]
        nxt = self._frame_pos[row + 1] if row + 1 < len(self._frame_pos) else self.next_position
        return FrameRef(
            self._frame_seg[row], self._frame_off[row], self._frame_len[row], first, nxt - first
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
        return self._frame_pos[row + 1] if row + 1 < len(self._frame_pos) else self.next_position

    def stream_frames(
        self,
        stream: str,
        version: int,
        max_bytes: int,
        backwards: bool,
        max_events: int | None = None,
    ) -> list[tuple[FrameRef, int]]:
        """Committed frames of ``stream`` from the one holding ``version`` on (or back), with
        each frame's first version, in position order; about ``max_bytes`` (at least one)."""
        positions = self._stream(stream)
        if positions is None:
            return []
        last = bisect_right(positions, self.head) - 1
        if version < 0 or version > last:
            return []
        out: list[tuple[FrameRef, int]] = []
        total = 0
        have = 0
        want = (1 << 62) if max_events is None else max_events
        v = version
        while 0 <= v <= last and (not out or (total < max_bytes and have < want)):
            pos = positions[v]
            ref = self.frame(self.frame_at(pos))
            first_version = v - (pos - ref.first_position)
            out.append((ref, first_version))
            total += ref.length
            have += (v - first_version + 1) if backwards else (first_version + ref.event_count - v)
            v = first_version - 1 if backwards else first_version + ref.event_count
        if backwards:
            out.reverse()
        return out

    # --- sidecar files (see _indexfile.py) ----------------------------------------------------
    def segment_rows(self, ordinal: int) -> tuple[int, int]:
        """Rows ``[r0, r1)`` of the frames in segment ``ordinal`` (rows are in segment order)."""
        return bisect_left(self._frame_seg, ordinal), bisect_right(self._frame_seg, ordinal)

    def export_rows(self, r0: int, r1: int, end_position: int) -> SegmentRows:
        """The rows ``[r0, r1)`` grouped for a sidecar file; ``end_position`` is the position
        after the last event of row ``r1 - 1``.

        Safe on a thread other than the commit loop's for committed rows: rows are only ever
        appended, and each slice is taken in one step under the GIL.
        """
        pos = self._frame_pos[r0:r1]
        sids = self._frame_sid[r0:r1]
        all_names = self._names
        local: dict[int, int] = {}
        names: list[str] = []
        groups: list[array[int]] = []
        lsids = array("I")
        ends = pos[1:]
        ends.append(end_position)
        for p, e, g in zip(pos, ends, sids, strict=True):
            lid = local.get(g)
            if lid is None:
                lid = local[g] = len(names)
                names.append(all_names[g])
                groups.append(array("q"))
            lsids.append(lid)
            if e - p == 1:
                groups[lid].append(p)
            else:
                groups[lid].extend(range(p, e))
        counts = array("q", [len(g) for g in groups])
        flat = array("q")
        for group in groups:
            flat += group
        return SegmentRows(
            pos, self._frame_off[r0:r1], self._frame_len[r0:r1], lsids, names, counts, flat
        )

    def load_rows(self, ordinal: int, rows: SegmentRows, end_position: int, sids: bool) -> None:
        """Append a sidecar file's rows for segment ``ordinal`` (open only, in segment order).

        With ``sids`` False the rows' stream ids are not kept (zeros): enough for every
        segment that will never be exported again, i.e. all but the last.
        """
        n = len(rows.pos)
        assert n and rows.pos[0] == self.next_position, "segments are loaded in order"
        self._frame_pos += rows.pos
        self._frame_off += rows.off
        self._frame_len += rows.length
        self._frame_seg += array("I", [ordinal]) * n
        glob: list[int] = []
        at = 0
        raw = memoryview(rows.positions).cast("B")  # one copy per stream, not two
        size = rows.positions.itemsize
        for name, count in zip(rows.names, rows.counts, strict=True):
            sid = self._sids.get(name)
            if sid is None:
                sid = self._sids[name] = len(self._names)
                self._names.append(name)
                self._positions.append(array("q"))
            glob.append(sid)
            self._positions[sid].frombytes(raw[at * size : (at + count) * size])
            at += count
        if sids:
            self._frame_sid += array("I", map(glob.__getitem__, rows.sids))
        else:
            self._frame_sid += array("I", [0]) * n
        self.next_position = end_position

    def row_count(self) -> int:
        """Number of frame rows (planned frames holding events)."""
        return len(self._frame_pos)

    def stream_count(self) -> int:
        """Number of streams with at least one planned event."""
        return len(self._names)

    def memory_bytes(self) -> int:
        """Approximate bytes held by the index arrays (not counting dict overhead)."""
        cols = (self._frame_pos, self._frame_seg, self._frame_off, self._frame_len, self._frame_sid)
        return sum(a.itemsize * len(a) for a in cols) + sum(
            a.itemsize * len(a) for a in self._positions
        )
