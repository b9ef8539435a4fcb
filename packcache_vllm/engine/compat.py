"""Every vLLM-version-specific touch point of the plugin, in one place (vLLM 0.32.0)."""

from __future__ import annotations

import contextlib

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


# --- scheduler side -------------------------------------------------------------------------

PLANS_ATTRIBUTE = "packcache_plans"


def attach_plans(scheduler_output, plans: dict) -> None:
    """SchedulerOutput is a plain dataclass pickled to the workers: an extra attribute travels."""
    setattr(scheduler_output, PLANS_ATTRIBUTE, plans)


def plans_of(scheduler_output) -> dict:
    return getattr(scheduler_output, PLANS_ATTRIBUTE, None) or {}


def full_attention_manager(kv_cache_manager):
    """The single full-attention block manager of a one-group model (Lumos-1)."""
    managers = kv_cache_manager.coordinator.single_type_managers
    if len(managers) != 1:
        raise ValueError(
            f"PackCache supports models with one KV cache group, this one has {len(managers)}"
        )
    return managers[0]


def count_physical_tokens(manager, evicted_of) -> None:
    """Make block allocation count physical tokens (logical - E) for every request.

    vLLM sizes a request's block list as cdiv(logical tokens, block_size); after compaction the
    request needs only cdiv(logical - E, block_size). Wraps the manager instance's two sizing
    methods (single_type_kv_cache_manager.py: get_num_blocks_to_allocate, allocate_new_blocks).
    """
    if getattr(manager, "_packcache_counts_physical", False):
        return
    get_num_blocks = manager.get_num_blocks_to_allocate
    allocate_new_blocks = manager.allocate_new_blocks

    def get_num_blocks_to_allocate(
        request_id,
        num_tokens,
        new_computed_blocks,
        total_computed_tokens,
        num_local_computed_tokens,
        num_tokens_main_model,
        *args,
        **kwargs,
    ):
        e = evicted_of(request_id)
        return get_num_blocks(
            request_id,
            num_tokens - e,
            new_computed_blocks,
            total_computed_tokens - e,
            num_local_computed_tokens - e if num_local_computed_tokens >= e else 0,
            num_tokens_main_model - e,
            *args,
            **kwargs,
        )

    def allocate_physical_blocks(request_id, num_tokens, num_tokens_main_model):
        e = evicted_of(request_id)
        return allocate_new_blocks(request_id, num_tokens - e, num_tokens_main_model - e)

    manager.get_num_blocks_to_allocate = get_num_blocks_to_allocate
    manager.allocate_new_blocks = allocate_physical_blocks
    manager._packcache_counts_physical = True


# --- worker side ----------------------------------------------------------------------------


@contextlib.contextmanager
def cpu_model_runner_class(runner_cls):
    """CPUWorker.init_device builds ``CPUModelRunner`` inline (v1/worker/cpu_worker.py); swap the
    module global it reads for the duration of the call."""
    from vllm.v1.worker import cpu_worker

    original = cpu_worker.CPUModelRunner
    cpu_worker.CPUModelRunner = runner_cls
    try:
        yield
    finally:
        cpu_worker.CPUModelRunner = original
