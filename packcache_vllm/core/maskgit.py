"""Lumos-1's frame-parallel (AR-DF) MaskGIT sampler, batched over requests, in plain torch.

One latent frame is a *canvas* of F tokens (``layout.tokens_per_frame``). Its layout tokens
(``<break>``, the two grid tokens, one newline per row, ``<eoss>``) are pinned: written once by
``frame_template`` and never masked. Its R x C visual cells start as ``<mask>`` and are filled
in S steps. Step s (0-based) of S:

1. CFG: ``logits = u + cfg * (c - u)`` from the conditioned and the unconditional twin's logits,
   both restricted to the visual vocabulary (column k is token ``visual_base + k``).
2. Every position draws a visual token from softmax(logits / temperature) (argmax when
   temperature is 0; optionally restricted to the top-k), by inverse CDF from one uniform per
   position.
3. Confidence of a still-masked cell = log p(drawn token) + annealed Gumbel noise (Lumos-1's
   ``mask_by_random_topk``; scale: ``remask_noise_scale``).
4. The schedule fixes how many cells stay masked after the step (``masked_after_step``); the
   least confident ones are re-masked, every other masked cell takes its drawn token for good.
   After step S-1 none stays masked.

Ranking (``ranking`` knob). ``exact`` (default, Lumos-1's ``mask_by_random_topk``): with k the
number of cells to keep masked, the cut-off is the k-th smallest confidence among the masked
cells and a cell stays masked iff its confidence is strictly below it, so an exact tie at the
cut-off fixes every tied cell (fewer than k stay masked). ``quantized``: confidences rounded to
``CONFIDENCE_QUANTUM`` and ties broken by position (the lower position is fixed first), so
exactly k stay masked.

Randomness: each request owns a CPU ``torch.Generator`` (``request_generator``); every denoising
step draws exactly ``2 * F`` uniforms from it (``draw_step_noise``: first the sampling uniforms,
then the Gumbel uniforms), whatever the knobs, so results depend only on the request's own seed
and step, never on which other requests share the batch or on the device.

Committing a frame: Lumos-1 writes a finished frame to the KV cache from a copy in which a fixed,
periodic ~70 % of its content positions (cells and newlines, offsets 3 .. F-2) are ``<mask>``
(``history_mask``). The prompt's conditioning frames are cached whole by default
(``condition_mask_ratio`` 0): Lumos-1 forwards a clone of the prompt taken before it masks the
earlier frames, and undoes that masking at the next step.

Where the defaults come from (Lumos-1, ``inference_solver_vid.py``,
``generate_maskedAR_mmrope_v8_newcache``; ``model/utils.py`` ``mask_by_random_topk``):

* conditioning frames unmasked: the first frame's first step forwards ``prompt_for_cache =
  prompt.clone()`` (and ``uncond_prompt_for_cache``) taken before the loop over ``prev_idx``
  masks them in ``prompt``; step 1 restores ``prompt_no_mask_vp``. ``condition_mask_ratio``
  0.7 gives the masked conditioning the masking code seems to intend.
* no top-k: the ``image_top_k=2000`` logits processor is built, but the masked loop only uses
  its suppression of non-visual ids before ``softmax`` + ``multinomial``: ``top_k`` None.
* ties: ``masking = confidence < cut_off`` on exact values: ``ranking="exact"``.

Where this sampler still differs from Lumos-1's code:

* temperature: Lumos-1 applies its temperature (1.0) only to the re-masking noise and draws from
  softmax(logits); here it also divides the logits, which is the same at 1.0 and makes 0 a
  deterministic argmax mode.
* drawing: inverse CDF from the request's own uniforms instead of ``torch.multinomial``: the same
  distribution, but independent of batch composition and device.
* history mask ratio 0 masks nothing (Lumos-1's formula masks at least one position).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from numbers import Integral, Real

import torch

from packcache_vllm.core.layout import LUMOS_TOKENS, NUM_LEADING_MARKERS, LumosTokenIds

SCHEDULES = ("cosine", "linear")
RANKINGS = ("exact", "quantized")
CONFIDENCE_QUANTUM = 1e-3  # confidences closer than this count as tied (then: by position)
LOG_EPS = 1e-20  # Lumos-1's clamp inside log()
PIXELS_PER_TOKEN = 8  # Cosmos DV4x8x8: one visual token per 8 x 8 pixels
GRID_PIXELS = 32  # Lumos-1's grid tokens count 32-pixel units
MAX_STEPS = 1000
MAX_CFG_SCALE = 100.0
MAX_TEMPERATURE = 100.0
MAX_SEED = 2**63 - 1
_FIXED_KEY = 2**62  # ranking key of positions that are not candidates (pinned or already fixed)


# --- per-request knobs --------------------------------------------------------------------------


@dataclass(frozen=True)
class ARDFSamplingParams:
    """Per-request AR-DF knobs; defaults are Lumos-1's inference settings.

    steps_per_frame: denoising steps per latent frame, in [1, 1000].
    cfg_scale: guidance weight in ``u + cfg * (c - u)``, in [0, 100] (1: conditioned only).
    top_k: draw among the k most likely visual tokens (k >= 1; clipped to the visual vocabulary);
        None (Lumos-1): the whole visual vocabulary.
    temperature: in [0, 100]; divides the logits before drawing (0: argmax) and scales the
        annealed Gumbel noise of the re-masking confidence.
    schedule: "cosine" (Lumos-1) or "linear": fraction of cells still masked after step s.
    seed: seed of the request's generator, in [0, 2**63 - 1]; None: a fresh random seed.
    history_mask_ratio: fraction of a committed frame's content positions masked in its cache
        copy, in [0, 1] (0: commit the frame as generated).
    condition_mask_ratio: the same for the prompt's conditioning frames, in [0, 1] (0, Lumos-1:
        cached whole).
    ranking: "exact" (Lumos-1: ties at the re-masking cut-off are all fixed) or "quantized"
        (ties within ``CONFIDENCE_QUANTUM`` broken by position).
    """

    steps_per_frame: int = 50
    cfg_scale: float = 15.0
    top_k: int | None = None
    temperature: float = 1.0
    schedule: str = "cosine"
    seed: int | None = None
    history_mask_ratio: float = 0.7
    condition_mask_ratio: float = 0.0
    ranking: str = "exact"

    def __post_init__(self) -> None:
        _check_int("steps_per_frame", self.steps_per_frame, 1, MAX_STEPS)
        _check_real("cfg_scale", self.cfg_scale, 0.0, MAX_CFG_SCALE)
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 1, None)
        _check_real("temperature", self.temperature, 0.0, MAX_TEMPERATURE)
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"ardf schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.seed is not None:
            _check_int("seed", self.seed, 0, MAX_SEED)
        _check_real("history_mask_ratio", self.history_mask_ratio, 0.0, 1.0)
        _check_real("condition_mask_ratio", self.condition_mask_ratio, 0.0, 1.0)
        if self.ranking not in RANKINGS:
            raise ValueError(f"ardf ranking must be one of {list(RANKINGS)}, got {self.ranking!r}")
        for name in ("cfg_scale", "temperature", "history_mask_ratio", "condition_mask_ratio"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def knob_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def with_overrides(self, overrides: Mapping[str, object]) -> ARDFSamplingParams:
        """A copy with per-request overrides (e.g. from ``vllm_xargs``), validated; unknown knob
        names are an error naming them."""
        unknown = sorted(set(overrides) - set(self.knob_names()))
        if unknown:
            raise ValueError(
                f"unknown ardf knob(s) {unknown}; valid knobs: {sorted(self.knob_names())}"
            )
        return replace(self, **overrides)


def _check_int(knob: str, value: object, low: int, high: int | None) -> None:
    is_int = isinstance(value, Integral) and not isinstance(value, bool)
    if not is_int or value < low or (high is not None and value > high):
        allowed = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"ardf {knob} must be an integer {allowed}, got {value!r}")


def _check_real(knob: str, value: object, low: float, high: float) -> None:
    is_real = isinstance(value, Real) and not isinstance(value, bool)
    if not (is_real and math.isfinite(value) and low <= value <= high):
        raise ValueError(f"ardf {knob} must be a number in [{low:g}, {high:g}], got {value!r}")


@dataclass(frozen=True)
class SamplerKnobs:
    """ARDFSamplingParams of a batch of B requests as tensors (row b = request b).

    cfg_scale, temperature: [B] float32. top_k: [B] int64 (None became the visual vocabulary
    size, clipped to it). steps_per_frame: [B] int64. linear_schedule, exact_ranking: [B] bool.
    """

    cfg_scale: torch.Tensor
    temperature: torch.Tensor
    top_k: torch.Tensor
    steps_per_frame: torch.Tensor
    linear_schedule: torch.Tensor
    exact_ranking: torch.Tensor

    @classmethod
    def from_params(
        cls,
        params: Sequence[ARDFSamplingParams],
        visual_vocab_size: int,
        device: torch.device | str | None = None,
    ) -> SamplerKnobs:
        def tensor(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        top_k = [min(p.top_k or visual_vocab_size, visual_vocab_size) for p in params]
        return cls(
            cfg_scale=tensor([p.cfg_scale for p in params], torch.float32),
            temperature=tensor([p.temperature for p in params], torch.float32),
            top_k=tensor(top_k, torch.int64),
            steps_per_frame=tensor([p.steps_per_frame for p in params], torch.int64),
            linear_schedule=tensor([p.schedule == "linear" for p in params], torch.bool),
            exact_ranking=tensor([p.ranking == "exact" for p in params], torch.bool),
        )


# --- randomness ---------------------------------------------------------------------------------


def request_generator(params: ARDFSamplingParams) -> torch.Generator:
    """The request's own CPU generator, seeded with ``params.seed`` (a fresh seed when None)."""
    generator = torch.Generator(device="cpu")
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


@dataclass(frozen=True)
class StepNoise:
    """Uniforms of one denoising step. sample_u, gumbel_u: [B, F] float32 in [0, 1)."""

    sample_u: torch.Tensor
    gumbel_u: torch.Tensor


def draw_step_noise(
    generators: Sequence[torch.Generator],
    tokens_per_frame: int,
    device: torch.device | str | None = None,
) -> StepNoise:
    """Draw one step's noise for B requests: ``2 * F`` uniforms from each request's generator
    (drawn on the CPU, so every device sees the same numbers). One generator call per request."""
    draws = torch.stack([torch.rand(2, tokens_per_frame, generator=g) for g in generators])
    draws = draws.to(device)  # [B, 2, F]
    return StepNoise(sample_u=draws[:, 0], gumbel_u=draws[:, 1])


# --- frame layout -------------------------------------------------------------------------------


def grid_token_ids(rows: int, cols: int, tokens: LumosTokenIds = LUMOS_TOKENS) -> tuple[int, int]:
    """Lumos-1's (h, w) grid tokens of a frame: 32-pixel units of its height and width."""
    h_units = rows * PIXELS_PER_TOKEN // GRID_PIXELS
    w_units = cols * PIXELS_PER_TOKEN // GRID_PIXELS
    return tokens.grid_base + h_units, tokens.grid_base + w_units


def visual_cells(rows: int, cols: int) -> torch.Tensor:
    """[F] bool over frame offsets: True at the R x C visual cells, False at layout tokens."""
    if rows < 1 or cols < 1:
        raise ValueError(f"a frame needs rows, cols >= 1, got {rows} x {cols}")
    grid = torch.ones(rows, cols + 1, dtype=torch.bool)
    grid[:, cols] = False  # the newline ending each row
    leading = torch.zeros(NUM_LEADING_MARKERS, dtype=torch.bool)
    return torch.cat([leading, grid.flatten(), torch.zeros(1, dtype=torch.bool)])


def visual_offsets(rows: int, cols: int) -> torch.Tensor:
    """[R * C] int64 frame offsets of the visual cells, raster order."""
    return visual_cells(rows, cols).nonzero().flatten()


def frame_template(
    rows: int,
    cols: int,
    grid_ids: tuple[int, int] | None = None,
    tokens: LumosTokenIds = LUMOS_TOKENS,
) -> torch.Tensor:
    """[F] int64: a fresh canvas: layout tokens in place, every visual cell ``<mask>``.

    grid_ids: the frame's (h, w) grid tokens; None: ``grid_token_ids(rows, cols)``."""
    h_grid, w_grid = grid_token_ids(rows, cols, tokens) if grid_ids is None else grid_ids
    cells = visual_cells(rows, cols)
    canvas = torch.full(cells.shape, tokens.mask, dtype=torch.int64)
    canvas[0], canvas[1], canvas[2] = tokens.frame_break, h_grid, w_grid
    newline_offsets = NUM_LEADING_MARKERS + cols + torch.arange(rows) * (cols + 1)
    canvas[newline_offsets] = tokens.newline
    canvas[-1] = tokens.eoss
    return canvas


# --- history mask (commit) ----------------------------------------------------------------------


def history_mask(rows: int, cols: int, ratio: float) -> torch.Tensor:
    """[F] bool over frame offsets: True where a committed frame's cache copy holds ``<mask>``.

    Lumos-1's periodic pattern (``mask_history_pattern``): over the L = R * (C + 1) content
    offsets (visual cells and newlines; offsets 3 .. F-2), n = max(1, round(ratio * L)) positions
    ``round(k * L / n)``, k = 0 .. n-1 (float32, round half to even), so about ``ratio`` of them,
    evenly spaced, starting with the first. The same pattern serves every frame and the
    conditioning image. ratio 0 masks nothing (Lumos-1 would still mask one position).
    """
    _check_real("history_mask_ratio", ratio, 0.0, 1.0)
    content_len = rows * (cols + 1)
    mask = torch.zeros(NUM_LEADING_MARKERS + content_len + 1, dtype=torch.bool)
    if ratio == 0:
        return mask
    count = max(1, round(ratio * content_len))
    spacing = content_len / count
    offsets = torch.round(torch.arange(count) * spacing).long().clamp(0, content_len - 1)
    assert offsets.unique().numel() == count, "periodic history offsets must be distinct"
    mask[NUM_LEADING_MARKERS + offsets] = True
    return mask


def apply_history_mask(
    frame_ids: torch.Tensor, mask: torch.Tensor, tokens: LumosTokenIds = LUMOS_TOKENS
) -> torch.Tensor:
    """frame_ids: [..., F] int64; mask: [F] bool (``history_mask``). The cache copy, [..., F]."""
    return torch.where(mask.to(frame_ids.device), tokens.mask, frame_ids)


# --- schedule -----------------------------------------------------------------------------------


def schedule_fraction(
    step: torch.Tensor, steps_per_frame: torch.Tensor, linear: torch.Tensor
) -> torch.Tensor:
    """Fraction of cells the schedule wants still masked after ``step`` (0-based).

    step, steps_per_frame: [B] int64; linear: [B] bool. Returns [B] float32: cos(pi/2 * r)
    (cosine) or 1 - r (linear), r = (step + 1) / steps_per_frame, computed in float32 as Lumos-1
    does."""
    ratio = ((step + 1).double() / steps_per_frame.double()).float()
    cosine = torch.cos(ratio * math.pi * 0.5)
    return torch.where(linear, (1.0 - ratio).clamp(min=1e-6), cosine)


def masked_after_step(
    step: torch.Tensor, knobs: SamplerKnobs, num_cells: int, num_masked: torch.Tensor
) -> torch.Tensor:
    """How many cells stay masked after ``step``: Lumos-1's ``max(1, min(masked - 1,
    floor(num_cells * fraction)))``, and 0 after the last step.

    step, num_masked (cells masked before the step): [B] int64. Returns [B] int64."""
    fraction = schedule_fraction(step, knobs.steps_per_frame, knobs.linear_schedule)
    wanted = torch.floor(num_cells * fraction).long()
    count = torch.clamp(torch.minimum(num_masked - 1, wanted), min=1)
    return torch.where(step + 1 >= knobs.steps_per_frame, torch.zeros_like(count), count)


def schedule_table(params: ARDFSamplingParams, num_cells: int) -> tuple[int, ...]:
    """Cells still masked after each of the S steps of one frame (length S, ends with 0)."""
    knobs = SamplerKnobs.from_params([params], visual_vocab_size=1)
    masked = torch.tensor([num_cells])
    table = []
    for step in range(params.steps_per_frame):
        masked = masked_after_step(torch.tensor([step]), knobs, num_cells, masked)
        table.append(int(masked))
    return tuple(table)


# --- one denoising step -------------------------------------------------------------------------


def guided_logits(
    cond: torch.Tensor, uncond: torch.Tensor | None, cfg_scale: torch.Tensor
) -> torch.Tensor:
    """CFG blend ``u + cfg * (c - u)``. cond, uncond: [B, F, V] float32; cfg_scale: [B].
    uncond None: the conditioned logits unchanged. Returns [B, F, V] float32."""
    if uncond is None:
        return cond.float()
    scale = cfg_scale.to(cond.device, torch.float32)[:, None, None]
    return uncond.float() + scale * (cond.float() - uncond.float())


def restrict_to_visual(logits: torch.Tensor, tokens: LumosTokenIds = LUMOS_TOKENS) -> torch.Tensor:
    """[..., V] full-vocabulary logits -> [..., V - visual_base]: column k is the visual token
    ``visual_base + k`` (Lumos-1 suppresses every other id)."""
    if logits.shape[-1] <= tokens.visual_base:
        raise ValueError(
            f"logits have {logits.shape[-1]} columns: no visual ids (they start at "
            f"{tokens.visual_base})"
        )
    return logits[..., tokens.visual_base :]


@dataclass(frozen=True)
class DrawnTokens:
    """codes: [B, F] int64 visual codes drawn per position; log_prob: [B, F] float32 log p of
    each under softmax(top-k logits)."""

    codes: torch.Tensor
    log_prob: torch.Tensor


def draw_visual_codes(
    logits: torch.Tensor, knobs: SamplerKnobs, sample_u: torch.Tensor
) -> DrawnTokens:
    """Top-k + temperature draw by inverse CDF. logits: [B, F, V] float32 visual logits;
    sample_u: [B, F] uniforms. Temperature 0 takes the most likely code."""
    k_max = int(knobs.top_k.max())
    top_logits, top_codes = logits.topk(k_max, dim=-1)  # [B, F, k], sorted descending
    rank = torch.arange(k_max, device=logits.device)
    outside = rank[None, None, :] >= knobs.top_k.to(logits.device)[:, None, None]
    top_logits = top_logits.masked_fill(outside, float("-inf"))
    temperature = knobs.temperature.to(logits.device)[:, None, None]
    tempered = top_logits / temperature.clamp(min=1e-10)
    cdf = tempered.softmax(dim=-1).cumsum(dim=-1)  # [B, F, k]
    target = (sample_u.to(logits.device) * cdf[..., -1]).unsqueeze(-1)
    last_inside = (knobs.top_k.to(logits.device) - 1)[:, None, None]
    drawn = torch.minimum(torch.searchsorted(cdf, target, right=True), last_inside)
    drawn = torch.where(temperature == 0, torch.zeros_like(drawn), drawn)  # [B, F, 1]
    log_probs = top_logits.log_softmax(dim=-1).gather(-1, drawn).squeeze(-1)
    return DrawnTokens(
        codes=top_codes.gather(-1, drawn).squeeze(-1),
        log_prob=log_probs.clamp(min=math.log(LOG_EPS)),
    )


@dataclass(frozen=True)
class CanvasProgress:
    """Where B canvases are. step: [B] int64, the step within the frame (0 .. S-1);
    frame: [B] int64, how many frames the request generated before this one (0: its first)."""

    step: torch.Tensor
    frame: torch.Tensor

    @classmethod
    def at(cls, steps: Sequence[int], frames: Sequence[int]) -> CanvasProgress:
        return cls(torch.tensor(list(steps)), torch.tensor(list(frames)))


def remask_noise_scale(progress: CanvasProgress, knobs: SamplerKnobs) -> torch.Tensor:
    """[B] float32 scale of the Gumbel noise in the re-masking confidence, as Lumos-1 computes
    it: its loop multiplies its temperature variable in place by (1 - (s+1)/S) at every step and
    never resets it, so after step s of the first generated frame the scale is
    ``T * prod_{j=1}^{s+1} (1 - j/S)``; the last step of that frame brings it to 0, so later
    frames re-mask by confidence alone."""
    device = knobs.temperature.device
    steps = knobs.steps_per_frame.double()[:, None]
    last = int(knobs.steps_per_frame.max())
    j = torch.arange(1, last + 1, dtype=torch.float64, device=device)[None, :]
    applied = j <= (progress.step.to(device) + 1).double()[:, None]
    factors = torch.where(applied, 1.0 - j / steps, torch.ones_like(j))
    scale = knobs.temperature.double() * factors.prod(dim=-1)
    first_frame = progress.frame.to(device) == 0
    return torch.where(first_frame, scale, torch.zeros_like(scale)).float()


def remask_noise(
    gumbel_u: torch.Tensor, progress: CanvasProgress, knobs: SamplerKnobs
) -> torch.Tensor:
    """Gumbel noise ``remask_noise_scale * g``, g = -log(-log(u)). gumbel_u: [B, F].
    Returns [B, F] float32."""
    scale = remask_noise_scale(progress, knobs).to(gumbel_u.device)
    neg_log_u = (-torch.log(gumbel_u.clamp(min=LOG_EPS))).clamp(min=LOG_EPS)
    return scale[:, None] * -torch.log(neg_log_u)


def rank_keys(confidence: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Tie-robust ranking keys. confidence: [B, F] float32; candidates: [B, F] bool. Returns
    [B, F] int64, unique per row: higher = more confident = fixed first; the quantised confidence
    decides, then the lower position wins; non-candidates rank above every candidate."""
    if torch.isnan(confidence).any():
        raise ValueError("re-masking confidence is NaN: the logits hold NaN")
    num_positions = confidence.shape[-1]
    bucket = torch.round(confidence.double() / CONFIDENCE_QUANTUM).long()
    position = torch.arange(num_positions, device=confidence.device)
    keys = bucket * num_positions + (num_positions - 1 - position)
    return torch.where(candidates, keys, torch.full_like(keys, _FIXED_KEY))


@dataclass(frozen=True)
class CanvasUpdate:
    """The result of one denoising step for B canvases of F tokens.

    canvas: [B, F] int64, the next canvas (``<mask>`` where still masked; layout tokens intact).
    drawn_ids: [B, F] int64 token ids drawn at every position this step (pinned positions too).
    newly_fixed: [B, F] bool, the cells fixed by this step.
    confidence: [B, F] float32 re-masking confidence (meaningful at the step's masked cells).
    """

    canvas: torch.Tensor
    drawn_ids: torch.Tensor
    newly_fixed: torch.Tensor
    confidence: torch.Tensor


def denoise_step(
    cond_logits: torch.Tensor,
    uncond_logits: torch.Tensor | None,
    canvas: torch.Tensor,
    cells: torch.Tensor,
    progress: CanvasProgress,
    knobs: SamplerKnobs,
    noise: StepNoise,
    tokens: LumosTokenIds = LUMOS_TOKENS,
) -> CanvasUpdate:
    """One MaskGIT step for B requests at once (module docstring).

    cond_logits, uncond_logits: [B, F, V] visual logits of the conditioned / unconditional twin
    at every canvas position (uncond None: no guidance). canvas: [B, F] int64 current canvases
    (``frame_template`` then earlier steps' output). cells: [F] bool, the visual cells
    (``visual_cells``; every other position is pinned). progress, knobs, noise: for the same
    B rows."""
    cells = cells.to(canvas.device)
    candidates = cells[None, :] & (canvas == tokens.mask)  # [B, F] cells still masked
    logits = guided_logits(cond_logits, uncond_logits, knobs.cfg_scale)
    drawn = draw_visual_codes(logits, knobs, noise.sample_u)
    drawn_ids = drawn.codes + tokens.visual_base
    confidence = drawn.log_prob + remask_noise(noise.gumbel_u, progress, knobs)
    num_cells = int(cells.sum())
    step = progress.step.to(knobs.steps_per_frame.device)
    keep = masked_after_step(step, knobs, num_cells, candidates.sum(-1).to(step.device))
    keep = keep.to(canvas.device)
    stays_masked = torch.where(
        knobs.exact_ranking.to(canvas.device)[:, None],
        below_cut_off(confidence, candidates, keep),
        candidates & (_ascending_rank(rank_keys(confidence, candidates)) < keep[:, None]),
    )
    newly_fixed = candidates & ~stays_masked
    return CanvasUpdate(
        canvas=torch.where(newly_fixed, drawn_ids, canvas),
        drawn_ids=drawn_ids,
        newly_fixed=newly_fixed,
        confidence=confidence,
    )


def below_cut_off(
    confidence: torch.Tensor, candidates: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """Lumos-1's re-masking: the candidates whose confidence is strictly below the ``keep``-th
    smallest candidate confidence (0-based; non-candidates count as +inf). An exact tie at the
    cut-off leaves every tied cell unmasked. confidence: [B, F] float32; candidates: [B, F]
    bool; keep: [B] int64 (<= candidates per row). Returns [B, F] bool."""
    ranked = torch.where(candidates, confidence, torch.full_like(confidence, float("inf")))
    cut_off = ranked.sort(dim=-1).values.gather(-1, keep[:, None])
    return candidates & (confidence < cut_off)


def _ascending_rank(keys: torch.Tensor) -> torch.Tensor:
    """[B, F] int64 keys -> [B, F] int64: each key's rank in its row, smallest first."""
    order = keys.argsort(dim=-1)
    rank = torch.empty_like(order)
    positions = torch.arange(keys.shape[-1], device=keys.device).expand_as(order)
    return rank.scatter_(-1, order, positions)
