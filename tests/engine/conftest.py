"""Shared fixtures for tests that run vLLM on the CPU with a tiny random Lumos-1 checkpoint.

One in-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0, ~3 s to start) is shared by every test
of the session; tests that need the real multi-process server start their own.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

BLOCK_SIZE = 32
# The device the engines run on: "cpu" (the default) or "cuda" (``scripts/gpu_check.sh``), which
# must be vLLM's platform. On CUDA every in-process engine of the session shares the one GPU, and
# vLLM refuses to start an engine unless gpu_memory_utilization of the whole GPU is still free.
TEST_DEVICE = os.environ.get("PACKCACHE_TEST_DEVICE", "cpu")
DEVICE_ENGINE_SETTINGS = {"gpu_memory_utilization": 0.04} if TEST_DEVICE == "cuda" else {}
_ENGINES_KEPT_ALIVE: list = []


def keep_alive(engine):
    """Keep an in-process engine until the session ends: a shut-down or garbage-collected engine
    tears down distributed state that the other in-process engines share."""
    _ENGINES_KEPT_ALIVE.append(engine)
    return engine


KV_CACHE_BYTES = 128 << 20
# The shared evicting engine: W=3 with min_keep 1/4 thins frames to 1/2 and 1/4, then drops them.
PACKCACHE_WINDOW = 3
PACKCACHE_MIN_KEEP = 0.25


@pytest.fixture(scope="session", autouse=True)
def test_device_is_vllms_platform():
    from vllm.platforms import current_platform

    platform = "cuda" if current_platform.is_cuda() else str(current_platform.device_type)
    if platform != TEST_DEVICE:
        raise RuntimeError(
            f"PACKCACHE_TEST_DEVICE={TEST_DEVICE!r}, but vLLM's platform is {platform!r}"
        )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from packcache_vllm.model.factory import build_tiny_lumos

    return build_tiny_lumos(tmp_path_factory.mktemp("tiny-lumos"), seed=0)


@pytest.fixture(scope="session")
def llm(tiny_model_dir):
    from vllm import LLM

    engine = LLM(
        str(tiny_model_dir),
        dtype="float32",
        enforce_eager=True,
        block_size=BLOCK_SIZE,
        kv_cache_memory_bytes=KV_CACHE_BYTES,
        max_model_len=4096,
        enable_prefix_caching=False,
        seed=0,
        **DEVICE_ENGINE_SETTINGS,
    )
    yield engine
    engine.llm_engine.engine_core.shutdown()


TIGHT_POOL_BLOCKS = 14  # too small for the three test videos at once
TIGHT_MAX_MODEL_LEN = 416  # vLLM needs one max-length request to fit the pool


# The LLM arguments of the in-process engines with a PackCache policy.
POLICY_ENGINE_SETTINGS = {
    "dtype": "float32",
    "enforce_eager": True,
    "block_size": BLOCK_SIZE,
    "kv_cache_memory_bytes": 64 << 20,
    "max_model_len": 4096,
    "seed": 0,
    **DEVICE_ENGINE_SETTINGS,
}


def make_packcache_llm(model_dir, **settings):
    """An in-process engine with ``--kv-policy packcache`` (W=3, min_keep 1/4), kept alive for
    the session; ``settings`` override the LLM arguments."""
    from vllm import LLM

    from packcache_vllm.cli import engine_overrides

    arguments = {**POLICY_ENGINE_SETTINGS, **settings}
    policy = engine_overrides("packcache", window=PACKCACHE_WINDOW, min_keep=PACKCACHE_MIN_KEEP)
    return keep_alive(LLM(str(model_dir), **arguments, **policy))


@pytest.fixture(scope="session")
def packcache_llm(tiny_model_dir, llm):
    """The same model with ``--kv-policy packcache``, shared by the engine tests."""
    return make_packcache_llm(tiny_model_dir)


@pytest.fixture(scope="session")
def frame_grid(tiny_model_dir) -> tuple[int, int]:
    import json

    config = json.loads((tiny_model_dir / "config.json").read_text())
    return config["video_rows"], config["video_cols"]


@pytest.fixture(scope="session")
def per_frame(frame_grid) -> int:
    """Tokens per frame of the tiny model (Lumos-1 frame format)."""
    from packcache_vllm.core.layout import tokens_per_frame

    return tokens_per_frame(*frame_grid)


@pytest.fixture(scope="session")
def video_prompts(frame_grid) -> list[list[int]]:
    """Three prompts of different shapes: image-to-video, text-to-video, longer image-to-video."""
    import random

    from packcache_vllm.model.factory import make_video_prompt

    rows, cols = frame_grid
    rng = random.Random(1)
    captions = [b"a red ball", b"two squares drift apart", b"a slow pan over a striped wall, dusk"]
    conditioned = [True, False, True]
    return [
        make_video_prompt(rows, cols, [4 + b for b in text], with_condition_frame=cond, rng=rng)
        for text, cond in zip(captions, conditioned, strict=True)
    ]


@pytest.fixture(scope="session")
def tight_packcache_llm(tiny_model_dir, llm):
    """The evicting engine with a 14-block pool: too small for three videos at once."""
    return make_packcache_llm(
        tiny_model_dir, num_gpu_blocks_override=TIGHT_POOL_BLOCKS, max_model_len=TIGHT_MAX_MODEL_LEN
    )
