"""JHMDB pose propagation: what must hold, checked against independent facts.

Hand-made layouts and hand-computed values, a straightforward per-cell /
per-joint reimplementation of heatmaps, top-3 decoding and PCK, and the
promised errors (each naming the file and the offending values). NumPy only:
no JAX compilation.
"""

import csv
import json
import math
import re
import warnings

import numpy as np
import pytest
import scipy.io
from PIL import Image

from siammae_jax.datasets import jhmdb

# ------------------------------------------------------------------ helpers


def _write_frames(folder, frames, numbers=None):
    folder.mkdir(parents=True, exist_ok=True)
    numbers = numbers or range(1, len(frames) + 1)
    for number, frame in zip(numbers, frames, strict=True):
        image = frame if isinstance(frame, Image.Image) else Image.fromarray(frame)
        image.save(folder / f"{number:05d}.png")


def _write_video(root, cls, name, frames, pos_img):
    """One video in the official layout: PNG frames and joint_positions.mat."""
    _write_frames(root / "Rename_Images" / cls / name, frames)
    mat_dir = root / "joint_positions" / cls / name
    mat_dir.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(mat_dir / "joint_positions.mat", {"pos_img": pos_img})
    return mat_dir / "joint_positions.mat"


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def _pos_img(frames):
    """pos_img [2, 15, T], 1-based: joint j of frame t at 0-based (x, y) =
    (j + t/4, 1 + j/2)."""
    t = np.arange(frames)[None, :]
    j = np.arange(15)[:, None]
    x = 1.0 + j + 0.25 * t
    y = 2.0 + 0.5 * j + 0.0 * t
    return np.stack([x, y])


def _heatmaps_by_hand(joints, image_hw, grid_hw, sigma=0.5):
    """Per joint, per cell: a Gaussian at the half-pixel-centre grid position."""
    (H, W), (h, w) = image_hw, grid_hw
    out = np.zeros((h, w, 16))
    for j, (x, y) in enumerate(joints):
        inside = math.isfinite(x) and math.isfinite(y)
        if not (inside and -0.5 <= x <= W - 0.5 and -0.5 <= y <= H - 0.5):
            continue
        gx, gy = (x + 0.5) * w / W - 0.5, (y + 0.5) * h / H - 0.5
        for r in range(h):
            for c in range(w):
                d2 = (c - gx) ** 2 + (r - gy) ** 2
                out[r, c, 1 + j] = math.exp(-d2 / (2 * sigma**2))
        out[..., 1 + j] /= out[..., 1 + j].max()
    out[..., 0] = np.maximum(1.0 - out[..., 1:].max(-1), 0.0)
    return out


def _decode_by_hand(soft, image_hw, k=3):
    """Per joint: the k largest cells (ties: lowest row-major index), weighted."""
    soft = np.asarray(soft)
    (H, W), (h, w) = image_hw, soft.shape[:2]
    out = np.full((15, 2), np.nan)
    for j in range(15):
        cells = [
            (float(soft[r, c, 1 + j]), r * w + c, c, r)
            for r in range(h)
            for c in range(w)
        ]
        top = sorted(cells, key=lambda cell: (-cell[0], cell[1]))[:k]
        weights = [max(v, 0.0) for v, *_ in top]
        total = sum(weights)
        if total > 0:
            gx = sum(wt * c for wt, (_, _, c, _) in zip(weights, top, strict=True))
            gy = sum(wt * r for wt, (_, _, _, r) in zip(weights, top, strict=True))
            gx, gy = gx / total, gy / total
            out[j] = ((gx + 0.5) * W / w - 0.5, (gy + 0.5) * H / h - 0.5)
    return out


def _box_joints():
    """15 GT joints in a 30 x 40 box (diagonal 50): limits 3 px and 6 px."""
    joints = np.full((15, 2), 15.0)
    joints[:, 1] = 20.0
    joints[0] = (10.0, 5.0)
    joints[1] = (40.0, 45.0)
    joints[6:] += np.arange(9)[:, None]
    return joints


# ------------------------------------------------------------------ reading


def test_read_split_skips_blank_lines_and_unused_videos(tmp_path):
    """Blank lines anywhere are skipped; '0' (unused, HMDB style) and '1' lines
    are read but not returned."""
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "pour_test_split1.txt").write_text(
        "a.avi 2\n\n   \nb.avi 0\nc.avi 2\nd.avi 1\n\ne.avi 2\n"
    )
    assert jhmdb.read_split(tmp_path) == [("pour", "a"), ("pour", "c"), ("pour", "e")]
    (splits / "pour_test_split1.txt").write_text("a.avi 2\nb.avi 3\n")
    with pytest.raises(ValueError, match=r"pour_test_split1\.txt:2.*'b\.avi 3'"):
        jhmdb.read_split(tmp_path)


def test_load_video_hand_made(tmp_path):
    """Frames in file order; pos_img [2, 15, T] 1-based (x, y) -> [T, 15, 2]
    0-based; the class and name are kept."""
    frames = [_rgb(6, 8, seed) for seed in range(3)]
    _write_video(tmp_path, "catch", "v1", frames, _pos_img(3))
    video = jhmdb.load_video(tmp_path, "catch", "v1")
    assert (video.name, video.cls) == ("v1", "catch")
    assert video.frames.dtype == np.uint8 and video.frames.shape == (3, 6, 8, 3)
    np.testing.assert_array_equal(video.frames, np.stack(frames))
    assert video.joints.dtype == np.float64 and video.joints.shape == (3, 15, 2)
    assert tuple(video.joints[2, 4]) == (4.5, 3.0)  # x = 4 + 2/4, y = 1 + 4/2
    assert tuple(video.joints[0, 0]) == (0.0, 1.0)
    one = _write_video(tmp_path, "catch", "single", frames[:1], _pos_img(2)[..., :1])
    assert one.is_file()
    video = jhmdb.load_video(tmp_path, "catch", "single")
    assert video.frames.shape == (1, 6, 8, 3) and video.joints.shape == (1, 15, 2)


def test_pos_img_float32_read_as_float64(tmp_path):
    """A single-precision pos_img still gives float64 joints, exactly pos_img - 1."""
    pos_img = (_pos_img(2) + 0.1).astype(np.float32)
    _write_video(tmp_path, "catch", "v1", [_rgb(6, 8)] * 2, pos_img)
    joints = jhmdb.load_video(tmp_path, "catch", "v1").joints
    assert joints.dtype == np.float64
    expected = pos_img.astype(np.float64).transpose(2, 1, 0) - 1.0
    np.testing.assert_array_equal(joints, expected)


def test_frames_of_other_png_modes_read_as_rgb(tmp_path):
    """Grayscale, RGBA and palette PNGs all come back as [H, W, 3] RGB."""
    gray = Image.new("L", (8, 6), 77)
    rgba = Image.new("RGBA", (8, 6), (10, 20, 30, 128))
    palette = Image.new("P", (8, 6), 3)
    palette.putpalette([0, 0, 0] * 3 + [200, 100, 50] + [0, 0, 0] * 252)
    _write_video(tmp_path, "catch", "v1", [gray, rgba, palette], _pos_img(3))
    frames = jhmdb.load_video(tmp_path, "catch", "v1").frames
    assert frames.shape == (3, 6, 8, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[0], np.full((6, 8, 3), 77))
    np.testing.assert_array_equal(frames[1], np.broadcast_to([10, 20, 30], (6, 8, 3)))
    np.testing.assert_array_equal(frames[2], np.broadcast_to([200, 100, 50], (6, 8, 3)))


def test_frame_folder_errors_name_the_folder_or_frame(tmp_path):
    folder = tmp_path / "Rename_Images" / "catch" / "v1"
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"JHMDB frame folder not found: {folder}")
    ):
        jhmdb.load_video(tmp_path, "catch", "v1")
    folder.mkdir(parents=True)
    Image.fromarray(_rgb(6, 8)).save(folder / "thumbnail.png")  # not a frame
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"no PNG frames (00001.png...) in {folder}")
    ):
        jhmdb.load_video(tmp_path, "catch", "v1")
    (folder / "thumbnail.png").unlink()
    # (present frames, first missing one): no 00001, a gap just before the
    # last, a gap between the second and the third.
    for present, missing in [([2, 3], 1), ([1, 2, 3, 5], 4), ([1, 2, 4], 3)]:
        for old in folder.glob("*.png"):
            old.unlink()
        _write_frames(folder, [_rgb(6, 8)] * len(present), present)
        message = re.escape(f"missing JHMDB frame {folder / f'{missing:05d}.png'}")
        with pytest.raises(FileNotFoundError, match=message):
            jhmdb.load_video(tmp_path, "catch", "v1")


def test_frame_size_error_names_both_sizes(tmp_path):
    folder = tmp_path / "Rename_Images" / "catch" / "v1"
    _write_frames(folder, [_rgb(6, 8), _rgb(7, 8), _rgb(6, 8)])
    message = (
        f"{folder / '00002.png'}: frame size (7, 8) differs from 00001.png's (6, 8)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        jhmdb.load_video(tmp_path, "catch", "v1")


def test_pos_img_errors_name_the_file_and_values(tmp_path):
    mat = _write_video(tmp_path, "catch", "v1", [_rgb(6, 8)] * 3, _pos_img(3))
    scipy.io.savemat(mat, {"joints": _pos_img(3), "other": 1.0})
    message = f"{mat}: no 'pos_img' variable (has ['joints', 'other'])"
    with pytest.raises(KeyError, match=re.escape(message)):
        jhmdb.load_video(tmp_path, "catch", "v1")
    for bad in (_pos_img(3)[:, :14], _pos_img(3).transpose(1, 0, 2)):
        scipy.io.savemat(mat, {"pos_img": bad})
        message = f"{mat}: pos_img must be [2, 15, T], got {bad.shape}"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            jhmdb.load_video(tmp_path, "catch", "v1")


# ------------------------------------------------------ encoding / decoding


def test_grid_mapping_is_float64_whatever_the_input():
    """float32 coordinates map exactly like the same values in float64."""
    xy = np.random.default_rng(0).uniform(0, 300, (50, 2)).astype(np.float32)
    for fn in (jhmdb.to_grid, jhmdb.from_grid):
        out = fn(xy, (240, 320), (15, 20))
        assert out.dtype == np.float64
        np.testing.assert_array_equal(
            out, fn(xy.astype(np.float64), (240, 320), (15, 20))
        )
    # Hand values: 16-px cells in x, 16-px cells in y; pixel 7.5 is cell 0's centre.
    np.testing.assert_allclose(
        jhmdb.to_grid([[7.5, 23.5]], (240, 320), (15, 20)), [[0, 1]]
    )
    np.testing.assert_allclose(
        jhmdb.from_grid([[0, 1]], (240, 320), (15, 20)), [[7.5, 23.5]]
    )


def test_heatmaps_image_edges_and_independent_implementation():
    """Joints on [-0.5, W - 0.5] x [-0.5, H - 0.5] (edges included) get a
    channel with peak 1; joints just outside or not finite get zeros."""
    image_hw, grid_hw = (30, 40), (6, 8)  # 5-px cells, non-square
    joints = np.array(
        [
            (-0.5, 10.0),  # 0: left edge of the image (inside)
            (39.5, 10.0),  # 1: right edge, x = W - 0.5 (inside)
            (10.0, -0.5),  # 2: top edge (inside)
            (10.0, 29.5),  # 3: bottom edge, y = H - 0.5 (inside)
            (39.0, 29.0),  # 4: last pixel centre (inside)
            (0.0, 0.0),  # 5: first pixel centre (inside)
            (-1.0, 10.0),  # 6: outside (x < -0.5)
            (40.0, 10.0),  # 7: outside (x > W - 0.5)
            (10.0, -0.6),  # 8: outside
            (10.0, 30.0),  # 9: outside
            (np.nan, 5.0),  # 10: not finite
            (np.inf, 5.0),  # 11: not finite
            (20.0, 15.0),  # 12
            (7.3, 21.9),  # 13
            (33.2, 4.4),  # 14
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        heat = jhmdb.joint_heatmaps(joints, image_hw, grid_hw)
    assert heat.shape == (6, 8, 16) and heat.dtype == np.float32
    inside = [0, 1, 2, 3, 4, 5, 12, 13, 14]
    outside = [6, 7, 8, 9, 10, 11]
    np.testing.assert_array_equal(heat[..., [1 + j for j in inside]].max((0, 1)), 1.0)
    assert not heat[..., [1 + j for j in outside]].any()
    np.testing.assert_allclose(
        heat, _heatmaps_by_hand(joints, image_hw, grid_hw), rtol=1e-6, atol=1e-7
    )
    # Joint 1 at grid (7.5, 1.6): peak at cell (x 7, y 2), d^2 = 0.41; cell
    # (7, 1) has d^2 = 0.61, so exp(-(0.61 - 0.41) / (2 * 0.25)) of the peak.
    assert heat[2, 7, 2] == 1.0
    assert heat[1, 7, 2] == pytest.approx(math.exp(-0.4), rel=1e-6)


def test_heatmaps_error_names_the_shape():
    with pytest.raises(
        ValueError, match=re.escape("joints_xy must be [15, 2], got (14, 2)")
    ):
        jhmdb.joint_heatmaps(np.zeros((14, 2)), (30, 40), (6, 8))


def test_decode_top3_hand_made():
    """4 x 6 grid of 10-px cells; hand-computed weighted averages."""
    image_hw = (40, 60)
    soft = np.zeros((4, 6, 16))
    # Joint 0: cells (x, y) (1, 1) 0.5, (2, 1) 0.3, (1, 2) 0.2 and a 4th, (5, 3) 0.1,
    # which top-3 leaves out: grid (1.3, 1.2) -> pixels (17.5, 16.5).
    soft[1, 1, 1], soft[1, 2, 1], soft[2, 1, 1], soft[3, 5, 1] = 0.5, 0.3, 0.2, 0.1
    # Joint 1: one positive cell (3, 0) among negatives, which count as 0.
    soft[..., 2] = -0.1
    soft[0, 3, 2] = 0.6
    # Joint 2: all negative -> NaN; joint 3: all zero -> NaN.
    soft[..., 3] = -0.5
    # Joint 4: two equal cells and a third smaller one.
    soft[0, 0, 5], soft[3, 5, 5], soft[2, 2, 5] = 1.0, 1.0, 0.5
    soft[..., 0] = 1.0 - soft[..., 1:].max(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all-zero channels decode to NaN silently
        decoded = jhmdb.decode_joints(soft, image_hw)
    assert decoded.dtype == np.float64 and decoded.shape == (15, 2)
    np.testing.assert_allclose(decoded[0], (17.5, 16.5))
    np.testing.assert_allclose(decoded[1], (34.5, 4.5))
    assert np.isnan(decoded[2:4]).all() and np.isnan(decoded[5:]).all()
    # Joint 4: grid ((0 + 5 + 1) / 2.5, (0 + 3 + 1) / 2.5) = (2.4, 1.6).
    np.testing.assert_allclose(decoded[4], (28.5, 20.5))
    np.testing.assert_allclose(
        jhmdb.decode_joints(soft, image_hw, topk=1)[0], (14.5, 14.5)
    )
    np.testing.assert_allclose(decoded, _decode_by_hand(soft, image_hw), equal_nan=True)


def test_decode_ties_lowest_index_first_against_independent_implementation():
    """Plateaus of equal values: the lowest row-major cells win, as promised."""
    rng = np.random.default_rng(3)
    image_hw = (64, 48)
    for _ in range(4):
        soft = rng.integers(0, 3, (8, 8, 16)).astype(np.float64) * 0.5
        np.testing.assert_array_equal(
            jhmdb.decode_joints(soft, image_hw), _decode_by_hand(soft, image_hw)
        )


def test_decode_any_input_dtype_in_float64():
    """uint8 maps (e.g. quantised heatmaps) and float32 maps decode like the
    same values in float64, against the independent implementation."""
    rng = np.random.default_rng(4)
    image_hw = (50, 70)
    quantised = rng.integers(0, 256, (5, 7, 16)).astype(np.uint8)
    np.testing.assert_array_equal(
        jhmdb.decode_joints(quantised, image_hw),
        jhmdb.decode_joints(quantised.astype(np.float64), image_hw),
    )
    np.testing.assert_allclose(
        jhmdb.decode_joints(quantised, image_hw), _decode_by_hand(quantised, image_hw)
    )
    single = rng.uniform(0, 1, (3, 5, 7, 16)).astype(np.float32)
    decoded = jhmdb.decode_joints(single, image_hw)
    assert decoded.dtype == np.float64 and decoded.shape == (3, 15, 2)
    for frame, result in zip(single, decoded, strict=True):
        np.testing.assert_allclose(
            result, _decode_by_hand(frame.astype(np.float64), image_hw), rtol=1e-13
        )


def test_decode_errors_name_the_shape():
    for shape in [(4, 4, 15), (5, 16), (2, 4, 4, 17)]:
        message = f"soft must be [..., h, w, 16], got {shape}"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            jhmdb.decode_joints(np.zeros(shape), (32, 32))


# ------------------------------------------------------------------- metric


def test_pck_inclusive_at_zero_threshold_and_degenerate_box():
    """distance <= limit: exact predictions are correct at a = 0, and also when
    all GT joints of a frame coincide (box diagonal 0)."""
    gt = np.stack([_box_joints()] * 3)
    gt[2] = (7.0, 9.0)  # frame 2: every joint at one point
    pred = gt.copy()
    pred[1, 3] += (0.5, 0.0)
    result = jhmdb.pck([pred], [gt], thresholds=(0.0, 0.1))
    expected = np.ones(15)
    expected[3] = 0.5  # frame 1: 0.5 px > 0 (a = 0)
    np.testing.assert_array_equal(result["per_joint@0"], expected)
    np.testing.assert_array_equal(result["per_joint@0.1"], np.ones(15))
    assert result["PCK@0"] == pytest.approx(29 / 30) and result["PCK@0.1"] == 1.0


def test_pck_of_unsigned_integer_coordinates():
    """Integer pixel coordinates (uint16) score like the same values in float:
    a prediction left of / above its GT is 5 px off, not 65531."""
    gt = np.stack([_box_joints()] * 2).astype(np.uint16)
    pred = gt.copy()
    pred[1, 0] -= np.array(
        [3, 4], np.uint16
    )  # 5 px: wrong at 0.1 (3), right at 0.2 (6)
    pred[1, 7] -= np.array([0, 7], np.uint16)  # 7 px: wrong at both
    result = jhmdb.pck([pred], [gt])
    as_float = jhmdb.pck([pred.astype(np.float64)], [gt.astype(np.float64)])
    assert result == as_float
    expected_01, expected_02 = np.ones(15), np.ones(15)
    expected_01[[0, 7]] = 0.0
    expected_02[7] = 0.0
    np.testing.assert_array_equal(result["per_joint@0.1"], expected_01)
    np.testing.assert_array_equal(result["per_joint@0.2"], expected_02)


def test_pck_errors_name_the_input_and_values():
    ok3, ok4 = np.zeros((3, 15, 2)), np.zeros((4, 15, 2))

    def raises(message, pred, gt):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            jhmdb.pck(pred, gt)

    bad = np.zeros((3, 14, 2))
    raises("pred[0] must be [T, 15, 2], got (3, 14, 2)", [bad], [bad])
    raises("pred[1] must be [T, 15, 2], got (3, 15)", [ok3, ok3[..., 0]], [ok3, ok3])
    raises("gt[1] must be [T, 15, 2], got (3, 15)", [ok3, ok3], [ok3, ok3[..., 0]])
    raises("gt[0] must be [T, 15, 2], got (3, 14, 2)", [ok3], [bad])
    raises("2 predicted videos but 1 ground truths", [ok3, ok3], [ok3])
    raises("video 1: pred (3, 15, 2) but gt (4, 15, 2)", [ok3, ok3], [ok3, ok4])
    no_frames = "no frames to score (every video has only frame 0)"
    raises(no_frames, [], [])
    raises(no_frames, [ok3[:1]], [ok3[:1]])


# ------------------------------------------------------------------ writing


def test_write_predictions_rerun_overwrites_and_float32_saved_as_double(tmp_path):
    """Writing a video again replaces its files; pos_img is MATLAB double like
    the official annotations, exactly pred + 1 even for float32 predictions."""
    rng = np.random.default_rng(5)
    first = rng.uniform(0, 40, (3, 15, 2))
    jhmdb.write_predictions(tmp_path, "catch", "v1", first)
    second = rng.uniform(0, 40, (2, 15, 2)).astype(np.float32)
    mat_path, json_path = jhmdb.write_predictions(tmp_path, "catch", "v1", second)
    pos_img = scipy.io.loadmat(mat_path)["pos_img"]
    assert pos_img.dtype == np.float64 and pos_img.shape == (2, 15, 2)
    np.testing.assert_array_equal(
        pos_img, (second.astype(np.float64) + 1.0).transpose(2, 1, 0)
    )
    record = json.loads(json_path.read_text())
    np.testing.assert_array_equal(record["joints"], second.astype(np.float64))


def test_write_predictions_rejects_wrong_shape_before_writing(tmp_path):
    message = "pred must be [T, 15, 2], got (4, 14, 2)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        jhmdb.write_predictions(tmp_path, "catch", "v1", np.zeros((4, 14, 2)))
    assert not (tmp_path / "catch").exists()


def test_write_summary_nested_folder_and_numpy_scalars(tmp_path):
    gt = np.stack([_box_joints()] * 2)
    pred = gt.copy()
    pred[1, 2] += (4.0, 0.0)  # 4 px: wrong at 0.1 (3), right at 0.2 (6)
    results = jhmdb.pck([pred], [gt])
    results.update(
        seconds=np.float64(1.5),
        quarter=np.float32(0.25),
        count=np.int64(3),
        bad=np.float64("nan"),
    )
    out = tmp_path / "runs" / "jhmdb"  # neither folder exists yet
    json_path, csv_path = jhmdb.write_summary(out, results)
    summary = json.loads(json_path.read_text())
    assert summary["seconds"] == 1.5 and summary["quarter"] == 0.25
    assert summary["count"] == 3 and isinstance(summary["count"], int)
    assert summary["bad"] is None
    assert summary["PCK@0.1"] == pytest.approx(14 / 15) and summary["PCK@0.2"] == 1.0
    rows = list(csv.reader(csv_path.read_text().splitlines()))
    assert rows[0] == ["joint", "PCK@0.1", "PCK@0.2"] and len(rows) == 17
    assert rows[3] == ["2", "0.0", "1.0"] and rows[-1][0] == "mean"
