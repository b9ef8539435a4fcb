"""core.maskgit: knobs, schedule, layout pinning, history mask, CFG, seeded batched steps."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from packcache_vllm.core.layout import LUMOS_TOKENS, tokens_per_frame
from packcache_vllm.core.maskgit import (
    ARDFSamplingParams,
    CanvasProgress,
    SamplerKnobs,
    StepNoise,
    apply_history_mask,
    denoise_step,
    draw_step_noise,
    frame_template,
    guided_logits,
    history_mask,
    rank_keys,
    remask_noise_scale,
    request_generator,
    restrict_to_visual,
    schedule_table,
    visual_cells,
)

ROWS, COLS = 4, 6
F = tokens_per_frame(ROWS, COLS)  # 32
CELLS = ROWS * COLS  # 24
VOCAB = 40  # visual codes in these tests
MASK = LUMOS_TOKENS.mask


def knobs_for(*params: ARDFSamplingParams) -> SamplerKnobs:
    return SamplerKnobs.from_params(list(params), VOCAB)


def random_logits(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, F, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def run_frame(params: ARDFSamplingParams, logits_seed: int = 0):
    """All steps of one frame for one request with fixed per-step logits. Returns the final
    canvas [F] and the per-step newly fixed masks [S, F]."""
    knobs, generator = knobs_for(params), request_generator(params)
    canvas = frame_template(ROWS, COLS)[None]
    fixed = []
    for step in range(params.steps_per_frame):
        cond, uncond = random_logits(1, logits_seed + 2 * step), random_logits(1, 99 + step)
        noise = draw_step_noise([generator], F)
        update = denoise_step(
            cond,
            uncond,
            canvas,
            visual_cells(ROWS, COLS),
            CanvasProgress.at([step], [0]),
            knobs,
            noise,
        )
        canvas = update.canvas
        fixed.append(update.newly_fixed[0])
    return canvas[0], torch.stack(fixed)


# --- knobs --------------------------------------------------------------------------------------


def test_defaults_are_lumos_inference_settings():
    params = ARDFSamplingParams()
    assert (params.steps_per_frame, params.cfg_scale, params.top_k) == (50, 15.0, None)
    assert (params.temperature, params.schedule, params.history_mask_ratio) == (1.0, "cosine", 0.7)
    assert (params.condition_mask_ratio, params.ranking) == (0.0, "exact")


@pytest.mark.parametrize(
    ("knob", "value", "allowed"),
    [
        ("steps_per_frame", 0, "[1, 1000]"),
        ("steps_per_frame", 2.5, "[1, 1000]"),
        ("cfg_scale", -1.0, "[0, 100]"),
        ("cfg_scale", float("nan"), "[0, 100]"),
        ("top_k", 0, ">= 1"),
        ("temperature", -0.1, "[0, 100]"),
        ("schedule", "sigmoid", "['cosine', 'linear']"),
        ("seed", -3, "[0, 9223372036854775807]"),
        ("history_mask_ratio", 1.5, "[0, 1]"),
        ("condition_mask_ratio", -0.5, "[0, 1]"),
        ("ranking", "stable", "['exact', 'quantized']"),
        ("steps_per_frame", True, "[1, 1000]"),
    ],
)
def test_bad_knob_error_names_knob_value_and_range(knob, value, allowed):
    with pytest.raises(ValueError) as error:
        ARDFSamplingParams(**{knob: value})
    message = str(error.value)
    assert knob in message and repr(value) in message and allowed in message


def test_overrides_are_validated_and_unknown_knobs_named():
    params = ARDFSamplingParams().with_overrides({"steps_per_frame": 8, "seed": 3})
    assert (params.steps_per_frame, params.seed) == (8, 3)
    with pytest.raises(ValueError, match="unknown ardf knob.*'step'"):
        ARDFSamplingParams().with_overrides({"step": 8})
    with pytest.raises(ValueError, match="cfg_scale"):
        ARDFSamplingParams().with_overrides({"cfg_scale": 1e9})


def test_top_k_is_clipped_to_the_visual_vocabulary():
    knobs = knobs_for(ARDFSamplingParams(top_k=None), ARDFSamplingParams(top_k=10**6))
    assert knobs.top_k.tolist() == [VOCAB, VOCAB]


# --- schedule -----------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize(("steps", "cells"), [(1, 24), (4, 24), (50, 24), (50, 4032), (8, 4032)])
def test_schedule_has_s_steps_decreases_and_ends_unmasked(schedule, steps, cells):
    table = schedule_table(ARDFSamplingParams(steps_per_frame=steps, schedule=schedule), cells)
    assert len(table) == steps and table[-1] == 0
    before = (cells, *table[:-1])
    for masked_before, masked_after in zip(before, table, strict=True):
        assert masked_after < masked_before or masked_before == 1


def test_cosine_schedule_follows_lumos_formula():
    table = schedule_table(ARDFSamplingParams(steps_per_frame=50), 4032)
    expected = [math.floor(4032 * math.cos(math.pi / 2 * (s + 1) / 50)) for s in range(49)]
    assert list(table[:-1]) == [max(1, e) for e in expected]


# --- layout, history mask -----------------------------------------------------------------------


def test_frame_template_pins_layout_tokens_and_masks_cells():
    template, cells = frame_template(ROWS, COLS), visual_cells(ROWS, COLS)
    assert template.shape == (F,) and int(cells.sum()) == CELLS
    assert (template[cells] == MASK).all() and not (template[~cells] == MASK).any()
    assert template[0] == LUMOS_TOKENS.frame_break and template[-1] == LUMOS_TOKENS.eoss
    assert int((template == LUMOS_TOKENS.newline).sum()) == ROWS
    assert template[1] == template[2] == LUMOS_TOKENS.grid_base + 1  # 32 px = 1 grid unit


@pytest.mark.parametrize(("rows", "cols"), [(4, 6), (48, 84)])
def test_history_mask_is_periodic_over_content(rows, cols):
    mask = history_mask(rows, cols, 0.7)
    content = rows * (cols + 1)
    assert int(mask.sum()) == round(0.7 * content)
    assert not mask[:3].any() and not mask[-1]  # break, grid tokens, eoss never masked
    offsets = mask.nonzero().flatten()
    assert offsets[0] == 3  # Lumos-1 starts at the first content position
    gaps = set(offsets.diff().tolist())
    step = content / int(mask.sum())
    assert gaps <= {math.floor(step), math.ceil(step)}


def test_history_mask_ratio_zero_and_one():
    assert not history_mask(ROWS, COLS, 0.0).any()
    full = history_mask(ROWS, COLS, 1.0)
    assert int(full.sum()) == ROWS * (COLS + 1)
    frame = frame_template(ROWS, COLS)
    assert torch.equal(apply_history_mask(frame, history_mask(ROWS, COLS, 0.0)), frame)


# --- CFG, visual vocabulary, drawing ------------------------------------------------------------


def test_cfg_blend_math():
    cond, uncond = random_logits(3, 1), random_logits(3, 2)
    scale = torch.tensor([0.0, 1.0, 15.0])
    blended = guided_logits(cond, uncond, scale)
    assert torch.allclose(blended[0], uncond[0]) and torch.allclose(blended[1], cond[1])
    assert torch.allclose(blended[2], 15 * (cond[2] - uncond[2]) + uncond[2], atol=1e-5)
    assert torch.equal(guided_logits(cond, None, scale), cond)


def test_restrict_to_visual_keeps_visual_columns():
    logits = torch.arange(LUMOS_TOKENS.visual_base + 5).float()[None]
    assert restrict_to_visual(logits)[0].tolist() == [65536.0 + k for k in range(5)]
    with pytest.raises(ValueError, match="no visual ids"):
        restrict_to_visual(torch.zeros(1, 100))


def first_step(params: ARDFSamplingParams, cond: torch.Tensor, noise: StepNoise | None = None):
    """Step 0 of a fresh canvas for one request, without guidance (noise None: drawn from the
    request's generator)."""
    return denoise_step(
        cond,
        None,
        frame_template(ROWS, COLS)[None],
        visual_cells(ROWS, COLS),
        CanvasProgress.at([0], [0]),
        knobs_for(params),
        draw_step_noise([request_generator(params)], F) if noise is None else noise,
    )


def test_drawn_tokens_are_visual_ids_within_top_k():
    cond = random_logits(1, 5)
    update = first_step(ARDFSamplingParams(steps_per_frame=1, top_k=3, seed=0), cond)
    codes = update.drawn_ids[0] - LUMOS_TOKENS.visual_base
    top3 = cond[0].topk(3, dim=-1).indices
    assert (codes[:, None] == top3).any(dim=-1).all()


def test_temperature_zero_draws_the_argmax():
    cond = random_logits(1, 6)
    update = first_step(ARDFSamplingParams(steps_per_frame=1, temperature=0.0, seed=0), cond)
    assert torch.equal(update.drawn_ids[0] - LUMOS_TOKENS.visual_base, cond[0].argmax(-1))


def test_remask_noise_anneals_within_the_first_frame_only():
    """Lumos-1 multiplies its temperature by (1 - (s+1)/S) at every step, never resetting it."""
    params = ARDFSamplingParams(steps_per_frame=4, temperature=2.0)
    knobs = knobs_for(params, params, params)
    scale = remask_noise_scale(CanvasProgress.at([0, 2, 1], [0, 0, 1]), knobs)
    expected = [2.0 * 0.75, 2.0 * 0.75 * 0.5 * 0.25, 0.0]
    assert torch.allclose(scale, torch.tensor(expected))
    last = remask_noise_scale(CanvasProgress.at([3], [0]), knobs_for(params))
    assert last.tolist() == [0.0]


# --- whole frames -------------------------------------------------------------------------------


def test_a_frame_fills_every_cell_on_schedule_and_never_touches_layout():
    params = ARDFSamplingParams(steps_per_frame=5, seed=11)
    canvas, fixed = run_frame(params)
    template, cells = frame_template(ROWS, COLS), visual_cells(ROWS, COLS)
    assert torch.equal(canvas[~cells], template[~cells])
    assert (canvas[cells] >= LUMOS_TOKENS.visual_base).all()
    assert torch.equal(fixed.sum(0), cells.long())  # every cell fixed exactly once
    masked_after = CELLS - fixed.sum(-1).cumsum(0)
    assert tuple(masked_after.tolist()) == schedule_table(params, CELLS)


def test_same_seed_same_frame_other_seed_other_frame():
    first, first_fixed = run_frame(ARDFSamplingParams(steps_per_frame=4, seed=5))
    again, again_fixed = run_frame(ARDFSamplingParams(steps_per_frame=4, seed=5))
    other, other_fixed = run_frame(ARDFSamplingParams(steps_per_frame=4, seed=6))
    assert torch.equal(first, again) and torch.equal(first_fixed, again_fixed)
    assert not torch.equal(first, other) or not torch.equal(first_fixed, other_fixed)


def test_requests_in_a_batch_are_independent():
    """Request A's step is the same alone and batched with a request of other knobs, step,
    canvas and generator."""
    a = ARDFSamplingParams(steps_per_frame=4, seed=1)
    b = ARDFSamplingParams(steps_per_frame=9, seed=2, top_k=3, temperature=0.0, cfg_scale=2.0)
    cells = visual_cells(ROWS, COLS)
    canvas_b = frame_template(ROWS, COLS)
    canvas_b[3:6] = LUMOS_TOKENS.visual_base + 7
    alone = denoise_step(
        random_logits(1, 1),
        random_logits(1, 2),
        frame_template(ROWS, COLS)[None],
        cells,
        CanvasProgress.at([0], [0]),
        knobs_for(a),
        draw_step_noise([request_generator(a)], F),
    )
    batched = denoise_step(
        torch.cat([random_logits(1, 1), random_logits(1, 3)]),
        torch.cat([random_logits(1, 2), random_logits(1, 4)]),
        torch.stack([frame_template(ROWS, COLS), canvas_b]),
        cells,
        CanvasProgress.at([0, 5], [0, 3]),
        knobs_for(a, b),
        draw_step_noise([request_generator(a), request_generator(b)], F),
    )
    assert torch.equal(batched.canvas[0], alone.canvas[0])
    assert torch.equal(batched.newly_fixed[0], alone.newly_fixed[0])
    assert torch.equal(batched.canvas[1][3:6], canvas_b[3:6])  # fixed cells stay fixed


def test_quantized_ranking_breaks_ties_by_position():
    """Identical logits everywhere and no noise: every confidence ties, so the lowest cells are
    fixed first; float noise far below the quantum does not change that."""
    params = ARDFSamplingParams(steps_per_frame=4, temperature=0.0, seed=0, ranking="quantized")
    flat = torch.zeros(1, F, VOCAB)
    flat[..., 5] = 2.0
    jitter = flat + 1e-7 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(3))
    cells = visual_cells(ROWS, COLS)
    results = [first_step_fixed(params, logits) for logits in (flat, jitter)]
    assert torch.equal(results[0], results[1])
    fixed_offsets = results[0].nonzero().flatten()
    first_cells = cells.nonzero().flatten()[: fixed_offsets.numel()]
    assert torch.equal(fixed_offsets, first_cells)


def test_rank_keys_are_unique_and_rank_non_candidates_last():
    confidence = torch.tensor([[0.1, 0.1, 0.5, -2.0, 0.1]])
    candidates = torch.tensor([[True, True, True, True, False]])
    keys = rank_keys(confidence, candidates)[0]
    assert keys.unique().numel() == 5
    assert keys.argsort().tolist() == [3, 1, 0, 2, 4]
    with pytest.raises(ValueError, match="NaN"):
        rank_keys(torch.tensor([[float("nan")]]), torch.tensor([[True]]))


def first_step_fixed(params: ARDFSamplingParams, logits: torch.Tensor) -> torch.Tensor:
    """[F] bool: the cells the first step fixes, with no re-masking noise (temperature 0)."""
    zeros = StepNoise(sample_u=torch.zeros(1, F), gumbel_u=torch.full((1, F), 0.5))
    return first_step(params, logits, zeros).newly_fixed[0]


def lumos_masking(confidence: torch.Tensor, mask_len: int) -> torch.Tensor:
    """Lumos-1's ``mask_by_random_topk`` cut (model/utils.py), transcribed: [N] -> [N] bool."""
    cut_off = torch.sort(confidence).values[mask_len]
    return confidence < cut_off


def test_exact_ranking_fixes_every_cell_tied_at_the_cut_off():
    """Lumos-1 (the default): all confidences tie, so none is below the cut-off and the first
    step fixes every cell, although the schedule asked to keep most of them masked."""
    flat = torch.zeros(1, F, VOCAB)
    flat[..., 5] = 2.0
    params = ARDFSamplingParams(steps_per_frame=4, temperature=0.0, seed=0)
    assert schedule_table(params, CELLS)[0] > 0
    assert torch.equal(first_step_fixed(params, flat), visual_cells(ROWS, COLS))


def test_exact_ranking_equals_lumos_cut_off_with_partial_ties():
    """Cells in three confidence groups (two of them tied across the cut-off): the cells the
    step keeps masked are exactly those Lumos-1's ``confidence < cut_off`` masks."""
    params = ARDFSamplingParams(steps_per_frame=4, temperature=0.0, seed=0)
    cells = visual_cells(ROWS, COLS)
    group = torch.arange(CELLS) % 3  # per cell: 0 least confident .. 2 most
    logits = torch.zeros(1, F, VOCAB)
    logits[0, cells, 0] = torch.tensor([0.5, 3.0, 6.0])[group]  # argmax code 0, p by group
    confidence = logits[0, cells].log_softmax(-1)[:, 0]
    keep = schedule_table(params, CELLS)[0]  # 22 of 24: the cut-off sits inside group 2
    expected_masked = lumos_masking(confidence, keep)
    fixed = first_step_fixed(params, logits)[cells]
    assert torch.equal(~fixed, expected_masked)
    assert expected_masked.sum() < keep  # the tie at the cut-off fixed more than asked
    quantized = first_step_fixed(replace(params, ranking="quantized"), logits)[cells]
    assert int((~quantized).sum()) == keep  # the other ranking keeps exactly the schedule's count


def test_exact_ranking_without_ties_keeps_the_least_confident():
    """Distinct confidences (random logits, Gumbel noise on): both rankings keep exactly the
    schedule's count masked, the least confident cells, and agree with Lumos-1's cut."""
    params = ARDFSamplingParams(steps_per_frame=4, seed=5)
    logits = random_logits(1, 21)
    cells = visual_cells(ROWS, COLS)
    noise = draw_step_noise([request_generator(params)], F)
    results = [
        first_step(replace(params, ranking=ranking), logits, noise)
        for ranking in ("exact", "quantized")
    ]
    keep = schedule_table(params, CELLS)[0]
    exact = results[0]
    expected = lumos_masking(exact.confidence[0, cells], keep)
    assert torch.equal(~exact.newly_fixed[0, cells], expected)
    assert int(expected.sum()) == keep
    assert torch.equal(exact.newly_fixed, results[1].newly_fixed)
