"""Schema evolution: the upcaster registry, and the per-type decoders that reads use.

Every stored event carries its type name and the schema version it was written with (1 when
its frame does not say, FORMAT.md). A read turns each distinct (stored name, stored version) it
meets into a :data:`Decoder` once per chunk: the type name to report, the function that turns
the unpacked payload into the model (``None``: deliver the dict), and whether a filter keeps
it. The common case, an event already at its class's version and stored under the class's
current name, gets the model's compiled validator itself: nothing is added per event.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter

from .errors import EventDecodeError, MissingUpcaster
from .events import Event, _generation, lookup_event_type

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns the payload dict of version *n* of an event type into the payload of version *n+1*."""

Decoder = tuple[str, Callable[[Any], Any] | None, bool]
"""(type name to report, payload → data function or None for the dict itself, kept by filter)"""

U = TypeVar("U", bound=Upcaster)

_upcasters: dict[tuple[str, int], Upcaster] = {}
_validators: dict[type[BaseModel], Any] = {}
_many: dict[Any, Callable[[list[Any]], list[Any]]] = {}  # by validator: its list form


class UpcastFailed(Exception):
    """An upcaster raised (internal: the reader turns it into EventDecodeError)."""


def upcaster(type_name: str | type[Event], *, from_version: int) -> Callable[[U], U]:
    """Register the decorated function as the upcaster of ``type_name`` from ``from_version``
    to ``from_version + 1``; returns the function unchanged.

    The function takes the stored payload (a dict, as the version-``from_version`` model
    dumped it in JSON mode) and returns the payload of the next version. Reads chain
    upcasters one version at a time, from the version an event was stored with up to its
    class's ``__schema_version__``, then validate the result with the class; events written
    at the class's current version never pass through them. ``type_name`` is the name the
    events were stored under or the class's current name (either works after a rename), or
    the class itself. Upcasters run on reader threads and should be pure functions.

    Raises ValueError when a different function is already registered for the same name and
    version (re-registering the same function, e.g. on a module reload, replaces it).
    """
    if isinstance(type_name, type) and issubclass(type_name, Event):
        name = type_name.__event_type__
    elif isinstance(type_name, str) and type_name:
        name = type_name
    else:
        raise TypeError(
            f"upcaster type_name must be a type name or an Event class, not {type_name!r}"
        )
    if type(from_version) is not int or not 1 <= from_version < 0xFFFF:
        raise ValueError(
            f"upcaster from_version must be an int from 1 to 65534, not {from_version!r}"
        )

    def register(fn: U) -> U:
        if not callable(fn):
            raise TypeError(f"an upcaster must be callable, not {fn!r}")
        key = (name, from_version)
        old = _upcasters.get(key)
        if old is not None and old is not fn:
            same = (getattr(old, "__module__", None), getattr(old, "__qualname__", None)) == (
                getattr(fn, "__module__", None),
                getattr(fn, "__qualname__", None),
            )
            if not same:
                raise ValueError(
                    f"an upcaster for {name!r} from version {from_version} is already "
                    f"registered ({getattr(old, '__qualname__', old)!r})"
                )
        _upcasters[key] = fn
        _generation[0] += 1
        return fn

    return register


def validator(cls: type[BaseModel]) -> Any:
    """The validator that turns a class's stored data (its JSON-mode dump, by field name,
    unpacked) back into an instance: the class's compiled pydantic-core validator, cached.

    For most classes that is the validator itself, called with the stored dict alone. A
    class whose schema has aliases (which pydantic validates by alias by default, while the
    dump is by field name) is validated by name and by alias; one with a strict setting is
    validated lax, since a JSON-mode dump holds UUIDs, datetimes and the like as strings that
    strict Python-mode validation refuses; and one with computed fields and
    ``extra="forbid"`` or ``"allow"`` first loses those keys, which earlier builds stored
    (they are derived: the model computes them again). Without this, such events were
    refused on read, or read back with their aliased fields at their defaults.
    """
    v = _validators.get(cls)
    if v is None:
        v = cls.__pydantic_validator__.validate_python
        needs = _needs_options(cls.__pydantic_core_schema__)
        if needs:
            v = _read_validator(v, cls)
        _validators[cls] = v
        # a class pydantic cannot put in a list schema is validated one event at a time
        # (and so is one whose stored keys :func:`_read_validator` drops first)
        with suppress(Exception):
            many = TypeAdapter(list[cls]).validator.validate_python  # type: ignore[valid-type]
            if not needs:
                _many[v] = many
            elif not _derived_keys(cls):
                _many[v] = partial(many, **_LAX_BY_NAME)
    return v


_LAX_BY_NAME: dict[str, Any] = {"strict": False, "by_alias": True, "by_name": True}


def _read_validator(validate: Callable[..., Any], cls: type[BaseModel]) -> Callable[[Any], Any]:
    """See :func:`validator`: ``validate`` with the options a class with aliases, a strict
    setting or computed fields needs (and the computed keys dropped first, when it would
    refuse them or keep them as extra data)."""
    derived = _derived_keys(cls)
    with_options = partial(validate, **_LAX_BY_NAME)
    if not derived:
        return with_options

    def drop_derived(raw: Any) -> Any:
        if isinstance(raw, dict) and not derived.isdisjoint(raw):
            raw = {k: v for k, v in raw.items() if k not in derived}
        return with_options(raw)

    return drop_derived


def _derived_keys(cls: type[BaseModel]) -> frozenset[str]:
    """The computed fields' keys an old dump may hold that the class would refuse
    (``extra="forbid"``) or keep as extra data (``extra="allow"``)."""
    if cls.model_config.get("extra") not in ("forbid", "allow"):
        return frozenset()
    computed = cls.model_computed_fields
    return frozenset(computed) | {info.alias for info in computed.values() if info.alias}


def _needs_options(schema: Any) -> bool:
    """Whether a pydantic-core schema (searched whole: nested models, definitions) has an
    alias, a strict setting or a computed field, which :func:`validator` must allow for."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if (
                "validation_alias" in node
                or node.get("strict") is True
                or node.get("computed_fields")
            ):
                return True
            stack += node.values()
        elif isinstance(node, list | tuple):
            stack += node
    return False


def many_validator(decode: Callable[[Any], Any]) -> Callable[[list[Any]], list[Any]] | None:
    """For a class's validator (from :func:`validator`), the compiled validator of a list
    of its payloads: the same model validation of each item, with one call into
    pydantic-core for the whole list (replay validates a run of events of one type in one
    call: about a tenth less time per event than one call each). None for anything else
    (an upcasting decoder), and for a class pydantic cannot build a list schema of.
    A ``ValidationError`` names the item's index, not the event: callers that must name
    the event validate again one by one.
    """
    return _many.get(decode)


def build_decoder(
    stored: str,
    version: int,
    as_dicts: bool,
    types: frozenset[str] | None,
    stream: str,
    position: int,
) -> Decoder:
    """The decoder for events stored as ``stored`` at schema ``version``.

    ``types``: the stored names a filter keeps (None: all). ``stream`` and ``position`` name
    the first event met with this name and version, for errors. Raises MissingUpcaster when
    the chain from ``version`` to the class's version has a gap (or ``version`` is newer) and
    EventDecodeError for a version 0, which no writer produces. Events a filter drops and
    ``as_dicts`` reads never raise here: they are not decoded.
    """
    if types is not None and stored not in types:
        return (stored, None, False)
    if as_dicts:
        return (stored, None, True)
    cls = lookup_event_type(stored)
    if cls is None:
        return (stored, None, True)
    validate = validator(cls)
    target = cls.__schema_version__
    name = cls.__event_type__
    if version == target:
        return (name, validate, True)
    if version < 1:
        raise EventDecodeError(stream, position, stored, f"impossible schema version {version}")
    if version > target:
        raise MissingUpcaster(stream, position, stored, version, target, None)
    steps: list[tuple[int, Upcaster]] = []
    for v in range(version, target):
        fn = _upcasters.get((stored, v)) or _upcasters.get((name, v))
        if fn is None:
            raise MissingUpcaster(stream, position, stored, version, target, v)
        steps.append((v, fn))

    def upcast_and_validate(raw: Any) -> Any:
        for v, fn in steps:
            try:
                raw = fn(raw)
            except Exception as exc:
                raise UpcastFailed(
                    f"upcaster {getattr(fn, '__qualname__', fn)!r} of {stored!r} from version "
                    f"{v} raised {exc!r}"
                ) from exc
        return validate(raw)

    return (name, upcast_and_validate, True)
