"""The PackCache policy an engine runs with, read from ``additional_config["packcache"]``.

``--kv-policy`` (cli.py) and ``engine_overrides()`` write that entry; it reaches every process
with the VllmConfig. ``None`` means the plugin's engine classes run without evicting (``full``).
"""

from __future__ import annotations

from packcache_vllm.core.budget import PackCacheConfig

ADDITIONAL_CONFIG_KEY = "packcache"
KNOBS = ("window", "decay", "min_keep", "selector")


def packcache_settings(vllm_config) -> PackCacheConfig | None:
    """The validated policy, or None for the full cache. Raises ValueError naming the bad knob."""
    entry = (vllm_config.additional_config or {}).get(ADDITIONAL_CONFIG_KEY)
    if entry is None:
        raise ValueError(
            "the PackCache scheduler/worker needs additional_config['packcache'] (start vLLM with "
            "--kv-policy full|sliding|packcache, or pass packcache_vllm.cli.engine_overrides())"
        )
    policy = entry.get("policy")
    if policy == "full":
        return None
    unknown = sorted(set(entry) - {"policy", *KNOBS})
    if unknown:
        raise ValueError(f"unknown additional_config['packcache'] keys {unknown}; valid: {KNOBS}")
    return PackCacheConfig.preset(policy, **{k: entry[k] for k in KNOBS if k in entry})
