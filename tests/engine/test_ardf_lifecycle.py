"""Frame-parallel requests with guidance inside the engine: the unconditional twin is hidden from
the API, holds its own bounded blocks, and an abort frees both twins' blocks; bad knobs are
rejected before the engine sees them."""

from __future__ import annotations

import pytest

from tests.engine.conftest import BLOCK_SIZE
from tests.engine.test_ardf_oracle import make_ardf_llm, sampler_params, vllm_params

WINDOW = 2


@pytest.fixture(scope="module")
def engine(tiny_model_dir, llm):
    return make_ardf_llm(tiny_model_dir, "packcache", window=WINDOW, min_keep=0.5)


def scheduler_of(llm):
    return llm.llm_engine.engine_core.engine_core.scheduler


def test_abort_frees_both_twins_blocks(engine, video_prompts, per_frame):
    from packcache_vllm.engine.twins import is_twin

    scheduler = scheduler_of(engine)
    pool = scheduler.kv_cache_manager.block_pool
    free_before = pool.get_num_free_blocks()
    params = vllm_params(sampler_params(0, cfg_scale=3.0), 6, per_frame)
    engine.llm_engine.add_request("video", {"prompt_token_ids": video_prompts[0]}, params)
    held = {}
    for _ in range(12):  # prefill, and the first frame's 3 steps + commit, and more
        outputs = engine.llm_engine.step()
        assert all(o.request_id == "video" and not o.finished for o in outputs)  # no twin
        held = {r: len(b) for r, b in scheduler.block_manager.req_to_blocks.items() if b}
    assert len(held) == 2 and sum(is_twin(r) for r in held) == 1, held
    assert pool.get_num_free_blocks() < free_before
    engine.llm_engine.abort_request(["video"])
    assert not scheduler.requests and not scheduler.twin_of
    assert pool.get_num_free_blocks() == free_before


def test_twins_stay_within_their_bounded_footprint(engine, video_prompts, per_frame):
    """Each twin's blocks never exceed its bound (anchors + W frames + the canvas), and the
    outputs list the conditioned requests only."""
    from vllm.utils.math_utils import cdiv

    scheduler = scheduler_of(engine)
    peak: dict[str, int] = {}
    prompt_len: dict[str, int] = {}
    for i, prompt in enumerate(video_prompts):
        params = vllm_params(sampler_params(i, cfg_scale=2.0), 5, per_frame)
        engine.llm_engine.add_request(f"v{i}", {"prompt_token_ids": prompt}, params)
    finished = []
    while engine.llm_engine.has_unfinished_requests():
        outputs = engine.llm_engine.step()
        assert {o.request_id for o in outputs} <= {"v0", "v1", "v2"}  # twins stay hidden
        finished += [o for o in outputs if o.finished]
        for request_id, blocks in scheduler.block_manager.req_to_blocks.items():
            peak[request_id] = max(peak.get(request_id, 0), len(blocks))
        for request_id, request in scheduler.requests.items():
            prompt_len[request_id] = request.num_prompt_tokens
    assert sorted(o.request_id for o in finished) == ["v0", "v1", "v2"]
    assert all(len(o.outputs[0].token_ids) == 5 * per_frame for o in finished)
    assert len(peak) == 6  # three requests and their three twins
    for request_id, blocks in peak.items():
        bound = cdiv(prompt_len[request_id] + (WINDOW + 1) * per_frame, BLOCK_SIZE)
        assert 0 < blocks <= bound, f"{request_id}: {blocks} blocks, bound {bound}"


@pytest.mark.parametrize(
    ("extra_args", "message"),
    [
        ({"ardf_steps_per_frame": 0}, r"steps_per_frame must be an integer \[1, 1000\], got 0"),
        ({"ardf_cfg_scale": -1.0}, r"cfg_scale must be a number in \[0, 100\]"),
        ({"ardf_history_mask_ratio": 2}, "history_mask_ratio"),
        ({"ardf_stepz": 2}, "unknown frame-parallel request key 'ardf_stepz'"),
    ],
)
def test_bad_knob_is_rejected_up_front(engine, video_prompts, per_frame, extra_args, message):
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=per_frame, detokenize=False, extra_args=extra_args)
    with pytest.raises(ValueError, match=message):
        engine.generate([{"prompt_token_ids": video_prompts[0]}], params, use_tqdm=False)
