"""The main job: a trained tiny Lumos-1 generating videos in vLLM with PackCache, several at once,
asked for through OpenAI's videos API.

    python -m packcache_vllm.demo [--scenes 3] [--frames 8] [--policy packcache] [--model DIR]

Starts ``vllm serve`` on the committed checkpoint ``checkpoints/lumos-motion-8x12`` (a tiny Lumos-1
trained on synthetic motion: ``python -m packcache_vllm.train.train``) with the plugin's KV policy
and its ``/v1/videos`` routes, asks with the official ``openai`` client for ``--scenes``
image-to-video videos at once (each: the scene's caption and its first frame as
``input_reference``), ``--frames`` generated frames each (greedy, float32), follows their progress
and downloads each MP4, thumbnail and spritesheet into ``--out``. It prints, per video, how many
generated cells (read back from the MP4) match the scene's true motion against copying the first
frame, and re-generates the first video with the dense PyTorch reference under the same policy
to cross-check its codes.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

from packcache_vllm.codec.palette import PaletteCodec
from packcache_vllm.core.budget import PRESETS, PackCacheConfig
from packcache_vllm.train import MOTION_CHECKPOINT
from packcache_vllm.video.quality import decoded_accuracy
from packcache_vllm.video.scene import random_scene
from packcache_vllm.video.tokens import SceneClip, scene_clip

CELL_PIXELS = 16


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


def server_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--dtype", "float32", "--enforce-eager", "--block-size", "32", "--seed", "0",
             "--no-enable-prefix-caching", "--max-model-len", "4096",
             "--kv-cache-memory-bytes", str(64 << 20), "--kv-policy", args.policy]  # fmt: skip
    return flags + [f"--packcache-{k}={v}" for k, v in policy_knobs(args).items()]


def first_frame_png(clip: SceneClip) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(PaletteCodec(CELL_PIXELS).decode(clip.frames[:1])[0]).save(out, format="PNG")
    return out.getvalue()


def ask(client, clip: SceneClip, args: argparse.Namespace):
    """One job: the scene's caption, its first frame, 1 + --frames frames in the video."""
    return client.videos.create(
        prompt=clip.scene.caption(),
        input_reference=("first-frame.png", first_frame_png(clip), "image/png"),
        extra_body={"packcache": {"frames": args.frames + 1}},
    )


def mp4_cells(path: Path):
    """The MP4's frames read back as palette cells [T, rows, cols]."""
    import imageio.v3 as iio

    return PaletteCodec(CELL_PIXELS).encode(iio.imread(path, extension=".mp4"))


def check_against_reference(model_dir: Path, clip: SceneClip, served, config) -> None:
    """Re-generate one video with the dense PyTorch reference and the same policy; compare
    the generated cells read back from its MP4 [T, rows, cols] with the reference's."""
    import torch

    from packcache_vllm.codec.frames import decode_frame_ids
    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel

    reference = ReferenceVideoModel.from_pretrained(model_dir)
    num_tokens = (len(served) - 1) * clip.layout.tokens_per_frame
    expected = reference.generate(clip.prompt, clip.layout, num_tokens, PackCachePolicy(config))
    rows, cols = clip.scene.rows, clip.scene.cols
    decoded = decode_frame_ids(expected.token_ids, rows, cols, 16, strict=False)
    cells = PaletteCodec(CELL_PIXELS).encode(PaletteCodec(CELL_PIXELS).decode_frames(decoded))
    same = int(torch.eq(cells, served[1:]).sum())
    print(f"dense PyTorch reference, video 0: {same}/{cells.numel()} generated cells identical")


def report_video(index: int, clip: SceneClip, client, video, out: Path):
    """Download the video's files, compare with the scene's true motion; returns its cells."""
    from packcache_vllm.videos.client import download

    mp4, thumbnail, sheet = download(client, video.id, out / f"video-{index}")
    cells = mp4_cells(mp4)
    truth = clip.frames[1:]
    match = decoded_accuracy(cells[1:], cells[1:] >= 0, truth).mean().item()
    copy_first = (clip.frames[:1] == truth).float().mean().item()
    print(f"video {index} ({video.id}): {clip.scene.caption()}")
    print(
        f"  cells matching the true motion: {match:.1%} (copying the first frame: {copy_first:.1%})"
    )
    print(f"  {mp4}  {thumbnail}  {sheet}")
    return cells


def main(argv: list[str] | None = None) -> None:
    import warnings

    from openai import OpenAI

    from packcache_vllm.videos.client import wait
    from packcache_vllm.videos.serve import videos_server

    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the Sora API's sunset note
    rows, cols = grid(args.model)
    clips = [
        scene_clip(random_scene(f"demo-{args.seed + i}", rows, cols, args.frames + 1))
        for i in range(args.scenes)
    ]
    start = time.perf_counter()
    flags = server_flags(args)
    with videos_server(args.model, args.out / "store", args.out / "serve.log", flags) as url:
        loaded = time.perf_counter()
        client = OpenAI(base_url=url, api_key="unused")
        jobs = [ask(client, clip, args) for clip in clips]
        videos = [wait(client, job) for job in jobs]
        done = time.perf_counter()
        failed = [f"{v.id}: {v.error.message}" for v in videos if v.status != "completed"]
        if failed:
            raise SystemExit(f"videos failed: {failed}")
        print(f"model {args.model}: KV policy {args.policy}, served at {url}")
        print(
            f"server start {loaded - start:.1f} s; {len(clips)} videos x {args.frames} frames "
            f"generated together in {done - loaded:.1f} s"
        )
        cells = [
            report_video(i, c, client, v, args.out)
            for i, (c, v) in enumerate(zip(clips, videos, strict=True))
        ]
    check_against_reference(args.model, clips[0], cells[0], policy_config(args))
    print(f"videos are in {args.out}/ (the server's job store: {args.out / 'store'})")


def grid(model_dir: Path) -> tuple[int, int]:
    from packcache_vllm.codec.spec import checkpoint_video

    video = checkpoint_video(model_dir)
    return video.rows, video.cols


if __name__ == "__main__":
    main()
