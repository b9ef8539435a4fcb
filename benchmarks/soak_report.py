"""The soak's table (soak.md) and RSS plot (soak_rss.png) from its JSON lines (``soak.py``).

    .venv/bin/python benchmarks/soak_report.py [OUT_DIR]     # default benchmarks/results/soak/

Only each run's latest sitting counts: rounds.jsonl is appended to, and a run's round 0 starts
a new sitting.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROCESSES = {"worker": "VLLM::Worker", "engine core": "VLLM::EngineCore"}  # vLLM's titles: the
# worker holds the model runner (and the plugin's runner state), the engine core the scheduler


def latest_sittings(rounds_path: Path) -> dict[str, list[dict]]:
    """run -> its round records of the latest sitting."""
    runs: dict[str, list[dict]] = {}
    for line in rounds_path.read_text().splitlines():
        record = json.loads(line)
        if record["round"] == 0:
            runs[record["run"]] = []
        runs.setdefault(record["run"], []).append(record)
    return runs


def process_rss(record: dict, title: str) -> float | None:
    """MiB of the server's process with that title at the end of the round."""
    return record["rss_mib"].get(title)


def rss_growth(rounds: list[dict], title: str) -> tuple[float | None, float | None, float | None]:
    """(first, last, MiB per 100 requests between the second round and the last) of one
    process: the first round is warm-up (allocator pools, lazily built kernels)."""
    points = [(r["requests"], process_rss(r, title)) for r in rounds]
    points = [(n, mib) for n, mib in points if mib is not None]
    if not points:
        return None, None, None
    first, last = points[0][1], points[-1][1]
    if len(points) < 3:
        return first, last, None
    (n0, m0), (n1, m1) = points[1], points[-1]
    return first, last, round(100 * (m1 - m0) / (n1 - n0), 2)


def rss_cells(rounds: list[dict]) -> list[str]:
    cells = []
    for title in PROCESSES.values():
        first, last, per_100 = rss_growth(rounds, title)
        cells.append(f"{first} → {last}" if first is not None else "–")
        cells.append(str(per_100) if per_100 is not None else "–")
    return cells


def physical_cell(run: str, last: dict) -> str:
    if run.startswith("none:"):
        return "– (stock vLLM: no packcache metrics)"
    return f"{last['max_physical_tokens']} ({last['num_over_bound']} over)"


def table_row(run: str, rounds: list[dict]) -> str:
    last = rounds[-1]
    totals = last["totals"]
    idle_worst = {
        key: max(r["idle"].get(key, 0) for r in rounds) for key in ("running", "kv_usage")
    }
    deaths = sum(not r["server_alive"] for r in rounds)
    cells = [
        run,
        last["requests"],
        totals["served"],
        totals["aborted"],
        f"{totals['rejected']} / {last['bad_sent']} bad",
        totals["error"],
        last["wrong_tokens"],
        physical_cell(run, last),
        f"{idle_worst['running']:g} / {idle_worst['kv_usage']:g}",
        deaths,
        last["error_events"],
        *rss_cells(rounds),
        last["seconds"],
    ]
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


HEADER = (
    "| run | requests | served | aborted | rejected | HTTP errors | wrong tokens "
    "| max physical tokens (requests over bound) | worst idle running / KV usage | server deaths "
    "| ERROR events in the log | worker RSS MiB, first → last round | worker MiB / 100 requests "
    "| engine-core RSS MiB | engine-core MiB / 100 requests | seconds |"
)


def write_table(out: Path, runs: dict[str, list[dict]]) -> Path:
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    lines += [table_row(run, rounds) for run, rounds in runs.items()]
    path = out / "soak.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_plot(out: Path, runs: dict[str, list[dict]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, len(PROCESSES), figsize=(12, 4.5))
    for axes, (label, title) in zip(panels, PROCESSES.items(), strict=True):
        for run, rounds in runs.items():
            points = [(r["requests"], process_rss(r, title)) for r in rounds]
            points = [(n, mib) for n, mib in points if mib is not None]
            if points:
                axes.plot(*zip(*points, strict=True), marker="o", markersize=3, label=run)
        axes.set_xlabel("requests sent")
        axes.set_ylabel(f"{label} RSS after the round (MiB)")
        axes.set_title(f"vllm serve {label} ({title})")
        axes.grid(alpha=0.3)
        axes.legend()
    path = out / "soak_rss.png"
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(out: Path) -> dict[str, list[dict]]:
    runs = latest_sittings(out / "rounds.jsonl")
    print(f"wrote {write_table(out, runs)} and {write_plot(out, runs)}")
    return runs


if __name__ == "__main__":
    write_report(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results" / "soak")
