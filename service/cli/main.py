"""The ``paddock`` command line."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

from service.cli import admin, audit, keys, models, node
from service.cli.common import SettingsError, read_settings
from service.config.loader import ConfigError, apply_settings, default_config_text, load_config
from service.config.schema import ServiceConfig
from service.config.settings import Settings
from service.governance.reload import GovernanceError


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        k: v
        for k, v in {
            "config": args.config,
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
        }.items()
        if v is not None
    }
    return read_settings(**overrides)


def _config(settings: Settings) -> ServiceConfig:
    """The service config, with the settings' overrides (the same ones the app builder applies)."""
    return apply_settings(load_config(settings.config), settings)


def cmd_serve(args: argparse.Namespace) -> int:
    from service.observability.logs import configure_logging
    from service.serve.local import serve_forever

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    serve_forever(_config(settings), settings)
    return 0


def _progress(model_id: str, message: str) -> None:
    print(f"[{model_id}] {message}", flush=True)


def cmd_prepare(args: argparse.Namespace) -> int:
    from service.models.sources import resolve

    settings = _settings(args)
    for model in _config(settings).models:
        path = resolve(model, settings.cache_dir, functools.partial(_progress, model.id))
        print(f"[{model.id}] ready: {path}", flush=True)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "default":
        print(default_config_text(), end="")
        return 0
    config = load_config(args.file)
    print(f"{args.file}: valid — models: {', '.join(m.id for m in config.models)}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="paddock", description="Governed OpenAI-compatible inference on Ray Serve + vLLM."
    )
    sub = root.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service (local Ray unless PADDOCK_RAY_ADDRESS is set)")
    prepare = sub.add_parser("prepare", help="prepare every configured model into the cache")
    for command in (serve, prepare):
        command.add_argument("--config", type=Path, help="service config YAML (default: embedded models)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)
    prepare.set_defaults(func=cmd_prepare)
    config = sub.add_parser("config", help="validate a config file or print the default one")
    config.add_argument("action", choices=["validate", "default"])
    config.add_argument("file", type=Path, nargs="?")
    config.set_defaults(func=cmd_config)
    keys.register(sub)
    admin.register(sub)
    audit.register(sub)
    models.register(sub)
    node.register(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (ConfigError, GovernanceError, SettingsError, keys.KeysError) as error:
        print(f"paddock: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
