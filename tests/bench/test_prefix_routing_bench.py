"""The prefix-routing benchmark's workload, metric reading and pairing (no servers)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from bench import prefix_routing
from bench.prefix_routing import parse_args, scrape, summarise, workload
from service.api.routing import prefix_key


def test_each_group_shares_one_routing_key_and_passes_differ() -> None:
    args = parse_args(["--groups", "5", "--per-group", "4"])
    requests = workload(args, 7)
    assert len(requests) == 20
    keys = {prefix_key("chat", {"messages": messages}) for messages in requests}
    assert None not in keys and len(keys) == 5
    assert {m[1]["content"] for m in requests} != {m[1]["content"] for m in workload(args, 8)}
    assert workload(args, 7) == requests  # the same prompts for both modes


METRICS = b"""# HELP ray_vllm_prefix_cache_hits_total hits
ray_vllm_prefix_cache_hits_total{ReplicaId="r1",engine="0",model_name="tiny-llama"} 100.0
ray_vllm_prefix_cache_hits_total{ReplicaId="r2",engine="0",model_name="tiny-llama"} 20.0
ray_vllm_prefix_cache_queries_total{ReplicaId="r1",engine="0",model_name="tiny-llama"} 400.0
ray_vllm_request_success_total{ReplicaId="r1",engine="0",finished_reason="length",model_name="tiny-llama"} 3.0
ray_vllm_request_success_total{ReplicaId="r1",engine="0",finished_reason="stop",model_name="tiny-llama"} 1.0
"""


def test_counters_are_summed_over_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefix_routing.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(METRICS))
    values = scrape("http://x/metrics")
    assert values["ray_vllm_prefix_cache_hits_total"] == 120
    assert values["ray_vllm_prefix_cache_queries_total"] == 400
    assert values["success:r1"] == 4


def entry(mode: str, round_: int, hit: float, ttft: float) -> dict[str, Any]:
    return {"mode": mode, "round": round_, "pass": 0, "hit_rate": hit, "ttft_p50_ms": ttft, "ttft_p90_ms": ttft}


def test_modes_are_paired_by_round_and_pass() -> None:
    passes = [
        entry("prefix", 0, 0.7, 50),
        entry("least_loaded", 0, 0.5, 100),
        entry("least_loaded", 1, 0.4, 80),
        entry("prefix", 1, 0.8, 80),
    ]
    summary = summarise(passes)
    assert summary["prefix"]["hit_rate"] == {"median": 0.75, "min": 0.7, "max": 0.8}
    assert summary["ttft_p50_ratio"] == {"median": 0.75, "min": 0.5, "max": 1.0}
    assert summary["hit_rate_delta"]["min"] == pytest.approx(0.2)
