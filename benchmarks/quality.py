"""What each KV policy costs in video quality: held-out scenes, long videos, the trained model.

    .venv/bin/python benchmarks/quality.py                       # both modes, 48 frames, 8 scenes
    .venv/bin/python benchmarks/quality.py --modes next-token --frames 24 --scenes 4

For every generation mode and every policy setting (the full cache, sliding windows, PackCache
over a W sweep, and PackCache with the key-norm selector), the trained tiny Lumos-1 generates
``--frames`` frames for ``--scenes`` held-out scenes (``random_scene("heldout-<i>")``, never
trained on), image-to-video: the caption and the true first frame. Each generated frame is
compared with the scene's true motion (``packcache_vllm.video.quality``): cell accuracy,
background accuracy, object position error, objects lost; drift is the accuracy of the first vs
the last eight frames. The copy-the-first-frame baseline is scored the same way.

``--settings`` runs any list of ``--kv-policy`` presets with their knobs instead (e.g. the
settings of equal memory: ``full sliding:window=2 packcache:window=4,min_keep=0.33``). The
table gives each headline measure per scene, then its mean over scenes with a bootstrap interval
over scenes (``quality_stats.py``), and each setting's last-eight-frame accuracy minus the full
cache's, paired by scene.

Every setting runs in vLLM with the plugin, one child process per setting (all scenes batched).
Next-token decoding is float32 greedy; frame-parallel is seeded MaskGIT (``--steps-per-frame``,
``--cfg-scale``, ``--top-k``, ``--temperature``).

The default models were trained on clips of 6 frames, so a 48-frame video runs far past the
longest clip they saw; ``checkpoints/lumos-motion-8x12-clip25`` saw clips of 25 frames (ask it for
``--frames 24``). The prompt carries the training clips' duration token (the only one it knows).

Writes under ``--out`` (default benchmarks/results/quality/): quality.jsonl (one line per
setting and scene, per-frame measures), quality.md (the table), quality_<mode>.png (drift
curves), and with ``--speed BENCH_JSONL`` (``benchmarks/run.py`` rows on the same model)
quality_vs_speed.png and speed columns in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODES = ("next-token", "frame-parallel")
DRIFT_FRAMES = 8  # "first / last eight frames"
DEFAULT_MODELS = {  # the checkpoint trained for each mode's objective
    "next-token": "checkpoints/lumos-motion-8x12",
    "frame-parallel": "checkpoints/lumos-motion-8x12-ardf",
}


@dataclass(frozen=True)
class Setting:
    """One policy setting. policy: a --kv-policy preset; extra: its other knobs, (name, value)."""

    policy: str
    window: int | None = None
    selector: str = "uniform"
    extra: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:  # a Job read back from JSON has lists
        object.__setattr__(self, "extra", tuple((name, value) for name, value in self.extra))

    @property
    def label(self) -> str:
        text = self.policy if self.window is None else f"{self.policy} W={self.window}"
        text += "".join(f" {name}={value}" for name, value in self.extra)
        return text if self.selector == "uniform" else f"{text} {self.selector}"

    def knobs(self) -> dict:
        """The knobs given (``cli.policy_config``, ``cli.engine_overrides``): window and selector
        only when set, so a policy without them takes the rest."""
        window = {} if self.window is None else {"window": self.window}
        selector = {} if self.selector == "uniform" else {"selector": self.selector}
        return {**window, **selector, **dict(self.extra)}

    def config(self):
        """The policy with these knobs, validated as ``--kv-policy`` validates it."""
        from packcache_vllm.cli import KEYWORD_NAMING, policy_config

        return policy_config(self.policy, self.knobs(), KEYWORD_NAMING)


@dataclass(frozen=True)
class Job:
    """What one child process generates."""

    model_dir: str
    mode: str
    setting: Setting
    frames: int
    scenes: int
    steps_per_frame: int
    cfg_scale: float
    top_k: int | None
    temperature: float
    condition_mask_ratio: float
    ranking: str


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="checkpoint for every mode (default: per mode, the one trained for it: "
        f"{', '.join(f'{m}: {p}' for m, p in DEFAULT_MODELS.items())}); the prompt's duration "
        "token is that of the clips in its training.json",
    )
    parser.add_argument("--frames", type=int, default=48, help="generated frames per video (48)")
    parser.add_argument("--scenes", type=int, default=8, help="held-out scenes (default 8)")
    parser.add_argument(
        "--windows",
        nargs="+",
        type=int,
        default=[4, 6, 8],
        help="PackCache W sweep (4 6 8; below 4 the preset keeps whole frames: b_min = 3/W >= 1)",
    )
    parser.add_argument(
        "--sliding-windows",
        nargs="*",
        type=int,
        default=[1, 3],
        help="sliding-window sizes in frames (1 3; 3 holds about PackCache W=4's history; "
        "none: no sliding rows)",
    )
    parser.add_argument(
        "--key-norm-window",
        type=int,
        default=4,
        help="W of the PackCache row with the key-norm selector (0: no such row)",
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        metavar="POLICY[:KNOB=VALUE,...]",
        help="run these settings instead of the sweep above: any --kv-policy preset with its "
        "knobs (PackCacheConfig.preset), e.g. full sliding:window=2 "
        "packcache:window=3,min_keep=0.5 (name full among them for the paired "
        "'last 8 - full' column)",
    )
    parser.add_argument("--steps-per-frame", type=int, default=8, help="frame-parallel steps")
    parser.add_argument("--cfg-scale", type=float, default=3.0, help="frame-parallel CFG scale")
    parser.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="frame-parallel top-k (default none: every code, as Lumos-1's masked loop draws; "
        "top-k 1 would make every drawn code's log-probability 0 and the confidence ranking void)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="frame-parallel temperature (default 0: argmax codes, no re-masking noise)",
    )
    parser.add_argument(
        "--condition-mask-ratio",
        type=float,
        default=0.0,
        help="frame-parallel: share of the conditioning frame masked in its cache copy "
        "(default 0, Lumos-1's: cached whole)",
    )
    parser.add_argument(
        "--ranking",
        choices=("exact", "quantized"),
        default="exact",
        help="frame-parallel re-masking ranking (default exact, Lumos-1's)",
    )
    parser.add_argument(
        "--speed",
        type=Path,
        default=None,
        help="bench.jsonl from benchmarks/run.py --model <the same checkpoint>: joins its "
        "end-to-end time to the table and plots quality vs speed",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "quality")
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep --out's quality.jsonl records of every mode and setting this run does not "
        "generate (run modes or settings a few at a time; same --frames)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="generate nothing: rebuild the table and plots from --out's quality.jsonl "
        "(e.g. to join a later --speed run)",
    )
    parser.add_argument("--one-job", help=argparse.SUPPRESS)  # internal: a child's job
    args = parser.parse_args(argv)
    for name in ("frames", "scenes", "steps_per_frame"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(w < 1 for w in [*args.windows, *args.sliding_windows]):
        parser.error("every window must be >= 1 frame")
    try:
        args.settings = [parse_setting(spec) for spec in args.settings or []]
    except ValueError as err:
        parser.error(str(err))
    return args


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    return (
        str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)
    )


def model_for(mode: str, args) -> Path:
    model_dir = args.model or ROOT / DEFAULT_MODELS[mode]
    if not (model_dir / "training.json").is_file():
        raise SystemExit(f"model {model_dir}: no training.json (a checkpoint trained here)")
    return model_dir


def parse_setting(spec: str) -> Setting:
    """``POLICY`` or ``POLICY:KNOB=VALUE,...`` (any --kv-policy preset and its knobs) -> Setting;
    ValueError naming what the preset refuses."""
    policy, _, knobs_text = spec.partition(":")
    knobs = {}
    for item in filter(None, knobs_text.split(",")):
        name, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"setting {spec!r}: knob {item!r} is not NAME=VALUE")
        knobs[name.strip()] = knob_value(value.strip())
    window, selector = knobs.pop("window", None), knobs.pop("selector", "uniform")
    setting = Setting(policy, window, selector, tuple(knobs.items()))
    setting.config()  # the preset's own checks
    return setting


def knob_value(text: str) -> object:
    """An int, else a float, else the string."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def settings(args) -> list[Setting]:
    if args.settings:
        return args.settings
    rows = [Setting("full")]
    rows += [Setting("sliding", w) for w in args.sliding_windows]
    rows += [Setting("packcache", w) for w in args.windows]
    if args.key_norm_window:
        rows.append(Setting("packcache", args.key_norm_window, "key_norm"))
    return rows


# --- scenes --------------------------------------------------------------------------------------


def heldout_clips(model_dir: Path, frames: int, scenes: int):
    """Held-out scene clips of frames + 1 frames whose prompt carries the training clips'
    duration token (the model saw no other)."""
    from packcache_vllm.video.heldout import model_heldout_clips

    return model_heldout_clips(model_dir, frames, scenes)


# --- generation (child process) ------------------------------------------------------------------


def generate(job: Job, clips) -> tuple[list[list[int]], float]:
    """Every scene's generated tokens, and the wall time of the generation itself."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    from packcache_vllm.cli import engine_overrides

    llm = LLM(
        job.model_dir,
        dtype="float32",
        enforce_eager=True,
        block_size=32,
        seed=0,
        kv_cache_memory_bytes=512 << 20,
        max_model_len=16384,
        **engine_overrides(job.setting.policy, mode=job.mode, **job.setting.knobs()),
    )
    num_tokens = job.frames * clips[0].layout.tokens_per_frame
    params = [
        SamplingParams(
            temperature=0.0,
            max_tokens=num_tokens,
            ignore_eos=True,
            detokenize=False,
            extra_args=ardf_extra_args(job, i),
        )
        for i in range(len(clips))
    ]
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": c.prompt} for c in clips], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return [list(out.outputs[0].token_ids) for out in outputs], seconds


def ardf_extra_args(job: Job, scene: int) -> dict | None:
    if job.mode != "frame-parallel":
        return None
    return {f"ardf_{name}": value for name, value in asdict(ardf_params(job, scene)).items()}


def ardf_params(job: Job, scene: int):
    from packcache_vllm.core.maskgit import ARDFSamplingParams

    return ARDFSamplingParams(
        steps_per_frame=job.steps_per_frame,
        cfg_scale=job.cfg_scale,
        top_k=job.top_k,
        temperature=job.temperature,
        condition_mask_ratio=job.condition_mask_ratio,
        ranking=job.ranking,
        seed=scene,
    )


# --- scoring -------------------------------------------------------------------------------------


def score(job: Job, clips, tokens: list[list[int]], seconds: float) -> list[dict]:
    """One record per scene: the setting, and each measure per generated frame."""
    from packcache_vllm.video.quality import frame_quality
    from packcache_vllm.video.tokens import decode_frames

    config = job.setting.config()
    records = []
    for i, (clip, generated) in enumerate(zip(clips, tokens, strict=True)):
        decoded = decode_frames(generated, clip.scene.rows, clip.scene.cols, strict=False)
        quality = frame_quality(decoded.cells, decoded.valid, clip.frames[1:], clip.scene)
        records.append(
            {
                "mode": job.mode,
                "model": shown(Path(job.model_dir)),
                "sampler": sampler_of(job),
                "label": job.setting.label,
                **asdict(job.setting),
                "decay": config.decay,
                "min_keep": config.min_keep,
                "history_frames": config.steady_state_frames(),
                "scene": i,
                "caption": clip.scene.caption(),
                "generate_s": seconds,
                **quality.as_lists(),
            }
        )
    return records


def sampler_of(job: Job) -> dict | None:
    """The frame-parallel sampler's settings (None in next-token mode: greedy)."""
    if job.mode != "frame-parallel":
        return None
    knobs = asdict(ardf_params(job, scene=0))
    del knobs["seed"]
    return knobs


def baseline_records(model_dir: Path, frames: int, scenes: int) -> list[dict]:
    """Copying the first (conditioning) frame into every generated frame."""
    import torch

    from packcache_vllm.video.quality import frame_quality

    records = []
    for i, clip in enumerate(heldout_clips(model_dir, frames, scenes)):
        truth = clip.frames[1:]
        copied = clip.frames[:1].expand_as(truth)
        quality = frame_quality(copied, torch.ones_like(truth, dtype=torch.bool), truth, clip.scene)
        records.append(
            {
                "mode": "baseline",
                "label": "copy the first frame",
                "policy": "–",
                "scene": i,
                "caption": clip.scene.caption(),
                **quality.as_lists(),
            }
        )
    return records


# --- driver --------------------------------------------------------------------------------------


def run_child(job: Job) -> list[dict]:
    done = subprocess.run(
        [sys.executable, __file__, "--one-job", json.dumps(asdict(job))],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{job.mode} {job.setting.label} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_job(job_json: str) -> None:
    fields = json.loads(job_json)
    job = Job(**{**fields, "setting": Setting(**fields["setting"])})  # extra: lists -> tuples
    clips = heldout_clips(Path(job.model_dir), job.frames, job.scenes)
    tokens, seconds = generate(job, clips)
    print(json.dumps(score(job, clips, tokens, seconds)))


def jobs(args) -> list[Job]:
    return [
        Job(
            str(model_for(mode, args)),
            mode,
            setting,
            args.frames,
            args.scenes,
            args.steps_per_frame,
            args.cfg_scale,
            args.top_k,
            args.temperature,
            args.condition_mask_ratio,
            args.ranking,
        )
        for mode in args.modes
        for setting in settings(args)
    ]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one_job:
        one_job(args.one_job)
        return
    from quality_report import plot_drift, plot_quality_vs_speed, summarise, table
    from tqdm import tqdm

    path = args.out / "quality.jsonl"
    if args.report_only:
        records = read_jsonl(path)
    else:
        planned = jobs(args)
        records = kept_records(path, args, planned) if args.append and path.is_file() else []
        records = records or baseline_records(
            model_for(args.modes[0], args), args.frames, args.scenes
        )
        args.out.mkdir(parents=True, exist_ok=True)
        for job in tqdm(planned, desc="settings", unit="run"):
            records += run_child(job)
            path.write_text("".join(json.dumps(record) + "\n" for record in records))  # as it goes
    summaries = summarise(records, DRIFT_FRAMES, speed_rows(args.speed))
    text = header(records) + table(summaries)
    (args.out / "quality.md").write_text(text)
    written = plot_drift(summaries, args.out)
    if args.speed:
        written.append(plot_quality_vs_speed(summaries, args.out))
    print(text)
    print("written:", args.out / "quality.jsonl", args.out / "quality.md", *written)


def kept_records(path: Path, args, planned: list[Job]) -> list[dict]:
    """``path``'s records of the modes and settings ``planned`` does not generate again; they must
    have ``args.frames`` frames."""
    rerun = {(job.mode, job.setting.label) for job in planned}
    kept = [r for r in read_jsonl(path) if (r["mode"], r["label"]) not in rerun]
    other = sorted({len(r["cell_accuracy"]) for r in kept} - {args.frames})
    if other:
        raise SystemExit(f"{path} holds videos of {other} frames; this run makes {args.frames}")
    return kept


def speed_rows(path: Path | None) -> list:
    """``benchmarks/run.py`` results as its table rows (``bench_report.Row``)."""
    from bench_report import row_of

    return [] if path is None else [row_of(result) for result in read_jsonl(path)]


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def header(records: list[dict]) -> str:
    """What the records were made with: models, scenes, frames, the frame-parallel sampler."""
    from datetime import date

    command = "benchmarks/quality.py " + " ".join(sys.argv[1:])
    models = {r["mode"]: r["model"] for r in records if "model" in r}
    scenes = len({r["scene"] for r in records})
    frames = len(records[0]["cell_accuracy"])
    sampler = next((r["sampler"] for r in records if r.get("sampler")), None)
    parallel = (
        ""
        if sampler is None
        else (
            f"frame-parallel: {sampler['steps_per_frame']} steps/frame, "
            f"CFG {sampler['cfg_scale']}, top-k {sampler['top_k']}, "
            f"temperature {sampler['temperature']}, "
            f"conditioning mask ratio {sampler.get('condition_mask_ratio', 0.7)}, "
            f"ranking {sampler.get('ranking', 'quantized')}, seed = scene index; "
        )
    )
    return (
        f"{date.today()}; `{command.strip()}`; "
        + "; ".join(f"{mode}: model `{model}`" for mode, model in models.items())
        + f"; {scenes} held-out scenes x {frames} generated frames; float32; next-token greedy; "
        f"{parallel}means over scenes (position error over the objects found), "
        "[95 % bootstrap intervals over scenes: 2,000 resamples, seed 0; 'paired': of the "
        "per-scene difference to the full cache]; "
        f"'first/last {DRIFT_FRAMES}' = cell accuracy over the first/last {DRIFT_FRAMES} "
        "generated frames.\n\n"
    )


if __name__ == "__main__":
    main()
