"""Every way a PackCache policy knob enters from outside, validated where it enters.

- Server flags: ``--kv-policy {none,full,sliding,packcache}`` (every preset of the core), one
  ``--packcache-<knob>`` flag per knob of the core's ``PackCacheConfig`` and ``--packcache-mode
  {next-token,frame-parallel}`` on ``vllm serve`` (``add_arguments``; the plugin hooks it into
  vLLM's parser through ``vllm_flags``), expanded into vLLM's own engine settings by
  ``overrides_from_namespace``.
- Offline: ``LLM(model, **engine_overrides("packcache", window=2))`` (``mode="frame-parallel"``
  for Lumos-1's frame-parallel generation).
- Engine side and per request: ``settings.py`` (re-exported here: ``packcache_config_from``,
  ``parse_request_overrides``, ...), which the engine imports; the engine never imports this
  module.

A wrong value is a ValueError (an argparse error on the command line) naming the knob, the value
and the allowed range; never a silent fallback. With policy ``none`` nothing is touched: vLLM runs
exactly as if the plugin were not installed.

Pure Python: importing this module never imports vLLM (the platform is asked through the engine's
vLLM seam only when ``device`` is not given).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from packcache_vllm.core import knobs as core_knobs
from packcache_vllm.core.policies import KNOB_SPECS, POLICY_SPECS
from packcache_vllm.engine.attention_backend import frame_parallel_backend_settings
from packcache_vllm.settings import (  # the names below are part of this module's API too
    ADDITIONAL_CONFIG_KEY,
    ARDF_REQUEST_PREFIX,
    ENTRY_NAMING,
    FLAG_NAMING,
    FRAME_PARALLEL,
    KEYWORD_NAMING,
    KNOB_RANGES,
    KNOBS,
    MODE_FLAG,
    MODE_KEY,
    MODES,
    NEXT_TOKEN,
    NO_POLICY,
    POLICIES,
    POLICY_FLAG,
    REQUEST_FLAT_PREFIX,
    REQUEST_KEY,
    Naming,
    Settings,
    check_knob,
    check_mode,
    check_policy,
    config_entry,
    knob_dest,
    knob_flag,
    knob_is_valid,
    packcache_config_from,
    packcache_mode_from,
    parse_request_overrides,
    policy_config,
    refuse_boolean_knobs,
)

__all__ = [
    "ADDITIONAL_CONFIG_KEY", "ARDF_REQUEST_PREFIX", "ENTRY_NAMING", "FLAG_NAMING",
    "FRAME_PARALLEL", "KEYWORD_NAMING", "KNOB_RANGES", "KNOBS", "MODE_FLAG", "MODE_KEY", "MODES",
    "NEXT_TOKEN", "NO_POLICY", "POLICIES", "POLICY_FLAG", "REQUEST_FLAT_PREFIX", "REQUEST_KEY",
    "Naming", "Settings", "check_knob", "check_mode", "check_policy", "config_entry",
    "knob_dest", "knob_flag", "knob_is_valid", "packcache_config_from", "packcache_mode_from",
    "parse_request_overrides", "policy_config", "refuse_boolean_knobs",
    "engine_overrides", "overrides_from_namespace", "add_arguments", "vllm_flags",
]  # fmt: skip

SCHEDULER_CLS = "packcache_vllm.engine.scheduler.PackCacheScheduler"
WORKER_CLS_BY_DEVICE = {
    "cpu": "packcache_vllm.engine.worker.PackCacheCPUWorker",
    "cuda": "packcache_vllm.engine.worker.PackCacheGPUWorker",
}
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
POLICY_DEST = "kv_policy"


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
    settings = Settings.build(policy, knobs, naming, mode, mode_name)
    if not settings.active:
        return {}
    device = device or current_device()
    check_tested_vllm(policy)
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
            engine_settings.get("additional_config"), settings.entry()
        ),
    }


def current_device() -> str:
    from packcache_vllm.engine.seam import process

    return process.current_device()


def check_tested_vllm(policy: str) -> None:
    """ValueError naming both versions unless the installed vLLM is the one the plugin was
    tested on (or ``PACKCACHE_ALLOW_UNTESTED_VLLM`` forces it)."""
    from packcache_vllm.engine.seam import version

    version.check_tested_vllm(f"PackCache policy {policy!r}")


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
    is vLLM's own (``seam.process.cpu_attention_block_size_need``)."""
    if block_size is None or device != "cpu":
        return
    from packcache_vllm.engine.seam import process

    need = process.cpu_attention_block_size_need(block_size)
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
        help=policy_help(),
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
    for knob in KNOBS:
        add_knob_flag(group, knob)


def policy_help() -> str:
    """--kv-policy's help: what each policy does (the words of the core's registry)."""
    presets = "".join(f"- {name}: {POLICY_SPECS[name].summary}.\n" for name in POLICIES[1:])
    return (
        "KV cache policy for video generation:\n"
        f"- {NO_POLICY}: the plugin changes nothing; stock vLLM.\n{presets}\n"
        "Prompt and conditioning tokens are always kept."
    )


def add_knob_flag(group, knob: str) -> None:
    """``--packcache-<knob>``: its value converted and checked by the core's rules."""
    spec, choices = KNOB_SPECS[knob], core_knobs.knob_choices(knob)
    wording = {"help": core_knobs.flag_help(knob), "default": argparse.SUPPRESS}
    if choices is not None:
        group.add_argument(knob_flag(knob), dest=knob_dest(knob), choices=choices, **wording)
        return
    parse = _knob_parser(knob, spec.parse)
    group.add_argument(
        knob_flag(knob), dest=knob_dest(knob), metavar=spec.metavar, type=parse, **wording
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


def vllm_flags():
    """What the plugin hooks into vLLM's parser (``seam.process.install_cli_hooks``): these
    flags, their expansion into EngineArgs fields, and the log line saying what they gave."""
    from packcache_vllm.engine.seam.process import CliFlags

    return CliFlags(add_arguments, overrides_from_namespace, describe_overrides)
