"""Every way a PackCache policy knob enters from outside, validated where it enters.

- Server flags: ``--kv-policy {none,full,sliding,packcache}``, ``--packcache-{window,decay,
  min-keep,selector}`` and ``--packcache-mode {next-token,frame-parallel}`` on ``vllm serve``
  (``add_arguments``; compat.py hooks it into vLLM's parser), expanded into vLLM's own engine
  settings by ``overrides_from_namespace``.
- Offline: ``LLM(model, **engine_overrides("packcache", window=2))`` (``mode="frame-parallel"``
  for Lumos-1's frame-parallel generation).
- Engine side: ``packcache_config_from(vllm_config)`` reads ``additional_config["packcache"]``
  back (validating again: it can be written by hand).
- Per request: ``parse_request_overrides(sampling_params.extra_args, base)``.

A wrong value is a ValueError (an argparse error on the command line) naming the knob, the value
and the allowed range; never a silent fallback. With policy ``none`` nothing is touched: vLLM runs
exactly as if the plugin were not installed.

Pure Python: importing this module never imports vLLM (the platform is asked through compat.py
only when ``device`` is not given).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from packcache_vllm.core.budget import PRESETS, PackCacheConfig
from packcache_vllm.core.select import SELECTORS
from packcache_vllm.engine.attention_backend import frame_parallel_backend_settings

NO_POLICY = "none"
POLICIES = (NO_POLICY, *PRESETS)
KNOBS = ("window", "decay", "min_keep", "selector")
KNOB_RANGES = {
    "window": "an integer >= 1 (frames)",
    "decay": "a number in (0, 1]",
    "min_keep": "a number in [0, 1]",
    "selector": f"one of {sorted(SELECTORS)}",
}
ADDITIONAL_CONFIG_KEY = "packcache"
REQUEST_KEY = "packcache"  # SamplingParams.extra_args["packcache"] = {"window": 2, ...}
REQUEST_FLAT_PREFIX = "packcache_"  # ... or flat keys, the only form vllm_xargs can carry
ARDF_REQUEST_PREFIX = "ardf_"  # frame-parallel sampler knobs (engine/ardf_requests.py)
SCHEDULER_CLS = "packcache_vllm.engine.scheduler.PackCacheScheduler"
WORKER_CLS_BY_DEVICE = {
    "cpu": "packcache_vllm.engine.worker.PackCacheCPUWorker",
    "cuda": "packcache_vllm.engine.worker.PackCacheGPUWorker",
}
# Generation modes: next-token (one token per step) or Lumos-1's frame-parallel AR-DF (a whole
# frame denoised per step; ``engine/ardf_*.py``). Only frame-parallel is written into the entry,
# so a next-token engine's settings are exactly what they were before modes existed.
NEXT_TOKEN = "next-token"
FRAME_PARALLEL = "frame-parallel"
MODES = (NEXT_TOKEN, FRAME_PARALLEL)
MODE_KEY = "mode"
MODE_FLAG = "--packcache-mode"
MODE_DEST = "packcache_mode"
FRAME_PARALLEL_SCHEDULER_CLS = "packcache_vllm.engine.ardf_scheduler.ARDFScheduler"
FRAME_PARALLEL_WORKER_CLS_BY_DEVICE = {
    "cpu": "packcache_vllm.engine.ardf_worker.ARDFCPUWorker",
    "cuda": "packcache_vllm.engine.ardf_gpu_worker.ARDFGPUWorker",
}
# On CUDA, PackCache hooks vLLM's V1 model runner (vLLM 0.32 defaults to V2 there) and runs
# without async scheduling (a compaction's moves must see the previous step's KV writes and its
# freed blocks must not be handed out while that step may still read them).
V2_RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"
CUDA_ENGINE_SETTINGS = {"async_scheduling": False}
GROUP_TITLE = "PackCache"  # `vllm serve --help=PackCache` shows the group
POLICY_FLAG = "--kv-policy"
POLICY_DEST = "kv_policy"


def knob_flag(knob: str) -> str:
    return "--packcache-" + knob.replace("_", "-")


def knob_dest(knob: str) -> str:
    return "packcache_" + knob


@dataclass(frozen=True)
class Naming:
    """How the policy and each knob are called in messages, by where they came from."""

    policy: str
    knobs: Mapping[str, str]


FLAG_NAMING = Naming(POLICY_FLAG, {knob: knob_flag(knob) for knob in KNOBS})
KEYWORD_NAMING = Naming("policy", {knob: knob for knob in KNOBS})
ENTRY_NAMING = Naming(
    f"additional_config[{ADDITIONAL_CONFIG_KEY!r}]['policy']",
    {knob: f"additional_config[{ADDITIONAL_CONFIG_KEY!r}][{knob!r}]" for knob in KNOBS},
)


# --- validation -----------------------------------------------------------------------------


def knob_is_valid(knob: str, value: object) -> bool:
    """Whether PackCacheConfig's own rules accept ``value`` for ``knob``."""
    try:
        replace(PackCacheConfig(), **{knob: value})
    except ValueError:
        return False
    return True


def check_knob(knob: str, value: object, name: str) -> None:
    """Raise ValueError naming ``name``, the value and the allowed range if ``value`` is bad."""
    if not knob_is_valid(knob, value):
        raise ValueError(f"{name} must be {KNOB_RANGES[knob]}, got {value!r}")


def check_policy(policy: object, name: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"{name} must be one of {list(POLICIES)}, got {policy!r}")
    return policy


def policy_config(
    policy: str, knobs: Mapping[str, object], naming: Naming
) -> PackCacheConfig | None:
    """The validated PackCacheConfig of ``policy`` with ``knobs`` overriding its preset; None for
    policy ``none`` (which takes no knobs)."""
    check_policy(policy, naming.policy)
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise ValueError(f"unknown PackCache knob(s) {unknown}; valid knobs: {list(KNOBS)}")
    if policy == NO_POLICY:
        if knobs:
            first = next(knob for knob in KNOBS if knob in knobs)
            raise ValueError(f"{naming.knobs[first]} needs {naming.policy} {'|'.join(PRESETS)}")
        return None
    for knob, value in knobs.items():
        check_knob(knob, value, naming.knobs[knob])
    return PackCacheConfig.preset(policy, **knobs)


def config_entry(policy: str, config: PackCacheConfig, mode: str = NEXT_TOKEN) -> dict[str, Any]:
    """The ``additional_config["packcache"]`` entry: the policy, every resolved knob, and the
    mode when it is not next-token."""
    entry = {"policy": policy, **{knob: getattr(config, knob) for knob in KNOBS}}
    return entry if mode == NEXT_TOKEN else {**entry, MODE_KEY: mode}


def check_mode(mode: object, name: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{name} must be one of {list(MODES)}, got {mode!r}")
    return mode


def engine_classes(mode: str, device: str) -> tuple[str, str]:
    """(scheduler_cls, worker_cls) running ``mode`` on ``device``."""
    if mode == NEXT_TOKEN:
        return SCHEDULER_CLS, worker_cls_for(device)
    if device not in FRAME_PARALLEL_WORKER_CLS_BY_DEVICE:
        raise ValueError(
            f"{MODE_FLAG} {mode} runs on {sorted(FRAME_PARALLEL_WORKER_CLS_BY_DEVICE)}, this vLLM "
            f"platform is {device!r}"
        )
    return FRAME_PARALLEL_SCHEDULER_CLS, FRAME_PARALLEL_WORKER_CLS_BY_DEVICE[device]


# --- expansion into vLLM's engine settings --------------------------------------------------


def engine_overrides(
    policy: str,
    *,
    engine_settings: Mapping[str, Any] | None = None,
    device: str | None = None,
    mode: str = NEXT_TOKEN,
    **knobs: object,
) -> dict[str, Any]:
    """EngineArgs field values that run ``policy`` in ``mode``; ``{}`` for ``none``.

    ``LLM(model, **engine_overrides("packcache", window=2))``. Pass the settings you also give
    vLLM as ``engine_settings`` (EngineArgs field -> value) to have ``additional_config`` merged
    and conflicts (prefix caching on, speculative decoding, another scheduler/worker) rejected.
    ``device`` ("cpu" or "cuda") picks the worker; by default vLLM's current platform decides.
    """
    return expand(policy, knobs, engine_settings or {}, device, KEYWORD_NAMING, mode, "mode")


def expand(
    policy: str,
    knobs: Mapping[str, object],
    engine_settings: Mapping[str, Any],
    device: str | None,
    naming: Naming,
    mode: str = NEXT_TOKEN,
    mode_name: str = MODE_FLAG,
) -> dict[str, Any]:
    check_mode(mode, mode_name)
    config = policy_config(policy, knobs, naming)
    if config is None:
        if mode != NEXT_TOKEN:
            raise ValueError(f"{mode_name} {mode} needs {naming.policy} {'|'.join(PRESETS)}")
        return {}
    entry = config_entry(policy, config, mode)
    device = device or current_device()
    scheduler_cls, worker_cls = engine_classes(mode, device)
    check_engine_settings(policy, engine_settings, scheduler_cls, worker_cls)
    device_settings = check_device_settings(policy, device, engine_settings)
    if mode == FRAME_PARALLEL and device == "cuda":  # its attention backend (attention_backend.py)
        device_settings.update(frame_parallel_backend_settings(engine_settings))
    check_block_size(policy, device, engine_settings.get("block_size"))
    return {
        "scheduler_cls": scheduler_cls,
        "worker_cls": worker_cls,
        "enable_prefix_caching": False,
        **device_settings,
        "additional_config": merged_additional_config(
            engine_settings.get("additional_config"), entry
        ),
    }


def current_device() -> str:
    from packcache_vllm.engine import compat

    return compat.current_device()


def check_device_settings(
    policy: str, device: str, settings: Mapping[str, Any], environ: Mapping[str, str] = os.environ
) -> dict[str, Any]:
    """The engine settings ``device`` needs; ValueError for a given setting or environment that
    contradicts them."""
    if device != "cuda":
        return {}
    who = f"PackCache policy {policy!r} on CUDA"
    if environ.get(V2_RUNNER_ENV) != "0":
        raise ValueError(
            f"{who} hooks vLLM's V1 model runner: set {V2_RUNNER_ENV}=0 (it is "
            f"{environ.get(V2_RUNNER_ENV)!r})"
        )
    if settings.get("async_scheduling") is True:
        raise ValueError(f"{who} needs async scheduling off, but async_scheduling=True "
                         "(--async-scheduling) was given")  # fmt: skip
    return dict(CUDA_ENGINE_SETTINGS)


def check_block_size(policy: str, device: str, block_size: int | None) -> None:
    """ValueError, at parse time, for a given block size that the CPU attention backend cannot
    run (vLLM itself fails only once the engine is built, after the model has loaded). The rule
    is vLLM's own (``compat.cpu_attention_block_size_need``)."""
    if block_size is None or device != "cpu":
        return
    from packcache_vllm.engine import compat

    need = compat.cpu_attention_block_size_need(block_size)
    if need is not None:
        raise ValueError(
            f"--block-size {block_size} (block_size): vLLM's CPU attention backend needs "
            f"{need}; PackCache policy {policy!r} refuses it before the engine starts"
        )


def worker_cls_for(device: str) -> str:
    if device not in WORKER_CLS_BY_DEVICE:
        raise ValueError(
            f"PackCache runs on {sorted(WORKER_CLS_BY_DEVICE)}, this vLLM platform is {device!r}"
        )
    return WORKER_CLS_BY_DEVICE[device]


def check_engine_settings(
    policy: str, settings: Mapping[str, Any], scheduler_cls: str, worker_cls: str
) -> None:
    """Reject settings the user gave that PackCache would have to override silently."""
    who = f"PackCache policy {policy!r}"
    if settings.get("enable_prefix_caching") is True:
        raise ValueError(
            f"{who} needs prefix caching off (packed blocks are rewritten), but "
            "enable_prefix_caching=True (--enable-prefix-caching) was given"
        )
    if settings.get("speculative_config"):
        raise ValueError(
            f"{who} does not support speculative decoding, but speculative_config "
            f"(--speculative-config) was given: {settings['speculative_config']!r}"
        )
    given_scheduler = settings.get("scheduler_cls")
    if given_scheduler is not None and given_scheduler != scheduler_cls:
        raise ValueError(
            f"{who} sets scheduler_cls={scheduler_cls!r}, but scheduler_cls "
            f"(--scheduler-cls) was given: {given_scheduler!r}"
        )
    given_worker = settings.get("worker_cls", "auto")
    if given_worker not in ("auto", worker_cls):
        raise ValueError(
            f"{who} sets worker_cls={worker_cls!r}, but worker_cls (--worker-cls) was given: "
            f"{given_worker!r}"
        )


def merged_additional_config(user: object, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The user's additional_config with our entry added (an equal entry is accepted)."""
    if user is None:
        user = {}
    if not isinstance(user, Mapping):
        raise ValueError(
            f"PackCache needs additional_config to be a dict to add {ADDITIONAL_CONFIG_KEY!r}, "
            f"got {type(user).__name__}"
        )
    given = user.get(ADDITIONAL_CONFIG_KEY)
    if given is not None and dict(given) != dict(entry):
        raise ValueError(
            f"additional_config[{ADDITIONAL_CONFIG_KEY!r}] = {given!r} conflicts with PackCache "
            f"policy {entry['policy']!r}, which gives {dict(entry)!r}; set one or the other"
        )
    return {**user, ADDITIONAL_CONFIG_KEY: dict(entry)}


def describe_overrides(overrides: Mapping[str, Any]) -> str:
    """One log line: what the policy expanded to."""
    entry = overrides["additional_config"][ADDITIONAL_CONFIG_KEY]
    return (
        f"{POLICY_FLAG} {entry['policy']} -> scheduler_cls={overrides['scheduler_cls']}, "
        f"worker_cls={overrides['worker_cls']}, "
        f"enable_prefix_caching={overrides['enable_prefix_caching']}, "
        f"additional_config[{ADDITIONAL_CONFIG_KEY!r}]={entry}"
    )


# --- command line ---------------------------------------------------------------------------

ENGINE_SETTING_FIELDS = (
    "block_size",
    "enable_prefix_caching",
    "async_scheduling",
    "speculative_config",
    "scheduler_cls",
    "worker_cls",
    "additional_config",
    "attention_backend",
    "attention_config",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the "PackCache" argument group. Knobs default to "not given" (absent from the
    namespace), so the chosen preset supplies them."""
    group = parser.add_argument_group(
        title=GROUP_TITLE,
        description=(
            "packcache_vllm: a bounded, frame-aware KV cache for autoregressive video models. "
            f"Off unless {POLICY_FLAG} names a policy; then vLLM runs the PackCache scheduler "
            "and worker, with prefix caching off and no speculative decoding. Knobs not given "
            "take the policy's preset values."
        ),
    )
    group.add_argument(
        POLICY_FLAG,
        dest=POLICY_DEST,
        choices=POLICIES,
        default=NO_POLICY,
        help=(
            "KV cache policy for video generation:\n"
            "- none: the plugin changes nothing; stock vLLM.\n"
            "- full: the PackCache engine keeping every frame whole (no eviction).\n"
            "- sliding: keep only the newest complete frame, whole (W=1).\n"
            "- packcache: keep the newest W frames, older ones thinned to "
            "max(rho^d, b) of their tokens (W=4, rho=0.5, b=3/W).\n\n"
            "Prompt and conditioning tokens are always kept."
        ),
    )
    group.add_argument(
        MODE_FLAG,
        dest=MODE_DEST,
        choices=MODES,
        default=argparse.SUPPRESS,
        help=(
            "How frames are generated (default next-token):\n"
            "- next-token: one token per step.\n"
            "- frame-parallel: Lumos-1's AR-DF: each frame is filled in S masked-prediction "
            "steps (bidirectional inside the frame) with classifier-free guidance against an "
            "unconditional twin, then committed from its history-masked copy. Per-request knobs "
            "through vllm_xargs: ardf_steps_per_frame, ardf_cfg_scale, ardf_top_k, "
            "ardf_temperature, ardf_schedule, ardf_seed, ardf_history_mask_ratio, "
            "ardf_condition_mask_ratio, ardf_ranking (defaults as Lumos-1's "
            "inference_solver_vid.py runs them: 50, 15, no top-k, 1.0, cosine, random, 0.7, "
            "0 = conditioning frames cached whole, exact = ties at the re-masking cut-off all "
            "fixed). CPU only."
        ),
    )
    group.add_argument(
        knob_flag("window"),
        dest=knob_dest("window"),
        metavar="W",
        type=_knob_parser("window", int),
        default=argparse.SUPPRESS,
        help=(
            "Frames of history kept, an integer >= 1: a frame at distance >= W from the newest "
            "complete frame is dropped whole. Preset: sliding 1, packcache 4, full unbounded."
        ),
    )
    group.add_argument(
        knob_flag("decay"),
        dest=knob_dest("decay"),
        metavar="RHO",
        type=_knob_parser("decay", float),
        default=argparse.SUPPRESS,
        help=(
            "Share of its tokens a frame at distance d keeps, rho^d, with 0 < rho <= 1. "
            "Preset: packcache 0.5, full and sliding 1."
        ),
    )
    group.add_argument(
        knob_flag("min_keep"),
        dest=knob_dest("min_keep"),
        metavar="B",
        type=_knob_parser("min_keep", float),
        default=argparse.SUPPRESS,
        help=(
            "Floor on a kept frame's share of tokens, 0 <= b <= 1. "
            "Preset: packcache 3/W (0.75 at W=4, capped at 1), full and sliding 1."
        ),
    )
    group.add_argument(
        knob_flag("selector"),
        dest=knob_dest("selector"),
        choices=sorted(SELECTORS),
        default=argparse.SUPPRESS,
        help=(
            "Which tokens of a thinned frame survive: uniform (evenly spread over the frame) "
            "or key_norm (largest key norms in the last layer, read by the worker when the "
            "frame completes). "
            "Preset: uniform."
        ),
    )


def _knob_parser(knob: str, convert: type):
    """An argparse ``type``: convert, then validate with PackCacheConfig's rules. argparse
    prefixes the message with the flag ("argument --packcache-window: must be ...")."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {KNOB_RANGES[knob]}, got {text!r}") from None
        if not knob_is_valid(knob, value):
            raise argparse.ArgumentTypeError(f"must be {KNOB_RANGES[knob]}, got {text}")
        return value

    parse.__name__ = knob
    return parse


def overrides_from_namespace(namespace: argparse.Namespace, device: str | None = None) -> dict:
    """EngineArgs field values for the parsed flags (``{}`` for ``--kv-policy none`` or a
    namespace without the flag). Raises ValueError naming the flag."""
    policy = getattr(namespace, POLICY_DEST, NO_POLICY)
    knobs = {
        knob: getattr(namespace, knob_dest(knob))
        for knob in KNOBS
        if getattr(namespace, knob_dest(knob), None) is not None
    }
    settings = {
        field: getattr(namespace, field)
        for field in ENGINE_SETTING_FIELDS
        if hasattr(namespace, field)
    }
    mode = getattr(namespace, MODE_DEST, NEXT_TOKEN)
    return expand(policy, knobs, settings, device, FLAG_NAMING, mode, MODE_FLAG)


# --- engine side ----------------------------------------------------------------------------


def packcache_config_from(source: object) -> tuple[str, PackCacheConfig | None]:
    """The policy and its validated config from a VllmConfig (or its ``additional_config``).

    ``("none", None)`` when there is no ``additional_config["packcache"]``. Raises ValueError
    naming the key, the value and the allowed range.
    """
    additional = source if isinstance(source, Mapping) else getattr(source, "additional_config", {})
    entry = additional.get(ADDITIONAL_CONFIG_KEY) if isinstance(additional, Mapping) else None
    if entry is None:
        return NO_POLICY, None
    if not isinstance(entry, Mapping):
        raise ValueError(
            f"additional_config[{ADDITIONAL_CONFIG_KEY!r}] must be a dict with 'policy' and "
            f"knobs {list(KNOBS)}, got {entry!r}"
        )
    unknown = sorted(set(entry) - {"policy", MODE_KEY, *KNOBS})
    if unknown:
        raise ValueError(
            f"unknown additional_config[{ADDITIONAL_CONFIG_KEY!r}] key(s) {unknown}; "
            f"valid keys: {['policy', MODE_KEY, *KNOBS]}"
        )
    policy = entry.get("policy")
    knobs = {knob: entry[knob] for knob in KNOBS if knob in entry}
    return policy, policy_config(policy, knobs, ENTRY_NAMING)


def packcache_mode_from(source: object) -> str:
    """The generation mode in a VllmConfig (or its ``additional_config``): next-token when no
    entry or no mode is given. Raises ValueError naming the key and the value."""
    additional = source if isinstance(source, Mapping) else getattr(source, "additional_config", {})
    entry = additional.get(ADDITIONAL_CONFIG_KEY) if isinstance(additional, Mapping) else None
    if not isinstance(entry, Mapping):
        return NEXT_TOKEN
    name = f"additional_config[{ADDITIONAL_CONFIG_KEY!r}][{MODE_KEY!r}]"
    return check_mode(entry.get(MODE_KEY, NEXT_TOKEN), name)


# --- per request ----------------------------------------------------------------------------


def parse_request_overrides(
    extra_args: Mapping[str, Any] | None, base: PackCacheConfig
) -> PackCacheConfig:
    """``base`` with the knobs a request gives in ``SamplingParams.extra_args`` replaced.

    Two forms: ``extra_args["packcache"] = {"window": 2, ...}`` (offline), or flat keys
    ``extra_args["packcache_window"] = 2`` (the only form ``vllm_xargs`` over HTTP can carry:
    its values are scalars or lists). Knobs not given keep ``base``'s values (no preset
    re-derivation). Other keys of ``extra_args`` are not ours and are ignored.
    """
    given = _request_knobs(extra_args or {})
    for knob, (name, value) in given.items():
        check_knob(knob, value, name)
    return replace(base, **{knob: value for knob, (_, value) in given.items()})


def refuse_boolean_knobs(request_args: Mapping[str, Any], name: str = "vllm_xargs") -> None:
    """ValueError naming the first ``packcache_*`` / ``ardf_*`` key of ``request_args`` whose
    value is a boolean (or a list holding one). No knob is a boolean, and the OpenAI server's
    schema turns JSON ``true`` into ``1`` before any check sees it, so it is refused in the raw
    request (``engine/http_guard.py``); ``name`` says where ``request_args`` came from."""
    for key, value in request_args.items():
        if not isinstance(key, str) or not key.startswith(
            (REQUEST_FLAT_PREFIX, ARDF_REQUEST_PREFIX)
        ):
            continue
        values = value if isinstance(value, list) else [value]
        if any(isinstance(item, bool) for item in values):
            raise ValueError(
                f"{name}[{key!r}] must be a number or a name, got the boolean "
                f"{json.dumps(value)}: no PackCache (packcache_*) or frame-parallel (ardf_*) "
                "knob is a boolean"
            )


def _request_knobs(extra_args: Mapping[str, Any]) -> dict[str, tuple[str, object]]:
    """knob -> (the name it was given under, value), from both request forms."""
    given: dict[str, tuple[str, object]] = {}
    nested = extra_args.get(REQUEST_KEY, {})
    if not isinstance(nested, Mapping):
        raise ValueError(
            f"extra_args[{REQUEST_KEY!r}] must be a dict of knobs {list(KNOBS)}, got {nested!r}"
        )
    for key, value in nested.items():
        _check_request_key(key, key, valid=list(KNOBS))
        given[key] = (f"extra_args[{REQUEST_KEY!r}][{key!r}]", value)
    flat_keys = [k for k in extra_args if isinstance(k, str) and k.startswith(REQUEST_FLAT_PREFIX)]
    for key in flat_keys:
        knob = key.removeprefix(REQUEST_FLAT_PREFIX)
        _check_request_key(knob, key, valid=[knob_dest(k) for k in KNOBS])
        if knob in given:
            raise ValueError(
                f"PackCache knob {knob!r} given twice in extra_args: as "
                f"{given[knob][0]} and as extra_args[{key!r}]"
            )
        given[knob] = (f"extra_args[{key!r}]", extra_args[key])
    return given


def _check_request_key(knob: object, key: object, valid: list[str]) -> None:
    if knob not in KNOBS:
        raise ValueError(f"unknown PackCache request key {key!r}; valid keys: {valid}")
