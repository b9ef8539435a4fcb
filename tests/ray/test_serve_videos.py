"""OpenAI's videos API on the Ray Serve application (``packcache_vllm.scale.serve:build_app``),
driven by the official ``openai`` client exactly as against `vllm serve`.

One application on the session's local Ray cluster (2 CPUs): one LLM replica of 1 CPU with
PackCache W=2 on the trained palette checkpoint, the ingress holding the job store. An
image-to-video and a text-only video made at once equal the dense reference token for token and
read back from their MP4s as the reference's codes; list, thumbnail, spritesheet and delete; bad
input refused with a 4xx naming it, in the ingress (size) and in the LLM replica (a knob).
"""

from __future__ import annotations

import socket

import pytest

from packcache_vllm.train import MOTION_CHECKPOINT
from tests.engine.test_videos_api import (
    check_videos_equal_the_dense_reference,
    client_for,
    decode_png,
    make_at_once,
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
def serve_url(ray_cluster, store):
    from ray import serve

    from packcache_vllm.scale.serve import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {
        "model_id": MODEL_ID,
        "model_source": str(MOTION_CHECKPOINT),
        "kv_policy": "packcache",
        "packcache": {"window": WINDOW},
        "engine_kwargs": {
            "dtype": "float32",
            "max_model_len": 2048,
            "kv_cache_memory_bytes": 64 << 20,
            "max_num_seqs": 4,
        },
        "autoscaling": {"max_replicas": 1},
        "videos_dir": str(store),
    }
    serve.run(build_app(args), name="videos", route_prefix="/", blocking=False)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        serve.shutdown()


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


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"prompt": "x", "size": "1x1"}, 400, "size must be one of ['192x128'"),  # the ingress
        ({"prompt": "x", "extra_body": {"packcache": {"window": 0}}}, 400, "packcache_window"),
        ({"prompt": "x", "seconds": "8"}, 400, "max_model_len is 2048"),  # the LLM replica
    ],
)
def test_bad_input_is_4xx_naming_it(serve_url, fields, status, message):
    client = client_for(serve_url)
    with pytest.raises(Exception) as caught:
        client.videos.create(**fields)
    assert caught.value.status_code == status
    assert message in caught.value.message
