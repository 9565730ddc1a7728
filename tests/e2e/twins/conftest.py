"""One Paddock stack serving every model-family twin (harness/twins.py), shared by these tests.

The twins are generated into ``.cache/paddock/twins/`` on first use (a few seconds each,
then reused). The stack is started with the real CLI (``paddock serve --config``) in its
own process group, with governance on, and stopped at the end of the session.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness import twins
from harness.ports import free_port
from tests.e2e.conftest import Stack, serve_stack

ROOT = Path(__file__).resolve().parents[3]

# Families vLLM CPU cannot serve: family -> the exact error (their tests are strict xfails).
UNSERVABLE: dict[str, str] = {}
SERVED = [family for family in twins.TWINS if family not in UNSERVABLE]


def _ensure_twins() -> dict[str, Path]:
    if not (twins.SMOLLM2 / "tokenizer.json").is_file():  # the substitute tokenizer: `paddock prepare` builds it
        subprocess.run([str(ROOT / ".venv/bin/paddock"), "prepare"], cwd=ROOT, check=True)
    return {family: twins.make_twin(family) for family in SERVED}


# The forced-output tests send two vLLM extensions, which governance refuses unless allowed.
ALLOWED_FIELDS = ["structured_outputs", "chat_template_kwargs"]


def write_governance(path: Path, allowed_fields: list[str] = ALLOWED_FIELDS) -> dict[str, str]:
    """One tenant for every twin, with a fresh key (named "acme", the Stack helpers' default)."""
    from service.governance.keys import hash_key, new_key

    key = new_key()
    tenant = {
        "id": "twins",
        "models": ["*"],
        "parameters": {"allowed_fields": allowed_fields},
        "keys": [{"id": "key-twins", "hash": hash_key(key)}],
    }
    path.write_text(yaml.safe_dump({"version": 1, "tenants": [tenant]}, sort_keys=False))
    return {"acme": key}


# The parser tests force the whole output, reasoning included, with a grammar: vLLM constrains only the
# answer after the reasoning unless structured outputs are enabled in the reasoning too. (gpt-oss
# needs neither: vLLM wraps its grammars in harmony's channels itself.)
FORCE_IN_REASONING: dict[str, dict[str, object]] = {
    "deepseek-v3": {"enable_in_reasoning": True},
    "qwen3-moe": {"enable_in_reasoning": True},
}


def twin_entry(family: str, path: Path) -> dict[str, object]:
    entry = twins.model_entry(twins.TWINS[family], path, cpus=0.25)
    if family in FORCE_IN_REASONING:
        entry["engine_args"] = {**entry.get("engine_args", {}), "structured_outputs_config": FORCE_IN_REASONING[family]}
    return entry


def write_config(path: Path, paths: dict[str, Path], port: int, admin_port: int, metrics_port: int) -> None:
    config = {
        "models": [twin_entry(family, paths[family]) for family in SERVED],
        "ingress": {"port": port, "cpus": 0.25},
        "admin": {"port": admin_port},
        "metrics": {"port": metrics_port},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="session")
def twin_stack() -> Iterator[Stack]:
    paths = _ensure_twins()
    ports = free_port(), free_port(), free_port()
    state_dir = Path(tempfile.mkdtemp(prefix="pd-state-", dir="/tmp"))
    keys = write_governance(state_dir / "governance.yaml")
    config_file = state_dir / "twins.yaml"
    write_config(config_file, paths, *ports)
    with serve_stack(config_file, ports, keys, state_dir, log_name="paddock-twins-e2e.log") as stack:
        yield stack
