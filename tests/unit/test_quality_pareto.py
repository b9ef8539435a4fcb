"""The quality x memory x speed table's reductions: KV per video from a policy's keep counts,
the Pareto front of (KV, accuracy) points, the last-four-frame time of a speed run."""

import pytest

from benchmarks.quality import parse_setting
from benchmarks.quality_pareto import history_frames, median_speed, pareto_front, video_kv
from benchmarks.quality_speed import last_four_s
from packcache_vllm.core.budget import bound_tokens
from packcache_vllm.core.layout import FrameLayout, tokens_per_frame

LAYOUT = FrameLayout(frame_start=46, anchor_len=154, rows=8, cols=12)
FRAME = tokens_per_frame(8, 12)
SPECS = (
    "full",
    "sliding:window=2",
    "packcache:window=3,min_keep=0.5",
    "packcache:window=8,decay=0.502,min_keep=0.0081",
    "sink-window:sinks=1,window=1",
    "geometric:decay=0.5,floor=0.03",
    "dedupe:window=7,min_keep=0.5",
)


@pytest.mark.parametrize("spec", SPECS)
def test_peak_is_the_admission_bound_less_the_prompt(spec):
    config = parse_setting(spec).config()
    peak = video_kv(config, frames=24, tokens_per_frame=FRAME).peak
    assert peak == bound_tokens(LAYOUT, config, 24 * FRAME) - LAYOUT.anchor_len


def test_packcache_peaks_in_its_fill_phase_and_settles_lower():
    kv = video_kv(parse_setting("packcache:window=3,min_keep=0.5").config(), 24, FRAME)
    assert (kv.peak, kv.last) == (4 * FRAME, 2 * FRAME + 2 * (FRAME // 2))


def test_sink_frames_count_as_history():
    config = parse_setting("sink-window:sinks=1,window=1").config()
    assert history_frames(config) == 2
    assert video_kv(config, 24, FRAME).last == 3 * FRAME  # sink + newest + frame in progress
    assert history_frames(parse_setting("full").config()) is None


def test_pareto_front_keeps_the_undominated_points_and_ties():
    points = [(1, 0.5), (2, 0.6), (2, 0.4), (3, 0.6), (1, 0.5), (3, 0.7)]
    assert pareto_front(points) == [0, 4, 1, 5]


def test_last_four_frames_time_is_frame_n_minus_4_to_n_averaged_over_videos():
    done = [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]]
    assert last_four_s(done) == pytest.approx((6 - 2 + 12 - 4) / 2)


def test_speed_of_a_setting_is_the_median_of_its_runs_and_counts_them():
    runs = [{"end_to_end_s": t, "last_four_s": t / 10} for t in (30.0, 10.0, 12.0)]
    assert median_speed(runs) == {"runs": 3, "end_to_end_s": 12.0, "last_four_s": 1.2}
    assert median_speed([]) is None
