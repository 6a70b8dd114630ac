"""Pair sampling: gaps, frame-rate conversion, crops, shared crop and flip."""

import numpy as np
import pytest
from fake_videos import ShiftVideo

from siammae_jax.data import pairs
from siammae_jax.data.video import BadVideoError


@pytest.mark.parametrize(
    "num_frames, fps, low, high",
    [(300, 30.0, 4, 48), (300, 15.0, 2, 24), (300, 60.0, 8, 96), (20, 30.0, 4, 19)],
)
def test_gaps_in_range(num_frames, fps, low, high):
    sampler = pairs.PairSampler(repeats=4)
    assert sampler.gap_range(num_frames, fps) == (low, high)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        idx = sampler.sample_indices(num_frames, fps, rng)
        gaps = idx[:, 1] - idx[:, 0]
        assert (gaps >= low).all() and (gaps <= high).all()
        assert (idx[:, 0] >= 0).all() and (idx[:, 1] < num_frames).all()
        seen.update(gaps.tolist())
    assert min(seen) == low and max(seen) == high  # the whole range is reachable


def test_too_short_video_is_a_bad_video():
    sampler = pairs.PairSampler()
    with pytest.raises(ValueError, match="too short"):
        sampler.gap_range(4, 30.0)
    with pytest.raises(BadVideoError, match="too short"):
        sampler(ShiftVideo(0, num_frames=4), np.random.default_rng(0))


def test_crop_boxes_within_frame_and_scale():
    sampler = pairs.PairSampler()
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, h, w = sampler.sample_crop(256, 340, rng)
        assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 340
        assert 0.5 * 0.98 <= h * w / (256 * 340) <= 1.0
        assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03


def _best_shift(a: np.ndarray, b: np.ndarray, max_shift: int) -> tuple[int, int]:
    """(dy, dx) minimising the mean abs difference of b against a moved by it."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    best, arg = np.inf, (0, 0)
    m = max_shift
    for dy in range(-3, 4):
        for dx in range(-m, m + 1):
            a_c = a[m + dy : a.shape[0] - m + dy, m - dx : a.shape[1] - m - dx]
            b_c = b[m : b.shape[0] - m, m : b.shape[1] - m]
            err = np.abs(a_c - b_c).mean()
            if err < best:
                best, arg = err, (dy, dx)
    return arg


def test_same_crop_and_flip_on_both_frames():
    # Frame t is a texture moved t px right: f2 must be f1 moved by the gap,
    # scaled by the crop's zoom and mirrored with the flip, with no vertical move.
    video = ShiftVideo(3, num_frames=40, size=(96, 128))
    sampler = pairs.PairSampler(size=64, min_gap=4, max_gap=12, repeats=8)
    out = sampler(video, np.random.default_rng(1))
    assert out["frames"].shape == (8, 2, 64, 64, 3) and out["frames"].dtype == np.uint8
    assert out["flip"].any() and not out["flip"].all()
    for r in range(8):
        gap = out["indices"][r, 1] - out["indices"][r, 0]
        zoom = 64 / out["crop"][r, 3]
        want = gap * zoom * (-1 if out["flip"][r] else 1)
        dy, dx = _best_shift(out["frames"][r, 0], out["frames"][r, 1], 14)
        assert dy == 0 and abs(dx - want) <= 1.0, (r, dx, want)


def test_output_equals_direct_crop_of_decoded_frames():
    video = ShiftVideo(5, num_frames=30, size=(48, 64))
    sampler = pairs.PairSampler(size=32, repeats=2)
    out = sampler(video, np.random.default_rng(7))
    for r in range(2):
        top, left, h, w = out["crop"][r]
        for k in range(2):
            frame = video.read([out["indices"][r, k]])[0]
            want = sampler.crop_resize(frame, (top, left, h, w), out["flip"][r])
            np.testing.assert_array_equal(out["frames"][r, k], want)


def test_normalize():
    x = np.full((1, 2, 2, 3), 255, np.uint8)
    np.testing.assert_allclose(
        pairs.normalize(x)[0, 0, 0], (1 - pairs.MEAN) / pairs.STD
    )


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(min_gap=0), "min_gap"),
        (dict(min_gap=10, max_gap=5), "max_gap"),
        (dict(scale=(0.0, 1.0)), "scale"),
        (dict(ratio=(2.0, 1.0)), "ratio"),
        (dict(repeats=0), "repeats"),
    ],
)
def test_bad_sampler_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        pairs.PairSampler(**kwargs)
