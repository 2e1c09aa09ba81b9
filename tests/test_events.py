"""Event classes, the type registry, NewEvent and RecordedEvent."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pydantic
import pytest

import aioeventstore as es
from tests.helpers import Deposited, Withdrawn


def test_type_name_defaults_to_class_name_and_can_be_set() -> None:
    assert Deposited.__event_type__ == "Deposited"
    assert Withdrawn.__event_type__ == "tests.withdrawn.v1"
    assert es.event_types()["Deposited"] is Deposited
    assert es.event_types()["tests.withdrawn.v1"] is Withdrawn


def test_two_classes_claiming_one_name_is_an_error() -> None:
    with pytest.raises(es.DuplicateEventType, match="Deposited"):

        class Other(es.Event):
            __event_type__ = "Deposited"

    assert es.event_types()["Deposited"] is Deposited


def test_redefining_the_same_class_replaces_it() -> None:
    def make() -> type[es.Event]:
        class Reloaded(es.Event):
            x: int

        return Reloaded

    first, second = make(), make()
    assert es.event_types()["Reloaded"] is second
    assert first is not second


def test_a_reload_that_renames_a_class_frees_its_old_names() -> None:
    """A reload (the same module and qualname) that changed ``__event_type__`` or the
    aliases: the earlier definition's names go, as in a fresh process; another class may
    take them, and nothing decodes to the dead class."""
    from aioeventstore.events import lookup_event_type

    def make(name: str, aliases: tuple[str, ...]) -> type[es.Event]:
        class Renamed(es.Event):
            __event_type__ = name
            __event_aliases__ = aliases
            x: int

        return Renamed

    first = make("renamed.v1", ("renamed.old",))
    second = make("renamed.v2", ())
    assert lookup_event_type("renamed.v2") is second
    assert lookup_event_type("renamed.v1") is None and lookup_event_type("renamed.old") is None
    assert "renamed.v1" not in es.event_types() and first is not second

    class Taker(es.Event):  # the freed name is free
        __event_type__ = "renamed.v1"

    assert es.event_types()["renamed.v1"] is Taker


def test_events_are_immutable() -> None:
    e = Deposited(account="a", amount=1)
    with pytest.raises(pydantic.ValidationError):
        e.amount = 2


def test_new_event_checks_its_fields() -> None:
    with pytest.raises(TypeError, match=r"es\.Event"):
        es.NewEvent({"not": "an event"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="uuid"):
        es.NewEvent(Deposited(account="a", amount=1), id="abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mapping"):
        es.NewEvent(Deposited(account="a", amount=1), metadata=[1])  # type: ignore[arg-type]


def test_recorded_event_to_json() -> None:
    rid = uuid.uuid4()
    rec = es.RecordedEvent(
        "s",
        0,
        5,
        rid,
        "Deposited",
        Deposited(account="a", amount=1),
        {"k": 1},
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    out = json.loads(rec.to_json())
    assert out == {
        "stream": "s",
        "version": 0,
        "position": 5,
        "id": str(rid),
        "type": "Deposited",
        "data": {"account": "a", "amount": 1},
        "metadata": {"k": 1},
        "recorded_at": "2026-01-01T00:00:00+00:00",
    }


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="durability"):
        es.StoreOptions(durability="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="segment_bytes"):
        es.StoreOptions(segment_bytes=10)
    with pytest.raises(ValueError, match="max_event_bytes"):
        es.StoreOptions(max_event_bytes=1 << 20, max_append_bytes=1 << 10)
    with pytest.raises(ValueError, match="verify_on_open must be True or False"):
        es.StoreOptions(verify_on_open="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pause_gc_while_decoding"):
        es.StoreOptions(pause_gc_while_decoding=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="options must be a StoreOptions, not dict"):
        es.EventStore("unused", {"durability": "os"})  # type: ignore[arg-type]
