"""Prompts from text: a caption, a video shape and optional conditioning codes -> Lumos-1 token ids.

The text goes through the checkpoint's own tokenizer; the rest is ``factory.make_video_prompt``
(``<video_start>``, duration and fps tokens), then the conditioning frames in Lumos-1's frame
format (``frames.frames_ids``) -- the builder the synthetic scenes' training prompts use
(``video.tokens.scene_prompt``), so the trained checkpoints see a caption as they were trained.
The text before ``<video_start>`` follows the checkpoint's ``video_prompt`` (``spec.py``):

* ``"lumos"``: Lumos-1's ``inference_t2v.py`` / ``inference_i2v.py`` question in its xllmx
  conversation: ``<s>`` + "Generate a video with a resolution of WxH, consisting of F frames at
  FPS frames per second, according to the following prompt:\\n CAPTION" + ``<reserved08706>`` (the
  turn separator; F = seconds x fps pixel frames).
* ``"caption"``: the caption's ids alone.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from pathlib import Path

import torch

from packcache_vllm.codec.frames import frames_ids
from packcache_vllm.codec.spec import CheckpointVideo, VideoShape, checkpoint_video
from packcache_vllm.core.layout import LUMOS_TOKENS
from packcache_vllm.core.position_code import MAX_FRAME_START
from packcache_vllm.model.factory import make_video_prompt

LUMOS_QUESTION = (
    "Generate a video with a resolution of {size}, consisting of {frames} frames at {fps} frames "
    "per second, according to the following prompt:\n {caption}"
)
LUMOS_SEP_ID = 8710  # <reserved08706>: the end of a conversation turn
T = LUMOS_TOKENS
RESERVED_IDS = frozenset(
    {T.eoss, T.frame_break, T.newline, T.mask, T.video_start, T.video_end, LUMOS_SEP_ID}
    | set(range(T.grid_base, T.mask))
)


def video_prompt(
    model_dir: str | Path,
    caption: str,
    shape: VideoShape,
    condition_codes: torch.Tensor | None = None,
) -> list[int]:
    """The prompt of ``shape`` (``spec.video_shape``) for ``caption``, with the checkpoint's
    tokenizer. condition_codes: [rows, cols] or [T, rows, cols] codes of the first frame(s)
    (image-to-video), None for text-to-video. ValueError (starting with "caption" or
    "condition") naming what is wrong."""
    tokenizer = checkpoint_tokenizer(str(model_dir))
    return build_video_prompt(
        checkpoint_video(model_dir), tokenizer, caption, shape, condition_codes
    )


@functools.lru_cache(maxsize=4)
def checkpoint_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def build_video_prompt(
    video: CheckpointVideo,
    tokenizer,
    caption: str,
    shape: VideoShape,
    condition_codes: torch.Tensor | None = None,
) -> list[int]:
    """``video_prompt`` with a given tokenizer (``encode(text, add_special_tokens=False)`` and
    ``bos_token_id``, a transformers tokenizer)."""
    text = prompt_text_ids(video.prompt_style, tokenizer, caption, shape)
    prompt = make_video_prompt(
        shape.rows,
        shape.cols,
        text,
        with_condition_frame=False,
        rng=random.Random(0),  # unused: no random frame
        duration_s=shape.seconds,
        fps=shape.fps,
    )
    if len(prompt) > MAX_FRAME_START:
        raise ValueError(
            f"caption too long: the prompt's text before the first frame is {len(prompt):,} "
            f"tokens, at most {MAX_FRAME_START:,}"
        )
    if condition_codes is None:
        return prompt
    return prompt + frames_ids(condition_frames(condition_codes, shape), video.codebook_size)


def prompt_text_ids(style: str, tokenizer, caption: str, shape: VideoShape) -> list[int]:
    """The token ids before ``<video_start>``."""
    caption_ids = encode_caption(tokenizer.encode, caption)
    if style == "caption":
        return caption_ids
    if tokenizer.bos_token_id is None:
        raise ValueError(
            "the checkpoint's tokenizer has no bos_token_id (Lumos-1's prompt starts with it)"
        )
    question = LUMOS_QUESTION.format(
        size=shape.size, frames=shape.seconds * shape.fps, fps=shape.fps, caption=caption
    )
    body = tokenizer.encode(question, add_special_tokens=False)
    return [tokenizer.bos_token_id, *body, LUMOS_SEP_ID]


def encode_caption(encode: Callable[..., list[int]], caption: str) -> list[int]:
    """The caption's ids; ValueError when empty or when it spells one of Lumos-1's markers."""
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"caption must be a non-empty string, got {caption!r}")
    ids = encode(caption, add_special_tokens=False)
    reserved = [t for t in ids if t in RESERVED_IDS]
    if reserved:
        raise ValueError(
            f"caption contains Lumos-1's video/frame marker token {reserved[0]}: a caption is text"
        )
    return ids


def condition_frames(codes: torch.Tensor, shape: VideoShape) -> torch.Tensor:
    """codes: [rows, cols] or [T, rows, cols] -> [T, rows, cols]; ValueError (starting with
    "condition") on another grid or when no frame would be left to generate."""
    codes = torch.as_tensor(codes, dtype=torch.int64)
    frames = codes[None] if codes.dim() == 2 else codes
    if frames.dim() != 3 or tuple(frames.shape[1:]) != (shape.rows, shape.cols):
        raise ValueError(
            f"condition codes must be [rows, cols] or [T, rows, cols] of this model's "
            f"{shape.rows} x {shape.cols} grid, got shape {tuple(codes.shape)}"
        )
    if frames.shape[0] >= shape.num_frames:
        raise ValueError(
            f"condition frames ({frames.shape[0]}) leave nothing to generate in a video of "
            f"{shape.num_frames} latent frames: ask for more seconds"
        )
    return frames
