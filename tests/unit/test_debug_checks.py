"""The hot path's value checks (each a device-to-host read on a GPU) run only under the debug
flag: the suite turns it on, production leaves it off."""

from __future__ import annotations

import pytest
import torch

from packcache_vllm.engine import debug_checks, kv_layout, token_rows

CACHE = [torch.zeros(3, 2, 16, 8)]  # [num_blocks, kv_heads, block_size, 2 * head_size]
LAYOUT = kv_layout.PageLayout(
    16,
    4,
    key_offsets=torch.arange(16).view(-1, 1) * 8 + torch.arange(4),
    value_offsets=torch.arange(16).view(-1, 1) * 8 + 4 + torch.arange(4),
)
REPEATED = (torch.tensor([0, 1]), torch.tensor([5, 5]))  # one destination twice


def test_the_suite_runs_with_the_checks_on():
    assert debug_checks.enabled()


@pytest.mark.parametrize(
    "move",
    [
        lambda src, dst: token_rows.move_token_rows(CACHE, src, dst),
        lambda src, dst: kv_layout.move_tokens(CACHE, LAYOUT, src, dst),
    ],
    ids=["token_rows", "kv_layout"],
)
def test_value_checks_run_only_under_the_flag(monkeypatch, move):
    with pytest.raises(ValueError, match="distinct"):
        move(*REPEATED)
    monkeypatch.setattr(debug_checks, "ENABLED", False)
    move(*REPEATED)  # production: no host read, the repeated destination is not looked for
    with pytest.raises(ValueError, match="int64"):  # shape and dtype checks stay
        move(REPEATED[0].int(), REPEATED[1])
