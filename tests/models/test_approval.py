"""Approved model artifacts (service/models/approval.py): approve a folder, then verify it as a replica would."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest
from model_signing import verifying

from service.models import digests
from service.models.approval import ArtifactRefused, approve, fingerprint, verify
from service.models.digests import DigestCache
from tests.models.artifacts import OTHER_TEMPLATE, Keys, make_keys


def statement(signature: Path) -> dict[str, object]:
    return json.loads(base64.b64decode(json.loads(signature.read_text())["dsseEnvelope"]["payload"]))


def refusal(model_dir: Path, keys: list[Path], **kwargs: object) -> ArtifactRefused:
    with pytest.raises(ArtifactRefused) as caught:
        verify(model_dir, keys, **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_an_approved_folder_verifies_and_is_named_by_its_signed_manifest_digest(
    model_dir: Path, operator: Keys
) -> None:
    approved = approve(model_dir, operator.private)
    signed = statement(model_dir / "model.sig")
    assert approved.digest == "sha256:" + signed["subject"][0]["digest"]["sha256"]  # type: ignore[index]
    names = {r["name"] for r in signed["predicate"]["resources"]}  # type: ignore[index]
    assert names == {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "model.safetensors",
        "nested/generation_config.json",
    }  # weights, tokenizer, chat template and config; not the signature itself
    verified = verify(model_dir, [operator.public])
    assert (verified.digest, verified.key, verified.approved) == (approved.digest, approved.key, True)
    assert verified.key == fingerprint(operator.public.read_bytes())
    assert verified.files == 6 and verified.total_bytes > 256 * 1024


def test_the_signature_is_model_signings_own_format(model_dir: Path, operator: Keys) -> None:
    """The library's own verifier, with nothing of Paddock's, accepts what `paddock models approve` wrote."""
    approve(model_dir, operator.private)
    verifying.Config().use_elliptic_key_verifier(public_key=operator.public).verify(model_dir, model_dir / "model.sig")


def test_one_tampered_byte_is_refused_naming_the_file(model_dir: Path, operator: Keys) -> None:
    approve(model_dir, operator.private)
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    refused = refusal(model_dir, [operator.public])
    assert refused.reason == "tampered" and refused.changed == ("model.safetensors",)
    assert "model.safetensors differs" in str(refused) and not refused.added and not refused.missing


def test_a_swapped_chat_template_is_refused(model_dir: Path, operator: Keys) -> None:
    approve(model_dir, operator.private)
    (model_dir / "chat_template.jinja").write_text(OTHER_TEMPLATE)
    refused = refusal(model_dir, [operator.public])
    assert refused.files == ("chat_template.jinja",)
    assert "chat_template.jinja differs (approved sha256:" in str(refused)


def test_an_added_file_and_a_removed_one_are_refused(model_dir: Path, operator: Keys) -> None:
    approve(model_dir, operator.private)
    (model_dir / "added.safetensors").write_bytes(b"\0" * 64)
    (model_dir / "nested" / "generation_config.json").unlink()
    refused = refusal(model_dir, [operator.public])
    assert refused.added == ("added.safetensors",) and refused.missing == ("nested/generation_config.json",)
    assert "added.safetensors is not in the approved manifest" in str(refused)
    assert "nested/generation_config.json is missing" in str(refused)


def test_a_signature_by_another_key_is_refused(model_dir: Path, operator: Keys, stranger: Keys) -> None:
    approve(model_dir, stranger.private)
    refused = refusal(model_dir, [operator.public])
    assert refused.reason == "untrusted"
    assert fingerprint(stranger.public.read_bytes()) in str(refused)  # which key signed it
    assert verify(model_dir, [operator.public, stranger.public]).key == fingerprint(stranger.public.read_bytes())


def test_a_forged_key_hint_and_an_edited_manifest_do_not_verify(
    model_dir: Path, operator: Keys, stranger: Keys
) -> None:
    signature = model_dir / "model.sig"
    approve(model_dir, stranger.private)  # the stranger's signature, claiming to be the operator's
    bundle = json.loads(signature.read_text())
    bundle["verificationMaterial"]["publicKey"]["hint"] = fingerprint(operator.public.read_bytes())[7:]
    signature.write_text(json.dumps(bundle))
    assert refusal(model_dir, [operator.public]).reason == "untrusted"
    approve(model_dir, operator.private)  # a real approval, whose manifest is then edited to match other weights
    (model_dir / "model.safetensors").write_bytes(b"other weights")
    bundle = json.loads(signature.read_text())
    payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    for resource in payload["predicate"]["resources"]:
        if resource["name"] == "model.safetensors":
            resource["digest"] = digests.hashlib.sha256(b"other weights").hexdigest()
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    signature.write_text(json.dumps(bundle))
    refused = refusal(model_dir, [operator.public])
    assert refused.reason == "untrusted" and "does not verify" in str(refused)


def test_a_revoked_key_or_artifact_is_refused_before_anything_is_hashed(model_dir: Path, operator: Keys) -> None:
    approved = approve(model_dir, operator.private)
    (model_dir / "model.safetensors").unlink()  # would be "missing" if it came to hashing
    for revoked in (approved.key, approved.digest):
        refused = refusal(model_dir, [operator.public], revoked=[revoked])
        assert refused.reason == "revoked" and str(revoked) in str(refused)


def test_an_unsigned_or_missing_folder_is_refused(tmp_path: Path, model_dir: Path, operator: Keys) -> None:
    refused = refusal(model_dir, [operator.public])
    assert refused.reason == "unsigned" and str(model_dir / "model.sig") in str(refused)
    (model_dir / "model.sig").write_text("{}")
    assert refusal(model_dir, [operator.public]).reason == "unsigned"
    assert refusal(tmp_path / "absent", [operator.public]).reason == "missing"


def test_a_signature_kept_outside_the_folder(tmp_path: Path, model_dir: Path, operator: Keys) -> None:
    outside = tmp_path / "approvals" / "m.sig"
    outside.parent.mkdir()
    approve(model_dir, operator.private, signature=outside)
    assert not (model_dir / "model.sig").exists()
    assert verify(model_dir, [operator.public], signature=outside).approved
    assert refusal(model_dir, [operator.public]).reason == "unsigned"


def test_a_link_to_a_folder_is_refused(tmp_path: Path, model_dir: Path, operator: Keys) -> None:
    """model_signing does not descend into a linked folder: its files would go unchecked."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "extra.safetensors").write_bytes(b"x")
    approve(model_dir, operator.private)
    (model_dir / "original").symlink_to(elsewhere)
    refused = refusal(model_dir, [operator.public])
    assert refused.reason == "tampered" and "links to a folder" in str(refused)


def test_linked_files_are_hashed_through_their_link(tmp_path: Path, model_dir: Path, operator: Keys) -> None:
    """A Hugging Face snapshot links every file to a blob: the blob's content is what is checked."""
    blob = tmp_path / "blob"
    blob.write_bytes(b"weights in a blob")
    (model_dir / "linked.safetensors").symlink_to(blob)
    approve(model_dir, operator.private)
    assert verify(model_dir, [operator.public]).approved
    blob.write_bytes(b"weights changed in the blob")
    assert refusal(model_dir, [operator.public]).changed == ("linked.safetensors",)


def test_wrong_key_files_are_refused_clearly(tmp_path: Path, model_dir: Path, operator: Keys) -> None:
    approve(model_dir, operator.private)
    (tmp_path / "garbage.pub").write_text("not a key")
    refused = refusal(model_dir, [tmp_path / "garbage.pub"])
    assert refused.reason == "untrusted" and "garbage.pub" in str(refused)
    other = make_keys(tmp_path, "other")
    assert refusal(model_dir, [other.public]).reason == "untrusted"


# --- the digest cache ---------------------------------------------------------------------------


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files may be cached however recently they changed (the test waits out the clock's tick itself)."""
    monkeypatch.setattr(digests, "RACY_S", 0.0)
    time.sleep(0.05)  # past the coarse timestamp tick of the files just written


def test_a_second_verification_on_the_node_hashes_nothing(
    tmp_path: Path, model_dir: Path, operator: Keys, settled: None
) -> None:
    cache_dir = tmp_path / "cache"
    approve(model_dir, operator.private, cache=DigestCache.for_folder(cache_dir, model_dir))  # approving fills it
    again = verify(model_dir, [operator.public], cache=DigestCache.for_folder(cache_dir, model_dir))
    assert again.hashed_bytes == 0 and again.files == 6
    (model_dir / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": 65}\n')
    refused = refusal(model_dir, [operator.public], cache=DigestCache.for_folder(cache_dir, model_dir))
    assert refused.changed == ("config.json",)


def test_a_tampered_file_whose_mtime_was_put_back_is_hashed_again(
    tmp_path: Path, model_dir: Path, operator: Keys, settled: None
) -> None:
    """Same size, same mtime, same inode: the ctime still moved, so the cached digest is not used."""
    cache_dir = tmp_path / "cache"
    approve(model_dir, operator.private)
    assert verify(model_dir, [operator.public], cache=DigestCache.for_folder(cache_dir, model_dir)).hashed_bytes > 0
    weights = model_dir / "model.safetensors"
    before = os.stat(weights)
    time.sleep(0.05)
    with open(weights, "r+b") as handle:
        handle.seek(10)
        byte = handle.read(1)
        handle.seek(10)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(weights)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    refused = refusal(model_dir, [operator.public], cache=DigestCache.for_folder(cache_dir, model_dir))
    assert refused.changed == ("model.safetensors",)


def test_a_file_just_written_is_not_cached(tmp_path: Path, model_dir: Path, operator: Keys) -> None:
    """Within RACY_S of a change, a write in the same clock tick could leave the file's times as they were."""
    cache_dir = tmp_path / "cache"
    approve(model_dir, operator.private, cache=DigestCache.for_folder(cache_dir, model_dir))
    again = verify(model_dir, [operator.public], cache=DigestCache.for_folder(cache_dir, model_dir))
    assert again.hashed_bytes == again.total_bytes


def test_an_unreadable_cache_is_ignored(tmp_path: Path, model_dir: Path, operator: Keys, settled: None) -> None:
    cache = DigestCache.for_folder(tmp_path / "cache", model_dir)
    approve(model_dir, operator.private, cache=cache)
    assert cache.path is not None and cache.path.is_file()
    cache.path.write_text("{not json")
    again = verify(model_dir, [operator.public], cache=DigestCache.for_folder(tmp_path / "cache", model_dir))
    assert again.approved and again.hashed_bytes == again.total_bytes
