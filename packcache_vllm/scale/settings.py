"""The settings of a batch job (frozen, validated) and the vLLM engine arguments they give."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from packcache_vllm.cli import KEYWORD_NAMING, V2_RUNNER_ENV, engine_overrides, policy_config
from packcache_vllm.core.budget import PackCacheConfig

DTYPES = ("float32", "bfloat16", "float16")
# One engine per replica, in the replica's own process: no EngineCore / worker subprocesses.
REPLICA_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def runner_choice_env() -> dict[str, str]:
    """This process's choice of vLLM model runner (``VLLM_USE_V2_MODEL_RUNNER``, which the CUDA
    check reads here), to pass on to replicas so they run what was checked; {} if unset."""
    return {V2_RUNNER_ENV: os.environ[V2_RUNNER_ENV]} if V2_RUNNER_ENV in os.environ else {}


def replica_env() -> dict[str, str]:
    """The batch replicas' environment: REPLICA_ENV and ``runner_choice_env()``."""
    return {**REPLICA_ENV, **runner_choice_env()}


@dataclass(frozen=True)
class EngineSettings:
    """What every replica's ``vllm.LLM`` gets besides the policy."""

    model: Path
    dtype: str = "bfloat16"
    kv_cache_bytes: int = 1 << 30
    block_size: int = 32
    max_model_len: int = 8192
    max_num_seqs: int = 16
    seed: int = 0
    device: str = "cpu"
    policy: str = "packcache"
    knobs: Mapping[str, Any] = field(default_factory=dict)  # window, decay, min_keep, selector

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        for name in ("kv_cache_bytes", "max_model_len", "max_num_seqs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.block_size < 1 or self.block_size % 32:
            raise ValueError(f"block_size must be a multiple of 32, got {self.block_size}")
        self.engine_kwargs()  # the policy and its knobs, validated here, before any replica

    def policy_config(self) -> PackCacheConfig | None:
        """The replicas' PackCache config; None for policy ``none``."""
        return policy_config(self.policy, dict(self.knobs), KEYWORD_NAMING)

    def engine_kwargs(self) -> dict[str, Any]:
        """``vllm.LLM(**engine_kwargs())``: raises ValueError naming a bad knob."""
        policy = engine_overrides(self.policy, device=self.device, **self.knobs)
        return {
            "model": str(self.model),
            "dtype": self.dtype,
            "kv_cache_memory_bytes": self.kv_cache_bytes,
            "block_size": self.block_size,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "seed": self.seed,
            "enforce_eager": True,
            "skip_tokenizer_init": True,  # prompts and results are token ids
            **policy,
        }


@dataclass(frozen=True)
class ReplicaResources:
    """What Ray reserves for one replica (one engine)."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus <= 0:
            raise ValueError(f"cpus per replica must be > 0, got {self.cpus}")
        if self.gpus < 0:
            raise ValueError(f"gpus per replica must be >= 0, got {self.gpus}")


@dataclass(frozen=True)
class BatchJob:
    """A whole batch job."""

    requests_path: Path
    output_dir: Path
    engine: EngineSettings
    replicas: int = 1
    resources: ReplicaResources = ReplicaResources()
    batch_size: int = 4
    replica_start_timeout_s: int = 600  # every replica must be up by then (or the job fails)
    write_mp4: bool = False  # also OUTPUT/mp4/<id>.mp4 through the checkpoint's codec

    def __post_init__(self) -> None:
        if self.replica_start_timeout_s < 1:
            raise ValueError(
                f"replica_start_timeout_s must be >= 1, got {self.replica_start_timeout_s}"
            )
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not Path(self.requests_path).is_file():
            raise ValueError(f"requests file {self.requests_path} does not exist")


def checkpoint_config(model: Path) -> SimpleNamespace:
    """The checkpoint's config.json as attributes; ValueError naming what is missing."""
    config_path = Path(model) / "config.json"
    if not Path(model).is_dir():
        raise ValueError(f"model directory {model} does not exist (give a local checkpoint dir)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"model {model}: cannot read {config_path.name}: {error}") from None
    return SimpleNamespace(**config)


def frame_grid_of(model: Path) -> tuple[int, int]:
    """The checkpoint's frame grid from its config.json; ValueError naming what is missing."""
    from packcache_vllm.model.config_hook import frame_grid

    return frame_grid(checkpoint_config(model))
