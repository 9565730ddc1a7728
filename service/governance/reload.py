"""Loading the governance file, and reloading it when it changes.

In Kubernetes the file arrives from a Secret: the kubelet swaps a ``..data``
symlink atomically, so the watcher looks at what the path resolves to (inode,
size, mtime) once a second rather than at the file's own events. A file that
fails to load is logged and counted, and the last good policy stays in force.
The watcher loads in a worker thread (a file of 100,000 keys takes seconds;
the event loop only shares the GIL with it) and swaps the new policy and key
index in on the event loop, together.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import ValidationError

from service.config.loader import format_validation_error
from service.governance.keys import KeyIndex
from service.governance.policy import GovernanceFile

log = logging.getLogger(__name__)

# libyaml's loader when PyYAML was built with it: the same documents, several times faster.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class GovernanceError(ValueError):
    """A governance file that cannot be used; the message names the file and key."""


def load_governance(path: Path) -> GovernanceFile:
    try:
        data = yaml.load(path.read_text(), Loader=_YAML_LOADER)  # a safe loader: CSafeLoader or SafeLoader
    except OSError as error:
        raise GovernanceError(f"{path}: cannot read the governance file: {error}") from None
    except yaml.YAMLError as error:
        raise GovernanceError(f"{path}: not valid YAML: {error}") from None
    try:
        return GovernanceFile.model_validate(data or {})
    except ValidationError as error:
        raise GovernanceError(format_validation_error(error, str(path), "governance file")) from None


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        stat = os.stat(path)  # follows the ..data symlink swap
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


class PolicyHolder:
    """The policy in force, and the watcher that replaces it when the file changes."""

    def __init__(
        self,
        path: Path,
        secret: bytes | None = None,
        on_reload: Callable[[str, str | None], None] | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self.path = path
        self._secret = secret
        self._on_reload = on_reload or (lambda result, error: None)
        self._interval_s = interval_s
        self._signature = _signature(path)
        self.policy = load_governance(path)
        self.index = KeyIndex(self.policy, secret)

    def reload_if_changed(self) -> bool:
        """Load the file if it changed and put it in force, all in the calling thread; True if it was."""
        return self._apply(self._load_if_changed())

    def _load_if_changed(self) -> tuple[GovernanceFile, KeyIndex] | GovernanceError | None:
        """The changed file's policy and key index, or why it cannot be used; None if unchanged. Any thread."""
        signature = _signature(self.path)
        if signature == self._signature:
            return None
        self._signature = signature
        try:
            policy = load_governance(self.path)
        except GovernanceError as error:
            return error
        return policy, KeyIndex(policy, self._secret)

    def _apply(self, loaded: tuple[GovernanceFile, KeyIndex] | GovernanceError | None) -> bool:
        """Put a loaded policy in force (policy and index in one step) and report; True if it was."""
        if loaded is None:
            return False
        if isinstance(loaded, GovernanceError):
            log.error("governance file not reloaded, the previous policy stays in force: %s", loaded)
            self._on_reload("error", str(loaded))
            return False
        self.policy, self.index = loaded
        log.info("governance file reloaded: %d tenants, %d keys", len(self.policy.tenants), len(self.index))
        self._on_reload("ok", None)
        return True

    async def watch(self) -> None:
        """Reload on change, forever: the loading in a worker thread, so the event loop is not held up by it."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                self._apply(await asyncio.to_thread(self._load_if_changed))
            except Exception:  # noqa: BLE001 - the watcher must outlive any bug
                log.exception("governance file watcher failed")
