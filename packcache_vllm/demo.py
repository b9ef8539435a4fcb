"""The main job: a tiny Lumos-1 model generating video token streams in vLLM, several at once.

    python -m packcache_vllm.demo [--frames 4] [--requests 3] [--model DIR]

Builds a random-weight tiny Lumos-1 checkpoint (unless --model is given), loads it through vLLM's
normal loader with the plugin's model, generates ``--frames`` latent frames of tokens for each
request in one batch (greedy, float32), and prints, per request and frame, what was generated.
The weights are random, so the tokens are noise; what the demo shows is the machinery.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

from packcache_vllm.core.layout import FrameLayout, TokenRole, find_frame_start
from packcache_vllm.model.factory import build_tiny_lumos, make_video_prompt

DEFAULT_MODEL_DIR = Path("artifacts/tiny-lumos")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, help="a Lumos-1 checkpoint dir (default: build a tiny one)"
    )
    parser.add_argument(
        "--frames", type=int, default=4, help="latent frames to generate per request"
    )
    parser.add_argument("--requests", type=int, default=3, help="concurrent requests in the batch")
    parser.add_argument("--seed", type=int, default=0, help="seed for the tiny weights and prompts")
    parser.add_argument(
        "--out", type=Path, default=Path("artifacts/demo"), help="where tokens.json goes"
    )
    args = parser.parse_args(argv)
    for name in ("frames", "requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def build_prompts(rows: int, cols: int, count: int, seed: int) -> list[list[int]]:
    """Alternate image-to-video (with a conditioning frame) and text-to-video prompts."""
    rng = random.Random(seed)
    captions = ["a red ball bounces", "two squares drift apart", "a slow pan over a striped wall"]
    prompts = []
    for i in range(count):
        text_ids = [4 + b for b in captions[i % len(captions)].encode()]
        prompts.append(
            make_video_prompt(rows, cols, text_ids, with_condition_frame=i % 2 == 0, rng=rng)
        )
    return prompts


def describe_frames(tokens: list[int], layout: FrameLayout) -> list[str]:
    lines = []
    first = layout.num_anchor_frames
    per_frame = layout.tokens_per_frame
    for k in range(0, len(tokens), per_frame):
        chunk = tokens[k : k + per_frame]
        visual = sum(
            layout.locate(layout.anchor_len + k + j).role is TokenRole.VISUAL
            for j in range(len(chunk))
        )
        lines.append(
            f"  frame {first + k // per_frame}: {len(chunk)} tokens ({visual} visual positions), "
            f"first ids {chunk[:6]}"
        )
    return lines


def check_against_reference(model_dir, prompt, generated, rows: int, cols: int) -> None:
    """Re-generate the first request with the dense PyTorch reference and compare tokens."""
    from packcache_vllm.reference import ReferenceVideoModel

    reference = ReferenceVideoModel.from_pretrained(model_dir)
    layout = FrameLayout(find_frame_start(prompt), len(prompt), rows, cols)
    expected = reference.generate(prompt, layout, len(generated)).token_ids
    same = sum(a == b for a, b in zip(generated, expected, strict=True))
    print(f"dense PyTorch reference, request 0: {same}/{len(generated)} tokens identical")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams  # after the env is set

    model_dir = args.model or build_tiny_lumos(DEFAULT_MODEL_DIR, seed=args.seed)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    rows, cols = config.get("video_rows", 48), config.get("video_cols", 84)
    prompts = build_prompts(rows, cols, args.requests, args.seed)
    per_frame = FrameLayout(0, 0, rows, cols).tokens_per_frame

    start = time.perf_counter()
    llm = LLM(
        str(model_dir),
        dtype="float32",
        enforce_eager=True,
        block_size=32,
        kv_cache_memory_bytes=256 << 20,
        max_model_len=8192,
        enable_prefix_caching=False,
        seed=args.seed,
    )
    loaded = time.perf_counter()
    params = SamplingParams(
        temperature=0.0, max_tokens=args.frames * per_frame, ignore_eos=True, detokenize=False
    )
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    done = time.perf_counter()

    print(f"model {model_dir}: frame grid {rows}x{cols} = {per_frame} tokens per frame")
    print(
        f"engine start {loaded - start:.1f} s; {len(prompts)} requests x {args.frames} frames "
        f"generated together in {done - loaded:.2f} s"
    )
    records = []
    for prompt, out in zip(prompts, outputs, strict=True):
        layout = FrameLayout(find_frame_start(prompt), len(prompt), rows, cols)
        tokens = list(out.outputs[0].token_ids)
        kind = "image-to-video" if layout.num_anchor_frames else "text-to-video"
        print(
            f"request {out.request_id} ({kind}): prompt {len(prompt)} tokens "
            f"(text {layout.frame_start}, conditioning frames {layout.num_anchor_frames}), "
            f"generated {len(tokens)} tokens"
        )
        print("\n".join(describe_frames(tokens, layout)))
        records.append({"request": out.request_id, "prompt": prompt, "generated": tokens})
    check_against_reference(model_dir, prompts[0], records[0]["generated"], rows, cols)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tokens.json").write_text(json.dumps(records))
    print(f"token streams written to {args.out / 'tokens.json'}")


if __name__ == "__main__":
    main()
