"""Fixtures for every test: unit tests see no ``PADDOCK_*`` variable of the shell that runs them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis's caches (the property tests, schemathesis) go under the project's cache, not the work tree.
set_hypothesis_home_dir(Path(__file__).resolve().parents[1] / ".cache" / "hypothesis")


@pytest.fixture(autouse=True)
def _no_paddock_environment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Settings()`` reads the environment: a developer's exported ``PADDOCK_KEY_SECRET_FILE`` or
    ``PADDOCK_AUDIT_DIR`` must not change the governor a unit test builds. The e2e stack is started
    with the caller's environment on purpose, so e2e tests keep it."""
    if request.node.get_closest_marker("e2e") is not None:
        return
    for name in [n for n in os.environ if n.startswith("PADDOCK_")]:
        monkeypatch.delenv(name)
