"""`vllm serve ... --kv-policy packcache --packcache-mode frame-parallel` through the OpenAI
client: concurrent whole-video requests (two with guidance, so with hidden twins), each equal to
the dense AR-DF reference with the same policy; a bad sampler knob is an HTTP 400."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from packcache_vllm.core.budget import PackCacheConfig
from tests.engine.test_ardf_oracle import sampler_params
from tests.engine.test_serve import running_server

pytestmark = pytest.mark.server

WINDOW, MIN_KEEP, FRAMES = 2, 0.5, 4
GUIDANCE = (3.0, 1.0, 5.0)
# Room for a video long enough that the server cannot finish it before an impatient client
# leaves, however fast the machine (the policy keeps the physical cache bounded regardless).
MAX_MODEL_LEN = 32768
# A pool of 1,280 blocks of the tiny model (1 KiB of KV per token): one max-length request
# fits (vLLM's start-up check), a max-length request with its guidance twin does not.
KV_CACHE_BYTES = 40 << 20


@pytest.fixture(scope="module")
def ardf_server(tiny_model_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("serve-ardf") / "serve.log"
    flags = ("--kv-policy", "packcache", "--packcache-window", str(WINDOW),
             "--packcache-min-keep", str(MIN_KEEP),
             "--packcache-mode", "frame-parallel",
             "--max-model-len", str(MAX_MODEL_LEN),
             "--kv-cache-memory-bytes", str(KV_CACHE_BYTES))  # fmt: skip
    with running_server(tiny_model_dir, log_path, *flags) as url:
        yield url, log_path


def xargs(params) -> dict:
    knobs = {
        "ardf_steps_per_frame": params.steps_per_frame,
        "ardf_cfg_scale": params.cfg_scale,
        "ardf_seed": params.seed,
    }
    if params.top_k is not None:  # JSON has no "None" for vllm_xargs: left out, the default
        knobs["ardf_top_k"] = params.top_k
    return knobs


def test_concurrent_videos_match_reference(ardf_server, tiny_model_dir, video_prompts, per_frame):
    from openai import OpenAI

    from packcache_vllm.reference import ReferenceVideoModel
    from packcache_vllm.reference_ardf import generate_ardf

    url, log_path = ardf_server
    client = OpenAI(base_url=url, api_key="unused")
    params = [sampler_params(i, cfg) for i, cfg in enumerate(GUIDANCE)]

    def ask(i: int) -> list[int]:
        reply = client.completions.create(
            model=str(tiny_model_dir),
            prompt=video_prompts[i],
            max_tokens=FRAMES * per_frame,
            extra_body={
                "return_token_ids": True,
                "ignore_eos": True,
                "vllm_xargs": xargs(params[i]),
            },
        )
        return list(reply.choices[0].token_ids)

    with ThreadPoolExecutor(len(video_prompts)) as pool:
        served = list(pool.map(ask, range(len(video_prompts))))
    reference = ReferenceVideoModel.from_pretrained(tiny_model_dir)
    config = PackCacheConfig.preset("packcache", window=WINDOW, min_keep=MIN_KEEP)
    for i, tokens in enumerate(served):
        expected = generate_ardf(reference, video_prompts[i], FRAMES, params[i], config)
        assert tuple(tokens) == expected.token_ids, f"request {i}"
    assert "ARDFScheduler" in log_path.read_text()


def test_bad_knob_is_http_400_and_the_server_keeps_serving(
    ardf_server, tiny_model_dir, video_prompts, per_frame
):
    import openai

    url, _ = ardf_server
    client = openai.OpenAI(base_url=url, api_key="unused")
    with pytest.raises(openai.BadRequestError, match=r"steps_per_frame must be an integer"):
        client.completions.create(
            model=str(tiny_model_dir),
            prompt=video_prompts[0],
            max_tokens=per_frame,
            extra_body={"vllm_xargs": {"ardf_steps_per_frame": 0}},
        )
    with pytest.raises(openai.BadRequestError, match=r"multiple of the frame size"):
        client.completions.create(
            model=str(tiny_model_dir), prompt=video_prompts[0], max_tokens=per_frame + 1
        )
    reply = client.completions.create(
        model=str(tiny_model_dir),
        prompt=video_prompts[1],
        max_tokens=per_frame,
        extra_body={"ignore_eos": True, "vllm_xargs": {"ardf_steps_per_frame": 2, "ardf_seed": 1}},
    )
    assert reply.usage.completion_tokens == per_frame


def test_long_text_and_boolean_knobs_are_http_400_in_frame_parallel_mode(
    ardf_server, tiny_model_dir, per_frame
):
    """Text longer than Lumos-1's position codes carry, and a JSON boolean for a sampler knob
    (vLLM's schema would read it as 1), are refused at the door; the server keeps serving."""
    import openai

    url, _ = ardf_server
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)

    def ask(prompt: list[int], **knobs):
        return client.completions.create(
            model=str(tiny_model_dir),
            prompt=prompt,
            max_tokens=per_frame,
            extra_body={"ignore_eos": True, "vllm_xargs": {"ardf_cfg_scale": 1, **knobs}},
        )

    long_text = r"at most 4,095 text tokens before the first frame, this prompt has 4,096"
    with pytest.raises(openai.BadRequestError, match=long_text):
        ask([300] * 4096)
    boolean = r"vllm_xargs\['ardf_steps_per_frame'\] must be a number or a name, got the boolean"
    with pytest.raises(openai.BadRequestError, match=boolean):
        ask([300] * 8, ardf_steps_per_frame=True)
    assert ask([300] * 8, ardf_steps_per_frame=2).usage.completion_tokens == per_frame


def test_guided_request_that_can_never_fit_is_http_400(
    ardf_server, tiny_model_dir, video_prompts, per_frame
):
    """The API server knows the engine's pool size (vLLM's ready handshake): a guided video
    that fits alone but never with its twin is a 400 naming both sizes, not a request that
    waits forever; the server keeps serving."""
    import openai
    from vllm.utils.math_utils import cdiv

    from packcache_vllm.reference_ardf import unconditional_prompt
    from tests.engine.test_serve import scrape_metrics

    url, _ = ardf_server
    [(info, _)] = scrape_metrics(url)["vllm:cache_config_info"]
    usable, block = int(info["num_gpu_blocks"]) - 1, int(info["block_size"])
    prompt = video_prompts[0]
    new_tokens = (MAX_MODEL_LEN - len(prompt)) // per_frame * per_frame
    request_tokens = len(prompt) + new_tokens
    twin_tokens = len(unconditional_prompt(prompt)) + new_tokens
    blocks = cdiv(request_tokens, block) + cdiv(twin_tokens, block)
    assert cdiv(request_tokens, block) <= usable < blocks
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
    never_fits = (
        rf"footprint is {blocks} blocks of {block} tokens for {request_tokens} tokens \(the "
        rf"request\) \+ {twin_tokens} tokens \(its CFG twin\), the pool holds {usable} usable"
    )
    xargs_whole = {"ardf_cfg_scale": 3.0, "packcache_window": 2000}  # nothing evicted
    with pytest.raises(openai.BadRequestError, match=never_fits):
        client.completions.create(
            model=str(tiny_model_dir),
            prompt=prompt,
            max_tokens=new_tokens,
            extra_body={"ignore_eos": True, "vllm_xargs": xargs_whole},
        )
    reply = client.completions.create(
        model=str(tiny_model_dir),
        prompt=prompt,
        max_tokens=per_frame,
        extra_body={"ignore_eos": True, "vllm_xargs": {"ardf_steps_per_frame": 2}},
    )
    assert reply.usage.completion_tokens == per_frame


def test_abort_over_http_frees_both_twins_and_caches_stay_bounded(
    ardf_server, tiny_model_dir, video_prompts, per_frame
):
    """A long guided video streamed while /metrics is sampled: vLLM counts one running request
    (its twin is hidden), the caches stay within their bound as the video grows; the client then
    disconnects mid-video, the server ends up with no running request and an empty KV cache
    (both twins' blocks returned), and each twin's peak lands in the per-cache histogram."""
    from openai import OpenAI

    from tests.engine.test_serve import scrape_metrics

    url, _ = ardf_server
    frames = (MAX_MODEL_LEN - len(video_prompts[0])) // per_frame  # still running when we leave
    before = scrape_metrics(url)
    params = {**xargs(sampler_params(0, cfg_scale=3.0)), "ardf_steps_per_frame": 8}
    stream = OpenAI(base_url=url, api_key="unused").completions.create(
        model=str(tiny_model_dir),
        prompt=video_prompts[0],
        max_tokens=frames * per_frame,
        stream=True,
        extra_body={"ignore_eos": True, "vllm_xargs": params},
    )
    bound = len(video_prompts[0]) + (WINDOW + 1) * per_frame
    physical, running = [], []
    for frames_seen, _ in enumerate(stream, start=1):  # a commit streams its whole frame at once
        samples = scrape_metrics(url)
        physical.append(total(samples, "packcache:max_request_physical_tokens"))
        running.append(total(samples, "vllm:num_requests_running"))
        if frames_seen == 6:  # past the window (W = 2): disconnect mid-video
            break
    stream.close()
    wait_until_idle(url)
    assert 0 < max(physical) <= bound, (physical, bound)
    assert max(running) == 1, running  # the guided request, not its hidden twin as well
    after = scrape_metrics(url)
    for cache in ("request", "cfg_twin"):  # one finished cache each: the sum is its peak
        assert grew(before, after, "packcache:request_peak_physical_tokens_count", cache) == 1
        peak = grew(before, after, "packcache:request_peak_physical_tokens_sum", cache)
        assert 0 < peak <= bound, (cache, peak, bound)
    frames_done = grew(before, after, "packcache:frames_completed_total")
    assert frames_done < 2 * (frames - 1), "the video ran to the end: nothing was aborted"


def total(samples, name: str, cache: str | None = None) -> float:
    """A metric summed over its samples (those of one ``cache`` label value, if given)."""
    found = samples.get(name, [])
    return sum(value for labels, value in found if cache is None or labels["cache"] == cache)


def grew(before, after, name: str, cache: str | None = None) -> float:
    return total(after, name, cache) - total(before, name, cache)


def wait_until_idle(url: str, timeout_s: float = 60) -> None:
    import time

    from tests.engine.test_serve import scrape_metrics

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = scrape_metrics(url)
        running = total(samples, "vllm:num_requests_running")
        usage = total(samples, "vllm:kv_cache_usage_perc")
        held = total(samples, "packcache:max_request_physical_tokens")
        if running == 0 and usage == 0 and held == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"server not idle after the abort: running={running}, kv usage={usage}")
