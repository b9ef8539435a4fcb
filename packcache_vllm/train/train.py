"""Train a tiny Lumos-1 to continue synthetic motion: next-token, AR-DF, or both.

    python -m packcache_vllm.train.train --out checkpoints/lumos-motion-8x12 [--steps 400] ...
    python -m packcache_vllm.train.train --out checkpoints/lumos-motion-8x12-ardf \
        --objective both --init checkpoints/lumos-motion-8x12 ...

Each step draws ``--batch`` fresh clips from the ``train`` split (8 x 12 cells, ``--frames`` 6: a
caption, the first frame as the conditioning image, 5 frames to predict) and minimises the
cross-entropy of every continuation token (cells and frame markers) over the full vocabulary
(see ``train.model``). AdamW, linear warm-up then cosine decay, gradient clipping at 1.
Deterministic: same arguments, same machine, same checkpoint (seeded init, seeded scenes, no
dropout).

Cost: about 0.25 s per step of 8 six-frame clips on this idle 2-core CPU (0.67 s with
``--frames 16``). 400 steps learn the frame format and the backgrounds but not yet the motion;
the committed ``lumos-motion-8x12`` took 4000 (its README has the command and the numbers).
On one GPU (H100 class) such a run takes well under a minute; there one would train a wider
model (hidden 256+, 6+ layers) on longer clips (16+ frames, pans on) for ~10k steps, with
``--objective both``. An AR-DF step costs about 3x a next-token one (a longer sequence, a
general attention mask); ``both``: 1.3 s per step of 8 clips with ``--threads 1`` on the loaded
2-core machine, where ``--threads 2`` was ~7x slower (threads waiting on each other when the
other jobs hold the cores).

``--objective`` picks what is learned (the same clips either way):

* ``next-token`` (default; the above): raster-order next-token prediction, causal; serves the
  engine's next-token mode;
* ``ardf``: Lumos-1's AR-DF objective (``train.ardf``): per frame, a canvas with a random MaskGIT
  fraction of its cells ``<mask>`` is predicted from the text, the history-masked commits of the
  earlier frames and its own unmasked cells (bidirectional inside the frame), at the logical
  indices frame-parallel inference uses (the conditioning frame cached whole, as Lumos-1's
  inference, unless ``--condition-mask-ratio`` says otherwise); 10 % of the examples drop
  the caption to train the CFG twin; serves the engine's frame-parallel mode. AR-DF masks and
  caption drops come from a generator seeded with ``--seed``;
* ``both``: the sum of the two losses on the same clips, so one checkpoint serves both modes.

``--init DIR`` starts from a checkpoint this script wrote (fine-tuning) instead of a seeded init;
its sizes must be the run's (the defaults are the committed checkpoint's).

Writes the checkpoint (Lumos-1 HF format, bf16, loadable by vLLM through the plugin), its
``training.json`` (arguments with the objective, loss per step and, for ``both``, each part's,
wall time), and the loss curve (``--plot``, default ``benchmarks/results/quality/loss.png``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from packcache_vllm.codec.spec import palette_checkpoint_keys
from packcache_vllm.model.factory import TinyLumosSpec
from packcache_vllm.train.ardf import ARDFConfig, ardf_batch, ardf_loss
from packcache_vllm.train.data import Batch, ClipSpec, make_batch, video_active_vocab
from packcache_vllm.train.model import TrainableLumos
from packcache_vllm.video.palette import PALETTE_SIZE
from packcache_vllm.video.tokens import SceneClip

DEFAULT_PLOT = Path("benchmarks/results/quality/loss.png")
OBJECTIVES = ("next-token", "ardf", "both")
LOSS_LABELS = {
    "next-token": "cross-entropy (nats / continuation token)",
    "ardf": "cross-entropy (nats / masked cell)",
    "both": "next-token + AR-DF cross-entropy (nats)",
}
INTEGER_KNOBS = (
    "steps",
    "batch",
    "seed",
    "hidden_size",
    "heads",
    "kv_heads",
    "layers",
    "intermediate_size",
    "warmup_steps",
)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 400
    batch: int = 8
    lr: float = 3e-3
    warmup_steps: int = 40
    weight_decay: float = 0.0
    seed: int = 0
    hidden_size: int = 64
    heads: int = 2
    kv_heads: int = 2
    layers: int = 4
    intermediate_size: int = 192
    clip: ClipSpec = ClipSpec()
    objective: str = "next-token"
    ardf: ARDFConfig = ARDFConfig()
    init: str | None = None  # checkpoint directory to start from (None: seeded init)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"--objective must be one of {list(OBJECTIVES)}, got {self.objective!r}"
            )
        for name in ("steps", "batch", "hidden_size", "heads", "kv_heads", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")

    def model_spec(self) -> TinyLumosSpec:
        return TinyLumosSpec(
            hidden_size=self.hidden_size,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            num_hidden_layers=self.layers,
            intermediate_size=self.intermediate_size,
            codebook_size=PALETTE_SIZE,
            video_rows=self.clip.rows,
            video_cols=self.clip.cols,
        )


def continuation_loss(model: TrainableLumos, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy (full vocabulary) over the batch's continuation tokens."""
    hidden = model(batch.ids, batch.frame_start)  # [B, N, D]
    chosen = batch.loss_weight > 0
    logits = model.active_logits(hidden[chosen])  # [K, A + 1]
    return F.cross_entropy(logits, model.vocab.compact(batch.targets[chosen]))


def learning_rate(config: TrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def objective_losses(
    model: TrainableLumos, clips: list[SceneClip], config: TrainConfig, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """The objective's loss parts on the clips, by name ("next-token", "ardf")."""
    parts = {}
    if config.objective in ("next-token", "both"):
        parts["next-token"] = continuation_loss(model, make_batch(clips))
    if config.objective in ("ardf", "both"):
        parts["ardf"] = ardf_loss(model, ardf_batch(clips, config.ardf, gen))
    return parts


def initial_model(config: TrainConfig) -> TrainableLumos:
    """A seeded init, or the ``config.init`` checkpoint (its sizes must be the config's)."""
    if config.init is None:
        return TrainableLumos(config.model_spec(), video_active_vocab(), seed=config.seed)
    model = TrainableLumos.from_pretrained(config.init, video_active_vocab())
    if model.spec != config.model_spec():
        raise ValueError(
            f"--init {config.init} has sizes {model.spec}, the run asks for "
            f"{config.model_spec()}: pass matching --hidden-size, --layers, ..."
        )
    return model


def train(
    config: TrainConfig, log_every: int = 25, parts: dict[str, list[float]] | None = None
) -> tuple[TrainableLumos, list[float], float]:
    """Returns the model, the loss of every step (the sum of the objective's parts) and the wall
    time in seconds. ``parts``: if given, filled with each part's loss per step, by name."""
    torch.manual_seed(config.seed)
    model = initial_model(config)
    gen = torch.Generator().manual_seed(config.seed)  # AR-DF masks and caption drops
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay
    )
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(config.steps):
        clips = [config.clip.clip("train", step * config.batch + j) for j in range(config.batch)]
        step_parts = objective_losses(model, clips, config, gen)
        loss = sum(step_parts.values())
        if parts is not None:
            for name, value in step_parts.items():
                parts.setdefault(name, []).append(value.item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        optimizer.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == config.steps - 1:
            elapsed = time.perf_counter() - start
            detail = "".join(f"  {k} {v.item():.4f}" for k, v in step_parts.items())
            detail = detail if len(step_parts) > 1 else ""
            print(f"step {step:5d}  loss {losses[-1]:.4f}{detail}  {elapsed:7.1f} s", flush=True)
    return model, losses, time.perf_counter() - start


def plot_losses(
    losses: list[float],
    path: Path,
    title: str,
    ylabel: str = LOSS_LABELS["next-token"],
    parts: dict[str, list[float]] | None = None,
) -> None:
    """The loss per step and its running mean; ``parts`` (several): each part's running mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = 20
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(losses, alpha=0.35, label="per step")
    ax.plot(running_mean(losses, window), label=f"mean of last {window}")
    if parts is not None and len(parts) > 1:
        for name, values in parts.items():
            ax.plot(running_mean(values, window), label=f"{name} part, mean of last {window}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def running_mean(values: list[float], window: int) -> list[float]:
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / min(i + 1, window) for i in range(len(values))
    ]


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, TrainConfig]:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m packcache_vllm.train.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="loss curve PNG")
    for name in INTEGER_KNOBS:
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    parser.add_argument(
        "--frames", type=int, default=defaults.clip.num_frames, help="frames per training clip"
    )
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=defaults.objective,
        help="next-token (raster order, causal), ardf (Lumos-1's masked frames, frame-parallel), "
        "or both (the sum of the two losses on the same clips)",
    )
    parser.add_argument(
        "--drop-caption",
        type=float,
        default=defaults.ardf.drop_caption,
        help="AR-DF: fraction of examples without the caption (the CFG twin)",
    )
    parser.add_argument(
        "--condition-mask-ratio",
        type=float,
        default=defaults.ardf.condition_ratio,
        help="AR-DF: history-mask ratio of the prompt's conditioning frame in the examples "
        "(0: cached whole, as Lumos-1's inference; 0.7: masked like every commit)",
    )
    parser.add_argument(
        "--init", type=Path, help="start from this checkpoint (one this script wrote)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    fields = {k: getattr(args, k) for k in (*INTEGER_KNOBS, "lr", "objective")}
    try:
        config = TrainConfig(
            **fields,
            clip=ClipSpec(num_frames=args.frames),
            ardf=ARDFConfig(
                condition_ratio=args.condition_mask_ratio, drop_caption=args.drop_caption
            ),
            init=None if args.init is None else str(args.init),
        )
    except ValueError as err:
        parser.error(str(err))
    return args, config


def main(argv: list[str] | None = None) -> None:
    args, config = parse_args(argv)
    torch.set_num_threads(args.threads)
    parts: dict[str, list[float]] = {}
    model, losses, seconds = train(config, parts=parts)
    out = model.save_pretrained(args.out, extra_config=palette_checkpoint_keys())
    record = {
        "config": asdict(config),
        "wall_s": round(seconds, 1),
        "final_loss": losses[-1],
        "losses": losses,
    }
    if len(parts) > 1:
        record["loss_parts"] = parts
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    objective = "" if config.objective == "next-token" else f", {config.objective}"
    plot_losses(
        losses,
        args.plot,
        f"tiny Lumos-1 on synthetic motion ({config.steps} steps{objective}, "
        f"{seconds / 60:.1f} min CPU)",
        ylabel=LOSS_LABELS[config.objective],
        parts=parts,
    )
    print(f"trained {config.steps} steps in {seconds:.0f} s, final loss {losses[-1]:.4f}")
    print(f"checkpoint: {out}; loss curve: {args.plot}")


if __name__ == "__main__":
    main()
