"""A model folder's per-file SHA-256 digests, as an OpenSSF model-signing manifest, hashed once per node.

:class:`FolderHashing` is ``model_signing``'s own hashing configuration (file by file, SHA-256, files
hashed in parallel threads) with one addition: a :class:`DigestCache` keyed by each file's identity
(real path, size, mtime, ctime, inode, device). A replica that restarts, or a second replica on the
same node, re-hashes only the files whose identity changed. Writing to a file changes its ctime,
and ``touch -d`` cannot set a ctime back, so an edited file is always hashed again. A file changed
within ``RACY_S`` of being hashed is not cached (a write in the same clock tick leaves its times as
they were).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model_signing import hashing, manifest
from model_signing._hashing.hashing import Digest  # the manifest's digest type: model_signing names it only here

SIGNATURE_NAME = "model.sig"  # model_signing's own default name, in the model folder
# model_signing's defaults: git metadata is not part of a model.
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
CACHE_FORMAT = 1
RACY_S = 2.0  # a file changed this recently before it was hashed is not cached


class FolderError(ValueError):
    """The folder cannot be hashed as a model: not a folder, a link to a folder, a special file."""


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What a cached digest is valid for: the file's real path and its inode's metadata."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        real = os.path.realpath(path)
        st = os.stat(real)
        return cls(real, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class DigestCache:
    """SHA-256 digests by :class:`FileIdentity`, in one JSON file per model folder (on the node's own disk)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, dict[str, Any]] = {}
        self._dirty = False
        if path is not None:
            self._entries = _read_entries(path)

    @classmethod
    def for_folder(cls, cache_dir: Path | None, folder: Path) -> DigestCache:
        """The cache of ``folder`` under ``cache_dir/approval`` (``None``: a cache that keeps nothing)."""
        if cache_dir is None:
            return cls(None)
        name = hashlib.sha256(os.path.realpath(folder).encode()).hexdigest()[:24]
        return cls(cache_dir / "approval" / f"{name}.json")

    def get(self, identity: FileIdentity) -> str | None:
        entry = self._entries.get(identity.path)
        if entry is None or {k: v for k, v in entry.items() if k != "sha256"} != asdict(identity):
            return None
        digest = entry.get("sha256")
        return digest if isinstance(digest, str) else None

    def put(self, identity: FileIdentity, sha256: str) -> None:
        self._entries[identity.path] = {**asdict(identity), "sha256": sha256}
        self._dirty = True

    def save(self) -> None:
        """Write the entries (merged with what other replicas wrote meanwhile); best effort, atomically."""
        if self.path is None or not self._dirty:
            return
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            entries = {**_read_entries(self.path), **self._entries}
            fd, staging = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".partial")
            with os.fdopen(fd, "w") as out:
                json.dump({"format": CACHE_FORMAT, "files": entries}, out)
            os.replace(staging, self.path)
            self._dirty = False


def _read_entries(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("files"), dict):
        return {}
    return {k: v for k, v in data["files"].items() if isinstance(v, dict)}


def model_files(folder: Path) -> list[Path]:
    """Every file a manifest of ``folder`` covers: all but the signature and git metadata, links followed.

    A link to a folder is refused: ``model_signing`` does not descend into one, so the files in it
    would be neither hashed nor reported.
    """
    if not folder.is_dir():
        raise FolderError(f"{folder} is not a folder")
    ignored = [folder / name for name in (SIGNATURE_NAME, *GIT_PATHS)]
    files = []
    for path in folder.glob("**/*"):
        if any(path.is_relative_to(skip) for skip in ignored):
            continue
        if path.is_symlink() and path.is_dir():
            raise FolderError(f"{path} links to a folder: copy it into {folder} or remove it")
        if path.is_file():
            files.append(path)
        elif not path.is_dir():
            raise FolderError(f"{path} is neither a file nor a folder (a broken link?)")
    return sorted(files)


def manifest_digest(hashed: manifest.Manifest) -> str:
    """The manifest's own digest, ``sha256:<hex>``: model_signing's signed subject digest (SHA-256 over the
    files' digests, in the manifest's order)."""
    outer = hashlib.sha256()
    for descriptor in hashed.resource_descriptors():
        outer.update(descriptor.digest.digest_value)
    return "sha256:" + outer.hexdigest()


def file_digests(hashed: manifest.Manifest) -> dict[str, str]:
    """``{relative path: sha256 hex}`` of a manifest."""
    return {d.identifier: d.digest.digest_hex for d in hashed.resource_descriptors()}


class FolderHashing(hashing.Config):
    """``model_signing``'s file-by-file SHA-256 hashing (``workers`` files at once), through a digest cache.

    Used both to sign (``paddock models approve``, which hashes every file afresh) and to verify. The
    signature's own ``ignore_paths`` are not honoured: every file but the signature and git metadata is
    checked, since vLLM may read any of them. After :meth:`hash`, :attr:`hashed` is the manifest.
    """

    def __init__(
        self, cache: DigestCache | None = None, *, workers: int = 4, reuse: bool = True, racy_s: float | None = None
    ) -> None:
        super().__init__()
        self.use_file_serialization(hashing_algorithm="sha256", max_workers=workers, allow_symlinks=True)
        self.set_ignored_paths(paths=[SIGNATURE_NAME], ignore_git_paths=True)
        self.set_allow_symlinks(True)
        self._cache = cache or DigestCache(None)
        self._reuse = reuse  # False: hash every file (and still cache the digests)
        self._racy_ns = int((RACY_S if racy_s is None else racy_s) * 1e9)
        self.hashed: manifest.Manifest | None = None
        self.files = self.total_bytes = self.hashed_files = self.hashed_bytes = 0
        self.seconds = 0.0

    def add_ignored_paths(self, *, model_path: Any, paths: Iterable[Any]) -> None:
        """A signature's ``ignore_paths`` are not honoured (see the class)."""

    def hash(self, model_path: Any, *, files_to_hash: Iterable[Any] | None = None) -> manifest.Manifest:
        started, wall = time.monotonic(), time.time_ns()
        folder = Path(model_path)
        files = [Path(p) for p in files_to_hash] if files_to_hash is not None else model_files(folder)
        identities = {path: FileIdentity.of(path) for path in files}
        known = {path: self._cache.get(identity) if self._reuse else None for path, identity in identities.items()}
        misses = [path for path, digest in known.items() if digest is None]
        fresh = super().hash(folder, files_to_hash=misses)  # model_signing hashes these, in parallel
        serialization = manifest.SerializationType.from_args(fresh.serialization_type)
        hashed_now = file_digests(fresh)
        digests = {path.relative_to(folder).as_posix(): d for path, d in known.items() if d is not None}
        digests.update(hashed_now)
        items = [serialization.new_item(name, Digest("sha256", bytes.fromhex(d))) for name, d in digests.items()]
        self._remember(folder, misses, identities, hashed_now, wall)
        self.hashed = manifest.Manifest(folder.name or folder.resolve().name, items, serialization)
        self.files, self.total_bytes = len(files), sum(i.size for i in identities.values())
        self.hashed_files, self.hashed_bytes = len(misses), sum(identities[p].size for p in misses)
        self.seconds = time.monotonic() - started
        return self.hashed

    def _remember(
        self,
        folder: Path,
        paths: Sequence[Path],
        identities: dict[Path, FileIdentity],
        digests: dict[str, str],
        wall: int,
    ) -> None:
        """Cache what was just hashed, unless the file changed meanwhile or too recently to tell."""
        for path in paths:
            digest = digests.get(path.relative_to(folder).as_posix())
            before = identities[path]
            if digest is None or max(before.mtime_ns, before.ctime_ns) > wall - self._racy_ns:
                continue
            with contextlib.suppress(OSError):
                if FileIdentity.of(path) == before:
                    self._cache.put(before, digest)
        self._cache.save()
