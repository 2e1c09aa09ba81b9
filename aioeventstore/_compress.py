"""Per-batch compression: containers of ordinary frames, compressed with zstd.

The only module that imports ``zstandard`` (optional: ``pip install 'aioeventstore[zstd]'``).

Writing (the store's I/O thread only; a zstd context is not thread-safe): one commit batch's
frames, already laid out as for an uncompressed write, are cut into groups of consecutive
frames of about ``CONTAINER_TARGET`` bytes; each group is replaced by one compressed frame
(kind 3, FORMAT.md) when that is smaller, and written as it is otherwise. Small events only
compress well together, so a group below ``MIN_COMPRESS_BYTES`` is never compressed.

Reading (any thread): :func:`expand` decompresses a checked compressed frame into exactly the
number of bytes it states (at most ``MAX_CONTAINER_RAW``: a damaged size never makes a reader
allocate more), and :func:`inner_frames` checks that those bytes are whole ordinary frames that
continue the log's positions. Both raise ``FrameError``; callers turn that into ``CorruptLog``
with the container's path and offset, as for any damaged frame.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

from ._format import (
    BODY_HEAD_SIZE,
    CODEC_ZSTD,
    CONTAINER_HEAD,
    CONTAINER_HEAD_SIZE,
    FRAME_HEADER_SIZE,
    FRAME_KIND_COMPRESSED,
    MAX_CONTAINER_RAW,
    FrameError,
    FrameInfo,
    check_frame,
    container_size,
    pack_frame,
)
from .errors import CompressionUnavailable

zstd: Any
try:
    import zstandard as zstd
except ImportError:  # pragma: no cover - exercised by monkeypatching ``zstd = None``
    zstd = None

CONTAINER_TARGET = 16 * 1024
"""Uncompressed bytes per container (a group closes once it reaches this). A read of one event
decompresses about this much; on ~150-byte events 64 KiB would only save another 2-4%."""
MIN_COMPRESS_BYTES = 1024
"""A group of frames smaller than this is written uncompressed (one small append does not
compress: the container's own 60 bytes would eat the gain)."""
CONTAINER_OVERHEAD = FRAME_HEADER_SIZE + BODY_HEAD_SIZE + CONTAINER_HEAD_SIZE


def require(reason: str) -> None:
    """Raise CompressionUnavailable (saying ``reason``) when zstandard is not installed."""
    if zstd is None:
        raise CompressionUnavailable(
            f"{reason}, but the zstandard package is not installed: "
            "pip install 'aioeventstore[zstd]'"
        )


class PlannedFrame(NamedTuple):
    """One frame of a batch, packed as for an uncompressed write."""

    data: bytes
    first_position: int
    event_count: int


class BatchCompressor:
    """Lays out one batch's frames as containers where that pays (the I/O thread only)."""

    def __init__(self, level: int) -> None:
        require("StoreOptions.compression is 'zstd'")
        self._ctx = zstd.ZstdCompressor(level=level, write_content_size=True)

    def pack(
        self, frames: Sequence[PlannedFrame], write_offset: int, recorded_us: int
    ) -> tuple[bytes, list[tuple[int, int]] | None]:
        """The bytes of the write holding ``frames`` at ``write_offset``, and where each frame
        ended up: ``(offset, length)`` in the segment of the frame itself or of the container
        holding it, in order; None when every frame was written as it is."""
        total = sum(len(f.data) for f in frames)
        if total < MIN_COMPRESS_BYTES:
            return b"".join(f.data for f in frames), None
        parts: list[bytes] = []
        where: list[tuple[int, int]] = []
        off = write_offset
        compressed = False
        i = 0
        while i < len(frames):
            j, size = i, 0
            while j < len(frames) and size < CONTAINER_TARGET:
                if size and size + len(frames[j].data) > MAX_CONTAINER_RAW:
                    break
                size += len(frames[j].data)
                j += 1
            group = frames[i:j]
            container = None
            if MIN_COMPRESS_BYTES <= size <= MAX_CONTAINER_RAW:
                container = self._container(group, size, write_offset, recorded_us)
            if container is not None and len(container) < size:
                parts.append(container)
                where += [(off, len(container))] * len(group)
                off += len(container)
                compressed = True
            else:
                for f in group:
                    parts.append(f.data)
                    where.append((off, len(f.data)))
                    off += len(f.data)
            i = j
        return b"".join(parts), where if compressed else None

    def _container(
        self, group: Sequence[PlannedFrame], size: int, write_offset: int, recorded_us: int
    ) -> bytes:
        payload = CONTAINER_HEAD.pack(CODEC_ZSTD, size) + self._ctx.compress(
            b"".join(f.data for f in group)
        )
        count = sum(f.event_count for f in group)
        return b"".join(
            pack_frame(
                b"",
                count,
                group[0].first_position,
                0,
                recorded_us,
                write_offset,
                payload,
                FRAME_KIND_COMPRESSED,
            )
        )


_local = threading.local()


def _decompressor() -> Any:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstd.ZstdDecompressor()
    return d


def expand(buf: bytes | memoryview, frame_start: int, frame_end: int) -> bytes:
    """The inner frames' bytes of the compressed frame ``buf[frame_start:frame_end]``, whose
    checksum the caller has checked. Raises FrameError when it does not decompress to exactly
    the size it states, CompressionUnavailable without zstandard."""
    raw_len = container_size(buf, frame_start, frame_end - frame_start - FRAME_HEADER_SIZE)
    require("the log holds zstd-compressed frames")
    payload = bytes(buf[frame_start + CONTAINER_OVERHEAD : frame_end])
    try:
        stated = zstd.frame_content_size(payload)
    except zstd.ZstdError as exc:
        raise FrameError(f"compressed frame has no readable zstd header: {exc}") from None
    if stated != raw_len:
        raise FrameError(
            f"compressed frame's zstd data holds {stated} bytes, its header says {raw_len}"
        )
    try:
        raw = _decompressor().decompress(payload, max_output_size=raw_len, allow_extra_data=False)
    except zstd.ZstdError as exc:
        raise FrameError(f"compressed frame does not decompress: {exc}") from None
    if len(raw) != raw_len:
        raise FrameError(f"compressed frame decompressed to {len(raw)} bytes, not {raw_len}")
    return bytes(raw)


def inner_frames(raw: bytes, container: FrameInfo) -> list[FrameInfo]:
    """The frames a compressed frame holds (offsets relative to ``raw``), checked: whole
    ordinary frames of the container's write, positions continuing from its first position
    and adding up to its event count. Raises FrameError."""
    out: list[FrameInfo] = []
    at = 0
    pos = container.first_position
    while at < len(raw):
        try:
            info = check_frame(raw, at, len(raw))
        except FrameError as exc:
            raise FrameError(f"inner frame at byte {at}: {exc.reason}") from None
        if info.kind == FRAME_KIND_COMPRESSED:
            raise FrameError(f"inner frame at byte {at} is itself compressed")
        if info.first_position != pos:
            raise FrameError(
                f"inner frame at byte {at} holds position {info.first_position}, expected {pos}"
            )
        if info.write_offset != container.write_offset:
            raise FrameError(f"inner frame at byte {at} belongs to another write")
        out.append(info)
        at += info.length
        pos += info.event_count
    if not out or pos != container.first_position + container.event_count:
        raise FrameError(
            f"inner frames hold positions up to {pos}, the compressed frame says "
            f"{container.first_position + container.event_count}"
        )
    return out
