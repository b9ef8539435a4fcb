"""The Ray Data pipeline of a batch job: pending requests -> N replicas -> the result store.

Everything that can be checked before a replica starts is checked first (the policy and its
knobs, the model directory, every request line, the cluster's room for one replica), so a bad job
fails in seconds with the cause named. A replica that cannot build its engine fails the job with
the replica's error (Ray Data does not retry a failing actor constructor).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packcache_vllm.model.config_hook import frame_grid, visual_codebook_size
from packcache_vllm.scale.movies import check_model_has_codec
from packcache_vllm.scale.requests import PromptBuilder, VideoRequest, load_requests
from packcache_vllm.scale.results import ResultStore
from packcache_vllm.scale.settings import BatchJob, checkpoint_config, replica_env

logger = logging.getLogger(__name__)


class ReplicaError(RuntimeError):
    """A replica failed (its engine could not start, or generation raised)."""


@dataclass(frozen=True)
class BatchReport:
    run_id: str
    requested: int
    skipped: tuple[str, ...]  # finished by an earlier run
    generated: tuple[str, ...]
    seconds: float
    replicas: tuple[dict[str, Any], ...]  # this run's replica summaries (counters included)
    summary_path: Path


def prepare(job: BatchJob) -> tuple[ResultStore, list[VideoRequest], set[str]]:
    """Validate the job; the store, every request and the ids already finished."""
    config = checkpoint_config(job.engine.model)
    rows, cols = frame_grid(config)
    builder = PromptBuilder(
        rows, cols, visual_codebook_size(config), caption_encoder(job.engine.model)
    )
    requests = load_requests(job.requests_path, builder, job.engine.policy_config())
    if job.write_mp4:
        check_model_has_codec(job.engine.model)
    store = ResultStore(job.output_dir).create()
    return store, requests, store.finished(requests)


def caption_encoder(model: Path):
    """Captions are tokenized with the checkpoint's own tokenizer (loaded on first use)."""
    tokenizer = []

    def encode(text: str) -> list[int]:
        if not tokenizer:
            from transformers import AutoTokenizer

            tokenizer.append(AutoTokenizer.from_pretrained(str(model)))
        return tokenizer[0].encode(text, add_special_tokens=False)

    return encode


def check_cluster_fits_a_replica(job: BatchJob) -> None:
    """A replica that can never be placed would wait forever: fail now instead."""
    import ray

    available = ray.cluster_resources()
    need = {"CPU": job.resources.cpus, "GPU": job.resources.gpus}
    short = {k: v for k, v in need.items() if v > available.get(k, 0.0)}
    if short:
        raise ValueError(
            f"one replica needs {need}, but the Ray cluster has "
            f"{ {k: available.get(k, 0.0) for k in need} }: lower --cpus-per-replica / "
            "--gpus-per-replica or add nodes"
        )
    fits = min(available.get(k, 0.0) / v for k, v in need.items() if v > 0)
    if fits < job.replicas:
        logger.warning(
            "the cluster has room for %d of the %d replicas now; the rest start when it grows",
            int(fits),
            job.replicas,
        )


def run_batch(job: BatchJob) -> BatchReport:
    """Run the job on the current Ray cluster (``ray.init`` first); skip finished requests."""
    started = time.perf_counter()
    store, requests, finished = prepare(job)
    pending = [r for r in requests if r.id not in finished]
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    logger.info(
        "%d requests: %d finished earlier, %d to generate",
        len(requests),
        len(finished),
        len(pending),
    )
    generated: list[str] = []
    if pending:
        check_cluster_fits_a_replica(job)
        generated = generate(job, pending, run_id)
        if set(generated) != {r.id for r in pending}:
            missing = sorted({r.id for r in pending} - set(generated))
            raise RuntimeError(f"the pipeline ended without results for {missing}")
    if job.write_mp4:
        write_missing_mp4s(job, store, finished)
    return write_report(job, store, run_id, requests, finished, generated, started)


def write_missing_mp4s(job: BatchJob, store: ResultStore, finished: set[str]) -> None:
    """A request finished by a run without ``--mp4`` gets its MP4 from its stored frames."""
    movies = store.movies(job.engine.model)
    for request_id in sorted(finished):
        if not movies.path(request_id).is_file():
            frames = store.read_frames(request_id)
            movies.write(request_id, [token for frame in frames for token in frame])


def generate(job: BatchJob, pending: list[VideoRequest], run_id: str) -> list[str]:
    """Run the pipeline; the ids generated, in order. A replica's failure is a ReplicaError whose
    message is the replica's own exception (the full trace is its ``__cause__``)."""
    from ray.exceptions import RayError

    generated = []
    try:
        for row in generation_dataset(job, pending, run_id).iter_rows():
            generated.append(row["id"])
            logger.info(
                "finished %s on %s (%d/%d)", row["id"], row["replica"], len(generated), len(pending)
            )
    except RayError as error:
        raise ReplicaError(replica_failure(job, run_id, error)) from error
    return generated


def replica_failure(job: BatchJob, run_id: str, error: Exception) -> str:
    """What failed: the exceptions this run's replicas recorded with their requests (Ray Data
    ends a failed batch's message with its retry hint). A replica that recorded none failed to
    start (Ray's last line is then the replica's own error) or its process died (Ray says so)."""
    failures = [
        f"replica {r['replica']} on requests {r['failure']['requests']}: {r['failure']['error']}"
        for r in ResultStore(job.output_dir).replicas_of_run(run_id)
        if r.get("failure")
    ]
    if failures:
        return "batch job failed in " + "; ".join(failures)
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"batch job failed in a replica: {lines[-1]}"


def generation_dataset(job: BatchJob, pending: list[VideoRequest], run_id: str):
    """The Ray Data pipeline: one row per request -> ``VideoReplica`` actors."""
    import ray.data

    from packcache_vllm.scale.replica import VideoReplica

    rows = [{"id": r.id, "request": r.to_json()} for r in pending]
    batch_size = batch_size_for(job, len(pending))
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    # Start every replica before the first batch is handed out; otherwise the first engine up
    # takes every batch while the others are still loading. A replica that fails to start fails
    # the job here, and one that cannot be placed in time is a timeout naming the pool.
    dataset.context.wait_for_min_actors_s = job.replica_start_timeout_s
    return dataset.map_batches(
        VideoReplica,
        fn_constructor_kwargs={
            "settings": job.engine,
            "output_dir": str(job.output_dir),
            "run_id": run_id,
            "write_mp4": job.write_mp4,
        },
        batch_size=batch_size,
        # One batch at a time per replica, so the batches spread over every replica.
        compute=ray.data.ActorPoolStrategy(size=job.replicas, max_tasks_in_flight_per_actor=1),
        num_cpus=job.resources.cpus,
        num_gpus=job.resources.gpus,
        runtime_env={"env_vars": replica_env()},
    )


def batch_size_for(job: BatchJob, pending: int) -> int:
    """``--batch-size``, lowered when there are too few requests to give every replica one."""
    spread = math.ceil(pending / job.replicas)
    if spread < job.batch_size:
        logger.info(
            "batch size %d -> %d so that %d requests reach all %d replicas",
            job.batch_size,
            spread,
            pending,
            job.replicas,
        )
    return min(job.batch_size, spread)


def write_report(job, store, run_id, requests, finished, generated, started) -> BatchReport:
    seconds = time.perf_counter() - started
    replicas = tuple(store.replicas_of_run(run_id))
    summary = {
        "run": run_id,
        "requests": len(requests),
        "skipped": sorted(finished),
        "generated": generated,
        "seconds": round(seconds, 3),
        "replicas": list(replicas),
        "policy": job.engine.policy,
        "knobs": dict(job.engine.knobs),
    }
    path = store.write_run(run_id, summary)
    return BatchReport(
        run_id, len(requests), tuple(sorted(finished)), tuple(generated), seconds, replicas, path
    )
