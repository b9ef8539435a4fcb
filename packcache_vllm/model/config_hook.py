"""Config-time adjustments for Lumos-1 checkpoints, run by vLLM when it builds the ModelConfig.

vLLM only takes its M-RoPE path (3-row positions, ``get_mrope_input_positions``) when the HF config
declares an ``mrope_section``. Lumos-1's config does not (its MM-RoPE is custom), so we add one that
describes the split: how many of the head_dim/2 rotary frequencies follow t, h and w.
"""

from __future__ import annotations

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.layout import LUMOS_TOKENS
from packcache_vllm.core.lumos_schema import DEFAULT_GRID, LumosConfig, head_dim_of
from packcache_vllm.core.lumos_schema import (  # re-exported: the plugin registers by it
    LUMOS_ARCHITECTURE as LUMOS_ARCHITECTURE,
)
from packcache_vllm.core.rope import channel_axes, supports_time_rebase, time_rebase_refusal
from packcache_vllm.settings import packcache_config_from

MODEL_CLASS_PATH = "packcache_vllm.model.lumos:LumosForVideoGeneration"


def frame_grid(hf_config) -> tuple[int, int]:
    """(rows, cols) of every frame: ``video_rows``/``video_cols`` from the config, else 48 x 84."""
    rows = getattr(hf_config, "video_rows", None) or DEFAULT_GRID[0]
    cols = getattr(hf_config, "video_cols", None) or DEFAULT_GRID[1]
    if rows < 1 or cols < 1:
        raise ValueError(f"video_rows/video_cols must be >= 1, got {rows} x {cols}")
    return int(rows), int(cols)


def visual_codebook_size(hf_config) -> int:
    """How many visual codes the checkpoint can emit: ids ``visual_base + [0, size)``.

    ``codebook_size`` from the config (the factory's and the trained checkpoints', e.g. 16), else
    every embedding row after the text ids (a real Lumos-1: 129,536 - 65,536 = 64,000 codes).
    ValueError if the embedding (``vocab_size`` rows) has no room for them."""
    vocab_size = getattr(hf_config, "vocab_size", None)
    if vocab_size is None:
        raise ValueError("config has no vocab_size (the embedding's rows)")
    rows_after_text = int(vocab_size) - LUMOS_TOKENS.visual_base
    size = getattr(hf_config, "codebook_size", None)
    size = rows_after_text if size is None else int(size)
    if not 1 <= size <= rows_after_text:
        raise ValueError(
            f"the visual codebook must have 1..{rows_after_text} codes (vocab_size "
            f"{vocab_size} minus the {LUMOS_TOKENS.visual_base} text ids), got "
            f"codebook_size {size}"
        )
    return size


def lumos_schema(hf_config) -> LumosConfig:
    """The checkpoint's Lumos-1 config (``core.lumos_schema``) from vLLM's HF config object
    (config.json plus any ``--hf-overrides``); ValueError when it is not one the model runs."""
    return LumosConfig.from_dict(hf_config.to_dict())


def mrope_section(head_dim: int) -> list[int]:
    """Number of rotary frequencies (first half of head_dim) driven by t, h and w."""
    axes = channel_axes(head_dim)[: head_dim // 2]
    return [int((axes == axis).sum()) for axis in range(3)]


def check_time_rebase(hf_config, policy: PackCacheConfig | None, who: str) -> None:
    """ValueError naming ``who``, the checkpoint's head_dim and why, when ``policy`` drops frames
    (any bounded window does: dropping rebases time) but this checkpoint's MM-RoPE cannot be
    rebased (``core.rope.supports_time_rebase``)."""
    if policy is None or not policy.is_bounded:
        return
    head_dim = head_dim_of(hf_config.hidden_size, hf_config.num_attention_heads)
    if not supports_time_rebase(head_dim):
        raise ValueError(
            f"{who} drops frames (window {policy.window}), which rebases time, but "
            f"{time_rebase_refusal(head_dim)}. Policy full (or none) serves this checkpoint "
            "without dropping frames"
        )


class LumosConfigHook:
    """vLLM's per-architecture config hook (``MODELS_CONFIG_MAP`` protocol)."""

    @staticmethod
    def verify_and_update_model_config(model_config) -> None:
        hf_config = model_config.hf_config
        if not getattr(hf_config, "mm_rope", True):
            raise ValueError(
                f"{model_config.model}: config.json has mm_rope=false; only MM-RoPE Lumos-1 "
                "checkpoints are supported"
            )
        try:
            schema = lumos_schema(hf_config)
        except ValueError as err:
            raise ValueError(f"{model_config.model}: {err}") from err
        frame_grid(hf_config)
        visual_codebook_size(hf_config)
        hf_config.mrope_section = mrope_section(schema.head_dim)

    @staticmethod
    def verify_and_update_config(vllm_config) -> None:
        """Refuse, when the engine is configured, a PackCache policy this checkpoint cannot run."""
        policy, config = packcache_config_from(vllm_config)
        model_config = vllm_config.model_config
        who = f"{model_config.model}: PackCache policy {policy!r}"
        check_time_rebase(model_config.hf_config, config, who)
