"""Pair sampling: gaps, frame-rate conversion, crops, shared crop and flip."""

import math
import re

import numpy as np
import pytest
from fake_videos import ShiftVideo

from siammae_jax.data import pairs
from siammae_jax.data.video import BadVideoError, Video


@pytest.mark.parametrize(
    "num_frames, fps, low, high",
    [
        (300, 30.0, 4, 48),
        (300, 15.0, 2, 24),
        (300, 60.0, 8, 96),
        (300, 25.0, 3, 40),  # 3.33 -> 3, 40
        (20, 30.0, 4, 19),
        (5, 30.0, 4, 4),  # just long enough: the one gap 4 is still usable
        (300, 7.5, 1, 12),  # 4 * 0.25 = 1
        (300, 3.0, 1, 5),  # 4 * 0.1 rounds to 0: the gap never drops below 1
    ],
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
    # The error names the video, its length and rate, and the minimum gap.
    want = "shift_0: too short: 4 frames at 30 fps, the minimum gap is 4 frames"
    with pytest.raises(BadVideoError, match=re.escape(want)) as info:
        sampler(ShiftVideo(0, num_frames=4), np.random.default_rng(0))
    assert info.value.path == "shift_0"


def test_crop_boxes_within_frame_and_scale():
    sampler = pairs.PairSampler()
    rng = np.random.default_rng(0)
    areas, log_aspects = [], []
    for _ in range(500):
        top, left, h, w = sampler.sample_crop(256, 340, rng)
        assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 340
        assert 0.5 * 0.98 <= h * w / (256 * 340) <= 1.0
        assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03
        areas.append(h * w / (256 * 340))
        log_aspects.append(math.log(w / h))
    # Both ends of the area and aspect ranges are reached.
    assert min(areas) < 0.52 and max(areas) > 0.98
    assert min(log_aspects) < math.log(3 / 4) + 0.02
    assert max(log_aspects) > math.log(4 / 3) - 0.02


def test_crop_area_and_log_aspect_uniform():
    # With areas up to 0.5 every try fits a 256x340 frame (at most 241 px on a
    # side), so no try is rejected: area uniform in [0.2, 0.5] (mean 0.35, sd
    # 0.087) and log-aspect uniform in [log 3/4, log 4/3] (mean 0, sd 0.166).
    # 2000 draws: 3 standard errors are 0.006 and 0.011.
    sampler = pairs.PairSampler(scale=(0.2, 0.5))
    rng = np.random.default_rng(0)
    boxes = np.array([sampler.sample_crop(256, 340, rng) for _ in range(2000)])
    area = boxes[:, 2] * boxes[:, 3] / (256 * 340)
    log_aspect = np.log(boxes[:, 3] / boxes[:, 2])
    assert abs(area.mean() - 0.35) < 0.006
    assert abs(np.std(area) - 0.3 / math.sqrt(12)) < 0.006
    assert abs(log_aspect.mean()) < 0.011
    assert abs(np.std(log_aspect) - math.log(16 / 9) / math.sqrt(12)) < 0.011


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
    # Pixel boxes are integers and flips booleans, like the indices.
    assert out["indices"].dtype == np.int32 and out["crop"].dtype == np.int32
    assert out["flip"].dtype == np.bool_


def test_normalize():
    x = np.full((1, 2, 2, 3), 255, np.uint8)
    np.testing.assert_allclose(
        pairs.normalize(x)[0, 0, 0], (1 - pairs.MEAN) / pairs.STD
    )
    # Hand values: (v / 255 - mean) / std with ImageNet's (0.485, 0.456, 0.406)
    # and (0.229, 0.224, 0.225), for v = 0, 51 (0.2) and 255; float32 out.
    x = np.array([0, 51, 255], np.uint8)[:, None, None].repeat(3, axis=-1)
    y = pairs.normalize(x)
    assert y.dtype == np.float32 and y.shape == (3, 1, 3)
    want = [
        [-2.1179039, -2.0357143, -1.8044444],
        [-1.2445415, -1.1428571, -0.9155556],
        [2.2489083, 2.4285714, 2.64],
    ]
    np.testing.assert_allclose(y[:, 0], want, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size=0), "size=0 must be positive"),
        (dict(min_gap=0), "min_gap=0 must be >= 1"),
        (dict(min_gap=10, max_gap=5), "max_gap=5 must be >= min_gap=10"),
        (dict(ref_fps=0.0), "ref_fps=0.0 must be positive"),
        (dict(ref_fps=-30.0), "ref_fps=-30.0 must be positive"),
        (dict(scale=(0.0, 1.0)), "scale=(0.0, 1.0) must satisfy 0 < low <= high <= 1"),
        (dict(scale=(0.5, 1.5)), "scale=(0.5, 1.5) must satisfy 0 < low <= high <= 1"),
        (dict(ratio=(2.0, 1.0)), "ratio=(2.0, 1.0) must satisfy 0 < low <= high"),
        (dict(ratio=(0.0, 1.0)), "ratio=(0.0, 1.0) must satisfy 0 < low <= high"),
        (dict(repeats=0), "repeats=0 must be >= 1"),
    ],
)
def test_bad_sampler_config(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        pairs.PairSampler(**kwargs)


def test_boundary_configs_are_accepted():
    """Each bound of the config checks is inclusive where the message says so."""
    rng = np.random.default_rng(0)
    video = ShiftVideo(2, num_frames=12, size=(16, 20))
    # size 1, one pair, a fixed gap of 1 frame.
    out = pairs.PairSampler(size=1, min_gap=1, max_gap=1, repeats=1)(video, rng)
    assert out["frames"].shape == (1, 2, 1, 1, 3)
    assert out["indices"][0, 1] - out["indices"][0, 0] == 1
    # A fixed gap (min_gap == max_gap), gaps given at 0.5 fps.
    sampler = pairs.PairSampler(min_gap=3, max_gap=3, ref_fps=0.5)
    assert sampler.gap_range(100, 1.0) == (6, 6)
    assert (np.diff(sampler.sample_indices(100, 1.0, rng), axis=1) == 6).all()
    # A fixed crop area and a fixed (square) aspect ratio.
    sampler = pairs.PairSampler(scale=(0.7, 0.7), ratio=(1.0, 1.0))
    for _ in range(20):
        _, _, h, w = sampler.sample_crop(60, 80, rng)
        assert h == w == round(math.sqrt(0.7 * 60 * 80))


class _ScriptedRng:
    """An rng whose ``uniform`` draws come from a list; ``integers`` gives its low.

    ``integers(n)`` means ``integers(0, n)``, as for numpy's Generator.
    """

    def __init__(self, uniforms):
        self.uniforms = list(uniforms)
        self.used = 0

    def uniform(self, low, high):
        value = self.uniforms[self.used]
        assert low <= value <= high
        self.used += 1
        return value

    def integers(self, low, high=None):
        return 0 if high is None else low


def test_crop_falls_back_to_centre_after_ten_tries():
    # On a 100x100 frame a try of area 1 and aspect 4/3 is 115 px wide (fails);
    # one of area 0.5 and aspect 1 is 71 x 71 (fits).
    sampler = pairs.PairSampler()
    fail, fit = [1.0, math.log(4 / 3)], [0.5, 0.0]
    rng = _ScriptedRng(fail * 9 + fit)
    assert sampler.sample_crop(100, 100, rng) == (0, 0, 71, 71)  # the 10th try
    rng = _ScriptedRng(fail * 10 + fit)
    assert sampler.sample_crop(100, 100, rng) == (0, 0, 100, 100)  # no 11th try
    assert rng.used == 20


@pytest.mark.parametrize(
    "height, width, box",
    [
        # Too wide for any try: full height, width 20 * 4/3 = 26.7 -> 27,
        # centred: left (200 - 27) // 2 = 86.
        (20, 200, (0, 86, 20, 27)),
        # Too tall: full width, height 20 / (3/4) = 26.7 -> 27, top 86.
        (200, 20, (86, 0, 27, 20)),
    ],
)
def test_crop_fallback_clamps_aspect_and_centres(height, width, box):
    sampler = pairs.PairSampler()
    got = sampler.sample_crop(height, width, np.random.default_rng(0))
    assert got == box and all(type(v) is int for v in got)


@pytest.mark.parametrize(
    "height, width, scale, ratio, size",
    [
        (20, 10, 0.5, 1.0, (10, 10)),  # full width, all tops 0..10
        (10, 20, 0.5, 1.0, (10, 10)),  # full height, all lefts 0..10
        (2, 1, 0.5, 0.5, (1, 1)),  # 1 px wide (area 1, aspect 1/2 -> 0.7 x 1.4)
        (1, 2, 0.5, 2.0, (1, 1)),  # 1 px high
    ],
)
def test_crop_placed_uniformly_over_all_positions(height, width, scale, ratio, size):
    # Fixed area and aspect: every try gives the same box size, which fits
    # (touching the frame's edges is allowed); its position is uniform over all
    # (height - h + 1) x (width - w + 1) places.
    sampler = pairs.PairSampler(scale=(scale, scale), ratio=(ratio, ratio))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        top, left, h, w = sampler.sample_crop(height, width, rng)
        assert (h, w) == size
        seen.add((top, left))
    h, w = size
    assert seen == {(t, x) for t in range(height - h + 1) for x in range(width - w + 1)}


@pytest.mark.parametrize("height, width, ratio", [(40, 4, 0.1), (4, 40, 10.0)])
def test_crop_never_empty(height, width, ratio):
    # Area 1% of 160 px at aspect 0.1 is 0.4 x 4 px: rounds to an empty box, so
    # every try fails and the fallback keeps the whole frame (aspect in range).
    sampler = pairs.PairSampler(scale=(0.01, 0.01), ratio=(ratio, ratio))
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert sampler.sample_crop(height, width, rng) == (0, 0, height, width)


def test_crop_resize_is_bilinear():
    # A 2x2 frame [0, 200] per row, upsampled to 4x4: output pixel centres sit
    # at 0.25, 0.75, 1.25, 1.75 source pixels, so bilinear (edge-clamped) gives
    # 0, 0.75*0 + 0.25*200 = 50, 150, 200 (bicubic would overshoot).
    frame = np.zeros((2, 2, 3), np.uint8)
    frame[:, 1] = 200
    sampler = pairs.PairSampler(size=4)
    out = sampler.crop_resize(frame, (0, 0, 2, 2), False)
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out, np.tile([0, 50, 150, 200], (4, 3, 1)).mT)
    flipped = sampler.crop_resize(frame, (0, 0, 2, 2), True)
    np.testing.assert_array_equal(flipped, out[:, ::-1])


class _ShapeVideo(Video):
    """A video whose decoder returns arrays of a wrong shape."""

    def __init__(self, shape):
        self.path, self.num_frames, self.fps = "clips/bad.mp4", 10, 30.0
        self.shape = shape

    def read(self, indices):
        return np.zeros(self.shape(len(indices)), np.uint8)


@pytest.mark.parametrize(
    "shape",
    [
        lambda n: (n, 8, 8, 4),  # RGBA
        lambda n: (n - 1, 8, 8, 3),  # a frame missing
        lambda n: (n, 8, 8),  # grayscale
    ],
    ids=["rgba", "missing", "gray"],
)
def test_decoder_shape_is_checked(shape):
    # One pair with gap 4 needs 2 distinct frames.
    sampler = pairs.PairSampler(size=8, min_gap=4, max_gap=4, repeats=1)
    want = f"clips/bad.mp4: decoder returned shape {shape(2)}"
    with pytest.raises(BadVideoError, match=re.escape(want)) as info:
        sampler(_ShapeVideo(shape), np.random.default_rng(0))
    assert info.value.path == "clips/bad.mp4"


class _FixedRandom:
    """A real rng whose ``random()`` always returns ``value``."""

    def __init__(self, value):
        self.rng, self.value = np.random.default_rng(0), value

    def __getattr__(self, name):
        return getattr(self.rng, name)

    def random(self):
        return self.value


@pytest.mark.parametrize("value, flipped", [(0.5, False), (np.nextafter(0.5, 0), True)])
def test_flip_when_draw_below_half(value, flipped):
    # Flip with probability 0.5: exactly when the uniform [0, 1) draw is < 0.5.
    sampler = pairs.PairSampler(size=8, repeats=3)
    out = sampler(ShiftVideo(1, num_frames=60, size=(16, 16)), _FixedRandom(value))
    assert out["flip"].tolist() == [flipped] * 3
