"""Why a setting collapses on a scene: the model, the time rebase, or the thinning pattern.

    .venv/bin/python benchmarks/quality_collapse.py --model checkpoints/lumos-motion-8x12-clip25 \\
        --frames 24 --scenes 3 17 --setting packcache:window=4 \\
        --out benchmarks/results/quality-clip25/collapse.jsonl

On the dense reference (``reference/``, greedy float32; the engine is token-exact with it), for
each held-out scene, the same video under variants that each change one thing:

* ``full``: nothing evicted (does the *model* fail on this scene anyway?);
* ``setting``: the setting as served (frames dropped, time rebased, older frames thinned);
* ``no rebase``: exactly the same tokens kept, but positions not rebased (the dropped frames leave
  a gap in t, as a cache without PackCache's rebase would) -- isolates the *rebase*;
* ``key_norm``: the same budget, the key-norm selector instead of the setting's -- which tokens a
  thinned frame keeps (the *thinning pattern*);
* ``whole frames``: a sliding window holding about the same memory (round(history) frames, none
  thinned) -- thinning at all vs keeping fewer frames whole.

One JSON line per scene and variant (appended as it goes): per-frame cell accuracy and its means
over the first / last eight frames, printed as it goes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from quality import DRIFT_FRAMES, parse_setting, shown
from quality_stats import scene_mean

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel
from packcache_vllm.video.heldout import model_heldout_clips
from packcache_vllm.video.quality import frame_quality
from packcache_vllm.video.tokens import decode_frames


class NoRebase:
    """A policy's kept tokens with Δ = 0: nothing is rebased (dropped frames keep no offsets)."""

    def __init__(self, policy: PackCachePolicy) -> None:
        self.policy = policy

    def kept_history(self, num_complete_frames, layout, newest_frame_keys=()):
        history = self.policy.kept_history(num_complete_frames, layout, newest_frame_keys)
        return replace(history, dropped_frames=0)


def variants(config: PackCacheConfig) -> dict:
    """Variant name -> a function making a fresh policy (None: no eviction)."""
    whole = max(1, round(config.steady_state_frames()))
    return {
        "full": lambda: None,
        "setting": lambda: PackCachePolicy(config),
        "no rebase": lambda: NoRebase(PackCachePolicy(config)),
        "key_norm": lambda: PackCachePolicy(replace(config, selector="key_norm")),
        f"whole frames (sliding W={whole})": lambda: PackCachePolicy(
            PackCacheConfig.preset("sliding", window=whole)
        ),
    }


def run_scene(model: ReferenceVideoModel, clip, make_policy) -> list[float]:
    """Per generated frame cell accuracy of the greedy video under a fresh policy."""
    layout = model.layout_for(clip.prompt)
    result = model.generate(clip.prompt, layout, len(clip.continuation), make_policy())
    decoded = decode_frames(result.token_ids, clip.scene.rows, clip.scene.cols, strict=False)
    quality = frame_quality(decoded.cells, decoded.valid, clip.frames[1:], clip.scene)
    return quality.cell_accuracy.tolist()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--scenes", type=int, nargs="+", required=True, help="held-out indices")
    parser.add_argument("--setting", required=True, help="POLICY:KNOB=VALUE,... (quality.py)")
    parser.add_argument(
        "--variants",
        nargs="+",
        help="run only the variants whose name starts with one of these (default: all)",
    )
    parser.add_argument("--out", type=Path, required=True, help="JSONL, appended")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        args.setting = parse_setting(args.setting)
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv=None) -> None:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = ReferenceVideoModel.from_pretrained(args.model)
    clips = model_heldout_clips(args.model, args.frames, max(args.scenes) + 1)
    config = args.setting.config()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for scene in args.scenes:
        for name, make_policy in variants(config).items():
            if args.variants and not name.startswith(tuple(args.variants)):
                continue
            accuracy = run_scene(model, clips[scene], make_policy)
            row = {
                "model": shown(args.model),
                "setting": args.setting.label,
                "scene": scene,
                "variant": name,
                "first": scene_mean(accuracy, slice(None, DRIFT_FRAMES)),
                "last": scene_mean(accuracy, slice(-DRIFT_FRAMES, None)),
                "cell_accuracy": accuracy,
            }
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            print(f"scene {scene:3d}  {name:32s} first {row['first']:.3f}  last {row['last']:.3f}")


if __name__ == "__main__":
    main()
