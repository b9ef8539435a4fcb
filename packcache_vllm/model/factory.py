"""A tiny random-weight Lumos-1 checkpoint in the real format, and Lumos-style video prompts.

    python -m packcache_vllm.model.factory OUT_DIR [--seed N] [--rows R --cols C] ...

writes, in about a second:

* ``config.json``: a Lumos-1 config (``model_type: chameleon``, architecture
  ``ChameleonXLLMXForConditionalGeneration``, sorted keys) plus three keys of our own that a real
  checkpoint lacks: ``video_rows`` / ``video_cols`` (the frame grid; the model defaults to 48 x 84)
  and ``codebook_size`` (visual codes after id 65536); with ``--codec`` also the video keys of
  ``codec/spec.py`` (and for ``emu3-vq`` a tiny random Emu3 VQ-VAE in ``vq/``).
* ``model.safetensors``: exactly Lumos-1's keys and shapes (lumos-checkpoint-format.md), QK-norm
  weights and biases ``[model_parallel_size, head_dim]``; seeded, so byte-identical per seed.
* a small byte-level tokenizer made in code: ids 0-3 ``<s> <pad> </s> <unk>``, 4..259 the 256 bytes,
  every other id below 65536 ``<reserved{id-4:05d}>`` (Lumos's naming: 9004 is ``<reserved09000>``,
  the video start) except 8196 ``<eoss>`` and 8197 ``<racm3:break>``, and ``<img{k}>`` at 65536+k.
  Every id of the vocabulary decodes to something.

Init scales keep the residual stream O(1) through the layers and give the final logits a spread of
a few units (``LOGIT_STD``), so greedy top-1 margins are rarely tiny: tests compare greedy tokens
across implementations in float32, where near-ties would make them flaky.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from packcache_vllm.core.layout import LUMOS_TOKENS, LumosTokenIds
from packcache_vllm.core.lumos_schema import (
    LUMOS_ARCHITECTURE,
    LumosConfig,
    head_dim_of,
    weight_shapes,
)

TEXT_VOCAB_SIZE = LUMOS_TOKENS.visual_base  # 65,536 text/special ids before the visual codes
DEFAULT_CODEBOOK_SIZE = 256
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3
FIRST_BYTE_ID = len(SPECIAL_TOKENS)  # byte b is token 4 + b
NAMED_IDS = {LUMOS_TOKENS.eoss: "<eoss>", LUMOS_TOKENS.frame_break: "<racm3:break>"}
RESERVED_OFFSET = 4  # id i (not otherwise named) is <reserved{i - 4:05d}>
SUPPORTED_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}

# Init scales (standard deviations), see the module docstring.
EMBED_STD = 1.0  # residual stream starts at rms ~1
NORM_WEIGHT_NOISE = 0.1  # norm weights 1 + N(0, 0.1^2)
NORM_BIAS_NOISE = 0.1  # QK-norm biases N(0, 0.1^2)
OUT_PROJ_GAIN = 1.0  # o_proj / down_proj std = gain / sqrt(fan_in)
LOGIT_STD = 4.0  # lm_head std = LOGIT_STD / sqrt(hidden): logits ~ N(0, 4^2) for a unit-rms input

GRID_PIXELS = 32  # Lumos grid tokens count 32-pixel units
PIXELS_PER_TOKEN = 8  # Cosmos DV4x8x8: one visual token per 8 x 8 pixels
DEFAULT_DURATION_S = 2  # Lumos-1 inference: 2 s at 12 fps
DEFAULT_FPS = 12


@dataclass(frozen=True)
class TinyLumosSpec:
    """Sizes of a tiny Lumos-1 checkpoint (validated by ``core.lumos_schema.LumosConfig``)."""

    hidden_size: int = 128
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    num_hidden_layers: int = 2
    intermediate_size: int = 256
    codebook_size: int = DEFAULT_CODEBOOK_SIZE
    video_rows: int = 4
    video_cols: int = 6
    dtype: torch.dtype = torch.bfloat16
    swin_norm: bool = False
    model_parallel_size: int = 1

    def __post_init__(self) -> None:
        if self.codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {self.codebook_size}")
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"dtype must be one of {sorted(SUPPORTED_DTYPES.values())}, got {self.dtype}"
            )
        LumosConfig.from_dict(lumos_config(self))  # ValueError when no Lumos-1 has these sizes

    @property
    def schema(self) -> LumosConfig:
        """The checkpoint's config as the model reads it (``LumosConfig.from_dict`` of
        ``lumos_config``); ValueError when the sizes make no Lumos-1."""
        return LumosConfig.from_dict(lumos_config(self))

    @property
    def head_dim(self) -> int:
        return head_dim_of(self.hidden_size, self.num_attention_heads)

    @property
    def vocab_size(self) -> int:
        return TEXT_VOCAB_SIZE + self.codebook_size


def build_tiny_lumos(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 128,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    num_hidden_layers: int = 2,
    intermediate_size: int = 256,
    codebook_size: int = DEFAULT_CODEBOOK_SIZE,
    video_rows: int = 4,
    video_cols: int = 6,
    dtype: torch.dtype = torch.bfloat16,
    swin_norm: bool = False,
    model_parallel_size: int = 1,
    codec: str | None = None,
) -> Path:
    """Write config.json, model.safetensors and a tokenizer to ``out_dir``; return its path.

    codec: None (a Lumos-1 config, no codec keys), ``"palette"`` (the synthetic scenes' keys,
    ``codec.spec.palette_checkpoint_keys``; needs codebook_size 16) or ``"emu3-vq"`` (a tiny
    random ``Emu3VQVAE`` of the same codebook, seeded, saved to ``out_dir/vq``)."""
    spec = TinyLumosSpec(
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        num_hidden_layers=num_hidden_layers,
        intermediate_size=intermediate_size,
        codebook_size=codebook_size,
        video_rows=video_rows,
        video_cols=video_cols,
        dtype=dtype,
        swin_norm=swin_norm,
        model_parallel_size=model_parallel_size,
    )
    out = Path(out_dir)
    codec_keys = {} if codec is None else write_codec(out, codec, spec.codebook_size, seed)
    out.mkdir(parents=True, exist_ok=True)
    config = {**lumos_config(spec), **codec_keys}
    config_text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    (out / "config.json").write_text(config_text)
    save_file(make_weights(spec, seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    make_tokenizer(spec.codebook_size).save_pretrained(str(out))
    return out


def write_codec(out: Path, codec: str, codebook_size: int, seed: int) -> dict:
    """Write what the codec needs into ``out``; its config.json keys (``codec.spec``)."""
    from packcache_vllm.codec import spec as codec_spec
    from packcache_vllm.video.palette import PALETTE_SIZE

    if codec == codec_spec.PALETTE:
        codec_spec.check_codebook(out, PALETTE_SIZE, codebook_size, "the palette")
        return codec_spec.palette_checkpoint_keys()
    if codec == codec_spec.EMU3_VQ:
        from packcache_vllm.codec.emu3_vq import tiny_emu3_vq

        tiny_emu3_vq(codebook_size=codebook_size, seed=seed).save_pretrained(str(out / "vq"))
        return codec_spec.emu3_checkpoint_keys("vq")
    raise ValueError(f"codec must be one of {codec_spec.CODEC_KINDS} or None, got {codec!r}")


def lumos_config(spec: TinyLumosSpec) -> dict:
    """The config.json contents of a Lumos-1 checkpoint of these sizes."""
    return {
        "architectures": [LUMOS_ARCHITECTURE],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "codebook_size": spec.codebook_size,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "mask_image_logits": False,
        "max_position_embeddings": 65536,
        "mlp_bias": False,
        "mm_rope": True,
        "model_parallel_size": spec.model_parallel_size,
        "model_type": "chameleon",
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "pad_token_id": 1,
        "rms_norm_eps": 1e-5,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "swin_norm": spec.swin_norm,
        "tie_word_embeddings": False,
        "torch_dtype": SUPPORTED_DTYPES[spec.dtype],
        "video_cols": spec.video_cols,
        "video_rows": spec.video_rows,
        "vocab_size": spec.vocab_size,
    }


# --- weights ------------------------------------------------------------------------------------


def make_weights(spec: TinyLumosSpec, seed: int) -> dict[str, torch.Tensor]:
    """Every Lumos-1 tensor (``core.lumos_schema.weight_shapes``), random and seeded, in
    ``spec.dtype``, drawn in the schema's key order."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in weight_shapes(spec.schema).items():
        mean, std = init_mean_std(name, shape, spec.hidden_size)
        weights[name] = (torch.randn(shape, generator=gen) * std + mean).to(spec.dtype)
    return {name: tensor.contiguous() for name, tensor in weights.items()}


def init_mean_std(name: str, shape: tuple[int, ...], hidden_size: int) -> tuple[float, float]:
    """(mean, std) of the normal a weight is drawn from (init scales above)."""
    if name == "model.embed_tokens.weight":
        return 0.0, EMBED_STD
    if name == "lm_head.weight":
        return 0.0, LOGIT_STD / math.sqrt(hidden_size)
    if name.endswith("norm.bias"):
        return 0.0, NORM_BIAS_NOISE
    if name.endswith("norm.weight"):
        return 1.0, NORM_WEIGHT_NOISE
    gain = OUT_PROJ_GAIN if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
    return 0.0, gain / math.sqrt(shape[1])


# --- tokenizer ----------------------------------------------------------------------------------


def byte_symbols() -> list[str]:
    """The 256 byte-level BPE symbols (GPT-2's bytes_to_unicode), indexed by byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in symbols)
    for n, b in enumerate(shifted):
        symbols[b] = chr(256 + n)
    return [symbols[b] for b in range(256)]


def token_name(token_id: int) -> str:
    """Name of a non-byte id: specials, Lumos's named markers, <reserved#####>, <img#>."""
    if token_id < FIRST_BYTE_ID:
        return SPECIAL_TOKENS[token_id]
    if token_id >= TEXT_VOCAB_SIZE:
        return f"<img{token_id - TEXT_VOCAB_SIZE}>"
    if token_id in NAMED_IDS:
        return NAMED_IDS[token_id]
    if token_id < FIRST_BYTE_ID + 256:
        raise ValueError(f"id {token_id} is a byte token, it has no name")
    return f"<reserved{token_id - RESERVED_OFFSET:05d}>"


def tokenizer_vocab(codebook_size: int) -> dict[str, int]:
    """Token string -> id for every id in [0, 65536 + codebook_size)."""
    vocab = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    vocab.update({sym: FIRST_BYTE_ID + b for b, sym in enumerate(byte_symbols())})
    for token_id in range(FIRST_BYTE_ID + 256, TEXT_VOCAB_SIZE + codebook_size):
        vocab[token_name(token_id)] = token_id
    return vocab


def make_tokenizer(codebook_size: int = DEFAULT_CODEBOOK_SIZE):
    """A byte-level BPE tokenizer without merges over Lumos-1's id layout (a
    ``transformers.PreTrainedTokenizerFast``)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab=tokenizer_vocab(codebook_size), merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [*SPECIAL_TOKENS, *NAMED_IDS.values()]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


# --- prompts ------------------------------------------------------------------------------------


def grid_token(units: int, tokens: LumosTokenIds = LUMOS_TOKENS) -> int:
    """Lumos's grid/duration/fps token for the count ``units`` (``<reserved{8800+n}>``)."""
    if units < 0:
        raise ValueError(f"a grid/duration/fps count must be >= 0, got {units}")
    return tokens.grid_base + units


def make_frame(
    rows: int,
    cols: int,
    rng: random.Random,
    *,
    codebook_size: int = DEFAULT_CODEBOOK_SIZE,
    tokens: LumosTokenIds = LUMOS_TOKENS,
) -> list[int]:
    """One frame in Lumos's format with random visual codes:
    ``<racm3:break> <h grid> <w grid> rows x (cols codes, <newline>) <eoss>``."""
    if rows < 1 or cols < 1:
        raise ValueError(f"a frame needs rows, cols >= 1, got {rows} x {cols}")
    if codebook_size < 1:
        raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
    frame = [
        tokens.frame_break,
        grid_token(rows * PIXELS_PER_TOKEN // GRID_PIXELS, tokens),
        grid_token(cols * PIXELS_PER_TOKEN // GRID_PIXELS, tokens),
    ]
    for _ in range(rows):
        frame += [tokens.visual_base + rng.randrange(codebook_size) for _ in range(cols)]
        frame.append(tokens.newline)
    frame.append(tokens.eoss)
    return frame


def make_video_prompt(
    layout_rows: int,
    layout_cols: int,
    text_ids: list[int],
    *,
    with_condition_frame: bool,
    rng: random.Random,
    codebook_size: int = DEFAULT_CODEBOOK_SIZE,
    duration_s: int = DEFAULT_DURATION_S,
    fps: int = DEFAULT_FPS,
    tokens: LumosTokenIds = LUMOS_TOKENS,
) -> list[int]:
    """A Lumos-style video prompt: ``text_ids``, video start, duration and fps tokens, then (for
    image-to-video) one conditioning frame with random visual codes.

    The prompt's first frame starts at its ``<racm3:break>`` (``layout.find_frame_start``); without
    a conditioning frame (text-to-video) the generated video starts right after the prompt.
    """
    if any(not 0 <= t < TEXT_VOCAB_SIZE for t in text_ids):
        raise ValueError(f"text_ids must be text ids in [0, {TEXT_VOCAB_SIZE}), got {text_ids}")
    if tokens.frame_break in text_ids:
        raise ValueError("text_ids must not contain <racm3:break>: it marks the first frame")
    prompt = [
        *text_ids,
        tokens.video_start,
        grid_token(duration_s, tokens),
        grid_token(fps, tokens),
    ]
    if with_condition_frame:
        prompt += make_frame(
            layout_rows, layout_cols, rng, codebook_size=codebook_size, tokens=tokens
        )
    return prompt


# --- CLI ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m packcache_vllm.model.factory",
        description="Write a tiny random-weight Lumos-1 checkpoint (real format) to OUT_DIR.",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="directory to write")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--rows", type=int, default=4, help="frame grid rows (default 4)")
    parser.add_argument("--cols", type=int, default=6, help="frame grid columns (default 6)")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    parser.add_argument("--kv-heads", type=int, default=2, help="key/value heads (default 2)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    parser.add_argument("--intermediate-size", type=int, default=256)
    parser.add_argument(
        "--codebook-size", type=int, default=DEFAULT_CODEBOOK_SIZE, help="visual codes"
    )
    parser.add_argument("--dtype", choices=sorted(SUPPORTED_DTYPES.values()), default="bfloat16")
    parser.add_argument("--swin-norm", action="store_true", help="Chameleon's swin-norm layers")
    parser.add_argument(
        "--codec",
        choices=("palette", "emu3-vq"),
        help="write a visual codec: the scenes' palette (needs --codebook-size 16) or a tiny "
        "random Emu3 VQ in OUT_DIR/vq (default: none, like a Lumos-1 checkpoint)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    dtype = {name: dt for dt, name in SUPPORTED_DTYPES.items()}[args.dtype]
    out = build_tiny_lumos(
        args.out_dir,
        seed=args.seed,
        hidden_size=args.hidden_size,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        num_hidden_layers=args.layers,
        intermediate_size=args.intermediate_size,
        codebook_size=args.codebook_size,
        video_rows=args.rows,
        video_cols=args.cols,
        dtype=dtype,
        swin_norm=args.swin_norm,
        codec=args.codec,
    )
    config = json.loads((out / "config.json").read_text())
    print(
        f"wrote a tiny Lumos-1 checkpoint to {out}: {config['num_hidden_layers']} layers, "
        f"hidden {config['hidden_size']}, heads {config['num_attention_heads']}/"
        f"{config['num_key_value_heads']} (q/kv), vocab {config['vocab_size']}, "
        f"frame grid {config['video_rows']}x{config['video_cols']}, {args.dtype}, seed {args.seed}"
    )
    for path in sorted(out.iterdir()):
        print(f"  {path.name} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
