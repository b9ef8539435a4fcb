"""The V1 model runner for frame-parallel (AR-DF) generation, on top of PackCache's runner: the
device-generic ``ARDFRunnerMixin``, on vLLM's V1 CPU runner here and on the V1 GPU runner in
``ardf_gpu_runner``.

Per step, each scheduled request is one of (``RowKind``):

* TEXT: a chunk of the prompt's text, causal, as vLLM prefills it;
* FRAME_PREFILL: one whole frame of the prompt (a conditioning frame), bidirectional inside the
  frame, cached whole as Lumos-1 does (or masked by ``ardf_condition_mask_ratio``);
* DENOISE: the request's canvas (``ardf_state.CanvasState``), bidirectional inside the frame,
  full attention to the cached history; its KV is discarded by the scheduler (nothing emitted);
* COMMIT: the finished frame's history-masked copy, bidirectional; the frame's F tokens are
  emitted, so the scheduler keeps this KV (``ardf_scheduler``).

An unconditional twin (``twins``) has its own state for its prompt (frame start, commit mask)
but forwards its conditioned request's canvases and commits, scheduled in the same step; the
two rows' logits are blended (CFG) in the conditioned request's denoising step.

Hooks (``seam.running.RunnerSeam``'s, around vLLM 0.32 V1 runner internals; patches/README.md):

1. ``before_inputs`` (before vLLM's ``_prepare_inputs``): write each row's input ids into
   ``token_ids_cpu`` over vLLM's placeholders, and fill the per-request causal flags;
2. attention-metadata builders (``compat.wrap_attention_builders``): the flags
   (``causal_flags``, on the runner's device) replace vLLM's ``causal=True``, so CPU_ATTN
   (``dynamic_causal``) or, on CUDA, TRITON_ATTN (``per_seq_causal_ptr``) runs the canvas rows
   non-causally;
3. ``before_bookkeeping`` / ``after_bookkeeping`` (around vLLM's ``_bookkeeping_sync``): vLLM's
   own sampled token is discarded for every row; the DENOISE rows'
   hidden states go through the visual rows of the LM head and one batched
   ``core.maskgit.denoise_step``; COMMIT rows emit their frame.

Positions are vLLM's: canvas token j of a request at logical length L sits at index L + j, and
the model computes Lumos-1's MM-RoPE from that index and the request's frame start.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from packcache_vllm.core.layout import LUMOS_TOKENS, find_frame_start
from packcache_vllm.core.maskgit import (
    CanvasProgress,
    SamplerKnobs,
    apply_history_mask,
    denoise_step,
    draw_step_noise,
    frame_template,
    visual_cells,
)
from packcache_vllm.engine import twins
from packcache_vllm.engine.ardf_requests import ardf_params_of
from packcache_vllm.engine.ardf_state import CanvasState, FinishedTraces
from packcache_vllm.engine.causal_flags import CausalFlags
from packcache_vllm.engine.runner import PackCacheCPUModelRunner
from packcache_vllm.model.config_hook import frame_grid


class RowKind(enum.Enum):
    TEXT = "text"
    FRAME_PREFILL = "frame-prefill"
    DENOISE = "denoise"
    COMMIT = "commit"

    @property
    def causal(self) -> bool:
        return self is RowKind.TEXT


@dataclass(frozen=True)
class StepRow:
    """One scheduled request of this step: its batch row, kind, and its tokens' range
    [start, end) in the step's flat token order."""

    row: int
    request_id: str
    kind: RowKind
    start: int
    end: int


class ARDFRunnerMixin:
    """Mixed in before ``PackCacheRunnerMixin`` on a vLLM V1 runner."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.frame_rows, self.frame_cols = frame_grid(self.model_config.hf_config)
        self.frame_cells = visual_cells(self.frame_rows, self.frame_cols)  # [F] bool
        self.canvas_template = frame_template(self.frame_rows, self.frame_cols)  # [F] int64
        self.visual_vocab_size = self.model_config.get_vocab_size() - LUMOS_TOKENS.visual_base
        self.canvases: dict[str, CanvasState] = {}
        self.finished_traces = FinishedTraces()
        self.step_rows: tuple[StepRow, ...] = ()
        self.causal_flags = CausalFlags(self.max_num_reqs, self.device)

    def initialize_kv_cache(self, *args, **kwargs) -> None:
        super().initialize_kv_cache(*args, **kwargs)
        self.use_causal_rows(self.causal_rows)

    def causal_rows(self, num_reqs: int) -> torch.Tensor | None:
        return self.causal_flags.rows(num_reqs)  # [num_reqs] int32 on the device, None: causal

    # --- the step ---------------------------------------------------------------------------
    def execute_model(self, scheduler_output, *args, **kwargs):
        for request_id in scheduler_output.finished_req_ids:
            state = self.canvases.pop(request_id, None)
            if state is not None and not twins.is_twin(request_id):
                self.finished_traces.add(request_id, state.trace)
        self.step_rows = ()
        self.causal_flags.clear()
        return super().execute_model(scheduler_output, *args, **kwargs)

    def before_inputs(self, scheduler_output, num_scheduled_tokens: np.ndarray) -> None:
        super().before_inputs(scheduler_output, num_scheduled_tokens)
        self.step_rows = self.plan_rows(scheduler_output, num_scheduled_tokens)
        for step_row in self.step_rows:
            self.write_row_input(step_row)
        self.causal_flags.set_rows([step_row.kind.causal for step_row in self.step_rows])

    def plan_rows(self, scheduler_output, num_scheduled_tokens: np.ndarray) -> tuple[StepRow, ...]:
        """num_scheduled_tokens: [num_reqs] tokens per batch row (vLLM's row order)."""
        rows, start = [], 0
        for row, request_id in enumerate(self.batch_request_ids()):
            end = start + int(num_scheduled_tokens[row])
            kind = self.row_kind(scheduler_output, row, request_id, end - start)
            rows.append(StepRow(row, request_id, kind, start, end))
            start = end
        return tuple(rows)

    def row_kind(self, scheduler_output, row: int, request_id: str, num_tokens: int) -> RowKind:
        state = self.canvas_of(request_id)
        if request_id in scheduler_output.scheduled_spec_decode_tokens:
            return RowKind.COMMIT if self.video_of(request_id).committing else RowKind.DENOISE
        computed = self.computed_tokens_of_row(row)
        if computed < state.frame_start:
            return RowKind.TEXT
        if num_tokens != self.canvas_template.numel():
            raise RuntimeError(
                f"request {request_id}: a frame prefill of {num_tokens} tokens at {computed} "
                f"(frames are {self.canvas_template.numel()} tokens)"
            )
        return RowKind.FRAME_PREFILL

    def canvas_of(self, request_id: str) -> CanvasState:
        state = self.canvases.get(request_id)
        if state is None:
            state = CanvasState.start(
                ardf_params_of(self.sampling_params_of(request_id)),
                find_frame_start(self.prompt_token_ids_of(request_id)),
                self.canvas_template,
                self.frame_rows,
                self.frame_cols,
            )
            self.canvases[request_id] = state
        return state

    def video_of(self, request_id: str) -> CanvasState:
        """The state whose canvas the request forwards: its own, or its conditioned one's."""
        video_id = twins.conditioned_id(request_id)
        if video_id not in self.canvases:
            raise RuntimeError(f"twin {request_id} scheduled without its request {video_id}")
        return self.canvases[video_id]

    def write_row_input(self, step_row: StepRow) -> None:
        """Put the row's input ids over vLLM's (placeholders for canvases, the prompt else)."""
        if step_row.kind is RowKind.TEXT:
            return
        state = self.canvases[step_row.request_id]
        row = step_row.row
        start = self.computed_tokens_of_row(row)
        if step_row.kind is RowKind.DENOISE:
            ids = self.video_of(step_row.request_id).canvas
        elif step_row.kind is RowKind.COMMIT:
            ids = self.video_of(step_row.request_id).commit_input()
        else:
            given = self.row_token_ids(row, start, start + step_row.end - step_row.start)
            ids = apply_history_mask(given, state.condition_mask)
        self.write_row_token_ids(row, start, ids)

    # --- after the forward ------------------------------------------------------------------
    def before_bookkeeping(self) -> None:
        super().before_bookkeeping()
        self.discard_sampled_tokens()  # vLLM's next-token sample is never used

    def after_bookkeeping(self, sampled_token_ids: list[list[int]], hidden_states) -> None:
        super().after_bookkeeping(sampled_token_ids, hidden_states)
        denoising = [r for r in self.step_rows if r.kind is RowKind.DENOISE]
        by_id = {r.request_id: r for r in denoising}
        guided, unguided = [], []
        for step_row in denoising:
            if not twins.is_twin(step_row.request_id):
                params = self.canvases[step_row.request_id].params
                (guided if params.cfg_scale != 1 else unguided).append(step_row)
        self.denoise(unguided, None, hidden_states)
        self.denoise(guided, [self.twin_row(r, by_id) for r in guided], hidden_states)
        committing = [r for r in self.step_rows if r.kind is RowKind.COMMIT]
        for step_row in committing:
            self.emit_frame(step_row, sampled_token_ids)
        for step_row in committing:
            if not twins.is_twin(step_row.request_id):
                self.canvases[step_row.request_id].next_frame(self.canvas_template)

    @staticmethod
    def twin_row(step_row: StepRow, by_id: dict[str, StepRow]) -> StepRow:
        twin = by_id.get(twins.twin_id(step_row.request_id))
        if twin is None:
            raise RuntimeError(f"request {step_row.request_id} denoises without its twin")
        return twin

    def visual_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [..., D] final-normed -> [..., V - visual_base] float32 visual logits."""
        weight = self.get_model().lm_head.weight
        visual = weight[
            LUMOS_TOKENS.visual_base : LUMOS_TOKENS.visual_base + self.visual_vocab_size
        ]
        return F.linear(hidden, visual).float()

    def denoise(
        self, rows: list[StepRow], twin_rows: list[StepRow] | None, hidden_states: torch.Tensor
    ) -> None:
        """One batched MaskGIT step for conditioned DENOISE rows; ``twin_rows``: their twins'
        rows, in the same order (None: no guidance). hidden_states: [N, D] of the step."""
        if not rows:
            return
        states = [self.canvases[r.request_id] for r in rows]
        cond = self.row_logits(rows, hidden_states)  # [B, F, V_visual]
        uncond = None if twin_rows is None else self.row_logits(twin_rows, hidden_states)
        knobs = SamplerKnobs.from_params([s.params for s in states], self.visual_vocab_size)
        noise = draw_step_noise([s.generator for s in states], self.canvas_template.numel())
        update = denoise_step(
            cond,
            uncond,
            torch.stack([s.canvas for s in states]),
            self.frame_cells,
            CanvasProgress.at([s.step for s in states], [s.frame for s in states]),
            knobs,
            noise,
        )
        for i, state in enumerate(states):
            fixed = frozenset(update.newly_fixed[i].nonzero().flatten().tolist())
            state.advance(update.canvas[i], fixed)

    def row_logits(self, rows: list[StepRow], hidden_states: torch.Tensor) -> torch.Tensor:
        """[B, F, V_visual] float32 visual logits of B canvas rows; hidden_states: [N, D]."""
        hidden = torch.stack([hidden_states[r.start : r.end] for r in rows])  # [B, F, D]
        return self.visual_logits(hidden).cpu()

    def emit_frame(self, step_row: StepRow, sampled_token_ids: list[list[int]]) -> None:
        """Emit the committed frame's F tokens as the row's sampled tokens."""
        ids = self.video_of(step_row.request_id).canvas.tolist()
        self.emit_tokens(step_row.row, step_row.request_id, ids, sampled_token_ids)

    def traced_request_ids(self) -> list[str]:
        """Engine-side ids of the requests whose traces this runner holds."""
        live = [r for r in self.canvases if not twins.is_twin(r)]
        return [*live, *self.finished_traces.traces]

    def trace_of(self, request_id: str):
        """The offsets fixed at every step of every frame of a request (a finished one is
        reported to the runner one step late, so it may still be among the live ones)."""
        state = self.canvases.get(request_id)
        if state is not None:
            return [frame for frame in state.trace if frame]
        return self.finished_traces.get(request_id)


class ARDFCPUModelRunner(ARDFRunnerMixin, PackCacheCPUModelRunner):
    """vLLM's V1 CPU runner with PackCache and frame-parallel generation."""
