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

The application also serves OpenAI's videos API (``/v1/videos``, as on `vllm serve`;
``scale.videos``): its ingress is one replica holding the job store (``videos_dir``,
``videos_max_active``, ``videos_expire_s``; each defaults to its ``PACKCACHE_VIDEOS_*``
variable in the process that builds the application), the LLM replicas generate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from packcache_vllm.cli import engine_overrides, packcache_mode_from
from packcache_vllm.scale.settings import runner_choice_env
from packcache_vllm.videos.jobs import StoreSettings

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
    videos_dir: str | None = None  # None: $PACKCACHE_VIDEOS_DIR or ./packcache-videos
    videos_max_active: int | None = None  # None: $PACKCACHE_VIDEOS_MAX_ACTIVE or 16
    videos_expire_s: int | None = None  # None: $PACKCACHE_VIDEOS_EXPIRE_S or never

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

    def video_store(self) -> StoreSettings:
        """The ingress's job store: these settings over the ``PACKCACHE_VIDEOS_*`` variables
        (ValueError naming a bad value); the folder made absolute here, where it was named."""
        given = {"root": self.videos_dir, "max_active": self.videos_max_active,
                 "expire_after_s": self.videos_expire_s}  # fmt: skip
        store = replace(
            StoreSettings.from_env(), **{k: v for k, v in given.items() if v is not None}
        )
        return replace(store, root=Path(store.root).resolve())

    def mode(self) -> str:
        return packcache_mode_from(self.full_engine_kwargs().get("additional_config", {}))


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


def ingress_options(settings: ServeSettings, config) -> dict[str, Any]:
    """Ray Serve LLM's ingress options, but one replica: the video jobs live in it."""
    from packcache_vllm.scale.videos import VideoIngress

    options = VideoIngress.get_deployment_options([config])
    options.pop("autoscaling_config", None)
    return {**options, "num_replicas": 1, "ray_actor_options": {"num_cpus": settings.ingress_cpus}}


def build_app(args: dict):
    """Ray Serve application builder (``import_path: packcache_vllm.scale.serve:build_app``):
    Ray Serve LLM's OpenAI application (``build_openai_app``'s deployments) with the videos
    routes on its ingress."""
    from ray import serve
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS
    from ray.llm._internal.serve.core.server.builder import build_llm_deployment
    from ray.serve.llm.ingress import make_fastapi_ingress

    from packcache_vllm.scale.videos import VIDEO_ENDPOINTS, VideoApp, VideoIngress, VideoLLMServer

    settings = ServeSettings.from_args(args)
    config = llm_config(settings)
    model_dir = Path(settings.model_source).resolve()
    videos = VideoApp(settings.model_id, model_dir, settings.mode(), settings.video_store())
    ingress = make_fastapi_ingress(
        VideoIngress, endpoint_map={**DEFAULT_ENDPOINTS, **VIDEO_ENDPOINTS}
    )
    server = build_llm_deployment(config, deployment_cls=VideoLLMServer)
    return serve.deployment(ingress, **ingress_options(settings, config)).bind(
        llm_deployments={settings.model_id: server},
        model_cards={settings.model_id: to_model_metadata(settings.model_id, config)},
        videos=videos,
    )
