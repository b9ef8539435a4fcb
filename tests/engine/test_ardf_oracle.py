"""Frame-parallel (AR-DF) generation inside vLLM equals the dense reference (``generate_ardf``).

Three concurrent requests of different prompts (image-to-video and text-to-video) and lengths,
so prefill, denoising and commit steps of different requests share steps; float32, seeded,
stochastic sampling (temperature 1, top-k). Every frame's tokens and the set of cell offsets
fixed at each denoising step must equal the reference's, with the full cache and with PackCache
evicting at every commit (W=2: frames are thinned, then dropped).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.layout import find_frame_start
from packcache_vllm.core.maskgit import ARDFSamplingParams
from tests.engine.conftest import BLOCK_SIZE, DEVICE_ENGINE_SETTINGS, TEST_DEVICE, keep_alive

FRAMES = (3, 4, 2)
STEPS = (3, 2, 4)
NO_GUIDANCE = (1.0, 1.0, 1.0)
GUIDANCE = (3.0, 1.0, 7.5)  # two requests with an unconditional twin, one without
SEEDS = (11, 12, 13)
TOP_KS = (None, 40, None)  # Lumos-1's default (no top-k) and a top-k request
WINDOW = 2
MIN_KEEP = 0.5


def make_ardf_llm(model_dir, policy: str, llm_args: dict | None = None, **knobs):
    """An in-process frame-parallel engine, kept alive for the session (``llm_args`` override
    the LLM arguments)."""
    from vllm import LLM

    from packcache_vllm.cli import engine_overrides

    overrides = engine_overrides(policy, mode="frame-parallel", device=TEST_DEVICE, **knobs)
    arguments = {
        "dtype": "float32",
        "enforce_eager": True,
        "block_size": BLOCK_SIZE,
        "kv_cache_memory_bytes": 32 << 20,
        "max_model_len": 1024,
        "seed": 0,
        **DEVICE_ENGINE_SETTINGS,
        **(llm_args or {}),
    }
    return keep_alive(LLM(str(model_dir), **arguments, **overrides))


def runner_of(engine):
    return engine.llm_engine.model_executor.driver_worker.worker.model_runner


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    from packcache_vllm.reference import ReferenceVideoModel

    return ReferenceVideoModel.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def full_ardf_llm(tiny_model_dir, llm):
    return make_ardf_llm(tiny_model_dir, "full")


@pytest.fixture(scope="module")
def packcache_ardf_llm(tiny_model_dir, llm):
    return make_ardf_llm(tiny_model_dir, "packcache", window=WINDOW, min_keep=MIN_KEEP)


def sampler_params(index: int, cfg_scale: float = 1.0) -> ARDFSamplingParams:
    return ARDFSamplingParams(
        steps_per_frame=STEPS[index],
        cfg_scale=cfg_scale,
        top_k=TOP_KS[index],
        temperature=1.0,
        seed=SEEDS[index],
    )


def vllm_params(params: ARDFSamplingParams, num_frames: int, per_frame: int, **packcache_args):
    """packcache_args: per-request PackCache overrides (``packcache_selector=...``)."""
    from vllm import SamplingParams

    extra_args = packcache_args | {
        "ardf_steps_per_frame": params.steps_per_frame,
        "ardf_cfg_scale": params.cfg_scale,
        "ardf_top_k": params.top_k,
        "ardf_temperature": params.temperature,
        "ardf_seed": params.seed,
        "ardf_history_mask_ratio": params.history_mask_ratio,
        "ardf_condition_mask_ratio": params.condition_mask_ratio,
        "ardf_ranking": params.ranking,
    }
    return SamplingParams(
        max_tokens=num_frames * per_frame,
        ignore_eos=True,
        detokenize=False,
        extra_args=extra_args,
    )


def run_engine(engine, prompts, params, per_frame, **packcache_args):
    """Generate; returns [(token_ids, trace)] per request, in prompt order."""
    sampling = [
        vllm_params(p, n, per_frame, **packcache_args) for p, n in zip(params, FRAMES, strict=True)
    ]
    outputs = engine.generate([{"prompt_token_ids": p} for p in prompts], sampling, use_tqdm=False)
    runner = runner_of(engine)
    return [(tuple(o.outputs[0].token_ids), trace_of(runner, o.request_id)) for o in outputs]


def trace_of(runner, request_id: str):
    """The runner's trace of the request vLLM calls ``request_id`` outside the engine (inside,
    vLLM appends a random suffix: ``<id>-<8 hex>``)."""
    internal = [r for r in runner.traced_request_ids() if r.rsplit("-", 1)[0] == request_id]
    assert len(internal) == 1, f"request {request_id}: engine ids {internal}"
    return runner.trace_of(internal[0])


def reference_run(reference, prompt, params, num_frames, packcache=None, **controls):
    from packcache_vllm.reference_ardf import generate_ardf

    result = generate_ardf(reference, prompt, num_frames, params, packcache, **controls)
    trace = [[step.fixed_offsets for step in frame.steps] for frame in result.frames]
    return result.token_ids, trace


def assert_matches_reference(
    got,
    reference,
    video_prompts,
    per_frame,
    packcache,
    cfg_scales=NO_GUIDANCE,
    knobs=None,
    **controls,
):
    """got: the engine's [(token_ids, trace)] per prompt, from ``run_engine``. The reference
    runs with the same knobs, changed by ``knobs`` (``ARDFSamplingParams`` fields), and
    ``controls`` (``generate_ardf`` keywords)."""
    for i, (prompt, (tokens, trace)) in enumerate(zip(video_prompts, got, strict=True)):
        params = replace(sampler_params(i, cfg_scales[i]), **(knobs or {}))
        expected_tokens, expected_trace = reference_run(
            reference, prompt, params, FRAMES[i], packcache, **controls
        )
        assert len(tokens) == FRAMES[i] * per_frame
        for f in range(FRAMES[i]):
            assert trace[f] == expected_trace[f], f"request {i} frame {f}: fixed offsets differ"
            frame = slice(f * per_frame, (f + 1) * per_frame)
            assert tokens[frame] == expected_tokens[frame], f"request {i} frame {f}: tokens differ"


@pytest.fixture(scope="module")
def full_cache_run(full_ardf_llm, video_prompts, per_frame):
    params = [sampler_params(i) for i in range(len(video_prompts))]
    return run_engine(full_ardf_llm, video_prompts, params, per_frame)


def test_requests_share_steps_in_mixed_phases(full_ardf_llm, video_prompts, per_frame):
    """The three requests are batched: steps mix prefill, denoising and commit rows."""
    from packcache_vllm.engine.ardf_runner import RowKind

    runner = runner_of(full_ardf_llm)
    plan_rows, steps = runner.plan_rows, []

    def recording_plan_rows(*args):
        rows = plan_rows(*args)
        steps.append({row.kind for row in rows})
        return rows

    runner.plan_rows = recording_plan_rows
    try:
        params = [sampler_params(i) for i in range(len(video_prompts))]
        run_engine(full_ardf_llm, video_prompts, params, per_frame)
    finally:
        del runner.plan_rows
    prefill = {RowKind.TEXT, RowKind.FRAME_PREFILL}
    assert any(kinds & prefill and RowKind.DENOISE in kinds for kinds in steps)
    assert any({RowKind.DENOISE, RowKind.COMMIT} <= kinds for kinds in steps)


@pytest.fixture(scope="module")
def packcache_run(packcache_ardf_llm, video_prompts, per_frame):
    params = [sampler_params(i) for i in range(len(video_prompts))]
    return run_engine(packcache_ardf_llm, video_prompts, params, per_frame)


@pytest.fixture(scope="module")
def guided_packcache_run(packcache_ardf_llm, video_prompts, per_frame):
    params = [sampler_params(i, GUIDANCE[i]) for i in range(len(video_prompts))]
    return run_engine(packcache_ardf_llm, video_prompts, params, per_frame)


def test_full_cache_matches_reference(full_cache_run, reference, video_prompts, per_frame):
    assert_matches_reference(full_cache_run, reference, video_prompts, per_frame, None)


def test_packcache_at_every_commit_matches_reference(
    packcache_run, full_cache_run, reference, video_prompts, per_frame
):
    config = PackCacheConfig.preset("packcache", window=WINDOW, min_keep=MIN_KEEP)
    assert_matches_reference(packcache_run, reference, video_prompts, per_frame, config)
    longest = FRAMES.index(max(FRAMES))
    assert packcache_run[longest][0] != full_cache_run[longest][0], "eviction changes the video"


def test_guidance_with_twins_and_packcache_matches_reference(
    guided_packcache_run, packcache_run, reference, video_prompts, per_frame
):
    config = PackCacheConfig.preset("packcache", window=WINDOW, min_keep=MIN_KEEP)
    assert_matches_reference(
        guided_packcache_run, reference, video_prompts, per_frame, config, GUIDANCE
    )
    for i, cfg_scale in enumerate(GUIDANCE):
        changed = guided_packcache_run[i][0] != packcache_run[i][0]
        assert changed == (cfg_scale != 1), f"request {i}: guidance {cfg_scale}"


def test_key_norm_selector_with_twins_matches_reference(
    packcache_ardf_llm, guided_packcache_run, reference, video_prompts, per_frame
):
    """Each twin orders its committed frames by its own cached keys, in the worker, as the
    reference's per-twin policies do; teeth: the video differs from the uniform selector's."""
    params = [sampler_params(i, GUIDANCE[i]) for i in range(len(video_prompts))]
    got = run_engine(
        packcache_ardf_llm, video_prompts, params, per_frame, packcache_selector="key_norm"
    )
    config = PackCacheConfig.preset(
        "packcache", window=WINDOW, min_keep=MIN_KEEP, selector="key_norm"
    )
    assert_matches_reference(got, reference, video_prompts, per_frame, config, GUIDANCE)
    uniform_run = guided_packcache_run
    assert any(ours[0] != uniform[0] for ours, uniform in zip(got, uniform_run, strict=True))


@pytest.mark.parametrize(
    "control", ["causal canvas", "unmasked commit", "masked conditioning", "quantized ranking"]
)
def test_oracle_fails_against_the_references_controls(
    control, guided_packcache_run, reference, video_prompts, per_frame
):
    """Teeth: the engine differs from a reference whose canvas is causal, whose commits keep
    the frame unmasked, whose conditioning frames are masked like commits, or which breaks
    confidence ties by position, so the oracle above checks all four."""
    from packcache_vllm.reference_ardf import FrameAttention

    config = PackCacheConfig.preset("packcache", window=WINDOW, min_keep=MIN_KEEP)
    controls = {
        "causal canvas": {"attention": FrameAttention.CAUSAL},
        "unmasked commit": {"knobs": {"history_mask_ratio": 0.0}},
        "masked conditioning": {"knobs": {"condition_mask_ratio": 0.7}},
        "quantized ranking": {"knobs": {"ranking": "quantized"}},
    }[control]
    with pytest.raises(AssertionError, match="differ"):
        assert_matches_reference(
            guided_packcache_run, reference, video_prompts, per_frame, config, GUIDANCE, **controls
        )


def test_masked_conditioning_knob_matches_reference(
    full_ardf_llm, full_cache_run, reference, video_prompts, per_frame
):
    """``ardf_condition_mask_ratio`` 0.7 (conditioning frames masked like commits) stays
    reachable and oracle-exact; it changes the image-to-video requests only."""
    masked = {"condition_mask_ratio": 0.7}
    params = [replace(sampler_params(i), **masked) for i in range(len(video_prompts))]
    got = run_engine(full_ardf_llm, video_prompts, params, per_frame)
    assert_matches_reference(got, reference, video_prompts, per_frame, None, knobs=masked)
    for i, prompt in enumerate(video_prompts):
        has_frame = len(prompt) > find_frame_start(prompt)
        assert (got[i][0] != full_cache_run[i][0]) == has_frame, f"request {i}"


def test_conditioning_frame_kv_in_the_engine_is_the_unmasked_frames(
    full_ardf_llm, reference, video_prompts, per_frame
):
    """The engine's cached values of an image-to-video prompt's conditioning frame (every
    layer, read from vLLM's paged cache) equal the dense reference's whole-frame prefill and
    differ from its history-masked one."""
    from packcache_vllm.engine.kv_layout import read_values
    from packcache_vllm.reference import RebaseMode
    from packcache_vllm.reference_ardf import FrameAttention, prefilled_twins

    prompt = video_prompts[0]
    frame_start = find_frame_start(prompt)
    assert len(prompt) == frame_start + per_frame  # one conditioning frame
    engine, params = full_ardf_llm.llm_engine, sampler_params(0)
    engine.add_request("kv-probe", {"prompt_token_ids": prompt}, vllm_params(params, 2, per_frame))
    scheduler = engine.engine_core.engine_core.scheduler
    try:
        while not any(r.num_computed_tokens >= len(prompt) for r in scheduler.requests.values()):
            engine.step()
        (blocks,) = [b for b in scheduler.block_manager.req_to_blocks.values() if b]
        block_ids = [blocks[i // BLOCK_SIZE].block_id for i in range(len(prompt))]
        slots = torch.tensor(
            [block_ids[i] * BLOCK_SIZE + i % BLOCK_SIZE for i in range(frame_start, len(prompt))]
        )
        runner = runner_of(full_ardf_llm)
        engine_values = [read_values(c, runner.page_layout, slots) for c in runner.kv_caches]
    finally:
        engine.abort_request(["kv-probe"])
    for ratio, should_match in ((0.0, True), (0.7, False)):
        twins = prefilled_twins(
            reference,
            prompt,
            replace(params, condition_mask_ratio=ratio),
            None,
            RebaseMode.POSITIONS,
            FrameAttention.BIDIRECTIONAL,
        )
        cache = twins.cond.cache
        in_frame = cache.indices >= frame_start
        for layer, got in enumerate(engine_values):
            want = cache.values[layer][in_frame]
            assert torch.allclose(got, want, atol=1e-4) == should_match, (ratio, layer)
