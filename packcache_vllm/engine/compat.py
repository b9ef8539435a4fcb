"""The names the engine's vLLM seam (``engine/seam/``) offers, under the import path they always
had. The seam is the only place that names vLLM's internals; this module names none."""

from __future__ import annotations

from packcache_vllm.engine.seam.process import (
    CLI_HOOK_MARK,
    REQUEST_CHECK_MARK,
    REQUEST_GUARD,
    SHUTDOWN_ABORT_MARK,
    CliFlags,
    abort_in_flight,
    add_request_guard,
    cpu_attention_block_size_need,
    current_device,
    install_cli_hooks,
    install_request_checks,
    install_shutdown_aborts,
    register_config_hook,
    register_model,
    request_error,
    streamed_completion_refusal,
    vllm_logger,
)
from packcache_vllm.engine.seam.running import (
    check_v1_runner,
    cpu_model_runner_class,
    wrap_attention_builders,
)
from packcache_vllm.engine.seam.scheduling import (
    FAILURES_ATTRIBUTE,
    PLANS_ATTRIBUTE,
    add_error_outputs,
    attach_plans,
    count_physical_tokens,
    failures_of,
    full_attention_manager,
    leave_out_of_request_counts,
    plans_of,
    with_failures,
)
from packcache_vllm.engine.seam.version import TESTED_VLLM

SUPPORTED_VLLM = TESTED_VLLM

__all__ = [
    "CLI_HOOK_MARK", "FAILURES_ATTRIBUTE", "PLANS_ATTRIBUTE", "REQUEST_CHECK_MARK",
    "REQUEST_GUARD", "SHUTDOWN_ABORT_MARK", "SUPPORTED_VLLM", "CliFlags", "abort_in_flight",
    "add_error_outputs", "add_request_guard", "attach_plans", "check_v1_runner",
    "count_physical_tokens", "cpu_attention_block_size_need", "cpu_model_runner_class",
    "current_device", "failures_of", "full_attention_manager", "install_cli_hooks",
    "install_request_checks", "install_shutdown_aborts", "leave_out_of_request_counts",
    "plans_of", "register_config_hook", "register_model", "request_error",
    "streamed_completion_refusal", "vllm_logger",
    "with_failures", "wrap_attention_builders",
]  # fmt: skip
