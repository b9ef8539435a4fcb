"""Train a tiny Lumos-1 to continue synthetic motion (next-token, raster order, causal).

    python -m packcache_vllm.train.train --out checkpoints/lumos-motion-8x12 [--steps 400] ...

Each step draws ``--batch`` fresh clips from the ``train`` split (8 x 12 cells, 8 frames: a caption,
the first frame as the conditioning image, 7 frames to predict) and minimises the cross-entropy of
every continuation token (cells and frame markers) over the full vocabulary (see
``train.model``). AdamW, linear warm-up then cosine decay, gradient clipping at 1. Deterministic:
same arguments, same machine, same checkpoint (seeded init, seeded scenes, no dropout).

Cost: the defaults (400 steps) took 6.2 minutes of wall time on 2 shared CPU cores (about 0.25 s
per step when the machine is otherwise idle). At 400 steps the model has learned the frame format
and the backgrounds but not yet the motion (it does not beat copying the last frame): more steps
(``--steps 1200`` or more, ~5-15 min idle) are the next thing to try. On one GPU (H100 class) such a
run takes well under a minute; there one would train a wider model (hidden 256+, 6+ layers) on
longer clips (16+ frames, pans on) for ~10k steps, and mix in Lumos-1's AR-DF objective (masked
frames, bidirectional inside a frame) for frame-parallel decoding.

Writes the checkpoint (Lumos-1 HF format, bf16, loadable by vLLM through the plugin), its
``training.json`` (arguments, loss per step, wall time), and the loss curve
(``--plot``, default ``benchmarks/results/quality/loss.png``).
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

from packcache_vllm.model.factory import TinyLumosSpec
from packcache_vllm.train.data import Batch, ClipSpec, make_batch, video_active_vocab
from packcache_vllm.train.model import TrainableLumos
from packcache_vllm.video.palette import PALETTE_SIZE

DEFAULT_PLOT = Path("benchmarks/results/quality/loss.png")
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

    def __post_init__(self) -> None:
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


def train(config: TrainConfig, log_every: int = 25) -> tuple[TrainableLumos, list[float], float]:
    """Returns the model, the loss of every step and the wall time in seconds."""
    torch.manual_seed(config.seed)
    model = TrainableLumos(config.model_spec(), video_active_vocab(), seed=config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay
    )
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(config.steps):
        clips = [config.clip.clip("train", step * config.batch + j) for j in range(config.batch)]
        loss = continuation_loss(model, make_batch(clips))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        optimizer.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == config.steps - 1:
            elapsed = time.perf_counter() - start
            print(f"step {step:5d}  loss {losses[-1]:.4f}  {elapsed:7.1f} s", flush=True)
    return model, losses, time.perf_counter() - start


def plot_losses(losses: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = 20
    smooth = [
        sum(losses[max(0, i - window + 1) : i + 1]) / min(i + 1, window) for i in range(len(losses))
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(losses, alpha=0.35, label="per step")
    ax.plot(smooth, label=f"mean of last {window}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / continuation token)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    fields = {k: getattr(args, k) for k in (*INTEGER_KNOBS, "lr")}
    try:
        config = TrainConfig(**fields, clip=ClipSpec(num_frames=args.frames))
    except ValueError as err:
        parser.error(str(err))
    return args, config


def main(argv: list[str] | None = None) -> None:
    args, config = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, losses, seconds = train(config)
    out = model.save_pretrained(args.out)
    record = {
        "config": asdict(config),
        "wall_s": round(seconds, 1),
        "final_loss": losses[-1],
        "losses": losses,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    plot_losses(
        losses,
        args.plot,
        f"tiny Lumos-1 on synthetic motion ({config.steps} steps, {seconds / 60:.1f} min CPU)",
    )
    print(f"trained {config.steps} steps in {seconds:.0f} s, final loss {losses[-1]:.4f}")
    print(f"checkpoint: {out}; loss curve: {args.plot}")


if __name__ == "__main__":
    main()
