"""The public surface: explicit re-exports, each documented."""

from __future__ import annotations

import inspect

import aioeventstore as es


def test_all_names_exist_and_are_documented() -> None:
    for name in es.__all__:
        obj = getattr(es, name)
        if name.startswith("__") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        assert inspect.getdoc(obj), f"es.{name} has no docstring"


def test_all_lists_every_public_name() -> None:
    public = {n for n in vars(es) if not n.startswith("_") and not inspect.ismodule(getattr(es, n))}
    assert public == set(es.__all__) - {"__version__"}


def test_public_methods_are_documented() -> None:
    for cls in (
        es.EventStore,
        es.StoreOptions,
        es.StoreStatistics,
        es.RecordedEvent,
        es.MemoryStorage,
        es.Histogram,
        es.StreamMetadata,
        es.ScavengeReport,
    ):
        for name, member in vars(cls).items():
            if isinstance(member, classmethod | staticmethod):
                member = member.__func__
            if name.startswith("_") or not callable(member):
                continue
            assert inspect.getdoc(member), f"{cls.__name__}.{name} has no docstring"


def test_in_memory_store_api() -> None:
    """``EventStore.memory(options=None, *, storage=None, **overrides)`` and ``MemoryStorage``."""
    assert "MemoryStorage" in es.__all__
    assert isinstance(inspect.getattr_static(es.EventStore, "memory"), classmethod)
    params = inspect.signature(es.EventStore.memory).parameters
    assert list(params) == ["options", "storage", "overrides"]
    assert params["storage"].kind is inspect.Parameter.KEYWORD_ONLY
    assert isinstance(es.EventStore.memory(), es.EventStore)
    assert es.EventStore(":memory:").path == ":memory:"
    assert inspect.signature(es.MemoryStorage).parameters == {}


def test_error_hierarchy() -> None:
    for name in (
        "WrongExpectedVersion",
        "StoreLocked",
        "StoreClosed",
        "StoreFailed",
        "CorruptLog",
        "CompressionUnavailable",
        "EventTooLarge",
        "DuplicateEventType",
        "EventDecodeError",
        "SnapshotVersionError",
        "SnapshotFailed",
        "StoreReadOnly",
        "StoreNotFound",
        "MissingUpcaster",
        "UnsupportedFormat",
        "StreamDeleted",
        "MaintenanceFailed",
    ):
        assert issubclass(getattr(es, name), es.EventStoreError)
    assert issubclass(es.EventTooLarge, ValueError)
    assert issubclass(es.SnapshotVersionError, ValueError)
    assert issubclass(es.StoreNotFound, FileNotFoundError)
    assert issubclass(es.MissingUpcaster, es.EventDecodeError)


def test_every_test_the_readme_cites_exists() -> None:
    """The Guarantees section backs each sentence with a named test: they must all exist."""
    import re
    from pathlib import Path

    root = Path(__file__).parent
    readme = (root.parent / "README.md").read_text()
    guarantees = readme.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    cited = set(re.findall(r"(test_\w+\.py)::(\w+)", guarantees))
    assert len(cited) > 20
    for file, name in sorted(cited):
        source = (root / file).read_text()
        found = re.search(rf"^\s*(async def|def|class) {name}\b|^{name} = ", source, re.M)
        assert found, f"{file}::{name}"
