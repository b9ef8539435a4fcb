"""`vllm serve ... --kv-policy packcache` through the OpenAI client: several concurrent video
requests, each token-for-token equal to the dense reference with the same policy applied."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.layout import LUMOS_TOKENS
from tests.engine.test_serve import (
    LONG_MAX_MODEL_LEN,
    running_server,
    scrape_metrics,
    video_tokens,
)

pytestmark = pytest.mark.server

WINDOW, MIN_KEEP, FRAMES = 3, 0.25, 7


@pytest.fixture(scope="module")
def packcache_server(tiny_model_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("serve-packcache") / "serve.log"
    flags = ("--kv-policy", "packcache", "--packcache-window", str(WINDOW),
             "--packcache-min-keep", str(MIN_KEEP),
             "--max-model-len", str(LONG_MAX_MODEL_LEN))  # fmt: skip
    with running_server(tiny_model_dir, log_path, *flags) as url:
        yield url, log_path


def test_concurrent_requests_match_reference(packcache_server, tiny_model_dir, video_prompts):
    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel

    url, log_path = packcache_server
    reference = ReferenceVideoModel.from_pretrained(tiny_model_dir)
    layouts = [reference.layout_for(p) for p in video_prompts]
    num_tokens = FRAMES * layouts[0].tokens_per_frame

    def ask(prompt: list[int]) -> list[int]:
        return video_tokens(url, tiny_model_dir, prompt, num_tokens)

    with ThreadPoolExecutor(len(video_prompts)) as pool:
        served = list(pool.map(ask, video_prompts))
    config = PackCacheConfig.preset("packcache", window=WINDOW, min_keep=MIN_KEEP)
    expected = [
        reference.generate(prompt, layout, num_tokens, PackCachePolicy(config))
        for prompt, layout in zip(video_prompts, layouts, strict=True)
    ]
    for tokens, result in zip(served, expected, strict=True):
        assert tuple(tokens) == result.token_ids
    assert "PackCacheScheduler" in log_path.read_text()
    check_metrics_match_reference(scrape_metrics(url), expected)


def check_metrics_match_reference(samples, expected) -> None:
    """/metrics after the videos finished: what was evicted and dropped, the frames that
    re-packed a cache, and each cache's peak equal the dense reference's (its last step attended
    to the final cache; a step attended to the whole cache before that frame's eviction), and no
    request is running."""
    from itertools import pairwise

    def total(name: str) -> float:
        return sum(value for _, value in samples[name])

    last_steps = [result.steps[-1] for result in expected]
    evicted = [[s.index - len(s.kept_indices) for s in result.steps] for result in expected]
    assert total("packcache:evicted_tokens_total") == sum(e[-1] for e in evicted)
    assert total("packcache:request_evicted_tokens_sum") == sum(e[-1] for e in evicted)
    assert total("packcache:compactions_total") == sum(
        later > earlier for e in evicted for earlier, later in pairwise(e)
    )
    peaks = [max(len(s.kept_indices) for s in result.steps) for result in expected]
    assert total("packcache:request_peak_physical_tokens_sum") == sum(peaks)
    assert total("packcache:request_peak_physical_tokens_count") == len(expected)
    assert total("packcache:max_request_physical_tokens") == 0  # nothing runs
    assert total("packcache:dropped_frames_total") == sum(s.dropped_frames for s in last_steps)
    assert total("packcache:blocks_freed_total") > 0
    assert total("packcache:moved_tokens_total") > 0
    # every completed frame; the last frame's last token is sampled, never fed back
    assert total("packcache:frames_completed_total") == len(expected) * (FRAMES - 1)
    assert total("packcache:preemptions_total") == 0


def test_bad_requests_get_http_400_and_the_server_keeps_serving(
    packcache_server, tiny_model_dir, video_prompts
):
    import openai

    url, _ = packcache_server
    client = openai.OpenAI(base_url=url, api_key="unused")
    model = str(tiny_model_dir)
    with pytest.raises(openai.BadRequestError, match="window"):
        client.completions.create(
            model=model,
            prompt=video_prompts[0],
            max_tokens=4,
            extra_body={"vllm_xargs": {"packcache_window": 0}},
        )
    with pytest.raises(openai.BadRequestError, match="not a video prompt"):
        client.completions.create(model=model, prompt=video_prompts[0][:-5], max_tokens=4)
    reply = client.completions.create(
        model=model,
        prompt=video_prompts[1],
        max_tokens=8,
        temperature=0.0,
        extra_body={"vllm_xargs": {"packcache_window": 2}},
    )
    assert reply.usage.completion_tokens == 8


def test_door_limits_are_http_400_naming_the_check_and_the_server_keeps_serving(
    packcache_server, tiny_model_dir, video_prompts, per_frame
):
    """Text longer than the position codes carry (the engine would die computing its
    positions), a JSON boolean for a knob (vLLM's schema would read it as 1), a frame of the
    right length with a misplaced token: each a 400 saying which check failed and where."""
    import openai

    url, _ = packcache_server
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)

    def ask(prompt: list[int], **xargs):
        extra_body = {"ignore_eos": True, "vllm_xargs": xargs}
        return client.completions.create(
            model=str(tiny_model_dir), prompt=prompt, max_tokens=per_frame, extra_body=extra_body
        )

    long_text = r"at most 4,095 text tokens before the first frame, this prompt has 4,096"
    with pytest.raises(openai.BadRequestError, match=long_text):
        ask([300] * 4096)
    boolean = r"vllm_xargs\['packcache_window'\] must be a number or a name, got the boolean true"
    with pytest.raises(openai.BadRequestError, match=boolean):
        ask(video_prompts[0], packcache_window=True)
    misplaced = list(video_prompts[0])
    newline = misplaced.index(LUMOS_TOKENS.newline)  # row 0's, in the conditioning frame
    misplaced[newline] = LUMOS_TOKENS.visual_base
    with pytest.raises(openai.BadRequestError, match=r"frame 0 .*expected <newline> \(8803\) "
                                                     r"ending row 0, got 65536"):  # fmt: skip
        ask(misplaced)
    assert ask(video_prompts[1], packcache_window=2).usage.completion_tokens == per_frame


def test_key_norm_request_over_http_matches_reference(
    packcache_server, tiny_model_dir, video_prompts
):
    """``vllm_xargs`` selects key_norm for one request on the multi-process server; its plans
    (frames to order by their cached keys) reach the worker, and it equals the reference."""
    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel

    url, _ = packcache_server
    reference = ReferenceVideoModel.from_pretrained(tiny_model_dir)
    prompt = video_prompts[2]
    layout = reference.layout_for(prompt)
    num_tokens = FRAMES * layout.tokens_per_frame
    xargs = {"packcache_selector": "key_norm"}
    served = video_tokens(url, tiny_model_dir, prompt, num_tokens, vllm_xargs=xargs)
    config = PackCacheConfig.preset(
        "packcache", window=WINDOW, min_keep=MIN_KEEP, selector="key_norm"
    )
    expected = reference.generate(prompt, layout, num_tokens, PackCachePolicy(config))
    assert tuple(served) == expected.token_ids


def test_video_client_writes_the_served_video(
    packcache_server, tiny_model_dir, frame_grid, tmp_path
):
    """`python -m packcache_vllm.video.client` against the live server: a progress bar per frame,
    the video files, and generated tokens equal to the dense reference's for the scene prompt."""
    import json
    import subprocess
    import sys

    import imageio.v3 as iio

    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel
    from packcache_vllm.video.render import DEFAULT_CELL_PIXELS, STRIP_GAP_PIXELS

    url, _ = packcache_server
    rows, cols = frame_grid
    frames = WINDOW + 3  # past the window: the served video was compacted
    stem = tmp_path / "video"
    command = [sys.executable, "-m", "packcache_vllm.video.client", "--url", url,
               "--scene", "client-0", "--frames", str(frames), "--rows", str(rows),
               "--cols", str(cols), "--out", str(stem)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{frames}/{frames}" in done.stderr  # the progress bar reached the last frame
    width = cols * DEFAULT_CELL_PIXELS  # the strip: the first frame, then every generated one
    strip_width = iio.imread(stem.with_name("video-strip.png")).shape[1]
    assert strip_width == (frames + 1) * (width + STRIP_GAP_PIXELS) - STRIP_GAP_PIXELS
    assert stem.with_suffix(".mp4").stat().st_size > 0 and stem.with_suffix(".gif").is_file()
    record = json.loads(stem.with_suffix(".json").read_text())
    reference = ReferenceVideoModel.from_pretrained(tiny_model_dir)
    config = PackCacheConfig.preset("packcache", window=WINDOW, min_keep=MIN_KEEP)
    expected = reference.generate(
        record["prompt"],
        reference.layout_for(record["prompt"]),
        len(record["generated"]),
        PackCachePolicy(config),
    )
    assert tuple(record["generated"]) == expected.token_ids


def post_completion(url: str, body: dict):
    import httpx

    return httpx.post(f"{url}/completions", json=body, timeout=120)


def test_streamed_refusals_are_the_http_400_a_plain_request_gets(
    packcache_server, tiny_model_dir, video_prompts, per_frame
):
    """vLLM runs its input processor, where the door checks live, inside a streamed request's
    stream: a refusal would be HTTP 200 and then an error event. Each streamed refusal here is
    the same HTTP 400, body for body, as the plain request's: a bad knob value, text longer than
    the position codes carry (token ids, and text through the server's tokenizer), an id past
    the codebook, a malformed frame; nothing is logged as a stream error, and a good streamed
    request on the same server still streams."""
    import json
    import re

    url, log_path = packcache_server
    log_before = len(log_path.read_text())
    config = json.loads((tiny_model_dir / "config.json").read_text())
    past_the_codebook = LUMOS_TOKENS.visual_base + config["codebook_size"]
    video = video_prompts[0]
    misplaced = list(video)
    misplaced[misplaced.index(LUMOS_TOKENS.newline)] = LUMOS_TOKENS.visual_base
    refused = [
        ({"prompt": video, "vllm_xargs": {"packcache_window": 0}}, r"window"),
        ({"prompt": [300] * 4096}, r"at most 4,095 text tokens before the first frame, this "
                                   r"prompt has 4,096"),
        ({"prompt": "a" * 5000}, r"at most 4,095 text tokens before the first frame, this "
                                 r"prompt has 5,00\d \(it has no frame"),
        ({"prompt": [*video[:-1], past_the_codebook]}, rf"\b{past_the_codebook}\b"),
        ({"prompt": misplaced}, r"frame 0 .*expected <newline> \(8803\) ending row 0, got 65536"),
    ]  # fmt: skip
    base = {"model": str(tiny_model_dir), "max_tokens": per_frame, "ignore_eos": True}
    for fields, message in refused:
        plain = post_completion(url, {**base, **fields})
        streamed = post_completion(url, {**base, **fields, "stream": True})
        assert (plain.status_code, streamed.status_code) == (400, 400), streamed.text[:300]
        assert streamed.json() == plain.json()
        assert re.search(message, streamed.json()["error"]["message"])
    good = {**base, "prompt": video_prompts[1], "vllm_xargs": {"packcache_window": 2},
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    streamed = post_completion(url, good)
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in streamed.text.splitlines() if line]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == per_frame
    assert "Error in completion stream generator" not in log_path.read_text()[log_before:]
