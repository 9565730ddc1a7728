"""Governance state across pods (issue 16, item 6): the node-local store only with one Paddock pod,
Redis with credentials beside the URL (password, ACL user, CA bundle as files), and governance out
of the database Ray's GCS fault tolerance writes."""

from __future__ import annotations

from typing import Any

import pytest
from chart_tools import Rendered, helm_template, parse

REDIS = ["--set", "governance.stateStore.type=redis", "--set", "governance.stateStore.redis.url=redis://r:6379/1"]
RAY = ["--set", "mode=rayservice"]

LOCAL_WITH_MANY_PODS = [
    (["--set", "replicaCount=2"], "runs up to 2 Paddock pods (replicaCount or autoscaling.maxReplicas)"),
    (["--set", "autoscaling.enabled=true", "--set", "autoscaling.maxReplicas=3"], "runs up to 3 Paddock pods"),
    (RAY + ["--set", "ingress.replicas=2"], "runs up to 2 Paddock pods (ingress.replicas: one Ray node each)"),
]


@pytest.mark.parametrize(("args", "message"), LOCAL_WITH_MANY_PODS, ids=["replicas", "hpa", "ray-ingresses"])
def test_the_local_store_is_refused_with_more_than_one_pod(args: list[str], message: str) -> None:
    refused = helm_template([], args, check=False)
    assert refused.returncode != 0
    assert "governance.stateStore.type local keeps limits, budgets and kills in each pod" in refused.stderr
    assert message in refused.stderr and "Set governance.stateStore.type redis" in refused.stderr
    # The same release with a shared store renders; and without governance there is nothing to share.
    assert helm_template([], args + REDIS).returncode == 0
    assert helm_template([], args + ["--set", "governance.enabled=false"]).returncode == 0


def test_one_pod_keeps_the_local_store() -> None:
    for args in ([], ["--set", "autoscaling.enabled=true", "--set", "autoscaling.maxReplicas=1"], RAY):
        assert helm_template([], args).returncode == 0, args


def server_pod(result: Rendered) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the Paddock container's env, the pod spec) of the standalone pod."""
    spec = result.one("Deployment")["spec"]["template"]["spec"]
    return {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}, spec


def test_redis_credentials_are_files_and_settings_beside_the_url() -> None:
    args = [
        "--set", "governance.stateStore.type=redis",
        "--set", "governance.stateStore.redis.url=rediss://redis.example:6380/3",
        "--set", "governance.stateStore.redis.username=paddock",
        "--set", "governance.stateStore.redis.existingSecret=redis-auth",
        "--set", "governance.stateStore.redis.passwordKey=pw",
        "--set", "governance.stateStore.redis.caSecret.name=redis-ca",
    ]  # fmt: skip
    env, spec = server_pod(parse("redis", helm_template([], args).stdout))
    assert env["PADDOCK_STATE_STORE"] == "rediss://redis.example:6380/3"
    assert env["PADDOCK_STATE_STORE_USERNAME"] == "paddock"
    assert env["PADDOCK_STATE_STORE_PASSWORD_FILE"] == "/etc/paddock/redis/pw"
    assert env["PADDOCK_STATE_STORE_CA_FILE"] == "/etc/paddock/redis-ca/ca.crt"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["redis-password"]["secret"]["secretName"] == "redis-auth"
    assert volumes["redis-ca"]["secret"] == {
        "secretName": "redis-ca",
        "defaultMode": 0o444,
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["redis-password"] == "/etc/paddock/redis" and mounts["redis-ca"] == "/etc/paddock/redis-ca"


def test_redis_urls_name_their_database() -> None:
    args = ["--set", "governance.stateStore.type=redis", "--set", "governance.stateStore.redis.url=redis://r:6379"]
    refused = helm_template([], args, check=False)
    assert refused.returncode != 0 and "and name the database, e.g. redis://" in refused.stderr, refused.stderr


def test_credentials_in_the_url_fail_the_schema() -> None:
    args = [
        "--set",
        "governance.stateStore.type=redis",
        "--set",
        "governance.stateStore.redis.url=redis://:pw@r:6379/1",
    ]
    refused = helm_template([], args, check=False)
    assert refused.returncode != 0 and "governance.stateStore.redis.url" in refused.stderr


def test_a_ca_bundle_needs_tls() -> None:
    refused = helm_template([], REDIS + ["--set", "governance.stateStore.redis.caSecret.name=ca"], check=False)
    assert refused.returncode != 0 and "the url must be rediss://" in refused.stderr


def gcs(address: str) -> list[str]:
    return RAY + [
        "--set",
        "rayService.gcsFaultTolerance.enabled=true",
        "--set",
        f"rayService.gcsFaultTolerance.redisAddress={address}",
    ]


def test_governance_stays_out_of_the_gcs_database() -> None:
    same_db = ["--set", "governance.stateStore.type=redis", "--set", "governance.stateStore.redis.url=redis://r:6379/0"]
    refused = helm_template([], same_db + gcs("r:6379"), check=False)
    assert refused.returncode != 0
    assert "uses database 0 of r:6379, where Ray's GCS fault tolerance" in refused.stderr
    assert "redis://r:6379/1" in refused.stderr  # the way out
    refused = helm_template([], same_db + gcs("redis://r:6379"), check=False)
    assert refused.returncode != 0  # the same server, however the address is written
    assert helm_template([], REDIS + gcs("r:6379")).returncode == 0  # database 1 beside Ray's 0
    assert helm_template([], same_db + gcs("other:6379")).returncode == 0  # another Redis altogether
