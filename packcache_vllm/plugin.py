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
    from packcache_vllm import metrics
    from packcache_vllm.engine import compat
    from packcache_vllm.model.config_hook import (
        LUMOS_ARCHITECTURE,
        MODEL_CLASS_PATH,
        LumosConfigHook,
    )

    compat.register_model(LUMOS_ARCHITECTURE, MODEL_CLASS_PATH)
    compat.register_config_hook(LUMOS_ARCHITECTURE, LumosConfigHook)
    compat.install_cli_hooks()  # --kv-policy and --packcache-* on `vllm serve`
    compat.install_request_checks()  # bad per-request overrides / prompts: HTTP 400
    compat.install_shutdown_aborts()  # SIGTERM: in-flight clients get a terminal response
    metrics.register_collector(metrics.ensure_metrics_dir())  # packcache:* on /metrics
    _registered = True
    logger.debug("packcache_vllm registered %s", LUMOS_ARCHITECTURE)
