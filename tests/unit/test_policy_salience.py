"""salience: a thinned frame keeps the cells its successor's queries attended to most;
PackCache's budget. The reference accumulates that attention from its own softmax as it
generates; the engine recomputes it from recorded queries (``engine/runner.py``), checked here
against the reference's attention and end to end in ``tests/engine/test_policy_oracle.py``."""

from __future__ import annotations

import pytest
import torch

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.policies import make_policy
from packcache_vllm.core.policies.salience import SaliencePolicy, SalienceSelector
from packcache_vllm.core.select import marker_offsets
from packcache_vllm.settings import Settings
from tests.unit.policy_fixtures import (
    COLS,
    ROWS,
    F,
    kept_prefixes_differ_from_uniform,
    tiny_reference,
    video_in_both_rebase_modes,
    video_prompt,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_reference(tmp_path_factory)


def test_markers_first_then_cells_by_descending_attention():
    attention = torch.rand(F, generator=torch.Generator().manual_seed(0))
    order = SalienceSelector().order(ROWS, COLS, attention=attention).tolist()
    markers = list(marker_offsets(ROWS, COLS))
    assert order[:4] == markers
    cells = [offset for offset in range(F) if offset not in markers]
    assert order[4:] == sorted(cells, key=lambda offset: -float(attention[offset]))


def test_ties_go_to_the_lower_offset():
    attention = torch.zeros(F)
    attention[[9, 5, 12]] = 1.0
    order = SalienceSelector().order(ROWS, COLS, attention=attention).tolist()
    assert order[4:7] == [5, 9, 12]
    assert order[7:] == [o for o in range(3, F - 1) if o not in (5, 9, 12)]


@pytest.mark.parametrize("attention", [None, torch.zeros(F - 1), torch.zeros(1, F)])
def test_the_attention_is_required(attention):
    with pytest.raises(ValueError, match=r"needs the attention paid to the frame's tokens"):
        SalienceSelector().order(ROWS, COLS, attention=attention)


def test_the_budget_is_packcaches():
    policy = make_policy("salience", window=3)
    packcache = PackCacheConfig.preset("packcache", window=3)
    assert (policy.window, policy.decay, policy.min_keep) == (3, packcache.decay, 1.0)
    assert policy.keep_counts(6, 40) == packcache.keep_counts(6, 40)
    assert policy.make_selector() == SalienceSelector()
    assert make_policy("salience") == SaliencePolicy()


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"decay": 0}, "decay must be a number in (0, 1]"),
        ({"window": 0}, "packcache window must be an integer >= 1"),
        ({"threshold": 0.5}, "KV policy 'salience' has no knob(s) ['threshold']"),
    ],
)
def test_bad_knobs_name_knob_and_value(knobs, message):
    with pytest.raises(ValueError) as error:
        make_policy("salience", **knobs)
    assert message in str(error.value)


def test_frame_parallel_mode_refuses_it():
    entry = {"packcache": {"policy": "salience", "mode": "frame-parallel"}}
    with pytest.raises(ValueError, match="only next-token mode records"):
        Settings.of(entry)
    assert Settings.of({"packcache": {"policy": "salience"}}).mode == "next-token"


class AttentionProbe:
    """Wraps a reference policy: records the attention each completion passes and each history."""

    def __init__(self, policy) -> None:
        self.policy, self.attention, self.histories = policy, [], []

    @property
    def needs_attention(self) -> bool:
        return self.policy.needs_attention

    def kept_history(self, n, layout, newest_frame_keys, previous_frame_attention=None):
        self.attention.append(previous_frame_attention.clone())
        history = self.policy.kept_history(
            n, layout, newest_frame_keys, previous_frame_attention=previous_frame_attention
        )
        self.histories.append(history)
        return history


def last_layer_probs(model, token_ids, layout) -> torch.Tensor:
    """[H, N, N]: the last layer's attention of one full causal forward over ``token_ids``."""
    captured = {}
    last = model.config.num_hidden_layers - 1

    def probe(layer, probs):
        if layer == last:
            captured["probs"] = probs

    model.attention_probe = probe
    try:
        model.causal_logits(token_ids, layout)
    finally:
        model.attention_probe = None
    return captured["probs"]


def test_reference_attention_is_the_next_frames_softmax_mass(model):
    """While nothing is evicted (PackCache's fill phase, W = 4), the attention the session hands
    over at each completion is the next frame's last-layer softmax mass on each token of the
    frame before it, as one full causal forward computes it."""
    from packcache_vllm.reference import PackCachePolicy

    prompt = video_prompt()
    layout = model.layout_for(prompt)
    probe = AttentionProbe(PackCachePolicy(make_policy("salience", window=4)))
    result = model.generate(prompt, layout, 4 * F + 1, probe)  # the last token is never fed
    probs = last_layer_probs(model, list(prompt) + list(result.token_ids), layout)
    assert torch.equal(probe.attention[0], torch.zeros(F))  # no generated frame before frame 0
    for n in (2, 3, 4):  # frame n - 1 completes; it attended to frame n - 2
        start, end = layout.frame_span(layout.num_anchor_frames + n - 1)
        previous = slice(start - F, start)
        expected = probs[:, start:end, previous].sum(dim=1).mean(dim=0)
        torch.testing.assert_close(probe.attention[n - 1], expected, rtol=1e-5, atol=1e-7)
        assert float(expected.sum()) > 0


def test_reference_keeps_the_most_attended_cells(model):
    """Each thinned frame keeps the prefix of the salience order of the attention its successor
    paid to it; and that differs from the uniform selector's."""
    from packcache_vllm.reference import PackCachePolicy

    prompt = video_prompt()
    layout = model.layout_for(prompt)
    config = make_policy("salience", window=3, min_keep=0.25)
    probe = AttentionProbe(PackCachePolicy(config))
    model.generate(prompt, layout, 7 * F, probe)

    def order_of(frame: int):
        return SalienceSelector().order(ROWS, COLS, attention=probe.attention[frame + 1])

    assert kept_prefixes_differ_from_uniform(probe.histories, order_of)


def test_reference_rebase_modes_agree(model):
    """The attention is read from the softmax either way (rotated anchors or rebased positions)."""
    config = make_policy("salience", window=2, min_keep=0.25)
    by_positions, by_rotation = video_in_both_rebase_modes(model, config, 6)
    assert by_positions == by_rotation
