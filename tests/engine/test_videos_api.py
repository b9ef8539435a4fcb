"""OpenAI's videos API on the real `vllm serve --kv-policy packcache` (endpoint plugin
``packcache_videos``), driven by the official ``openai`` client.

Two server starts in all: a next-token server (several videos at once, text-only and
image-to-video, each equal to the dense reference with the same policy; an image as a data URL;
listing, deleting, bad input, the cap on active jobs), then it is killed mid-video and a
frame-parallel server is started on the same job store
(finished videos survive, the cut-off job is failed with the reason, a frame-parallel
image-to-video equals the AR-DF reference).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.train import MOTION_CHECKPOINT
from tests.engine.test_serve import running_server

pytestmark = pytest.mark.server

WINDOW = 2
MAX_MODEL_LEN = 20000  # the cut-off job is far longer than the test waits for
LONG_SECONDS = "40"  # 160 frames x 108 tokens: still running when the server is killed
ARDF_CHECKPOINT = MOTION_CHECKPOINT.parent / "lumos-motion-8x12-ardf"
POLL_DEADLINE_S = 600
CELL_PIXELS = 16  # the default size of the palette checkpoints: 192x128
PALETTE_SIZE = 16


@contextlib.contextmanager
def videos_server(model_dir: Path, store: Path, log_path: Path, *flags: str, max_active=16):
    """`vllm serve` with the videos routes on and its jobs in ``store``; yields the /v1 URL.
    A server the test killed itself is already gone when the context ends."""
    settings = {"VLLM_PLUGINS": "packcache,packcache_videos", "PACKCACHE_VIDEOS_DIR": str(store),
                "PACKCACHE_VIDEOS_MAX_ACTIVE": str(max_active)}  # fmt: skip
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        server = running_server(model_dir, log_path, "--max-model-len", str(MAX_MODEL_LEN), *flags)
        url = server.__enter__()
    finally:
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    try:
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed by the test
            server.__exit__(None, None, None)


def kill_server(url: str) -> None:
    """SIGKILL the whole `vllm serve` process group listening on ``url``'s port (no clean-up)."""
    import psutil

    port = url.rsplit(":", 1)[1].split("/")[0]
    for child in psutil.Process().children(recursive=True):
        command = child.cmdline()
        if "serve" in command and port in command:
            group = os.getpgid(child.pid)
            assert group != os.getpgrp(), "the server must run in its own process group"
            os.killpg(group, signal.SIGKILL)
            return
    raise AssertionError(f"no vllm serve on port {port} among this process's children")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos-store")


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("serve-videos") / "serve.log"
    flags = ("--kv-policy", "packcache", "--packcache-window", str(WINDOW))
    with videos_server(MOTION_CHECKPOINT, store, log_path, *flags, max_active=MAX_ACTIVE) as url:
        yield url


def client_for(url: str):
    import warnings

    from openai import OpenAI

    warnings.filterwarnings("ignore", category=DeprecationWarning, module=__name__)
    return OpenAI(base_url=url, api_key="unused", max_retries=0)


def wait_for(client, video_id: str, done) -> object:
    """Poll until ``done(video)``; every answer's frames_done never goes back."""
    deadline = time.monotonic() + POLL_DEADLINE_S
    seen = -1
    while time.monotonic() < deadline:
        video = client.videos.retrieve(video_id)
        frames_done = video.model_extra["packcache"]["frames_done"]
        assert frames_done >= seen
        seen = frames_done
        if done(video):
            return video
        time.sleep(0.5)
    raise TimeoutError(f"video {video_id} still {video.status} after {POLL_DEADLINE_S} s")


def finished(video) -> bool:
    return video.status in ("completed", "failed")


def reference_image() -> bytes:
    """A 192x128 PNG: teal background, a red square, an orange bar (palette colours)."""
    from PIL import Image

    pixels = np.zeros((128, 192, 3), np.uint8)
    pixels[:] = (40, 110, 110)
    pixels[32:64, 48:80] = (220, 50, 47)
    pixels[96:112, 16:176] = (245, 140, 30)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def mp4_codes(data: bytes):
    """MP4 bytes -> codes [T, rows, cols] (the palette codec reads each cell back) and the
    frames' shape."""
    import imageio.v3 as iio

    from packcache_vllm.codec.palette import PaletteCodec

    frames = iio.imread(data, extension=".mp4")
    return PaletteCodec(CELL_PIXELS).encode(frames), frames.shape


def decode_png(png: bytes) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(png)


def expected_codes(first_codes, generated: tuple[int, ...], shape):
    """The codes an MP4 of the input_reference's codes (if any) and the generated token ids
    reads back as: invalid cells are painted INVALID_RGB, read back as its nearest colour."""
    from packcache_vllm.codec.palette import PaletteCodec
    from packcache_vllm.videos.driver import video_frames

    codec = PaletteCodec(CELL_PIXELS)
    frames = video_frames(first_codes, list(generated), shape.rows, shape.cols, PALETTE_SIZE)
    if first_codes is not None:  # the trained checkpoints continue an image in valid codes
        assert frames.valid.all()
    return codec.encode(codec.decode_frames(frames))


REQUESTS = [
    {"prompt": "a red ball bounces off the wall", "seconds": "2"},
    {"prompt": "two squares drift", "seconds": "2", "extra_body": {"packcache": {"window": 3}}},
    {"prompt": "a red square", "seconds": "2", "input_reference": True},
]
MAX_ACTIVE = len(REQUESTS)  # the first server's PACKCACHE_VIDEOS_MAX_ACTIVE: REQUESTS all fit


def make_at_once(url: str, requests: list[dict]) -> list:
    """The requests, all sent at once and polled to completion: [(request, Video)]."""
    client = client_for(url)

    def create(request: dict):
        if request.get("input_reference"):
            request = {**request, "input_reference": ("ref.png", reference_image(), "image/png")}
        return client.videos.create(**request)

    with ThreadPoolExecutor(len(requests)) as pool:
        created = list(pool.map(create, requests))
    assert all(video.status == "queued" for video in created)
    return [(r, wait_for(client, v.id, finished)) for r, v in zip(requests, created, strict=True)]


@pytest.fixture(scope="module")
def made(server):
    return make_at_once(server, REQUESTS)


def check_videos_equal_the_dense_reference(url: str, made: list, store: Path, window: int):
    """Each made video's tokens (codes.json) and MP4 are the dense reference's with PackCache at
    ``window`` (or the request's own ``window`` knob)."""
    import torch

    from packcache_vllm.codec.prompts import video_prompt
    from packcache_vllm.codec.spec import codec_for, video_shape
    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel

    client = client_for(url)
    reference = ReferenceVideoModel.from_pretrained(MOTION_CHECKPOINT)
    for request, video in made:
        assert (video.status, video.progress, video.error) == ("completed", 100, None)
        shape = video_shape(MOTION_CHECKPOINT, video.size, video.seconds)
        first = None
        if request.get("input_reference"):
            codec = codec_for(MOTION_CHECKPOINT, shape.cell_pixels)
            first = codec.encode(decode_png(reference_image()))
        prompt = video_prompt(MOTION_CHECKPOINT, request["prompt"], shape, first)
        knobs = request.get("extra_body", {}).get("packcache", {})
        config = PackCacheConfig.preset("packcache", window=knobs.get("window", window))
        layout = reference.layout_for(prompt)
        num_frames = shape.num_frames - (0 if first is None else len(first))
        expected = reference.generate(
            prompt, layout, num_frames * layout.tokens_per_frame, PackCachePolicy(config)
        )
        stored = json.loads((store / video.id / "codes.json").read_text())
        assert tuple(stored["token_ids"]) == expected.token_ids
        codes = expected_codes(first, expected.token_ids, shape)
        served, frame_shape = mp4_codes(client.videos.download_content(video.id).read())
        assert frame_shape == (shape.num_frames, shape.height, shape.width, 3)
        assert torch.equal(served, codes)
        extra = video.model_extra["packcache"]
        assert (extra["frames_done"], extra["frames_total"]) == (num_frames, num_frames)


def test_videos_equal_the_dense_reference(server, made, store):
    check_videos_equal_the_dense_reference(server, made, store, WINDOW)


def test_thumbnail_and_spritesheet(server, made):
    import imageio.v3 as iio

    from packcache_vllm.codec.palette import PaletteCodec

    client = client_for(server)
    for request, video in made:
        movie, _ = mp4_codes(client.videos.download_content(video.id).read())
        thumbnail = iio.imread(client.videos.download_content(video.id, variant="thumbnail").read())
        first_generated = int(bool(request.get("input_reference")))
        assert thumbnail.shape == (128, 192, 3)
        assert PaletteCodec(CELL_PIXELS).encode(thumbnail)[0].equal(movie[first_generated])
        sheet = iio.imread(client.videos.download_content(video.id, variant="spritesheet").read())
        assert sheet.shape == (128, len(movie) * (192 + 4) - 4, 3)


def test_list_pages_and_delete(server, made):
    client = client_for(server)
    ids = [video.id for _, video in made]
    newest_first = [video.id for video in client.videos.list(limit=1)]  # one page per video
    assert sorted(newest_first) == sorted(ids)
    oldest_first = [video.id for video in client.videos.list(order="asc", limit=2)]
    assert oldest_first == newest_first[::-1]
    page = client.videos.list(limit=1, order="asc")
    assert page.has_more and page.last_id == oldest_first[0]
    extra = client.videos.create(prompt="a short one", seconds="1")
    wait_for(client, extra.id, finished)
    deleted = client.videos.delete(extra.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (extra.id, True, "video.deleted")
    assert extra.id not in [video.id for video in client.videos.list()]
    with pytest.raises(Exception, match="404") as caught:
        client.videos.retrieve(extra.id)
    assert extra.id in str(caught.value)


def test_deleting_a_running_video_aborts_it_in_the_engine(server):
    from tests.engine.test_ardf_serve import total, wait_until_idle
    from tests.engine.test_serve import scrape_metrics

    client = client_for(server)
    long = client.videos.create(prompt="a long slow pan", seconds=LONG_SECONDS)
    wait_for(client, long.id, lambda v: v.model_extra["packcache"]["frames_done"] >= 1)
    assert total(scrape_metrics(server), "vllm:num_requests_running") == 1
    client.videos.delete(long.id)
    wait_until_idle(server)  # no running request, the KV cache empty
    assert long.id not in [video.id for video in client.videos.list()]


def test_past_the_cap_on_active_jobs_a_new_video_is_429(server, made):
    """MAX_ACTIVE long videos, then one more. A job once finished is never active again, so the
    long ones, all still queued or in progress after the answer, were all active when it came."""
    from tests.engine.test_ardf_serve import wait_until_idle

    client = client_for(server)
    held = [client.videos.create(prompt="a long slow pan", seconds=LONG_SECONDS)
            for _ in range(MAX_ACTIVE)]  # fmt: skip
    try:
        with pytest.raises(Exception) as caught:
            client.videos.create(prompt="one too many", seconds="1")
        statuses = [client.videos.retrieve(video.id).status for video in held]
    finally:
        for video in held:
            client.videos.delete(video.id)
    assert set(statuses) <= {"queued", "in_progress"}, statuses
    assert caught.value.status_code == 429
    assert f"{MAX_ACTIVE} videos are queued or in progress" in caught.value.message
    assert f"PACKCACHE_VIDEOS_MAX_ACTIVE={MAX_ACTIVE}" in caught.value.message
    wait_until_idle(server)  # the deleted jobs are aborted in the engine
    video = client.videos.create(prompt="room again", seconds="1")
    assert wait_for(client, video.id, finished).status == "completed"


def data_url(image: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(image).decode()


def test_a_data_url_input_reference_is_the_first_frame(server, store):
    """The image as a data URL (OpenAI's ``{"image_url": ...}`` reference) in a JSON body and as
    the form field ``input_reference[image_url]`` (curl -F; the openai client's
    ``videos.create`` uploads only files): both videos start with the image's codes and, greedy,
    are the same video. A malformed data URL, one of no image, or another URL: 400."""
    import httpx
    import torch

    from packcache_vllm.codec.spec import codec_for

    client = client_for(server)
    url = data_url(reference_image())
    fields = {"prompt": "a red square", "seconds": "1"}
    as_json = httpx.post(
        f"{server}/videos", json={**fields, "input_reference": {"image_url": url}}, timeout=60
    )
    as_form = httpx.post(
        f"{server}/videos", data={**fields, "input_reference[image_url]": url}, timeout=60
    )
    first = codec_for(MOTION_CHECKPOINT, CELL_PIXELS).encode(decode_png(reference_image()))
    tokens = []
    for created in (as_json, as_form):
        assert created.status_code == 200, created.text
        video = wait_for(client, created.json()["id"], finished)
        assert video.status == "completed", video.error
        assert video.model_extra["packcache"]["input_reference"] is True
        served, frame_shape = mp4_codes(client.videos.download_content(video.id).read())
        assert frame_shape == (4, 128, 192, 3)
        assert torch.equal(served[:1], first)
        tokens.append(json.loads((store / video.id / "codes.json").read_text())["token_ids"])
    assert tokens[0] == tokens[1] and len(tokens[0]) == 3 * 108
    for bad, message in (
        ("data:image/png;base64,not base64!", "input_reference data URL"),
        (data_url(b"GIF89a"), "input_reference is not a readable image"),
        ("https://example.com/a.png", "input_reference must be an uploaded image file or {"),
    ):
        refused = httpx.post(
            f"{server}/videos", json={**fields, "input_reference": {"image_url": bad}}, timeout=60
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "input_reference"
        assert message in refused.json()["error"]["message"]


def test_command_line_client_writes_the_files(server, tmp_path, capsys):
    import imageio.v3 as iio

    from packcache_vllm.videos.client import main

    image = tmp_path / "first.png"
    image.write_bytes(reference_image())
    stem = tmp_path / "out" / "square"
    main(["--url", server, "--prompt", "a red square", "--seconds", "1", "--image", str(image),
          "--knob", "window=3", "--out", str(stem)])  # fmt: skip
    assert iio.imread(stem.with_suffix(".mp4"), extension=".mp4").shape == (4, 128, 192, 3)
    assert iio.imread(stem.with_name("square-thumbnail.png")).shape == (128, 192, 3)
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="refused: .*size must be one of"):
        main(["--url", server, "--prompt", "x", "--size", "1x1", "--out", str(stem)])


BAD_REQUESTS = [
    ({"prompt": "  "}, 400, "prompt must be a non-empty caption"),
    ({"prompt": "x", "model": "sora-2"}, 404, "'sora-2' does not exist"),
    ({"prompt": "x", "size": "720x1280"}, 400, "size must be one of ['192x128', '96x64'"),
    ({"prompt": "x", "seconds": "1.5"}, 400, "seconds must be a whole number in [1, "),
    ({"prompt": "x", "seconds": "60"}, 400, "max_model_len is 20000"),
    ({"prompt": "x" * 5000}, 400, "caption too long"),
    ({"prompt": "x", "extra_body": {"packcache": {"window": 0}}}, 400, "packcache_window"),
    ({"prompt": "x", "extra_body": {"packcache": {"decay": 2}}}, 400, "(0, 1]"),
    ({"prompt": "x", "extra_body": {"packcache": {"guidance": 3}}}, 400, "unknown packcache knob"),
    ({"prompt": "x", "extra_body": {"packcache": {"cfg_scale": 3}}}, 400, "next-token mode"),
    ({"prompt": "x", "extra_body": {"packcache": {"mode": "frame-parallel"}}}, 400, "runs 'next"),
    ({"prompt": "x", "input_reference": ("a.png", b"not an image", "image/png")}, 400, "readable"),
    ({"prompt": "x", "input_reference": "square"}, 400, "aspect must match size 192x128"),
]


@pytest.mark.parametrize(("request_fields", "status", "message"), BAD_REQUESTS)
def test_bad_input_is_4xx_naming_it(server, request_fields, status, message):
    from PIL import Image

    client = client_for(server)
    if request_fields.get("input_reference") == "square":
        out = io.BytesIO()
        Image.new("RGB", (64, 64)).save(out, format="PNG")
        request_fields = {**request_fields, "input_reference": ("sq.png", out.getvalue())}
    with pytest.raises(Exception) as caught:
        client.videos.create(**request_fields)
    assert caught.value.status_code == status
    assert message in caught.value.message


def test_unknown_ids_and_bad_listing_are_4xx(server):
    client = client_for(server)
    for call in (
        lambda: client.videos.retrieve("video_nope"),
        lambda: client.videos.download_content("video_nope"),
        lambda: client.videos.delete("video_nope"),
        lambda: client.videos.list(after="video_nope"),
    ):
        with pytest.raises(Exception) as caught:
            call()
        assert caught.value.status_code == 404
        assert "'video_nope'" in caught.value.message
    with pytest.raises(Exception) as caught:
        client.videos.list(limit=1000)
    assert caught.value.status_code == 400 and "limit" in caught.value.message


def test_restart_keeps_finished_videos_and_fails_the_cut_off_one(
    server, made, store, tmp_path_factory
):
    """Last in the module: kills the module's server."""
    client = client_for(server)
    movies = {video.id: client.videos.download_content(video.id).read() for _, video in made}
    long = client.videos.create(prompt="a long slow pan", seconds=LONG_SECONDS)
    # progress is a whole percent of the frames done: 1 % once 2 of the 160 frames are done
    running = wait_for(client, long.id, lambda v: v.progress >= 1)
    assert running.status == "in_progress" and running.progress < 100
    assert running.model_extra["packcache"]["frames_done"] >= 2
    with pytest.raises(Exception) as caught:
        client.videos.download_content(long.id)
    assert caught.value.status_code == 404 and "not ready" in caught.value.message
    kill_server(server)

    log_path = tmp_path_factory.mktemp("serve-videos-restart") / "serve.log"
    flags = ("--kv-policy", "packcache", "--packcache-window", str(WINDOW),
             "--packcache-mode", "frame-parallel")  # fmt: skip
    with videos_server(ARDF_CHECKPOINT, store, log_path, *flags) as url:
        client = client_for(url)
        listed = {video.id: video for video in client.videos.list()}
        for video_id, movie in movies.items():
            assert listed[video_id].status == "completed"
            assert client.videos.download_content(video_id).read() == movie
        cut_off = client.videos.retrieve(long.id)
        assert cut_off.status == "failed"
        assert cut_off.error.code == "server_stopped"
        assert "stopped before this video was finished" in cut_off.error.message
        check_frame_parallel_video(client, url)


FRAME_PARALLEL_KNOBS = {"steps_per_frame": 4, "cfg_scale": 2.0, "seed": 7}  # guided: twins run


def check_frame_parallel_video(client, url: str):
    """An image-to-video in frame-parallel mode (guided: both twins) equals the AR-DF
    reference with the same policy and sampler knobs; returns the finished Video."""
    import torch

    from packcache_vllm.codec.prompts import video_prompt
    from packcache_vllm.codec.spec import codec_for, video_shape
    from packcache_vllm.core.maskgit import ARDFSamplingParams
    from packcache_vllm.reference import ReferenceVideoModel
    from packcache_vllm.reference_ardf import generate_ardf

    knobs = FRAME_PARALLEL_KNOBS
    video = client.videos.create(
        prompt="a red square moves right",
        seconds="1",
        input_reference=("ref.png", reference_image(), "image/png"),
        extra_body={"packcache": knobs},
    )
    video = wait_for(client, video.id, finished)
    assert video.status == "completed", video.error
    shape = video_shape(ARDF_CHECKPOINT, video.size, video.seconds)
    first = codec_for(ARDF_CHECKPOINT, shape.cell_pixels).encode(decode_png(reference_image()))
    prompt = video_prompt(ARDF_CHECKPOINT, video.prompt, shape, first)
    reference = ReferenceVideoModel.from_pretrained(ARDF_CHECKPOINT)
    params = ARDFSamplingParams().with_overrides(knobs)
    config = PackCacheConfig.preset("packcache", window=WINDOW)
    expected = generate_ardf(reference, prompt, shape.num_frames - 1, params, config)
    codes = expected_codes(first, expected.token_ids, shape)
    served, _ = mp4_codes(client.videos.download_content(video.id).read())
    assert torch.equal(served, codes)
    return video
