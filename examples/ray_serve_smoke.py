"""Start the Ray Serve application on a local Ray cluster, ask for one video, check it.

    .venv/bin/python examples/ray_serve_smoke.py

Builds a tiny random Lumos-1 checkpoint, deploys ``packcache_vllm.scale.serve:build_app`` with the
settings of ``examples/ray_serve_config.yaml`` (tiny KV cache, one replica), sends one
``/v1/completions`` request with a per-request override (``vllm_xargs``) that makes PackCache
evict, and checks the returned tokens against the dense reference with the same policy.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

CONFIG = Path(__file__).with_name("ray_serve_config.yaml")
FRAMES = 6
OVERRIDES = {"packcache_window": 2, "packcache_min_keep": 0.5}


def complete(prompt: list[int], max_tokens: int) -> tuple[list[int], float]:
    body = {
        "model": "tiny-lumos",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "return_token_ids": True,
        "vllm_xargs": OVERRIDES,
    }
    request = urllib.request.Request(
        "http://127.0.0.1:8000/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    started = time.perf_counter()
    reply = json.loads(urllib.request.urlopen(request, timeout=300).read())
    return reply["choices"][0]["token_ids"], time.perf_counter() - started


def reference_tokens(model: Path, prompt: list[int], max_tokens: int) -> tuple:
    from packcache_vllm.core.budget import PackCacheConfig
    from packcache_vllm.reference import PackCachePolicy, ReferenceVideoModel

    reference = ReferenceVideoModel.from_pretrained(model)
    knobs = {key.removeprefix("packcache_"): value for key, value in OVERRIDES.items()}
    config = PackCacheConfig.preset("packcache", **knobs)
    layout = reference.layout_for(prompt)
    return reference.generate(prompt, layout, max_tokens, PackCachePolicy(config)).token_ids


def main() -> None:
    import ray
    from ray import serve

    from packcache_vllm.core.layout import tokens_per_frame
    from packcache_vllm.model.factory import build_tiny_lumos, make_video_prompt
    from packcache_vllm.scale.serve import build_app

    model = build_tiny_lumos(Path(tempfile.mkdtemp()) / "tiny-lumos", seed=0)
    (app,) = yaml.safe_load(CONFIG.read_text())["applications"]
    args = {**app["args"], "model_source": str(model), "autoscaling": {"max_replicas": 1}}
    args["engine_kwargs"] = {**args["engine_kwargs"], "kv_cache_memory_bytes": 64 << 20}
    ray.init(num_cpus=2, object_store_memory=128 << 20, include_dashboard=False)
    started = time.perf_counter()
    serve.run(build_app(args), blocking=False)
    print(f"application ready after {time.perf_counter() - started:.1f} s", flush=True)
    prompt = make_video_prompt(
        4, 6, [4 + b for b in b"a red ball"], with_condition_frame=True, rng=random.Random(1)
    )
    max_tokens = FRAMES * tokens_per_frame(4, 6)
    tokens, seconds = complete(prompt, max_tokens)
    print(f"one video: {len(tokens)} tokens ({FRAMES} frames) in {seconds:.2f} s", flush=True)
    serve.shutdown()
    ray.shutdown()
    expected = reference_tokens(model, prompt, max_tokens)
    assert tuple(tokens) == expected, "served tokens differ from the dense reference"
    print("tokens equal the dense reference with PackCache W=2, min_keep 0.5 (eviction active)")


if __name__ == "__main__":
    main()
