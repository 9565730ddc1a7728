"""The app builder applies the PADDOCK_* overrides, so `serve deploy` and the chart get what `paddock serve` gets.

Building the Serve application needs no running Ray: the ingress deployment's init args are
the service config it will serve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve import Application

from service.config.loader import APP_BUILDER_IMPORT_PATH, apply_settings, load_config_file, parse_config
from service.config.settings import Settings
from service.serve.builder import app_builder, build_app

REPO = Path(__file__).resolve().parents[2]
SERVE_CONFIG = REPO / "deploy" / "serve-config.yaml"
ARGS: dict[str, Any] = {
    "ingress": {"host": "127.0.0.1", "port": 8000},
    "models": [{"id": "m", "source": {"path": "/models/m"}, "kv_cache_memory": "512MiB"}],
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "PADDOCK_HOST",
        "PADDOCK_PORT",
        "PADDOCK_ADMIN_PORT",
        "PADDOCK_METRICS_PORT",
        "PADDOCK_INTERNAL_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)


def ingress_config(app: Application) -> dict[str, Any]:
    ingress = app._bound_deployment
    assert ingress.name == "Ingress"
    return ingress.init_args[0]


def test_app_builder_applies_the_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PADDOCK_HOST", "0.0.0.0")
    monkeypatch.setenv("PADDOCK_PORT", "9000")
    monkeypatch.setenv("PADDOCK_ADMIN_PORT", "9001")
    monkeypatch.setenv("PADDOCK_METRICS_PORT", "9002")
    monkeypatch.setenv("PADDOCK_INTERNAL_TOKEN", "shared-token")
    app = app_builder(ARGS)
    config = ingress_config(app)
    assert (config["ingress"]["host"], config["ingress"]["port"]) == ("0.0.0.0", 9000)
    assert config["admin"]["port"] == 9001 and config["metrics"]["port"] == 9002
    assert app._bound_deployment.init_args[1] == "shared-token"  # the same settings object, read once


def test_app_builder_without_settings_serves_the_args_as_they_are() -> None:
    config = ingress_config(app_builder(ARGS))
    assert parse_config(config, "ingress init args") == parse_config(ARGS, "args")


def test_the_shipped_serve_config_through_the_app_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve deploy deploy/serve-config.yaml`: Ray calls app_builder with the application's args."""
    serve = yaml.safe_load(SERVE_CONFIG.read_text())
    [app] = [a for a in serve["applications"] if a["import_path"] == APP_BUILDER_IMPORT_PATH]
    monkeypatch.setenv("PADDOCK_PORT", "9000")
    config = parse_config(ingress_config(app_builder(app["args"])), "ingress init args")
    expected = apply_settings(load_config_file(SERVE_CONFIG), Settings(port=9000))
    assert config == expected and config.ingress.port == 9000


def test_build_app_applies_the_given_settings_once_or_twice() -> None:
    """`paddock serve` applies the settings, then build_app applies them again: same result."""
    settings = Settings(port=9000, metrics_port=9002, internal_token="t")
    config = parse_config(ARGS, "args")
    direct = ingress_config(build_app(config, settings))
    already = ingress_config(build_app(apply_settings(config, settings), settings))
    assert direct == already
    assert direct["ingress"]["port"] == 9000 and direct["metrics"]["port"] == 9002


def test_explicit_settings_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_app reads the environment only when the caller passes no settings."""
    monkeypatch.setenv("PADDOCK_PORT", "9999")
    config = ingress_config(build_app(parse_config(ARGS, "args"), Settings(port=9000)))
    assert config["ingress"]["port"] == 9000
