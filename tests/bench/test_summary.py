"""The benchmark's arithmetic: ratios are per round, then summarised as median and spread."""

from __future__ import annotations

from bench.run import summarise, table
from bench.servers import raw_vllm_args
from service.config.loader import default_config


def run(round_: int, target: str, tput: float, ttft: float) -> dict[str, object]:
    result = {"output_throughput": tput, "median_ttft_ms": ttft, "p99_ttft_ms": ttft * 2, "median_tpot_ms": 10.0}
    return {"round": round_, "concurrency": 1, "target": target, "result": result}


def test_ratios_are_paired_by_round() -> None:
    runs = [
        run(0, "raw", 100, 10),
        run(0, "paddock", 90, 11),
        run(1, "raw", 50, 10),
        run(1, "paddock", 50, 12),
        run(2, "raw", 100, 10),
        run(2, "paddock", 100, 10),
    ]
    entry = summarise(runs, [1])["1"]
    assert entry["throughput_ratio"] == {"median": 1.0, "min": 0.9, "max": 1.0}
    assert entry["ttft_p50_delta_ms"] == {"median": 1.0, "min": 0.0, "max": 2.0}
    assert entry["output_throughput"]["raw"]["median"] == 100
    assert "| 1 | output tok/s | 100.0 (50.0–100.0) | 90.0 (50.0–100.0) | 1.000 (0.900–1.000)× |" in table({"1": entry})


def test_raw_vllm_gets_the_same_engine_settings() -> None:
    model = default_config().model_by_name()["smollm2-135m-instruct"]
    args = raw_vllm_args(model, "/m")  # type: ignore[arg-type]
    assert args[:4] == ["/m", "--served-model-name", "smollm2-135m-instruct", "smollm2"]
    joined = " ".join(args)
    assert "--dtype float32" in joined and "--enforce-eager" in joined
    assert "--max-model-len 2048" in joined and f"--kv-cache-memory-bytes {1024**3}" in joined
