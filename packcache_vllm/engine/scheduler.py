"""PackCacheScheduler: vLLM's scheduler plus frame-aware compaction of each request's KV blocks.

vLLM's logical view of a request never changes (token ids, num_computed_tokens, max_model_len are
about the whole video). Beside it, per request, we keep the physical view: which tokens the cache
slots hold (``core.plan.PhysicalState``), E = tokens evicted so far, and frames dropped so far.

At the start of every ``schedule()``, for each running request whose generated frames completed
since the last step, the policy's ``CompactionPlan`` is made, the request's block list is cut to
the packed length and the freed blocks go back to the pool *in this step* (so this step's
allocations can use them); the plan travels to the workers with the SchedulerOutput. Block
allocation counts physical tokens (logical - E), so a request never holds more than
ceil((anchors + W*F + F) / block_size) blocks.

A request whose PackCache work raises (planning here, or the worker's part, reported on the step's
output) fails alone: it is finished with ``RequestStatus.FINISHED_ERROR`` (its client gets vLLM's
error finish reason, an HTTP 500 from the OpenAI server), its blocks return to the pool, and the
engine keeps serving the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from vllm.utils.math_utils import cdiv
from vllm.v1.request import RequestStatus

from packcache_vllm.core.budget import PackCacheConfig, bound_tokens
from packcache_vllm.core.layout import FrameLayout
from packcache_vllm.core.plan import (
    CompactionPlan,
    PhysicalState,
    make_plan,
    num_new_complete_frames,
)
from packcache_vllm.core.policies import POLICY_NAMES
from packcache_vllm.core.select import Selector
from packcache_vllm.engine import faults, pool_fit, twins
from packcache_vllm.engine.plans import AttentionContext, FramesToOrder, WorkerPlan, global_slots
from packcache_vllm.engine.request_policy import request_policy, video_layout
from packcache_vllm.engine.seam.process import vllm_logger
from packcache_vllm.engine.seam.version import check_tested_vllm
from packcache_vllm.engine.seam.scheduling import (
    SchedulerSeam,
    add_error_outputs,
    attach_plans,
    failures_of,
)
from packcache_vllm.metrics import (
    REQUEST_CACHE,
    TWIN_CACHE,
    EngineCounters,
    EngineSnapshot,
    FinishedCaches,
    SnapshotPublisher,
    ensure_metrics_dir,
)
from packcache_vllm.model.config_hook import frame_grid
from packcache_vllm.settings import Settings

logger = vllm_logger(__name__)


def scheduler_policy(vllm_config) -> PackCacheConfig:
    """The engine's policy, when this vLLM is the tested one (checked again here: a scheduler
    class can be named by hand, bypassing ``--kv-policy``)."""
    check_tested_vllm("PackCacheScheduler")
    config = Settings.of(vllm_config).config
    if config is None:
        raise ValueError(
            "PackCacheScheduler needs a KV policy: start vLLM with --kv-policy "
            f"{'|'.join(POLICY_NAMES)}, or pass packcache_vllm.cli.engine_overrides(...) to LLM()"
        )
    return config


@dataclass
class RequestKV:
    """The physical side of one request (mutable: it changes at every compaction)."""

    layout: FrameLayout
    config: PackCacheConfig  # the engine's policy with this request's overrides
    state: PhysicalState
    evicted_tokens: int = 0
    peak_physical_tokens: int = 0  # the most its cache held before a compaction

    @property
    def eviction_layout(self) -> FrameLayout:
        """``layout`` with the policy's sink frames among the anchors (``layout`` itself when
        it has none): what the physical state and the plans count from."""
        return self.config.eviction_layout(self.layout)

    def peak_with(self, request) -> int:
        """The most tokens the cache has held, its current ones included."""
        return max(self.peak_physical_tokens, request.num_computed_tokens - self.evicted_tokens)


class PackCacheScheduler(SchedulerSeam):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.packcache: PackCacheConfig = scheduler_policy(self.vllm_config)
        self.frame_rows, self.frame_cols = frame_grid(self.vllm_config.model_config.hf_config)
        self.block_size = self.cache_config.block_size
        self.request_kv: dict[str, RequestKV] = {}
        self.preempted_this_step: set[str] = set()
        self.preempted_requests: list[str] = []  # every preemption, in order
        self.failed_requests: list = []  # finished with an error, their clients not told yet
        self.count_physical_tokens(
            self.evicted_tokens_of, lambda rid: self.admission_blocks_of(rid)
        )
        self.counters = EngineCounters()
        self.finished_caches = FinishedCaches()
        engine = str(self.vllm_config.parallel_config.data_parallel_rank)
        self.publisher = SnapshotPublisher(engine, ensure_metrics_dir())
        logger.info("PackCache scheduler: %s (counters on /metrics as packcache:*)", self.packcache)

    def evicted_tokens_of(self, request_id: str) -> int:
        kv = self.request_kv.get(request_id)
        return kv.evicted_tokens if kv is not None else 0

    # --- admission -------------------------------------------------------------------------
    def add_request(self, request) -> None:
        super().add_request(request)
        if not twins.is_twin(request.request_id):  # a twin is counted with its request
            self.refuse_if_never_fits(request)

    def refuse_if_never_fits(self, request) -> None:
        """Fail a request that can never fit this engine's pool, its CFG twin included (it would
        wait forever). The front end refuses it first wherever it knows the pool's size
        (``pool_fit``); this covers the rest (data parallelism)."""
        try:
            kv = self.kv_of(request)
        except ValueError as err:  # not a video prompt: it can only have bypassed the checks
            self.fail_requests({request.request_id: str(err)})
            return
        why = pool_fit.refusal_of(
            self.vllm_config,
            self.pool_blocks(),
            kv.layout,
            kv.config,
            request.prompt_token_ids,
            request.sampling_params,
        )
        if why is not None:
            self.fail_requests({request.request_id: why})

    def bound_blocks(self, request) -> int:
        """The most blocks the request can ever hold (``core.budget.bound_tokens``)."""
        kv = self.kv_of(request)
        max_tokens = pool_fit.new_tokens(self.vllm_config, kv.layout, request.max_tokens)
        return cdiv(bound_tokens(kv.layout, kv.config, max_tokens), self.block_size)

    def admission_blocks_of(self, request_id: str) -> int:
        """Free blocks a waiting request needs to be admitted: its own bound plus what running
        requests may still grow into, so that growth never preempts anyone."""
        growth = sum(
            max(0, self.bound_blocks(r) - self.num_held_blocks(r.request_id)) for r in self.running
        )
        return self.bound_blocks(self.requests[request_id]) + growth

    # --- the step ---------------------------------------------------------------------------
    def schedule(self, *args, **kwargs):
        self.preempted_this_step.clear()
        plans = self.compact_completed_frames()
        output = super().schedule(*args, **kwargs)
        for request_id in self.preempted_this_step:
            plans.pop(request_id, None)  # its blocks are gone; it will recompute from scratch
        attach_plans(output, plans)
        self.publish_counters(force=bool(plans or self.preempted_this_step))
        return output

    def publish_counters(self, *, force: bool) -> None:
        if not force and not self.publisher.due():
            return  # throttled: skip building the snapshot too
        snapshot = EngineSnapshot(
            self.publisher.engine, self.counters, self.finished_caches, self.max_peak_tokens()
        )
        self.publisher.publish(snapshot, force=force)

    def update_from_output(self, scheduler_output, model_runner_output):
        failures = failures_of(model_runner_output)
        if failures:  # finished first, so that vLLM drops what the step computed for them
            self.fail_requests(failures)
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        if self.failed_requests:
            add_error_outputs(outputs, self.failed_requests)
            self.failed_requests = []
        return outputs

    def fail_requests(self, failures: dict[str, str]) -> None:
        """Finish requests whose PackCache work raised (request id -> cause) with an error; their
        clients are told in the next ``update_from_output``."""
        for request_id, cause in failures.items():
            logger.error(
                "packcache: request %s failed (%s); it finishes with an error, its blocks return "
                "to the pool, the engine serves the others",
                request_id,
                cause,
            )
        self.failed_requests += self.finish_requests(failures, RequestStatus.FINISHED_ERROR)

    def max_peak_tokens(self) -> int:
        """The most tokens any running request's cache has held (0 when none runs)."""
        running = (r for r in self.request_kv if r in self.requests)
        return max((self.request_kv[r].peak_with(self.requests[r]) for r in running), default=0)

    def compact_completed_frames(self) -> dict[str, WorkerPlan]:
        plans, failures = {}, {}
        for request in self.running:
            if request.num_computed_tokens < request.num_prompt_tokens:
                continue  # still prefilling its prompt: no generated frame yet
            try:
                plan = self.plan_compaction(request)
            except Exception as err:
                logger.exception("packcache: planning failed for request %s", request.request_id)
                failures[request.request_id] = faults.failure_cause(err)
                continue
            if plan is not None:
                plans[request.request_id] = plan
        if failures:  # before vLLM schedules: a failed request is not scheduled
            self.fail_requests(failures)
            plans = {r: plan for r, plan in plans.items() if r in self.requests}
        return plans

    def plan_compaction(self, request) -> WorkerPlan | None:
        """The request's plan, when frames completed since the last one (else None)."""
        kv = self.kv_of(request)
        if not kv.config.is_bounded:
            return None  # the full cache: nothing is ever evicted
        logical_len = request.num_computed_tokens
        if logical_len < kv.state.anchor_len:
            return None  # the policy's sink frames are not complete yet
        if not num_new_complete_frames(kv.state, logical_len, kv.layout.tokens_per_frame):
            return None
        faults.inject("planning", request.request_id, request.sampling_params)
        return self.compact(request.request_id, kv, logical_len)

    def compact(self, request_id: str, kv: RequestKV, logical_len: int) -> WorkerPlan:
        old_ids = self.block_ids_of(request_id)
        selector = kv.config.make_selector()
        plan = make_plan(
            kv.state,
            logical_len,
            kv.layout.tokens_per_frame,
            kv.config,
            self.frame_orders(kv, selector, logical_len),
            old_ids,
            self.block_size,
        )
        num_freed = self.truncate_blocks(request_id, plan.num_blocks_kept)
        frames_to_order = self.frames_to_order(kv, selector, plan.new_state, old_ids)
        sorted_tokens = 0 if frames_to_order is None else sum(map(len, frames_to_order.slots))
        kv.peak_physical_tokens = max(kv.peak_physical_tokens, logical_len - kv.evicted_tokens)
        self.counters.add_compaction(
            frames=num_new_complete_frames(kv.state, logical_len, kv.layout.tokens_per_frame),
            evicted=plan.evicted_tokens - kv.evicted_tokens,
            freed=num_freed,
            moved=plan.num_moves + sorted_tokens,
            dropped=plan.dropped_frames - kv.state.dropped_frames,
        )
        kv.state, kv.evicted_tokens = plan.new_state, plan.evicted_tokens
        logger.debug(
            "packcache %s: %d frames complete, %d dropped, E=%d, %d moves, %d blocks freed, "
            "%d kept",
            request_id,
            plan.new_state.num_complete_frames + plan.dropped_frames,
            plan.dropped_frames,
            plan.evicted_tokens,
            plan.num_moves,
            num_freed,
            plan.num_blocks_kept,
        )
        worker_plan = self.worker_plan(plan, old_ids, kv.eviction_layout, frames_to_order)
        if not selector.needs_attention:
            return worker_plan
        state = plan.new_state  # queries of the incomplete frame on are still needed
        first_incomplete = state.anchor_len + state.num_complete_frames * kv.layout.tokens_per_frame
        return replace(worker_plan, keep_queries_from=first_incomplete)

    def worker_plan(
        self,
        plan: CompactionPlan,
        old_ids: list[int],
        layout: FrameLayout,
        frames_to_order: FramesToOrder | None,
    ) -> WorkerPlan:
        new_ids = tuple(old_ids[: plan.num_blocks_kept])
        return WorkerPlan(
            src_slots=global_slots(old_ids, self.block_size, plan.src),
            dst_slots=global_slots(new_ids, self.block_size, plan.dst),
            block_ids=new_ids,
            evicted_tokens=plan.evicted_tokens,
            dropped_frames=plan.dropped_frames,
            anchor_len=layout.anchor_len,
            t_stride=layout.t_stride,
            frames_to_order=frames_to_order,
        )

    def frame_orders(
        self, kv: RequestKV, selector: Selector, logical_len: int
    ) -> dict[int, list[int]]:
        """Priority order of every generated frame complete at ``logical_len``, as the plan
        sees it. A grid-only selector gives every frame the same order. For a key-reading one
        the worker sorts each frame in place when it completes (``frames_to_order``), so the
        plan sees the identity: slot i of the frame already holds its token of priority i."""
        if selector.needs_keys:
            order = list(range(kv.layout.tokens_per_frame))
        else:
            order = selector.order(self.frame_rows, self.frame_cols).tolist()
        layout = kv.eviction_layout
        complete = layout.num_complete_frames(logical_len) - layout.num_anchor_frames
        return dict.fromkeys(range(complete), order)

    def frames_to_order(
        self, kv: RequestKV, selector: Selector, new_state: PhysicalState, old_ids: list[int]
    ) -> FramesToOrder | None:
        """The global slots of the frames that become history in this compaction (they sit in
        the tail, in raster order, after the old history), when the selector reads keys and
        the policy ever keeps part of a frame (else the order would change nothing). A selector
        that compares a frame with the next one (``needs_newer_frame``) orders instead the
        frames that gain a successor now, each given with its successor's slots."""
        if not (selector.needs_keys and kv.config.thins_frames):
            return None
        old, frame_len = kv.state, kv.layout.tokens_per_frame
        late = selector.needs_newer_frame
        first = max(old.num_complete_frames - late, new_state.dropped_frames)
        frames = range(first, new_state.num_complete_frames - late)

        def slots_of(frame: int) -> tuple[int, ...]:
            return global_slots(old_ids, self.block_size, whole_frame_slots(old, frame, frame_len))

        slots = tuple(slots_of(frame) for frame in frames)
        if not slots:
            return None
        newer = tuple(slots_of(frame + 1) for frame in frames) if late else None
        attention = None
        if selector.needs_attention:
            attention = self.attention_context(old, frames, frame_len, old_ids)
        return FramesToOrder(selector, slots, newer, attention)

    def attention_context(
        self, old: PhysicalState, frames: range, frame_len: int, old_ids: list[int]
    ) -> AttentionContext:
        """Where each frame and its newer frame (still in the tail, contiguous) sit in the
        physical cache before this compaction, and the slots of everything up to the last newer
        frame's end (what its queries saw)."""
        newer_physical = [whole_frame_slots(old, frame + 1, frame_len)[0] for frame in frames]
        return AttentionContext(
            context_slots=global_slots(
                old_ids, self.block_size, range(newer_physical[-1] + frame_len)
            ),
            frame_positions=tuple(
                tuple(whole_frame_slots(old, frame, frame_len)) for frame in frames
            ),
            newer_starts=tuple(
                (old.anchor_len + (frame + 1) * frame_len, physical)
                for frame, physical in zip(frames, newer_physical, strict=True)
            ),
        )

    def kv_of(self, request) -> RequestKV:
        kv = self.request_kv.get(request.request_id)
        if kv is None:
            layout = video_layout(self.vllm_config, request.prompt_token_ids)
            config = request_policy(self.packcache, request.sampling_params)
            anchor_len = config.eviction_layout(layout).anchor_len
            kv = RequestKV(layout, config, PhysicalState.initial(anchor_len))
            self.request_kv[request.request_id] = kv
        return kv

    # --- lifecycle --------------------------------------------------------------------------
    def on_preempted(self, request) -> None:
        # Preemption recomputes the request from scratch with every token present: its cache
        # restarts unpacked (it cannot reproduce KV computed under earlier evictions).
        self.request_kv.pop(request.request_id, None)
        self.preempted_this_step.add(request.request_id)
        self.preempted_requests.append(request.request_id)
        self.counters.preemptions += 1
        logger.warning(
            "packcache: request %s preempted; it restarts with an unpacked cache, so its "
            "continuation can differ from an uninterrupted run (give the KV pool more room)",
            request.request_id,
        )

    def on_freed(self, request) -> None:
        kv = self.request_kv.pop(request.request_id, None)
        if kv is not None and kv.peak_with(request):  # a cache that held nothing is not observed
            cache = TWIN_CACHE if twins.is_twin(request.request_id) else REQUEST_CACHE
            self.finished_caches.observe(
                cache, peak_physical_tokens=kv.peak_with(request), evicted_tokens=kv.evicted_tokens
            )
            self.publish_counters(force=True)

    def shutdown(self) -> None:
        self.publisher.remove()  # a stopped engine's totals leave /metrics with it
        super().shutdown()


def whole_frame_slots(state: PhysicalState, frame: int, frame_len: int) -> Sequence[int]:
    """The physical slots of a whole complete ``frame`` in offset order, as ``state`` holds
    it: still in the tail, or the newest history frame (whole at distance 0, kept in raster
    order under a key-reading selector). ValueError for a frame already thinned."""
    if frame >= state.num_complete_frames:
        tail_start = state.anchor_len + state.history_len
        start = tail_start + (frame - state.num_complete_frames) * frame_len
        return range(start, start + frame_len)
    slots = state.frames[frame - state.dropped_frames].slots
    if len(slots) != frame_len:
        raise ValueError(
            f"frame {frame} keeps {len(slots)} of {frame_len} tokens before it was ordered: a "
            "selector that reads the next frame needs it whole until then"
        )
    return slots
