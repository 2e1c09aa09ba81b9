"""On-disk constants and fixed headers. FORMAT.md is the prose spec; this module mirrors it.

All integers are little-endian. Nothing here does I/O or knows about msgpack.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final, NamedTuple

import crc32c as _crc32c

FORMAT_VERSION: Final = 2
"""Written in every new segment's header; readers read every version up to this one and
refuse newer ones. Version 2 added the schema-version frame flag (``FRAME_FLAG_SCHEMA``)."""
OLDEST_FORMAT_VERSION: Final = 1

# --- segment file -----------------------------------------------------------------------------
SEGMENT_MAGIC: Final = b"AIOESLOG"
SEGMENT_SUFFIX: Final = ".seg"
SEGMENT_NAME_DIGITS: Final = 20
# magic 8s | format version H | header length H | flags I | first position Q | reserved I | crc I
SEGMENT_HEADER: Final = struct.Struct("<8sHHIQII")
SEGMENT_HEADER_SIZE: Final = SEGMENT_HEADER.size  # 32
SEGMENT_FLAG_SCAVENGED: Final = 1
"""Header flag of a segment rewritten by scavenging: frames whose events were all hidden by
stream metadata were removed, so positions inside it (and before its first frame) may skip.
Segments without it must hold dense positions; a skip there is damage."""
SEGMENT_FLAGS_KNOWN: Final = SEGMENT_FLAG_SCAVENGED
SCAVENGE_SUFFIX: Final = ".scavenge"
"""Suffix of the temporary file a scavenge writes before renaming it over its segment; a
leftover one (a crash mid-scavenge) is removed on open."""
assert SEGMENT_HEADER_SIZE == 32

# --- frame: one append call, the atomic unit on disk ------------------------------------------
FRAME_MAGIC: Final = b"\xc1AEF"  # 0xc1 is the one byte msgpack never emits
# magic 4s | crc32c I | body length I   (the crc covers the length field and the body: one
# contiguous range, so a reader checks a frame with one call)
FRAME_HEADER: Final = struct.Struct("<4sII")
FRAME_LENGTH_AT: Final = 8  # offset of the body length within the frame
FRAME_HEADER_SIZE: Final = FRAME_HEADER.size  # 12
# kind B | flags B | stream length H | event count I | first position Q | first version Q |
# recorded_at (microseconds since the Unix epoch, UTC) q | write offset Q (the byte offset in this
# segment at which the write, i.e. the commit batch, holding this frame begins)
BODY_HEAD: Final = struct.Struct("<BBHIQQqQ")
BODY_HEAD_SIZE: Final = BODY_HEAD.size  # 40
FRAME_KIND_EVENTS: Final = 1
FRAME_KIND_CHECKPOINT: Final = 2
"""A named consumer's acknowledged position. No events; the stream-name field holds the
consumer's name and the first-version field the acknowledged position."""
FRAME_KIND_COMPRESSED: Final = 3
"""A container: the compressed concatenation of consecutive ordinary frames (kinds 1 and 2) of
one write. Stream length 0; event count, first position, recorded_at and write offset are
those of the frames it holds; first version 0. The body goes on with a CONTAINER_HEAD and the
compressed bytes."""
FRAME_FLAG_SCHEMA: Final = 0x01
"""Frame flag (format version 2): each event entry's type field holds the type name followed by
the event's schema version (``SCHEMA_VERSION``), and the type length counts both. Frames whose
events are all at schema version 1 leave it clear and are laid out as in version 1."""
SCHEMA_VERSION: Final = struct.Struct("<H")
SCHEMA_VERSION_SIZE: Final = SCHEMA_VERSION.size  # 2
MAX_SCHEMA_VERSION: Final = 0xFFFF
FRAME_KIND_METADATA: Final = 4
"""A stream's retention metadata (max count, max age, truncate before, deleted). No events;
the stream-name field holds the stream, the first-version field the metadata's revision (the
highest wins), and a MessagePack map follows the name (see FORMAT.md). Never compressed."""
MAX_FRAME_BODY: Final = (1 << 31) - 1

# --- container head, after the body head of a compressed frame --------------------------------
# codec B | reserved 3x | uncompressed length I (of the inner frames)
CONTAINER_HEAD: Final = struct.Struct("<B3xI")
CONTAINER_HEAD_SIZE: Final = CONTAINER_HEAD.size  # 8
CODEC_ZSTD: Final = 1
MAX_CONTAINER_RAW: Final = 64 << 20
"""The most uncompressed bytes a container may state: a reader never allocates more for one,
and a writer puts larger frames on disk uncompressed."""

# --- event entry inside a frame body ----------------------------------------------------------
# entry length I (bytes after this field) | id 16s | type length H | metadata length I
ENTRY_HEAD: Final = struct.Struct("<I16sHI")
ENTRY_HEAD_SIZE: Final = ENTRY_HEAD.size  # 26
ENTRY_FIXED_AFTER_LEN: Final = ENTRY_HEAD_SIZE - 4

MAX_STREAM_NAME_BYTES: Final = 1024
MAX_TYPE_NAME_BYTES: Final = 0xFFFF

assert SEGMENT_HEADER_SIZE == 32 and FRAME_HEADER_SIZE == 12
assert BODY_HEAD_SIZE == 40 and ENTRY_HEAD_SIZE == 26 and CONTAINER_HEAD_SIZE == 8

crc32c = _crc32c.crc32c


def segment_name(first_position: int) -> str:
    """File name of the segment whose first event has ``first_position``."""
    return f"{first_position:0{SEGMENT_NAME_DIGITS}d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """First position encoded in a segment file name, or None for any other file."""
    stem, dot, suffix = name.partition(".")
    if "." + suffix != SEGMENT_SUFFIX or not dot:
        return None
    if len(stem) != SEGMENT_NAME_DIGITS or not stem.isdigit():
        return None
    return int(stem)


def pack_segment_header(
    first_position: int, flags: int = 0, version: int = FORMAT_VERSION
) -> bytes:
    """The 32-byte header that starts every segment file (a scavenge keeps the version of
    the segment it rewrites, whose frames it copies as they are, and sets its flag)."""
    head = SEGMENT_HEADER.pack(
        SEGMENT_MAGIC, version, SEGMENT_HEADER_SIZE, flags, first_position, 0, 0
    )
    return head[:-4] + crc32c(head[:-4]).to_bytes(4, "little")


class NewerFormat(ValueError):
    """A well-formed segment header with a format version newer than this build reads."""

    def __init__(self, found: int) -> None:
        super().__init__(
            f"unsupported format version {found} (this build reads up to {FORMAT_VERSION})"
        )
        self.found = found


def unpack_segment_header(raw: bytes) -> int:
    """First position from a segment header; raises ValueError saying what is wrong, and
    its subclass NewerFormat when the header is intact but from a newer format."""
    if len(raw) < SEGMENT_HEADER_SIZE:
        raise ValueError(f"segment header is {len(raw)} bytes, expected {SEGMENT_HEADER_SIZE}")
    magic, version, hlen, flags, first, _res, crc = SEGMENT_HEADER.unpack_from(raw)
    if magic != SEGMENT_MAGIC:
        raise ValueError(f"bad segment magic {magic!r}")
    if crc != crc32c(raw[: SEGMENT_HEADER_SIZE - 4]):
        raise ValueError("segment header checksum mismatch")
    if version > FORMAT_VERSION:
        raise NewerFormat(version)
    if version < OLDEST_FORMAT_VERSION:
        raise ValueError(f"impossible format version {version}")
    if hlen != SEGMENT_HEADER_SIZE:
        raise ValueError(f"unexpected segment header length {hlen}")
    if flags & ~SEGMENT_FLAGS_KNOWN:
        raise ValueError(f"unknown segment header flags {flags:#x}")
    return int(first)


def segment_flags(raw: bytes) -> int:
    """The flags field of a header that ``unpack_segment_header`` accepted."""
    return int(SEGMENT_HEADER.unpack_from(raw)[3])


def segment_format_version(raw: bytes) -> int:
    """The format version field of a header that ``unpack_segment_header`` accepted."""
    return int(SEGMENT_HEADER.unpack_from(raw)[1])


class FrameInfo(NamedTuple):
    """What the index needs of a frame, read without decoding its events."""

    offset: int  # of the frame header in its buffer or segment
    length: int  # whole frame, header included
    entries_at: int  # offset of the first event entry, relative to the frame start
    stream: str
    event_count: int
    first_position: int
    first_version: int
    recorded_at_us: int
    write_offset: int  # byte offset in its segment where this frame's write (batch) begins
    kind: int = FRAME_KIND_EVENTS
    flags: int = 0


def pack_frame(
    stream_b: bytes,
    count: int,
    first_position: int,
    first_version: int,
    recorded_us: int,
    write_offset: int,
    entries: bytes,
    kind: int = FRAME_KIND_EVENTS,
    flags: int = 0,
) -> list[bytes]:
    """The parts of one frame, in order; joined they are the frame's bytes.

    For a checkpoint frame pass ``kind=FRAME_KIND_CHECKPOINT``, ``count=0``, the consumer name
    as ``stream_b``, the acknowledged position as ``first_version`` and no entries.
    """
    head = BODY_HEAD.pack(
        kind,
        flags,
        len(stream_b),
        count,
        first_position,
        first_version,
        recorded_us,
        write_offset,
    )
    body_len = BODY_HEAD_SIZE + len(stream_b) + len(entries)
    len_b = body_len.to_bytes(4, "little")
    crc = crc32c(entries, crc32c(stream_b, crc32c(head, crc32c(len_b))))
    return [FRAME_MAGIC, crc.to_bytes(4, "little"), len_b, head, stream_b, entries]


class FrameError(Exception):
    """A frame that does not parse or check (internal: the log turns it into a verdict)."""

    def __init__(self, reason: str, incomplete: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.incomplete = incomplete
        self.offset = 0  # where in the buffer, when the raiser knows


def container_size(buf: bytes | memoryview, off: int, body_len: int) -> int:
    """The uncompressed size a compressed frame at ``buf[off:]`` states, checked against its
    codec and the bounds; raises FrameError."""
    if body_len <= BODY_HEAD_SIZE + CONTAINER_HEAD_SIZE:
        raise FrameError("compressed frame fields out of range")
    codec, raw_len = CONTAINER_HEAD.unpack_from(buf, off + FRAME_HEADER_SIZE + BODY_HEAD_SIZE)
    if codec != CODEC_ZSTD:
        raise FrameError(f"unknown compression codec {codec}")
    if not FRAME_HEADER_SIZE + BODY_HEAD_SIZE <= raw_len <= MAX_CONTAINER_RAW:
        raise FrameError(f"compressed frame states an impossible uncompressed size {raw_len}")
    return int(raw_len)


def check_frame(buf: bytes | memoryview, off: int, end: int) -> FrameInfo:
    """Validate the frame at ``buf[off:]`` (bounded by ``end``) and return its header fields.

    Raises FrameError with ``incomplete=True`` when the buffer ends before the frame does.
    """
    if end - off < FRAME_HEADER_SIZE:
        raise FrameError("frame header cut short", incomplete=True)
    magic, crc, body_len = FRAME_HEADER.unpack_from(buf, off)
    if magic != FRAME_MAGIC:
        raise FrameError(f"bad frame magic {bytes(magic)!r}")
    if body_len < BODY_HEAD_SIZE or body_len > MAX_FRAME_BODY:
        raise FrameError(f"impossible frame length {body_len}")
    body_start = off + FRAME_HEADER_SIZE
    if end - body_start < body_len:
        raise FrameError("frame body cut short", incomplete=True)
    actual = crc32c(buf[off + FRAME_LENGTH_AT : body_start + body_len])
    if actual != crc:
        raise FrameError(f"frame checksum mismatch (stored {crc:#010x}, computed {actual:#010x})")
    kind, flags, slen, count, first_pos, first_ver, rec_us, woff = BODY_HEAD.unpack_from(
        buf, body_start
    )
    if kind == FRAME_KIND_EVENTS:
        if count == 0 or BODY_HEAD_SIZE + slen > body_len:
            raise FrameError("frame header fields out of range")
    elif kind == FRAME_KIND_CHECKPOINT:
        if count != 0 or BODY_HEAD_SIZE + slen != body_len:
            raise FrameError("checkpoint frame fields out of range")
    elif kind == FRAME_KIND_METADATA:
        if count != 0 or BODY_HEAD_SIZE + slen >= body_len:
            raise FrameError("metadata frame fields out of range")
    elif kind == FRAME_KIND_COMPRESSED:
        if slen != 0:
            raise FrameError("compressed frame fields out of range")
        container_size(buf, off, body_len)
    else:
        raise FrameError(f"unknown frame kind {kind}")
    s0 = body_start + BODY_HEAD_SIZE
    try:
        # (earlier builds let a checkpoint name with a lone surrogate through, encoded with
        # "surrogatepass": read it back, rather than refuse every event written after it)
        stream = bytes(buf[s0 : s0 + slen]).decode(
            "utf-8", "surrogatepass" if kind == FRAME_KIND_CHECKPOINT else "strict"
        )
    except UnicodeDecodeError as exc:
        raise FrameError("stream name is not UTF-8") from exc
    return FrameInfo(
        off,
        FRAME_HEADER_SIZE + body_len,
        FRAME_HEADER_SIZE + BODY_HEAD_SIZE + slen,
        stream,
        count,
        first_pos,
        first_ver,
        rec_us,
        woff,
        kind,
        flags,
    )


# --- snapshot file: one per stream, beside the segments (FORMAT.md, "Snapshot file") ---------
SNAPSHOT_MAGIC: Final = b"AIOESNAP"
SNAPSHOT_FORMAT_VERSION: Final = 1
SNAPSHOT_SUFFIX: Final = ".snap"
SNAPSHOT_TEMP_SUFFIX: Final = ".snap-tmp"
SNAPSHOT_NAME_HEX: Final = 32  # hex digits of SHA-256(stream name) in the file name
# magic 8s | crc32c I (over bytes 12 .. end of file) | format version H | flags H |
# stream name length H | type name length H | state length I | version q | position q |
# event id 16s (of the event at ``version``)
SNAPSHOT_HEADER: Final = struct.Struct("<8sIHHHHIqq16s")
SNAPSHOT_HEADER_SIZE: Final = SNAPSHOT_HEADER.size  # 56
SNAPSHOT_CRC_FROM: Final = 12
MAX_SNAPSHOT_STATE_BYTES: Final = (1 << 32) - 1
assert SNAPSHOT_HEADER_SIZE == 56


class SnapshotFields(NamedTuple):
    """The fields of a checked snapshot file."""

    stream: str
    type_name: str
    version: int
    position: int
    event_id: bytes
    state: bytes  # the encoded state (MessagePack)

    @property
    def stored(self) -> Stored:
        """Which snapshot this is: version, position and event id."""
        return Stored(self.version, self.position, self.event_id)


class Stored(NamedTuple):
    """Which snapshot of a stream is on disk: its version, and the position and id of the
    event at that version when it was saved (to tell whether it still matches the log)."""

    version: int
    position: int
    event_id: bytes


def snapshot_name(stream_b: bytes) -> str:
    """File name of a stream's snapshot: stream names can hold any character, so the name
    is derived from their SHA-256 (the stream name itself is stored inside the file)."""
    return hashlib.sha256(stream_b).hexdigest()[:SNAPSHOT_NAME_HEX] + SNAPSHOT_SUFFIX


def pack_snapshot(
    stream_b: bytes, type_b: bytes, version: int, position: int, event_id: bytes, state: bytes
) -> bytes:
    """The whole content of a snapshot file."""
    head = SNAPSHOT_HEADER.pack(
        SNAPSHOT_MAGIC,
        0,
        SNAPSHOT_FORMAT_VERSION,
        0,
        len(stream_b),
        len(type_b),
        len(state),
        version,
        position,
        event_id,
    )
    body = head[SNAPSHOT_CRC_FROM:] + stream_b + type_b + state
    return SNAPSHOT_MAGIC + crc32c(body).to_bytes(4, "little") + body


def unpack_snapshot(raw: bytes) -> SnapshotFields:
    """Check a snapshot file's bytes and return its fields; ValueError says what is wrong."""
    if len(raw) < SNAPSHOT_HEADER_SIZE:
        raise ValueError(f"snapshot file is {len(raw)} bytes, shorter than its header")
    magic, crc, fmt, _flags, slen, tlen, size, version, position, event_id = (
        SNAPSHOT_HEADER.unpack_from(raw)
    )
    if magic != SNAPSHOT_MAGIC:
        raise ValueError(f"bad snapshot magic {bytes(magic)!r}")
    actual = crc32c(raw[SNAPSHOT_CRC_FROM:])
    if actual != crc:
        raise ValueError(
            f"snapshot checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
        )
    if fmt != SNAPSHOT_FORMAT_VERSION:
        raise ValueError(
            f"unsupported snapshot format version {fmt} (this build reads "
            f"{SNAPSHOT_FORMAT_VERSION})"
        )
    if SNAPSHOT_HEADER_SIZE + slen + tlen + size != len(raw) or version < 0 or position < 0:
        raise ValueError("snapshot header fields do not match the file")
    s0 = SNAPSHOT_HEADER_SIZE
    t0 = s0 + slen
    try:
        stream = raw[s0:t0].decode("utf-8")
        type_name = raw[t0 : t0 + tlen].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"snapshot stream or type name is not UTF-8: {exc}") from None
    return SnapshotFields(stream, type_name, version, position, bytes(event_id), raw[t0 + tlen :])
