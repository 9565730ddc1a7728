"""``make bench``: Paddock vs raw ``vllm serve``, same model, engine settings, load and machine.

Both servers run side by side; ``vllm bench serve`` drives each in turn with
the random dataset (fixed seeds), at every concurrency, for several
interleaved rounds. Printed: both results and Paddock/raw ratios with their
spread over rounds. Written: the raw bench JSON of every run and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.servers import ROOT, Server, start_paddock, start_raw_vllm
from service.config.loader import load_config
from service.models.sources import resolve

METRICS = ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms")
# A stream whose tokens reach the client together (median gap between them under this) arrived in
# one burst: its "TTFT" is the whole response time, not a first-token time. Seen on 2 cores when the
# client process is not scheduled while the engine spins; such rounds are left out of TTFT and TPOT
# comparisons.
BURST_ITL_MS = 0.1


def burst(result: dict[str, Any]) -> bool:
    """Did this run's streams arrive in one piece (so its TTFT says nothing about the first token)?"""
    itl = result.get("median_itl_ms")
    return itl is not None and itl < BURST_ITL_MS


def bench_once(
    server: Server, model: str, tokenizer: Path, c: int, prompts: int, seed: int, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "bench.vllm_cli",
        "bench",
        "serve",
        "--backend",
        "openai",
        "--endpoint",
        "/v1/completions",
        "--base-url",
        server.base_url,
        "--model",
        model,
        "--tokenizer",
        str(tokenizer),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(args.input_len),
        "--random-output-len",
        str(args.output_len),
        "--ignore-eos",
        "--num-prompts",
        str(prompts),
        "--max-concurrency",
        str(c),
        "--seed",
        str(seed),
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,99",
        "--save-result",
        "--result-dir",
        str(out.parent),
        "--result-filename",
        out.name,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if server.api_key:  # Paddock runs with governance on: the bench client sends its key
        env["OPENAI_API_KEY"] = server.api_key
    with (out.parent / "bench-client.log").open("ab") as log:
        subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    result = json.loads(out.read_text())
    expected = prompts * args.output_len
    if result["completed"] != prompts or result["total_output_tokens"] != expected:
        raise RuntimeError(
            f"{server.name} c={c}: {result['completed']}/{prompts} completed, {result['total_output_tokens']}/{expected} tokens"
        )
    return result


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict[str, Any]], concurrencies: list[int]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for c in concurrencies:
        by_round: dict[int, dict[str, dict[str, Any]]] = {}
        for run in runs:
            if run["concurrency"] == c:
                by_round.setdefault(run["round"], {})[run["target"]] = run["result"]
        rounds = [r for r in by_round.values() if {"raw", "paddock"} <= set(r)]
        entry: dict[str, Any] = {}
        for metric in METRICS:
            raw = [r["raw"][metric] for r in rounds]
            pad = [r["paddock"][metric] for r in rounds]
            entry[metric] = {"raw": spread(raw), "paddock": spread(pad)}
        entry["throughput_ratio"] = spread(
            [r["paddock"]["output_throughput"] / r["raw"]["output_throughput"] for r in rounds]
        )
        # latency comparisons: rounds where neither stream arrived in one burst (all, if none did)
        paired = [r for r in rounds if not (burst(r["raw"]) or burst(r["paddock"]))] or rounds
        entry["ttft_p50_delta_ms"] = spread(
            [r["paddock"]["median_ttft_ms"] - r["raw"]["median_ttft_ms"] for r in paired]
        )
        entry["tpot_p50_ratio"] = spread([r["paddock"]["median_tpot_ms"] / r["raw"]["median_tpot_ms"] for r in paired])
        entry["latency_rounds"] = {"used": len(paired), "of": len(rounds)}
        entry["burst_runs"] = {t: sum(burst(r[t]) for r in rounds) for t in ("raw", "paddock")}
        summary[str(c)] = entry
    return summary


def table(summary: dict[str, Any]) -> str:
    def fmt(s: dict[str, float], digits: int = 1) -> str:
        return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"

    lines = [
        "| c | metric | raw vLLM | Paddock | Paddock vs raw |",
        "|---|---|---|---|---|",
    ]
    for c, entry in summary.items():
        ttft, tpot = fmt(entry["ttft_p50_delta_ms"], 2) + " ms", fmt(entry["tpot_p50_ratio"], 3) + "×"
        bursts = entry.get("burst_runs", {})
        if any(bursts.values()):
            scope = "over {used} of {of} rounds".format(**entry["latency_rounds"])
            ttft += (
                f" ({scope}; streams arrived in one burst in {bursts['raw']} raw and {bursts['paddock']} Paddock runs)"
            )
            tpot += f" ({scope})"
        rows = [
            ("output tok/s", "output_throughput", fmt(entry["throughput_ratio"], 3) + "×"),
            ("TTFT p50 ms", "median_ttft_ms", ttft),
            ("TTFT p99 ms", "p99_ttft_ms", ""),
            ("TPOT p50 ms", "median_tpot_ms", tpot),
        ]
        for label, metric, versus in rows:
            lines.append(
                f"| {c} | {label} | {fmt(entry[metric]['raw'])} | {fmt(entry[metric]['paddock'])} | {versus} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--config", type=Path, default=None, help="Paddock config (default: the embedded two-model default)"
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="serve a tiny random Llama (bench/tiny_model.py) beside MiniLM, to resolve serving overhead",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompts-per-stream", type=int, default=4, help="requests per concurrent stream")
    parser.add_argument(
        "--min-prompts",
        type=int,
        default=8,
        help="requests per run at least; raise it with --tiny (at c=1 one slow request in 8 moves a round ~20%%)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / time.strftime("%Y%m%d-%H%M%S"))
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, raw: Server, paddock: Server, tokenizer: Path) -> list[dict[str, Any]]:
    runs = []
    for target in (raw, paddock):  # warm both up (first requests compile and allocate)
        bench_once(
            target,
            args.model,
            tokenizer,
            4,
            8,
            args.seed - 1,
            args,
            args.out / f"warmup-{target.name.split()[-1]}.json",
        )
    for round_ in range(args.rounds):
        for c in args.concurrency:
            order = [("raw", raw), ("paddock", paddock)]
            order = order if round_ % 2 == 0 else order[::-1]
            for label, server in order:
                prompts = max(c * args.prompts_per_stream, args.min_prompts)
                out = args.out / f"r{round_}-c{c}-{label}.json"
                result = bench_once(server, args.model, tokenizer, c, prompts, args.seed + round_, args, out)
                runs.append(
                    {
                        "round": round_,
                        "concurrency": c,
                        "target": label,
                        "result": {
                            k: result[k] for k in (*METRICS, "median_itl_ms", "total_output_tokens", "completed")
                        },
                    }
                )
                note = "  (arrived in one burst)" if burst(result) else ""
                print(
                    f"round {round_} c={c:<3} {label:<8} {result['output_throughput']:8.1f} tok/s  TTFT p50 {result['median_ttft_ms']:7.2f} ms  TPOT p50 {result['median_tpot_ms']:6.2f} ms{note}",
                    flush=True,
                )
    return runs


TINY_ID = "tiny-llama"


def bench_config(args: argparse.Namespace) -> Path:
    """The Paddock config file to benchmark (written into the output folder unless given)."""
    if args.config is not None:
        return args.config
    from service.config.loader import default_config_text

    config_path = args.out / "paddock.yaml"
    data = yaml.safe_load(default_config_text())
    if args.tiny:
        from bench.tiny_model import prepared_tiny_llama

        tiny = prepared_tiny_llama(ROOT)
        data["models"][0] = {
            "id": TINY_ID,
            "source": {"path": str(tiny)},
            "dtype": "float32",
            "max_model_len": 2048,
            "kv_cache_memory": "256MiB",
            "resources": {"cpus": 1},
            "approval": "off",  # generated here, from the embedded model
        }
        args.model = TINY_ID
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return config_path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    config_path = bench_config(args)
    config = load_config(config_path)
    model = config.model_by_name()[args.model]
    path = resolve(model, ROOT / ".cache" / "paddock", print)
    print(f"starting raw vLLM and Paddock ({', '.join(m.id for m in config.models)}) on {model.id}…", flush=True)
    raw = start_raw_vllm(model, path, args.out)
    try:
        paddock = start_paddock(config_path, args.out)
        try:
            runs = measure(args, raw, paddock, path)
        finally:
            paddock.stop()
    finally:
        raw.stop()
    summary = summarise(runs, args.concurrency)
    report = {
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "model": model.id,
        "paddock_models": [m.id for m in config.models],
        "input_len": args.input_len,
        "output_len": args.output_len,
        "rounds": args.rounds,
        "runs": runs,
        "summary": summary,
    }
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    print("\n" + table(summary))
    print(f"\nresults: {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
