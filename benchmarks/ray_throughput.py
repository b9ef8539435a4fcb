"""Videos per minute vs Ray replicas, full cache vs PackCache, in one run.

    .venv/bin/python benchmarks/ray_throughput.py --replicas 1 2 --videos 8 --frames 12

For every (policy, replicas) pair: a fresh batch job (``packcache_vllm.scale``) over the same
requests on one local Ray cluster, replicas of ``--cpus-per-replica`` CPUs each. Two rates:
``end_to_end`` counts the whole job (replica start included), ``generation`` counts only the time
the busiest replica spent generating. Every replica's PackCache counters are recorded. Writes
``benchmarks/results/ray_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
POLICIES = ("full", "packcache")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts")
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--videos", type=int, default=8, help="videos per job")
    parser.add_argument("--frames", type=int, default=12, help="latent frames per video")
    parser.add_argument("--window", type=int, default=4, help="packcache window W")
    parser.add_argument("--rows", type=int, default=8, help="frame grid rows")
    parser.add_argument("--cols", type=int, default=12, help="frame grid columns")
    parser.add_argument("--batch-size", type=int, default=4, help="requests per engine call")
    parser.add_argument("--cpus-per-replica", type=float, default=1.0)
    parser.add_argument("--gpus-per-replica", type=float, default=0.0)
    parser.add_argument("--address", default=None, help="existing Ray cluster; default local")
    parser.add_argument("--out", type=Path, default=RESULTS, help="result directory")
    return parser.parse_args()


def make_requests(path: Path, args: argparse.Namespace) -> Path:
    from packcache_vllm.model.factory import make_video_prompt

    rng = random.Random(0)
    with path.open("w") as out:
        for n in range(args.videos):
            text = [4 + b for b in f"benchmark clip {n}".encode()]
            prompt = make_video_prompt(
                args.rows, args.cols, text, with_condition_frame=True, rng=rng
            )
            out.write(
                json.dumps({"id": f"v{n}", "prompt_token_ids": prompt, "frames": args.frames})
            )
            out.write("\n")
    return path


def run_one(model: Path, requests: Path, policy: str, replicas: int, args, work: Path) -> dict:
    from packcache_vllm.scale.pipeline import run_batch
    from packcache_vllm.scale.settings import BatchJob, EngineSettings, ReplicaResources

    knobs = {"window": args.window} if policy == "packcache" else {}
    job = BatchJob(
        requests_path=requests,
        output_dir=work / f"{policy}-{replicas}",
        engine=EngineSettings(
            model=model,
            dtype="float32",
            kv_cache_bytes=256 << 20,
            max_model_len=8192,
            policy=policy,
            knobs=knobs,
        ),
        replicas=replicas,
        resources=ReplicaResources(cpus=args.cpus_per_replica, gpus=args.gpus_per_replica),
        batch_size=args.batch_size,
    )
    load_before = os.getloadavg()[0]
    report = run_batch(job)
    busiest = max(r["generate_s"] for r in report.replicas)
    return {
        "policy": policy,
        "replicas": replicas,
        "videos": len(report.generated),
        "job_s": round(report.seconds, 2),
        "busiest_generate_s": busiest,
        "end_to_end_videos_per_min": round(60 * len(report.generated) / report.seconds, 2),
        "generation_videos_per_min": round(60 * len(report.generated) / busiest, 2),
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "replica_counters": [
            {"replica": r["replica"], "videos": len(r["videos"]), **r["counters"]}
            for r in report.replicas
        ],
    }


def markdown(rows: list[dict], command: str, args) -> str:
    lines = [
        f"# Ray throughput: videos/min vs replicas ({time.strftime('%Y-%m-%d')})",
        "",
        f"`{command}`",
        "",
        f"{args.videos} videos x {args.frames} latent frames of {args.rows}x{args.cols} "
        f"({args.rows * (args.cols + 1) + 4} tokens), tiny Lumos-1, float32; "
        f"{args.cpus_per_replica:g} CPU per replica; packcache W={args.window}; "
        f"machine: {os.cpu_count()} CPUs (load average = other processes sharing them).",
        "",
        "| policy | replicas | job s | end-to-end videos/min | generation videos/min "
        "| per replica: videos / evicted tokens / blocks freed | load avg before, after |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        per_replica = "; ".join(
            f"{c['videos']} / {c['evicted_tokens']} / {c['blocks_freed']}"
            for c in row["replica_counters"]
        )
        lines.append(
            f"| {row['policy']} | {row['replicas']} | {row['job_s']} | "
            f"{row['end_to_end_videos_per_min']} | {row['generation_videos_per_min']} | "
            f"{per_replica} | {row['load_avg_1min'][0]}, {row['load_avg_1min'][1]} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    import sys

    import ray

    from packcache_vllm.model.factory import build_tiny_lumos

    args = parse_args()
    command = "python benchmarks/ray_throughput.py " + " ".join(sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="ray-throughput-"))
    model = build_tiny_lumos(work / "model", seed=0, video_rows=args.rows, video_cols=args.cols)
    requests = make_requests(work / "requests.jsonl", args)
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(
            num_cpus=int(max(args.replicas) * args.cpus_per_replica),
            object_store_memory=256 << 20,
            include_dashboard=False,
            log_to_driver=False,
        )
    rows = [
        run_one(model, requests, policy, replicas, args, work)
        for policy in args.policies
        for replicas in args.replicas
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray_throughput.json").write_text(
        json.dumps({"command": command, "rows": rows}, indent=1) + "\n"
    )
    table = markdown(rows, command, args)
    (args.out / "ray_throughput.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
