"""What the ``paddock`` commands share: reading the process settings."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError as UnreadableSettings

from service.config.settings import Settings


class SettingsError(ValueError):
    """``PADDOCK_*`` settings (or the flags that override them) that do not validate."""


def read_settings(*, ignore_empty: bool = False, **overrides: Any) -> Settings:
    """The process settings from the environment, ``overrides`` (from flags) winning.

    Problems become a :class:`SettingsError` with one ``PADDOCK_NAME: message`` line each.
    """
    try:
        return Settings(_env_ignore_empty=ignore_empty, **overrides)  # type: ignore[call-arg]  # pydantic-settings' init option
    except ValidationError as error:
        lines = [
            f"PADDOCK_{str(item['loc'][0]).upper() if item['loc'] else '*'}: {item['msg']}"
            for item in error.errors(include_url=False)
        ]
        raise SettingsError("invalid settings\n  " + "\n  ".join(lines)) from None
    except UnreadableSettings as error:  # e.g. a list setting whose variable is not JSON
        raise SettingsError(f"invalid settings: {error}") from None


def tool_settings() -> Settings:
    """Settings of the operator commands (``admin``, ``keys``, ``audit``), read when one runs.

    An empty ``PADDOCK_*`` variable counts as unset here, as these commands always treated
    ``PADDOCK_ADMIN_TOKEN``, ``PADDOCK_KEY_SECRET_FILE`` and ``PADDOCK_AUDIT_KEY_FILE``.
    """
    return read_settings(ignore_empty=True)
