"""OpenAI's videos API on the Ray Serve application (``packcache_vllm.scale.serve:build_app``),
driven by the official ``openai`` client exactly as against `vllm serve`.

One application on the session's local Ray cluster (2 CPUs): one LLM replica of 1 CPU with
PackCache W=2 on the trained palette checkpoint, the ingress holding the job store. An
image-to-video and a text-only video made at once equal the dense reference token for token and
read back from their MP4s as the reference's codes; list, thumbnail, spritesheet and delete (a
running video deleted is aborted in the LLM replica's engine); bad input refused with a 4xx
naming it, in the ingress (size) and in the LLM replica (a knob); the application's other OpenAI
routes still served.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import pytest

from packcache_vllm.metrics import METRICS_DIR_ENV, read_snapshots
from packcache_vllm.train import MOTION_CHECKPOINT
from tests.engine.test_videos_api import (
    check_videos_equal_the_dense_reference,
    client_for,
    decode_png,
    finished,
    make_at_once,
    wait_for,
)

WINDOW = 2
MODEL_ID = "lumos-motion"
REQUESTS = [
    {"prompt": "a red square", "seconds": "2", "input_reference": True},
    {"prompt": "a red ball bounces off the wall", "seconds": "1"},
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("ray-videos-store")


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory):
    """The LLM replica's PackCache snapshots (``packcache_vllm.metrics``)."""
    return tmp_path_factory.mktemp("ray-videos-metrics")


def app_args(model_dir: Path, packcache: dict, store: Path, **more) -> dict:
    """``build_app``'s args: one LLM replica of ``model_dir`` with PackCache's ``packcache``
    knobs (and mode), float32, a small KV cache; the videos in ``store``."""
    return {
        "model_id": MODEL_ID,
        "model_source": str(model_dir),
        "kv_policy": "packcache",
        "packcache": packcache,
        "engine_kwargs": {
            "dtype": "float32",
            "max_model_len": 4096,
            "kv_cache_memory_bytes": 64 << 20,
            "max_num_seqs": 4,
        },
        "autoscaling": {"max_replicas": 1},
        "videos_dir": str(store),
        **more,
    }


@contextlib.contextmanager
def running_app(args: dict):
    """The application built from ``args`` on Ray Serve (local cluster); yields its /v1 URL."""
    from ray import serve

    from packcache_vllm.scale.serve import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="videos", route_prefix="/", blocking=False)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def serve_url(ray_cluster, store, metrics_dir):
    env_vars = {METRICS_DIR_ENV: str(metrics_dir)}
    args = app_args(MOTION_CHECKPOINT, {"window": WINDOW}, store, env_vars=env_vars)
    with running_app(args) as url:
        yield url


@pytest.fixture(scope="module")
def made(serve_url):
    return make_at_once(serve_url, REQUESTS)


def test_videos_equal_the_dense_reference(serve_url, made, store):
    check_videos_equal_the_dense_reference(serve_url, made, store, WINDOW)
    assert {video.model for _, video in made} == {MODEL_ID}


def test_list_variants_and_delete(serve_url, made):
    client = client_for(serve_url)
    ids = [video.id for _, video in made]
    oldest_first = [video.id for video in client.videos.list(order="asc")]
    assert sorted(oldest_first) == sorted(ids)  # created at once: in the order they arrived
    assert [video.id for video in client.videos.list(limit=1).data] == oldest_first[-1:]
    video_id = ids[0]
    thumbnail = decode_png(client.videos.download_content(video_id, variant="thumbnail").read())
    sheet = decode_png(client.videos.download_content(video_id, variant="spritesheet").read())
    assert thumbnail.shape == (128, 192, 3)
    assert sheet.shape == (128, 8 * (192 + 4) - 4, 3)
    deleted = client.videos.delete(ids[-1])
    assert (deleted.id, deleted.deleted) == (ids[-1], True)
    with pytest.raises(Exception) as caught:
        client.videos.retrieve(ids[-1])
    assert caught.value.status_code == 404 and repr(ids[-1]) in caught.value.message


def wait_until(condition, what: str, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {what} after {timeout_s} s")
        time.sleep(0.5)


def test_deleting_a_running_video_aborts_it_in_the_llm_replica(serve_url, metrics_dir):
    """The replica's engine drops the request: its PackCache scheduler reports no running cache
    (published when a request's blocks are freed) after fewer frames than the same video made
    to the end completes there."""

    def engine() -> tuple[int, int]:  # (frames completed ever, largest running cache)
        snapshots = read_snapshots(metrics_dir)
        frames = sum(snapshot.counters.frames_completed for snapshot in snapshots)
        return frames, max((s.max_request_physical_tokens for s in snapshots), default=0)

    def frames_of(video_id: str, delete: bool) -> int:
        frames_before, _ = engine()
        if delete:
            wait_for(client, video_id, lambda v: v.model_extra["packcache"]["frames_done"] >= 1)
            wait_until(lambda: engine()[1] > 0, "running in the replica's engine")
            client.videos.delete(video_id)
        else:
            assert wait_for(client, video_id, finished).status == "completed"
        wait_until(lambda: engine()[1] == 0, "gone from the replica's engine")
        return engine()[0] - frames_before

    client = client_for(serve_url)
    long = {"prompt": "a long slow pan", "seconds": "8"}  # 32 frames
    deleted = client.videos.create(**long)
    aborted = frames_of(deleted.id, delete=True)
    assert deleted.id not in [video.id for video in client.videos.list()]
    whole = frames_of(client.videos.create(**long).id, delete=False)
    assert 1 <= aborted < whole


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"prompt": "x", "size": "1x1"}, 400, "size must be one of ['192x128'"),  # the ingress
        ({"prompt": "x", "extra_body": {"packcache": {"window": 0}}}, 400, "packcache_window"),
        ({"prompt": "x", "seconds": "10"}, 400, "max_model_len is 4096"),  # the LLM replica
    ],
)
def test_bad_input_is_4xx_naming_it(serve_url, fields, status, message):
    client = client_for(serve_url)
    with pytest.raises(Exception) as caught:
        client.videos.create(**fields)
    assert caught.value.status_code == status
    assert message in caught.value.message


def test_the_openai_routes_are_still_served(serve_url):
    """The videos routes come on top of Ray Serve LLM's: /v1/models and a /v1/completions of
    token ids (the dense reference's tokens) on the same application."""
    import httpx

    from packcache_vllm.codec.prompts import video_prompt
    from packcache_vllm.codec.spec import video_shape
    from packcache_vllm.core.budget import PackCacheConfig
    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel

    models = httpx.get(f"{serve_url}/models", timeout=60).json()
    assert [model["id"] for model in models["data"]] == [MODEL_ID]
    shape = video_shape(MOTION_CHECKPOINT, "192x128", "1")
    prompt = video_prompt(MOTION_CHECKPOINT, "a red ball", shape, None)
    reference = ReferenceVideoModel.from_pretrained(MOTION_CHECKPOINT)
    layout = reference.layout_for(prompt)
    max_tokens = 2 * layout.tokens_per_frame
    body = {"model": MODEL_ID, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True}  # fmt: skip
    reply = httpx.post(f"{serve_url}/completions", json=body, timeout=600)
    assert reply.status_code == 200, reply.text
    policy = PackCachePolicy(PackCacheConfig.preset("packcache", window=WINDOW))
    expected = reference.generate(prompt, layout, max_tokens, policy).token_ids
    assert tuple(reply.json()["choices"][0]["token_ids"]) == expected
