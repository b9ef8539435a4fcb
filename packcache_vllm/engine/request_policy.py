"""What one request is to the engine: its frame layout and its policy (the engine's settings with
the request's overrides). Shared by the door's checks (``requests``), the pool check
(``pool_fit``) and the scheduler."""

from __future__ import annotations

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.layout import FrameLayout, video_prompt_layout
from packcache_vllm.core.maskgit import grid_token_ids
from packcache_vllm.model.config_hook import frame_grid
from packcache_vllm.settings import Settings, parse_request_overrides


def engine_policy(vllm_config) -> PackCacheConfig | None:
    """The engine's PackCache config, or None when the plugin's policy is off."""
    return Settings.of(vllm_config).config


def request_policy(base: PackCacheConfig, sampling_params) -> PackCacheConfig:
    """The policy of one request: the engine's, with the request's overrides applied."""
    return parse_request_overrides(getattr(sampling_params, "extra_args", None), base)


def video_layout(vllm_config, prompt_token_ids) -> FrameLayout:
    """The request's frame layout; ValueError naming the problem if the prompt is not a video."""
    rows, cols = frame_grid(vllm_config.model_config.hf_config)
    try:
        return video_prompt_layout(prompt_token_ids, rows, cols, grid_token_ids(rows, cols))
    except ValueError as err:
        raise ValueError(
            f"not a video prompt for this model ({rows}x{cols} frames): {err}"
        ) from err
