"""The speed of quality.py's policy settings: end-to-end and last-four-frame time per setting.

    .venv/bin/python benchmarks/quality_speed.py --model checkpoints/lumos-motion-8x12-clip25 \\
        --frames 24 --requests 4 --settings full sliding:window=2 geometric:decay=0.5,floor=0.03 \\
        --out benchmarks/results/quality-clip25

One ``bench_engine.run`` per setting (any ``--kv-policy`` preset with its knobs, as
``quality.py --settings`` takes them), each in its own process, on the same model; the prompts
are ``run.py``'s (text + one conditioning frame, greedy, every video the same length). Appends
one line per setting to ``--out``/speed.jsonl (label, end-to-end seconds, the last four frames'
seconds: the mean over videos of frames N-3..N's latencies); ``quality_pareto.py`` joins it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAST = 4


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--requests", type=int, default=4, help="videos generated together")
    parser.add_argument("--settings", nargs="+", required=True, metavar="POLICY[:KNOB=VALUE,...]")
    parser.add_argument("--kv-cache-mib", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--one-run", help=argparse.SUPPRESS)  # internal: a child's setting
    return parser.parse_args(argv)


def last_four_s(frame_done_s: list[list[float]]) -> float:
    """Per video, the completion times of its frames -> the mean over videos of the time from
    frame N-4's completion to frame N's."""
    spans = [times[-1] - times[-1 - LAST] for times in frame_done_s]
    return sum(spans) / len(spans)


def one_run(args) -> None:
    from bench_engine import RunConfig, run
    from quality import parse_setting
    from run import prompts_for

    setting = parse_setting(args.one_run)
    knobs = {k: v for k, v in setting.knobs().items() if k != "window"}
    config = RunConfig(
        model_dir=str(args.model),
        policy=setting.policy,
        frames=args.frames,
        requests=args.requests,
        window=setting.window,
        kv_cache_bytes=args.kv_cache_mib << 20,
        knobs=tuple(knobs.items()),
    )
    prompts, per_frame = prompts_for(args.model, args.requests)
    result = run(config, prompts, per_frame)
    print(
        json.dumps(
            {
                "label": setting.label,
                "model": str(args.model),
                "frames": args.frames,
                "requests": args.requests,
                "end_to_end_s": result.end_to_end_s,
                "last_four_s": last_four_s(result.frame_done_s),
                "peak_blocks": result.peak_blocks,
            }
        )
    )


def main(argv=None) -> None:
    sys.path.insert(0, str(HERE))
    args = parse_args(argv)
    if args.one_run:
        one_run(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    common = [f"--model={args.model}", f"--frames={args.frames}", f"--requests={args.requests}"]
    common += [f"--kv-cache-mib={args.kv_cache_mib}", f"--out={args.out}"]
    for spec in args.settings:
        done = subprocess.run(
            [sys.executable, __file__, *common, "--settings", spec, "--one-run", spec],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"{spec} failed:\n{done.stderr[-4000:]}")
        line = done.stdout.strip().splitlines()[-1]
        with (args.out / "speed.jsonl").open("a") as out:
            out.write(line + "\n")
        print(line, flush=True)


if __name__ == "__main__":
    main()
