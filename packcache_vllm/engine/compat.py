"""Every vLLM-version-specific touch point of the plugin, in one place (vLLM 0.32.0)."""

from __future__ import annotations

SUPPORTED_VLLM = "0.32.0"


def register_model(architecture: str, class_path: str) -> None:
    """Register an out-of-tree model lazily, by "module:Class" string (documented API)."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(architecture, class_path)


def register_config_hook(architecture: str, hook: type) -> None:
    """Run ``hook.verify_and_update_model_config`` when vLLM builds a ModelConfig for the
    architecture. Uses vLLM's internal per-architecture map (model_executor/models/config.py)."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    MODELS_CONFIG_MAP[architecture] = hook
