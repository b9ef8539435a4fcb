"""PackCache inside vLLM: with eviction active, every generated token equals the dense reference's.

One in-process engine with ``--kv-policy packcache`` (W=3, min_keep 1/4: frames are thinned to
1/2 and 1/4 and then dropped well before the end), three concurrent requests of different prompt
and video lengths in one batch, float32 greedy decoding of 8-10 frames each; the reference applies
the same policy explicitly.
"""

from __future__ import annotations

import pytest

from packcache_vllm.core.budget import PackCacheConfig
from tests.engine.conftest import PACKCACHE_MIN_KEEP as MIN_KEEP
from tests.engine.conftest import PACKCACHE_WINDOW as WINDOW

FRAMES = (8, 10, 9)


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    from packcache_vllm.reference import ReferenceVideoModel

    return ReferenceVideoModel.from_pretrained(tiny_model_dir)


def test_evicting_engine_matches_reference(packcache_llm, reference, video_prompts):
    from vllm import SamplingParams

    from packcache_vllm.reference import PackCachePolicy

    config = PackCacheConfig.preset("packcache", window=WINDOW, min_keep=MIN_KEEP)
    layouts = [reference.layout_for(p) for p in video_prompts]
    lengths = [
        frames * layout.tokens_per_frame for frames, layout in zip(FRAMES, layouts, strict=True)
    ]
    params = [
        SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False)
        for n in lengths
    ]
    outputs = packcache_llm.generate(
        [{"prompt_token_ids": p} for p in video_prompts], params, use_tqdm=False
    )
    for prompt, layout, n, output in zip(video_prompts, layouts, lengths, outputs, strict=True):
        expected = reference.generate(prompt, layout, n, PackCachePolicy(config)).token_ids
        generated = tuple(output.outputs[0].token_ids)
        mismatch = next(
            (i for i, (a, b) in enumerate(zip(generated, expected, strict=False)) if a != b), None
        )
        assert generated == expected, f"request {output.request_id}: first mismatch at {mismatch}"


def test_eviction_changes_the_output(packcache_llm, llm, video_prompts, per_frame):
    """Teeth: the evicting engine must differ from the full cache, or the oracle proves little."""
    from vllm import SamplingParams

    params = SamplingParams(
        temperature=0.0, max_tokens=8 * per_frame, ignore_eos=True, detokenize=False
    )
    prompt = [{"prompt_token_ids": video_prompts[0]}]
    packed = packcache_llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
    full = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
    first_eviction = (
        WINDOW + 1
    ) * per_frame  # fill phase: W frames whole; the (W+1)-th completes it
    assert packed[:first_eviction] == full[:first_eviction]
    assert packed != full


def test_window_longer_than_the_video_equals_stock_vllm(
    packcache_llm, llm, video_prompts, per_frame
):
    """Equivalence: the plugin's scheduler and runner with nothing to evict change nothing."""
    from vllm import SamplingParams

    def params(**extra_args):
        return SamplingParams(
            temperature=0.0,
            max_tokens=6 * per_frame,
            ignore_eos=True,
            detokenize=False,
            extra_args=extra_args,
        )

    prompts = [{"prompt_token_ids": p} for p in video_prompts]
    ours = packcache_llm.generate(prompts, params(packcache_window=64), use_tqdm=False)
    stock = llm.generate(prompts, params(), use_tqdm=False)
    for a, b in zip(ours, stock, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids


def test_per_request_override_is_applied(packcache_llm, reference, video_prompts):
    """``extra_args`` (``vllm_xargs`` over HTTP) can change the window of one request."""
    from vllm import SamplingParams

    from packcache_vllm.reference import PackCachePolicy

    prompt, layout = video_prompts[1], reference.layout_for(video_prompts[1])
    n = 7 * layout.tokens_per_frame
    params = SamplingParams(
        temperature=0.0,
        max_tokens=n,
        ignore_eos=True,
        detokenize=False,
        extra_args={"packcache_window": 2, "packcache_min_keep": 0.5},
    )
    out = packcache_llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    config = PackCacheConfig.preset("packcache", window=2, min_keep=0.5)
    expected = reference.generate(prompt, layout, n, PackCachePolicy(config)).token_ids
    assert tuple(out[0].outputs[0].token_ids) == expected


def test_key_norm_selector_matches_reference(packcache_llm, reference, video_prompts):
    """``key_norm`` reads the cached keys of each frame as it completes (in the worker), and
    every token still equals the reference's with that selector; teeth: at least one video
    differs from the reference with the uniform selector, so the frames were thinned by key."""
    from vllm import SamplingParams

    from packcache_vllm.reference import PackCachePolicy

    knobs = {"window": 2, "min_keep": 0.25}
    layouts = [reference.layout_for(p) for p in video_prompts]
    lengths = [f * layout.tokens_per_frame for f, layout in zip(FRAMES, layouts, strict=True)]
    params = [
        SamplingParams(
            temperature=0.0,
            max_tokens=n,
            ignore_eos=True,
            detokenize=False,
            extra_args={"packcache_selector": "key_norm"}
            | {f"packcache_{k}": v for k, v in knobs.items()},
        )
        for n in lengths
    ]
    outputs = packcache_llm.generate(
        [{"prompt_token_ids": p} for p in video_prompts], params, use_tqdm=False
    )
    by_key = PackCacheConfig.preset("packcache", selector="key_norm", **knobs)
    uniform = PackCacheConfig.preset("packcache", **knobs)
    differs_from_uniform = []
    for prompt, layout, n, output in zip(video_prompts, layouts, lengths, outputs, strict=True):
        generated = tuple(output.outputs[0].token_ids)
        expected = reference.generate(prompt, layout, n, PackCachePolicy(by_key)).token_ids
        assert generated == expected, f"request {output.request_id}"
        spread = reference.generate(prompt, layout, n, PackCachePolicy(uniform)).token_ids
        differs_from_uniform.append(generated != spread)
    assert any(differs_from_uniform)


@pytest.mark.parametrize(
    ("extra_args", "message"),
    [
        ({"packcache_window": 0}, "window"),
        ({"packcache_decay": 1.5}, "decay"),
        ({"packcache_windw": 2}, "packcache_windw"),
        ({"packcache_selector": "by_norm"}, "by_norm"),
    ],
)
def test_bad_request_override_is_rejected_up_front(
    packcache_llm, video_prompts, extra_args, message
):
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=4, detokenize=False, extra_args=extra_args)
    with pytest.raises(ValueError, match=message):
        packcache_llm.generate([{"prompt_token_ids": video_prompts[0]}], params, use_tqdm=False)


def test_prompt_that_is_not_a_video_is_rejected_and_others_continue(packcache_llm, video_prompts):
    from vllm import SamplingParams

    broken = video_prompts[0][:-5]  # a conditioning frame cut short
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, detokenize=False)
    with pytest.raises(ValueError, match="not a video prompt"):
        packcache_llm.generate([{"prompt_token_ids": broken}], params, use_tqdm=False)
    again = packcache_llm.generate([{"prompt_token_ids": video_prompts[2]}], params, use_tqdm=False)
    assert len(again[0].outputs[0].token_ids) == 40
