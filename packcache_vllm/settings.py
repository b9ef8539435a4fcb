"""The plugin's settings: a policy, a generation mode and the policy's knobs, from wherever they
enter, validated by the core's ``PackCacheConfig``.

- Server flags ``--kv-policy`` / ``--packcache-*`` (``cli.py`` parses them into a ``Settings``),
  or ``LLM(model, **cli.engine_overrides("packcache", window=2))`` offline.
- The engine reads them back from ``additional_config["packcache"]`` (``Settings.of``;
  validated again: it can be written by hand).
- A request overrides knobs in ``SamplingParams.extra_args`` (``Settings.request_config``).

Policies and knobs come from the core's registry (``core.policies``: every policy by name with
its knobs and their ranges, built and validated by the policy's own class), so a new one reaches
every door above without an edit here.
A wrong value is a ValueError naming where it came from, the value and the allowed range.
Pure Python: importing this module imports neither vLLM nor the engine nor the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from packcache_vllm.core import policies
from packcache_vllm.core.budget import PRESETS, PackCacheConfig

NO_POLICY = "none"
POLICIES = (NO_POLICY, *policies.POLICY_NAMES)
KNOBS = policies.ALL_KNOBS
KNOB_RANGES = {knob: policies.KNOB_SPECS[knob].allowed for knob in KNOBS}
NEEDS_POLICY = "|".join(PRESETS)  # what a message suggests for knobs given without a policy
ADDITIONAL_CONFIG_KEY = "packcache"
REQUEST_KEY = "packcache"  # SamplingParams.extra_args["packcache"] = {"window": 2, ...}
REQUEST_FLAT_PREFIX = "packcache_"  # ... or flat keys, the only form vllm_xargs can carry
ARDF_REQUEST_PREFIX = "ardf_"  # frame-parallel sampler knobs (engine/ardf_requests.py)
# Generation modes: next-token (one token per step) or Lumos-1's frame-parallel AR-DF (a whole
# frame denoised per step; ``engine/ardf_*.py``). Only frame-parallel is written into the entry,
# so a next-token engine's settings are exactly what they were before modes existed.
NEXT_TOKEN = "next-token"
FRAME_PARALLEL = "frame-parallel"
MODES = (NEXT_TOKEN, FRAME_PARALLEL)
MODE_KEY = "mode"
POLICY_FLAG = "--kv-policy"
MODE_FLAG = "--packcache-mode"


def knob_flag(knob: str) -> str:
    return "--packcache-" + knob.replace("_", "-")


def knob_dest(knob: str) -> str:
    return REQUEST_FLAT_PREFIX + knob


@dataclass(frozen=True)
class Naming:
    """How the policy and each knob are called in messages, by where they came from:
    ``knob_name`` turns a knob into that name (one rule per door, no per-knob table)."""

    policy: str
    knob_pattern: str  # "{knob}", "{flag}" or "{key}" (the knob's repr) inside a template

    def knob_name(self, knob: str) -> str:
        return self.knob_pattern.format(knob=knob, flag=knob_flag(knob), key=repr(knob))

    @property
    def knobs(self) -> dict[str, str]:
        """knob -> its name, for every knob of the core's config."""
        return {knob: self.knob_name(knob) for knob in KNOBS}


_ENTRY = f"additional_config[{ADDITIONAL_CONFIG_KEY!r}]"
FLAG_NAMING = Naming(POLICY_FLAG, "{flag}")
KEYWORD_NAMING = Naming("policy", "{knob}")
ENTRY_NAMING = Naming(f"{_ENTRY}['policy']", _ENTRY + "[{key}]")


# --- validation (the core's config decides; these name the value's origin) -----------------


def knob_is_valid(knob: str, value: object) -> bool:
    """Whether some policy's own rules accept ``value`` for ``knob`` (the policy checks again
    when it is built)."""
    return policies.knob_is_valid(knob, value)


def check_knob(knob: str, value: object, name: str) -> None:
    """Raise ValueError naming ``name``, the value and the allowed range if ``value`` is bad."""
    if not knob_is_valid(knob, value):
        raise ValueError(f"{name} must be {KNOB_RANGES[knob]}, got {value!r}")


def check_policy(policy: object, name: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"{name} must be one of {list(POLICIES)}, got {policy!r}")
    return policy


def check_mode(mode: object, name: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{name} must be one of {list(MODES)}, got {mode!r}")
    return mode


def policy_config(
    policy: str, knobs: Mapping[str, object], naming: Naming
) -> PackCacheConfig | None:
    """The validated policy ``policy`` with ``knobs`` overriding its defaults; None for policy
    ``none`` (which takes no knobs)."""
    check_policy(policy, naming.policy)
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise ValueError(f"unknown PackCache knob(s) {unknown}; valid knobs: {list(KNOBS)}")
    if policy == NO_POLICY:
        if knobs:
            first = next(knob for knob in KNOBS if knob in knobs)
            raise ValueError(f"{naming.knob_name(first)} needs {naming.policy} {NEEDS_POLICY}")
        return None
    for knob, value in knobs.items():
        check_knob(knob, value, naming.knob_name(knob))
    return policies.make_policy(policy, **knobs)


def config_entry(policy: str, config: PackCacheConfig, mode: str = NEXT_TOKEN) -> dict[str, Any]:
    """The ``additional_config["packcache"]`` entry: the policy, every resolved knob of it, and
    the mode when it is not next-token."""
    entry = {"policy": policy, **policies.knob_values(config)}
    return entry if mode == NEXT_TOKEN else {**entry, MODE_KEY: mode}


# --- the settings object --------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """A validated policy, mode and config (None for policy ``none``)."""

    policy: str = NO_POLICY
    mode: str = NEXT_TOKEN
    config: PackCacheConfig | None = None

    def __post_init__(self) -> None:
        if self.config is not None and self.mode != NEXT_TOKEN:
            if self.config.make_selector().needs_attention:
                raise ValueError(
                    f"KV policy {self.policy!r} ranks a frame's tokens by the attention of the "
                    f"next frame's queries, which only next-token mode records; "
                    f"{MODE_FLAG} {self.mode} cannot use it"
                )

    @property
    def active(self) -> bool:
        return self.config is not None

    @classmethod
    def build(
        cls,
        policy: str,
        knobs: Mapping[str, object],
        naming: Naming,
        mode: str = NEXT_TOKEN,
        mode_name: str = MODE_FLAG,
    ) -> Settings:
        """Validate what a door gave (``naming`` says which door, for messages)."""
        check_mode(mode, mode_name)
        config = policy_config(policy, knobs, naming)
        if config is None and mode != NEXT_TOKEN:
            raise ValueError(f"{mode_name} {mode} needs {naming.policy} {NEEDS_POLICY}")
        return cls(policy, mode, config)

    @classmethod
    def of(cls, source: object) -> Settings:
        """The settings in a VllmConfig (or its ``additional_config``); policy ``none`` when
        there is no ``additional_config["packcache"]``."""
        entry = _entry_of(source)
        if entry is None:
            return cls()
        if not isinstance(entry, Mapping):
            raise ValueError(
                f"{_ENTRY} must be a dict with 'policy' and knobs {list(KNOBS)}, got {entry!r}"
            )
        unknown = sorted(set(entry) - {"policy", MODE_KEY, *KNOBS})
        if unknown:
            raise ValueError(
                f"unknown {_ENTRY} key(s) {unknown}; valid keys: {['policy', MODE_KEY, *KNOBS]}"
            )
        knobs = {knob: entry[knob] for knob in KNOBS if knob in entry}
        config = policy_config(entry.get("policy"), knobs, ENTRY_NAMING)
        return cls(entry["policy"], mode_of_entry(entry), config)

    def entry(self) -> dict[str, Any]:
        """This object as ``additional_config["packcache"]`` (active settings only)."""
        return config_entry(self.policy, self.config, self.mode)

    def request_config(self, extra_args: Mapping[str, Any] | None) -> PackCacheConfig:
        """The config of one request: this one's, with the request's overrides."""
        return parse_request_overrides(extra_args, self.config)


def _entry_of(source: object) -> object:
    additional = source if isinstance(source, Mapping) else getattr(source, "additional_config", {})
    return additional.get(ADDITIONAL_CONFIG_KEY) if isinstance(additional, Mapping) else None


def mode_of_entry(entry: Mapping[str, Any]) -> str:
    return check_mode(entry.get(MODE_KEY, NEXT_TOKEN), f"{_ENTRY}[{MODE_KEY!r}]")


def packcache_config_from(source: object) -> tuple[str, PackCacheConfig | None]:
    """The policy and its validated config from a VllmConfig (or its ``additional_config``).

    ``("none", None)`` when there is no ``additional_config["packcache"]``. Raises ValueError
    naming the key, the value and the allowed range.
    """
    settings = Settings.of(source)
    return settings.policy, settings.config


def packcache_mode_from(source: object) -> str:
    """The generation mode in a VllmConfig (or its ``additional_config``): next-token when no
    entry or no mode is given. Raises ValueError naming the key and the value."""
    entry = _entry_of(source)
    return mode_of_entry(entry) if isinstance(entry, Mapping) else NEXT_TOKEN


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
    return policies.with_knobs(base, **{knob: value for knob, (_, value) in given.items()})


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
