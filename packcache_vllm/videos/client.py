"""Ask a `vllm serve` with the videos API for a video, with the official ``openai`` client.

    python -m packcache_vllm.videos.client --prompt "a red ball bounces" --seconds 2 \\
        [--image first-frame.png] [--knob window=2 ...] --out artifacts/videos/ball

Creates the job (``client.videos.create``), shows a progress bar of frames done
(``client.videos.retrieve``: this server's ``packcache.frames_done`` / ``frames_total``), then
downloads STEM.mp4, STEM-thumbnail.png and STEM-spritesheet.png
(``client.videos.download_content``). Exits non-zero with the server's message when the request
is refused or the job fails.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from packcache_vllm.video.client import parse_xarg

POLL_S = 0.5
FILES = {"video": ".mp4", "thumbnail": "-thumbnail.png", "spritesheet": "-spritesheet.png"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m packcache_vllm.videos.client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1", help="the server's /v1 URL")
    parser.add_argument("--model", help="served model name (default: the server's)")
    parser.add_argument("--prompt", required=True, help="the caption")
    parser.add_argument("--seconds", help="duration (default: the server's, 2)")
    parser.add_argument("--size", help="WIDTHxHEIGHT (default: the model's first size)")
    parser.add_argument("--image", type=Path, help="input_reference: the first frame (an image)")
    parser.add_argument(
        "--knob",
        type=parse_xarg,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a packcache knob, e.g. window=2, cfg_scale=3, seed=0 (repeatable)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("artifacts/videos/video"), help="output path stem"
    )
    return parser.parse_args(argv)


def create(client, args: argparse.Namespace):
    fields = {"prompt": args.prompt}
    for name in ("model", "seconds", "size"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.image is not None:
        fields["input_reference"] = (args.image.name, args.image.read_bytes())
    if args.knob:
        fields["extra_body"] = {"packcache": dict(args.knob)}
    return client.videos.create(**fields)


def wait(client, video):
    """Poll until the job finishes; a tqdm bar counts the frames the engine finished."""
    from tqdm import tqdm

    total = video.model_extra["packcache"]["frames_total"]
    with tqdm(total=total, unit="frame", desc=video.id[:14]) as bar:
        while video.status in ("queued", "in_progress"):
            time.sleep(POLL_S)
            video = client.videos.retrieve(video.id)
            bar.update(video.model_extra["packcache"]["frames_done"] - bar.n)
    return video


def download(client, video_id: str, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for variant, suffix in FILES.items():
        path = stem.with_name(stem.name + suffix)
        path.write_bytes(client.videos.download_content(video_id, variant=variant).read())
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    import openai

    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the Sora API's sunset note
    client = openai.OpenAI(base_url=args.url, api_key="unused")
    try:
        video = wait(client, create(client, args))
    except openai.APIStatusError as err:
        sys.exit(f"refused: {err.message}")
    if video.status != "completed":
        sys.exit(f"video {video.id} {video.status}: {video.error.message}")
    paths = download(client, video.id, args.out)
    print(f"{video.id}: {video.seconds} s at {video.size}; wrote {', '.join(map(str, paths))}")


if __name__ == "__main__":
    main()
