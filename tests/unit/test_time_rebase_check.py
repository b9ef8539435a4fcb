"""A PackCache policy that drops frames is refused when the engine is configured if the
checkpoint's MM-RoPE cannot rebase time (the config hook vLLM runs on its VllmConfig)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from packcache_vllm.cli import engine_overrides
from packcache_vllm.model.config_hook import LumosConfigHook


def vllm_config(head_dim: int, policy: str) -> SimpleNamespace:
    """What the hook reads of a VllmConfig: the model (4 heads of ``head_dim``) and the policy."""
    overrides = engine_overrides(policy, device="cpu")
    hf_config = SimpleNamespace(hidden_size=4 * head_dim, num_attention_heads=4)
    return SimpleNamespace(
        model_config=SimpleNamespace(model="ckpt", hf_config=hf_config),
        additional_config=overrides.get("additional_config", {}),
    )


@pytest.mark.parametrize("policy", ["sliding", "packcache"])
@pytest.mark.parametrize("head_dim", [16, 48, 80])
def test_dropping_frames_is_refused_where_time_cannot_be_rebased(head_dim, policy):
    match = rf"ckpt: PackCache policy '{policy}' drops frames .* head_dim {head_dim}\b"
    with pytest.raises(ValueError, match=match):
        LumosConfigHook.verify_and_update_config(vllm_config(head_dim, policy))


@pytest.mark.parametrize(
    ("head_dim", "policy"),
    [(48, "full"), (48, "none"), (32, "packcache"), (64, "sliding"), (96, "packcache")],
)
def test_policies_that_can_run_are_accepted(head_dim, policy):
    LumosConfigHook.verify_and_update_config(vllm_config(head_dim, policy))
