"""Approved model artifacts: a model folder is served only if its files match a manifest an operator signed.

The format is OpenSSF model signing's (the ``model_signing`` library, key signing, offline): a Sigstore
bundle holding a DSSE envelope whose in-toto statement lists every file's SHA-256 digest, signed with
an elliptic-curve key. ``paddock models approve`` writes it (``model.sig`` in the folder, as
``model_signing``'s own CLI does, which can verify it too); a replica verifies it before vLLM reads
anything (:func:`check`), and so does ``paddock models verify``.

An artifact is named by its manifest digest (``sha256:…``, the statement's subject): the audit records
of the requests it served carry it. A key is named by its fingerprint, the SHA-256 of its PEM public
key (the bundle's key hint). Either may be revoked (``approval.revoked``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from service.config.schema import ApprovalConfig, ModelConfig
from service.models.digests import SIGNATURE_NAME, DigestCache, FolderError, FolderHashing, file_digests
from service.models.digests import manifest_digest as digest_of
from service.models.sources import ModelSourceError

log = logging.getLogger(__name__)

Reason = Literal["missing", "unsigned", "uncovered", "untrusted", "tampered", "revoked"]


class ArtifactRefused(ModelSourceError):
    """The folder is not an approved artifact; ``files`` names the files that differ from the manifest."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        changed: Sequence[str] = (),
        added: Sequence[str] = (),
        missing: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.changed, self.added, self.missing = tuple(changed), tuple(added), tuple(missing)

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.changed, *self.added, *self.missing)


@dataclass(frozen=True)
class Artifact:
    """What a verification found: the files' manifest digest and, if approved, by which key."""

    folder: Path
    digest: str  # sha256:<hex> of the files as found (the signed one, when approved)
    approved: bool
    key: str | None  # the approving key's fingerprint
    files: int
    total_bytes: int
    hashed_bytes: int  # what was read this time: the rest came from the node's digest cache
    seconds: float
    problem: str | None = None  # why it is not approved (policy warn)

    def summary(self) -> str:
        source = f"approved by key {self.key}" if self.approved else f"NOT APPROVED: {self.problem}"
        return (
            f"artifact {self.digest} {source} ({self.files} files, {self.total_bytes / 1e9:.2f} GB; "
            f"hashed {self.hashed_bytes / 1e9:.2f} GB in {self.seconds:.2f}s)"
        )


@dataclass(frozen=True)
class _Signed:
    """What a signature file says (read before it is verified: only to choose the key and to report)."""

    key: str  # sha256:<hex> of the signing key, from the bundle's hint
    digest: str
    files: dict[str, str]


def fingerprint(public_key_pem: bytes) -> str:
    """A public key's fingerprint, ``sha256:<hex>`` of its PEM SubjectPublicKeyInfo (model_signing's key hint)."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_key_pem)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(pem).hexdigest()


def _private_fingerprint(private_key: Path, password: bytes | None) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_key.read_bytes(), password)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return fingerprint(pem)


def signature_path(folder: Path, signature: str | Path | None) -> Path:
    return folder / (signature or SIGNATURE_NAME)


def approve(
    folder: Path,
    private_key: Path,
    *,
    signature: Path | None = None,
    password: bytes | None = None,
    cache: DigestCache | None = None,
    workers: int = 4,
) -> Artifact:
    """Hash every file in ``folder`` afresh and sign the manifest with ``private_key`` (an EC PEM key)."""
    from model_signing import signing

    key = _private_fingerprint(private_key, password)
    hashing = FolderHashing(cache, workers=workers, reuse=False)
    target = signature_path(folder, signature)
    # model_signing annotates the password as str but hands it to cryptography's PEM loader, which takes bytes.
    signer = signing.Config().use_elliptic_key_signer(private_key=private_key, password=password)  # type: ignore[arg-type]
    signer.set_hashing_config(hashing).sign(folder, target)
    assert hashing.hashed is not None
    return _artifact(folder, hashing, approved=True, key=key)


def _artifact(
    folder: Path, hashing: FolderHashing, *, approved: bool, key: str | None, problem: str | None = None
) -> Artifact:
    assert hashing.hashed is not None
    return Artifact(
        folder,
        digest_of(hashing.hashed),
        approved,
        key,
        hashing.files,
        hashing.total_bytes,
        hashing.hashed_bytes,
        hashing.seconds,
        problem,
    )


def _read_signed(path: Path) -> _Signed:
    """The key hint, subject digest and files of a model_signing bundle (not verified yet)."""
    if not path.is_file():
        raise ArtifactRefused("unsigned", f"no approval signature at {path}")
    try:
        bundle = json.loads(path.read_text(encoding="utf-8"))
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        hint = bundle["verificationMaterial"]["publicKey"]["hint"]
        digest = statement["subject"][0]["digest"]["sha256"]
        files = {r["name"]: r["digest"] for r in statement["predicate"]["resources"] if r["algorithm"] == "sha256"}
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise ArtifactRefused("unsigned", f"{path} is not a model_signing key signature ({error})") from None
    return _Signed(f"sha256:{hint}", f"sha256:{digest}", files)


def _trusted(keys: Iterable[Path]) -> dict[str, Path]:
    trusted = {}
    for path in keys:
        try:
            trusted[fingerprint(path.read_bytes())] = path
        except (OSError, ValueError) as error:
            raise ArtifactRefused(
                "untrusted", f"approval key {path} is not a readable PEM public key: {error}"
            ) from None
    return trusted


def _differences(folder: Path, signed: dict[str, str], found: dict[str, str]) -> ArtifactRefused:
    changed = sorted(n for n in signed.keys() & found.keys() if signed[n] != found[n])
    added, missing = sorted(found.keys() - signed.keys()), sorted(signed.keys() - found.keys())
    parts = [f"{n} differs (approved sha256:{signed[n][:16]}…, found sha256:{found[n][:16]}…)" for n in changed]
    parts += [f"{n} is not in the approved manifest" for n in added]
    parts += [f"{n} is missing" for n in missing]
    message = f"{folder} is not the approved artifact: " + "; ".join(parts)
    return ArtifactRefused("tampered", message, changed=changed, added=added, missing=missing)


def verify(
    folder: Path,
    keys: Iterable[Path],
    *,
    revoked: Iterable[str] = (),
    signature: str | Path | None = None,
    cache: DigestCache | None = None,
    workers: int = 4,
) -> Artifact:
    """Verify ``folder`` against its signature with one of ``keys``; :class:`ArtifactRefused` if it is not approved."""
    from cryptography.exceptions import InvalidSignature
    from model_signing import verifying

    if not folder.is_dir():
        raise ArtifactRefused("missing", f"the model folder {folder} does not exist")
    path = signature_path(folder, signature)
    signed, trusted, revoked = _read_signed(path), _trusted(keys), frozenset(revoked)
    for name, digest in (("key", signed.key), ("artifact", signed.digest)):
        if digest in revoked:
            raise ArtifactRefused("revoked", f"{path}: the {name} {digest} is revoked (approval.revoked)")
    key = trusted.get(signed.key)
    if key is None:
        known = ", ".join(sorted(trusted)) or "none configured"
        raise ArtifactRefused("untrusted", f"{path} is signed by key {signed.key}, not a trusted one ({known})")
    hashing = FolderHashing(cache, workers=workers)
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=key).set_hashing_config(hashing).verify(folder, path)
    except FolderError as error:
        raise ArtifactRefused("tampered", str(error)) from None
    except (ValueError, InvalidSignature) as error:
        if hashing.hashed is None:  # the signature itself did not verify: nothing was hashed yet
            raise ArtifactRefused("untrusted", f"{path} does not verify with key {signed.key}: {error!r}") from None
        raise _differences(folder, signed.files, file_digests(hashing.hashed)) from None
    return _artifact(folder, hashing, approved=True, key=signed.key)


def digest_only(folder: Path, *, cache: DigestCache | None = None, workers: int = 4) -> tuple[FolderHashing, str]:
    """Hash ``folder`` without a signature: its manifest digest as found (what policy ``warn`` records)."""
    hashing = FolderHashing(cache, workers=workers)
    hashing.hash(folder)
    assert hashing.hashed is not None
    return hashing, digest_of(hashing.hashed)


def _chat_template_inside(model: ModelConfig, folder: Path) -> None:
    """A chat template file named by the model entry must be one of the folder's (covered by its manifest)."""
    template = model.chat_template
    if template is None or "{" in template or not Path(template).expanduser().is_file():
        return  # unset, or written inline in the config
    if not Path(template).expanduser().resolve().is_relative_to(folder.resolve()):
        raise ArtifactRefused(
            "uncovered",
            f"chat_template {template} is outside the model folder {folder}, so no approval covers it: copy it "
            "into the folder before approving it (or write the template inline)",
        )


def check(model: ModelConfig, folder: Path, config: ApprovalConfig, cache_dir: Path | None) -> Artifact | None:
    """What a replica runs before its engine loads ``folder``: verify it under the model's policy.

    ``required``: :class:`ArtifactRefused` (its message names the model and what differs). ``warn``: the
    refusal is logged and the artifact served, with its digest as found. ``off``: nothing is read.
    """
    policy = config.policy_for(model)
    if policy == "off":
        return None
    cache = DigestCache.for_folder(cache_dir, folder)
    keys = [Path(k).expanduser() for k in config.keys]
    try:
        _chat_template_inside(model, folder)
        return verify(
            folder, keys, revoked=config.revoked, signature=model.signature, cache=cache, workers=config.workers
        )
    except ArtifactRefused as refusal:
        if policy == "required":
            hint = (
                f"; approve it with `paddock models approve {folder} --key KEY`" if refusal.reason == "unsigned" else ""
            )
            raise ArtifactRefused(
                refusal.reason,
                f"model {model.id}: {refusal}{hint}",
                changed=refusal.changed,
                added=refusal.added,
                missing=refusal.missing,
            ) from None
        log.warning("model %s: SERVING AN UNAPPROVED ARTIFACT (approval: warn): %s", model.id, refusal)
        hashing, _ = digest_only(folder, cache=cache, workers=config.workers)
        return _artifact(folder, hashing, approved=False, key=None, problem=str(refusal))


def describe(artifact: Artifact) -> dict[str, Any]:
    """The artifact as JSON (``paddock models verify --json``)."""
    return {
        "folder": str(artifact.folder),
        "artifact": artifact.digest,
        "approved": artifact.approved,
        "key": artifact.key,
        "files": artifact.files,
        "bytes": artifact.total_bytes,
        "hashed_bytes": artifact.hashed_bytes,
        "seconds": round(artifact.seconds, 3),
        "problem": artifact.problem,
    }
