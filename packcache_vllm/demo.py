"""The main job: a trained tiny Lumos-1 generating videos in vLLM with PackCache, several at once.

    python -m packcache_vllm.demo [--scenes 3] [--frames 8] [--policy packcache] [--model DIR]

Loads the committed checkpoint ``checkpoints/lumos-motion-8x12`` (a tiny Lumos-1 trained on
synthetic motion: ``python -m packcache_vllm.train.train``) through vLLM's loader with the plugin,
asks for ``--scenes`` image-to-video requests in one batch (each: a caption and the scene's first
frame), generates ``--frames`` frames per request greedily in float32 under the chosen KV policy,
and writes each video as MP4, GIF and a PNG strip under ``--out``. It prints, per video, how many
generated cells match the scene's true motion against copying the first frame, and re-generates
the first request with the dense PyTorch reference under the same policy to cross-check the tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from packcache_vllm.core.budget import PRESETS, PackCacheConfig
from packcache_vllm.core.layout import tokens_per_frame
from packcache_vllm.train import MOTION_CHECKPOINT
from packcache_vllm.video.client import with_first_frame
from packcache_vllm.video.quality import decoded_accuracy
from packcache_vllm.video.render import to_rgb, write_video
from packcache_vllm.video.scene import random_scene
from packcache_vllm.video.tokens import SceneClip, decode_frames, scene_clip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=MOTION_CHECKPOINT, help="Lumos-1 checkpoint dir"
    )
    parser.add_argument(
        "--scenes", type=int, default=3, help="videos generated together (default 3)"
    )
    parser.add_argument(
        "--frames", type=int, default=8, help="frames generated per video (default 8)"
    )
    parser.add_argument("--policy", choices=PRESETS, default="packcache", help="KV cache policy")
    parser.add_argument(
        "--window", type=int, default=4, help="PackCache window W in frames (default 4)"
    )
    parser.add_argument("--seed", type=int, default=0, help="scene seeds are demo-<seed + i>")
    parser.add_argument(
        "--out", type=Path, default=Path("artifacts/demo"), help="where the videos go"
    )
    args = parser.parse_args(argv)
    for name in ("scenes", "frames", "window"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} has no config.json")
    return args


def policy_knobs(args: argparse.Namespace) -> dict[str, int]:
    """--window applies to packcache only (the other presets fix their window)."""
    return {"window": args.window} if args.policy == "packcache" else {}


def policy_config(args: argparse.Namespace) -> PackCacheConfig:
    return PackCacheConfig.preset(args.policy, **policy_knobs(args))


def make_engine(model_dir: Path, args: argparse.Namespace):
    from vllm import LLM

    from packcache_vllm.cli import engine_overrides

    return LLM(
        str(model_dir),
        dtype="float32",
        enforce_eager=True,
        block_size=32,
        kv_cache_memory_bytes=64 << 20,
        max_model_len=4096,
        seed=0,
        **engine_overrides(args.policy, **policy_knobs(args)),
    )


def check_against_reference(
    model_dir: Path, clip: SceneClip, generated: list[int], config: PackCacheConfig
) -> None:
    """Re-generate one request with the dense PyTorch reference and the same policy."""
    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel

    reference = ReferenceVideoModel.from_pretrained(model_dir)
    expected = reference.generate(clip.prompt, clip.layout, len(generated), PackCachePolicy(config))
    same = sum(a == b for a, b in zip(generated, expected.token_ids, strict=True))
    print(f"dense PyTorch reference, video 0: {same}/{len(generated)} tokens identical")


def report_video(index: int, clip: SceneClip, tokens: list[int], out: Path) -> dict:
    """Decode, compare with the scene's true motion, write the files; returns a record."""
    truth = clip.frames[1:]
    decoded = decode_frames(tokens, clip.scene.rows, clip.scene.cols, strict=False)
    match = decoded_accuracy(decoded.cells, decoded.valid, truth).mean().item()
    copy_first = (clip.frames[:1] == truth).float().mean().item()
    files = write_video(to_rgb(with_first_frame(clip.frames[0], decoded)), out / f"video-{index}")
    print(f"video {index}: {clip.scene.caption()}")
    print(
        f"  cells matching the true motion: {match:.1%} (copying the first frame: {copy_first:.1%})"
    )
    print(f"  {files.gif}  {files.mp4}  {files.strip}")
    return {
        "caption": clip.scene.caption(),
        "prompt": clip.prompt,
        "generated": tokens,
        "match": match,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import SamplingParams  # after the env is set

    config = json.loads((args.model / "config.json").read_text())
    rows, cols = config["video_rows"], config["video_cols"]
    clips = [
        scene_clip(random_scene(f"demo-{args.seed + i}", rows, cols, args.frames + 1))
        for i in range(args.scenes)
    ]
    start = time.perf_counter()
    llm = make_engine(args.model, args)
    loaded = time.perf_counter()
    num_tokens = args.frames * tokens_per_frame(rows, cols)
    params = SamplingParams(
        temperature=0.0, max_tokens=num_tokens, ignore_eos=True, detokenize=False
    )
    outputs = llm.generate([{"prompt_token_ids": c.prompt} for c in clips], params, use_tqdm=False)
    done = time.perf_counter()
    print(f"model {args.model}: {rows}x{cols} cells per frame, KV policy {args.policy}")
    print(
        f"engine start {loaded - start:.1f} s; {len(clips)} videos x {args.frames} frames "
        f"generated together in {done - loaded:.1f} s"
    )
    records = [
        report_video(i, clip, list(out.outputs[0].token_ids), args.out)
        for i, (clip, out) in enumerate(zip(clips, outputs, strict=True))
    ]
    check_against_reference(args.model, clips[0], records[0]["generated"], policy_config(args))
    (args.out / "tokens.json").write_text(json.dumps(records))
    print(f"videos and token streams are in {args.out}/")


if __name__ == "__main__":
    main()
