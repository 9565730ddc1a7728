"""Governance-layer fixtures: every store test runs against each real backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.governance.store import open_store

BACKENDS = ["local"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return f"sqlite://{tmp_path / 'state.sqlite3'}"
    raise AssertionError(request.param)


@pytest.fixture
async def store(store_url: str, tmp_path: Path):
    opened = open_store(store_url, tmp_path)
    yield opened
    await opened.close()
