"""The approval policy a replica applies before loading (``approval.check``): required, warn, off."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from service.config.loader import parse_config
from service.config.schema import ApprovalConfig, ModelConfig
from service.models import digests
from service.models.approval import ArtifactRefused, approve, check, digest_only
from tests.models.artifacts import OTHER_TEMPLATE, Keys


def entry(folder: Path, **fields: Any) -> ModelConfig:
    return ModelConfig.model_validate({"id": "m", "source": {"path": str(folder)}, "kv_cache_memory": "1GiB", **fields})


def trusting(keys: Keys, **fields: Any) -> ApprovalConfig:
    return ApprovalConfig(keys=(str(keys.public),), **fields)


def test_the_default_is_required_but_off_for_the_embedded_demo(tmp_path: Path) -> None:
    config = parse_config(
        {
            "models": [
                {"id": "own", "source": {"path": "/m"}, "kv_cache_memory": "1GiB"},
                {"id": "demo", "source": {"embedded": "all-minilm-l6-v2"}, "task": "embed"},
                {
                    "id": "relaxed",
                    "source": {"hf": "org/x", "revision": "a" * 40},
                    "approval": "warn",
                    "kv_cache_memory": "1GiB",
                },
            ]
        },
        "test",
    )
    policies = {m.id: config.approval.policy_for(m) for m in config.models}
    assert policies == {"own": "required", "demo": "off", "relaxed": "warn"}
    everywhere = ApprovalConfig(policy="required")
    assert {m.id: everywhere.policy_for(m) for m in config.models} == {
        "own": "required",
        "demo": "required",
        "relaxed": "warn",
    }


def test_the_config_rejects_what_is_not_a_digest_and_unknown_keys() -> None:
    with pytest.raises(ValueError, match="sha256:<64 lowercase hex digits>"):
        ApprovalConfig(revoked=("deadbeef",))
    with pytest.raises(ValueError, match="Extra inputs"):
        ApprovalConfig.model_validate({"polcy": "off"})
    with pytest.raises(ValueError):
        ModelConfig.model_validate(
            {"id": "m", "source": {"path": "/m"}, "kv_cache_memory": "1GiB", "approval": "maybe"}
        )


def test_required_refuses_a_tampered_folder_naming_the_model_and_the_file(model_dir: Path, operator: Keys) -> None:
    approve(model_dir, operator.private)
    (model_dir / "chat_template.jinja").write_text(OTHER_TEMPLATE)
    with pytest.raises(ArtifactRefused, match=r"^model m: .*chat_template\.jinja differs") as caught:
        check(entry(model_dir), model_dir, trusting(operator), None)
    assert caught.value.changed == ("chat_template.jinja",)


def test_required_refuses_an_unsigned_folder_and_says_how_to_approve_it(model_dir: Path, operator: Keys) -> None:
    with pytest.raises(ArtifactRefused, match=r"no approval signature .*paddock models approve"):
        check(entry(model_dir), model_dir, trusting(operator), None)
    approve(model_dir, operator.private)
    with pytest.raises(ArtifactRefused, match="not a trusted one \\(none configured\\)"):
        check(entry(model_dir), model_dir, ApprovalConfig(), None)


def test_required_serves_an_approved_folder(tmp_path: Path, model_dir: Path, operator: Keys) -> None:
    approved = approve(model_dir, operator.private)
    artifact = check(entry(model_dir), model_dir, trusting(operator), tmp_path / "cache")
    assert artifact is not None and artifact.approved and artifact.digest == approved.digest


def test_warn_serves_an_unapproved_folder_with_its_digest_as_found(
    model_dir: Path, operator: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    approve(model_dir, operator.private)
    (model_dir / "model.safetensors").write_bytes(b"swapped")
    with caplog.at_level(logging.WARNING):
        artifact = check(entry(model_dir, approval="warn"), model_dir, trusting(operator), None)
    assert artifact is not None and not artifact.approved and artifact.key is None
    assert artifact.digest == digest_only(model_dir)[1]
    assert "model.safetensors differs" in (artifact.problem or "")
    assert "SERVING AN UNAPPROVED ARTIFACT" in caplog.text
    unsigned = model_dir / "model.sig"
    unsigned.unlink()
    assert check(entry(model_dir, approval="warn"), model_dir, trusting(operator), None) is not None


def test_off_reads_nothing(tmp_path: Path, operator: Keys) -> None:
    absent = tmp_path / "absent"
    assert check(entry(absent, approval="off"), absent, trusting(operator), None) is None
    assert check(entry(absent), absent, trusting(operator, policy="off"), None) is None


def test_a_chat_template_outside_the_folder_is_not_covered_so_it_is_refused(
    tmp_path: Path, model_dir: Path, operator: Keys
) -> None:
    approve(model_dir, operator.private)
    outside = tmp_path / "template.jinja"
    outside.write_text(OTHER_TEMPLATE)
    with pytest.raises(ArtifactRefused, match="outside the model folder") as caught:
        check(entry(model_dir, chat_template=str(outside)), model_dir, trusting(operator), None)
    assert caught.value.reason == "uncovered" and "paddock models approve" not in str(caught.value)
    inside = str(model_dir / "chat_template.jinja")
    assert check(entry(model_dir, chat_template=inside), model_dir, trusting(operator), None) is not None
    inline = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert check(entry(model_dir, chat_template=inline), model_dir, trusting(operator), None) is not None


def test_a_restarted_replica_on_the_same_node_hashes_nothing(
    tmp_path: Path, model_dir: Path, operator: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digests, "RACY_S", 0.0)
    time.sleep(0.05)  # past the coarse timestamp tick of the files just written
    approve(model_dir, operator.private)
    first = check(entry(model_dir), model_dir, trusting(operator), tmp_path / "cache")
    second = check(entry(model_dir), model_dir, trusting(operator), tmp_path / "cache")
    assert first is not None and second is not None
    assert first.hashed_bytes == first.total_bytes and second.hashed_bytes == 0
    assert second.digest == first.digest
    assert list((tmp_path / "cache" / "approval").glob("*.json"))  # under PADDOCK_CACHE_DIR, on the node's disk
