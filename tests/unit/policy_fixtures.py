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


def video_in_both_rebase_modes(model, config, num_frames: int) -> tuple[tuple[int, ...], ...]:
    """The token ids of one text-to-video under ``config``, the time rebase realised in the
    positions and in rotated anchor keys (``RebaseMode``): equal when keys are compared at the
    right rotary time."""
    from packcache_vllm.reference import PackCachePolicy, RebaseMode

    prompt = video_prompt(with_condition_frame=False)
    layout = model.layout_for(prompt)
    return tuple(
        model.generate(
            prompt, layout, num_frames * F, PackCachePolicy(config), rebase=mode
        ).token_ids
        for mode in (RebaseMode.POSITIONS, RebaseMode.ROTATE_ANCHORS)
    )


def kept_prefixes_differ_from_uniform(histories, order_of) -> bool:
    """Assert that every frame of each history (one per completion, ``KeptHistory``) that is
    ordered by then (its successor complete) keeps a prefix of ``order_of(frame)`` ([F]); return
    whether some kept set differs from the uniform selector's prefix of the same size."""
    from packcache_vllm.core.select import uniform_order

    spread = list(uniform_order(ROWS, COLS))
    differs = False
    for n, history in enumerate(histories, start=1):
        for frame in range(history.dropped_frames, n - 1):
            count = len(history.kept_offsets[frame])
            assert history.kept_offsets[frame] == frozenset(order_of(frame)[:count].tolist())
            differs |= history.kept_offsets[frame] != frozenset(spread[:count])
    return differs
