"""Helpers of the Helm chart tests: tools, scenarios, rendering.

The tools (helm, kubernetes-validate, checkov) come from scripts/install-chart-tools.sh, which
`make test` runs first; a missing tool is a test failure, not a skip. The CRD schemas are public
data outside the project (../shared/crds): without them the CRD tests skip, saying so.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config.loader import load_config_file
from service.config.schema import ServiceConfig

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "paddock"
TOOLS = REPO / ".cache" / "tools"
HELM = TOOLS / "bin" / "helm"
KUBERNETES_VALIDATE = TOOLS / "kubernetes-validate" / "bin" / "kubernetes-validate"
CHECKOV = TOOLS / "checkov" / "bin" / "checkov"
RELEASE = "paddock"
NAMESPACE = "paddock"

# Scenario name -> values files (chart CI scenarios, then the documented example values).
SCENARIOS: dict[str, list[Path]] = {
    **{f"ci/{p.name.removesuffix('-values.yaml')}": [p] for p in sorted((CHART / "ci").glob("*-values.yaml"))},
    **{f"example/{p.stem}": [p] for p in sorted((REPO / "deploy" / "values").glob("*.yaml"))},
}


def tool(path: Path) -> Path:
    """A chart tool, or a failure that says how to install it."""
    if not path.exists():
        pytest.fail(f"{path.relative_to(REPO)} is missing: run `bash scripts/install-chart-tools.sh` (make test does)")
    return path


def run(args: list[str | Path], check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def helm_template(values: list[Path], extra: list[str] | None = None, check: bool = True, chart: Path = CHART):
    args: list[str | Path] = [tool(HELM), "template", RELEASE, chart, "--namespace", NAMESPACE]
    for path in values:
        args += ["-f", path]
    return run(args + (extra or []), check=check)


@dataclass
class Rendered:
    name: str
    text: str
    docs: list[dict[str, Any]] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name or ''}, found {len(found)}"
        return found[0]


def parse(name: str, text: str) -> Rendered:
    docs = [d for d in yaml.safe_load_all(text) if d]
    return Rendered(name, text, docs)


@pytest.fixture(scope="session")
def rendered() -> dict[str, Rendered]:
    """Every scenario rendered once (helm template)."""
    assert SCENARIOS, "no scenarios found"
    return {name: parse(name, helm_template(values).stdout) for name, values in SCENARIOS.items()}


@pytest.fixture(scope="session")
def rendered_dir(rendered: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rendered manifests as files, one per scenario."""
    out = tmp_path_factory.mktemp("rendered")
    for name, result in rendered.items():
        (out / (name.replace("/", "-") + ".yaml")).write_text(result.text)
    return out


def find_crds() -> Path | None:
    """../shared/crds from the repository (or any parent of it)."""
    for parent in [REPO, *REPO.parents]:
        candidate = parent / "shared" / "crds"
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def crds_dir() -> Path:
    found = find_crds()
    if found is None:
        pytest.skip("CRD schemas not found (shared/crds next to the repository): CRD validation skipped")
    return found


# Hub and catalog models are approved artifacts (approval: required): a render needs trusted public keys.
APPROVAL_KEYS = [
    "--set",
    "approval.keysSecret.name=approval-keys",
    "--set-json",
    'approval.keysSecret.keys=["models.pub"]',
]


def service_config(result: Rendered, tmp_path: Path) -> ServiceConfig:
    """The Paddock service config a render carries (the RayService's serveConfigV2, or the ConfigMap's)."""
    path = tmp_path / (result.name.replace("/", "-") + ".yaml")
    if result.of_kind("RayService"):
        path.write_text(result.one("RayService")["spec"]["serveConfigV2"])
    else:
        path.write_text(result.one("ConfigMap", "paddock-config")["data"]["paddock.yaml"])
    return load_config_file(path)
