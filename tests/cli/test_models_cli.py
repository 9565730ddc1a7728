"""``paddock models approve|verify``: the operator's side of approved model artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from service.cli import main as cli
from tests.models.artifacts import OTHER_TEMPLATE, Keys, make_keys, make_model


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PADDOCK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PADDOCK_CONFIG", raising=False)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path, "operator")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_model(tmp_path / "model")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_approve_writes_the_signature_and_verify_accepts_it(
    capsys: pytest.CaptureFixture[str], folder: Path, keys: Keys
) -> None:
    code, out, _ = run(capsys, "models", "approve", str(folder), "--key", str(keys.private), "--json")
    assert code == 0 and (folder / "model.sig").is_file()
    approved = json.loads(out)
    assert approved["approved"] and approved["files"] == 6 and approved["artifact"].startswith("sha256:")
    code, out, _ = run(capsys, "models", "verify", str(folder), "--key", str(keys.public), "--json")
    verified = json.loads(out)
    assert code == 0 and (verified["artifact"], verified["key"]) == (approved["artifact"], approved["key"])
    code, out, _ = run(capsys, "models", "verify", str(folder), "--key", str(keys.public))
    assert code == 0 and f"artifact  {approved['artifact']}" in out and f"key       {approved['key']}" in out


def test_verify_refuses_a_swapped_template_naming_it(
    capsys: pytest.CaptureFixture[str], folder: Path, keys: Keys
) -> None:
    assert run(capsys, "models", "approve", str(folder), "--key", str(keys.private))[0] == 0
    (folder / "chat_template.jinja").write_text(OTHER_TEMPLATE)
    code, out, err = run(capsys, "models", "verify", str(folder), "--key", str(keys.public), "--json")
    assert code == 1 and "REFUSED (tampered)" in err and "chat_template.jinja differs" in err
    assert json.loads(out)["files"] == ["chat_template.jinja"]


def test_verify_with_another_key_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, folder: Path, keys: Keys
) -> None:
    run(capsys, "models", "approve", str(folder), "--key", str(keys.private))
    other = make_keys(tmp_path, "other")
    code, _, err = run(capsys, "models", "verify", str(folder), "--key", str(other.public))
    assert code == 1 and "REFUSED (untrusted)" in err


def test_verify_takes_keys_and_revocations_from_the_service_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, folder: Path, keys: Keys
) -> None:
    code, out, _ = run(capsys, "models", "approve", str(folder), "--key", str(keys.private), "--json")
    key = json.loads(out)["key"]
    config = {
        "approval": {"keys": [str(keys.public)]},
        "models": [{"id": "m", "source": {"path": str(folder)}, "kv_cache_memory": "1GiB"}],
    }
    path = tmp_path / "paddock.yaml"
    path.write_text(yaml.safe_dump(config))
    assert run(capsys, "models", "verify", str(folder), "--config", str(path))[0] == 0
    code, _, err = run(capsys, "models", "verify", str(folder), "--config", str(path), "--revoked", key)
    assert code == 1 and f"the key {key} is revoked" in err
    config["approval"]["revoked"] = [key]  # type: ignore[index]
    path.write_text(yaml.safe_dump(config))
    assert run(capsys, "models", "verify", str(folder), "--config", str(path))[0] == 1


def test_verify_without_a_key_or_with_a_malformed_revocation_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], folder: Path, keys: Keys
) -> None:
    code, _, err = run(capsys, "models", "verify", str(folder))
    assert code == 2 and "no key to verify with" in err
    code, _, err = run(capsys, "models", "verify", str(folder), "--key", str(keys.public), "--revoked", "abc")
    assert code == 2 and "--revoked 'abc'" in err


def test_approve_with_an_unusable_key_says_so(capsys: pytest.CaptureFixture[str], folder: Path, keys: Keys) -> None:
    code, _, err = run(capsys, "models", "approve", str(folder), "--key", str(keys.public))
    assert code == 2 and "cannot approve" in err and not (folder / "model.sig").exists()


def test_verify_reuses_the_nodes_digest_cache_unless_told_not_to(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, folder: Path, keys: Keys
) -> None:
    from service.models import digests

    monkeypatch.setattr(digests, "RACY_S", 0.0)
    run(capsys, "models", "approve", str(folder), "--key", str(keys.private))
    cached = json.loads(run(capsys, "models", "verify", str(folder), "--key", str(keys.public), "--json")[1])
    fresh = json.loads(
        run(capsys, "models", "verify", str(folder), "--key", str(keys.public), "--json", "--no-cache")[1]
    )
    assert cached["hashed_bytes"] == 0 and fresh["hashed_bytes"] == fresh["bytes"] > 0
