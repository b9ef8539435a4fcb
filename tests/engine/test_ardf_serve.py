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


@pytest.fixture(scope="module")
def ardf_server(tiny_model_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("serve-ardf") / "serve.log"
    flags = ("--kv-policy", "packcache", "--packcache-window", str(WINDOW),
             "--packcache-min-keep", str(MIN_KEEP),
             "--packcache-mode", "frame-parallel",
             "--max-model-len", str(MAX_MODEL_LEN))  # fmt: skip
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


def test_abort_over_http_frees_both_twins_and_caches_stay_bounded(
    ardf_server, tiny_model_dir, video_prompts, per_frame
):
    """A long guided video streamed while /metrics is sampled: each twin's cache stays within its
    bound as the video grows; the client then disconnects mid-video, and the server ends up with
    no running request and an empty KV cache (both twins' blocks returned)."""
    from openai import OpenAI

    from tests.engine.test_serve import scrape_metrics

    url, _ = ardf_server
    frames = (MAX_MODEL_LEN - len(video_prompts[0])) // per_frame  # still running when we leave
    compactions_before = total(scrape_metrics(url), "packcache:compactions_total")
    params = {**xargs(sampler_params(0, cfg_scale=3.0)), "ardf_steps_per_frame": 8}
    stream = OpenAI(base_url=url, api_key="unused").completions.create(
        model=str(tiny_model_dir),
        prompt=video_prompts[0],
        max_tokens=frames * per_frame,
        stream=True,
        extra_body={"ignore_eos": True, "vllm_xargs": params},
    )
    bound = len(video_prompts[0]) + (WINDOW + 1) * per_frame
    physical: dict[str, int] = {}
    for frames_seen, _ in enumerate(stream, start=1):  # a commit streams its whole frame at once
        for labels, value in scrape_metrics(url).get("packcache:request_physical_tokens", []):
            request = labels["request_id"]
            physical[request] = max(physical.get(request, 0), int(value))
        if frames_seen == 6:  # past the window (W = 2): disconnect mid-video
            break
    stream.close()
    wait_until_idle(url)
    assert any(request.endswith("#uncond") for request in physical), physical
    assert all(0 < tokens <= bound for tokens in physical.values()), (physical, bound)
    compactions = total(scrape_metrics(url), "packcache:compactions_total") - compactions_before
    assert compactions < 2 * (frames - 1), "the video ran to the end: nothing was aborted"


def total(samples, name: str) -> float:
    return sum(value for _, value in samples.get(name, []))


def wait_until_idle(url: str, timeout_s: float = 60) -> None:
    import time

    from tests.engine.test_serve import scrape_metrics

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = scrape_metrics(url)
        running = total(samples, "vllm:num_requests_running")
        usage = total(samples, "vllm:kv_cache_usage_perc")
        if running == 0 and usage == 0 and not samples.get("packcache:request_physical_tokens"):
            return
        time.sleep(0.5)
    raise AssertionError(f"server not idle after the abort: running={running}, kv usage={usage}")
