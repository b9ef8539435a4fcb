"""The V1 model runner with PackCache: plans executed before the forward, physical slots.

``PackCacheRunnerMixin`` is device-generic; ``PackCacheCPUModelRunner`` puts it on vLLM's V1 CPU
runner (CPU_ATTN) and ``gpu_runner.PackCacheGPUModelRunner`` on the V1 GPU runner.

Per step, before vLLM's own ``execute_model``:
1. each ``WorkerPlan`` in the SchedulerOutput is executed on every layer's paged KV tensor:
   frames that complete under a key-reading selector are first sorted in place into the order
   their keys give (in the layer ``core.select.key_layer`` names), then the kept tokens are
   moved to their packed slots (through the access the backend's learned page order calls
   for: ``kv_access``), the anchors' keys are re-rotated to the request's time rebase, and the
   request's block-table row is replaced by the packed block list;
2. after vLLM prepares the inputs, slot mapping and attention ``seq_lens`` are made physical
   (logical - E). Positions stay logical: the model computes MM-RoPE from the logical index, and
   the rebase lives in the anchors' keys (equivalent, since RoPE is relative).

Anchor keys are re-rotated from a pristine copy taken before their first rotation, so repeated
rebases never accumulate rounding error (no drift in bf16).

A request whose PackCache work raises here (its position codes, sorts, moves, re-rotation) fails
alone: the step runs on for the whole batch, and the step's output names the request
(``seam.scheduling.with_failures``) for the scheduler to finish it with an error.

vLLM's internals are reached only through ``seam.running``'s hooks and verbs (``runner_seam``).
"""

from __future__ import annotations

import torch
from vllm.v1.worker.cpu_model_runner import CPUModelRunner

from packcache_vllm.core.policies import spec_of
from packcache_vllm.core.select import key_layer
from packcache_vllm.engine import faults
from packcache_vllm.engine.kv_access import KVAccess, kv_access_for
from packcache_vllm.engine.kv_layout import PageLayout, learn_page_layout
from packcache_vllm.engine.plans import AttentionContext, FramesToOrder, WorkerPlan, global_slots
from packcache_vllm.engine.query_log import QueryLog, attention_mass
from packcache_vllm.engine.request_policy import engine_policy
from packcache_vllm.engine.seam.process import vllm_logger
from packcache_vllm.engine.seam.running import runner_seam
from packcache_vllm.engine.seam.scheduling import plans_of, with_failures
from packcache_vllm.model.config_hook import frame_grid

logger = vllm_logger(__name__)


@runner_seam
class PackCacheRunnerMixin:
    """Mixed in right before a vLLM V1 ``GPUModelRunner`` class (CPU or GPU); ``runner_seam``
    gives it the runner's verbs and calls its hooks from vLLM's private methods."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.evicted_tokens: dict[str, int] = {}
        self.dropped_frames: dict[str, int] = {}
        self.pristine_anchor_keys: dict[str, list[torch.Tensor]] = {}
        self.page_layout: PageLayout | None = None
        self.kv_access: KVAccess | None = None
        self.failed_requests: dict[str, str] = {}  # this step's, request id -> cause
        self.query_log: QueryLog | None = None  # a selector that reads attention: queries
        self.step_queries: torch.Tensor | None = None  # this step's last layer's [N, H, hd]

    def initialize_kv_cache(self, kv_cache_config, *args, **kwargs) -> None:
        super().initialize_kv_cache(kv_cache_config, *args, **kwargs)
        write, backend = self.kv_write_path(kv_cache_config)
        cache = self.layer_caches()[0]
        self.page_layout = learn_page_layout(
            write,
            num_kv_heads=cache.shape[1],
            block_size=cache.shape[2],
            head_size=cache.shape[3] // 2,
            dtype=cache.dtype,
            device=cache.device,
        )
        self.kv_access = kv_access_for(self.page_layout, cache.device, backend)
        config = engine_policy(self.vllm_config)
        if config is not None and config.make_selector().needs_attention:
            self.record_queries(config)

    def record_queries(self, config) -> None:
        """Have the model hand over its last layer's queries each step (``query_log``)."""
        model = self.get_model()
        if not hasattr(model, "record_last_layer_queries"):
            raise ValueError(
                f"{spec_of(config).name}: the model {type(model).__name__} does not expose its "
                "last layer's queries (record_last_layer_queries)"
            )
        if self.device.type == "cuda" and not self.model_config.enforce_eager:
            raise ValueError(
                f"{spec_of(config).name} records the last layer's queries in Python, which a "
                "captured CUDA graph skips: run with --enforce-eager"
            )
        self.query_log = QueryLog()
        model.record_last_layer_queries(self.keep_step_queries)

    def keep_step_queries(self, queries: torch.Tensor) -> None:
        self.step_queries = queries

    # --- before the forward -----------------------------------------------------------------
    def execute_model(self, scheduler_output, *args, **kwargs):
        self.forget_finished(scheduler_output)
        for request_id, plan in plans_of(scheduler_output).items():
            self.apply_plan(request_id, plan)
        self.step_queries = None  # set again by this step's forward, if it records queries
        output = super().execute_model(scheduler_output, *args, **kwargs)
        if self.step_queries is not None:
            self.file_step_queries(scheduler_output)
        return self.report_failures(output)

    def file_step_queries(self, scheduler_output) -> None:
        """File this step's recorded queries under their requests: rows in batch order, each
        request's at the logical indices its step computed (a prompt's are not kept)."""
        queries, self.step_queries = self.step_queries, None
        counts = scheduler_output.num_scheduled_tokens
        first_row = 0
        for row, request_id in enumerate(self.batch_request_ids()):
            count, start = counts[request_id], self.computed_tokens_of_row(row)
            skip = max(0, min(count, self.num_prompt_tokens_of(request_id) - start))
            if skip < count:
                rows = queries[first_row + skip : first_row + count]
                self.query_log.record(request_id, start + skip, rows)
            first_row += count

    def sample_tokens(self, *args, **kwargs):
        return self.report_failures(super().sample_tokens(*args, **kwargs))

    # --- failure isolation ------------------------------------------------------------------
    def fail_request(self, request_id: str, err: Exception) -> None:
        """Record that the plugin's work for one request raised: the request stays in this step's
        batch (its forward reads and writes only its own blocks, whatever they hold) and the
        scheduler finishes it with an error when the step's output reaches it."""
        logger.exception("packcache: request %s failed on the worker", request_id, exc_info=err)
        self.failed_requests[request_id] = faults.failure_cause(err)

    def report_failures(self, output):
        """The step's output (None: it comes from ``sample_tokens``) with the failures so far."""
        if output is None or not self.failed_requests:
            return output
        failures, self.failed_requests = self.failed_requests, {}
        return with_failures(output, failures)

    def before_positions(self, request_id: str, sampling_params) -> None:
        faults.inject("positions", request_id, sampling_params)

    def on_positions_failed(self, request_id: str, err: Exception) -> None:
        """The request's position codes failed: it gets plain positions (``RunnerSeam``), so the
        batched forward runs, and fails."""
        self.fail_request(request_id, err)

    def forget_finished(self, scheduler_output) -> None:
        resumed = scheduler_output.scheduled_cached_reqs.resumed_req_ids
        for request_id in (*scheduler_output.finished_req_ids, *resumed):
            self.evicted_tokens.pop(request_id, None)
            self.dropped_frames.pop(request_id, None)
            self.pristine_anchor_keys.pop(request_id, None)
            if self.query_log is not None:
                self.query_log.forget(request_id)

    def apply_plan(self, request_id: str, plan: WorkerPlan) -> None:
        """Rewrite the request's KV, then use its packed block list. If the rewrite raises, the
        request fails alone: everything it touched lies in the request's own blocks, and the
        packed list is used anyway, so that this step's writes for it stay in blocks it keeps
        (the scheduler freed the rest and may have handed them on in this step)."""
        try:
            self.rewrite_kv(request_id, plan)
        except Exception as err:
            self.fail_request(request_id, err)
        self.use_packed_blocks(request_id, plan)
        if plan.keep_queries_from is not None:
            self.query_log.drop_before(request_id, plan.keep_queries_from)

    def rewrite_kv(self, request_id: str, plan: WorkerPlan) -> None:
        device = self.kv_access.device
        sampling_params = self.sampling_params_of(request_id)
        if plan.frames_to_order is not None:
            faults.inject("sorts", request_id, sampling_params)
            self.order_frames_by_keys(request_id, plan.frames_to_order, plan.t_stride)
        faults.inject("moves", request_id, sampling_params)
        self.kv_access.move(
            self.layer_caches(),
            torch.tensor(plan.src_slots, dtype=torch.int64, device=device),
            torch.tensor(plan.dst_slots, dtype=torch.int64, device=device),
        )
        if plan.dropped_frames != self.dropped_frames.get(request_id, 0):
            faults.inject("rerotation", request_id, sampling_params)
            self.rebase_anchor_keys(request_id, plan)

    def use_packed_blocks(self, request_id: str, plan: WorkerPlan) -> None:
        self.set_block_row(request_id, list(plan.block_ids))
        self.evicted_tokens[request_id] = plan.evicted_tokens
        self.dropped_frames[request_id] = plan.dropped_frames

    def order_frames_by_keys(self, request_id: str, frames: FramesToOrder, t_stride: int) -> None:
        """Sort each frame's tokens within its own slots into the selector's priority order,
        computed from the frame's cached keys in layer ``key_layer`` (all layers move alike).
        A selector that compares a frame with the next one also gets the next frame's keys;
        the frame's own are rotated forward by ``t_stride`` along t, so both sit at one time
        (cached keys are rotated at their positions, a frame ``t_stride`` after the one before).
        A selector that reads attention gets, instead, the attention the next frame's queries
        paid to the frame (``frame_attention``)."""
        selector = frames.selector
        rows, cols = frame_grid(self.model_config.hf_config)
        device = self.kv_access.device
        caches = self.layer_caches()
        keys_cache = caches[key_layer(len(caches))]
        if frames.attention is not None:
            attention = self.frame_attention(request_id, frames.attention, keys_cache)
        sources, targets = [], []
        for index, frame_slots in enumerate(frames.slots):
            slots = torch.tensor(frame_slots, dtype=torch.int64, device=device)  # [F]
            if frames.attention is not None:
                order = selector.order(rows, cols, attention=attention[index]).to(device)
                sources.append(slots[order])
                targets.append(slots)
                continue
            keys = self.kv_access.read_keys(keys_cache, slots)  # [F, KV, hd]
            newer_keys = None
            if frames.newer_slots is not None:
                newer = torch.tensor(frames.newer_slots[index], dtype=torch.int64, device=device)
                newer_keys = self.kv_access.read_keys(keys_cache, newer)  # [F, KV, hd]
                keys = self.get_model().rope.rotate_time(keys, t_stride)
            order = selector.order(rows, cols, keys, newer_keys).to(device)  # [F]
            sources.append(slots[order])
            targets.append(slots)
        self.kv_access.move(caches, torch.cat(sources), torch.cat(targets))

    def frame_attention(
        self, request_id: str, context: AttentionContext, keys_cache: torch.Tensor
    ) -> list[torch.Tensor]:
        """Per frame, [F] float32: the attention its newer frame's F queries paid to each of its
        tokens, recomputed from the recorded queries and the cached keys (the softmax over every
        key the query saw, the newer frame's own causally), summed over the queries, averaged
        over heads."""
        device = self.kv_access.device
        context_slots = torch.tensor(context.context_slots, dtype=torch.int64, device=device)
        keys = self.kv_access.read_keys(keys_cache, context_slots).float()  # [P, KV, hd]
        attention = []
        for positions, (logical, physical) in zip(
            context.frame_positions, context.newer_starts, strict=True
        ):
            queries = self.query_log.take(request_id, logical, len(positions))  # [F, H, hd]
            columns = torch.tensor(positions, dtype=torch.int64, device=device)
            attention.append(attention_mass(queries, keys, physical, columns))  # [F]
        return attention

    def rebase_anchor_keys(self, request_id: str, plan: WorkerPlan) -> None:
        """Write the anchors' keys rotated by +t_stride * dropped_frames along t."""
        anchors = global_slots(plan.block_ids, self.page_layout.block_size, range(plan.anchor_len))
        slots = torch.tensor(anchors, dtype=torch.int64, device=self.kv_access.device)
        pristine = self.pristine_anchor_keys.get(request_id)
        if pristine is None:
            pristine = [self.kv_access.read_keys(cache, slots) for cache in self.layer_caches()]
            self.pristine_anchor_keys[request_id] = pristine
        rope = self.get_model().rope
        shift = plan.t_stride * plan.dropped_frames
        for cache, keys in zip(self.layer_caches(), pristine, strict=True):
            self.kv_access.write_keys(cache, slots, rope.rotate_time(keys, shift))

    # --- physical slots and lengths ---------------------------------------------------------
    def after_inputs(self, scheduler_output) -> None:
        if self.evicted_tokens:
            self.make_physical(scheduler_output.total_num_scheduled_tokens, self.evicted_tokens)


class PackCacheCPUModelRunner(PackCacheRunnerMixin, CPUModelRunner):
    """vLLM's V1 CPU runner (CPU_ATTN, learned page order) with PackCache."""
