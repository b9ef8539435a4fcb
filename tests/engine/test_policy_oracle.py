"""The KV policies of ``core.policies`` inside vLLM: with eviction active, every generated token
equals the dense reference's with the same policy applied.

One in-process engine per policy (``--kv-policy NAME`` with small knobs, so frames are dropped
or thinned well before the end), three concurrent requests of different prompt and video
lengths in one batch, one of them with a per-request knob override; float32 greedy decoding.
Teeth: for each policy, at least one video differs from the reference under a neighbouring
policy (sink-window without its sinks, dedupe's and salience's budget with the uniform selector,
geometric vs PackCache's own budget), so the oracle tells the policies apart.
"""

from __future__ import annotations

import pytest

from packcache_vllm.core.policies import make_policy, with_knobs
from tests.engine.conftest import POLICY_ENGINE_SETTINGS, keep_alive

FRAMES = (8, 10, 9)
CASES = {
    # policy: (engine knobs, request 1's override, the neighbour the engine must differ from)
    "sink-window": (
        {"sinks": 1, "window": 2},
        {"packcache_sinks": 2},
        ("sink-window", {"sinks": 0, "window": 2}),
    ),
    "geometric": (
        {"decay": 0.5, "floor": 0.25},
        {"packcache_floor": 0.125},
        ("packcache", {"window": 3, "min_keep": 0.25}),
    ),
    "dedupe": (
        # The tiny random model's same-cell key similarities lie in about [-0.3, 0.4].
        {"window": 3, "min_keep": 0.25, "threshold": 0.1},
        {"packcache_threshold": 0.2},
        ("packcache", {"window": 3, "min_keep": 0.25}),
    ),
    "salience": (
        {"window": 3, "min_keep": 0.25},
        {"packcache_min_keep": 0.5},
        ("packcache", {"window": 3, "min_keep": 0.25}),
    ),
}
BAD_REQUEST_KNOBS = [
    ("sink-window", {"packcache_sinks": -1}, "sinks"),
    ("sink-window", {"packcache_decay": 0.5}, r"has no knob\(s\) \['decay'\]"),
    ("geometric", {"packcache_floor": 0}, "floor"),
    ("geometric", {"packcache_window": 2}, r"has no knob\(s\) \['window'\]"),
    ("dedupe", {"packcache_threshold": 1.5}, "threshold"),
    ("dedupe", {"packcache_selector": "key_norm"}, r"has no knob\(s\) \['selector'\]"),
    ("salience", {"packcache_decay": 0}, "decay"),
    ("salience", {"packcache_threshold": 0.5}, r"has no knob\(s\) \['threshold'\]"),
]
_ENGINES: dict[str, object] = {}


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    from packcache_vllm.reference import ReferenceVideoModel

    return ReferenceVideoModel.from_pretrained(tiny_model_dir)


def policy_llm(name: str, model_dir):
    """The in-process engine of ``--kv-policy name`` with its case's knobs (one per policy,
    kept for the session)."""
    if name not in _ENGINES:
        from vllm import LLM

        from packcache_vllm.cli import engine_overrides

        overrides = engine_overrides(name, **CASES[name][0])
        _ENGINES[name] = keep_alive(LLM(str(model_dir), **POLICY_ENGINE_SETTINGS, **overrides))
    return _ENGINES[name]


def expected_tokens(reference, prompt, num_tokens, config) -> tuple[int, ...]:
    from packcache_vllm.reference import PackCachePolicy

    layout = reference.layout_for(prompt)
    return reference.generate(prompt, layout, num_tokens, PackCachePolicy(config)).token_ids


@pytest.mark.parametrize("name", list(CASES))
def test_evicting_engine_matches_reference(name, tiny_model_dir, llm, reference, video_prompts):
    from vllm import SamplingParams

    knobs, override, (neighbour, neighbour_knobs) = CASES[name]
    per_frame = [reference.layout_for(p).tokens_per_frame for p in video_prompts]
    lengths = [frames * f for frames, f in zip(FRAMES, per_frame, strict=True)]
    extra = [{}, override, {}]
    params = [
        SamplingParams(
            temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False, extra_args=args
        )
        for n, args in zip(lengths, extra, strict=True)
    ]
    outputs = policy_llm(name, tiny_model_dir).generate(
        [{"prompt_token_ids": p} for p in video_prompts], params, use_tqdm=False
    )
    config = make_policy(name, **knobs)
    differs_from_neighbour = []
    for prompt, n, args, output in zip(video_prompts, lengths, extra, outputs, strict=True):
        generated = tuple(output.outputs[0].token_ids)
        own = with_knobs(config, **{k.removeprefix("packcache_"): v for k, v in args.items()})
        expected = expected_tokens(reference, prompt, n, own)
        pairs = enumerate(zip(generated, expected, strict=False))
        mismatch = next((i for i, (a, b) in pairs if a != b), None)
        assert generated == expected, f"{name} {output.request_id}: first mismatch at {mismatch}"
        other = make_policy(neighbour, **neighbour_knobs)
        differs_from_neighbour.append(generated != expected_tokens(reference, prompt, n, other))
    assert any(differs_from_neighbour)


@pytest.mark.parametrize(("name", "extra_args", "message"), BAD_REQUEST_KNOBS)
def test_bad_request_knob_is_rejected_up_front(name, extra_args, message, tiny_model_dir, llm,
                                               video_prompts):  # fmt: skip
    from vllm import SamplingParams

    engine = policy_llm(name, tiny_model_dir)
    params = SamplingParams(max_tokens=4, detokenize=False, extra_args=extra_args)
    with pytest.raises(ValueError, match=message):
        engine.generate([{"prompt_token_ids": video_prompts[0]}], params, use_tqdm=False)
    fine = SamplingParams(max_tokens=4, ignore_eos=True, detokenize=False)
    again = engine.generate([{"prompt_token_ids": video_prompts[2]}], fine, use_tqdm=False)
    assert len(again[0].outputs[0].token_ids) == 4
