"""apply_settings: the one merge of PADDOCK_* settings into the service config."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config.loader import SETTINGS_OVERRIDES, apply_settings, load_config_file, parse_config
from service.config.schema import ServiceConfig
from service.config.settings import Settings

CONFIG = parse_config(
    {
        "ingress": {"host": "127.0.0.1", "port": 8000, "replicas": 2},
        "admin": {"port": 8001},
        "metrics": {"enabled": False, "port": 8002},
        "models": [{"id": "m", "source": {"path": "/models/m"}, "kv_cache_memory": "512MiB"}],
    },
    "test",
)
OVERRIDE_VARIABLES = ("PADDOCK_HOST", "PADDOCK_PORT", "PADDOCK_ADMIN_PORT", "PADDOCK_METRICS_PORT")


@pytest.fixture(autouse=True)
def _no_overrides_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OVERRIDE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_no_settings_leave_the_config_as_it_is() -> None:
    assert apply_settings(CONFIG, Settings()) is CONFIG


def test_every_override_lands_on_its_config_key() -> None:
    settings = Settings(host="0.0.0.0", port=9000, admin_port=9001, metrics_port=9002)
    config = apply_settings(CONFIG, settings)
    assert (config.ingress.host, config.ingress.port) == ("0.0.0.0", 9000)
    assert config.admin.port == 9001 and config.metrics.port == 9002
    # Nothing else changes: the rest of each section, the other sections, the models.
    assert config.ingress.replicas == 2 and config.admin.host == "127.0.0.1"
    assert config.metrics.enabled is False and config.metrics.host == "127.0.0.1"
    assert config.models == CONFIG.models
    assert isinstance(config, ServiceConfig) and CONFIG.ingress.port == 8000  # the input is not modified


def test_only_the_set_overrides_apply() -> None:
    config = apply_settings(CONFIG, Settings(admin_port=9101))
    assert config.admin.port == 9101
    assert config.ingress == CONFIG.ingress and config.metrics == CONFIG.metrics


def test_applying_twice_is_the_same_as_once() -> None:
    settings = Settings(host="0.0.0.0", port=9000, metrics_port=9002)
    once = apply_settings(CONFIG, settings)
    assert apply_settings(once, settings) == once


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PADDOCK_HOST", "0.0.0.0")
    monkeypatch.setenv("PADDOCK_PORT", "9100")
    monkeypatch.setenv("PADDOCK_ADMIN_PORT", "9101")
    monkeypatch.setenv("PADDOCK_METRICS_PORT", "9102")
    config = apply_settings(CONFIG, Settings())
    assert (config.ingress.host, config.ingress.port, config.admin.port, config.metrics.port) == (
        "0.0.0.0",
        9100,
        9101,
        9102,
    )


def test_the_override_table_covers_every_overriding_setting() -> None:
    """A new ``Overrides …`` setting must be merged here too, and every target must be a config key."""
    overriding = {
        name for name, field in Settings.model_fields.items() if (field.description or "").startswith("Overrides")
    }
    assert overriding == set(SETTINGS_OVERRIDES)
    for section, key in SETTINGS_OVERRIDES.values():
        assert key in ServiceConfig.model_fields[section].annotation.model_fields  # type: ignore[union-attr]


def test_the_shipped_serve_config_takes_the_overrides() -> None:
    config = load_config_file(Path(__file__).resolve().parents[2] / "deploy" / "serve-config.yaml")
    applied = apply_settings(config, Settings(port=9000))
    assert applied.ingress.port == 9000 and applied.ingress.host == config.ingress.host == "0.0.0.0"
    assert applied.models == config.models
