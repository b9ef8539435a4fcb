"""Whether a request can ever fit one engine's KV block pool.

The scheduler admits a request only when the free pool holds its whole bounded footprint
(``core.budget.bound_tokens`` per cache, its hidden CFG twin's included) plus what running requests
may still grow into. A request whose footprint exceeds the whole pool would therefore wait
forever, so it is refused where it enters, with an HTTP 400 naming both sizes
(``check_fits_pool``, called by ``requests.check_request`` in the input processor).

The pool's size is known there: each engine core reports its ``num_gpu_blocks`` in its ready
handshake and vLLM writes it into the front end's ``cache_config`` before serving
(v1/engine/core_client.py ``_apply_ready_response``; in-process, the engine core sets the same
object). With data parallelism that number is the sum over engines, so the front end does not
check, and the scheduler refuses the request instead (``PackCacheScheduler.add_request``: it
finishes with finish reason ``error``). One block of vLLM's pool is its null block, never handed
out.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm.utils.math_utils import cdiv

from packcache_vllm.core.budget import PackCacheConfig, bound_tokens
from packcache_vllm.core.layout import FrameLayout, unconditional_prompt
from packcache_vllm.engine import twins
from packcache_vllm.engine.request_policy import request_policy, video_layout
from packcache_vllm.settings import FRAME_PARALLEL, packcache_mode_from


@dataclass(frozen=True)
class Footprint:
    """The most one request holds at once: per cache (the request, then its twin if any)."""

    tokens: tuple[int, ...]
    blocks: tuple[int, ...]

    @property
    def total_blocks(self) -> int:
        return sum(self.blocks)

    def describe(self, block_size: int) -> str:
        caches = " + ".join(
            f"{tokens} tokens ({name})"
            for tokens, name in zip(self.tokens, ("the request", "its CFG twin"), strict=False)
        )
        return f"{self.total_blocks} blocks of {block_size} tokens for {caches}"


def usable_blocks(num_blocks: int) -> int:
    """Blocks of a pool of ``num_blocks`` that requests can hold (vLLM keeps one null block)."""
    return num_blocks - 1


def engine_pool_blocks(vllm_config) -> int | None:
    """One engine's pool size as this process knows it; None where it does not (before the
    engine reported it, or summed over several data-parallel engines)."""
    num_blocks = vllm_config.cache_config.num_gpu_blocks
    if not num_blocks or vllm_config.parallel_config.data_parallel_size > 1:
        return None
    return num_blocks


def new_tokens(vllm_config, layout: FrameLayout, max_tokens: int) -> int:
    """The most tokens a request adds to its prompt: ``max_tokens``, or fewer where vLLM stops it
    at ``max_model_len`` first (offline, ``max_tokens`` is not checked against it)."""
    return min(max_tokens, vllm_config.model_config.max_model_len - layout.anchor_len)


def footprint(
    vllm_config, layouts: list[FrameLayout], config: PackCacheConfig, max_tokens: int
) -> Footprint:
    """The bounded footprint of caches with these layouts, each asked for ``max_tokens``."""
    block_size = vllm_config.cache_config.block_size
    tokens = tuple(
        bound_tokens(layout, config, new_tokens(vllm_config, layout, max_tokens))
        for layout in layouts
    )
    return Footprint(tokens, tuple(cdiv(t, block_size) for t in tokens))


def refusal(fp: Footprint, pool_blocks: int, block_size: int) -> str:
    """Why a request with footprint ``fp`` can never run in a pool of ``pool_blocks``."""
    usable = usable_blocks(pool_blocks)
    return (
        f"this request can never fit the KV cache: its bounded footprint is "
        f"{fp.describe(block_size)}, the pool holds {usable} usable blocks "
        f"({usable * block_size} tokens); lower max_tokens or packcache_window"
        f"{', or drop guidance (ardf_cfg_scale 1)' if len(fp.blocks) > 1 else ''}, or give the "
        f"server a larger KV cache"
    )


def cache_layouts(vllm_config, layout: FrameLayout, prompt_token_ids, sampling_params) -> list:
    """The layouts of the caches a request holds: its own, then its CFG twin's (frame-parallel
    mode with guidance)."""
    if packcache_mode_from(vllm_config) != FRAME_PARALLEL or not twins.needs_twin(sampling_params):
        return [layout]
    return [layout, video_layout(vllm_config, unconditional_prompt(prompt_token_ids))]


def refusal_of(
    vllm_config,
    pool_blocks: int,
    layout: FrameLayout,
    config: PackCacheConfig,
    prompt_token_ids,
    sampling_params,
) -> str | None:
    """Why the request (its CFG twin included) can never fit a pool of ``pool_blocks``; None if
    it can."""
    layouts = cache_layouts(vllm_config, layout, prompt_token_ids, sampling_params)
    fp = footprint(vllm_config, layouts, config, sampling_params.max_tokens)
    if fp.total_blocks <= usable_blocks(pool_blocks):
        return None
    return refusal(fp, pool_blocks, vllm_config.cache_config.block_size)


def check_fits_pool(
    vllm_config, base: PackCacheConfig, layout: FrameLayout, prompt_token_ids, sampling_params
) -> None:
    """ValueError (an HTTP 400) if the request, its CFG twin included, can never fit the pool
    (``base``: the engine's policy, before the request's overrides)."""
    config = request_policy(base, sampling_params)
    pool_blocks = engine_pool_blocks(vllm_config)
    if pool_blocks is None:
        return  # refused by the scheduler instead (see the module docstring)
    why = refusal_of(vllm_config, pool_blocks, layout, config, prompt_token_ids, sampling_params)
    if why is not None:
        raise ValueError(why)
