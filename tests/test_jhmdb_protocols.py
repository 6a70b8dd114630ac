"""JHMDB protocols: videowalk ("crw") and CropMAE heatmaps, decoding and PCK.

Each mode of ``jhmdb.joint_heatmaps`` / ``decode_joints`` / ``pck`` is
checked against a straightforward re-implementation, written here from the
published code (ajabri/videowalk code/data/jhmdb.py ``draw_labelmap_np``,
code/utils/test_utils.py ``process_pose``, code/eval/eval_pck.py; CropMAE's
copies differ only in ``topk=5`` and a 20 x 20 grid): per-cell loops, one
``np.argsort`` per joint, eval_pck's visibility / box / distance loops. Plus
hand-made truncation cases, and the promise that the defaults did not change.
NumPy only: no JAX compilation.
"""

import math
import re
import warnings

import numpy as np
import pytest

from siammae_jax.datasets import jhmdb

INPUT = 320  # videowalk and CropMAE both resize JHMDB frames to 320 x 320
# (original image (H, W), stride): stride 8 -> 40 x 40 (videowalk's ResNet),
# stride 16 -> 20 x 20 (CropMAE's ViT-S/16).
CASES = [((240, 320), 8), ((240, 320), 16), ((320, 240), 8), ((320, 240), 16)]


# ----------------------------------------------------- reference (from source)


def _videowalk_cells(joints, image_hw, stride, input_hw=(INPUT, INPUT)):
    """Grid positions as videowalk computes them: x * neww / wd / mapScale."""
    (ht, wd), (newh, neww) = image_hw, input_hw
    x = joints[:, 0] * float(neww) / float(wd) / stride
    y = joints[:, 1] * float(newh) / float(ht) / stride
    return np.stack([x, y], 1)


def _draw_labelmap_loops(channel, px, py, sigma):
    """draw_labelmap_np, one cell at a time: the truncated patch origin, the
    'any part in bounds' test, and the clipped copy of the patch."""
    h, w = channel.shape
    left, top = int(px - 3 * sigma), int(py - 3 * sigma)
    right, bottom = int(px + 3 * sigma + 1), int(py + 3 * sigma + 1)
    if left >= w or top >= h or right < 0 or bottom < 0:
        return
    size = 6 * sigma + 1
    peak = size // 2
    for row in range(max(0, top), min(bottom, h)):
        for col in range(max(0, left), min(right, w)):
            a, b = col - left, row - top  # position inside the patch
            assert 0 <= a < size and 0 <= b < size
            d2 = (a - peak) ** 2 + (b - peak) ** 2
            channel[row, col] = math.exp(-d2 / (2 * sigma**2))


def _crw_labels(joints, image_hw, stride, sigma=0.5):
    """videowalk's 16-channel frame labels: background = (sum == 0) first."""
    h = w = math.ceil(INPUT / stride)
    labels = np.zeros((h, w, 15))
    for j, (px, py) in enumerate(_videowalk_cells(joints, image_hw, stride)):
        if sigma > 0:
            _draw_labelmap_loops(labels[:, :, j], px, py, sigma)
        else:
            tx, ty = int(px), int(py)
            if 0 <= tx < w and 0 <= ty < h:
                labels[ty, tx, j] = 1.0
    background = (labels.sum(-1) == 0) * 1.0
    return np.concatenate([background[..., None], labels], -1)


def _process_pose(soft, topk):
    """process_pose: top-k cells per joint channel, weights = values / sum,
    coordinate = weighted mean of the (x, y) cell indices; -1 where the
    whole channel sums to 0. Ties: lowest row-major index first."""
    h, w = soft.shape[:2]
    coords = np.zeros((15, 2))
    for j in range(15):
        flat = soft[:, :, 1 + j].reshape(-1)
        k = min(flat.size, topk)
        ids = np.argsort(-flat, kind="stable")[:k]
        vals = flat[ids] / flat[ids].sum() if flat[ids].sum() else flat[ids]
        coords[j] = ((ids % w) * vals).sum(), ((ids // w) * vals).sum()
        if flat.sum() == 0:
            coords[j] = -1
    return coords


def _eval_pck(pred_videos, gt_videos, sizes, feat_res, thresholds):
    """eval_pck.py: pred [T, 15, 2] grid coords (-1 = not visible), GT
    [T, 15, 2] pixels, sizes (H, W) per video. Returns {a: (per-joint %,
    mean %)}."""
    dist = {j: [] for j in range(15)}
    for pred, gt, (height, width) in zip(pred_videos, gt_videos, sizes, strict=True):
        visible = pred[:, :, 0] >= 0
        pixels = pred.copy()
        pixels[:, :, 0] = pixels[:, :, 0] / float(feat_res) * width
        pixels[:, :, 1] = pixels[:, :, 1] / float(feat_res) * height
        for k in range(len(gt)):
            minx, maxx, miny, maxy = 1e6, -1, 1e6, -1
            for j in range(15):
                if visible[k, j]:
                    minx, maxx = min(minx, gt[k, j, 0]), max(maxx, gt[k, j, 0])
                    miny, maxy = min(miny, gt[k, j, 1]), max(maxy, gt[k, j, 1])
            box = 0.6 * math.hypot(maxx - minx, maxy - miny)
            for j in range(15):
                if not visible[k, j] or k == 0:
                    continue
                d = math.hypot(*(pixels[k, j] - gt[k, j]))
                dist[j].append(d / box)
    out = {}
    for a in thresholds:
        per_joint = [100.0 * sum(d <= a for d in dist[j]) / len(dist[j]) for j in dist]
        out[a] = (per_joint, float(np.mean(per_joint)))
    return out


# ----------------------------------------------------------------- helpers


def _random_joints(rng, image_hw, margin=12.0):
    """15 joints in the image, a few up to ``margin`` px outside it."""
    H, W = image_hw
    x = rng.uniform(-margin, W - 1 + margin, 15)
    y = rng.uniform(-margin, H - 1 + margin, 15)
    return np.stack([x, y], 1)


def _grid(stride):
    return (INPUT // stride, INPUT // stride)


def _crw(joints, image_hw, stride, **kwargs):
    return jhmdb.joint_heatmaps(
        joints, image_hw, _grid(stride), style="crw", coords="corner", **kwargs
    )


def _grid_to_pixels(coords, image_hw, feat_res):
    """eval_pck's scaling, with process_pose's -1 as NaN (decode_joints')."""
    H, W = image_hw
    out = coords / float(feat_res) * np.array([W, H], np.float64)
    return np.where(coords[..., :1] < 0, np.nan, out)


# ---------------------------------------------------------------- heatmaps


@pytest.mark.parametrize(("image_hw", "stride"), CASES)
def test_crw_heatmaps_match_draw_labelmap_loops(image_hw, stride):
    """Random joints (some just outside the image), non-square originals,
    40 x 40 and 20 x 20 grids: same cells, same values, background = no
    joint drawn."""
    rng = np.random.default_rng(stride + image_hw[0])
    for _ in range(6):
        joints = _random_joints(rng, image_hw)
        heat = _crw(joints, image_hw, stride)
        expected = _crw_labels(joints, image_hw, stride)
        assert heat.shape == (*_grid(stride), 16) and heat.dtype == np.float32
        np.testing.assert_array_equal(heat != 0, expected != 0)
        np.testing.assert_allclose(heat, expected, rtol=1e-6, atol=0)


def test_crw_heatmaps_integer_joints_at_truncation_boundaries():
    """Integer pixels give grid positions p with p - 1.5 on integers and
    halves: the truncations must land exactly where videowalk's do."""
    for image_hw, stride in CASES:
        H, W = image_hw
        xs = np.arange(-16, W + 16, 3.0)
        ys = np.resize(np.arange(-16, H + 16, 5.0), xs.size)
        for start in range(0, xs.size, 15):
            idx = np.arange(start, start + 15) % xs.size
            joints = np.stack([xs[idx], ys[idx]], 1)
            heat = _crw(joints, image_hw, stride)
            expected = _crw_labels(joints, image_hw, stride)
            np.testing.assert_array_equal(heat != 0, expected != 0)
            np.testing.assert_allclose(heat, expected, rtol=1e-6, atol=0)


def test_crw_hand_made_truncation_and_clipping():
    """320 x 320 image, 40 x 40 grid (8 px cells, corner: grid = x / 8).
    Rows: grid y 20.0 -> ul 18, peak row 20, rows 18..21. Columns:
      x 1.0 -> ul int(-0.5) = 0, br int(3.5) = 3: cols 0..2, peak col 2
        (not 1: the sub-cell position is lost, the patch's 4th column too);
      x 0.2 -> ul int(-1.3) = -1, br 2: cols 0..1, peak col 1;
      x -1.2 (outside the image) -> ul -2, br 1: col 0 only, the PEAK (1);
      x -2.6 -> ul -4, br int(-0.1) = 0: nothing drawn (empty slice);
      x 39.9 -> ul 38: cols 38..39, peak (col 40) clipped away;
      x 41.4 -> ul 39: col 39, the patch's first column;
      x 41.6 -> ul 40 >= w: skipped."""
    image_hw, grid_hw = (320, 320), (40, 40)
    gx = [1.0, 0.2, -1.2, -2.6, 39.9, 41.4, 41.6]
    joints = np.full((15, 2), 20.0 * 8)
    joints[: len(gx), 0] = np.array(gx) * 8
    heat = jhmdb.joint_heatmaps(joints, image_hw, grid_hw, style="crw", coords="corner")
    row_profile = {18: 4, 19: 1, 20: 0, 21: 1}  # (row - peak)^2
    col_profiles = [
        {0: 4, 1: 1, 2: 0},
        {0: 1, 1: 0},
        {0: 0},
        {},
        {38: 4, 39: 1},
        {39: 4},
        {},
    ]
    for j, cols in enumerate(col_profiles):
        expected = np.zeros(grid_hw)
        for c, dx2 in cols.items():
            for r, dy2 in row_profile.items():
                expected[r, c] = math.exp(-2.0 * (dx2 + dy2))  # 2 sigma^2 = 0.5
        np.testing.assert_allclose(heat[..., 1 + j], expected, rtol=1e-6, atol=0)
    assert heat[20, 2, 1] == 1.0 and heat[20, 3, 1] == 0.0
    assert heat[20, 0, 3] == 1.0  # a joint 9.6 px left of the image
    # Joints 7..14 all at grid (20, 20): peak 1 at (row 20, col 20).
    assert heat[20, 20, 8:].min() == 1.0
    background = heat[..., 1:].sum(-1) == 0
    np.testing.assert_array_equal(heat[..., 0], background.astype(np.float32))
    assert heat[0, 0, 0] == 1.0 and heat[20, 20, 0] == 0.0


def test_crw_non_finite_joint_is_empty_and_sigma_zero_is_one_hot():
    """A NaN / inf joint (videowalk's int() would raise) gets an all-zero
    channel; sigma <= 0 is videowalk's one-hot branch at (int(y), int(x))."""
    image_hw, stride = (240, 320), 8
    rng = np.random.default_rng(7)
    joints = _random_joints(rng, image_hw)
    joints[3] = (np.nan, 10.0)
    joints[4] = (50.0, np.inf)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        heat = _crw(joints, image_hw, stride)
    assert not heat[..., 4].any() and not heat[..., 5].any()
    # Far-away stand-ins draw nothing in the reference either.
    reference = _crw_labels(np.where(np.isfinite(joints), joints, -1e4), image_hw, 8)
    np.testing.assert_allclose(heat, reference, rtol=1e-6, atol=0)

    joints = _random_joints(rng, image_hw, margin=30.0)
    joints[0] = (-3.0, 5.0)  # grid x -0.1: int() -> 0, so drawn at column 0
    for sigma in (0.0, -1.0):
        one_hot = _crw(joints, image_hw, stride, sigma=sigma)
        np.testing.assert_array_equal(
            one_hot, _crw_labels(joints, image_hw, stride, sigma=0.0)
        )
    assert one_hot[0, 0, 1] == 1.0
    assert set(np.unique(one_hot)) <= {0.0, 1.0}


def test_gaussian_heatmaps_with_corner_coords():
    """style gaussian + coords corner: today's Gaussian (max-normalised,
    1 - max background, same image test) centred on x * w / W."""
    image_hw, grid_hw = (240, 320), (20, 20)
    rng = np.random.default_rng(11)
    joints = _random_joints(rng, image_hw, margin=3.0)
    heat = jhmdb.joint_heatmaps(joints, image_hw, grid_hw, coords="corner")
    H, W = image_hw
    ys, xs = np.mgrid[0:20, 0:20]
    for j, (x, y) in enumerate(joints):
        channel = heat[..., 1 + j]
        if not (-0.5 <= x <= W - 0.5 and -0.5 <= y <= H - 0.5):
            assert not channel.any()
            continue
        gx, gy = x * 20 / W, y * 20 / H
        expected = np.exp(-((xs - gx) ** 2 + (ys - gy) ** 2) / 0.5)
        np.testing.assert_allclose(
            channel, expected / expected.max(), rtol=1e-5, atol=1e-30
        )
    np.testing.assert_allclose(heat[..., 0], 1.0 - heat[..., 1:].max(-1), atol=1e-7)


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize(("image_hw", "stride"), CASES)
@pytest.mark.parametrize("topk", [3, 5])
def test_decode_corner_matches_process_pose_and_eval_pck_scaling(
    image_hw, stride, topk
):
    """Random non-negative maps with some all-zero joint channels: top-k
    (3: videowalk, 5: CropMAE), then eval_pck's pred / feat_res * width."""
    rng = np.random.default_rng(topk * 100 + stride)
    g = _grid(stride)
    soft = rng.random((4, *g, 16)) ** 4
    soft[0, :, :, 5] = 0.0
    soft[2, :, :, [1, 15]] = 0.0
    decoded = jhmdb.decode_joints(soft, image_hw, topk=topk, coords="corner")
    for t in range(len(soft)):
        coords = _process_pose(soft[t], topk)
        np.testing.assert_allclose(
            decoded[t], _grid_to_pixels(coords, image_hw, g[0]), rtol=1e-12
        )
    assert np.isnan(decoded[0, 4]).all() and np.isnan(decoded[2, [0, 14]]).all()


@pytest.mark.parametrize(("image_hw", "stride"), CASES)
def test_decode_of_crw_heatmaps_with_plateaus(image_hw, stride):
    """Frame 0 of the protocol: decoding the crw heatmaps themselves, whose
    equal neighbours (exp(-2) around the peak) make ties: lowest row-major
    index first in both (torch.topk leaves the order unspecified)."""
    rng = np.random.default_rng(stride + 5)
    g = _grid(stride)
    for topk in (3, 5):
        joints = _random_joints(rng, image_hw, margin=30.0)
        heat = _crw(joints, image_hw, stride)
        coords = _process_pose(_crw_labels(joints, image_hw, stride), topk)
        np.testing.assert_allclose(
            jhmdb.decode_joints(heat, image_hw, topk=topk, coords="corner"),
            _grid_to_pixels(coords, image_hw, g[0]),
            rtol=1e-6,
        )


# ------------------------------------------------------------------ metric


def test_pck_skip_matches_eval_pck():
    """Videos of two original sizes, invisible (-1) predictions scattered:
    pck(invalid="skip") x 100 is eval_pck's per-joint PCK and their mean."""
    rng = np.random.default_rng(21)
    feat_res, thresholds = 40, (0.1, 0.2, 0.3, 0.4, 0.5)
    sizes = [(240, 320), (320, 240), (240, 320)]
    grid_preds, pixel_preds, gts = [], [], []
    for T, (H, W) in zip((5, 3, 7), sizes, strict=True):
        gt = np.stack([_random_joints(rng, (H, W), margin=0.0) for _ in range(T)])
        pred = gt / np.array([W, H]) * feat_res + rng.normal(0, 1.5, gt.shape)
        pred = np.clip(pred, 0, feat_res - 1)
        pred[rng.random((T, 15)) < 0.15] = -1.0
        grid_preds.append(pred)
        pixel_preds.append(_grid_to_pixels(pred, (H, W), feat_res))
        gts.append(gt)
    result = jhmdb.pck(pixel_preds, gts, thresholds=thresholds, invalid="skip")
    reference = _eval_pck(grid_preds, gts, sizes, feat_res, thresholds)
    for a in thresholds:
        per_joint, mean = reference[a]
        np.testing.assert_allclose(
            np.array(result[f"per_joint@{a:g}"]) * 100, per_joint
        )
        assert result[f"PCK@{a:g}"] * 100 == pytest.approx(mean, rel=1e-12)
    scored = sum(len(p) - 1 for p in pixel_preds)
    invalid = sum(np.isnan(p[1:, :, 0]).sum() for p in pixel_preds)
    assert result["frames"] == scored and result["videos"] == 3
    assert result["skipped"] == invalid > 0


def test_pck_miss_and_skip_hand_made():
    """GT box x 5..40, y 5..45 (limits 3.19 / 6.38 px at 0.1 / 0.2) with
    joint 0 at the top (10, 5) and joint 1 at the bottom-right corner
    (40, 45); joint 14 is never predicted. "miss" scores the missing
    predictions wrong and keeps that box. "skip" leaves them out of their
    joint's count and out of the box:
      frame 1, joint 1 missing: x 5..25, y 5..20, diagonal 25, limits
        1.5 / 3, so joint 4, 2 px off, becomes wrong at 0.1;
      frame 2, joint 0 missing: x 5..40, y 20..45, diagonal 43.01, limits
        2.58 / 5.16, so joint 5, 3 px off, becomes wrong at 0.1."""
    gt = np.full((3, 15, 2), 15.0)
    gt[:, :, 1] = 20.0
    gt[:, 6:, 0] += np.arange(9) + 1  # x 16..24
    gt[:, 0] = (10.0, 5.0)
    gt[:, 1] = (40.0, 45.0)
    gt[:, 2] = (25.0, 20.0)
    gt[:, 3] = (5.0, 20.0)
    pred = gt.copy()
    pred[1:, 14] = np.nan
    pred[1, 1] = np.nan
    pred[1, 4] += (2.0, 0.0)
    pred[2, 0] = (3.0, np.inf)  # one non-finite coordinate is enough
    pred[2, 5] += (3.0, 0.0)

    miss = jhmdb.pck([pred], [gt])
    assert "skipped" not in miss
    expected = np.ones(15)
    expected[[0, 1]], expected[14] = 0.5, 0.0
    np.testing.assert_array_equal(miss["per_joint@0.1"], expected)
    np.testing.assert_array_equal(miss["per_joint@0.2"], expected)

    skip = jhmdb.pck([pred], [gt], invalid="skip")
    expected = np.ones(15)
    expected[14] = np.nan
    np.testing.assert_array_equal(skip["per_joint@0.2"], expected)
    expected[[4, 5]] = 0.5
    np.testing.assert_array_equal(skip["per_joint@0.1"], expected)
    assert skip["PCK@0.1"] == pytest.approx(13 / 14) and skip["PCK@0.2"] == 1.0
    assert skip["skipped"] == 4 and skip["frames"] == 2 and skip["videos"] == 1


def test_corner_mapping_is_videowalks_float_for_float():
    """x * w / W gives the same float64 as videowalk's x * 320 / W / stride
    for every quarter pixel, so truncations cannot disagree."""
    for (H, W), stride in CASES:
        g = INPUT // stride
        xs = np.arange(-64, 4 * W + 64) / 4.0
        ys = np.arange(-64, 4 * H + 64) / 4.0
        n = max(xs.size, ys.size)
        xy = np.stack([np.resize(xs, n), np.resize(ys, n)], 1)
        cells = jhmdb._pixels_to_cells(xy, (H, W), (g, g), "corner")
        np.testing.assert_array_equal(cells, _videowalk_cells(xy, (H, W), stride))


def test_pck_skip_everything_invalid_gives_nan():
    gt = np.random.default_rng(0).uniform(0, 50, (3, 15, 2))
    pred = np.full_like(gt, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = jhmdb.pck([pred], [gt], invalid="skip")
    assert math.isnan(result["PCK@0.1"]) and np.isnan(result["per_joint@0.2"]).all()
    assert result["skipped"] == 30


# ----------------------------------------------------------- whole protocols


@pytest.mark.parametrize(
    ("image_hw", "stride", "topk"), [((240, 320), 8, 3), ((240, 320), 16, 5)]
)
def test_videowalk_and_cropmae_pipelines_end_to_end(image_hw, stride, topk):
    """GT joints -> crw heatmaps (frame 0 as given, later frames noisy as a
    stand-in for propagation) -> top-k decoding -> PCK with eval_pck's rule,
    against process_pose + eval_pck on the same maps."""
    rng = np.random.default_rng(stride)
    g = _grid(stride)
    T = 6
    gt = np.stack([_random_joints(rng, image_hw, margin=0.0) for _ in range(T)])
    gt = gt + np.linspace(0, 10, T)[:, None, None]
    soft = np.stack([_crw(gt[t], image_hw, stride) for t in range(T)]).astype(
        np.float64
    )
    soft[1:] = np.clip(soft[1:] + rng.normal(0, 0.05, soft[1:].shape), 0, None)
    soft[3, :, :, 7] = 0.0  # a lost joint: -1 / NaN
    pred = jhmdb.decode_joints(soft, image_hw, topk=topk, coords="corner")
    result = jhmdb.pck([pred], [gt], invalid="skip")
    coords = np.stack([_process_pose(soft[t], topk) for t in range(T)])
    reference = _eval_pck([coords], [gt], [image_hw], g[0], (0.1, 0.2))
    for a in (0.1, 0.2):
        assert result[f"PCK@{a:g}"] * 100 == pytest.approx(reference[a][1], rel=1e-12)
    assert result["skipped"] == 1


# ------------------------------------------------------- defaults and errors


def test_defaults_are_the_siammae_protocol():
    """Calling without the new keyword arguments equals calling with the
    defaults spelt out (the siammae protocol is unchanged)."""
    rng = np.random.default_rng(3)
    image_hw, grid_hw = (240, 320), (15, 20)
    joints = _random_joints(rng, image_hw)
    joints[2] = np.nan
    np.testing.assert_array_equal(
        jhmdb.joint_heatmaps(joints, image_hw, grid_hw),
        jhmdb.joint_heatmaps(
            joints, image_hw, grid_hw, sigma=0.5, style="gaussian", coords="centre"
        ),
    )
    soft = rng.random((3, *grid_hw, 16)) - 0.2
    soft[1, ..., 4] = 0.0
    np.testing.assert_array_equal(
        jhmdb.decode_joints(soft, image_hw),
        jhmdb.decode_joints(soft, image_hw, topk=3, coords="centre"),
    )
    gt = rng.uniform(0, 100, (2, 4, 15, 2))
    pred = gt + rng.normal(0, 5, gt.shape)
    pred[0, 2, 3] = np.nan
    assert jhmdb.pck(pred, gt) == jhmdb.pck(pred, gt, invalid="miss")
    assert "skipped" not in jhmdb.pck(pred, gt)
    # Centre vs corner: half a 16-px cell minus half a pixel, NaN alike.
    centre = jhmdb.decode_joints(soft, image_hw)
    corner = jhmdb.decode_joints(soft, image_hw, coords="corner")
    np.testing.assert_array_equal(np.isnan(centre), np.isnan(corner))
    assert np.isnan(centre[1, 3]).all()
    finite = np.isfinite(centre)
    np.testing.assert_allclose((centre - corner)[finite], 7.5)


def test_protocol_argument_errors_name_the_argument():
    joints, soft = np.zeros((15, 2)), np.zeros((4, 4, 16))
    gt = np.zeros((2, 15, 2))

    def raises(message, fn, *args, **kwargs):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            fn(*args, **kwargs)

    heat = jhmdb.joint_heatmaps
    raises(
        "style must be 'gaussian' or 'crw', got 'CRW'",
        heat,
        joints,
        (8, 8),
        (4, 4),
        style="CRW",
    )
    raises(
        "style must be 'gaussian' or 'crw', got None",
        heat,
        joints,
        (8, 8),
        (4, 4),
        style=None,
    )
    raises(
        "coords must be 'centre' or 'corner', got 'center'",
        heat,
        joints,
        (8, 8),
        (4, 4),
        coords="center",
    )
    raises(
        "sigma must be > 0 for style 'gaussian', got 0",
        heat,
        joints,
        (8, 8),
        (4, 4),
        sigma=0,
    )
    raises(
        "sigma must be finite for style 'crw', got nan",
        heat,
        joints,
        (8, 8),
        (4, 4),
        sigma=float("nan"),
        style="crw",
    )
    raises(
        "sigma must be a number, got 'wide'", heat, joints, (8, 8), (4, 4), sigma="wide"
    )
    decode = jhmdb.decode_joints
    raises(
        "coords must be 'centre' or 'corner', got 'edge'",
        decode,
        soft,
        (8, 8),
        coords="edge",
    )
    for bad in (0, -2, 2.5, True, "3"):
        raises(
            f"topk must be a positive integer, got {bad!r}",
            decode,
            soft,
            (8, 8),
            topk=bad,
        )
    raises(
        "invalid must be 'miss' or 'skip', got 'drop'",
        jhmdb.pck,
        [gt],
        [gt],
        invalid="drop",
    )
    assert decode(soft, (8, 8), topk=np.int64(2)).shape == (15, 2)
