"""The visual codes a checkpoint can emit, and prompt ids checked against them (no vLLM)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from packcache_vllm.engine.vocab_check import check_token_ids
from packcache_vllm.model.config_hook import visual_codebook_size

VISUAL_BASE = 65536


def test_codebook_from_the_config_or_every_row_after_the_text_ids():
    trained = SimpleNamespace(vocab_size=VISUAL_BASE + 16, codebook_size=16)
    real_lumos = SimpleNamespace(vocab_size=129536)  # no codebook_size: 64,000 Cosmos codes
    assert visual_codebook_size(trained) == 16
    assert visual_codebook_size(real_lumos) == 64000


@pytest.mark.parametrize(
    "config",
    [
        SimpleNamespace(vocab_size=VISUAL_BASE + 16, codebook_size=17),
        SimpleNamespace(vocab_size=VISUAL_BASE + 16, codebook_size=0),
        SimpleNamespace(vocab_size=VISUAL_BASE),
    ],
)
def test_a_codebook_the_embedding_has_no_rows_for_is_refused(config):
    with pytest.raises(ValueError, match="codebook"):
        visual_codebook_size(config)


def test_ids_past_the_codebook_are_refused_with_the_id_and_its_position():
    codebook = 16
    check_token_ids([0, 5, VISUAL_BASE, VISUAL_BASE + codebook - 1], codebook)
    with pytest.raises(ValueError, match=r"token id 65552 at position 2 .*0\.\.65551"):
        check_token_ids([7, VISUAL_BASE, VISUAL_BASE + codebook, 9], codebook)
    with pytest.raises(ValueError, match="token id -1 at position 1"):
        check_token_ids([7, -1], codebook)
