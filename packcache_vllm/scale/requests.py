"""Video requests of a batch job: one JSON object per line, validated before anything starts.

A line is::

    {"id": "clip-001",                       # unique; [A-Za-z0-9._-], names the result files
     "prompt_token_ids": [...],              # a Lumos-1 video prompt as token ids, or
     "caption": "a red ball",                #   a caption, tokenized with the checkpoint's
     "condition_seed": 7,                    #   tokenizer (+ a seeded random conditioning frame
                                             #   of the checkpoint's visual codes)
     "frames": 8,                            # latent frames to generate
     "packcache": {"window": 2},             # optional per-request policy overrides
     "temperature": 0.0, "seed": 0}          # optional sampling (greedy by default)
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packcache_vllm.cli import parse_request_overrides
from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.engine.vocab_check import check_token_ids

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
PROMPT_KEYS = ("prompt_token_ids", "caption")
KNOWN_KEYS = {"id", "frames", "packcache", "temperature", "seed", "condition_seed", *PROMPT_KEYS}
OVERRIDE_PREFIX = "packcache_"


@dataclass(frozen=True)
class VideoRequest:
    """One video to generate (prompt already as token ids)."""

    id: str
    prompt_token_ids: tuple[int, ...]
    frames: int
    overrides: Mapping[str, Any] = field(default_factory=dict)  # knob -> value
    temperature: float = 0.0
    seed: int | None = None

    def extra_args(self) -> dict[str, Any]:
        """``SamplingParams.extra_args``: the overrides as flat ``packcache_*`` keys."""
        return {OVERRIDE_PREFIX + knob: value for knob, value in self.overrides.items()}

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "overrides": dict(self.overrides)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VideoRequest:
        raw = json.loads(text)
        return cls(**{**raw, "prompt_token_ids": tuple(raw["prompt_token_ids"])})

    def fingerprint(self) -> str:
        """Identifies the request's content: a finished result is reused only for the same one."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PromptBuilder:
    """The checkpoint's prompts: a caption becomes a video prompt with its tokenizer, frame grid
    and visual codebook; given token ids must lie in its vocabulary."""

    rows: int
    cols: int
    codebook_size: int  # visual codes the checkpoint can emit (config_hook.visual_codebook_size)
    encode: Callable[[str], list[int]]

    def build(self, caption: str, condition_seed: int | None) -> tuple[int, ...]:
        from packcache_vllm.model.factory import make_video_prompt

        prompt = make_video_prompt(
            self.rows,
            self.cols,
            self.encode(caption),
            with_condition_frame=condition_seed is not None,
            rng=random.Random(condition_seed),
            codebook_size=self.codebook_size,
        )
        return tuple(prompt)

    def check(self, prompt_token_ids: list[int]) -> tuple[int, ...]:
        """Given token ids, refused (ValueError) if the checkpoint cannot embed one of them."""
        check_token_ids(prompt_token_ids, self.codebook_size)
        return tuple(prompt_token_ids)


def load_requests(
    path: Path, builder: PromptBuilder, base: PackCacheConfig | None
) -> list[VideoRequest]:
    """Every request of a JSONL file; ValueError naming the file, line and field on bad input.

    ``base`` is the replicas' policy (None: ``--kv-policy none``, which takes no overrides).
    """
    requests, seen = [], {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            request = parse_request(json.loads(line), builder, base)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{where}: {error}") from None
        if request.id in seen:
            raise ValueError(f"{where}: id {request.id!r} already used on line {seen[request.id]}")
        seen[request.id] = number
        requests.append(request)
    if not requests:
        raise ValueError(f"{path}: no requests")
    return requests


def parse_request(
    raw: object, builder: PromptBuilder, base: PackCacheConfig | None
) -> VideoRequest:
    if not isinstance(raw, dict):
        raise ValueError(f"a request must be a JSON object, got {raw!r}")
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; known keys: {sorted(KNOWN_KEYS)}")
    return VideoRequest(
        id=check_id(raw.get("id")),
        prompt_token_ids=prompt_of(raw, builder),
        frames=check_positive_int("frames", raw.get("frames")),
        overrides=check_overrides(raw.get("packcache", {}), base),
        temperature=check_temperature(raw.get("temperature", 0.0)),
        seed=None if raw.get("seed") is None else check_int("seed", raw["seed"]),
    )


def check_id(value: object) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"id must be 1-128 characters of [A-Za-z0-9._-] starting with a letter or digit "
            f"(it names the result files), got {value!r}"
        )
    return value


def prompt_of(raw: dict, builder: PromptBuilder) -> tuple[int, ...]:
    given = [key for key in PROMPT_KEYS if key in raw]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {list(PROMPT_KEYS)}, got {given}")
    if "caption" in raw:
        caption, seed = raw["caption"], raw.get("condition_seed")
        if not isinstance(caption, str) or not caption:
            raise ValueError(f"caption must be a non-empty string, got {caption!r}")
        return builder.build(caption, None if seed is None else check_int("condition_seed", seed))
    if "condition_seed" in raw:
        raise ValueError("condition_seed goes with caption, not with prompt_token_ids")
    ids = raw["prompt_token_ids"]
    if not isinstance(ids, list) or not ids or not all(_is_int(t) and t >= 0 for t in ids):
        raise ValueError(
            f"prompt_token_ids must be a non-empty list of token ids >= 0, got {ids!r}"
        )
    return builder.check(ids)


def check_overrides(value: object, base: PackCacheConfig | None) -> dict[str, Any]:
    """The per-request knobs, checked with the engine's own rules against the replicas' policy."""
    if not isinstance(value, dict):
        raise ValueError(f"packcache must be an object of knobs, got {value!r}")
    if not value:
        return {}
    if base is None:
        raise ValueError(f"packcache overrides {value} need a PackCache policy on the replicas")
    parse_request_overrides({"packcache": value}, base)
    return dict(value)


def check_positive_int(name: str, value: object) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_int(name: str, value: object) -> int:
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def check_temperature(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"temperature must be a number >= 0, got {value!r}")
    return float(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
