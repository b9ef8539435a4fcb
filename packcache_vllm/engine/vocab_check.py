"""Prompt token ids a Lumos-1 checkpoint can take, checked per request before the engine sees them.

vLLM 0.32 checks prompt ids in its input processor (``renderers/base.py``
``BaseRenderer.validate_token_ids``) against the tokenizer only: ids up to
``max(tokenizer.max_token_id, vocab_size - 1)``, and nothing at all when the engine runs without a
tokenizer (``skip_tokenizer_init``, as the batch replicas do). A Lumos-1 checkpoint's visual
codebook can be smaller than its tokenizer (or than the rows after the text ids): an id past the
codebook reaches the embedding, and an ``IndexError`` there kills the engine core with every request
in flight. So every request to a Lumos-1 model is checked here, whatever its ``--kv-policy``.
This module does not import vLLM (the batch job runs the same check on its request file).
"""

from __future__ import annotations

from collections.abc import Sequence

from packcache_vllm.core.layout import LUMOS_TOKENS
from packcache_vllm.model.config_hook import LUMOS_ARCHITECTURE, visual_codebook_size


def check_token_ids(prompt_token_ids: Sequence[int], codebook_size: int) -> None:
    """ValueError naming the first id outside ``[0, visual_base + codebook_size)`` and its place."""
    limit = LUMOS_TOKENS.visual_base + codebook_size
    lowest, highest = min(prompt_token_ids), max(prompt_token_ids)
    if lowest >= 0 and highest < limit:
        return
    position, token = next((i, t) for i, t in enumerate(prompt_token_ids) if not 0 <= t < limit)
    raise ValueError(
        f"prompt token id {token} at position {position} is outside this model's vocabulary: "
        f"ids 0..{limit - 1} (text ids below {LUMOS_TOKENS.visual_base}, then "
        f"{codebook_size} visual codes)"
    )


def check_request_token_ids(vllm_config, prompt_token_ids: Sequence[int] | None) -> None:
    """The check for one request entering vLLM; a no-op for other models and prompt embeds."""
    model_config = vllm_config.model_config
    if not prompt_token_ids or model_config.architecture != LUMOS_ARCHITECTURE:
        return
    check_token_ids(prompt_token_ids, visual_codebook_size(model_config.hf_config))
