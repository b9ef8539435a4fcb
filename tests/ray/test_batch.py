"""The batch pipeline on a local Ray cluster: 2 replicas of 1 CPU, tiny model, float32 greedy.

Every video equals the dense reference's with the same policy (eviction active: W=3, frames
thinned to 1/2 and 1/4, then dropped); every replica evicted; a re-run skips what is finished and
regenerates only what an interruption lost; a model that cannot load fails the job with its cause,
and so does a replica whose engine refuses a batch; caption prompts and given token ids are checked
against the checkpoint's own codebook before any replica starts.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.scale.pipeline import ReplicaError, run_batch
from packcache_vllm.scale.settings import BatchJob, EngineSettings, ReplicaResources

WINDOW, MIN_KEEP = 3, 0.25
FRAMES = (7, 6, 8, 6)
OVERRIDES = ({}, {"window": 2, "min_keep": 0.5}, {}, {})


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory, ray_model_dir):
    from packcache_vllm.model.factory import make_video_prompt

    config = json.loads((ray_model_dir / "config.json").read_text())
    rng = random.Random(3)
    lines = []
    for n, (frames, overrides) in enumerate(zip(FRAMES, OVERRIDES, strict=True)):
        text = [4 + b for b in f"clip {n}".encode()]
        prompt = make_video_prompt(
            config["video_rows"],
            config["video_cols"],
            text,
            with_condition_frame=n % 2 == 0,
            rng=rng,
        )
        request = {"id": f"clip-{n}", "prompt_token_ids": prompt, "frames": frames}
        lines.append(json.dumps({**request, **({"packcache": overrides} if overrides else {})}))
    path = tmp_path_factory.mktemp("requests") / "requests.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_job(model_dir, requests_file, output_dir, *, replicas=2, **engine) -> BatchJob:
    settings = EngineSettings(
        model=model_dir,
        dtype="float32",
        kv_cache_bytes=64 << 20,
        max_model_len=4096,
        knobs={"window": WINDOW, "min_keep": MIN_KEEP},
        **engine,
    )
    return BatchJob(
        requests_path=requests_file,
        output_dir=output_dir,
        engine=settings,
        replicas=replicas,
        resources=ReplicaResources(cpus=1),
        batch_size=2,
    )


@pytest.fixture(scope="module")
def first_run(ray_cluster, ray_model_dir, requests_file, tmp_path_factory):
    job = make_job(ray_model_dir, requests_file, tmp_path_factory.mktemp("out"))
    return job, run_batch(job)


def test_every_video_equals_the_reference(first_run, ray_model_dir, requests_file):
    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel
    from packcache_vllm.scale.results import ResultStore

    job, report = first_run
    store = ResultStore(job.output_dir)
    assert sorted(report.generated) == [f"clip-{n}" for n in range(len(FRAMES))]
    reference = ReferenceVideoModel.from_pretrained(ray_model_dir)
    base = PackCacheConfig.preset("packcache", window=WINDOW, min_keep=MIN_KEEP)
    for line in requests_file.read_text().splitlines():
        request = json.loads(line)
        prompt, layout = (
            request["prompt_token_ids"],
            reference.layout_for(request["prompt_token_ids"]),
        )
        config = replace(base, **request.get("packcache", {}))
        n = request["frames"] * layout.tokens_per_frame
        expected = reference.generate(prompt, layout, n, PackCachePolicy(config)).token_ids
        frames = store.read_frames(request["id"])
        assert len(frames) == request["frames"]
        assert tuple(t for frame in frames for t in frame) == expected, request["id"]


def test_every_replica_evicted(first_run):
    job, report = first_run
    assert len(report.replicas) == job.replicas
    for replica in report.replicas:
        assert replica["videos"], f"replica {replica['replica']} got no request"
        assert replica["counters"]["evicted_tokens"] > 0, replica
        assert replica["counters"]["blocks_freed"] > 0, replica
    summary = json.loads(report.summary_path.read_text())
    assert [r["replica"] for r in summary["replicas"]] == [r["replica"] for r in report.replicas]


def test_rerun_skips_finished_and_redoes_what_was_lost(first_run):
    from packcache_vllm.scale.results import ResultStore

    job, first = first_run
    store = ResultStore(job.output_dir)
    kept = {rid: store.read_frames(rid) for rid in ("clip-0", "clip-1")}
    # An interruption: clip-2 lost its record (killed between the two writes), clip-3 everything.
    (store.records / "clip-2.json").unlink()
    (store.records / "clip-3.json").unlink()
    (store.videos / "clip-3.jsonl").unlink()
    rerun = run_batch(replace(job, replicas=1))
    assert rerun.skipped == ("clip-0", "clip-1")
    assert sorted(rerun.generated) == ["clip-2", "clip-3"]
    for rid, frames in kept.items():
        assert store.read_frames(rid) == frames
    assert all((store.records / f"clip-{n}.json").is_file() for n in range(len(FRAMES)))
    nothing_left = run_batch(job)
    assert nothing_left.generated == () and len(nothing_left.skipped) == len(FRAMES)


def test_a_changed_request_under_a_finished_id_is_refused(first_run, tmp_path):
    job, _ = first_run
    lines = job.requests_path.read_text().splitlines()
    changed = json.loads(lines[0])
    changed["frames"] += 1
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join([json.dumps(changed), *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="result of a different request with id 'clip-0'"):
        run_batch(replace(job, requests_path=edited))


def test_a_model_that_cannot_load_fails_the_job_with_its_cause(
    ray_cluster, ray_model_dir, requests_file, tmp_path
):
    broken = tmp_path / "broken-model"
    shutil.copytree(ray_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    job = make_job(broken, requests_file, tmp_path / "out", replicas=1)
    with pytest.raises(ReplicaError, match=r"could not start vLLM for model .*broken-model"):
        run_batch(job)


def test_bad_config_fails_before_any_replica(ray_model_dir, requests_file, tmp_path):
    with pytest.raises(ValueError, match="window must be an integer >= 1 .*got 0"):
        EngineSettings(model=ray_model_dir, knobs={"window": 0})
    with pytest.raises(ValueError, match="model directory .*missing does not exist"):
        run_batch(make_job(tmp_path / "missing", requests_file, tmp_path / "out"))
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text(
        json.dumps({"id": "x", "caption": "a", "frames": 2, "packcache": {"window": 0}}) + "\n"
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*'window'.* must be an integer >= 1"):
        run_batch(make_job(ray_model_dir, bad_line, tmp_path / "out"))


TRAINED_MODEL = Path(__file__).resolve().parents[2] / "checkpoints" / "lumos-motion-8x12"


def test_caption_prompts_draw_conditioning_codes_from_the_checkpoints_codebook(tmp_path):
    from packcache_vllm.scale.pipeline import prepare

    config = json.loads((TRAINED_MODEL / "config.json").read_text())
    requests = tmp_path / "captions.jsonl"
    lines = [
        {"id": f"c{seed}", "caption": "a red ball", "condition_seed": seed, "frames": 1}
        for seed in range(4)
    ]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    _, built, _ = prepare(make_job(TRAINED_MODEL, requests, tmp_path / "out"))
    visual = [t for request in built for t in request.prompt_token_ids if t >= 65536]
    assert len(visual) == len(lines) * config["video_rows"] * config["video_cols"]
    assert max(visual) < 65536 + config["codebook_size"] == config["vocab_size"]


def test_a_prompt_id_outside_the_checkpoints_vocabulary_fails_its_line(tmp_path):
    from packcache_vllm.scale.pipeline import prepare

    past_the_codebook = json.loads((TRAINED_MODEL / "config.json").read_text())["vocab_size"]
    requests = tmp_path / "ids.jsonl"
    lines = [
        {"id": "fine", "prompt_token_ids": [5, 6], "frames": 1},
        {"id": "oov", "prompt_token_ids": [5, past_the_codebook], "frames": 1},
    ]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    refused = rf"ids.jsonl:2: .*token id {past_the_codebook} at position 1"
    with pytest.raises(ValueError, match=refused):
        prepare(make_job(TRAINED_MODEL, requests, tmp_path / "out"))


def test_a_failing_replica_ends_the_job_with_its_own_error(ray_cluster, ray_model_dir, tmp_path):
    """The replica's exception, not Ray Data's retry hint. The request skips the job's up-front
    checks, so the replica's engine refuses it (an id past the embedding, which unchecked would
    kill the engine core)."""
    from packcache_vllm.scale.pipeline import generate
    from packcache_vllm.scale.requests import VideoRequest
    from packcache_vllm.scale.results import ResultStore

    past_the_codebook = json.loads((ray_model_dir / "config.json").read_text())["vocab_size"]
    requests = tmp_path / "unused.jsonl"
    requests.write_text("")
    job = make_job(ray_model_dir, requests, tmp_path / "out", replicas=1)
    ResultStore(job.output_dir).create()
    bad = VideoRequest(id="oov", prompt_token_ids=(5, 6, past_the_codebook), frames=1)
    with pytest.raises(ReplicaError) as failure:
        generate(job, [bad], run_id="failing")
    message = str(failure.value)
    assert f"Error: prompt token id {past_the_codebook} at position 2 is outside" in message
    assert "['oov']" in message and "retry" not in message


def test_cli_reports_a_bad_knob_and_exits(ray_model_dir, requests_file, tmp_path, capsys):
    from packcache_vllm.scale.batch import main

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--model",
                str(ray_model_dir),
                "--requests",
                str(requests_file),
                "--output",
                str(tmp_path),
                "--packcache-min-keep",
                "1.5",
            ]
        )
    assert exit_info.value.code == 2
    assert "--packcache-min-keep: must be a number in [0, 1], got 1.5" in capsys.readouterr().err
