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
import inspect
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_json

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
        features = _features(cls.__pydantic_core_schema__)
        special = _reader(compiled.validate_python, compiled.validate_json, features)
        v = _validators[cls] = special or compiled.validate_python
        # a class pydantic cannot put in a list schema is validated one event at a time
        # (and so is one read as JSON, or whose old data may need a second try)
        with suppress(Exception):
            many = TypeAdapter(list[cls]).validator.validate_python  # type: ignore[valid-type]
            if special is None:
                _many[v] = many
            elif not features.strict and not features.legacy:
                _many[v] = partial(many, **_BY_NAME)
    return v


def state_validator(cls: type[S]) -> Callable[[Any], S]:
    """:func:`validator` for a snapshot's state class. A class that overrides
    ``model_validate`` (to migrate an older state, say) gets the stored dict through it, as
    it is, with ``by_alias``/``by_name`` when the class has aliases and its override takes
    them; a strict one's UUIDs and the like are then strings, which it must accept."""
    own = cls.model_validate
    if getattr(own, "__func__", None) is getattr(BaseModel.model_validate, "__func__", None):
        return validator(cls)  # type: ignore[no-any-return]
    if not _features(cls.__pydantic_core_schema__).aliases:
        return own
    try:
        params = inspect.signature(own).parameters.values()
    except (TypeError, ValueError):
        return own
    if any(p.name == "by_name" or p.kind is p.VAR_KEYWORD for p in params):
        return partial(own, **_BY_NAME)
    return own


_BY_NAME: dict[str, Any] = {"by_alias": True, "by_name": True}


@dataclass(frozen=True, slots=True)
class _Features:
    """What :func:`_reader` looks for in a class's pydantic-core schema, nested models and
    definitions included."""

    aliases: bool
    strict: bool
    computed: frozenset[str]  # computed fields' names and aliases
    forbids: bool  # some model refuses extra keys
    allows: bool  # some model keeps extra keys

    @property
    def legacy(self) -> bool:
        """Whether stored computed fields (earlier builds) would be refused or kept."""
        return bool(self.computed) and (self.forbids or self.allows)


def _reader(
    validate_python: Callable[..., Any], validate_json: Callable[..., Any], f: _Features
) -> Callable[[Any], Any] | None:
    """How to validate stored data of a class that needs more than ``validate_python(raw)``
    (None for one that does not: the common case, which then costs nothing more).

    * Aliases: pydantic validates by alias by default, and the dump is by field name;
      validated by name and by alias.
    * A strict setting: a JSON-mode dump holds UUIDs, datetimes and the like as strings,
      which strict Python-mode validation refuses; validated as JSON (strict mode takes those
      strings from JSON), so that values come back as ``model_validate_json(model_dump_json())``
      gives them. (Data nested deeper than the JSON parser goes is validated lax instead.)
    * Computed fields in a class with a model that refuses or keeps extra keys: earlier
      builds stored them, at every depth. Data refused for those keys is validated again
      without the ones found, and they are taken out of the extra data of the models read.
    """
    if not (f.aliases or f.strict or f.legacy):
        return None
    validate: Callable[[Any], Any]
    if f.strict:

        def validate(raw: Any) -> Any:
            try:
                text = to_json(raw, inf_nan_mode="constants")
            except (PydanticSerializationError, ValueError, TypeError):
                return validate_python(raw, strict=False, **_BY_NAME)
            try:
                return validate_json(text, **_BY_NAME)
            except ValidationError as exc:
                if any(e["type"] != "json_invalid" for e in exc.errors()):
                    raise
                return validate_python(raw, strict=False, **_BY_NAME)  # (too deep for it)

    else:
        validate = partial(validate_python, **_BY_NAME)
    if not f.legacy:
        return validate
    computed, allows = f.computed, f.allows

    def without_computed(raw: Any) -> Any:
        try:
            model = validate(raw)
        except ValidationError as exc:
            paths = [
                e["loc"]
                for e in exc.errors()
                if e["type"] == "extra_forbidden" and e["loc"] and e["loc"][-1] in computed
            ]
            trimmed = _without(raw, paths) if paths else None
            if trimmed is None:
                raise
            model = validate(trimmed)
        if allows:
            _drop_computed_extras(model, set())
        return model

    return without_computed


def _without(raw: Any, paths: list[tuple[int | str, ...]]) -> Any:
    """A copy of stored data without the keys at these paths (validation errors' ``loc``,
    where a step that is not in the data, a union member's tag, is passed over); None when
    none of them is there."""
    raw = copy.deepcopy(raw)
    found = False
    for path in paths:
        node: Any = raw
        for step in path[:-1]:
            if (isinstance(node, dict) and step in node) or (
                isinstance(node, list) and isinstance(step, int) and -len(node) <= step < len(node)
            ):
                node = node[step]  # type: ignore[index]
        if isinstance(node, dict) and path[-1] in node:
            del node[path[-1]]
            found = True
    return raw if found else None


def _drop_computed_extras(value: Any, seen: set[int]) -> None:
    """Take the computed fields' keys out of the extra data of every model in ``value``
    (each container once: models may link back to their parents)."""
    if isinstance(value, BaseModel | list | tuple | set | frozenset | dict):
        if id(value) in seen:
            return
        seen.add(id(value))
    if isinstance(value, BaseModel):
        extra = value.__pydantic_extra__
        if extra:
            for name, info in type(value).model_computed_fields.items():
                extra.pop(name, None)
                if info.alias:
                    extra.pop(info.alias, None)
        for item in value.__dict__.values():
            _drop_computed_extras(item, seen)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _drop_computed_extras(item, seen)
    elif isinstance(value, dict):
        for item in value.values():
            _drop_computed_extras(item, seen)


def _features(schema: Any) -> _Features:
    """Search a pydantic-core schema: its schema nodes are the dicts with a str ``type``
    (not a map of fields, which may name a field "type", nor a ``metadata`` dict, which holds
    ``json_schema_extra``); a model's ``config`` holds its model-wide settings."""
    aliases = strict = forbids = allows = False
    computed: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("type"), str):
                config = node.get("config")
                if not isinstance(config, dict):
                    config = {}
                aliases = aliases or "validation_alias" in node
                strict = strict or node.get("strict") is True or config.get("strict") is True
                extra = node.get("extra_behavior") or config.get("extra_fields_behavior")
                forbids = forbids or extra == "forbid"
                allows = allows or extra == "allow"
                for field in node.get("computed_fields") or ():
                    if isinstance(field, dict) and field.get("type") == "computed-field":
                        computed.add(field["property_name"])
                        if field.get("alias"):
                            computed.add(field["alias"])
            stack += [v for k, v in node.items() if k not in ("metadata", "config")]
        elif isinstance(node, list | tuple):
            stack += node
    return _Features(aliases, strict, frozenset(computed), forbids, allows)


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
