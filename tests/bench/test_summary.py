"""The benchmark's arithmetic: ratios are per round, then summarised as median and spread."""

from __future__ import annotations

from bench.run import summarise, table
from bench.servers import raw_vllm_args
from service.config.loader import default_config


def run(round_: int, target: str, tput: float, ttft: float, itl: float | None = None) -> dict[str, object]:
    result = {"output_throughput": tput, "median_ttft_ms": ttft, "p99_ttft_ms": ttft * 2, "median_tpot_ms": 10.0}
    if itl is not None:
        result["median_itl_ms"] = itl
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


def test_rounds_whose_streams_arrived_in_one_burst_leave_the_ttft_delta() -> None:
    runs = [
        run(0, "raw", 100, 250, itl=0.003),  # the whole response at once: its TTFT is the response time
        run(0, "paddock", 100, 14, itl=4.0),
        run(1, "raw", 100, 13, itl=4.1),
        run(1, "paddock", 95, 15, itl=4.2),
        run(2, "raw", 100, 12, itl=4.0),
        run(2, "paddock", 100, 15, itl=0.01),
    ]
    entry = summarise(runs, [1])["1"]
    assert entry["ttft_p50_delta_ms"] == {"median": 2.0, "min": 2.0, "max": 2.0}
    assert entry["latency_rounds"] == {"used": 1, "of": 3}
    assert entry["burst_runs"] == {"raw": 1, "paddock": 1}
    assert entry["throughput_ratio"]["min"] == 0.95  # throughput still counts every round
    assert entry["tpot_p50_ratio"]["median"] == 1.0  # TPOT, like TTFT, only where the stream was not one burst
    assert "(over 1 of 3 rounds; streams arrived in one burst in 1 raw and 1 Paddock runs)" in table({"1": entry})


def test_without_clean_rounds_every_round_counts() -> None:
    runs = [run(0, "raw", 100, 250, itl=0.003), run(0, "paddock", 100, 14, itl=4.0)]
    entry = summarise(runs, [1])["1"]
    assert entry["ttft_p50_delta_ms"]["median"] == -236.0
    assert entry["latency_rounds"] == {"used": 1, "of": 1}
    assert "(over 1 of 1 rounds; streams arrived in one burst in 1 raw and 0 Paddock runs)" in table({"1": entry})


def test_raw_vllm_gets_the_same_engine_settings() -> None:
    model = default_config().model_by_name()["smollm2-135m-instruct"]
    args = raw_vllm_args(model, "/m")  # type: ignore[arg-type]
    assert args[:4] == ["/m", "--served-model-name", "smollm2-135m-instruct", "smollm2"]
    joined = " ".join(args)
    assert "--dtype float32" in joined and "--enforce-eager" in joined
    assert "--max-model-len 2048" in joined and f"--kv-cache-memory-bytes {1024**3}" in joined
