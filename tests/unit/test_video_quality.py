"""The committed motion checkpoint predicts held-out motion better than copying the last frame."""

from __future__ import annotations

import torch

from packcache_vllm.reference import ReferenceVideoModel
from packcache_vllm.train import MOTION_CHECKPOINT
from packcache_vllm.train.data import ClipSpec
from packcache_vllm.train.evaluate import mean_accuracy, next_frame_accuracy

HELDOUT = ClipSpec()  # the training clips' shape, seeds from the held-out split
MARGIN = 0.05  # in cell accuracy (fraction of cells)


def test_next_frame_accuracy_beats_copying_the_last_frame():
    torch.manual_seed(0)
    model = ReferenceVideoModel.from_pretrained(MOTION_CHECKPOINT)
    result = mean_accuracy(
        [next_frame_accuracy(model, HELDOUT.clip("heldout", i)) for i in range(6)]
    )
    assert result.model.mean() > result.baseline.mean() + MARGIN, (result.model, result.baseline)
