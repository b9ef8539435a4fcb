"""Table and plot of ``rss_growth.py``'s runs: ``.venv/bin/python benchmarks/rss_report.py``.

Reads every ``<label>.jsonl`` of ``rss_growth.py`` under ``--dir`` (default
benchmarks/results/rss/), writes rss.md (per run: the first and last round's RSS and anonymous
RSS, the growth per 100 requests over the whole run and over its second half, the distinct GEMM
shapes) and rss.png (anonymous RSS against requests served, one line per run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTROLS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_")


def load_runs(directory: Path) -> dict[str, list[dict]]:
    runs = {}
    for path in sorted(directory.glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows and "round" in rows[0]:
            runs[rows[0]["label"]] = rows
    return runs


def per_100(rows: list[dict], key: str) -> float:
    first, last = rows[0], rows[-1]
    return 100 * (last[key] - first[key]) / max(last["requests"] - first["requests"], 1)


def table(runs: dict[str, list[dict]]) -> str:
    lines = [
        "| run | requests | RSS first → last (MiB) | anon first → last (MiB) "
        "| anon MiB / 100 req (all / 2nd half) | GEMM shapes | env |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, rows in runs.items():
        first, last = rows[0], rows[-1]
        env = ", ".join(f"{k}={v}" for k, v in first["env"].items() if k in CONTROLS and v)
        half = rows[len(rows) // 2 :]
        lines.append(
            f"| {label} ({first['run']}, {first['shapes']}) | {last['requests']} "
            f"| {first['rss_mib']:.0f} → {last['rss_mib']:.0f} "
            f"| {first['rss_anon_mib']:.0f} → {last['rss_anon_mib']:.0f} "
            f"| {per_100(rows, 'rss_anon_mib'):+.1f} / {per_100(half, 'rss_anon_mib'):+.1f} "
            f"| {last['gemm_shapes']} | {env or '-'} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5))
    for label, rows in runs.items():
        axis.plot([r["requests"] for r in rows], [r["rss_anon_mib"] for r in rows], label=label)
    axis.set_xlabel("requests served")
    axis.set_ylabel("engine process anonymous RSS (MiB)")
    axis.set_title("in-process engine RSS per round (rss_growth.py)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=HERE / "results" / "rss")
    args = parser.parse_args()
    runs = load_runs(args.dir)
    (args.dir / "rss.md").write_text(table(runs))
    plot(runs, args.dir / "rss.png")
    print(table(runs))


if __name__ == "__main__":
    main()
