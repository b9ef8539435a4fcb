"""One replica of a batch job: a Ray Data actor holding one in-process ``vllm.LLM``.

``VideoReplica`` is the callable class given to ``Dataset.map_batches``: Ray starts one actor per
replica; each builds its engine once, then generates every batch of requests it is given, writes
each finished video to the result store at once (so an interruption loses only the batch in
flight), and rewrites its own summary with its PackCache counters after every batch. A batch that
fails leaves its exception and request ids in that summary (``failure``) before it is re-raised:
Ray Data hands the driver only a retry hint and a traceback text, so the driver reports this.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from packcache_vllm.scale.requests import VideoRequest
from packcache_vllm.scale.results import ResultStore
from packcache_vllm.scale.settings import EngineSettings


class VideoReplica:
    def __init__(
        self, settings: EngineSettings, output_dir: str, run_id: str, write_mp4: bool = False
    ) -> None:
        from packcache_vllm.core.layout import tokens_per_frame
        from packcache_vllm.metrics import METRICS_DIR_ENV
        from packcache_vllm.scale.settings import frame_grid_of

        # Counters of this replica's engine only, whatever the job's environment says.
        os.environ[METRICS_DIR_ENV] = tempfile.mkdtemp(prefix="packcache-replica-")
        self.settings = settings
        self.store = ResultStore(Path(output_dir))
        self.movies = self.store.movies(settings.model) if write_mp4 else None
        self.replica_id = f"{run_id}-{socket.gethostname()}-{os.getpid()}"
        self.tokens_per_frame = tokens_per_frame(*frame_grid_of(settings.model))
        self.videos: list[str] = []
        self.failure: dict[str, Any] | None = None  # the batch that failed, and its exception
        self.generate_s = 0.0
        started = time.perf_counter()
        self.llm = build_engine(settings)
        self.engine_start_s = time.perf_counter() - started
        self.publish()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        requests = [VideoRequest.from_json(text) for text in batch["request"]]
        started = time.perf_counter()
        try:
            outputs = self.llm.generate(
                [{"prompt_token_ids": list(r.prompt_token_ids)} for r in requests],
                [self.sampling_params(r) for r in requests],
                use_tqdm=False,
            )
        except Exception as error:  # recorded for the driver, then re-raised
            self.failure = {
                "requests": [r.id for r in requests],
                "error": f"{type(error).__name__}: {error}",
            }
            self.publish()
            raise
        seconds = time.perf_counter() - started
        self.generate_s += seconds
        for request, output in zip(requests, outputs, strict=True):
            record = {
                "frames": request.frames,
                "tokens_per_frame": self.tokens_per_frame,
                "prompt_tokens": len(request.prompt_token_ids),
                "replica": self.replica_id,
                "policy": self.settings.policy,
                "overrides": dict(request.overrides),
                "batch_seconds": round(seconds, 3),
            }
            tokens = output.outputs[0].token_ids
            if self.movies is not None:  # before the record, which marks the request finished
                self.movies.write(request.id, tokens)
            self.store.write_video(request, tokens, self.tokens_per_frame, record)
            self.videos.append(request.id)
        self.publish()
        return {"id": [r.id for r in requests], "replica": [self.replica_id] * len(requests)}

    def sampling_params(self, request: VideoRequest):
        from vllm import SamplingParams

        return SamplingParams(
            temperature=request.temperature,
            seed=request.seed,
            max_tokens=request.frames * self.tokens_per_frame,
            ignore_eos=True,
            detokenize=False,
            extra_args=request.extra_args(),
        )

    def publish(self) -> None:
        from packcache_vllm.metrics import total_counters

        self.store.write_replica(
            {
                "replica": self.replica_id,
                "node": socket.gethostname(),
                "pid": os.getpid(),
                "policy": self.settings.policy,
                "engine_start_s": round(self.engine_start_s, 3),
                "generate_s": round(self.generate_s, 3),
                "videos": list(self.videos),
                "failure": self.failure,
                "counters": asdict(total_counters()),
            }
        )


def build_engine(settings: EngineSettings):
    """The replica's engine; a failure names the model and the replica's host."""
    from vllm import LLM

    kwargs = settings.engine_kwargs()
    try:
        return LLM(**kwargs)
    except Exception as error:  # re-raised with the cause named; Ray reports it to the driver
        raise RuntimeError(
            f"replica on {socket.gethostname()} could not start vLLM for model "
            f"{settings.model}: {type(error).__name__}: {error}"
        ) from error
