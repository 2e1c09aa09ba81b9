"""The in-memory index: stream → version → position, and position → frame on disk.

Compact by construction: four parallel ``array`` columns with one row per frame (one frame per
append call) and one ``array('q')`` of positions per stream, so an event costs 8 bytes in its
stream's array plus its share of its frame's 28-byte row; no Python object per event.

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


class Index:
    """Frames and streams of the log. See the module docstring for ownership."""

    def __init__(self) -> None:
        self._frame_pos = array("q")
        self._frame_seg = array("l")
        self._frame_off = array("q")
        self._frame_len = array("l")
        self._streams: dict[str, array[int]] = {}
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
        positions = self._streams.get(stream)
        if positions is None:
            positions = self._streams[stream] = array("q")
        assert first_version == len(positions), "stream versions are dense"
        self._frame_pos.append(first_position)
        self._frame_seg.append(ordinal)
        self._frame_off.append(offset)
        self._frame_len.append(length)
        positions.extend(range(first_position, first_position + count))
        self.next_position = first_position + count

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
        positions = self._streams.get(stream)
        return -1 if positions is None else len(positions) - 1

    def committed_last_version(self, stream: str) -> int:
        """Version of the stream's last durable event, or -1."""
        positions = self._streams.get(stream)
        if positions is None:
            return -1
        return bisect_right(positions, self.head) - 1

    def committed_version_after(self, stream: str, position: int) -> int:
        """The first version of ``stream`` whose position is past ``position``."""
        positions = self._streams.get(stream)
        if positions is None:
            return 0
        return bisect_right(positions, position)

    def position_of(self, stream: str, version: int) -> int:
        """Position of a (planned) stream version; the caller checks the range."""
        return self._streams[stream][version]

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
        positions = self._streams.get(stream)
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

    def stream_count(self) -> int:
        """Number of streams with at least one planned event."""
        return len(self._streams)

    def memory_bytes(self) -> int:
        """Approximate bytes held by the index arrays (not counting dict overhead)."""
        cols = (self._frame_pos, self._frame_seg, self._frame_off, self._frame_len)
        return sum(a.itemsize * len(a) for a in cols) + sum(
            a.itemsize * len(a) for a in self._streams.values()
        )
