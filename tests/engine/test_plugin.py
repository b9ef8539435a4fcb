"""The plugin entry point: discoverable, idempotent, lazy, and wiring Lumos-1 into vLLM."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

from packcache_vllm.model.config_hook import LUMOS_ARCHITECTURE, MODEL_CLASS_PATH, mrope_section


def test_entry_point_is_declared():
    points = importlib.metadata.entry_points(group="vllm.general_plugins")
    ours = [p for p in points if p.name == "packcache"]
    assert [p.value for p in ours] == ["packcache_vllm.plugin:register"]


def test_register_is_idempotent_and_lazy():
    code = (
        "import sys\n"
        "from packcache_vllm import plugin\n"
        "plugin.register(); plugin.register()\n"
        "from vllm import ModelRegistry\n"
        f"assert {LUMOS_ARCHITECTURE!r} in ModelRegistry.get_supported_archs()\n"
        "assert 'packcache_vllm.model.lumos' not in sys.modules, 'model imported eagerly'\n"
        "from vllm.model_executor.models.config import MODELS_CONFIG_MAP\n"
        f"assert MODELS_CONFIG_MAP[{LUMOS_ARCHITECTURE!r}].__name__ == 'LumosConfigHook'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_registered_class_path_resolves_to_the_mrope_model():
    import importlib

    from vllm.model_executor.models.interfaces import supports_mrope

    module, name = MODEL_CLASS_PATH.split(":")
    assert supports_mrope(getattr(importlib.import_module(module), name))


def test_mrope_section_counts_lumos_channel_split():
    # per 16 channels: t 4, h 6, w 6; the first half of head_dim 128 holds 4 groups.
    assert mrope_section(128) == [16, 24, 24]
    assert mrope_section(32) == [4, 6, 6]
    assert sum(mrope_section(64)) == 32


def test_engine_runs_lumos_on_mrope_path(llm):
    model_config = llm.llm_engine.vllm_config.model_config
    assert model_config.architecture == LUMOS_ARCHITECTURE
    assert model_config.uses_mrope
