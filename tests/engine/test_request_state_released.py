"""Per-request state of the plugin is released when requests finish or are aborted: after a mix
of finished and aborted videos (evicting, key-norm, guided frame-parallel with twins), the
scheduler's and the model runner's per-request dicts hold none of them, so a long-running server
does not grow with the requests it has served."""

from __future__ import annotations

import pytest

from tests.engine.conftest import make_packcache_llm
from tests.engine.test_ardf_oracle import make_ardf_llm, runner_of, sampler_params, vllm_params

FRAMES = 6  # past the engines' windows: frames are thinned and dropped, anchors re-rotated

# (scheduler attribute, runner attribute) dicts keyed by request id that must empty
SCHEDULER_STATE = ("request_kv", "twin_of")
RUNNER_STATE = ("evicted_tokens", "dropped_frames", "pristine_anchor_keys", "canvases")


def scheduler_of(engine):
    return engine.llm_engine.engine_core.engine_core.scheduler


def held_ids(owner, names: tuple[str, ...]) -> dict[str, set[str]]:
    """name -> the ids its dict still holds, as given to ``add_request`` (the engine appends
    "-<8 hex digits>" to each; a twin counts as its request)."""
    from packcache_vllm.engine.twins import conditioned_id

    def given(engine_id: str) -> str:
        return conditioned_id(engine_id).rsplit("-", 1)[0]

    return {name: {given(r) for r in getattr(owner, name, {})} for name in names}


def run_with_aborts(engine, requests: dict[str, tuple], victims: set[str]) -> None:
    """Add every (prompt, SamplingParams) request, abort ``victims`` once each has generated
    some tokens, and step until the engine is idle."""
    for request_id, (prompt, params) in requests.items():
        engine.llm_engine.add_request(request_id, {"prompt_token_ids": prompt}, params)
    started: set[str] = set()
    while engine.llm_engine.has_unfinished_requests():
        for output in engine.llm_engine.step():
            if output.outputs[0].token_ids and not output.finished:
                started.add(output.request_id)
        leaving = sorted(victims & started)
        if leaving:
            engine.llm_engine.abort_request(leaving)
            victims -= set(leaving)


def flush(engine, prompt, params) -> None:
    """One more request to its end: the runner hears of the last step's finished requests only
    in a later step."""
    engine.llm_engine.add_request("flush", {"prompt_token_ids": prompt}, params)
    while engine.llm_engine.has_unfinished_requests():
        engine.llm_engine.step()


def assert_released(engine, request_ids: set[str]) -> None:
    held = {
        **held_ids(scheduler_of(engine), SCHEDULER_STATE),
        **held_ids(runner_of(engine), RUNNER_STATE),
    }
    leaked = {name: ids & request_ids for name, ids in held.items() if ids & request_ids}
    assert not leaked, f"per-request state still held at idle: {leaked}"
    assert not scheduler_of(engine).requests


@pytest.fixture(scope="module")
def next_token_engine(tiny_model_dir, llm):
    return make_packcache_llm(tiny_model_dir)


@pytest.fixture(scope="module")
def frame_parallel_engine(tiny_model_dir, llm):
    return make_ardf_llm(tiny_model_dir, "packcache", window=2, min_keep=0.5)


def test_next_token_state_released_after_finish_and_abort(
    next_token_engine, video_prompts, per_frame
):
    from vllm import SamplingParams

    def params(**extra_args):
        return SamplingParams(
            temperature=0.0,
            max_tokens=FRAMES * per_frame,
            ignore_eos=True,
            detokenize=False,
            extra_args=extra_args,
        )

    requests = {
        "plain": (video_prompts[0], params()),
        "key-norm": (video_prompts[1], params(packcache_selector="key_norm")),
        "narrow": (video_prompts[2], params(packcache_window=2)),
        "aborted": (video_prompts[0], params(packcache_window=2)),
        "aborted-key-norm": (video_prompts[2], params(packcache_selector="key_norm")),
    }
    run_with_aborts(next_token_engine, requests, {"aborted", "aborted-key-norm"})
    assert runner_of(next_token_engine).pristine_anchor_keys  # anchors were re-rotated
    flush(next_token_engine, video_prompts[1], params())
    assert_released(next_token_engine, set(requests))


def test_frame_parallel_state_released_after_finish_and_abort(
    frame_parallel_engine, video_prompts, per_frame
):
    requests = {
        f"{kind}-{i}": (video_prompts[i], vllm_params(sampler_params(i, cfg), FRAMES, per_frame))
        for i, cfg in enumerate((3.0, 1.0, 5.0))
        for kind in ("done", "aborted")
    }
    victims = {r for r in requests if r.startswith("aborted")}
    scheduler = scheduler_of(frame_parallel_engine)
    run_with_aborts(frame_parallel_engine, requests, victims)
    flush(frame_parallel_engine, *requests["done-1"])
    assert_released(frame_parallel_engine, set(requests))
    assert not scheduler.twin_of
