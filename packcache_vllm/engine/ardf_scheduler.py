"""ARDFScheduler: the PackCache scheduler for Lumos-1's frame-parallel (AR-DF) generation.

vLLM's V1 scheduler already rolls back draft tokens it did not get back: with
``num_sampled_tokens_per_step = 0``, a request scheduled with F draft tokens that emits nothing
has ``num_computed_tokens`` rolled back by F (its KV is discarded), and one that emits F tokens
keeps them. So one frame is S + 1 steps of the same F-token *canvas*, carried as F ``<mask>``
placeholders in ``request.spec_token_ids``:

* S denoising steps: the runner forwards the canvas, fixes some cells, emits nothing;
* one commit step: the runner forwards the finished frame's history-masked copy and emits the
  frame's F tokens, so the scheduler keeps that KV. The next ``schedule()`` then finds a frame
  completed and PackCache compacts the request (``PackCacheScheduler.compact_completed_frames``).

Which of the two a step is, and what the canvas holds, is the runner's business
(``ardf_runner``). Here:

* a canvas is scheduled whole or not at all (``tokens_to_schedule``: vLLM's per-request cut of
  ``num_new_tokens``, called for running and waiting requests alike; ``seam.scheduling``);
* a prompt (or a recomputation after preemption) is prefilled in segments the runner can give
  one attention mask each: the text (causal), then one frame at a time (bidirectional);
* vLLM's speculative-decoding statistics, which assume a drafter, are not collected;
* a request with classifier-free guidance gets its unconditional twin (``twins``): added with
  it, counted in its admission, its canvas scheduled in the same step (the pair's 2F tokens fit
  the step's budget or neither is scheduled), finished and aborted with it, and kept out of the
  engine's outputs and of vLLM's request counts (``make_stats``).

A request whose twin cannot be made, or whose canvas cannot be paired, fails alone (with its twin,
if it has one), as a failure of any part of a pair's PackCache work fails the pair
(``PackCacheScheduler.fail_requests``).
"""

from __future__ import annotations

from vllm.v1.request import RequestStatus

from packcache_vllm.core.layout import LUMOS_TOKENS, tokens_per_frame, unconditional_prompt
from packcache_vllm.engine import faults, twins
from packcache_vllm.engine.ardf_requests import ardf_params_of
from packcache_vllm.engine.scheduler import PackCacheScheduler
from packcache_vllm.engine.seam.process import vllm_logger

logger = vllm_logger(__name__)


class ARDFScheduler(PackCacheScheduler):
    counts_draft_tokens = False  # canvases ride the draft slots: nothing to count

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.keep_kv_of_emitted_tokens_only()
        self.tokens_per_frame = tokens_per_frame(self.frame_rows, self.frame_cols)
        self.twin_of: dict[str, str] = {}  # conditioned request id -> its twin's id
        self.step_tokens = 0  # tokens handed out so far in the current schedule()
        self.step_canvases: set[str] = set()  # requests given a canvas in it

    # --- requests and their twins -----------------------------------------------------------
    def add_request(self, request) -> None:
        super().add_request(request)
        if twins.is_twin(request.request_id) or request.request_id not in self.requests:
            return  # a twin, or a request refused on arrival (``refuse_if_never_fits``)
        try:
            self.add_twin(request)
        except Exception as err:
            logger.exception("packcache: no twin for request %s", request.request_id)
            self.fail_requests({request.request_id: faults.failure_cause(err)})

    def add_twin(self, request) -> None:
        """The request's unconditional twin, when it asks for guidance."""
        if ardf_params_of(request.sampling_params).cfg_scale != 1:
            faults.inject("twin", request.request_id, request.sampling_params)
            twin = twins.make_twin(request, unconditional_prompt(request.prompt_token_ids))
            self.twin_of[request.request_id] = twin.request_id
            super().add_request(twin)

    def fail_requests(self, failures: dict[str, str]) -> None:
        """A failed twin fails its conditioned request (and so itself, ``finish_requests``)."""
        super().fail_requests({twins.conditioned_id(r): cause for r, cause in failures.items()})

    def partner_of(self, request_id: str) -> str | None:
        """The other member of the request's guidance pair (None without guidance)."""
        if twins.is_twin(request_id):
            return twins.conditioned_id(request_id)
        return self.twin_of.get(request_id)

    def finish_requests(self, request_ids, finished_status):
        """Finishing (aborting) a request finishes its twin; twins are not reported back."""
        if request_ids is not None:
            ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
            request_ids = [*ids, *(self.twin_of[r] for r in ids if r in self.twin_of)]
        finished = super().finish_requests(request_ids, finished_status)
        self.finish_orphaned_twins()
        return [r for r in finished if not twins.is_twin(r.request_id)]

    def update_from_output(self, scheduler_output, model_runner_output):
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        self.finish_orphaned_twins()
        for engine_outputs in outputs.values():
            hide_twins(engine_outputs)
        return outputs

    def finish_orphaned_twins(self) -> None:
        """Twins whose conditioned request finished on its own (a stop) end with it."""
        gone = [cond for cond in self.twin_of if cond not in self.requests]
        orphans = [self.twin_of[c] for c in gone if self.twin_of[c] in self.requests]
        if orphans:
            super().finish_requests(orphans, RequestStatus.FINISHED_ABORTED)
        for cond in gone:
            del self.twin_of[cond]

    def admission_blocks_of(self, request_id: str) -> int:
        """A conditioned request is admitted only if its twin (not admitted yet) fits too."""
        blocks = super().admission_blocks_of(request_id)
        twin = self.twin_of.get(request_id)
        if twin in self.requests and not self.num_held_blocks(twin):
            blocks += self.bound_blocks(self.requests[twin])
        return blocks

    # --- the step ---------------------------------------------------------------------------
    def schedule(self, *args, **kwargs):
        self.step_tokens, self.step_canvases = 0, set()
        self.running[:] = pairs_adjacent(self.running, self.twin_of)
        ready = {r.request_id for r in self.running if self.canvas_ready(r)}
        failures = {}
        for request in self.running:
            if request.request_id not in ready:
                continue
            try:
                request.spec_token_ids = self.canvas_placeholders(request, ready)
            except Exception as err:
                logger.exception("packcache: pairing failed for request %s", request.request_id)
                failures[request.request_id] = faults.failure_cause(err)
        if failures:  # before vLLM schedules: the pair is not scheduled
            self.fail_requests(failures)
        output = super().schedule(*args, **kwargs)
        self.check_whole_canvases(output)
        self.check_paired_canvases(output)
        return output

    def canvas_placeholders(self, request, ready: set[str]) -> list[int]:
        """A canvas for a ready request whose partner (if any) is ready too, else nothing."""
        faults.inject("pairing", request.request_id, request.sampling_params)
        partner = self.partner_of(request.request_id)
        paired = partner is None or partner in ready
        return [LUMOS_TOKENS.mask] * self.tokens_per_frame if paired else []

    @staticmethod
    def canvas_ready(request) -> bool:
        """Running with every known token's KV cached: its next step is a canvas."""
        return (
            request.status == RequestStatus.RUNNING
            and request.num_computed_tokens >= request.num_tokens
        )

    def check_paired_canvases(self, output) -> None:
        scheduled = output.scheduled_spec_decode_tokens
        for cond, twin in self.twin_of.items():
            if (cond in scheduled) != (twin in scheduled):
                raise RuntimeError(
                    f"request {cond} and its unconditional twin were not scheduled together "
                    f"(canvas scheduled: {cond in scheduled} / {twin in scheduled})"
                )

    def check_whole_canvases(self, output) -> None:
        for request_id, drafts in output.scheduled_spec_decode_tokens.items():
            scheduled = output.num_scheduled_tokens[request_id]
            if len(drafts) != self.tokens_per_frame or scheduled != self.tokens_per_frame:
                raise RuntimeError(
                    f"request {request_id}: a canvas of {self.tokens_per_frame} tokens was "
                    f"scheduled with {scheduled} tokens and {len(drafts)} placeholders"
                )

    # --- vLLM's per-request cut of the tokens scheduled this step ----------------------------
    def tokens_to_schedule(self, request, num_computed_tokens: int, num_new_tokens: int) -> int:
        if request.spec_token_ids:
            num_new_tokens = self.canvas_tokens(request, num_new_tokens)
        else:
            num_new_tokens = self.prefill_segment(request, num_computed_tokens, num_new_tokens)
        self.step_tokens += num_new_tokens
        return num_new_tokens

    def canvas_tokens(self, request, num_new_tokens: int) -> int:
        """F or 0. A pair's first member takes its canvas only if both fit in what is left of
        the step's budget; the second follows the first."""
        per_frame = self.tokens_per_frame
        partner = self.partner_of(request.request_id)
        if partner in self.step_canvases:
            fits = num_new_tokens >= per_frame
        else:
            needed = per_frame if partner is None else 2 * per_frame
            fits = num_new_tokens >= per_frame and self.budget_left() >= needed
        if not fits:
            return 0
        self.step_canvases.add(request.request_id)
        return per_frame

    def budget_left(self) -> int:
        return self.step_token_budget() - self.step_tokens

    def prefill_segment(self, request, num_computed_tokens: int, num_new_tokens: int) -> int:
        """Tokens of a prefill step: at most to the end of the text, or exactly one frame."""
        frame_start = self.kv_of(request).layout.frame_start
        if num_computed_tokens < frame_start:
            return min(num_new_tokens, frame_start - num_computed_tokens)
        if (num_computed_tokens - frame_start) % self.tokens_per_frame:
            raise RuntimeError(
                f"request {request.request_id}: {num_computed_tokens} tokens computed, not on a "
                f"frame boundary (frames start at {frame_start}, {self.tokens_per_frame} each)"
            )
        return self.tokens_per_frame if num_new_tokens >= self.tokens_per_frame else 0

    def is_hidden_request(self, request_id: str) -> bool:
        """Twins are left out of vLLM's request counts: a guided request is one request to its
        client (its twin's blocks stay in the KV cache usage, where they are)."""
        return twins.is_twin(request_id)


def pairs_adjacent(running: list, twin_of: dict[str, str]) -> list:
    """``running`` with each twin moved right after its conditioned request (others keep their
    order), so a pair is considered for scheduling back to back."""
    twin_ids = set(twin_of.values())
    by_id = {r.request_id: r for r in running}
    ordered = []
    for request in running:
        if request.request_id in twin_ids:
            if twins.conditioned_id(request.request_id) not in by_id:
                ordered.append(request)  # its conditioned request is not running (yet)
            continue
        ordered.append(request)
        twin = by_id.get(twin_of.get(request.request_id))
        if twin is not None:
            ordered.append(twin)
    return ordered


def hide_twins(engine_outputs) -> None:
    """Drop the twins' entries from one client's EngineCoreOutputs (they are internal)."""
    engine_outputs.outputs = [o for o in engine_outputs.outputs if not twins.is_twin(o.request_id)]
    if engine_outputs.finished_requests:
        engine_outputs.finished_requests = {
            r for r in engine_outputs.finished_requests if not twins.is_twin(r)
        }
