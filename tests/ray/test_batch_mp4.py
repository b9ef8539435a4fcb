"""The Ray Data batch job's ``--mp4``: one MP4 per request through the checkpoint's codec (the
trained palette checkpoint, one replica): each decodes to the generated frames' codes, and the
tokens are the dense reference's; a re-run renders a missing MP4 from the stored frames; a
checkpoint without a codec is refused before any replica starts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.scale.pipeline import run_batch
from packcache_vllm.train import MOTION_CHECKPOINT
from tests.engine.test_videos_api import decode_png, expected_codes, mp4_codes, reference_image
from tests.ray.test_batch import MIN_KEEP, WINDOW, make_job

CAPTIONS = {"image": "a red square", "text": "a red ball bounces"}


@pytest.fixture(scope="module")
def shape():
    from packcache_vllm.codec.spec import video_shape

    return video_shape(MOTION_CHECKPOINT, "192x128", "1")  # 4 frames of 8 x 12 codes


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory, shape):
    from packcache_vllm.codec.prompts import video_prompt
    from packcache_vllm.codec.spec import codec_for

    first = codec_for(MOTION_CHECKPOINT).encode(decode_png(reference_image()))
    lines = [
        {"id": "image", "frames": 3,
         "prompt_token_ids": video_prompt(MOTION_CHECKPOINT, CAPTIONS["image"], shape, first)},
        {"id": "text", "frames": 2,
         "prompt_token_ids": video_prompt(MOTION_CHECKPOINT, CAPTIONS["text"], shape, None)},
    ]  # fmt: skip
    path = tmp_path_factory.mktemp("mp4-requests") / "requests.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def mp4_run(ray_cluster, requests_file, tmp_path_factory):
    job = make_job(MOTION_CHECKPOINT, requests_file, tmp_path_factory.mktemp("out"), replicas=1)
    job = replace(job, write_mp4=True)
    return job, run_batch(job)


def test_one_mp4_per_request_reads_back_as_the_reference_video(mp4_run, requests_file, shape):
    import torch

    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel
    from packcache_vllm.scale.results import ResultStore

    job, report = mp4_run
    assert sorted(report.generated) == ["image", "text"]
    store = ResultStore(job.output_dir)
    reference = ReferenceVideoModel.from_pretrained(MOTION_CHECKPOINT)
    policy = PackCachePolicy(PackCacheConfig.preset("packcache", window=WINDOW, min_keep=MIN_KEEP))
    for line in requests_file.read_text().splitlines():
        request = json.loads(line)
        prompt = request["prompt_token_ids"]
        layout = reference.layout_for(prompt)
        expected = reference.generate(
            prompt, layout, request["frames"] * layout.tokens_per_frame, policy
        ).token_ids
        tokens = tuple(t for frame in store.read_frames(request["id"]) for t in frame)
        assert tokens == expected, request["id"]
        codes, frame_shape = mp4_codes((store.mp4 / f"{request['id']}.mp4").read_bytes())
        assert frame_shape == (request["frames"], shape.height, shape.width, 3)
        assert torch.equal(codes, expected_codes(None, expected, shape))


def test_a_rerun_writes_a_missing_mp4_from_the_stored_frames(mp4_run):
    from packcache_vllm.scale.results import ResultStore

    job, _ = mp4_run
    store = ResultStore(job.output_dir)
    movie = store.mp4 / "text.mp4"
    before, _ = mp4_codes(movie.read_bytes())
    movie.unlink()
    rerun = run_batch(job)
    assert rerun.generated == () and rerun.skipped == ("image", "text")
    after, _ = mp4_codes(movie.read_bytes())
    assert after.equal(before)
    assert not list(store.mp4.glob(".*"))  # no partial folder left


def test_mp4_needs_a_checkpoint_with_a_codec(ray_model_dir, tmp_path):
    requests = tmp_path / "ids.jsonl"
    requests.write_text(json.dumps({"id": "a", "prompt_token_ids": [5, 6], "frames": 1}) + "\n")
    job = replace(make_job(ray_model_dir, requests, tmp_path / "out"), write_mp4=True)
    with pytest.raises(ValueError, match="--mp4 needs a checkpoint with a codec: .*config.json"):
        run_batch(job)


def test_cli_flag_sets_the_option(ray_model_dir, requests_file, tmp_path):
    from packcache_vllm.scale.batch import build_parser, job_from_args

    argv = ["--model", str(ray_model_dir), "--requests", str(requests_file),
            "--output", str(tmp_path)]  # fmt: skip
    assert not job_from_args(build_parser().parse_args(argv)).write_mp4
    assert job_from_args(build_parser().parse_args([*argv, "--mp4"])).write_mp4
