"""The dense AR-DF reference: determinism, frame layout, CFG twin, and the controls (eviction,
causal canvas, unmasked commit) that an engine oracle test relies on; plus an independent
from-scratch recomputation of every step on the full sequence."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.layout import LUMOS_TOKENS, FrameLayout, find_frame_start
from packcache_vllm.core.maskgit import (
    ARDFSamplingParams,
    CanvasProgress,
    SamplerKnobs,
    apply_history_mask,
    denoise_step,
    draw_step_noise,
    frame_template,
    history_mask,
    request_generator,
    visual_cells,
)
from packcache_vllm.model.factory import build_tiny_lumos, make_video_prompt
from packcache_vllm.reference import KVCache, RebaseMode, ReferenceVideoModel
from packcache_vllm.reference_ardf import (
    FrameAttention,
    generate_ardf,
    prefilled_twins,
    unconditional_prompt,
)

ROWS, COLS = 4, 6
PER_FRAME = ROWS * (COLS + 1) + 4  # 32
TEXT = [4 + b for b in b"a cat"]
PARAMS = ARDFSamplingParams(steps_per_frame=4, seed=7)
SLIDING = PackCacheConfig.preset("sliding")  # window 1: frame 0 leaves once frame 1 is done


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = build_tiny_lumos(
        tmp_path_factory.mktemp("tiny_ardf"),
        seed=0,
        video_rows=ROWS,
        video_cols=COLS,
        dtype=torch.float32,
    )
    return ReferenceVideoModel.from_pretrained(path)


@pytest.fixture(scope="module")
def prompt():
    return make_video_prompt(ROWS, COLS, TEXT, with_condition_frame=True, rng=random.Random(1))


@pytest.fixture(scope="module")
def baseline(model, prompt):
    return generate_ardf(model, prompt, 3, PARAMS)


def fixed_sets(result):
    return [[step.fixed_offsets for step in frame.steps] for frame in result.frames]


def test_deterministic(model, prompt, baseline):
    again = generate_ardf(model, prompt, 3, PARAMS)
    assert again.token_ids == baseline.token_ids
    assert fixed_sets(again) == fixed_sets(baseline)


def test_frames_have_the_lumos_layout(baseline):
    template, cells = frame_template(ROWS, COLS), visual_cells(ROWS, COLS)
    commit_mask = history_mask(ROWS, COLS, PARAMS.history_mask_ratio)
    assert len(baseline.token_ids) == 3 * PER_FRAME
    for frame in baseline.frames:
        tokens = torch.tensor(frame.token_ids)
        assert torch.equal(tokens[~cells], template[~cells])
        assert (tokens[cells] >= LUMOS_TOKENS.visual_base).all()
        assert torch.equal(
            torch.tensor(frame.committed_ids), apply_history_mask(tokens, commit_mask)
        )
        assert len(frame.steps) == PARAMS.steps_per_frame
        all_fixed = set().union(*(step.fixed_offsets for step in frame.steps))
        assert all_fixed == set(cells.nonzero().flatten().tolist())


def test_unconditional_twin_drops_the_text(prompt, baseline):
    uncond = unconditional_prompt(prompt)
    assert uncond[0] == LUMOS_TOKENS.video_start and prompt[-len(uncond) :] == uncond
    assert baseline.uncond_prompt_ids == tuple(uncond)
    text_len = len(prompt) - len(uncond)
    cond_cached = baseline.frames[1].cond_attended.numel()
    assert baseline.frames[1].uncond_attended.numel() == cond_cached - text_len
    with pytest.raises(ValueError, match="video_start"):
        unconditional_prompt(TEXT)


def test_guidance_changes_the_result(model, prompt, baseline):
    no_twin = generate_ardf(
        model, prompt, 1, ARDFSamplingParams(steps_per_frame=4, seed=7, cfg_scale=1.0)
    )
    assert no_twin.uncond_prompt_ids is None and no_twin.frames[0].uncond_attended is None
    assert no_twin.frames[0].token_ids != baseline.frames[0].token_ids


def test_eviction_changes_only_frames_after_it(model, prompt, baseline):
    evicting = generate_ardf(model, prompt, 3, PARAMS, SLIDING)
    assert [f.token_ids for f in evicting.frames[:2]] == [f.token_ids for f in baseline.frames[:2]]
    assert evicting.frames[2].token_ids != baseline.frames[2].token_ids
    assert evicting.frames[2].dropped_frames == 1
    first_generated = len(prompt)
    attended = evicting.frames[2].cond_attended
    assert not ((attended >= first_generated) & (attended < first_generated + PER_FRAME)).any()


def test_rebase_by_rotating_anchor_keys_matches_rebased_positions(model, prompt):
    by_positions = generate_ardf(model, prompt, 3, PARAMS, SLIDING)
    by_rotation = generate_ardf(model, prompt, 3, PARAMS, SLIDING, rebase=RebaseMode.ROTATE_ANCHORS)
    assert by_rotation.token_ids == by_positions.token_ids
    assert fixed_sets(by_rotation) == fixed_sets(by_positions)


def test_causal_canvas_changes_the_result(model, prompt, baseline):
    causal = generate_ardf(model, prompt, 3, PARAMS, attention=FrameAttention.CAUSAL)
    assert causal.token_ids != baseline.token_ids


def test_unmasked_commit_changes_the_result(model, prompt, baseline):
    unmasked = ARDFSamplingParams(steps_per_frame=4, seed=7, history_mask_ratio=0.0)
    result = generate_ardf(model, prompt, 3, unmasked)
    assert result.token_ids != baseline.token_ids


def test_masked_conditioning_changes_the_result(model, prompt, baseline):
    masked = replace(PARAMS, condition_mask_ratio=0.7)
    assert generate_ardf(model, prompt, 3, masked).token_ids != baseline.token_ids


def conditioning_kv(model, prompt: list[int], params: ARDFSamplingParams):
    """Per layer, the (keys, values) both twins cache for the conditioning frame, as
    ``generate_ardf`` prefills them."""
    twins = prefilled_twins(
        model, prompt, params, None, RebaseMode.POSITIONS, FrameAttention.BIDIRECTIONAL
    )
    out = []
    for session in twins.all():
        start = session.layout.frame_start
        frame = (session.cache.indices >= start) & (session.cache.indices < start + PER_FRAME)
        layers = zip(session.cache.keys, session.cache.values, strict=True)
        out.append([(k[frame], v[frame]) for k, v in layers])
    return out


def frame_forward_kv(model, prompt: list[int], frame: list[int]):
    """Per layer, (keys, values) of ``frame`` forwarded once after the prompt's text, causal
    text then bidirectional inside the frame: what an unmasked (or masked) cache holds."""
    text_len = find_frame_start(prompt)
    sequence = prompt[:text_len] + frame
    index = torch.arange(len(sequence))
    in_frame = index >= text_len
    allowed = (index[None, :] <= index[:, None]) | (in_frame[:, None] & in_frame[None, :])
    layout = FrameLayout(text_len, len(sequence), ROWS, COLS)
    cache = KVCache.empty(model.config, model.dtype)
    model.run_layers(torch.tensor(sequence), index, cache, layout, 0, allowed=allowed)
    return [(k[text_len:], v[text_len:]) for k, v in zip(cache.keys, cache.values, strict=True)]


def test_conditioning_frame_is_cached_whole_by_default(model, prompt):
    """Lumos-1 caches the conditioning frame unmasked: the reference's cached K/V of that frame
    equal one unmasked forward of it, and differ from a forward of its history-masked copy
    (which ``condition_mask_ratio`` 0.7 reproduces)."""
    frame_start = find_frame_start(prompt)
    frame = prompt[frame_start : frame_start + PER_FRAME]
    masked_frame = apply_history_mask(torch.tensor(frame), history_mask(ROWS, COLS, 0.7)).tolist()
    unmasked = frame_forward_kv(model, prompt, frame)
    masked = frame_forward_kv(model, prompt, masked_frame)
    for params, expected, other in (
        (PARAMS, unmasked, masked),
        (replace(PARAMS, condition_mask_ratio=0.7), masked, unmasked),
    ):
        cond_twin, uncond_twin = conditioning_kv(model, prompt, params)
        for (keys, values), (want_k, want_v), (other_k, _) in zip(
            cond_twin, expected, other, strict=True
        ):
            torch.testing.assert_close(keys, want_k, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(values, want_v, atol=1e-5, rtol=1e-5)
            assert (keys - other_k).abs().max() > 1e-2
        # The unconditional twin (no text, so deeper layers differ): its first layer's keys
        # (pre-RoPE, a function of the ids alone) show the same choice of masked or whole frame.
        torch.testing.assert_close(uncond_twin[0][0], expected[0][0], atol=1e-5, rtol=1e-5)
        assert (uncond_twin[0][0] - other[0][0]).abs().max() > 1e-2


def test_text_to_video_prompt(model):
    prompt = make_video_prompt(ROWS, COLS, TEXT, with_condition_frame=False, rng=random.Random(2))
    result = generate_ardf(model, prompt, 1, PARAMS)
    assert len(result.token_ids) == PER_FRAME


def test_bad_arguments(model, prompt):
    with pytest.raises(ValueError, match="num_frames"):
        generate_ardf(model, prompt, 0, PARAMS)
    with pytest.raises(ValueError, match="seed"):
        generate_ardf(model, prompt, 1, ARDFSamplingParams(steps_per_frame=2))


# --- independent recomputation ------------------------------------------------------------------


def frame_ids(index: torch.Tensor, frame_start: int) -> torch.Tensor:
    """[N]: which frame each index is in, or -1 for text (an internal marker of this test)."""
    rel = index - frame_start
    return torch.where(rel >= 0, torch.div(rel, PER_FRAME, rounding_mode="floor"), -1)


def full_sequence_visual_logits(model, sequence: list[int]) -> torch.Tensor:
    """One from-scratch forward over the whole sequence with Lumos-1's attention mask (causal,
    bidirectional inside each frame). Returns the last frame's [F, V_visual] logits."""
    index = torch.arange(len(sequence))
    frame_start = find_frame_start(sequence)
    frame = frame_ids(index, frame_start)
    same_frame = (frame[:, None] == frame[None, :]) & (frame[:, None] >= 0)
    allowed = (index[None, :] <= index[:, None]) | same_frame
    layout = FrameLayout(frame_start, len(sequence), ROWS, COLS)
    cache = KVCache.empty(model.config, model.dtype)
    hidden = model.run_layers(torch.tensor(sequence), index, cache, layout, 0, allowed=allowed)
    lm_head = model.weights.lm_head[LUMOS_TOKENS.visual_base :]
    return F.linear(hidden[-PER_FRAME:], lm_head).float()


def plain_ardf(model, prompt: list[int], num_frames: int, params: ARDFSamplingParams):
    """AR-DF without any cache: every step recomputes both twins' full sequences (history as
    committed: text, the conditioning frames with their own mask, then every generated frame's
    history-masked copy) plus the canvas."""
    commit_mask = history_mask(ROWS, COLS, params.history_mask_ratio)
    condition_mask = history_mask(ROWS, COLS, params.condition_mask_ratio)
    text_len = find_frame_start(prompt)
    anchors = torch.tensor(prompt[text_len:]).view(-1, PER_FRAME)
    cond = prompt[:text_len] + apply_history_mask(anchors, condition_mask).flatten().tolist()
    uncond = unconditional_prompt(cond)
    generator = request_generator(params)
    knobs = SamplerKnobs.from_params([params], model.config.vocab_size - LUMOS_TOKENS.visual_base)
    frames, fixed = [], []
    for frame_index in range(num_frames):
        canvas, frame_fixed = frame_template(ROWS, COLS), []
        for step in range(params.steps_per_frame):
            update = denoise_step(
                full_sequence_visual_logits(model, cond + canvas.tolist())[None],
                full_sequence_visual_logits(model, uncond + canvas.tolist())[None],
                canvas[None],
                visual_cells(ROWS, COLS),
                CanvasProgress.at([step], [frame_index]),
                knobs,
                draw_step_noise([generator], PER_FRAME),
            )
            canvas = update.canvas[0]
            frame_fixed.append(frozenset(update.newly_fixed[0].nonzero().flatten().tolist()))
        committed = apply_history_mask(canvas, commit_mask).tolist()
        cond, uncond = cond + committed, uncond + committed
        frames.append(tuple(canvas.tolist()))
        fixed.append(frame_fixed)
    return frames, fixed


@pytest.mark.parametrize(("history", "condition"), [(0.0, 0.0), (0.7, 0.0), (0.7, 0.7)])
def test_cache_matches_a_plain_full_sequence_recomputation(model, prompt, history, condition):
    params = ARDFSamplingParams(
        steps_per_frame=4, seed=3, history_mask_ratio=history, condition_mask_ratio=condition
    )
    result = generate_ardf(model, prompt, 2, params)
    frames, fixed = plain_ardf(model, prompt, 2, params)
    assert [f.token_ids for f in result.frames] == frames
    assert fixed_sets(result) == fixed
