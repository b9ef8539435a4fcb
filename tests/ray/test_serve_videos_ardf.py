"""OpenAI's videos API on the Ray Serve application in frame-parallel mode (Lumos-1's AR-DF).

The mode is the engine's (``packcache: {mode: frame-parallel}`` in the app's args, as
``--packcache-mode`` on `vllm serve`), so it is an application of its own: one LLM replica of
1 CPU with PackCache W=2 on the AR-DF palette checkpoint. A guided image-to-video (cfg_scale
2: each frame also runs the unconditional twin) made with the official ``openai`` client equals
the AR-DF reference with the same knobs and seed, read back from its MP4; knobs of the other mode
and bad sampler knobs are refused with a 4xx naming them.
"""

from __future__ import annotations

import pytest

from tests.engine.test_videos_api import (
    ARDF_CHECKPOINT,
    FRAME_PARALLEL_KNOBS,
    WINDOW,
    check_frame_parallel_video,
)
from tests.ray.test_serve_videos import app_args, client_for, running_app

FRAME_PARALLEL = {"window": WINDOW, "mode": "frame-parallel"}


@pytest.fixture(scope="module")
def serve_url(ray_cluster, tmp_path_factory):
    store = tmp_path_factory.mktemp("ray-videos-ardf-store")
    with running_app(app_args(ARDF_CHECKPOINT, FRAME_PARALLEL, store)) as url:
        yield url


def test_a_guided_image_to_video_equals_the_ardf_reference(serve_url):
    video = check_frame_parallel_video(client_for(serve_url), serve_url)
    extra = video.model_extra["packcache"]
    assert (video.status, video.progress, video.error) == ("completed", 100, None)
    assert (extra["frames_done"], extra["frames_total"]) == (3, 3)  # 1 s: 4 frames, 1 given
    assert extra["input_reference"] is True
    assert extra["knobs"] == {**FRAME_PARALLEL_KNOBS, "mode": "frame-parallel"}


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"mode": "next-token"}, "this server runs 'frame-parallel'"),  # the ingress
        ({"steps_per_frame": 0}, "steps_per_frame must be an integer [1, 1000], got 0"),  # replica
    ],
)
def test_bad_knobs_are_400_naming_them(serve_url, knobs, message):
    client = client_for(serve_url)
    with pytest.raises(Exception) as caught:
        client.videos.create(prompt="x", extra_body={"packcache": knobs})
    assert caught.value.status_code == 400
    assert message in caught.value.message
