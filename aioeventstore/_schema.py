"""Schema evolution: the upcaster registry, and the per-type decoders that reads use.

Every stored event carries its type name and the schema version it was written with (1 when
its frame does not say, FORMAT.md). A read turns each distinct (stored name, stored version) it
meets into a :data:`Decoder` once per chunk: the type name to report, the function that turns
the unpacked payload into the model (``None``: deliver the dict), and whether a filter keeps
it. The common case, an event already at its class's version and stored under the class's
current name, gets the model's compiled validator itself: nothing is added per event.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from contextlib import suppress
from functools import partial
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from .errors import EventDecodeError, MissingUpcaster
from .events import Event, _generation, lookup_event_type

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns the payload dict of version *n* of an event type into the payload of version *n+1*."""

Decoder = tuple[str, Callable[[Any], Any] | None, bool]
"""(type name to report, payload → data function or None for the dict itself, kept by filter)"""

U = TypeVar("U", bound=Upcaster)
S = TypeVar("S", bound=BaseModel)

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

    For most classes that is the validator itself, called with the stored dict alone; for
    the others, see :func:`_reader`. Without it, models with aliases read back with their
    aliased fields at their defaults (or were refused), strict ones and those an earlier
    build stored computed fields of were refused.
    """
    v = _validators.get(cls)
    if v is None:
        compiled = cls.__pydantic_validator__
        special = _reader(cls, compiled.validate_python, compiled.validate_json)
        v = _validators[cls] = special or compiled.validate_python
        # a class pydantic cannot put in a list schema is validated one event at a time
        # (and so is one whose data may need a second try, or JSON's rules)
        with suppress(Exception):
            many = TypeAdapter(list[cls]).validator.validate_python  # type: ignore[valid-type]
            if special is None:
                _many[v] = many
            elif _features(cls.__pydantic_core_schema__) == (True, False, frozenset()):
                _many[v] = partial(many, **_BY_NAME)
    return v


def state_validator(cls: type[S]) -> Callable[[Any], S]:
    """:func:`validator` for a snapshot's state class, through its ``model_validate`` (which
    a state class may override, e.g. to migrate an older state) or ``model_validate_json``."""
    special = _reader(cls, cls.model_validate, cls.model_validate_json)
    return special or cls.model_validate


_BY_NAME: dict[str, Any] = {"by_alias": True, "by_name": True}


def _reader(
    cls: type[BaseModel], validate_python: Callable[..., Any], validate_json: Callable[..., Any]
) -> Callable[[Any], Any] | None:
    """How to validate stored data of a class that needs more than ``validate_python(raw)``
    (None for one that does not: the common case, which then costs nothing more).

    * Aliases anywhere in its schema: pydantic validates by alias by default, and the dump
      is by field name; validated by name and by alias.
    * A strict setting anywhere: a JSON-mode dump holds UUIDs, datetimes and the like as
      strings, which strict Python-mode validation refuses; validated as JSON (strict mode
      takes those strings from JSON), so that values come back as
      ``model_validate_json(model_dump_json())`` gives them.
    * Computed fields anywhere: earlier builds stored them, at every depth; a model with
      ``extra="forbid"`` refused them and one with ``extra="allow"`` kept them as extra
      data. Data refused for those keys alone is validated again without them, and they are
      taken out of the extra data of the models read.
    """
    aliases, strict, computed = _features(cls.__pydantic_core_schema__)
    if not (aliases or strict or computed):
        return None
    validate: Callable[[Any], Any]
    if strict:

        def validate(raw: Any) -> Any:
            try:
                text = json.dumps(raw)
            except (TypeError, ValueError):  # (not from a JSON-mode dump: bytes, say)
                return validate_python(raw, strict=False, **_BY_NAME)
            return validate_json(text, **_BY_NAME)

    else:
        validate = partial(validate_python, **_BY_NAME)
    if not computed:
        return validate

    def without_computed(raw: Any) -> Any:
        try:
            model = validate(raw)
        except ValidationError as exc:
            errors = exc.errors()
            if not errors or any(
                e["type"] != "extra_forbidden" or not e["loc"] or e["loc"][-1] not in computed
                for e in errors
            ):
                raise
            try:
                raw = _without(raw, [e["loc"] for e in errors])
            except (LookupError, TypeError):  # a path through a union: not a plain one
                raise exc from None
            model = validate(raw)
        _drop_computed_extras(model)
        return model

    return without_computed


def _without(raw: Any, paths: list[tuple[int | str, ...]]) -> Any:
    """A copy of stored data without the keys at these paths (validation errors' ``loc``)."""
    raw = copy.deepcopy(raw)
    for path in paths:
        node = raw
        for step in path[:-1]:
            node = node[step]
        del node[path[-1]]
    return raw


def _drop_computed_extras(value: Any) -> None:
    """Take the computed fields' keys out of the extra data of every model in ``value``."""
    if isinstance(value, BaseModel):
        extra = value.__pydantic_extra__
        if extra:
            for name, info in type(value).model_computed_fields.items():
                extra.pop(name, None)
                if info.alias:
                    extra.pop(info.alias, None)
        for item in value.__dict__.values():
            _drop_computed_extras(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _drop_computed_extras(item)
    elif isinstance(value, dict):
        for item in value.values():
            _drop_computed_extras(item)


def _features(schema: Any) -> tuple[bool, bool, frozenset[str]]:
    """What :func:`_reader` looks for in a pydantic-core schema (searched whole: nested
    models, definitions): whether it has an alias, a strict setting, and the names (and
    aliases) of its computed fields."""
    aliases = strict = False
    computed: set[str] = set()
    for node in _nodes(schema):
        aliases = aliases or "validation_alias" in node
        strict = strict or node.get("strict") is True
        for field in node.get("computed_fields") or ():
            computed.add(field["property_name"])
            if field.get("alias"):
                computed.add(field["alias"])
    return aliases, strict, frozenset(computed)


def _nodes(schema: Any) -> Iterator[dict[str, Any]]:
    """Every dict in a pydantic-core schema, nested models and definitions included."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack += node.values()
        elif isinstance(node, list | tuple):
            stack += node


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
