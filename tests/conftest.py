from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """A directory for one store (not created: opening creates it)."""
    return tmp_path / "store"
