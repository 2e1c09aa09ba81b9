"""Events ↔ bytes. The only module that imports msgpack (and ormsgpack, which reads).

Producers call :func:`encode_events` in their own task, before anything is queued, so bad input
fails there and the commit loop only ever sees bytes. Readers call :func:`decode_frame_events`
off the event loop. Snapshot states go through :func:`pack_state` / :func:`unpack_state`.
"""

from __future__ import annotations

import base64
import math
import os
import struct
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any, Final, TypeVar

import msgpack
import ormsgpack
from pydantic import BaseModel, ValidationError

from . import events
from ._format import (
    BODY_HEAD_SIZE,
    ENTRY_HEAD,
    ENTRY_HEAD_SIZE,
    FRAME_FLAG_SCHEMA,
    FRAME_HEADER_SIZE,
    FRAME_KIND_CHECKPOINT,
    FRAME_KIND_COMPRESSED,
    FRAME_KIND_EVENTS,
    FRAME_KIND_METADATA,
    FRAME_LENGTH_AT,
    FRAME_MAGIC,
    MAX_TYPE_NAME_BYTES,
    SCHEMA_VERSION,
    SCHEMA_VERSION_SIZE,
    FrameError,
    FrameInfo,
    crc32c,
)
from ._schema import Decoder, UpcastFailed, build_decoder, many_validator, state_validator
from .errors import EventDecodeError, EventTooLarge
from .events import NO_METADATA, Event, NewEvent, RecordedEvent, _generation

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
S = TypeVar("S", bound=BaseModel)
TypeFields = tuple[bytes, bytes, bytes, int, int, Callable[..., bytes]]
TYPE_FIELDS: dict[type[Event], TypeFields] = {}
"""Event class → its :func:`_type_fields`, once the class has passed their checks: a class
found here can be encoded without any (``_prepare.py``'s fast path reads it)."""


def _default(obj: object) -> object:
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, int):  # (MessagePack calls this for ints it cannot hold)
        raise OverflowError(
            f"the int {obj!r:.40} is out of range: stored ints fit in 64 bits, [-2**63, 2**64)"
        )
    raise TypeError(f"cannot store a value of type {type(obj).__name__}")


_ids = threading.local()
_V4_BITS = (0x4 << 76) | (0x2 << 62)  # version 4, RFC 4122 variant
_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))  # byte 6: version 4
_VARIANT_1 = bytes((b & 0x3F) | 0x80 for b in range(256))  # byte 8: RFC 4122 variant
_POOL_IDS = 512


ID_POOL: list[bytes] = []
"""Event ids drawn but not handed out yet (see :func:`new_event_id`)."""
_SPLIT_IDS = struct.Struct("16s" * _POOL_IDS)  # the pool's draw, cut into ids in one call


def new_event_id() -> bytes:
    """16 bytes of a random (version 4) UUID.

    ``uuid.uuid4()`` makes one ``getrandom`` system call per id, which was a fifth of the
    append path's CPU under load; this draws randomness for 512 ids at a time from the same
    source (``os.urandom``) and sets the version and variant bits of all of them with two byte
    translations. The pool is shared by all threads (``list.pop`` is atomic, so no id is
    handed out twice) and emptied in a forked child, which must not repeat its parent's ids.
    """
    try:
        return ID_POOL.pop()
    except IndexError:
        raw = bytearray(os.urandom(16 * _POOL_IDS))
        raw[6::16] = raw[6::16].translate(_VERSION_4)
        raw[8::16] = raw[8::16].translate(_VARIANT_1)
        ID_POOL.extend(_SPLIT_IDS.unpack(raw))
        return ID_POOL.pop()


def _forget_ids_in_child() -> None:
    global _ids
    _ids = threading.local()
    ID_POOL.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_ids_in_child)


def _type_fields(cls: type[Event]) -> TypeFields:
    """The entry's type field for ``cls``: plain (the name), with its schema version, and
    for a frame of this class's events alone, the field and the frame flags it needs; then
    :func:`plain_fields` of the class; last, a ``pack(size, id, len(field), 0, field)`` of
    an entry's head followed by that field, in one call."""
    b = TYPE_FIELDS.get(cls)
    if b is None:
        if not cls.__event_type__:  # es.Event itself
            raise TypeError(
                "es.Event itself has no event type and cannot be appended: append instances "
                "of a subclass (class Deposited(es.Event): ...)"
            )
        name = cls.__event_type__.encode("utf-8")
        if len(name) > MAX_TYPE_NAME_BYTES - SCHEMA_VERSION_SIZE:
            raise ValueError(
                f"event type name of {cls.__qualname__} is {len(name)} bytes, over the limit "
                f"of {MAX_TYPE_NAME_BYTES - SCHEMA_VERSION_SIZE}"
            )
        versioned = name + SCHEMA_VERSION.pack(cls.__schema_version__)
        plain = plain_fields(cls)
        own, flags = (name, 0) if cls.__schema_version__ == 1 else (versioned, FRAME_FLAG_SCHEMA)
        head = struct.Struct(f"{ENTRY_HEAD.format}{len(own)}s").pack
        b = (name, versioned, own, flags, plain, head)
        TYPE_FIELDS[cls] = b
    return b


_PLAIN_TYPES: dict[str, type] = {"str": str, "int": int, "bool": bool, "none": type(None)}
_PLAIN_VALUES = (str, int, bool, type(None))
_NO_DEFAULT = object()
# keys of a schema node that change nothing about how a value is serialized
_NEUTRAL_KEYS = frozenset(
    {
        "type", "schema", "metadata", "ref", "strict", "default", "default_factory",
        "default_factory_takes_data", "validate_default", "on_error", "expected",
        "max_length", "min_length", "pattern", "strip_whitespace", "to_lower", "to_upper",
        "regex_engine", "coerce_numbers_to_str", "multiple_of", "le", "ge", "lt", "gt",
        "validation_alias", "frozen",
    }
)  # fmt: skip


def plain_fields(cls: type[Event]) -> int:
    """The number of fields of ``cls`` when its JSON-mode dump is its instance ``__dict__``
    as it is, else -1 (not 0: a class with no fields of its own, whose ``__dict__`` is
    empty, may dump extra fields or a serializer's output, which were then stored as ``{}``).

    That holds for a model whose every field is a ``str``, ``int``, ``bool``, ``None``, a
    ``Literal`` of those or an optional one, with no serializer, exclusion, computed field,
    extra fields, aliases used for dumping or validator that could leave another type behind:
    pydantic stores exactly those values, and its serializer would return an equal dict.
    The append path then packs ``event.__dict__`` without calling the serializer, the largest
    single cost of encoding a small event. Decided once per class from the pydantic-core
    schema, which is where every one of those features shows; anything not recognised as
    neutral answers -1 (the serializer is used, as for every other class). ``float`` is left
    out on purpose (the rule keeps to types every value of which is a JSON value; a NaN or
    an infinity is not). So is a class with its own ``__init__`` or ``model_post_init``:
    they may set values that were never validated.
    """
    try:
        schema: Any = cls.__pydantic_core_schema__
        if (
            schema.get("type") != "model"
            or schema.get("root_model")
            or schema.get("custom_init")  # its own __init__ may set anything, unvalidated
            or schema.get("post_init")  # so may model_post_init (a PrivateAttr's too: slower)
            or "serialization" in schema
            or cls.model_config.get("extra") == "allow"
            or cls.model_config.get("serialize_by_alias")
        ):
            return -1
        inner = schema["schema"]
        if (
            inner.get("type") != "model-fields"
            or inner.get("computed_fields")
            or inner.get("extra_behavior") == "allow"
            or "serialization" in inner
        ):
            return -1
        fields = inner["fields"]
        for f in fields.values():
            if f.get("type") != "model-field" or not set(f) <= {
                "type",
                "schema",
                "metadata",
                "validation_alias",
                "frozen",
            }:
                return -1
            node = f["schema"]
            default: Any = _NO_DEFAULT  # a default pydantic stores without validating it
            while True:
                if not set(node) <= _NEUTRAL_KEYS:
                    return -1
                kind = node["type"]
                if kind == "default":
                    if not node.get("validate_default"):
                        if "default_factory" in node:  # its values are stored as they come
                            return -1
                        default = node.get("default")
                    node = node["schema"]
                    continue
                if kind == "nullable":
                    if default is None:
                        default = _NO_DEFAULT
                    node = node["schema"]
                    continue
                if kind == "literal":
                    if not all(type(v) in _PLAIN_VALUES for v in node["expected"]):
                        return -1
                    if default is not _NO_DEFAULT and not any(
                        type(v) is type(default) and v == default for v in node["expected"]
                    ):
                        return -1
                elif kind not in _PLAIN_TYPES:
                    return -1
                elif default is not _NO_DEFAULT and type(default) is not _PLAIN_TYPES[kind]:
                    return -1  # e.g. ``n: int = True``: stored True, dumped 1
                break
        return len(fields)
    except (AttributeError, KeyError, TypeError):  # a schema shape we do not know
        return -1


STORED_DUMP: Final[dict[str, Any]] = {
    "mode": "json",
    "by_alias": False,
    "exclude_computed_fields": True,
}
"""How event data and snapshot states are dumped to be stored (FORMAT.md): JSON mode, by
field name (also for ``serialize_by_alias`` models: reads validate by name), without
computed fields (derived; and a model with ``extra="forbid"`` would refuse them on read)."""


def _packer() -> Callable[[Any], bytes]:
    """This thread's msgpack packer: ``msgpack.packb`` builds a new Packer per call, which
    costs as much as the packing itself for a small event."""
    try:
        return _ids.pack  # type: ignore[no-any-return]
    except AttributeError:
        pack = _ids.pack = msgpack.Packer().pack
        return pack  # type: ignore[no-any-return]


def _schema_flags(events: Sequence[Event | NewEvent]) -> int:
    """FRAME_FLAG_SCHEMA when any event's class is past schema version 1, else 0."""
    for item in events:
        event = item.event if isinstance(item, NewEvent) else item
        if getattr(type(event), "__schema_version__", 1) != 1:
            return FRAME_FLAG_SCHEMA
    return 0


def encode_events(
    stream: str, events: Sequence[Event | NewEvent], max_event_bytes: int, max_append_bytes: int
) -> tuple[bytes, bytes, tuple[bytes, ...] | None, bool, int]:
    """Encode one append's events: their 16-byte ids, one after the other in one bytes object
    (not a tuple: one less object for the cyclic GC per append in flight), the frame's entry
    bytes, and each event's
    packed metadata (None when no event has any; the live fan-out decodes it from there so
    that live and replayed events carry the same metadata), whether the caller chose
    every id (only then can a retry repeat them), and the frame flags the entries need
    (FRAME_FLAG_SCHEMA when some event's class is past schema version 1: then every entry's
    type field carries its schema version; otherwise 0 and the version 1 layout).

    Raises TypeError for objects that are not events, ValueError for metadata that cannot be
    stored, and EventTooLarge past the size limits. Nothing is queued until this succeeds.

    The data is ``model_dump(mode="json")`` packed with msgpack; the model's serializer is
    called directly (the same call ``model_dump`` makes with its defaults, without its
    Python-level wrapper), which halves the cost of a small event, or not at all for a class
    of plain fields (:func:`plain_fields`), whose ``__dict__`` is that dump already.
    """
    parts: list[bytes] = []
    ids: list[bytes] = []
    metas: list[bytes] = []
    any_meta = False
    own_ids = True
    total = 0
    pack = _packer()
    pack_head = ENTRY_HEAD.pack
    last_cls: type | None = None
    plain = -1
    type_b = b""
    dump: Callable[..., Any] = _no_dump
    event: Event
    flags = _schema_flags(events)
    field = flags & FRAME_FLAG_SCHEMA  # whether every entry carries its schema version
    for i, item in enumerate(events):
        cls: type[Any] = type(item)
        if cls is last_cls or isinstance(item, Event):
            event = item  # type: ignore[assignment]
            eid = new_event_id()
            own_ids = False
            meta = b""
        elif isinstance(item, NewEvent):
            event = item.event
            if item.id is not None:
                eid = item.id.bytes
            else:
                eid = new_event_id()
                own_ids = False
            meta = _pack_metadata(stream, i, item.metadata) if item.metadata else b""
            any_meta = any_meta or bool(meta)
            cls = type(event)
        else:
            raise TypeError(
                f"append to stream {stream!r}: item {i} is a {type(item).__name__}, "
                "expected an es.Event or es.NewEvent"
            )
        if cls is not last_cls:
            last_cls = cls
            name_b, versioned, _own, _flags, plain, _head = _type_fields(cls)
            type_b = versioned if field else name_b
            dump = cls.__pydantic_serializer__.to_python
        try:
            value = event.__dict__
            if len(value) != plain:  # see plain_fields
                value = dump(event, **STORED_DUMP)
            data = pack(value)
        except Exception as exc:  # (only an error costs anything here)
            raise unstorable(stream, i, event, exc) from exc
        size = ENTRY_HEAD_SIZE - 4 + len(type_b) + len(meta) + len(data)
        if size > max_event_bytes:
            raise EventTooLarge(
                stream,
                f"event {i} ({event.__event_type__})",
                size,
                max_event_bytes,
                "max_event_bytes",
            )
        total += size + 4
        if total > max_append_bytes:  # (summed on, to give the append's size, not kept)
            continue
        ids.append(eid)
        metas.append(meta)
        parts.append(pack_head(size, eid, len(type_b), len(meta)))
        parts.append(type_b)
        parts.append(meta)
        parts.append(data)
    if total > max_append_bytes:
        raise EventTooLarge(
            stream, f"append of {len(events)} events", total, max_append_bytes, "max_append_bytes"
        )
    return b"".join(ids), b"".join(parts), tuple(metas) if any_meta else None, own_ids, flags


def encode_event(
    stream: str, event: Event, max_event_bytes: int, max_append_bytes: int | None = None
) -> tuple[bytes, bytes, None, bool, int]:
    """:func:`encode_events` for the most common append: one event, no metadata, a
    generated id (same result, a third of the Python steps; the same limits, the append's
    too when ``max_append_bytes`` is given)."""
    cls = type(event)
    fields = TYPE_FIELDS.get(cls)
    if fields is None:
        fields = _type_fields(cls)
    _plain, _versioned, type_b, flags, plain, _head = fields
    try:
        pack = _ids.pack  # _packer(), without the call once this thread has one
    except AttributeError:
        pack = _packer()
    try:
        value = event.__dict__
        if len(value) != plain:  # not a plain class (plain is -1), or something added a key
            value = cls.__pydantic_serializer__.to_python(event, **STORED_DUMP)
        data = pack(value)
    except Exception as exc:  # (only an error costs anything here)
        raise unstorable(stream, 0, event, exc) from exc
    size = ENTRY_HEAD_SIZE - 4 + len(type_b) + len(data)
    if size > max_event_bytes:
        raise EventTooLarge(
            stream, f"event 0 ({event.__event_type__})", size, max_event_bytes, "max_event_bytes"
        )
    if max_append_bytes is not None and size + 4 > max_append_bytes:  # (as encode_events)
        raise EventTooLarge(
            stream, "append of 1 events", size + 4, max_append_bytes, "max_append_bytes"
        )
    try:
        eid = ID_POOL.pop()  # new_event_id(), without the call while the pool lasts
    except IndexError:
        eid = new_event_id()
    entry = ENTRY_HEAD.pack(size, eid, len(type_b), 0) + type_b + data
    return eid, entry, None, False, flags


def unstorable(stream: str, index: int, event: Event, exc: Exception) -> Exception:
    """The error for an event whose data cannot be stored (its JSON-mode dump failed, or
    msgpack cannot pack a value of it: an int outside -2**63..2**64-1, a str that is not
    valid Unicode, a type it does not know): a TypeError or ValueError, as ``exc`` was,
    naming the stream, the event and, when one value alone fails, its field."""
    field = ""
    try:
        dumped = type(event).__pydantic_serializer__.to_python(event, **STORED_DUMP)
    except Exception:
        dumped = None
    if isinstance(dumped, dict):
        for name, value in dumped.items():
            try:
                msgpack.packb(value)
            except Exception:
                field = f" field {name!r}"
                break
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, OverflowError):
        reason += " (stored integers are -2**63 to 2**64-1)"
    kind = TypeError if isinstance(exc, TypeError) else ValueError
    return kind(
        f"append to stream {stream!r}: event {index} ({event.__event_type__}){field} cannot "
        f"be stored: {reason}"
    )


def _no_dump(obj: Any, **kw: Any) -> Any:  # pragma: no cover - replaced before first use
    raise AssertionError


_unpack_fast: Callable[[bytes | memoryview], Any] = ormsgpack.unpackb


def unpack_stored(packed: bytes | memoryview) -> Any:
    """A stored payload (event data or metadata), as reads return it.

    ormsgpack reads the small maps events are made of in half msgpack's time (replay's
    largest single cost after validation); what it refuses and msgpack reads (bytes map keys,
    extension types) msgpack reads, and damage raises msgpack's error (with ormsgpack 1.13.1
    or later, as pyproject.toml requires: older versions read some payloads otherwise, or
    crash on a damaged length). One difference is left: bytes after the payload's one object
    are ignored (msgpack raises ``ExtraData``).
    The writer never leaves any, and the frame's checksum covers the payload.
    """
    try:
        return _unpack_fast(packed)
    except Exception:
        # (map keys other than str and bytes are read too: earlier builds let nested
        # metadata keys of any type through)
        return msgpack.unpackb(packed, strict_map_key=False)


def unpack_metadata(packed: bytes) -> Mapping[str, Any]:
    """Metadata as reads return it, from the bytes ``encode_events`` packed."""
    return unpack_stored(packed) if packed else NO_METADATA


def _pack_metadata(stream: str, index: int, metadata: Mapping[str, Any]) -> bytes:
    """An event's metadata as stored. Its keys must be strs, and those of the maps inside it
    strs or bytes: what MessagePack reads back as map keys (any other key was stored, then
    refused by every read, and by live subscribers, after the append was acknowledged)."""
    nested = False
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise ValueError(
                f"append to stream {stream!r}: event {index} metadata key {key!r} is not a str"
            )
        if type(value) not in _SCALARS:
            nested = True
    problem = None
    if nested:
        try:  # (ormsgpack takes only str keys, 255 levels at most: then all is well; it
            # reads a dict's storage, not an overridden items(): subclasses are left to the
            # walk, which looks as msgpack does)
            ormsgpack.packb(metadata, option=ormsgpack.OPT_PASSTHROUGH_SUBCLASS)
        except Exception:
            problem = _nested_problem(metadata)
    if problem is not None:
        raise ValueError(f"append to stream {stream!r}: event {index} metadata {problem}")
    try:
        return msgpack.packb(dict(metadata), default=_default)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(
            f"append to stream {stream!r}: event {index} metadata cannot be stored: {exc}"
        ) from exc


def _nested_problem(metadata: Mapping[str, Any]) -> str | None:
    """What is wrong inside ``metadata`` (a map of str keys), if anything: a key of a map
    inside it that is neither a str nor bytes (``"key 1 in ['a'][0] is not a str or
    bytes"``), maps and lists nested deeper than ``_MAX_DEPTH`` (msgpack packs 1,025 levels
    but reads 1,024: deeper metadata was stored, then refused by every read), or a map or
    list that holds itself. Asked only of metadata ormsgpack refuses (see the caller).

    Each container is walked once, depth first, iteratively, and its height (the levels of
    maps and lists in it, itself included) kept, so that one held in several places is
    judged by where it lies deepest without being walked again (walking it again at every
    depth cost seconds, or gigabytes).
    """
    heights: dict[int, int] = {}
    for key, top in metadata.items():
        if not isinstance(top, Mapping | list | tuple):
            continue
        height = heights.get(id(top))
        if height is None:
            problem = _walk(top, key, heights)
            if problem is not None:
                return problem
            height = heights[id(top)]
        if 1 + height > _MAX_DEPTH:
            return f"is nested more than {_MAX_DEPTH} maps and lists deep"
    return None


def _walk(top: Any, key: Any, heights: dict[int, int]) -> str | None:
    """:func:`_nested_problem` for one value of the metadata map: fills ``heights``."""
    bad = _odd_key(top)
    if bad is not _NO_KEY:
        return f"key {bad!r} in {_where([key])} is not a str or bytes"
    path = [key]  # the keys down to the container on top of the stack
    stack = [(top, _containers(top), 0)]
    on_path = {id(top)}
    while stack:
        node, children, i = stack[-1]
        if i < len(children):
            stack[-1] = (node, children, i + 1)
            step, child = children[i]
            if id(child) in on_path:
                return f"holds itself (at {_where([*path, step])})"
            known = heights.get(id(child))
            if known is not None:  # (walked already, from elsewhere: its height stands)
                if len(stack) + 1 + known > _MAX_DEPTH:
                    return f"is nested more than {_MAX_DEPTH} maps and lists deep"
                continue
            if len(stack) + 1 >= _MAX_DEPTH:
                return f"is nested more than {_MAX_DEPTH} maps and lists deep"
            bad = _odd_key(child)
            if bad is not _NO_KEY:
                return f"key {bad!r} in {_where([*path, step])} is not a str or bytes"
            path.append(step)
            on_path.add(id(child))
            stack.append((child, _containers(child), 0))
            continue
        stack.pop()
        path.pop()
        on_path.discard(id(node))
        heights[id(node)] = 1 + max((heights[id(c)] for _, c in children), default=0)
    return None


def _containers(value: Any) -> list[tuple[Any, Any]]:
    """The maps and lists a map or list holds, with their keys or indexes."""
    items = value.items() if isinstance(value, Mapping) else enumerate(value)
    return [(k, v) for k, v in items if isinstance(v, Mapping | list | tuple)]


def _odd_key(value: Any) -> Any:
    """A key of ``value`` (when a map) that is neither a str nor bytes, else ``_NO_KEY``."""
    if isinstance(value, Mapping):
        for k, _v in value.items():  # (as msgpack and the first pass see the keys)
            if not isinstance(k, str | bytes):
                return k
    return _NO_KEY


_NO_KEY = object()  # (None is a key that can be wrong)


def _where(path: list[Any]) -> str:
    return "".join(f"[{step!r}]" for step in path)


_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
_MAX_DEPTH = 512  # (counting the metadata map itself; far under what msgpack reads)


# --- the JSON view of stored values (RecordedEvent.to_json) ---------------------------------
def json_ready(value: Any) -> Any:
    """``value`` with what JSON cannot hold written as :meth:`RecordedEvent.to_json` says
    (here: the only module that imports msgpack). One Python frame per level, no
    comprehension: metadata may be 512 levels deep, under the interpreter's 1,000 frames."""
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            out[_json_key(k)] = json_ready(v)
        return out
    if isinstance(value, msgpack.ExtType):  # (a named tuple: before the tuples)
        return {"$ext": value.code, "$base64": base64.b64encode(value.data).decode("ascii")}
    if isinstance(value, list | tuple):
        items: list[Any] = []
        for v in value:
            items.append(json_ready(v))
        return items
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, msgpack.Timestamp):
        return value.to_datetime().isoformat()
    if value is None or isinstance(value, str | int | float):
        return value
    return str(value)


def _json_key(key: Any) -> Any:
    if isinstance(key, bytes):
        return "$base64:" + base64.b64encode(key).decode("ascii")
    if isinstance(key, float) and not math.isfinite(key):
        return json_ready(key)
    if key is None or isinstance(key, str | int | float):
        return key  # (json writes these as strs)
    return str(key)


events._json_ready = json_ready  # (events cannot import the codec: the codec imports it)


def pack_stream_metadata(fields: Mapping[str, int]) -> bytes:
    """The body of a metadata frame after the stream name: a MessagePack map of str → int."""
    return msgpack.packb(dict(fields))  # type: ignore[no-any-return]


def unpack_stream_metadata(raw: bytes | memoryview) -> dict[str, int]:
    """The map a metadata frame holds; FrameError when it is not a map of str → int."""
    try:
        fields = msgpack.unpackb(raw)
    except Exception as exc:  # msgpack raises several unrelated types
        raise FrameError(f"undecodable stream metadata: {exc}") from exc
    if not isinstance(fields, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in fields.items()
    ):
        raise FrameError("stream metadata is not a map of str to int")
    return fields


def recorded_at(us: int) -> datetime:
    """The aware UTC datetime for a frame's recorded_at field."""
    return _EPOCH + timedelta(0, 0, us)  # (positional: a third faster than microseconds=us)


_new_tuple = tuple.__new__


class _Whens(dict[int, datetime]):
    """recorded_at datetimes by their µs, made once (on a miss) for the frames of a batch and
    the reads after; forgotten all at once past 4,096 of them."""

    def __missing__(self, us: int) -> datetime:
        if len(self) > 4096:
            self.clear()
        when = self[us] = recorded_at(us)
        return when


_when: Callable[[int], datetime] = _Whens().__getitem__


def _decoder(
    field: bytes,
    versioned: bool,
    as_dicts: bool,
    types: frozenset[str] | None,
    stream: str,
    position: int,
) -> Decoder:
    """The decoder for an entry's type field (FORMAT.md): the type name, followed by its
    schema version in frames with FRAME_FLAG_SCHEMA; without it the version is 1."""
    if versioned:
        if len(field) < SCHEMA_VERSION_SIZE:
            raise FrameError(f"type field of the event at position {position} has no version")
        cut = len(field) - SCHEMA_VERSION_SIZE
        (version,) = SCHEMA_VERSION.unpack_from(field, cut)
        name = field[:cut].decode("utf-8")
    else:
        version = 1
        name = field.decode("utf-8")
    return build_decoder(name, version, as_dicts, types, stream, position)


TypeCache = dict[bytes, Decoder]
"""Decoders by entry type field, for frames without FRAME_FLAG_SCHEMA (first) and with it."""


def new_type_caches() -> tuple[TypeCache, TypeCache]:
    """Empty decoder caches for one read call (decoders depend on the registry at read time)."""
    return {}, {}


class SharedTypeCaches:
    """Decoder caches shared by a store's stream reads (``read_stream``, and subscriptions
    to one stream), for as long as the registry (names, aliases, upcasters) does not
    change: a short read (an aggregate's few events) then finds its decoders built instead
    of building them again (a registry lookup and a closure per type and read: about 1 µs
    of a one-event read). A registration starts them afresh: a step already decoding goes
    on with the decoders it has, and the next step of the same read takes the new ones, as
    with a :func:`new_type_caches` per step. Filled from any thread: a decoder built twice
    at once is the same decoder."""

    def __init__(self) -> None:
        self._by_mode: dict[bool, tuple[TypeCache, TypeCache]] = {}  # by as_dicts
        self._generation = -1  # the registry's generation they were filled under

    def get(self, as_dicts: bool) -> tuple[TypeCache, TypeCache]:
        """The caches for reads with (or without) ``as_dicts``."""
        generation = _generation[0]
        if self._generation != generation:
            self._by_mode = {}
            self._generation = generation
        got = self._by_mode.get(as_dicts)
        if got is None:
            got = self._by_mode[as_dicts] = new_type_caches()
        return got


def decode_frame_events(
    buf: bytes | memoryview,
    frame_start: int,
    info: FrameInfo,
    lo: int,
    hi: int,
    types: frozenset[str] | None,
    out: list[RecordedEvent],
    as_dicts: bool = False,
    caches: tuple[TypeCache, TypeCache] | None = None,
    hidden: Mapping[str, tuple[int, int]] | None = None,
) -> None:
    """Append to ``out`` the events of a checked frame with positions in ``[lo, hi]`` (and a
    stored type name in ``types``, when given), in order. Skipped events are not decoded;
    neither are those ``hidden`` maps out of sight (stream → (first visible version, oldest
    visible recorded_at in µs), from the streams' retention metadata).

    Data is validated with the model's compiled pydantic-core validator, after the upcasters
    when the event's schema version is older than its class's. ``caches`` (from
    :func:`new_type_caches`) may be shared by the calls of one read.
    """
    at = frame_start + info.entries_at
    end = frame_start + info.length
    when = _when(info.recorded_at_us)
    unpackb = unpack_stored
    unpack_head = ENTRY_HEAD.unpack_from
    stream = info.stream
    first_pos = info.first_position
    first_ver = info.first_version
    versioned = bool(info.flags & FRAME_FLAG_SCHEMA)
    if caches is None:
        caches = new_type_caches()
    cache = caches[1] if versioned else caches[0]
    min_version = -1
    if hidden:
        h = hidden.get(stream)
        if h is not None:
            if info.recorded_at_us < h[1] or first_ver + info.event_count <= h[0]:
                return
            min_version = h[0]
    for k in range(info.event_count):
        if end - at < ENTRY_HEAD_SIZE:
            raise FrameError("event entry runs past its frame")
        size, eid, tlen, mlen = unpack_head(buf, at)
        nxt = at + 4 + size
        if nxt > end or size < ENTRY_HEAD_SIZE - 4 + tlen + mlen:
            raise FrameError("event entry runs past its frame")
        pos = first_pos + k
        if pos > hi:
            break
        if pos < lo or first_ver + k < min_version:
            at = nxt
            continue
        t0 = at + ENTRY_HEAD_SIZE
        field = bytes(buf[t0 : t0 + tlen])
        try:
            type_name, decode, keep = cache[field]
        except KeyError:
            try:
                decoder = _decoder(field, versioned, as_dicts, types, stream, pos)
            except UnicodeDecodeError as exc:
                raise FrameError(f"type name at position {pos} is not UTF-8") from exc
            type_name, decode, keep = cache[field] = decoder
        if not keep:
            at = nxt
            continue
        m0 = t0 + tlen
        try:
            meta = unpackb(buf[m0 : m0 + mlen]) if mlen else NO_METADATA
            data = unpackb(buf[m0 + mlen : nxt])
        except Exception as exc:  # msgpack raises several unrelated types
            raise FrameError(f"undecodable event payload at position {pos}: {exc}") from exc
        if decode is not None:
            try:
                data = decode(data)
            except Exception as exc:  # (a validator of the class may raise anything)
                raise EventDecodeError(stream, pos, type_name, _why(exc)) from exc
        out.append(
            _new_tuple(
                RecordedEvent,
                (stream, first_ver + k, pos, eid, type_name, data, meta, when),
            )
        )
        at = nxt


def _why(exc: Exception) -> str:
    """What a failed decode says: pydantic's and the upcasters' own messages; for anything
    else a validator raised, its type too (a bare ``KeyError('y')`` says little)."""
    if isinstance(exc, ValidationError | UpcastFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


_SPAN_HEAD = struct.Struct("<4sIIBBHIQQqQ")  # frame header + body head, FORMAT.md
assert _SPAN_HEAD.size == FRAME_HEADER_SIZE + BODY_HEAD_SIZE


class _Names(dict[bytes, str]):
    """Stream names by their stored bytes, decoded once (on a miss) and kept for the next
    frames; forgotten all at once past 65,536 of them. ``UnicodeDecodeError`` on bad bytes."""

    def __missing__(self, raw: bytes) -> str:
        if len(self) > 65536:
            self.clear()
        name = self[raw] = raw.decode("utf-8")
        return name


_stream_names = _Names()


def decode_span(
    buf: bytes,
    first_position: int,
    lo: int,
    hi: int,
    types: frozenset[str] | None,
    prefixes: tuple[str, ...] | None,
    out: list[RecordedEvent],
    as_dicts: bool = False,
    expand: Callable[[bytes, int, int], bytes] | None = None,
    caches: tuple[TypeCache, TypeCache] | None = None,
    hidden: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[int, int]:
    """Check and decode a buffer of whole, back-to-back frames whose first event has
    ``first_position``; append the events in ``[lo, hi]`` (passing the filter: ``types`` are
    stored type names) to ``out``.

    Every frame's checksum is verified and positions must increase (from the first frame on,
    which holds ``first_position``: they skip where scavenging removed frames, and the caller
    compares the end with its index); checkpoint and metadata frames are skipped. ``hidden``
    maps a stream to (its first visible version, its oldest visible recorded_at in µs) per its
    retention metadata: hidden events are skipped before they are decoded, whole frames at
    once where they can be. A compressed frame (a container) is decompressed by
    ``expand(buf, start, end)`` (its inner bytes) only when it holds events in ``[lo, hi]``,
    and decoded in turn; the first frame may be a container that starts before
    ``first_position`` and holds it. Returns the first position of the last frame holding
    events and the position after the last event in the buffer. Raises FrameError (with
    ``.offset`` set to the frame's offset in ``buf``) on any damage, EventDecodeError (or
    MissingUpcaster) for an event its class does not accept. ``caches`` (internal) shares
    the type-field decoders with the containers' inner frames.

    The replay hot path. Without a filter the buffer goes to the batch path first
    (:func:`_span_batch`: the same checks, the events decoded in columns); if it meets
    anything else (damage, an event its class rejects, a failing upcaster) the reference loop
    does the whole buffer again and reports it: both give the same records and the same
    errors (tests/test_replay_batch.py).
    """
    if caches is None:
        caches = new_type_caches()
    if types is None and prefixes is None:
        try:
            got, last_first, pos = _span_batch(
                buf, first_position, lo, hi, as_dicts, expand, caches, hidden
            )
        except DecodeElsewhere:
            raise
        except Exception:  # anything unusual: the reference loop decides (and names the error)
            pass
        else:
            out += got
            return last_first, pos
    return _span_loop(
        buf, first_position, lo, hi, types, prefixes, out, as_dicts, expand, caches, hidden
    )


class DecodeElsewhere(Exception):
    """Raised by a caller's ``expand`` (:func:`decode_span`): the caller decodes this span
    some other way (on another thread); it passes through the batch path untouched."""


class _Bail(Exception):
    """Internal: the batch path met something only the reference loop handles."""


def _span_batch(
    buf: bytes,
    first_position: int,
    lo: int,
    hi: int,
    as_dicts: bool,
    expand: Callable[[bytes, int, int], bytes] | None,
    caches: tuple[TypeCache, TypeCache],
    hidden: Mapping[str, tuple[int, int]] | None = None,
    only: str | None = None,
    firsts: list[int] | None = None,
) -> tuple[list[RecordedEvent], int, int]:
    """:func:`decode_span` without a filter, in columns: the frames are walked and checked
    (the same checks, the same retention skips), collecting each event's id, payload bytes
    and type decoder; every few hundred events the payloads are unpacked and validated with
    ``map`` (no Python bytecode per event) and the records built from the columns with
    ``zip``. Raises :class:`_Bail` (or whatever a step raised) on anything the reference loop
    reports, leaving the error to it; on success the records are exactly those the loop
    would append. With ``only`` every events frame must be that stream's (a stream read);
    ``firsts`` collects each events frame's first position.
    """
    unpack_frame = _SPAN_HEAD.unpack_from
    unpack_entry = ENTRY_HEAD.unpack_from
    names = _stream_names
    plain, versioned = caches
    size = len(buf)
    pos = first_position
    at = 0
    last_us = -1
    last_first = -1
    started = False
    when = _EPOCH
    res: list[RecordedEvent] = []
    streams: list[str] = []  # the columns of the events met since the last flush
    vers: list[int] = []
    poss: list[int] = []
    whens: list[datetime] = []
    eids: list[bytes] = []
    payloads: list[bytes] = []
    metas: list[tuple[int, bytes]] = []  # (index, packed metadata), for the few that have any
    runs: list[tuple[int, str, Callable[[Any], Any] | None]] = []  # (first index, name, decode)
    add_stream, add_ver, add_pos, add_when = streams.append, vers.append, poss.append, whens.append
    add_eid, add_payload = eids.append, payloads.append
    columns = (streams, vers, poss, whens, eids, payloads, metas, runs)
    field = _NO_FIELD  # the type field of the current run, read with ``cache``
    cache = plain
    # A single-event frame is unpacked in one call (header, stream name, entry head, type
    # field) with the layout of the previous such frame's name and type lengths, when it fits.
    one_slen = one_tlen = -1
    one_size = size + 1
    unpack_one: Callable[[Any, int], tuple[Any, ...]] = unpack_frame
    view = memoryview(buf)  # the CRC is taken over a view: no copy of the frame
    # A whole-log read (no ``only``, no ``firsts``) takes runs of such frames in a tighter
    # loop: consecutive positions inside [lo, hi], the flags and type field of the run the
    # previous frame started, no metadata, a stream without retention. Anything else leaves
    # the frame (unread: nothing is changed before the checks pass) to the paths below.
    tight = only is None and firsts is None
    header_size, frame_magic = FRAME_HEADER_SIZE, FRAME_MAGIC
    crc_from, name_of = FRAME_LENGTH_AT, names.__getitem__
    raws: list[bytes] = []  # the run's stream names, as stored
    add_raw = raws.append
    only_raw = only.encode("utf-8") if only is not None and firsts is not None else None
    seen = firsts if firsts is not None else []  # (only_raw: ``firsts`` itself)
    only_str = only or ""
    uss: list[int] = []  # a stream read's run: its frames' recorded_at µs
    add_us = uss.append
    run_fl = -1  # the flags of the events frame that chose ``cache`` (and so ``field``)
    skip = 0  # one_size less the entry head and type field: where the entry size counts from
    while at < size:
        if tight and lo <= pos <= hi and at + one_size <= size and len(field) == one_tlen:
            run0 = pos  # positions (consecutive) and times (few) are added when the run ends
            left = min(_FLUSH_EVENTS - len(eids), hi + 1 - pos)  # to the flush, or to ``hi``
            stop = size - one_size  # the last offset a frame of this layout can start at
            unpack_run, same_head, same_type = _run_layout(run_fl, one_slen, one_tlen, field)
            while True:
                magic, crc, blen, head, fpos, fver, us, raw_name, esize, eid, typ = unpack_run(
                    buf, at
                )
                end = at + header_size + blen
                if (
                    fpos != pos
                    or typ != same_type
                    or head != same_head
                    or magic != frame_magic
                    or end > size
                ):
                    break
                if hidden and name_of(raw_name) in hidden:  # retention: the path below checks
                    break
                if crc32c(view[at + crc_from : end]) != crc:
                    raise _Bail
                nxt = at + skip + esize
                if nxt > end:
                    raise _Bail
                pos = fpos + 1
                if us != last_us:
                    whens += repeat(when, len(eids) - len(whens))
                    when = _when(us)
                    last_us = us
                add_eid(eid)
                add_payload(buf[at + one_size : nxt])
                add_raw(raw_name)
                add_ver(fver)
                at = end
                left -= 1
                if not left or at > stop:
                    break
            if pos != run0:
                streams += map(name_of, raws)  # (a name met for the first time is decoded)
                raws.clear()
                last_first = pos - 1
                poss += range(run0, pos)
                whens += repeat(when, len(eids) - len(whens))
                if len(eids) >= _FLUSH_EVENTS:
                    _flush(res, columns)
                    field = _NO_FIELD
            if at >= size:
                break
        if (
            only_raw
            and started
            and at + one_size <= size
            and len(field) == one_tlen
            and (not hidden or only not in hidden)
        ):
            # A stream read's run of single-event frames, as the loop above for a whole-log
            # read, but for positions, which skip the other streams' events: each must only be
            # in [lo, hi] (the caller compares them with the index's), and the stream name
            # must be the stream's.
            # (Written out apart from the loop above, whose checks and columns differ: one
            # loop for both would test which it is for every frame.)
            left = _FLUSH_EVENTS - len(eids)
            stop = size - one_size
            unpack_run, same_head, same_type = _run_layout(run_fl, one_slen, one_tlen, field)
            n0 = len(eids)
            while True:
                magic, crc, blen, head, fpos, fver, us, raw_name, esize, eid, typ = unpack_run(
                    buf, at
                )
                end = at + header_size + blen
                if (
                    raw_name != only_raw
                    or typ != same_type
                    or head != same_head
                    or magic != frame_magic
                    or end > size
                    or not lo <= fpos <= hi
                ):
                    break
                if crc32c(view[at + crc_from : end]) != crc:
                    raise _Bail
                nxt = at + skip + esize
                if nxt > end:
                    raise _Bail
                add_eid(eid)
                add_payload(buf[at + one_size : nxt])
                add_ver(fver)
                add_pos(fpos)
                add_us(us)
                at = end
                left -= 1
                if not left or at > stop:
                    break
            taken = len(eids) - n0
            if taken:
                last_first = poss[-1]
                pos = last_first + 1
                seen += poss[-taken:]
                streams += repeat(only_str, taken)
                whens += map(_when, uss)
                uss.clear()
                if len(eids) >= _FLUSH_EVENTS:
                    _flush(res, columns)
                    field = _NO_FIELD
            if at >= size:
                break
        if at + one_size <= size:
            (
                magic,
                crc,
                blen,
                kind,
                fl,
                slen,
                count,
                fpos,
                fver,
                us,
                raw_name,
                esize,
                eid,
                tlen,
                mlen,
                tfield,
            ) = unpack_one(buf, at)
            if slen == one_slen and tlen == one_tlen and count == 1 and kind == FRAME_KIND_EVENTS:
                # The same checks and steps as below, for one event (the common frame).
                end = at + FRAME_HEADER_SIZE + blen
                if magic != FRAME_MAGIC or end > size or blen < BODY_HEAD_SIZE:
                    raise _Bail
                if crc32c(view[at + FRAME_LENGTH_AT : end]) != crc:
                    raise _Bail
                if fpos != pos and (fpos < pos or not started):
                    raise _Bail
                started = True
                last_first = fpos
                pos = fpos + 1
                if firsts is not None:
                    firsts.append(fpos)
                stream = names[raw_name]
                if only is not None and stream != only:
                    raise _Bail
                if fpos < lo or fpos > hi:
                    at = end
                    continue
                if hidden:
                    h = hidden.get(stream)
                    if h is not None and (us < h[1] or fver < h[0]):
                        at = end
                        continue
                if us != last_us:
                    when = _when(us)
                    last_us = us
                if (versioned if fl & FRAME_FLAG_SCHEMA else plain) is not cache:
                    cache = versioned if fl & FRAME_FLAG_SCHEMA else plain
                    field = _NO_FIELD
                run_fl = fl
                m0 = at + one_size  # (the type field was unpacked with the head)
                nxt = m0 - tlen - ENTRY_HEAD_SIZE + 4 + esize
                if nxt > end:
                    raise _Bail
                if tfield != field:
                    field = _run(
                        runs, len(eids), tfield, cache, cache is versioned, as_dicts, stream, fpos
                    )
                if mlen:
                    metas.append((len(eids), buf[m0 : m0 + mlen]))
                add_eid(eid)
                add_payload(buf[m0 + mlen : nxt])
                add_stream(stream)
                add_ver(fver)
                add_pos(fpos)
                add_when(when)
                at = end
                if len(eids) >= _FLUSH_EVENTS:
                    _flush(res, columns)
                    field = _NO_FIELD
                continue
        magic, crc, blen, kind, fl, slen, count, fpos, fver, us, _wo = unpack_frame(buf, at)
        end = at + FRAME_HEADER_SIZE + blen
        if magic != FRAME_MAGIC or end > size or blen < BODY_HEAD_SIZE:
            raise _Bail
        if crc32c(view[at + FRAME_LENGTH_AT : end]) != crc:
            raise _Bail
        if kind != FRAME_KIND_EVENTS:
            if kind in (FRAME_KIND_CHECKPOINT, FRAME_KIND_METADATA):
                at = end
                continue
            if kind != FRAME_KIND_COMPRESSED or expand is None or not count:
                raise _Bail
            holds = at == 0 and fpos < pos < fpos + count  # starts before, holds pos
            if (fpos < pos or (fpos > pos and not started)) and not holds:
                raise _Bail
            started = True
            last_first, pos = fpos, fpos + count
            if pos > lo and fpos <= hi:
                _flush(res, columns)
                field = _NO_FIELD
                got, _last, inner_end = _span_batch(
                    expand(buf, at, end), fpos, lo, hi, as_dicts, None, caches, hidden
                )
                if inner_end != pos:
                    raise _Bail
                res += got
            at = end
            continue
        if (fpos != pos and (fpos < pos or not started)) or not count:
            raise _Bail
        started = True
        last_first = fpos
        pos = fpos + count
        if firsts is not None:
            firsts.append(fpos)
        s0 = at + _HEAD_SIZE
        raw_name = buf[s0 : s0 + slen]
        stream = names[raw_name]
        if only is not None and stream != only:
            raise _Bail
        if pos <= lo or fpos > hi:
            at = end
            continue
        min_version = -1
        if hidden:
            h = hidden.get(stream)
            if h is not None:
                if us < h[1] or fver + count <= h[0]:  # the whole frame is hidden
                    at = end
                    continue
                min_version = h[0]
        if us != last_us:
            when = _when(us)
            last_us = us
        if (versioned if fl & FRAME_FLAG_SCHEMA else plain) is not cache:
            cache = versioned if fl & FRAME_FLAG_SCHEMA else plain
            field = _NO_FIELD
        run_fl = fl
        e = s0 + slen
        if count == 1:  # in range and visible, as the checks above show
            esize, eid, tlen, mlen = unpack_entry(buf, e)
            one_slen, one_tlen = slen, tlen  # the next single-event frames take the path above
            unpack_one = _one_frame(slen, tlen)
            one_size = _HEAD_SIZE + slen + ENTRY_HEAD_SIZE + tlen
            skip = _HEAD_SIZE + slen + 4
            nxt = e + 4 + esize
            if nxt > end:
                raise _Bail
            t0 = e + ENTRY_HEAD_SIZE
            m0 = t0 + tlen
            if tlen != len(field) or not buf.startswith(field, t0):
                field = _run(
                    runs, len(eids), buf[t0:m0], cache, cache is versioned, as_dicts, stream, fpos
                )
            if mlen:
                metas.append((len(eids), buf[m0 : m0 + mlen]))
            add_eid(eid)
            add_payload(buf[m0 + mlen : nxt])
            add_stream(stream)
            add_ver(fver)
            add_pos(fpos)
            add_when(when)
            at = end
            if len(eids) >= _FLUSH_EVENTS:
                _flush(res, columns)
                field = _NO_FIELD
            continue
        whole = fpos >= lo and pos <= hi + 1 and fver >= min_version
        for k in range(count):
            esize, eid, tlen, mlen = unpack_entry(buf, e)
            nxt = e + 4 + esize
            if not whole:
                p = fpos + k
                if p < lo or p > hi or fver + k < min_version:
                    e = nxt
                    continue
                add_stream(stream)
                add_ver(fver + k)
                add_pos(p)
                add_when(when)
            t0 = e + ENTRY_HEAD_SIZE
            m0 = t0 + tlen
            if tlen != len(field) or not buf.startswith(field, t0):
                field = _run(
                    runs,
                    len(eids),
                    buf[t0:m0],
                    cache,
                    cache is versioned,
                    as_dicts,
                    stream,
                    fpos + k,
                )
            if mlen:
                metas.append((len(eids), buf[m0 : m0 + mlen]))
            add_eid(eid)
            add_payload(buf[m0 + mlen : nxt])
            e = nxt
        if e > end:  # some entry ran past its frame (the loop's own check, made once)
            raise _Bail
        if whole:
            streams += [stream] * count
            vers += range(fver, fver + count)
            poss += range(fpos, pos)
            whens += [when] * count
        at = end
        if len(eids) >= _FLUSH_EVENTS:
            _flush(res, columns)
            field = _NO_FIELD
    _flush(res, columns)
    return res, last_first, pos


_HEAD_SIZE = FRAME_HEADER_SIZE + BODY_HEAD_SIZE
_FLUSH_EVENTS = 256  # decoded a few at a time: their bytes and dicts stay in the CPU cache
_NO_FIELD = bytes(1 << 16)  # longer than any type field (its length is 16 bits)
_one_frames: dict[tuple[int, int], Callable[[Any, int], tuple[Any, ...]]] = {}
_run_frames: dict[tuple[int, int], Callable[[Any, int], tuple[Any, ...]]] = {}
_SAME_HEAD = struct.Struct("<BBHI")  # a body head's kind, flags, name length, event count
_SAME_TYPE = struct.Struct("<HI")  # an entry's type field and metadata lengths


def _one_frame(slen: int, tlen: int) -> Callable[[Any, int], tuple[Any, ...]]:
    """The unpacker of a single-event frame's head with a ``slen``-byte stream name and a
    ``tlen``-byte type field: frame header and body head (but the write offset), the name,
    the entry head, the type field."""
    got = _one_frames.get((slen, tlen))
    if got is None:
        fmt = _SPAN_HEAD.format[:-1] + f"8x{slen}s" + ENTRY_HEAD.format[1:] + f"{tlen}s"
        got = _one_frames[slen, tlen] = struct.Struct(fmt).unpack_from
    return got


def _run_frame(slen: int, tlen: int) -> Callable[[Any, int], tuple[Any, ...]]:
    """The unpacker of a single-event frame's head for the run loop of :func:`_span_batch`:
    :func:`_one_frame`'s fields, with the body head's kind, flags, name length and count as
    one 8-byte string, and the entry's type and metadata lengths and type field as another."""
    got = _run_frames.get((slen, tlen))
    if got is None:
        fmt = f"<4sII8sQQq8x{slen}sI16s{_SAME_TYPE.size + tlen}s"
        got = _run_frames[slen, tlen] = struct.Struct(fmt).unpack_from
    return got


def _run_layout(
    flags: int, slen: int, tlen: int, field: bytes
) -> tuple[Callable[[Any, int], tuple[Any, ...]], bytes, bytes]:
    """For a run of single-event frames (:func:`_span_batch`'s run loops): the unpacker of
    their heads (:func:`_run_frame`), and what every frame of the run repeats, compared as two
    byte strings: the body head's kind, flags, name length and event count; the entry's type
    and metadata lengths (no metadata) and its type field ``field``."""
    same_head = _SAME_HEAD.pack(FRAME_KIND_EVENTS, flags, slen, 1)
    return _run_frame(slen, tlen), same_head, _SAME_TYPE.pack(tlen, 0) + field


def _run(
    runs: list[tuple[int, str, Callable[[Any], Any] | None]],
    index: int,
    field: bytes,
    cache: TypeCache,
    versioned: bool,
    as_dicts: bool,
    stream: str,
    position: int,
) -> bytes:
    """Start a run of events with type field ``field`` at column ``index``; returns ``field``."""
    decoder = cache.get(field)
    if decoder is None:
        decoder = cache[field] = _decoder(field, versioned, as_dicts, None, stream, position)
    type_name, decode, keep = decoder
    if not keep:
        raise _Bail
    runs.append((index, type_name, decode))
    return field


def decode_stream_run(
    buf: bytes,
    firsts: Sequence[int],
    lo: int,
    hi: int,
    stream: str,
    as_dicts: bool,
    caches: tuple[TypeCache, TypeCache],
    hidden: Mapping[str, tuple[int, int]] | None = None,
) -> list[RecordedEvent] | None:
    """The events in ``[lo, hi]`` of back-to-back plain events frames of ``stream`` whose
    first positions the index says are ``firsts``; None when the bytes are anything else
    (another stream's frame, a compressed frame, damage, an event its class rejects...): the
    caller then decodes frame by frame, which reports what is wrong."""
    seen: list[int] = []
    try:
        got, _last, _end = _span_batch(
            buf, firsts[0], lo, hi, as_dicts, None, caches, hidden, stream, seen
        )
    except Exception:  # the frame-by-frame path decides, and names the error
        return None
    return got if seen == list(firsts) else None


def _flush(res: list[RecordedEvent], columns: tuple[list[Any], ...]) -> None:
    """Unpack, validate and append to ``res`` the events in the columns; empty them."""
    streams, vers, poss, whens, eids, payloads, metas, runs = columns
    n = len(eids)
    if not n:
        return
    unpackb = _unpack_fast  # what it refuses (rare) the caller's reference loop reads
    if len(runs) == 1:
        _a, name, decode = runs[0]
        models = _decode_run(unpackb, payloads, decode)
        type_names = [name] * n
    else:
        models = []
        type_names = []
        for i, (a, name, decode) in enumerate(runs):
            b = runs[i + 1][0] if i + 1 < len(runs) else n
            models += _decode_run(unpackb, payloads[a:b], decode)
            type_names += [name] * (b - a)
    meta_col: list[Mapping[str, Any]] = [NO_METADATA] * n
    for i, m in metas:
        meta_col[i] = unpackb(m)
    res += map(
        _new_tuple,
        repeat(RecordedEvent),
        zip(streams, vers, poss, eids, type_names, models, meta_col, whens, strict=True),
    )
    for col in columns:
        col.clear()


def _decode_run(
    unpackb: Callable[[bytes], Any],
    payloads: list[bytes],
    decode: Callable[[Any], Any] | None,
) -> list[Any]:
    """The data of a run of events of one type: unpacked, then validated as one list when
    the decoder has a list form (:func:`many_validator`), else one by one."""
    if decode is None:
        return list(map(unpackb, payloads))
    many = many_validator(decode) if len(payloads) >= _MANY_EVENTS else None
    if many is None:
        return list(map(decode, map(unpackb, payloads)))
    return many(list(map(unpackb, payloads)))


_MANY_EVENTS = 8  # a run this long is validated as a list


def _span_loop(
    buf: bytes,
    first_position: int,
    lo: int,
    hi: int,
    types: frozenset[str] | None,
    prefixes: tuple[str, ...] | None,
    out: list[RecordedEvent],
    as_dicts: bool = False,
    expand: Callable[[bytes, int, int], bytes] | None = None,
    caches: tuple[TypeCache, TypeCache] | None = None,
    hidden: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[int, int]:
    """:func:`decode_span`'s reference loop, event by event: it handles every case (filters,
    retention, damage) and reports every error, so the batch path leaves all of those to it.

    Written out flat: one struct unpack and one CRC call per frame; per event, one dict lookup
    of its type field (which yields the name to report, the decoder and the filter verdict),
    one msgpack call for the data and one pydantic-core call.
    """
    unpack_frame = _SPAN_HEAD.unpack_from
    unpack_entry = ENTRY_HEAD.unpack_from
    unpackb = unpack_stored
    names = _stream_names
    plain, versioned = caches if caches is not None else new_type_caches()
    new_tuple = _new_tuple
    record = RecordedEvent
    size = len(buf)
    pos = first_position
    at = 0
    head_size = FRAME_HEADER_SIZE + BODY_HEAD_SIZE
    last_us = -1
    last_first = -1
    started = False  # an events frame (or container) was seen: positions may skip from here
    when = _EPOCH
    try:
        while at < size:
            magic, crc, blen, kind, fl, slen, count, fpos, fver, us, _wo = unpack_frame(buf, at)
            end = at + FRAME_HEADER_SIZE + blen
            if magic != FRAME_MAGIC or end > size or blen < BODY_HEAD_SIZE:
                raise _span_error("bad frame magic or length", at)
            if crc32c(buf[at + FRAME_LENGTH_AT : end]) != crc:
                raise _span_error(f"frame checksum mismatch (stored {crc:#010x})", at)
            # From here on the bytes are the ones the writer wrote: the checks that remain
            # guard the reader against its own index, not against damage.
            if kind != FRAME_KIND_EVENTS:
                if kind == FRAME_KIND_COMPRESSED and expand is not None and count:
                    holds = at == 0 and fpos < pos < fpos + count  # starts before, holds pos
                    if (fpos < pos or (fpos > pos and not started)) and not holds:
                        raise _span_error(f"frame holds position {fpos}, expected {pos}", at)
                    started = True
                    last_first, pos = fpos, fpos + count
                    if pos > lo and fpos <= hi:
                        inner = expand(buf, at, end)
                        try:
                            got = decode_span(
                                inner,
                                fpos,
                                lo,
                                hi,
                                types,
                                prefixes,
                                out,
                                as_dicts,
                                None,
                                (plain, versioned),
                                hidden,
                            )[1]
                        except FrameError as exc:
                            raise _span_error(f"in compressed frame: {exc.reason}", at) from None
                        if got != pos:
                            raise _span_error(f"compressed frame ends at {got}, not {pos}", at)
                elif kind not in (
                    FRAME_KIND_CHECKPOINT,
                    FRAME_KIND_COMPRESSED,
                    FRAME_KIND_METADATA,
                ):
                    raise _span_error(f"unknown frame kind {kind}", at)
                elif kind == FRAME_KIND_COMPRESSED and (expand is None or fpos < pos):
                    raise _span_error("unexpected compressed frame", at)
                at = end
                continue
            if count == 0 or fpos < pos or (fpos > pos and not started):
                raise _span_error(f"frame holds position {fpos}, expected {pos}", at)
            started = True
            last_first = fpos
            pos = fpos + count
            if pos <= lo or fpos > hi:
                at = end
                continue
            s0 = at + head_size
            stream = names[buf[s0 : s0 + slen]]
            if prefixes is not None and not stream.startswith(prefixes):
                at = end
                continue
            min_version = -1
            if hidden:
                h = hidden.get(stream)
                if h is not None:
                    if us < h[1] or fver + count <= h[0]:  # the whole frame is hidden
                        at = end
                        continue
                    min_version = h[0]
            if us != last_us:
                when = _when(us)
                last_us = us
            # no per-event range check needed when the whole frame is in range and visible
            whole = fpos >= lo and pos <= hi + 1 and fver >= min_version
            has_versions = fl & FRAME_FLAG_SCHEMA
            cache = versioned if has_versions else plain
            e = s0 + slen
            for k in range(count):
                esize, eid, tlen, mlen = unpack_entry(buf, e)
                nxt = e + 4 + esize
                if nxt > end:
                    raise _span_error("event entry runs past its frame", at)
                p = fpos + k
                if not whole and (p < lo or p > hi or fver + k < min_version):
                    e = nxt
                    continue
                t0 = e + ENTRY_HEAD_SIZE
                m0 = t0 + tlen
                field = buf[t0:m0]
                try:
                    type_name, decode, keep = cache[field]
                except KeyError:
                    decoder = _decoder(field, bool(has_versions), as_dicts, types, stream, p)
                    type_name, decode, keep = cache[field] = decoder
                if not keep:
                    e = nxt
                    continue
                try:
                    meta = unpackb(buf[m0 : m0 + mlen]) if mlen else NO_METADATA
                    raw = unpackb(buf[m0 + mlen : nxt])
                except Exception as exc:  # msgpack raises several unrelated types
                    raise _span_error(f"undecodable event payload at {p}: {exc}", at) from exc
                if decode is not None:
                    try:
                        raw = decode(raw)
                    except Exception as exc:  # (a validator of the class may raise anything)
                        raise EventDecodeError(stream, p, type_name, _why(exc)) from exc
                out.append(
                    new_tuple(record, (stream, fver + k, p, eid, type_name, raw, meta, when))
                )
                e = nxt
            at = end
    except (struct.error, UnicodeDecodeError) as exc:  # a header or entry cut short
        raise _span_error(f"malformed frame: {exc}", at) from exc
    except FrameError as exc:
        if exc.offset == 0:
            exc.offset = at
        raise
    return last_first, pos


def _span_error(reason: str, offset: int) -> FrameError:
    err = FrameError(reason)
    err.offset = offset
    return err


def frame_event_ids(buf: bytes | memoryview, frame_start: int, info: FrameInfo) -> list[bytes]:
    """The 16-byte ids of a checked frame's events, in order, without decoding payloads."""
    ids: list[bytes] = []
    at = frame_start + info.entries_at
    for _ in range(info.event_count):
        size, eid, _t, _m = ENTRY_HEAD.unpack_from(buf, at)
        ids.append(bytes(eid))
        at += 4 + size
    return ids


# --- snapshot state ---------------------------------------------------------------------------
def pack_state(stream: str, state: BaseModel) -> bytes:
    """A snapshot's state as stored: the model's JSON-mode dump, as MessagePack (the same
    encoding as event data). Raises ValueError when it cannot be stored."""
    try:
        return msgpack.packb(state.model_dump(**STORED_DUMP))  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(
            f"snapshot of stream {stream!r}: state {type(state).__qualname__} cannot be "
            f"stored: {exc}"
        ) from exc


def unpack_state(data: bytes, state_type: type[S]) -> S:
    """The state a snapshot stored, validated by ``state_type`` as event data is
    (:func:`state_validator`). Raises ValueError when the bytes do not decode
    or the class does not accept them: its validation error, or whatever else one of its
    validators raised (a state class changed since the snapshot was saved)."""
    try:
        raw = msgpack.unpackb(data)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ValueError(f"undecodable snapshot state: {exc}") from exc
    try:
        return state_validator(state_type)(raw)
    except ValueError:  # pydantic's ValidationError is one
        raise
    except Exception as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
