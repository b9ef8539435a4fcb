"""`vllm serve ... --kv-policy dedupe` through the OpenAI client: concurrent video requests, one
with its own threshold in ``vllm_xargs``, each token for token equal to the dense reference with
the same policy (the worker reads two frames' cached keys in the real multi-process engine); a
bad knob is an HTTP 400 naming it, and the server keeps serving."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from packcache_vllm.core.policies import make_policy
from tests.engine.test_serve import LONG_MAX_MODEL_LEN, running_server, video_tokens

pytestmark = pytest.mark.server

KNOBS = {"window": 3, "min_keep": 0.25, "threshold": 0.1}  # see test_policy_oracle.py
FRAMES = 7
OVERRIDES = [{}, {"packcache_threshold": 0.2}, {}]


@pytest.fixture(scope="module")
def dedupe_server(tiny_model_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("serve-dedupe") / "serve.log"
    flags = ("--kv-policy", "dedupe", "--packcache-window", str(KNOBS["window"]),
             "--packcache-min-keep", str(KNOBS["min_keep"]),
             "--packcache-threshold", str(KNOBS["threshold"]),
             "--max-model-len", str(LONG_MAX_MODEL_LEN))  # fmt: skip
    with running_server(tiny_model_dir, log_path, *flags) as url:
        yield url


def test_concurrent_requests_match_reference(dedupe_server, tiny_model_dir, video_prompts):
    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel

    reference = ReferenceVideoModel.from_pretrained(tiny_model_dir)
    layouts = [reference.layout_for(p) for p in video_prompts]
    num_tokens = FRAMES * layouts[0].tokens_per_frame

    def ask(prompt_and_xargs) -> list[int]:
        prompt, xargs = prompt_and_xargs
        return video_tokens(dedupe_server, tiny_model_dir, prompt, num_tokens, vllm_xargs=xargs)

    with ThreadPoolExecutor(len(video_prompts)) as pool:
        served = list(pool.map(ask, zip(video_prompts, OVERRIDES, strict=True)))
    cases = zip(video_prompts, layouts, OVERRIDES, served, strict=True)
    for prompt, layout, xargs, tokens in cases:
        knobs = {**KNOBS, **{k.removeprefix("packcache_"): v for k, v in xargs.items()}}
        policy = PackCachePolicy(make_policy("dedupe", **knobs))
        expected = reference.generate(prompt, layout, num_tokens, policy).token_ids
        assert tuple(tokens) == expected


@pytest.mark.parametrize(
    ("xargs", "message"),
    [
        ({"packcache_threshold": 1.5}, "threshold"),
        ({"packcache_sinks": 1}, r"has no knob\(s\) \['sinks'\]"),
    ],
)
def test_bad_knob_is_http_400_and_the_server_keeps_serving(
    dedupe_server, tiny_model_dir, video_prompts, xargs, message
):
    import openai

    client = openai.OpenAI(base_url=dedupe_server, api_key="unused")
    model = str(tiny_model_dir)
    with pytest.raises(openai.BadRequestError, match=message):
        client.completions.create(
            model=model, prompt=video_prompts[0], max_tokens=4, extra_body={"vllm_xargs": xargs}
        )
    reply = client.completions.create(
        model=model, prompt=video_prompts[1], max_tokens=8, temperature=0.0
    )
    assert reply.usage.completion_tokens == 8
