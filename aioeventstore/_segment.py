"""One segment file: its header, reads and appends. Blocking I/O only, no asyncio.

A segment is named after the position of its first event and starts with a 32-byte header
(see FORMAT.md); frames follow back to back. Only the log's I/O thread appends to a segment;
any thread may ``read`` from it (``pread`` needs no shared file offset).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ._format import (
    FORMAT_VERSION,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    FrameError,
    FrameInfo,
    check_frame,
    pack_segment_header,
    segment_flags,
    segment_format_version,
    segment_name,
    unpack_segment_header,
)
from ._fs import FileHandle, FileSystem

FrameSink = Callable[[FrameInfo, bytes, int], None]
"""Called for each good frame during a scan with (info, buffer, frame start in buffer);
``info.offset`` is the frame's offset in the file."""


class Segment:
    """An open segment file and the position of its first event."""

    __slots__ = ("file", "first_position", "flags", "format_version", "path", "pins", "retired")

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
        try:
            file.pwrite(pack_segment_header(first_position), 0)
            file.sync()
        except BaseException:
            file.close()
            raise
        return cls(path, first_position, file)

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

    def read(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at end of file)."""
        return self.file.pread(size, offset)

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
                buf = self.read(min(need, size - off), off)
                buf_off = off
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
