"""Approved model artifacts through the chart: the policy, the trusted keys and where they are mounted."""

from __future__ import annotations

import json
from pathlib import Path

from chart_tools import APPROVAL_KEYS, Rendered, helm_template, parse, service_config

from service.config.schema import ServiceConfig

HUB = json.dumps([{"catalog": "gpt-oss-20b"}])


def config_of(text: str, tmp_path: Path) -> tuple[Rendered, ServiceConfig]:
    rendered = parse("approval", text)
    return rendered, service_config(rendered, tmp_path)


def test_a_model_that_must_be_approved_needs_keys_or_the_render_fails() -> None:
    result = helm_template([], ["--set-json", f"models={HUB}"], check=False)
    assert result.returncode != 0
    assert "models[0] (gpt-oss-20b) must be an approved artifact" in result.stderr
    assert "paddock models approve" in result.stderr


def test_the_keys_reach_the_config_and_every_pod(tmp_path: Path) -> None:
    result = helm_template(
        [],
        ["--set-json", f"models={HUB}", "--set-json", 'approval.revoked=["sha256:' + "a" * 64 + '"]', *APPROVAL_KEYS],
    )
    rendered, config = config_of(result.stdout, tmp_path)
    assert config.approval.keys == ("/etc/paddock/approval-keys/models.pub",)
    assert config.approval.revoked == ("sha256:" + "a" * 64,)
    assert config.approval.policy_for(config.models[0]) == "required"
    spec = rendered.one("Deployment")["spec"]["template"]["spec"]
    [volume] = [v for v in spec["volumes"] if v["name"] == "approval-keys"]
    assert volume["secret"] == {
        "secretName": "approval-keys",
        "defaultMode": 0o444,
        "items": [{"key": "models.pub", "path": "models.pub"}],
    }
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["approval-keys"]["mountPath"] == "/etc/paddock/approval-keys" and mounts["approval-keys"]["readOnly"]


def test_a_model_may_opt_out_and_the_demo_needs_no_keys(tmp_path: Path) -> None:
    off = json.dumps([{"catalog": "gpt-oss-20b", "approval": "off"}])
    _, config = config_of(helm_template([], ["--set-json", f"models={off}"]).stdout, tmp_path)
    assert config.approval.policy_for(config.models[0]) == "off"
    _, demo = config_of(helm_template([]).stdout, tmp_path)  # the embedded demo models
    assert {demo.approval.policy_for(m) for m in demo.models} == {"off"}


def test_a_service_wide_warn_needs_no_keys(tmp_path: Path) -> None:
    _, config = config_of(
        helm_template([], ["--set-json", f"models={HUB}", "--set", "approval.policy=warn"]).stdout, tmp_path
    )
    assert config.approval.policy_for(config.models[0]) == "warn"
