"""Turn a ``bench.run`` summary into docs: a PNG plot and the markdown table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.run import table


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = report["summary"]
    levels = list(summary)
    panels = [
        ("output_throughput", "output tokens/s (higher is better)"),
        ("median_ttft_ms", "TTFT p50, ms (lower is better)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(10, 4))
    for ax, (metric, title) in zip(axes, panels, strict=False):
        for offset, (target, label, color) in enumerate(
            [("raw", "raw vllm serve", "#888888"), ("paddock", "Paddock", "#2b6cb0")]
        ):
            xs = [i + (offset - 0.5) * 0.38 for i in range(len(levels))]
            stats = [summary[c][metric][target] for c in levels]
            heights = [s["median"] for s in stats]
            errors = [
                [h - s["min"] for h, s in zip(heights, stats, strict=False)],
                [s["max"] - h for h, s in zip(heights, stats, strict=False)],
            ]
            ax.bar(xs, heights, width=0.36, yerr=errors, capsize=4, label=label, color=color)
        ax.set_xticks(range(len(levels)), [f"c={c}" for c in levels])
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle(
        f"{report['model']}, random {report['input_len']} in / {report['output_len']} out, median of {report['rounds']} rounds (bars: min–max)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("summary", type=Path)
    parser.add_argument("--png", type=Path, default=Path("docs/benchmarks.png"))
    args = parser.parse_args()
    report = json.loads(args.summary.read_text())
    plot(report, args.png)
    print(table(report["summary"]))


if __name__ == "__main__":
    main()
