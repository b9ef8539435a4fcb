"""dedupe: a thinned frame gives up first the cells whose last-layer key nearly repeats at the
same cell of the next frame; PackCache's budget."""

from __future__ import annotations

import pytest
import torch

from packcache_vllm.core.budget import PackCacheConfig
from packcache_vllm.core.policies import make_policy
from packcache_vllm.core.policies.dedupe import DedupePolicy, DedupeSelector
from packcache_vllm.core.select import uniform_order
from tests.unit.policy_fixtures import (
    COLS,
    ROWS,
    F,
    kept_prefixes_differ_from_uniform,
    tiny_reference,
    video_in_both_rebase_modes,
    video_prompt,
)

# The tiny random model's same-cell key similarities between frames lie in about [-0.3, 0.4]:
# at 0.1 some cells of every frame are near-duplicates and some are not.
THRESHOLD = 0.1


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_reference(tmp_path_factory)


def frame_keys(seed: int) -> torch.Tensor:
    return torch.randn(F, 2, 8, generator=torch.Generator().manual_seed(seed))  # [F, KV, hd]


def test_near_duplicates_go_last_each_group_spread():
    keys = frame_keys(0)
    newer = frame_keys(1)
    changed = [4, 9, 13, 17]  # cells that repeat in the next frame, scaled (cosine ignores it)
    newer[changed] = 3 * keys[changed]
    order = DedupeSelector(0.99).order(ROWS, COLS, keys, newer).tolist()
    spread = list(uniform_order(ROWS, COLS))
    assert order[:4] == spread[:4]  # the markers
    kept_first = [offset for offset in spread[4:] if offset not in changed]
    assert order[4:] == kept_first + [offset for offset in spread[4:] if offset in changed]


@pytest.mark.parametrize("newer_seed", [None, 1])
def test_all_or_no_duplicates_is_the_uniform_order(newer_seed):
    keys = frame_keys(0)
    newer = keys.clone() if newer_seed is None else -keys
    order = DedupeSelector().order(ROWS, COLS, keys, newer)
    assert order.tolist() == list(uniform_order(ROWS, COLS))


def test_the_newer_frames_keys_are_required():
    with pytest.raises(ValueError, match="needs the newer frame's keys of shape"):
        DedupeSelector().order(ROWS, COLS, frame_keys(0), None)


def test_the_budget_is_packcaches():
    policy = make_policy("dedupe", window=3, threshold=0.5)
    packcache = PackCacheConfig.preset("packcache", window=3)
    assert (policy.window, policy.decay, policy.min_keep) == (3, packcache.decay, 1.0)
    assert policy.keep_counts(6, 40) == packcache.keep_counts(6, 40)
    assert policy.make_selector() == DedupeSelector(0.5)
    assert make_policy("dedupe") == DedupePolicy()


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"threshold": 0}, "dedupe threshold must be a number in (0, 1], got 0"),
        ({"threshold": 1.5}, "dedupe threshold must be a number in (0, 1], got 1.5"),
        ({"threshold": "0.9"}, "dedupe threshold must be a number in (0, 1], got '0.9'"),
        ({"window": 0}, "packcache window must be an integer >= 1"),
        ({"selector": "key_norm"}, "KV policy 'dedupe' has no knob(s) ['selector']"),
    ],
)
def test_bad_knobs_name_knob_and_value(knobs, message):
    with pytest.raises(ValueError) as error:
        make_policy("dedupe", **knobs)
    assert message in str(error.value)


class KeyProbe:
    """Wraps a reference policy: records the newest frame's last-layer keys and each history."""

    def __init__(self, policy) -> None:
        self.policy, self.keys, self.histories = policy, [], []

    def eviction_layout(self, layout):
        return self.policy.eviction_layout(layout)

    def kept_history(self, n, layout, newest_frame_keys):
        self.keys.append(newest_frame_keys[-1])
        self.histories.append(self.policy.kept_history(n, layout, newest_frame_keys))
        return self.histories[-1]


def test_reference_orders_a_frame_by_the_next_ones_keys(model):
    """Each frame, once its successor completes, keeps the prefix of the dedupe order of its
    pre-RoPE keys against the successor's; and that differs from the uniform selector's."""
    from packcache_vllm.reference import PackCachePolicy

    prompt = video_prompt()
    layout = model.layout_for(prompt)
    config = DedupePolicy.build(window=3, min_keep=0.25, threshold=THRESHOLD)
    probe = KeyProbe(PackCachePolicy(config))
    model.generate(prompt, layout, 7 * F, probe)
    selector = config.make_selector()

    def order_of(frame: int):
        return selector.order(ROWS, COLS, probe.keys[frame], probe.keys[frame + 1])

    assert kept_prefixes_differ_from_uniform(probe.histories, order_of)


def test_reference_rebase_modes_agree(model):
    """Rotated cached keys are rotated back before they are compared (ROTATE_ANCHORS)."""
    config = DedupePolicy.build(window=3, min_keep=0.25, threshold=THRESHOLD)
    by_positions, by_rotation = video_in_both_rebase_modes(model, config, 6)
    assert by_positions == by_rotation
