"""vLLM general-plugin entry point (``vllm.general_plugins``: ``packcache``).

vLLM calls ``register()`` in every process it starts (API server, engine core, workers), before it
parses arguments or builds the model. It must be idempotent and cheap: everything is registered by
string path, so nothing heavy is imported here.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)
_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    from packcache_vllm import cli, metrics
    from packcache_vllm.engine.seam import process, version
    from packcache_vllm.model.config_hook import (
        LUMOS_ARCHITECTURE,
        MODEL_CLASS_PATH,
        LumosConfigHook,
    )

    process.register_model(LUMOS_ARCHITECTURE, MODEL_CLASS_PATH)
    process.install_cli_hooks(cli.vllm_flags())  # --kv-policy and --packcache-* on `vllm serve`
    if version.is_tested():
        process.register_config_hook(LUMOS_ARCHITECTURE, LumosConfigHook)
        process.install_request_checks(check_request)  # bad overrides / prompts: HTTP 400
        process.install_shutdown_aborts()  # SIGTERM: in-flight clients get a terminal response
    else:  # a policy is refused at parse time (cli.check_tested_vllm), naming both versions
        logger.warning(version.untested_vllm("packcache_vllm", version.installed_vllm()))
    metrics.register_collector(metrics.ensure_metrics_dir())  # packcache:* on /metrics
    _registered = True
    logger.debug("packcache_vllm registered %s", LUMOS_ARCHITECTURE)


def check_request(vllm_config, prompt_token_ids, sampling_params) -> None:
    """``engine.requests.check_request``, imported when the first request arrives."""
    from packcache_vllm.engine.requests import check_request as check

    check(vllm_config, prompt_token_ids, sampling_params)
