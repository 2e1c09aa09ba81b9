"""One segment file: its header, reads and appends. Blocking I/O only, no asyncio.

A segment is named after the position of its first event and starts with a 32-byte header
(see FORMAT.md); frames follow back to back. Only the log's I/O thread appends to a segment;
any thread may ``read`` from it (``pread`` needs no shared file offset).

Each segment keeps a running crc32c of a prefix of its file, for its index sidecar (which
records the checksum of the bytes it covers): started when this process creates the file and
extended by each write that continues it, so that sealing a 64 MB segment does not mean
reading it back. A segment opened from disk (a store reopened mid-segment, a tail recovery
cut, a scavenged copy) starts with an empty prefix and catches up by reading, when asked,
unless its sidecar's checksum seeds it (``seed``: a reopened tail).
The invariant: ``(crc, crc_end)`` is the crc32c of the file's bytes ``[0, crc_end)``, and those
bytes never change while the object lives (a log only appends; a failed write is cut back
to where it began, never below a checksummed prefix, since only writes that succeeded extend
it). Owned by the I/O thread, like writes.
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_right
from collections.abc import Callable

from ._format import (
    FORMAT_VERSION,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    FrameError,
    FrameInfo,
    check_frame,
    crc32c,
    pack_segment_header,
    segment_flags,
    segment_format_version,
    segment_name,
    unpack_segment_header,
)
from ._fs import FileHandle, FileSystem

CRC_MARK_BYTES = 1 << 20
"""A segment remembers its running checksum at the start of a write at least this far past the
last one remembered: the checksum of a shorter prefix then reads at most this much plus one
write."""

FrameSink = Callable[[FrameInfo, bytes, int], None]
"""Called for each good frame during a scan with (info, buffer, frame start in buffer);
``info.offset`` is the frame's offset in the file."""


class Segment:
    """An open segment file and the position of its first event."""

    __slots__ = (
        "_crc",
        "_crc_end",
        "_mark_crc",
        "_mark_off",
        "created",
        "file",
        "first_position",
        "flags",
        "format_version",
        "path",
        "pins",
        "retired",
    )

    def __init__(self, path: str, first_position: int, file: FileHandle) -> None:
        self.path = path
        self.first_position = first_position
        self.file = file
        self.format_version = FORMAT_VERSION  # as read by read_header(), for existing files
        self.flags = 0  # header flags (SEGMENT_FLAG_SCAVENGED), as read by read_header()
        # Scavenging replaces a sealed segment's Segment object (and file) while reads planned
        # against the old one may still be in flight: those pin it (event loop thread only),
        # and a retired segment's file is closed when its last pin goes.
        self.pins = 0
        self.retired = False
        # the running checksum (see the module docstring; I/O thread): crc32c of [0, _crc_end),
        # and the checksums of earlier prefixes, at write starts (_mark_off[0] = 0)
        self._crc = 0
        self._crc_end = 0
        self._mark_off = array("q", [0])
        self._mark_crc = array("q", [0])
        self.created = False
        """Created by this process (``create``): its running checksum covers every write."""

    def pin(self) -> None:
        """A read planned against this segment is about to run (event loop thread)."""
        self.pins += 1

    def unpin(self) -> None:
        """That read is over; close the file if the segment was retired meanwhile."""
        self.pins -= 1
        if self.retired and self.pins == 0:
            self.file.close()

    def retire(self) -> None:
        """The segment was replaced or dropped: close its file once no read uses it."""
        self.retired = True
        if self.pins == 0:
            self.file.close()

    @classmethod
    def create(cls, fs: FileSystem, directory: str, first_position: int) -> Segment:
        """Create the file with its header and sync it; the caller syncs the directory."""
        path = os.path.join(directory, segment_name(first_position))
        file = fs.open(path, write=True, create=True)
        header = pack_segment_header(first_position)
        try:
            file.pwrite(header, 0)
            file.sync()
        except BaseException:
            file.close()
            raise
        seg = cls(path, first_position, file)
        seg.created = True
        seg.wrote(0, header)
        return seg

    def read_header(self) -> int:
        """First position stored in the header (and sets ``format_version``); ValueError when
        the header is bad, NewerFormat when it is intact but from a newer format."""
        raw = self.file.pread(SEGMENT_HEADER_SIZE, 0)
        first = unpack_segment_header(raw)
        self.format_version = segment_format_version(raw)
        self.flags = segment_flags(raw)
        return first

    def read_header_flags(self) -> tuple[int, int]:
        """``read_header()`` and the header's flags."""
        first = self.read_header()
        return first, self.flags

    # --- the running checksum (I/O thread) -----------------------------------------------------
    @property
    def crc_end(self) -> int:
        """Where the running checksum's prefix ends (0: nothing checksummed yet)."""
        return self._crc_end

    def wrote(self, offset: int, data: bytes | memoryview) -> None:
        """``data`` was written at ``offset`` and the write succeeded: extend the running
        checksum when the write continues its prefix (I/O thread)."""
        assert offset >= self._crc_end, "a checksummed prefix is never written again"
        if offset != self._crc_end or not data:
            return
        if offset - self._mark_off[-1] >= CRC_MARK_BYTES:
            self._mark_off.append(offset)
            self._mark_crc.append(self._crc)
        self._crc = crc32c(data, self._crc)
        self._crc_end = offset + len(data)

    def seed(self, crc: int, end: int) -> None:
        """Start the running checksum at ``end`` with ``crc``, the checksum an index sidecar
        recorded for the bytes ``[0, end)`` when they were written (a reopened tail: sealing
        it then reads none of it back). Only before anything is checksummed; the checksum it
        carries on is of what was written, so damage since is still what a verifying open
        finds."""
        assert self._crc_end == 0, "seeded once, before any write"
        if end <= 0:
            return
        self._mark_off.append(end)
        self._mark_crc.append(crc)
        self._crc = crc
        self._crc_end = end

    def catch_up(self, end: int, max_bytes: int) -> bool:
        """Extend the running checksum towards ``end`` by reading at most ``max_bytes`` of the
        file (I/O thread; for bytes already written). Whether it reaches ``end``. Raises
        OSError when the file ends first."""
        at = self._crc_end
        if at >= end:
            return True
        size = min(max_bytes, end - at)
        chunk = self.read(size, at)
        if len(chunk) != size:
            raise OSError(f"segment {self.path} ends at byte {at + len(chunk)}, before {end}")
        if at - self._mark_off[-1] >= CRC_MARK_BYTES:
            self._mark_off.append(at)
            self._mark_crc.append(self._crc)
        self._crc = crc32c(chunk, self._crc)
        self._crc_end = at + size
        return self._crc_end >= end

    def checksum(self, end: int, chunk: int) -> int:
        """crc32c of the file's bytes ``[0, end)`` (I/O thread): the running checksum when its
        prefix ends there; else from the last remembered prefix at or before ``end``, reading
        only what follows it (in ``chunk``-byte reads). Raises OSError when the file is shorter
        than ``end``."""
        if end >= self._crc_end:
            while not self.catch_up(end, chunk):
                pass
            return self._crc
        i = bisect_right(self._mark_off, end) - 1
        at, crc = self._mark_off[i], self._mark_crc[i]
        while at < end:
            data = self.read(min(chunk, end - at), at)
            if not data:
                raise OSError(f"segment {self.path} ends at byte {at}, before {end}")
            crc = crc32c(data, crc)
            at += len(data)
        return crc

    def read(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at end of file)."""
        return self.file.pread(size, offset)

    def read_many(self, sizes: list[int], offsets: list[int]) -> list[bytes]:
        """:meth:`read` of each ``(size, offset)`` pair, in order, in one call."""
        return self.file.pread_many(sizes, offsets)

    def read_many_cached(self, sizes: list[int], offsets: list[int]) -> list[bytes] | None:
        """:meth:`read_many` if it cannot block (the bytes are in memory), else None."""
        return self.file.pread_many_cached(sizes, offsets)

    def scan(
        self, start: int, first_position: int, chunk: int, sink: FrameSink, gaps: bool = False
    ) -> tuple[int, int, str | None]:
        """Check frames from byte ``start`` on, feeding each good one to ``sink``.

        Returns (end offset of the last good frame, next position, reason the scan stopped
        early or None when it reached end of file). A frame whose first position is not the
        next expected one also stops the scan.
        """
        size = self.file.size()
        off = start
        pos = first_position
        buf = b""
        buf_off = start
        while off < size:
            rel = off - buf_off
            try:
                info = check_frame(buf, rel, len(buf))
            except FrameError as exc:
                if not exc.incomplete or buf_off + len(buf) >= size:
                    return off, pos, exc.reason
                need = chunk
                if len(buf) - rel >= FRAME_HEADER_SIZE:
                    need = max(chunk, FRAME_HEADER_SIZE + FRAME_HEADER.unpack_from(buf, rel)[2])
                want = min(need, size - off)
                buf = self.read(want, off)
                buf_off = off
                if len(buf) < want:  # the file is shorter now (its writer cut a failed write)
                    size = off + len(buf)
                continue
            # with ``gaps`` (a scavenged segment) a frame may skip positions forwards
            if info.first_position != pos and not (gaps and info.first_position > pos):
                return off, pos, (f"frame holds position {info.first_position}, expected {pos}")
            sink(info._replace(offset=off), buf, rel)
            off += info.length
            pos = info.first_position + info.event_count
        return off, pos, None

    def close(self) -> None:
        """Close the file handle (idempotent)."""
        self.file.close()
