"""One benchmark run: one engine, one policy, N videos generated together, measured per step.

Runs in its own process (``run.py`` starts one per configuration), in vLLM's one-process mode so
the scheduler, the KV block lists and the attention layers can be observed directly.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

BLOCK_SIZE = 32


@dataclass(frozen=True)
class RunConfig:
    model_dir: str
    policy: str  # "stock" (plugin off) or a --kv-policy preset
    frames: int
    requests: int
    window: int | None = None  # packcache/sliding override; None = the preset's
    mode: str = "next-token"  # or "frame-parallel" (Lumos-1's AR-DF with a CFG twin)
    steps_per_frame: int = 8  # frame-parallel: MaskGIT steps per frame (Lumos-1 uses 50)
    cfg_scale: float = 15.0  # frame-parallel: > 1 runs the unconditional twin (Lumos-1: 15)
    kv_cache_bytes: int = 1 << 30
    max_model_len: int = 32768
    knobs: tuple[tuple[str, object], ...] = ()  # the policy's other knobs, (name, value)


@dataclass
class RunResult:
    config: dict
    tokens_per_frame: int
    end_to_end_s: float
    frame_done_s: list[list[float]]  # per request: time each frame completed (from start)
    peak_blocks: int  # per request, max over requests and steps
    final_blocks: int  # per request, max over requests, at their last step
    pool_blocks: int
    attention_s: float
    step_s: float
    policy_s: float  # the policy's own work: planning compactions + moving KV (0 for stock)
    blocks_over_time: list[tuple[float, int]] = field(default_factory=list)  # (t, held blocks)
    preemptions: int = 0
    evicted_tokens: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def run(config: RunConfig, prompts: list[list[int]], tokens_per_frame: int) -> RunResult:
    from vllm import LLM

    llm = LLM(config.model_dir, **engine_settings(config))
    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    manager = scheduler.kv_cache_manager.coordinator.single_type_managers[0]
    runner = engine.model_executor.driver_worker.worker.model_runner
    attention = AttentionTimer(runner)
    policy = PolicyTimer(scheduler, runner)
    for i, prompt in enumerate(prompts[: config.requests]):
        params = sampling_params(config, tokens_per_frame, seed=i)
        engine.add_request(f"video-{i}", {"prompt_token_ids": prompt}, params)
    done: dict[str, list[float]] = {f"video-{i}": [] for i in range(config.requests)}
    peak, last_held, over_time, step_total = 0, {}, [], 0.0
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        t0 = time.perf_counter()
        outputs = engine.step()
        now = time.perf_counter()
        step_total += now - t0
        for output in outputs:
            generated = len(output.outputs[0].token_ids)
            times = done[output.request_id]
            while len(times) < generated // tokens_per_frame:
                times.append(now - start)
        held = blocks_per_video(manager.req_to_blocks)
        last_held.update(held)
        peak = max([peak, *held.values()])
        over_time.append((now - start, sum(held.values())))
    end_to_end = time.perf_counter() - start
    return RunResult(
        config=asdict(config),
        tokens_per_frame=tokens_per_frame,
        end_to_end_s=end_to_end,
        frame_done_s=list(done.values()),
        peak_blocks=peak,
        final_blocks=max(last_held.values()),
        pool_blocks=scheduler.kv_cache_manager.block_pool.num_gpu_blocks,
        attention_s=attention.seconds,
        step_s=step_total,
        policy_s=policy.seconds,
        blocks_over_time=over_time[:: max(1, len(over_time) // 400)],
        preemptions=len(getattr(scheduler, "preempted_requests", [])),
        evicted_tokens=getattr(getattr(scheduler, "counters", None), "evicted_tokens", 0),
    )


def sampling_params(config: RunConfig, tokens_per_frame: int, seed: int):
    """Greedy next-token decoding, or seeded AR-DF with the run's steps and CFG scale."""
    from vllm import SamplingParams

    extra = None
    if config.mode == "frame-parallel":
        extra = {
            "ardf_steps_per_frame": config.steps_per_frame,
            "ardf_cfg_scale": config.cfg_scale,
            "ardf_seed": seed,
        }
    return SamplingParams(
        temperature=0.0,
        max_tokens=config.frames * tokens_per_frame,
        ignore_eos=True,
        detokenize=False,
        extra_args=extra,
    )


def blocks_per_video(req_to_blocks) -> dict[str, int]:
    """Blocks held per video, its hidden CFG twin (``<id>#uncond``) counted with it."""
    held: dict[str, int] = {}
    for request_id, blocks in req_to_blocks.items():
        if blocks:
            video = request_id.split("#")[0]
            held[video] = held.get(video, 0) + len(blocks)
    return held


def engine_settings(config: RunConfig) -> dict:
    from packcache_vllm.cli import engine_overrides

    settings = {
        "dtype": "float32",
        "enforce_eager": True,
        "block_size": BLOCK_SIZE,
        "kv_cache_memory_bytes": config.kv_cache_bytes,
        "max_model_len": config.max_model_len,
        "enable_prefix_caching": False,
        "seed": 0,
    }
    if config.policy == "stock":
        return settings
    knobs = {} if config.window is None else {"window": config.window}
    knobs.update(dict(config.knobs))
    return {**settings, **engine_overrides(config.policy, mode=config.mode, **knobs)}


class Timer:
    """Wall time spent inside the wrapped methods, accumulated over the run."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, owner, name: str) -> None:
        method = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        setattr(owner, name, timed)


class AttentionTimer(Timer):
    """Every attention layer's backend ``forward`` (the kernel that reads the paged KV cache)."""

    def __init__(self, runner) -> None:
        super().__init__()
        for layer in runner.compilation_config.static_forward_context.values():
            impl = getattr(layer, "impl", None)
            if impl is not None and hasattr(impl, "forward"):
                self.wrap(impl, "forward")


class PolicyTimer(Timer):
    """The policy's own work: the scheduler planning compactions (``compact_completed_frames``)
    and the runner executing them on every layer's KV (``apply_plan``). Nothing for stock."""

    def __init__(self, scheduler, runner) -> None:
        super().__init__()
        for owner, name in ((scheduler, "compact_completed_frames"), (runner, "apply_plan")):
            if hasattr(owner, name):
                self.wrap(owner, name)
