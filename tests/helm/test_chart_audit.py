"""The audit log on Kubernetes (issue 16, item 7): rotation, retention and refusal aggregation from the values, as
the settings the service reads, and sized to fit the state volume at render time."""

from __future__ import annotations

from typing import Any

import pytest
from chart_tools import Rendered, helm_template, parse

from service.config.settings import Settings

AUDIT_ENV = (
    "PADDOCK_AUDIT_MAX_FILE_BYTES",
    "PADDOCK_AUDIT_ROTATE_INTERVAL_S",
    "PADDOCK_AUDIT_MAX_TOTAL_BYTES",
    "PADDOCK_AUDIT_MAX_FILES",
    "PADDOCK_AUDIT_REFUSAL_WINDOW_S",
)


def paddock_env(result: Rendered) -> dict[str, Any]:
    """The Paddock container's env: the standalone Deployment's, or the RayService head's."""
    if result.of_kind("RayService"):
        spec = result.one("RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    else:
        spec = result.one("Deployment")["spec"]["template"]["spec"]
    return {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}


def settings_from(env: dict[str, Any]) -> Settings:
    """What the service makes of the rendered audit settings (pydantic-settings from the environment)."""
    return Settings(**{name.removeprefix("PADDOCK_").lower(): env[name] for name in AUDIT_ENV})


def test_the_default_audit_settings_reach_the_service_and_fit_the_state_emptydir() -> None:
    env = paddock_env(parse("default", helm_template([]).stdout))
    settings = settings_from(env)
    assert settings.audit_max_file_bytes == 64 << 20 and settings.audit_rotate_interval_s == 86400
    assert settings.audit_max_total_bytes == 1 << 30 and settings.audit_max_files == 0
    assert settings.audit_refusal_window_s == 10
    assert env["PADDOCK_AUDIT_STDOUT"] == "true" and env["PADDOCK_AUDIT_DIR"] == "/var/lib/paddock/audit"


@pytest.mark.parametrize("mode", ["standalone", "rayservice"])
def test_audit_values_are_rendered_as_settings(mode: str) -> None:
    args = [
        "--set", f"mode={mode}",
        "--set", "governance.audit.maxFileSize=16Mi",
        "--set", "governance.audit.rotateIntervalSeconds=3600",
        "--set", "governance.audit.maxTotalSize=512Mi",
        "--set", "governance.audit.maxFiles=1000000",
        "--set-json", "governance.audit.refusalWindowSeconds=2.5",
    ]  # fmt: skip
    settings = settings_from(paddock_env(parse(mode, helm_template([], args).stdout)))
    assert (settings.audit_max_file_bytes, settings.audit_max_total_bytes) == (16 << 20, 512 << 20)
    assert (settings.audit_rotate_interval_s, settings.audit_max_files) == (3600, 1_000_000)
    assert settings.audit_refusal_window_s == 2.5


OVERSIZED = [
    (["--set", "governance.audit.maxTotalSize=2Gi"], "over 90% of state.emptyDirSizeLimit (2Gi)"),
    (
        ["--set", "ingress.replicas=12", "--set", "governance.audit.maxFileSize=128Mi"],
        "an open segment (maxFileSize 128Mi) for each of the pod's 12 ingress processes",
    ),
    (["--set", "governance.audit.maxTotalSize=0"], "would let the audit log fill state.emptyDirSizeLimit (2Gi)"),
    (
        ["--set", "state.persistentVolumeClaim.create=true", "--set", "state.persistentVolumeClaim.size=1Gi"],
        "over 90% of state.persistentVolumeClaim.size (1Gi)",
    ),
    (["--set", "governance.audit.maxTotalSize=100Mi"], "must be at least twice maxFileSize (64Mi)"),
]


@pytest.mark.parametrize(("args", "message"), OVERSIZED, ids=["total", "writers", "unbounded", "pvc", "ratio"])
def test_an_audit_log_that_could_fill_its_volume_is_refused_at_render_time(args: list[str], message: str) -> None:
    refused = helm_template([], args, check=False)
    assert refused.returncode != 0 and message in refused.stderr, refused.stderr


def test_a_bigger_volume_or_smaller_segments_render() -> None:
    for args in (
        ["--set", "governance.audit.maxTotalSize=2Gi", "--set", "state.emptyDirSizeLimit=4Gi"],
        ["--set", "ingress.replicas=12", "--set", "governance.audit.maxFileSize=32Mi"],
        ["--set", "ingress.replicas=12", "--set", "ingress.max_replicas_per_node=2", "--set", "governance.audit.maxFileSize=128Mi"],
        ["--set", "state.persistentVolumeClaim.existingClaim=mine", "--set", "governance.audit.maxTotalSize=0"],
        ["--set", "governance.enabled=false", "--set", "governance.audit.maxTotalSize=0"],
    ):  # fmt: skip
        assert helm_template([], args, check=False).returncode == 0, args
