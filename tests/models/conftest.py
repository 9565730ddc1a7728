"""Fixtures of the approved-artifact tests: an operator's keys, a stranger's, and a model folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.models.artifacts import Keys, make_keys, make_model


@pytest.fixture
def operator(tmp_path: Path) -> Keys:
    return make_keys(tmp_path, "operator")


@pytest.fixture
def stranger(tmp_path: Path) -> Keys:
    return make_keys(tmp_path, "stranger")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model(tmp_path / "model")
