"""Dense reference for Lumos-1's frame-parallel (AR-DF) generation with CFG and PackCache: the
oracle for the engine's frame-parallel mode. Pure PyTorch, float32, seeded, deterministic.

For a prompt (text, ``<video_start>``, duration, fps, optional conditioning frames) it runs two
*twins*, each with its own KV cache (``ARDFSession``) and its own PackCache policy:

* cond: the prompt itself;
* uncond: the same video tokens without the text (``unconditional_prompt``: the prompt from its
  ``<video_start>`` on). It sees exactly the canvases and commits of the cond twin. Positions are
  its own sequence's (its global 3D offset is that of its first visual token). No twin is run
  when ``cfg_scale`` is 1: the conditioned logits are used as they are. (A comment in Lumos-1's
  loop says it wants the uncond history to be all ``<mask>``, but its uncond sequence is a
  tensor view of the cond sequence, so what it computes is the above: the same canvases and the
  same masked commits.)

Each twin's prefill forwards the text causally, then caches every conditioning frame whole
(bidirectional inside the frame), as Lumos-1 does (``condition_mask_ratio`` > 0 masks them like
commits instead). Then, per latent frame:

1. A canvas from ``frame_template``: layout tokens in place, every visual cell ``<mask>``.
2. S denoising steps. Each forwards the whole canvas through both twins -- bidirectional inside
   the canvas, full attention to the cached history (anchors + the kept part of the committed
   frames) -- and discards the canvas KV; the visual logits go to ``core.maskgit.denoise_step``
   with the request's generator.
3. Commit: the finished frame's history-masked copy (``history_mask``: ~70 % of its content
   positions ``<mask>``) is forwarded the same way through both twins and its KV is kept. Then
   each twin's policy compacts its cache (``ReferenceSession``: dropped frames, kept offsets,
   time rebase). The frame's tokens are the finished canvas, not the masked copy.

``FrameRecord`` keeps, per frame, the tokens, each step's input canvas and the offsets it fixed,
and what each twin's cache held while denoising, so an engine can be compared step by step.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.layout import (
    LUMOS_TOKENS,
    FrameLayout,
    find_frame_start,
    unconditional_prompt,  # re-exported: the oracle's callers import it from here
)
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
from packcache_vllm.reference import (
    KVCache,
    NoEviction,
    PackCachePolicy,
    RebaseMode,
    ReferenceSession,
    ReferenceVideoModel,
)


class FrameAttention(enum.Enum):
    """How a frame's tokens attend to each other in canvas, commit and conditioning forwards."""

    BIDIRECTIONAL = "bidirectional"  # Lumos-1: every token of the frame sees the whole frame
    CAUSAL = "causal"  # a control: what an engine that forgot the per-request flag computes


class ARDFSession(ReferenceSession):
    """One twin's cache under AR-DF: whole frames forwarded at once, canvases discarded,
    commits kept and followed by the policy's compaction (``ReferenceSession``)."""

    def prefill_prompt(
        self, prompt_ids: Sequence[int], condition_mask: torch.Tensor, attention: FrameAttention
    ) -> None:
        """Forward the text causally, then commit each conditioning frame with ``condition_mask``
        [F] bool (``history_mask`` of ``condition_mask_ratio``; all False: the whole frame)."""
        if self.num_tokens:
            raise ValueError("prefill_prompt must be the session's first call")
        ids = self.model.check_ids(prompt_ids)
        if ids.numel() != self.prompt_len:
            raise ValueError(
                f"the prompt has {ids.numel()} tokens, layout.anchor_len is {self.prompt_len}"
            )
        text_len = self.layout.frame_start
        if text_len:
            self._run(ids[:text_len], keep=True, causal=True)
        per_frame = self.layout.tokens_per_frame
        for start in range(text_len, ids.numel(), per_frame):
            self.commit(ids[start : start + per_frame], condition_mask, attention)

    def canvas_logits(self, canvas: torch.Tensor, attention: FrameAttention) -> torch.Tensor:
        """canvas: [F] int64 at the next frame's indices -> [F, V_visual] float32 logits; the
        canvas KV is discarded (computed on a copy of the cache)."""
        hidden = self._run(canvas, keep=False, causal=attention is FrameAttention.CAUSAL)
        return visual_logits(self.model, hidden)

    def commit(
        self, frame_ids: torch.Tensor, commit_mask: torch.Tensor, attention: FrameAttention
    ) -> None:
        """Keep the KV of ``frame_ids`` [F] with ``commit_mask`` [F] positions replaced by
        ``<mask>``, at the next frame's indices; then compact if a generated frame completed."""
        masked = apply_history_mask(frame_ids, commit_mask)
        self._run(masked, keep=True, causal=attention is FrameAttention.CAUSAL)

    def _run(self, ids: torch.Tensor, *, keep: bool, causal: bool) -> torch.Tensor:
        """Forward ``ids`` [N] at the next N logical indices. Returns hidden states [N, D]."""
        index = torch.arange(self.num_tokens, self.num_tokens + ids.numel(), dtype=torch.int64)
        cache = self.cache if keep else scratch_copy(self.cache)
        allowed = None if causal else torch.ones(ids.numel(), len(cache) + ids.numel()).bool()
        hidden = self.model.run_layers(
            ids,
            index,
            cache,
            self.layout,
            self._rope_shift(),
            keys_rotated=self.rebase is RebaseMode.ROTATE_ANCHORS,
            allowed=allowed,
        )
        self.last_attended = cache.indices
        self.last_dropped_frames = self.dropped_frames
        if keep:
            self.num_tokens += ids.numel()
            self._evict_if_frame_completed()
        return hidden


def scratch_copy(cache: KVCache) -> KVCache:
    """A cache to forward into and throw away: appending to it leaves ``cache`` unchanged."""
    return KVCache(cache.indices, list(cache.keys), list(cache.values))


def visual_logits(model: ReferenceVideoModel, hidden: torch.Tensor) -> torch.Tensor:
    """hidden: [N, D] final-normed -> [N, V - visual_base] float32 logits of the visual ids
    (lm_head restricted to its visual rows)."""
    return F.linear(hidden, model.weights.lm_head[LUMOS_TOKENS.visual_base :]).float()


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DenoiseRecord:
    """One denoising step. canvas_in: [F] int64, the canvas the step forwarded; fixed_offsets:
    frame offsets it fixed (nonempty while cells are masked, except when the schedule holds)."""

    canvas_in: torch.Tensor
    fixed_offsets: frozenset[int]


@dataclass(frozen=True)
class FrameRecord:
    """One generated frame.

    token_ids: its F tokens (what the engine emits). committed_ids: the history-masked copy
    whose KV was kept. steps: its S denoising steps. cond_attended / uncond_attended: [M] int64
    logical indices of each twin's cached tokens during its denoising steps (uncond None without
    a twin). dropped_frames: Δ of the cond twin then (the uncond twin's is the same).
    """

    token_ids: tuple[int, ...]
    committed_ids: tuple[int, ...]
    steps: tuple[DenoiseRecord, ...]
    cond_attended: torch.Tensor
    uncond_attended: torch.Tensor | None
    dropped_frames: int


@dataclass(frozen=True)
class ARDFResult:
    prompt_ids: tuple[int, ...]
    uncond_prompt_ids: tuple[int, ...] | None
    frames: tuple[FrameRecord, ...]

    @property
    def token_ids(self) -> tuple[int, ...]:
        """Every generated frame's tokens, in order."""
        return tuple(t for frame in self.frames for t in frame.token_ids)


# --- generation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Twins:
    """The conditioned session and the unconditional one (None when cfg_scale is 1)."""

    cond: ARDFSession
    uncond: ARDFSession | None

    def all(self) -> tuple[ARDFSession, ...]:
        return (self.cond,) if self.uncond is None else (self.cond, self.uncond)

    def with_prompts(self, prompt_ids: Sequence[int]) -> list[tuple[ARDFSession, list[int]]]:
        """Each session with its prompt: the prompt, and the unconditional prompt."""
        pairs = [(self.cond, list(prompt_ids))]
        if self.uncond is not None:
            pairs.append((self.uncond, unconditional_prompt(prompt_ids)))
        return pairs


def generate_ardf(
    model: ReferenceVideoModel,
    prompt_ids: Sequence[int],
    num_frames: int,
    params: ARDFSamplingParams,
    packcache: PackCacheConfig | None = None,
    *,
    rebase: RebaseMode = RebaseMode.POSITIONS,
    attention: FrameAttention = FrameAttention.BIDIRECTIONAL,
) -> ARDFResult:
    """Generate ``num_frames`` latent frames after ``prompt_ids`` (module docstring).

    packcache: each twin's policy (``PackCachePolicy``, one per twin); None keeps everything.
    params.seed must be set: the reference is deterministic."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if params.seed is None:
        raise ValueError("the reference needs ARDFSamplingParams.seed set (got None)")
    rows, cols = model.config.video_rows, model.config.video_cols
    commit_mask = history_mask(rows, cols, params.history_mask_ratio)
    twins = prefilled_twins(model, prompt_ids, params, packcache, rebase, attention)
    generator = request_generator(params)
    knobs = SamplerKnobs.from_params([params], model.config.vocab_size - LUMOS_TOKENS.visual_base)
    frames = []
    for frame_index in range(num_frames):
        frame = denoise_frame(twins, knobs, generator, frame_index, commit_mask, attention)
        for session in twins.all():
            session.commit(torch.tensor(frame.token_ids), commit_mask, attention)
        frames.append(frame)
    uncond_ids = None if twins.uncond is None else tuple(unconditional_prompt(prompt_ids))
    return ARDFResult(tuple(prompt_ids), uncond_ids, tuple(frames))


def prefilled_twins(
    model: ReferenceVideoModel,
    prompt_ids: Sequence[int],
    params: ARDFSamplingParams,
    packcache: PackCacheConfig | None,
    rebase: RebaseMode,
    attention: FrameAttention,
) -> Twins:
    """Both twins with their prompts cached: text, then the conditioning frames masked by
    ``params.condition_mask_ratio`` (0: whole, as Lumos-1)."""
    rows, cols = model.config.video_rows, model.config.video_cols
    condition_mask = history_mask(rows, cols, params.condition_mask_ratio)
    twins = start_twins(model, prompt_ids, params, packcache, rebase)
    for session, prompt in twins.with_prompts(prompt_ids):
        session.prefill_prompt(prompt, condition_mask, attention)
    return twins


def start_twins(
    model: ReferenceVideoModel,
    prompt_ids: Sequence[int],
    params: ARDFSamplingParams,
    packcache: PackCacheConfig | None,
    rebase: RebaseMode,
) -> Twins:
    def session(prompt: Sequence[int]) -> ARDFSession:
        layout = twin_layout(model, prompt)
        policy = NoEviction() if packcache is None else PackCachePolicy(packcache)
        return ARDFSession(model, layout, policy, rebase)

    uncond = None if params.cfg_scale == 1 else session(unconditional_prompt(prompt_ids))
    return Twins(session(prompt_ids), uncond)


def twin_layout(model: ReferenceVideoModel, prompt: Sequence[int]) -> FrameLayout:
    prompt = list(prompt)
    rows, cols = model.config.video_rows, model.config.video_cols
    return FrameLayout(find_frame_start(prompt), len(prompt), rows, cols)


def denoise_frame(
    twins: Twins,
    knobs: SamplerKnobs,
    generator: torch.Generator,
    frame_index: int,
    commit_mask: torch.Tensor,
    attention: FrameAttention,
) -> FrameRecord:
    """Fill one canvas in ``knobs.steps_per_frame`` steps (one request; ``frame_index``: frames
    it generated before). Returns its record, committed_ids included (the commit itself is the
    caller's). commit_mask: [F] bool."""
    layout = twins.cond.layout
    cells = visual_cells(layout.rows, layout.cols)
    canvas = frame_template(layout.rows, layout.cols)
    steps = []
    for step in range(int(knobs.steps_per_frame[0])):
        cond = twins.cond.canvas_logits(canvas, attention)[None]
        uncond = None if twins.uncond is None else twins.uncond.canvas_logits(canvas, attention)
        noise = draw_step_noise([generator], canvas.numel())
        update = denoise_step(
            cond,
            None if uncond is None else uncond[None],
            canvas[None],
            cells,
            CanvasProgress.at([step], [frame_index]),
            knobs,
            noise,
        )
        fixed = frozenset(update.newly_fixed[0].nonzero().flatten().tolist())
        steps.append(DenoiseRecord(canvas, fixed))
        canvas = update.canvas[0]
    return FrameRecord(
        token_ids=tuple(canvas.tolist()),
        committed_ids=tuple(apply_history_mask(canvas, commit_mask).tolist()),
        steps=tuple(steps),
        cond_attended=cached_indices(twins.cond),
        uncond_attended=None if twins.uncond is None else cached_indices(twins.uncond),
        dropped_frames=twins.cond.dropped_frames,
    )


def cached_indices(session: ARDFSession) -> torch.Tensor:
    """[M] int64 logical indices the session's cache holds now."""
    return session.cache.indices.clone()
