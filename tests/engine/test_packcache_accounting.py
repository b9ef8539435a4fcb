"""Block accounting of the evicting engine: bounded per request, flat after the window fills,
and every block back in the pool after requests finish or are aborted mid-frame."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from tests.engine.conftest import BLOCK_SIZE
from tests.engine.conftest import PACKCACHE_WINDOW as WINDOW

NUM_FRAMES = 10


@pytest.fixture(scope="module")
def engine(packcache_llm):
    return packcache_llm.llm_engine


def scheduler_of(engine):
    return engine.engine_core.engine_core.scheduler


def add_video_requests(engine, prompts, prefix: str, frames: int, per_frame: int) -> None:
    from vllm import SamplingParams

    params = SamplingParams(
        temperature=0.0, max_tokens=frames * per_frame, ignore_eos=True, detokenize=False
    )
    for i, prompt in enumerate(prompts):
        engine.add_request(f"{prefix}{i}", {"prompt_token_ids": prompt}, params)


def held_blocks(scheduler) -> dict[str, int]:
    """Blocks each running request holds right now."""
    manager = scheduler.block_manager
    return {r.request_id: len(manager.req_to_blocks[r.request_id]) for r in scheduler.running}


def test_blocks_stay_bounded_flat_and_return(engine, video_prompts, per_frame):
    scheduler = scheduler_of(engine)
    pool = scheduler.kv_cache_manager.block_pool
    free_at_start = pool.get_num_free_blocks()
    counters_at_start = replace(scheduler.counters)
    peaks_at_start = peak_histogram(scheduler).total
    add_video_requests(engine, video_prompts, "acct-", NUM_FRAMES, per_frame)
    bound = {
        r.request_id: math.ceil((r.num_prompt_tokens + (WINDOW + 1) * per_frame) / BLOCK_SIZE)
        for r in scheduler.waiting
    }
    history: dict[str, list[tuple[int, int]]] = {rid: [] for rid in bound}
    final_kv: dict[str, tuple[int, int]] = {}  # request -> (E, dropped frames) last seen
    peak: dict[str, int] = {}  # request -> the most tokens its cache held (before compacting)
    while engine.has_unfinished_requests():
        engine.step()
        for request_id, kv in scheduler.request_kv.items():
            final_kv[request_id] = (kv.evicted_tokens, kv.state.dropped_frames)
            held = scheduler.requests[request_id].num_computed_tokens - kv.evicted_tokens
            peak[request_id] = max(peak.get(request_id, 0), held)
        for request in scheduler.running:
            blocks = held_blocks(scheduler)[request.request_id]
            assert blocks <= bound[request.request_id], f"{request.request_id} exceeds its bound"
            generated = request.num_computed_tokens - request.num_prompt_tokens
            history[request.request_id].append((generated // per_frame, blocks))
    for rid, samples in history.items():
        settled = [blocks for frame, blocks in samples if frame >= WINDOW + 2]
        assert settled, f"{rid} never got past the window"
        # flat: once the window has filled, growing the video does not grow the cache
        assert max(settled) == max(blocks for frame, blocks in samples if frame == WINDOW + 2)
    assert pool.get_num_free_blocks() == free_at_start
    check_counters(scheduler, counters_at_start, final_kv)
    assert peak_histogram(scheduler).total - peaks_at_start == sum(peak.values())


def peak_histogram(scheduler):
    """The scheduler's histogram of finished requests' peak tokens, as last published."""
    from packcache_vllm.metrics import REQUEST_CACHE, EngineSnapshot, TokenHistogram

    if not scheduler.publisher.path.exists():
        return TokenHistogram()
    published = EngineSnapshot.from_json(scheduler.publisher.path.read_text())
    by_cache = published.finished.histograms["request_peak_physical_tokens"]
    return by_cache.get(REQUEST_CACHE, TokenHistogram())


def check_counters(scheduler, at_start, final_kv: dict[str, tuple[int, int]]) -> None:
    """The scheduler's counters grew by exactly what its requests evicted and dropped, and the
    snapshot it published for /metrics says the same (with no request left running)."""
    from packcache_vllm.metrics import EngineSnapshot

    counters = scheduler.counters
    assert counters.evicted_tokens - at_start.evicted_tokens == sum(e for e, _ in final_kv.values())
    assert counters.dropped_frames - at_start.dropped_frames == sum(d for _, d in final_kv.values())
    assert counters.blocks_freed > at_start.blocks_freed
    assert counters.moved_tokens > at_start.moved_tokens
    published = EngineSnapshot.from_json(scheduler.publisher.path.read_text())
    assert published.counters == counters
    assert published.max_request_physical_tokens == 0


def test_abort_mid_frame_returns_every_block(engine, video_prompts, per_frame):
    scheduler = scheduler_of(engine)
    pool = scheduler.kv_cache_manager.block_pool
    free_at_start = pool.get_num_free_blocks()
    add_video_requests(engine, video_prompts, "abort-", NUM_FRAMES, per_frame)
    victim = "abort-1"
    for _ in range(NUM_FRAMES * per_frame):  # until the victim is compacted and mid-frame
        engine.step()
        internal_id = next(r for r in scheduler.requests if r.startswith(victim))
        kv, request = scheduler.request_kv.get(internal_id), scheduler.requests[internal_id]
        mid_frame = (request.num_computed_tokens - request.num_prompt_tokens) % per_frame > 1
        if kv is not None and kv.evicted_tokens > 0 and mid_frame:
            break
    else:
        pytest.fail("the victim never reached a compacted, mid-frame state")
    engine.abort_request([victim])
    while engine.has_unfinished_requests():
        engine.step()
    assert internal_id not in scheduler.request_kv
    assert pool.get_num_free_blocks() == free_at_start


def test_admission_reserves_the_bounded_footprint(
    tight_packcache_llm, tiny_model_dir, video_prompts, per_frame
):
    """A pool too small for all three videos at once: requests wait for room instead of being
    preempted later, and every video completes token-exact (a preemption would break that)."""
    from vllm import SamplingParams

    from packcache_vllm.core.budget import PackCacheConfig
    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel
    from tests.engine.conftest import PACKCACHE_MIN_KEEP

    tight = tight_packcache_llm
    scheduler = scheduler_of(tight.llm_engine)
    pool = scheduler.kv_cache_manager.block_pool
    free_at_start = pool.get_num_free_blocks()
    n = NUM_FRAMES * per_frame
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False)
    outputs = tight.generate(
        [{"prompt_token_ids": p} for p in video_prompts], params, use_tqdm=False
    )

    reference = ReferenceVideoModel.from_pretrained(tiny_model_dir)
    config = PackCacheConfig.preset("packcache", window=WINDOW, min_keep=PACKCACHE_MIN_KEEP)
    for prompt, output in zip(video_prompts, outputs, strict=True):
        layout = reference.layout_for(prompt)
        expected = reference.generate(prompt, layout, n, PackCachePolicy(config)).token_ids
        assert tuple(output.outputs[0].token_ids) == expected
    assert scheduler.preempted_requests == []
    assert pool.get_num_free_blocks() == free_at_start


def test_forced_preemption_leaks_nothing_and_spares_the_others(
    tiny_model_dir, video_prompts, per_frame
):
    """Admission switched off on a tight pool (as stock vLLM admits): growth preempts running
    videos. A preempted video restarts with an unpacked cache and still completes; videos never
    preempted stay token-exact; every block comes back."""
    from vllm import SamplingParams

    from packcache_vllm.core.budget import PackCacheConfig
    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel
    from tests.engine.conftest import (
        PACKCACHE_MIN_KEEP,
        TIGHT_MAX_MODEL_LEN,
        TIGHT_POOL_BLOCKS,
        make_packcache_llm,
    )

    llm = make_packcache_llm(
        tiny_model_dir, num_gpu_blocks_override=TIGHT_POOL_BLOCKS, max_model_len=TIGHT_MAX_MODEL_LEN
    )
    scheduler = scheduler_of(llm.llm_engine)
    scheduler.admission_blocks_of = lambda request_id: 0  # admit like stock vLLM
    pool = scheduler.kv_cache_manager.block_pool
    free_at_start = pool.get_num_free_blocks()
    n = NUM_FRAMES * per_frame
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False)
    outputs = llm.generate([{"prompt_token_ids": p} for p in video_prompts], params, use_tqdm=False)

    assert scheduler.preempted_requests, "the pool was meant to force a preemption"
    assert pool.get_num_free_blocks() == free_at_start
    assert not scheduler.request_kv
    reference = ReferenceVideoModel.from_pretrained(tiny_model_dir)
    config = PackCacheConfig.preset("packcache", window=WINDOW, min_keep=PACKCACHE_MIN_KEEP)
    spared = 0
    for prompt, output in zip(video_prompts, outputs, strict=True):
        tokens = tuple(output.outputs[0].token_ids)
        assert len(tokens) == n  # the preempted ones resume and complete too
        if any(r.startswith(output.request_id) for r in scheduler.preempted_requests):
            continue
        layout = reference.layout_for(prompt)
        assert tokens == reference.generate(prompt, layout, n, PackCachePolicy(config)).token_ids
        spared += 1
    assert spared >= 1
