"""Batch video generation on Ray Data: ``python -m packcache_vllm.scale.batch --help``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from packcache_vllm import cli
from packcache_vllm.scale.pipeline import ReplicaError, prepare, run_batch
from packcache_vllm.scale.settings import DTYPES, BatchJob, EngineSettings, ReplicaResources

EXAMPLE = """\
example (a local Ray cluster of 2 CPUs, 2 replicas of 1 CPU each):
  python -m packcache_vllm.model.factory artifacts/tiny-lumos
  python -m packcache_vllm.scale.batch --model artifacts/tiny-lumos \\
      --requests examples/ray_batch_requests.jsonl --output runs/batch1 \\
      --replicas 2 --cpus-per-replica 1 --local-cpus 2 --dtype float32 --packcache-window 4

Re-running the same command skips the requests that already have a result in --output.
On an existing cluster, pass --address auto (or ray://HOST:10001) instead of --local-cpus.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m packcache_vllm.scale.batch",
        description=(
            "Generate a batch of videos with N vLLM replicas on Ray Data, each with a PackCache "
            "KV policy. Requests: JSONL, one object per line with id, prompt_token_ids (or "
            "caption [+ condition_seed]), frames, and optional per-request overrides "
            '"packcache": {"window": 2, ...}. Results: OUTPUT/videos/<id>.jsonl (one line per '
            "frame), OUTPUT/requests/<id>.json, OUTPUT/replicas/*.json (counters per replica), "
            "OUTPUT/runs/<run>.json."
        ),
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    job = parser.add_argument_group("job")
    job.add_argument("--model", type=Path, required=True, help="local checkpoint directory")
    job.add_argument("--requests", type=Path, required=True, help="JSONL file of video requests")
    job.add_argument(
        "--output",
        type=Path,
        required=True,
        help="result directory (shared "
        "filesystem on a multi-node cluster); re-runs skip what it holds",
    )
    job.add_argument("--replicas", type=int, default=1, help="vLLM engine replicas (default 1)")
    job.add_argument("--cpus-per-replica", type=float, default=1.0, help="default 1")
    job.add_argument("--gpus-per-replica", type=float, default=0.0, help="default 0")
    job.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="requests per engine call; a replica runs them concurrently (default 4)",
    )
    job.add_argument(
        "--mp4",
        action="store_true",
        help="also write OUTPUT/mp4/<id>.mp4 per request: the generated frames through the "
        "checkpoint's codec, as the videos API renders them (needs a checkpoint with a codec)",
    )
    job.add_argument(
        "--replica-start-timeout-s",
        type=int,
        default=600,
        help="fail the job if not every replica is up by then (default 600)",
    )
    ray_group = parser.add_argument_group("Ray cluster")
    ray_group.add_argument(
        "--address",
        default=None,
        help="an existing cluster ('auto', 'ray://HOST:10001'); default: start a local one",
    )
    ray_group.add_argument(
        "--local-cpus", type=int, default=None, help="CPUs of the local cluster (default: all)"
    )
    ray_group.add_argument(
        "--object-store-mb",
        type=int,
        default=256,
        help="object store of the local cluster in MiB (default 256)",
    )
    engine = parser.add_argument_group("engine (every replica)")
    engine.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    engine.add_argument(
        "--kv-cache-mb", type=int, default=1024, help="KV cache per replica in MiB (default 1024)"
    )
    engine.add_argument("--max-model-len", type=int, default=8192)
    engine.add_argument("--max-num-seqs", type=int, default=16)
    engine.add_argument("--block-size", type=int, default=32)
    engine.add_argument("--seed", type=int, default=0)
    engine.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="the replicas' vLLM platform (default cpu)",
    )
    cli.add_arguments(parser)  # --kv-policy and --packcache-* (validated as on `vllm serve`)
    parser.set_defaults(**{cli.POLICY_DEST: "packcache"})
    parser.add_argument("-q", "--quiet", action="store_true", help="only the final summary")
    return parser


def job_from_args(args: argparse.Namespace) -> BatchJob:
    knobs = {
        knob: getattr(args, cli.knob_dest(knob))
        for knob in cli.KNOBS
        if hasattr(args, cli.knob_dest(knob))
    }
    engine = EngineSettings(
        model=args.model,
        dtype=args.dtype,
        kv_cache_bytes=args.kv_cache_mb << 20,
        block_size=args.block_size,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        seed=args.seed,
        device=args.device,
        policy=getattr(args, cli.POLICY_DEST),
        knobs=knobs,
    )
    return BatchJob(
        requests_path=args.requests,
        output_dir=args.output,
        engine=engine,
        replicas=args.replicas,
        resources=ReplicaResources(cpus=args.cpus_per_replica, gpus=args.gpus_per_replica),
        batch_size=args.batch_size,
        replica_start_timeout_s=args.replica_start_timeout_s,
        write_mp4=args.mp4,
    )


def start_ray(args: argparse.Namespace) -> None:
    import ray

    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(
            num_cpus=args.local_cpus,
            object_store_memory=args.object_store_mb << 20,
            include_dashboard=False,
        )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
    )
    try:
        job = job_from_args(args)
        prepare(job)  # every check that needs no cluster, before starting one
        start_ray(args)
        report = run_batch(job)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except ReplicaError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(
        json.dumps(
            {
                "run": report.run_id,
                "requests": report.requested,
                "skipped": len(report.skipped),
                "generated": len(report.generated),
                "seconds": round(report.seconds, 1),
                "replicas": [
                    {"replica": r["replica"], "videos": len(r["videos"]), "counters": r["counters"]}
                    for r in report.replicas
                ],
                "summary": str(report.summary_path),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
