"""The governance micro-benchmark's core runs end to end on the node-local store (no timing thresholds)."""

from __future__ import annotations

from bench.governance import measure, report, verdict

PIECES = {"authenticate", "shape_request", "store.admit", "audit write"}


def test_measure_reports_percentiles_for_a_small_local_run() -> None:
    result = measure(10, 50, "local", warmup=10, pieces=True)
    assert (result["keys"], result["tenants"], result["requests"], result["warmup"]) == (10, 1, 50, 10)
    for timings in (result["decision_us"], result["settle_us"], *result["pieces_us"].values()):
        assert set(timings) == {"p50", "p90", "p99"}
        assert 0 < timings["p50"] <= timings["p90"] <= timings["p99"]
    assert set(result["pieces_us"]) == PIECES

    results = [{"backend": "local", **result}]
    outcome = verdict(results)
    assert outcome["flatness"] == 1.0 and outcome["text"].startswith("verdict: ")
    assert "| local | 10 |" in report(results)
