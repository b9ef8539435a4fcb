"""Online: an OpenAI-compatible Ray Serve deployment with the PackCache policy in every replica.

Ray Serve's own LLM stack (``ray.serve.llm``: an OpenAI ingress in front of ``LLMServer``
replicas, each running vLLM's OpenAI serving code on an ``AsyncLLM``) with the engine arguments
of ``--kv-policy``. ``build_app`` is a Ray Serve application builder, so a config file names it::

    applications:
    - name: video
      import_path: packcache_vllm.scale.serve:build_app
      args: {model_source: artifacts/tiny-lumos, kv_policy: packcache, packcache: {window: 4}, ...}

(``examples/ray_serve_config.yaml``; ``serve run examples/ray_serve_config.yaml``). The policy and
its knobs are checked when the application is built, so a bad knob fails ``serve run`` / ``serve
deploy`` at once with the knob named, before any replica starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from packcache_vllm.cli import engine_overrides
from packcache_vllm.scale.settings import runner_choice_env

ENGINE_DEFAULTS = {"enforce_eager": True, "block_size": 32}
# Ray Serve reserves these per replica; vLLM's own defaults would ask for a GPU.
DEFAULT_REPLICA_RESOURCES = {"CPU": 1}


@dataclass(frozen=True)
class Autoscaling:
    """Ray Serve autoscaling of the LLM replicas (ongoing requests per replica as the target)."""

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: int = 8

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError(f"min_replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < max(1, self.min_replicas):
            raise ValueError(
                f"max_replicas must be >= max(1, min_replicas={self.min_replicas}), "
                f"got {self.max_replicas}"
            )
        if self.target_ongoing_requests < 1:
            raise ValueError(
                f"target_ongoing_requests must be >= 1, got {self.target_ongoing_requests}"
            )


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``build_app`` takes (the ``args`` of the Serve config)."""

    model_source: str
    model_id: str = "lumos"
    kv_policy: str = "packcache"
    packcache: Mapping[str, Any] = field(default_factory=dict)  # window, decay, min_keep, ...
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)  # vLLM EngineArgs fields
    replica_resources: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_REPLICA_RESOURCES)
    )
    autoscaling: Autoscaling = Autoscaling()
    ingress_cpus: float = 0.0  # the OpenAI ingress only routes requests
    device: str = "cpu"
    env_vars: Mapping[str, str] = field(default_factory=dict)  # for every replica

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> ServeSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown serve argument(s) {unknown}; known: {sorted(known)}")
        autoscaling = Autoscaling(**args.get("autoscaling", {}))
        return cls(**{**args, "autoscaling": autoscaling})

    def full_engine_kwargs(self) -> dict[str, Any]:
        """The engine arguments with the policy expanded (ValueError naming a bad knob)."""
        settings = {**ENGINE_DEFAULTS, **self.engine_kwargs}
        policy = engine_overrides(
            self.kv_policy, engine_settings=settings, device=self.device, **self.packcache
        )
        return {**settings, **policy}


def llm_config(settings: ServeSettings):
    from ray.serve.llm import LLMConfig

    scaling = settings.autoscaling
    return LLMConfig(
        model_loading_config={
            "model_id": settings.model_id,
            "model_source": settings.model_source,
        },
        engine_kwargs=settings.full_engine_kwargs(),
        placement_group_config={"bundles": [dict(settings.replica_resources)]},
        deployment_config={
            # The replica actor only drives its engine: it reserves nothing beyond the engine's
            # bundle (replica_resources), so N replicas need N bundles, not 2N CPUs.
            "ray_actor_options": {"num_cpus": 0},
            "autoscaling_config": {
                "min_replicas": scaling.min_replicas,
                "initial_replicas": max(1, scaling.min_replicas),
                "max_replicas": scaling.max_replicas,
                "target_ongoing_requests": scaling.target_ongoing_requests,
            },
        },
        runtime_env={"env_vars": replica_env(settings)},
    )


def replica_env(settings: ServeSettings) -> dict[str, str]:
    """``env_vars`` over this process's runner choice (``settings.runner_choice_env``)."""
    return {**runner_choice_env(), **settings.env_vars}


def build_app(args: dict):
    """Ray Serve application builder (``import_path: packcache_vllm.scale.serve:build_app``)."""
    from ray.serve.llm import build_openai_app

    settings = ServeSettings.from_args(args)
    return build_openai_app(
        {
            "llm_configs": [llm_config(settings)],
            "ingress_deployment_config": {"ray_actor_options": {"num_cpus": settings.ingress_cpus}},
        }
    )
