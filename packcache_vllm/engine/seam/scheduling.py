"""The seam's scheduler side: vLLM's V1 ``Scheduler`` with its private hooks turned into the
plugin's verbs, the KV block manager's internals, and what travels on the scheduler's outputs.

``SchedulerSeam`` is the base of ``PackCacheScheduler``. It overrides vLLM's private methods and
calls plain hooks that subclasses override instead:

- ``on_preempted(request)``: before vLLM preempts a request (``_preempt_request``);
- ``on_freed(request)``: before vLLM frees a finished request (``_free_request``);
- ``tokens_to_schedule(request, num_computed_tokens, num_new_tokens)``: vLLM's per-request cut
  of the tokens scheduled in this step (``_reserve_prefill_lookahead``);
- ``is_hidden_request(request_id)``: left out of vLLM's request counts (``make_stats``);
  ``counts_draft_tokens = False``: draft slots are not drafts (``make_spec_decoding_stats``).

Its verbs: ``block_ids_of``, ``num_held_blocks``, ``truncate_blocks`` (cut a request's block
list, return the freed blocks to the pool), ``pool_blocks``, ``keep_kv_of_emitted_tokens_only``,
``step_token_budget``, ``count_physical_tokens``.
"""

from __future__ import annotations

import copy
import functools

from vllm.v1.core.sched.scheduler import Scheduler


class SchedulerSeam(Scheduler):
    """vLLM's V1 scheduler, its private hooks exposed as ``on_preempted`` / ``on_freed`` /
    ``tokens_to_schedule``."""

    def on_preempted(self, request) -> None:
        """Called before vLLM preempts ``request`` (its blocks go, it recomputes from scratch)."""

    def on_freed(self, request) -> None:
        """Called before vLLM frees a finished ``request``."""

    def tokens_to_schedule(self, request, num_computed_tokens: int, num_new_tokens: int) -> int:
        """How many of ``num_new_tokens`` (vLLM's count) the request gets in this step."""
        return num_new_tokens

    counts_draft_tokens = True  # False: draft slots carry no drafts (frame-parallel canvases)

    def make_spec_decoding_stats(self, spec_decoding_stats, *args, **kwargs):
        if not self.counts_draft_tokens:
            return spec_decoding_stats  # nothing to count
        return super().make_spec_decoding_stats(spec_decoding_stats, *args, **kwargs)

    def make_stats(self, *args, **kwargs):
        """vLLM's stats with the requests ``is_hidden_request`` names left out of the counts."""
        stats = super().make_stats(*args, **kwargs)
        if stats is not None:
            leave_out_of_request_counts(stats, self, self.is_hidden_request)
        return stats

    def is_hidden_request(self, request_id: str) -> bool:
        """Whether an engine request is internal (not counted in vLLM's request stats)."""
        return False

    def _preempt_request(self, request, timestamp: float, *args, **kwargs) -> None:
        self.on_preempted(request)
        super()._preempt_request(request, timestamp, *args, **kwargs)

    def _free_request(self, request, *args, **kwargs):
        self.on_freed(request)
        return super()._free_request(request, *args, **kwargs)

    def _reserve_prefill_lookahead(self, request, num_computed_tokens, num_new_tokens):
        num_new_tokens = super()._reserve_prefill_lookahead(
            request, num_computed_tokens, num_new_tokens
        )
        return self.tokens_to_schedule(request, num_computed_tokens, num_new_tokens)

    # --- KV blocks (the single full-attention manager of a one-group model) ---------------
    @functools.cached_property
    def block_manager(self):
        return full_attention_manager(self.kv_cache_manager)

    def block_ids_of(self, request_id: str) -> list[int]:
        """The request's block list, in logical order (empty when it holds none)."""
        return [block.block_id for block in self.block_manager.req_to_blocks.get(request_id, ())]

    def num_held_blocks(self, request_id: str) -> int:
        return len(self.block_manager.req_to_blocks.get(request_id, ()))

    def truncate_blocks(self, request_id: str, num_kept: int) -> int:
        """Cut the request's block list to its first ``num_kept`` blocks; the rest return to the
        pool at once (usable by this step's allocations). Returns how many were freed."""
        blocks = self.block_manager.req_to_blocks[request_id]
        freed = blocks[num_kept:]
        del blocks[num_kept:]
        self.kv_cache_manager.block_pool.free_blocks(reversed(freed))
        return len(freed)

    def pool_blocks(self) -> int:
        """Blocks in this engine's KV pool (vLLM's null block included)."""
        return self.kv_cache_manager.block_pool.num_gpu_blocks

    def keep_kv_of_emitted_tokens_only(self) -> None:
        """From now on a request keeps the KV of a step's draft tokens only for the tokens the
        step emitted (vLLM rolls the rest back: ``num_sampled_tokens_per_step = 0``)."""
        self.num_sampled_tokens_per_step = 0

    def step_token_budget(self) -> int:
        """The most tokens one step schedules."""
        return min(self.max_num_scheduled_tokens, self.scheduler_config.max_num_batched_tokens)

    def count_physical_tokens(self, evicted_of, admission_blocks_of) -> None:
        count_physical_tokens(self.block_manager, evicted_of, admission_blocks_of)


# --- on the scheduler's outputs ---------------------------------------------------------------

PLANS_ATTRIBUTE = "packcache_plans"


def attach_plans(scheduler_output, plans: dict) -> None:
    """SchedulerOutput is a plain dataclass pickled to the workers: an extra attribute travels."""
    setattr(scheduler_output, PLANS_ATTRIBUTE, plans)


def plans_of(scheduler_output) -> dict:
    return getattr(scheduler_output, PLANS_ATTRIBUTE, None) or {}


FAILURES_ATTRIBUTE = "packcache_failures"


def with_failures(model_runner_output, failures: dict[str, str]):
    """The worker's step output carrying ``failures`` (request id -> cause) to the scheduler.

    ModelRunnerOutput is a plain dataclass pickled back to the engine core (or handed over in one
    process); an extra attribute travels, on a copy (vLLM returns a shared empty output when
    nothing was scheduled)."""
    from vllm.v1.outputs import ModelRunnerOutput

    if not isinstance(model_runner_output, ModelRunnerOutput):
        raise TypeError(
            f"PackCache reports request failures on a ModelRunnerOutput, the runner returned "
            f"{type(model_runner_output).__name__} (async scheduling must be off)"
        )
    output = copy.copy(model_runner_output)
    setattr(output, FAILURES_ATTRIBUTE, failures)
    return output


def failures_of(model_runner_output) -> dict[str, str]:
    return getattr(model_runner_output, FAILURES_ATTRIBUTE, None) or {}


def add_error_outputs(outputs: dict, requests) -> None:
    """Tell each finished ``requests``' client that it ended with an error: one
    ``EngineCoreOutput`` with its finish reason (vLLM's ``FinishReason.ERROR`` for
    ``RequestStatus.FINISHED_ERROR``; the OpenAI server answers it with HTTP 500), added to
    ``outputs`` (client index -> EngineCoreOutputs, what ``Scheduler.update_from_output``
    returns)."""
    from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs

    for request in requests:
        error = EngineCoreOutput(
            request_id=request.request_id,
            new_token_ids=[],
            finish_reason=request.get_finished_reason(),
            events=request.take_events(),
            trace_headers=request.trace_headers,
        )
        outputs.setdefault(request.client_index, EngineCoreOutputs(outputs=[])).outputs.append(
            error
        )


def leave_out_of_request_counts(stats, scheduler, is_hidden) -> None:
    """Subtract the requests for which ``is_hidden(request_id)`` from the request counts of
    ``stats`` (a ``SchedulerStats``, what ``vllm:num_requests_running`` / ``_waiting`` report), as
    vLLM's ``Scheduler.make_stats`` counts them: running; waiting (the waiting and KV-holding
    queues) less deferred; deferred (a subset of the waiting ones)."""
    waiting = [
        r for queue in (scheduler.waiting, scheduler.kv_holding_waiting) for r in queue
        if is_hidden(r.request_id)
    ]  # fmt: skip
    deferred = sum(r in scheduler.deferred_waiting for r in waiting)
    stats.num_running_reqs -= sum(is_hidden(r.request_id) for r in scheduler.running)
    stats.num_waiting_reqs -= len(waiting) - deferred
    stats.num_skipped_waiting_reqs -= deferred


def full_attention_manager(kv_cache_manager):
    """The single full-attention block manager of a one-group model (Lumos-1)."""
    managers = kv_cache_manager.coordinator.single_type_managers
    if len(managers) != 1:
        raise ValueError(
            f"PackCache supports models with one KV cache group, this one has {len(managers)}"
        )
    return managers[0]


def count_physical_tokens(manager, evicted_of, admission_blocks_of) -> None:
    """Make block allocation count physical tokens (logical - E) for every request, and make
    admission demand a request's whole bounded footprint.

    vLLM sizes a request's block list as cdiv(logical tokens, block_size); after compaction the
    request needs only cdiv(logical - E, block_size). Wraps the manager instance's two sizing
    methods (single_type_kv_cache_manager.py: get_num_blocks_to_allocate, allocate_new_blocks).
    ``get_num_blocks_to_allocate`` is only a check against the free pool, so for a request not
    yet holding blocks it reports ``admission_blocks_of(request_id)`` when larger: the request
    is admitted only when it, and every running request, can grow to its bound.
    """
    if getattr(manager, "_packcache_counts_physical", False):
        return
    get_num_blocks = manager.get_num_blocks_to_allocate
    allocate_new_blocks = manager.allocate_new_blocks

    def get_num_blocks_to_allocate(
        request_id,
        num_tokens,
        new_computed_blocks,
        total_computed_tokens,
        num_local_computed_tokens,
        num_tokens_main_model,
        *args,
        **kwargs,
    ):
        e = evicted_of(request_id)
        needed = get_num_blocks(
            request_id,
            num_tokens - e,
            new_computed_blocks,
            total_computed_tokens - e,
            num_local_computed_tokens - e if num_local_computed_tokens >= e else 0,
            num_tokens_main_model - e,
            *args,
            **kwargs,
        )
        if manager.req_to_blocks.get(request_id):
            return needed  # already admitted: its growth was reserved then
        return max(needed, admission_blocks_of(request_id))

    def allocate_physical_blocks(request_id, num_tokens, num_tokens_main_model):
        e = evicted_of(request_id)
        return allocate_new_blocks(request_id, num_tokens - e, num_tokens_main_model - e)

    manager.get_num_blocks_to_allocate = get_num_blocks_to_allocate
    manager.allocate_new_blocks = allocate_physical_blocks
    manager._packcache_counts_physical = True
