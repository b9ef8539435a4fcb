"""A tiny Lumos-1 and its dense reference for the policy tests (one per test module)."""

from __future__ import annotations

import random

from packcache_vllm.model.factory import build_tiny_lumos, make_video_prompt

ROWS, COLS = 3, 4  # the tiny reference grid
F = ROWS * (COLS + 1) + 4  # 19 tokens per frame
TEXT = [4 + b for b in b"a red ball"]


def tiny_reference(tmp_path_factory):
    from packcache_vllm.reference import ReferenceVideoModel

    model_dir = build_tiny_lumos(
        tmp_path_factory.mktemp("tiny"), seed=0, video_rows=ROWS, video_cols=COLS
    )
    return ReferenceVideoModel.from_pretrained(model_dir)


def video_prompt(with_condition_frame: bool = True) -> list[int]:
    rng = random.Random(1)
    return make_video_prompt(ROWS, COLS, TEXT, with_condition_frame=with_condition_frame, rng=rng)


def attended_frames(indices, layout) -> list[int]:
    """The generated frames (numbered from the first after the prompt) among logical
    ``indices`` ([M] int64), each once, ascending."""
    generated = indices[indices >= layout.anchor_len] - layout.anchor_len
    return sorted({int(i) // layout.tokens_per_frame for i in generated})
