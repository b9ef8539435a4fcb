"""Ask a running `vllm serve` for a video of a synthetic scene and write it as MP4 + GIF.

    vllm serve checkpoints/lumos-motion-8x12 --kv-policy packcache --dtype float32 ...
    python -m packcache_vllm.video.client --scene demo-0 --frames 12 --out artifacts/video/demo-0

The prompt is the scene's caption and first frame (image-to-video) as token ids; the completion is
streamed (``return_token_ids``) and a progress bar advances per finished frame. The video written
is the conditioning frame followed by the generated frames (STEM.mp4, STEM.gif, STEM-strip.png),
with STEM.json holding the scene, the prompt and the generated token ids; the client also prints
how many cells match the scene's true motion (the scene is synthetic, so the truth is known).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from packcache_vllm.core.layout import tokens_per_frame
from packcache_vllm.video.quality import decoded_accuracy
from packcache_vllm.video.render import to_rgb, write_video
from packcache_vllm.video.scene import random_scene, render_clip
from packcache_vllm.video.tokens import DecodedFrames, decode_frames, scene_prompt


def parse_xarg(text: str) -> tuple[str, object]:
    """``name=value`` -> (name, int | float | str value)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--xarg wants NAME=VALUE, got {text!r}")
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            continue
    return name, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m packcache_vllm.video.client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000/v1", help="server's OpenAI base URL"
    )
    parser.add_argument("--model", help="served model name (default: the server's first model)")
    parser.add_argument("--scene", default="demo-0", help="scene seed: any string (default demo-0)")
    parser.add_argument("--frames", type=int, default=12, help="frames to generate after the first")
    parser.add_argument(
        "--rows", type=int, default=8, help="the model's frame grid rows (default 8)"
    )
    parser.add_argument(
        "--cols", type=int, default=12, help="the model's frame grid columns (default 12)"
    )
    parser.add_argument(
        "--fps", type=int, default=4, help="frames per second of the files (default 4)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("artifacts/video/client"),
        help="output path stem: writes STEM.mp4, STEM.gif, STEM-strip.png and STEM.json",
    )
    parser.add_argument(
        "--xarg",
        type=parse_xarg,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="per-request override sent in vllm_xargs, e.g. packcache_window=2 (repeatable)",
    )
    args = parser.parse_args(argv)
    for name in ("frames", "rows", "cols", "fps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def stream_video_tokens(
    client, model: str, prompt: list[int], num_frames: int, per_frame: int, xargs: dict
) -> list[int]:
    """Greedy token ids of ``num_frames`` frames, streamed; a tqdm bar counts finished frames."""
    from tqdm import tqdm

    extra_body = {"return_token_ids": True, "ignore_eos": True}
    if xargs:
        extra_body["vllm_xargs"] = xargs
    stream = client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=num_frames * per_frame,
        temperature=0.0,
        stream=True,
        extra_body=extra_body,
    )
    tokens: list[int] = []
    with tqdm(total=num_frames, unit="frame", desc="generating") as bar:
        for chunk in stream:
            for choice in chunk.choices:
                tokens += list(getattr(choice, "token_ids", None) or [])
            bar.update(len(tokens) // per_frame - bar.n)
    if len(tokens) != num_frames * per_frame:
        raise RuntimeError(
            f"the server streamed {len(tokens)} token ids, expected {num_frames * per_frame}: "
            "does it support return_token_ids in streamed completions?"
        )
    return tokens


def with_first_frame(first: torch.Tensor, generated: DecodedFrames) -> DecodedFrames:
    """Prepend the conditioning frame [rows, cols] to the decoded frames."""
    cells = torch.cat([first[None], generated.cells])
    valid = torch.cat([torch.ones_like(first, dtype=torch.bool)[None], generated.valid])
    return DecodedFrames(cells, valid)


def main(argv: list[str] | None = None) -> None:
    from openai import OpenAI

    args = parse_args(argv)
    scene = random_scene(args.scene, args.rows, args.cols, args.frames + 1)
    truth = render_clip(scene)
    client = OpenAI(base_url=args.url, api_key="unused")
    model = args.model or client.models.list().data[0].id
    print(f"scene {args.scene!r}: {scene.caption()}")
    per_frame = tokens_per_frame(args.rows, args.cols)
    prompt = scene_prompt(scene, truth[0])
    tokens = stream_video_tokens(client, model, prompt, args.frames, per_frame, dict(args.xarg))
    generated = decode_frames(tokens, args.rows, args.cols, strict=False)
    match = decoded_accuracy(generated.cells, generated.valid, truth[1:]).mean().item()
    files = write_video(to_rgb(with_first_frame(truth[0], generated)), args.out, fps=args.fps)
    record = {"scene": args.scene, "caption": scene.caption(), "model": model, "prompt": prompt,
              "generated": tokens, "match": match}  # fmt: skip
    record_path = args.out.with_name(args.out.name + ".json")
    record_path.write_text(json.dumps(record) + "\n")
    print(f"{match:.1%} of generated cells match the scene's true motion")
    print(f"wrote {files.mp4}, {files.gif}, {files.strip} and {record_path}")


if __name__ == "__main__":
    main()
