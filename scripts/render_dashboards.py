"""Draws the dashboards' main panels from a real Prometheus (no Grafana server needed).

    .venv/bin/python scripts/render_dashboards.py --prometheus http://127.0.0.1:9090 --minutes 10 --out docs/dashboards.png

Each panel's expressions come from the committed dashboard JSON (Grafana's
variables substituted: every model, every tenant) and are run through
Prometheus' ``query_range`` API; matplotlib draws one chart per panel.
``python -m bench.dashboards`` produces real data to draw.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOARDS = ROOT / "helm" / "paddock" / "files" / "dashboards"
VARIABLES = {"$__rate_interval": "1m", "$model": ".*", "$tenant": ".*"}
MAIN_PANELS = [  # (dashboard, panel title)
    ("paddock-overview", "Requests per second by model"),
    ("paddock-overview", "Requests per second by status"),
    ("paddock-overview", "Time to first token (streams)"),
    ("paddock-overview", "Inter-token latency (TPOT, streams)"),
    ("paddock-overview", "Output tokens per second by model"),
    ("paddock-overview", "Tokens per second by tenant"),
    ("paddock-overview", "Rate-limited and killed requests"),
    ("paddock-overview", "Replicas: healthy vs autoscaling target"),
    ("paddock-engine", "KV-cache usage"),
    ("paddock-engine", "Running and waiting requests"),
    ("paddock-governance", "Tokens per minute vs limit"),
    ("paddock-governance", "Daily token budget used"),
]
UNITS = {"reqps": "requests/s", "s": "seconds", "percentunit": "fraction", "short": ""}


def panels() -> list[tuple[str, dict[str, object]]]:
    boards = {p.stem: json.loads(p.read_text()) for p in BOARDS.glob("*.json")}
    out = []
    for uid, title in MAIN_PANELS:
        panel = next(p for p in boards[uid]["panels"] if p["title"] == title)
        out.append((boards[uid]["title"], panel))
    return out


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict[str, object]]:
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{query}", timeout=30) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def legend(template: str, labels: dict[str, str]) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def render(base: str, start: float, end: float, out: Path) -> dict[str, int]:
    """Draw the main panels into ``out``; return the number of series each panel got."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = panels()
    cols = 3
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.2 * rows), squeeze=False)
    step = max((end - start) / 240, 1.0)
    counts: dict[str, int] = {}
    for ax, (_board, panel) in zip(axes.flat, chosen, strict=False):
        n = 0
        for target in panel["targets"]:  # type: ignore[union-attr]
            for series in query_range(base, substitute(target["expr"]), start, end, step):
                points = [(float(t) - start, float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot([x / 60 for x in xs], ys, label=legend(target["legendFormat"], series["metric"])[:40])
                    n += 1
        counts[str(panel["title"])] = n
        ax.set_title(f"{panel['title']}", fontsize=10)
        ax.set_xlabel("minutes", fontsize=8)
        ax.set_ylabel(UNITS.get(panel["fieldConfig"]["defaults"]["unit"], ""), fontsize=8)  # type: ignore[index]
        ax.tick_params(labelsize=7)
        if n:
            ax.legend(fontsize=6, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in list(axes.flat)[len(chosen) :]:
        ax.axis("off")
    fig.suptitle("Paddock dashboards: main panels (real Prometheus data)", fontsize=12)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=10.0, help="the time range: the last N minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboards.png")
    args = parser.parse_args(argv)
    end = time.time()
    counts = render(args.prometheus.rstrip("/"), end - args.minutes * 60, end, args.out)
    for title, n in counts.items():
        print(f"{n:3d} series  {title}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
