"""Requests against the size of the KV block pool: one that can never fit, its hidden CFG twin
included, is refused before the engine sees it (it used to wait forever); ones that fit only one
at a time are admitted as room frees up; a next-token request asking for more than
``max_model_len`` is sized by what vLLM lets it reach (it used to wait forever too)."""

from __future__ import annotations

import pytest
from vllm.utils.math_utils import cdiv

from packcache_vllm.core.budget import PackCacheConfig
from tests.engine.conftest import BLOCK_SIZE, PACKCACHE_MIN_KEEP, TIGHT_MAX_MODEL_LEN
from tests.engine.test_ardf_oracle import make_ardf_llm, sampler_params, vllm_params

POOL_BLOCKS = 14  # vLLM keeps one null block: 13 blocks (416 tokens) for requests
USABLE_BLOCKS = POOL_BLOCKS - 1
WINDOW, MIN_KEEP = 2, 0.5


@pytest.fixture(scope="module")
def tight_ardf(tiny_model_dir, llm):
    """A frame-parallel engine whose pool holds one guided request with its twin at a time."""
    tight = {"num_gpu_blocks_override": POOL_BLOCKS, "max_model_len": TIGHT_MAX_MODEL_LEN}
    return make_ardf_llm(tiny_model_dir, "packcache", tight, window=WINDOW, min_keep=MIN_KEEP)


def scheduler_of(engine):
    return engine.llm_engine.engine_core.engine_core.scheduler


def test_guided_request_that_cannot_fit_with_its_twin_is_refused_up_front(
    tight_ardf, video_prompts, per_frame
):
    from packcache_vllm.reference_ardf import unconditional_prompt

    prompt, frames = video_prompts[0], 6
    whole = {"packcache_window": 50}  # nothing is evicted: the footprint is the whole video
    guided = vllm_params(sampler_params(0, cfg_scale=3.0), frames, per_frame, **whole)
    request_tokens = len(prompt) + frames * per_frame
    twin_tokens = len(unconditional_prompt(prompt)) + frames * per_frame
    blocks = cdiv(request_tokens, BLOCK_SIZE) + cdiv(twin_tokens, BLOCK_SIZE)
    assert cdiv(request_tokens, BLOCK_SIZE) <= USABLE_BLOCKS < blocks
    message = (
        rf"footprint is {blocks} blocks of {BLOCK_SIZE} tokens for {request_tokens} tokens "
        rf"\(the request\) \+ {twin_tokens} tokens \(its CFG twin\), the pool holds "
        rf"{USABLE_BLOCKS} usable blocks \({USABLE_BLOCKS * BLOCK_SIZE} tokens\)"
    )
    try:
        with pytest.raises(ValueError, match=message):
            tight_ardf.llm_engine.add_request("too-big", {"prompt_token_ids": prompt}, guided)
    finally:
        tight_ardf.llm_engine.abort_request(["too-big"])  # if it was queued, it would wait forever
    assert not scheduler_of(tight_ardf).requests
    alone = vllm_params(sampler_params(0, cfg_scale=1.0), frames, per_frame, **whole)
    [output] = tight_ardf.generate([{"prompt_token_ids": prompt}], alone, use_tqdm=False)
    assert len(output.outputs[0].token_ids) == frames * per_frame  # without its twin it fits


def test_guided_requests_that_fit_one_at_a_time_both_complete(
    tight_ardf, tiny_model_dir, video_prompts, per_frame
):
    """Two guided videos whose pairs fit the pool only one at a time: the second pair waits
    for the first to finish (never two pairs running), and both equal the dense reference."""
    from packcache_vllm.engine.twins import is_twin
    from packcache_vllm.reference import ReferenceVideoModel
    from packcache_vllm.reference_ardf import generate_ardf, unconditional_prompt

    frames, chosen = 4, (0, 2)
    prompts = [video_prompts[i] for i in chosen]
    params = [sampler_params(i, cfg_scale=3.0) for i in chosen]
    kept = (WINDOW + 1) * per_frame
    pairs = [
        cdiv(len(p) + kept, BLOCK_SIZE) + cdiv(len(unconditional_prompt(p)) + kept, BLOCK_SIZE)
        for p in prompts
    ]
    assert max(pairs) <= USABLE_BLOCKS < sum(pairs)
    scheduler = scheduler_of(tight_ardf)
    pool = scheduler.kv_cache_manager.block_pool
    free_at_start = pool.get_num_free_blocks()
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        sampling = vllm_params(p, frames, per_frame)
        tight_ardf.llm_engine.add_request(f"v{i}", {"prompt_token_ids": prompt}, sampling)
    tokens, most_running = {}, 0
    while tight_ardf.llm_engine.has_unfinished_requests():
        for output in tight_ardf.llm_engine.step():
            if output.finished:
                tokens[output.request_id] = tuple(output.outputs[0].token_ids)
        conditioned = [r for r in scheduler.running if not is_twin(r.request_id)]
        most_running = max(most_running, len(conditioned))
    assert most_running == 1
    assert scheduler.preempted_requests == []
    assert pool.get_num_free_blocks() == free_at_start
    reference = ReferenceVideoModel.from_pretrained(tiny_model_dir)
    config = PackCacheConfig.preset("packcache", window=WINDOW, min_keep=MIN_KEEP)
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        expected = generate_ardf(reference, prompt, frames, p, config)
        assert tokens[f"v{i}"] == expected.token_ids, f"request {i}"


def test_next_token_request_past_max_model_len_is_sized_by_it(
    tight_packcache_llm, tiny_model_dir, video_prompts
):
    """Offline, vLLM does not check max_tokens against max_model_len; it stops the request
    there. Its footprint is sized by what it can reach, so it is admitted and runs to
    max_model_len, token-exact (a window of 50 frames keeps everything)."""
    from vllm import SamplingParams

    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel

    engine = tight_packcache_llm.llm_engine
    prompt = video_prompts[0]
    reachable = TIGHT_MAX_MODEL_LEN - len(prompt)
    params = SamplingParams(
        temperature=0.0,
        max_tokens=2000,
        ignore_eos=True,
        detokenize=False,
        extra_args={"packcache_window": 50},
    )
    engine.add_request("long", {"prompt_token_ids": prompt}, params)
    finished = []
    try:
        for _ in range(2 * TIGHT_MAX_MODEL_LEN):  # one token a step, and room to spare
            finished += [o for o in engine.step() if o.finished]
            if finished:
                break
    finally:
        engine.abort_request(["long"])  # it would otherwise wait in the shared engine
    assert finished, "the request was never admitted"
    [output] = finished
    assert output.outputs[0].finish_reason == "length"
    reference = ReferenceVideoModel.from_pretrained(tiny_model_dir)
    config = PackCacheConfig.preset("packcache", window=50, min_keep=PACKCACHE_MIN_KEEP)
    policy = PackCachePolicy(config)
    expected = reference.generate(prompt, reference.layout_for(prompt), reachable, policy)
    assert tuple(output.outputs[0].token_ids) == expected.token_ids


def test_scheduler_fails_a_request_the_front_end_could_not_check(
    tight_ardf, video_prompts, per_frame
):
    """Where the front end does not know one engine's pool (data parallelism), the scheduler
    finishes a request that can never fit with an error in the next step, instead of queueing
    it forever; it adds no twin and holds no block."""
    import time

    from vllm.v1.engine import FinishReason
    from vllm.v1.request import Request

    core = tight_ardf.llm_engine.engine_core.engine_core
    params = vllm_params(sampler_params(0, cfg_scale=3.0), 6, per_frame, packcache_window=50)
    request = Request(
        request_id="unchecked",
        prompt_token_ids=list(video_prompts[0]),
        sampling_params=params,
        pooling_params=None,
        client_index=0,
        arrival_time=time.time(),
    )
    pool = core.scheduler.kv_cache_manager.block_pool
    free_at_start = pool.get_num_free_blocks()
    core.add_request(request)  # past the input processor, as a request from the front end
    outputs, _ = core.step()
    [error] = [output for client in outputs.values() for output in client.outputs]
    assert (error.request_id, error.finish_reason) == ("unchecked", FinishReason.ERROR)
    assert not core.scheduler.requests and not core.scheduler.twin_of
    assert pool.get_num_free_blocks() == free_at_start
