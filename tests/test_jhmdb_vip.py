"""JHMDB and VIP evaluation helpers: readers, heatmaps, PCK, mIoU and writers."""

import csv
import json
import re
import shutil
import warnings

import numpy as np
import pytest
import scipy.io
from PIL import Image

from siammae_jax.data import synthetic
from siammae_jax.datasets import jhmdb, vip

SIZE = (32, 48)  # (H, W) of the synthetic set
FRAMES = 5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A synthetic set of 2 videos x 5 frames; tests that damage it copy it first."""
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.write_dataset(out, videos=2, frames=FRAMES, size=SIZE, progress=False)
    return out


def _copy(dataset, tmp_path, name):
    shutil.copytree(dataset / name, tmp_path / name)
    return tmp_path / name


# ---------------------------------------------------------------------- PCK


def _base_joints(scale):
    """15 joints inside a 30x40 box (scaled): diagonal 50 x scale."""
    joints = np.full((15, 2), 15.0)
    joints[:, 1] = 20.0
    joints[0] = (0.0, 0.0)
    joints[1] = (30.0, 40.0)
    joints[6:] += np.arange(9)[:, None]
    return joints * scale


def _pck_case():
    """2 videos x 3 frames; GT diagonals 50 (video A) and 100 (video B)."""
    gt = [np.stack([_base_joints(1.0)] * 3), np.stack([_base_joints(2.0)] * 3)]
    pred = [g.copy() for g in gt]
    for p in pred:
        p[0] += 100.0  # frame 0 is given: its errors must not count
    pred[0][1, 2] += (3.0, 4.0)  # 5 px: > 3 (a=0.1), <= 6 (a=0.2)
    pred[0][1, 3] += (6.0, 0.0)  # exactly 6 px = threshold at a=0.2 (inclusive)
    pred[1][1, 2] += (0.0, 6.0)  # exactly 6 px = threshold at a=0.1 for diag 100
    pred[1][1, 4] += (12.5, 0.0)  # > 12 (a=0.2)
    pred[1][2, 5] = np.nan  # a missing prediction is wrong
    return pred, gt


def _pck_by_hand(pred, gt, a):
    """Independent loop: per joint, count correct (video, frame >= 1) pairs."""
    correct, total = np.zeros(15), 0
    for p_video, g_video in zip(pred, gt, strict=True):
        for p, g in zip(p_video[1:], g_video[1:], strict=True):
            width, height = g[:, 0].max() - g[:, 0].min(), g[:, 1].max() - g[:, 1].min()
            limit = a * 0.6 * (width**2 + height**2) ** 0.5
            for j in range(15):
                dist = ((p[j, 0] - g[j, 0]) ** 2 + (p[j, 1] - g[j, 1]) ** 2) ** 0.5
                correct[j] += bool(dist <= limit + 1e-9)
            total += 1
    return correct / total


def test_pck_hand_made_case():
    pred, gt = _pck_case()
    result = jhmdb.pck(pred, gt)
    expected_01 = np.ones(15)
    expected_01[[2, 3, 4, 5]] = 0.75
    expected_02 = np.ones(15)
    expected_02[[4, 5]] = 0.75
    assert result["PCK@0.1"] == pytest.approx(14 / 15)
    assert result["PCK@0.2"] == pytest.approx(29 / 30)
    np.testing.assert_allclose(result["per_joint@0.1"], expected_01)
    np.testing.assert_allclose(result["per_joint@0.2"], expected_02)
    for a in (0.1, 0.2):
        np.testing.assert_allclose(result[f"per_joint@{a}"], _pck_by_hand(pred, gt, a))
    assert result["frames"] == 4 and result["videos"] == 2
    stacked = jhmdb.pck(np.stack(pred), np.stack(gt), thresholds=(0.1,))
    assert stacked["PCK@0.1"] == pytest.approx(14 / 15) and "PCK@0.2" not in stacked


def test_pck_videos_of_different_lengths_and_errors():
    pred, gt = _pck_case()
    pred.append(gt[0][:2] + (1.0, 0.0))  # one more scored frame, 1 px off
    gt.append(gt[0][:2])
    result = jhmdb.pck(pred, gt)
    assert result["frames"] == 5
    np.testing.assert_allclose(result["per_joint@0.1"], _pck_by_hand(pred, gt, 0.1))
    with pytest.raises(ValueError, match="pred"):
        jhmdb.pck([np.zeros((3, 14, 2))], [np.zeros((3, 15, 2))])
    with pytest.raises(ValueError, match="no frames"):
        jhmdb.pck([np.zeros((1, 15, 2))], [np.zeros((1, 15, 2))])


def test_pck_normalised_by_ground_truth_box():
    """The threshold scales with the GT joints' box, not the predicted one.

    GT box 30 x 40 (diagonal 50): limits 3 px (a = 0.1) and 6 px (a = 0.2).
    Joint 0 is predicted 200 px above its GT (far outside the GT box) and
    joint 6 10 px to the right, so both are wrong: PCK = 13/15. Normalised by
    the predicted joints' box instead (30 x 240, diagonal 241.9, limits 14.5
    and 29 px), joint 6 would count as correct (14/15).
    """
    gt = np.stack([_base_joints(1.0)] * 2)
    pred = gt.copy()
    pred[1, 0] = (0.0, -200.0)
    pred[1, 6] += (10.0, 0.0)
    result = jhmdb.pck([pred], [gt])
    assert result["frames"] == 1
    assert result["PCK@0.1"] == pytest.approx(13 / 15)
    assert result["PCK@0.2"] == pytest.approx(13 / 15)
    expected = np.ones(15)
    expected[[0, 6]] = 0.0
    np.testing.assert_array_equal(result["per_joint@0.2"], expected)
    np.testing.assert_allclose(result["per_joint@0.2"], _pck_by_hand([pred], [gt], 0.2))


# ----------------------------------------------------------------- heatmaps


@pytest.mark.parametrize(
    "image_hw, grid_hw",
    [((32, 48), (8, 12)), ((320, 320), (20, 20)), ((30, 45), (7, 9))],
)
def test_heatmap_round_trip(image_hw, grid_hw):
    rng = np.random.default_rng(0)
    cell = max(image_hw[0] / grid_hw[0], image_hw[1] / grid_hw[1])
    for _ in range(20):
        low, high = 1.5 * cell, np.array([image_hw[1], image_hw[0]]) - 1.5 * cell
        joints = rng.uniform(low, high, (15, 2))
        heat = jhmdb.joint_heatmaps(joints, image_hw, grid_hw)
        assert heat.shape == (*grid_hw, 16) and heat.dtype == np.float32
        np.testing.assert_allclose(heat[..., 1:].max((0, 1)), 1.0, rtol=1e-6)
        decoded = jhmdb.decode_joints(heat, image_hw)
        error = np.hypot(*(decoded - joints).T)
        assert error.max() < 0.5 * cell, error.max() / cell
    batch = np.stack([heat, heat])  # leading dimensions decode independently
    np.testing.assert_allclose(jhmdb.decode_joints(batch, image_hw), [decoded] * 2)


def test_heatmap_grid_mapping_and_background():
    joints = np.zeros((15, 2))
    joints[:] = (9.5, 5.5)  # grid cell (x, y) = (2, 1) of a 4-px grid
    joints[1] = (29.5, 13.5)  # grid cell (7, 3)
    joints[2] = (-3.0, 4.0)  # outside the image (x < -0.5)
    joints[3] = (10.0, 32.0)  # outside (y > H - 0.5 = 31.5)
    heat = jhmdb.joint_heatmaps(joints, (32, 48), (8, 12))
    assert heat[1, 2, 1] == 1.0 and heat[3, 7, 2] == 1.0
    assert heat[1, 2, jhmdb.BACKGROUND] == 0.0 and heat[3, 7, 0] == 0.0
    # A neighbouring cell of a sigma-0.5 Gaussian: exp(-1 / (2 * 0.25)).
    assert heat[1, 3, 1] == pytest.approx(np.exp(-2.0))
    assert heat[1, 3, 0] == pytest.approx(1 - np.exp(-2.0))
    assert heat[7, 11, 0] == pytest.approx(1.0)  # far from every joint
    assert not heat[..., 3].any() and not heat[..., 4].any()
    assert np.all(heat[..., 0] >= 0) and np.all(heat[..., 0] <= 1)
    decoded = jhmdb.decode_joints(heat, (32, 48))
    assert np.isnan(decoded[2:4]).all()
    np.testing.assert_allclose(decoded[0], (9.5, 5.5), atol=0.6)
    edges = jhmdb.to_grid([[-0.5, -0.5], [47.5, 31.5]], (32, 48), (8, 12))
    np.testing.assert_allclose(edges, [[-0.5, -0.5], [11.5, 7.5]])
    back = jhmdb.from_grid(edges, (32, 48), (8, 12))
    np.testing.assert_allclose(back, [[-0.5, -0.5], [47.5, 31.5]])


# ------------------------------------------------------------------- JHMDB


def test_jhmdb_readers_on_synthetic_set(dataset):
    root = dataset / "JHMDB"
    videos = jhmdb.read_split(root)
    assert sorted(name for _, name in videos) == ["synth_0000", "synth_0001"]
    assert videos == sorted(videos)
    for index, (cls, name) in enumerate(sorted(videos, key=lambda v: v[1])):
        video = jhmdb.load_video(root, cls, name)
        truth = synthetic.make_video(0, index, FRAMES, SIZE)
        assert cls == truth.kinds[truth.person - 1] and video.name == name
        assert video.frames.shape == (FRAMES, *SIZE, 3)
        assert video.frames.dtype == np.uint8
        np.testing.assert_array_equal(video.frames, truth.frames)
        assert video.joints.shape == (FRAMES, 15, 2)
        np.testing.assert_allclose(video.joints, truth.keypoints, atol=1e-4)


def test_jhmdb_read_split_errors_and_train_lines(tmp_path):
    with pytest.raises(FileNotFoundError, match="splits"):
        jhmdb.read_split(tmp_path)
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("b.avi 2\na.avi 1\nc.avi 2\n")
    (splits / "catch_test_split1.txt").write_text("z.avi 2\n\n")
    assert jhmdb.read_split(tmp_path) == [
        ("brush_hair", "b"),
        ("brush_hair", "c"),
        ("catch", "z"),
    ]
    with pytest.raises(FileNotFoundError, match="test_split2"):
        jhmdb.read_split(tmp_path, split=2)
    (splits / "catch_test_split1.txt").write_text("z.avi\n")
    with pytest.raises(ValueError, match=r"catch_test_split1\.txt:1"):
        jhmdb.read_split(tmp_path)


def test_jhmdb_load_errors_name_the_file(dataset, tmp_path):
    root = _copy(dataset, tmp_path, "JHMDB")
    cls, name = jhmdb.read_split(root)[0]
    frames = root / "Rename_Images" / cls / name
    mat = root / "joint_positions" / cls / name / "joint_positions.mat"
    pos_img = scipy.io.loadmat(mat)["pos_img"]

    scipy.io.savemat(mat, {"pos_img": pos_img[:, :, :4]})
    with pytest.raises(ValueError, match=f"{mat}.*4 frames.*5 frames"):
        jhmdb.load_video(root, cls, name)
    scipy.io.savemat(mat, {"other": pos_img})
    with pytest.raises(KeyError, match="joint_positions.mat.*pos_img"):
        jhmdb.load_video(root, cls, name)
    mat.unlink()
    with pytest.raises(FileNotFoundError, match="joint_positions.mat"):
        jhmdb.load_video(root, cls, name)
    scipy.io.savemat(mat, {"pos_img": pos_img})

    Image.new("RGB", (SIZE[1], SIZE[0] + 2)).save(frames / "00004.png")
    with pytest.raises(ValueError, match="00004.png"):
        jhmdb.load_video(root, cls, name)
    (frames / "00003.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"{frames / '00003.png'}"):
        jhmdb.load_video(root, cls, name)


def test_jhmdb_writers_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    pred = rng.uniform(0, 40, (4, 15, 2))
    pred[2, 3] = np.nan
    mat_path, json_path = jhmdb.write_predictions(tmp_path, "catch", "v1", pred)
    assert mat_path == tmp_path / "catch" / "v1" / "joint_positions.mat"
    pos_img = scipy.io.loadmat(mat_path)["pos_img"]
    assert pos_img.shape == (2, 15, 4)
    np.testing.assert_array_equal(pos_img, (pred + 1.0).transpose(2, 1, 0))
    np.testing.assert_allclose(pos_img.transpose(2, 1, 0) - 1.0, pred, atol=1e-12)
    record = json.loads(json_path.read_text())
    assert record["class"] == "catch" and record["video"] == "v1"
    assert record["joints"][2][3] == [None, None]
    np.testing.assert_allclose(record["joints"][0], pred[0])

    pred_list, gt_list = _pck_case()
    results = jhmdb.pck(pred_list, gt_list)
    summary_json, summary_csv = jhmdb.write_summary(tmp_path, results)
    assert json.loads(summary_json.read_text())["PCK@0.1"] == pytest.approx(14 / 15)
    rows = list(csv.reader(summary_csv.read_text().splitlines()))
    assert rows[0] == ["joint", "PCK@0.1", "PCK@0.2"]
    assert rows[3] == ["2", "0.75", "1.0"] and rows[-1][0] == "mean"
    assert float(rows[-1][2]) == pytest.approx(29 / 30)


# --------------------------------------------------------------------- VIP


def _miou_by_hand(frames, num_classes):
    """Pools (pred, gt) pixels over all frames, then IoU per class by masks."""
    pred = np.concatenate([p.ravel() for p, _ in frames])
    gt = np.concatenate([g.ravel() for _, g in frames])
    pred, gt = pred[gt != 255], gt[gt != 255]
    ious = []
    for c in range(num_classes):
        union = np.sum((pred == c) | (gt == c))
        if union:
            ious.append(np.sum((pred == c) & (gt == c)) / union)
    return sum(ious) / len(ious)


def test_confusion_matrix_hand_made_case():
    # Class 2 is absent from GT and from the kept predictions (its one
    # predicted pixel has void GT); IoU 0 = 2/4 = 0.5, IoU 1 = 3/5 = 0.6.
    frames = [
        (np.array([[0, 1, 1, 1]]), np.array([[0, 0, 1, 1]])),
        (np.array([[0, 0, 1, 2]]), np.array([[0, 1, 1, 255]])),
    ]
    matrix = vip.ConfusionMatrix(num_classes=3)
    for pred, gt in frames:
        matrix.update(pred, gt)
    np.testing.assert_array_equal(matrix.matrix, [[2, 1, 0], [1, 3, 0], [0, 0, 0]])
    iou = matrix.per_class_iou()
    np.testing.assert_allclose(iou[:2], [0.5, 0.6])
    assert np.isnan(iou[2])
    assert matrix.miou() == pytest.approx(0.55)  # pooled, not per-frame (0.5417)
    assert matrix.miou() == pytest.approx(_miou_by_hand(frames, 3))
    assert np.isnan(vip.ConfusionMatrix().miou())
    with pytest.raises(ValueError, match="pred values"):
        matrix.update(np.array([[3]]), np.array([[0]]))
    with pytest.raises(ValueError, match="shape"):
        matrix.update(np.zeros((2, 2)), np.zeros((2, 3)))


def test_summary_pools_two_frames_hand_made():
    """summary()["mIoU"] pools frames: 7/12, not the per-frame mean 5/8.

    Frame 1 predicts everything as class 0, frame 2 is perfect. Pooled:
    IoU 0 = 4/6, IoU 1 = 2/4 -> 7/12. Per frame: (1/4 + 1) / 2 = 5/8.
    """
    gt = np.array([[0, 0, 1, 1]])
    matrix = vip.ConfusionMatrix(num_classes=2)
    matrix.update(np.zeros_like(gt), gt)
    matrix.update(gt, gt)
    summary = matrix.summary()
    assert summary["mIoU"] == pytest.approx(7 / 12)
    np.testing.assert_allclose(summary["per_class_IoU"], [4 / 6, 2 / 4])
    assert summary["pixels"] == 8


def test_confusion_matrix_random_against_masks():
    rng = np.random.default_rng(2)
    frames = []
    matrix = vip.ConfusionMatrix()
    for _ in range(3):
        gt = rng.integers(0, 12, (9, 7))
        gt[0, :3] = 255
        pred = np.where(rng.random((9, 7)) < 0.6, gt % 20, rng.integers(0, 15, (9, 7)))
        matrix.update(pred, gt)
        frames.append((pred, gt))
    assert matrix.miou() == pytest.approx(_miou_by_hand(frames, 20))
    assert matrix.summary()["pixels"] == 3 * (9 * 7 - 3)


def test_onehot():
    labels = np.array([[0, 19], [255, 3]], np.uint8)
    hot = vip.onehot(labels)
    assert hot.shape == (2, 2, 20) and hot.dtype == np.float32
    np.testing.assert_array_equal(hot.sum(-1), 1.0)
    assert hot[0, 1, 19] == 1 and hot[1, 1, 3] == 1 and hot[1, 0, 0] == 1
    with pytest.raises(ValueError, match="0..19"):
        vip.onehot(np.array([[20]]))


def test_vip_readers_on_synthetic_set(dataset):
    root = dataset / "VIP"
    names = vip.read_list(root)
    assert names == ["synth_0000", "synth_0001"]
    for index, name in enumerate(names):
        video = vip.load_video(root, name)
        truth = synthetic.make_video(0, index, FRAMES, SIZE)
        assert video.name == name
        assert video.frame_names == [f"{t:05d}" for t in range(FRAMES)]
        assert video.frames.shape == (FRAMES, *SIZE, 3)
        assert video.frames.dtype == np.uint8 and video.labels.dtype == np.uint8
        np.testing.assert_array_equal(video.labels, truth.parts)
        # JPEG frames: close to the rendered ones, not equal.
        assert np.abs(video.frames.astype(int) - truth.frames).mean() < 12


def test_vip_load_errors_name_the_file(dataset, tmp_path):
    root = _copy(dataset, tmp_path, "VIP")
    with pytest.raises(FileNotFoundError, match="test_videos.txt"):
        vip.read_list(root, "test")
    labels = root / "Category_ids" / "synth_0000"
    images = root / "Images" / "synth_0000"
    Image.new("L", (SIZE[1], SIZE[0] - 2)).save(labels / "00001.png")
    with pytest.raises(ValueError, match="00001.png.*size"):
        vip.load_video(root, "synth_0000")
    Image.fromarray(np.full(SIZE, 30, np.uint8)).save(labels / "00001.png")
    with pytest.raises(ValueError, match="00001.png.*30"):
        vip.load_video(root, "synth_0000")
    (labels / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"annotation {labels / '00002.png'}"):
        vip.load_video(root, "synth_0000")
    (images / "00003.jpg").unlink()
    (labels / "00002.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=f"frame {images / '00003.jpg'}"):
        vip.load_video(root, "synth_0000")


def test_vip_writers_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    preds = rng.integers(0, 20, (3, 6, 5)).astype(np.int64)
    names = ["000001", "000006", "000011"]
    paths = vip.write_parts(tmp_path, "v", names, preds)
    assert paths == [tmp_path / "v" / f"{n}.png" for n in names]
    for path, pred in zip(paths, preds, strict=True):
        with Image.open(path) as image:
            assert image.mode == "L"
            np.testing.assert_array_equal(np.asarray(image), pred)
    with pytest.raises(ValueError, match="frame names"):
        vip.write_parts(tmp_path, "v", names[:2], preds)

    matrix = vip.ConfusionMatrix(num_classes=3)
    matrix.update(np.array([[0, 1]]), np.array([[0, 1]]))
    json_path, csv_path = vip.write_summary(tmp_path, matrix.summary())
    summary = json.loads(json_path.read_text())
    assert summary["mIoU"] == 1.0 and summary["per_class_IoU"] == [1.0, 1.0, None]
    rows = list(csv.reader(csv_path.read_text().splitlines()))
    assert rows == [
        ["class", "IoU"],
        ["0", "1.0"],
        ["1", "1.0"],
        ["2", ""],
        ["mean", "1.0"],
    ]


def _vip_video(root, video, frames):
    """Writes ``{name: (frame array or None, label Image or None)}`` as a VIP video."""
    image_dir = root / "Images" / video
    label_dir = root / "Category_ids" / video
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for name, (frame, label) in frames.items():
        if frame is not None:
            Image.fromarray(frame).save(image_dir / f"{name}.jpg")
        if label is not None:
            label.save(label_dir / f"{name}.png")
    return image_dir, label_dir


def _rgb(h, w, value=100):
    return np.full((h, w, 3), value, np.uint8)


def _label(h, w, value=0):
    return Image.fromarray(np.full((h, w), value, np.uint8))


def test_vip_missing_folders_and_unpaired_files_name_the_path(tmp_path):
    image_dir = tmp_path / "Images" / "v"
    label_dir = tmp_path / "Category_ids" / "v"
    with pytest.raises(FileNotFoundError, match=re.escape(f"not found: {image_dir}")):
        vip.load_video(tmp_path, "v")
    image_dir.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=re.escape(f"not found: {label_dir}")):
        vip.load_video(tmp_path, "v")
    label_dir.mkdir(parents=True)
    # Both folders empty: "no frames", naming the image folder.
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"no .jpg frames in {image_dir}")
    ):
        vip.load_video(tmp_path, "v")
    # Frames without any annotation: the first missing annotation is named.
    _vip_video(tmp_path, "v", {"b": (_rgb(4, 5), None), "a": (_rgb(4, 5), None)})
    missing = re.escape(f"missing VIP annotation {label_dir / 'a.png'}")
    with pytest.raises(FileNotFoundError, match=missing):
        vip.load_video(tmp_path, "v")
    # Annotations without any frame: the first missing frame is named.
    _vip_video(tmp_path, "w", {"c": (None, _label(4, 5)), "d": (None, _label(4, 5))})
    missing = re.escape(f"missing VIP frame {tmp_path / 'Images' / 'w' / 'c.jpg'}")
    with pytest.raises(FileNotFoundError, match=missing):
        vip.load_video(tmp_path, "w")


def test_vip_label_modes_and_class_range(tmp_path):
    """Classes 0..19 and 255 are read from "L" and "P" PNGs; 20 and up are not."""
    values = np.array([[0, 19, 255, 7, 3]] * 4, np.uint8)
    palette = Image.fromarray(values)
    palette.putpalette([v for c in range(256) for v in (c, 255 - c, c // 2)])
    assert palette.mode == "P"
    _, label_dir = _vip_video(tmp_path, "p", {"a": (_rgb(4, 5), palette)})
    video = vip.load_video(tmp_path, "p")
    assert video.labels.dtype == np.uint8
    np.testing.assert_array_equal(video.labels, values[None])

    _vip_video(tmp_path, "p", {"a": (None, Image.fromarray(values))})  # "L"
    np.testing.assert_array_equal(vip.load_video(tmp_path, "p").labels, values[None])

    path = label_dir / "a.png"
    Image.new("RGB", (5, 4)).save(path)
    expected = f"{path}: expected an 'L' or 'P' PNG, got mode RGB"
    with pytest.raises(ValueError, match=re.escape(expected)):
        vip.load_video(tmp_path, "p")

    _label(4, 5, 20).save(path)  # first value past the last class
    expected = f"{path}: class values [20] outside 0..19 (and 255 void)"
    with pytest.raises(ValueError, match=re.escape(expected) + "$"):
        vip.load_video(tmp_path, "p")

    many = np.array([[25, 24, 23, 22, 21], [20, 20, 0, 255, 19]] * 2, np.uint8)
    Image.fromarray(many).save(path)  # six bad classes: the first five listed
    expected = f"{path}: class values [20, 21, 22, 23, 24] outside 0..19"
    with pytest.raises(ValueError, match=re.escape(expected)):
        vip.load_video(tmp_path, "p")


def test_vip_grayscale_jpeg_read_as_rgb_and_size_errors(tmp_path):
    gray = np.full((4, 5), 128, np.uint8)  # saved as an "L" JPEG
    image_dir, label_dir = _vip_video(
        tmp_path, "v", {"a": (gray, _label(4, 5)), "b": (_rgb(4, 5), _label(4, 5))}
    )
    with Image.open(image_dir / "a.jpg") as image:
        assert image.mode == "L"
    video = vip.load_video(tmp_path, "v")
    assert video.frames.shape == (2, 4, 5, 3) and video.frames.dtype == np.uint8
    assert np.all(video.frames[0] == video.frames[0, :, :, :1])  # R = G = B
    assert np.abs(video.frames[0].astype(int) - 128).max() <= 2

    _vip_video(tmp_path, "v", {"b": (_rgb(4, 6), _label(4, 6))})
    expected = f"{image_dir / 'b.jpg'}: frame size (4, 6) differs from a.jpg's (4, 5)"
    with pytest.raises(ValueError, match=re.escape(expected) + "$"):
        vip.load_video(tmp_path, "v")

    _vip_video(tmp_path, "v", {"b": (_rgb(4, 5), _label(3, 5))})
    expected = (
        f"{label_dir / 'b.png'}: annotation size (3, 5) differs from its frame's (4, 5)"
    )
    with pytest.raises(ValueError, match=re.escape(expected) + "$"):
        vip.load_video(tmp_path, "v")


def test_confusion_matrix_class_range_and_integer_counts():
    matrix = vip.ConfusionMatrix()
    assert matrix.matrix.shape == (20, 20) and matrix.matrix.dtype == np.int64
    # 19 is the last class; a 255 prediction on a void pixel is skipped.
    matrix.update(np.array([[19, 255, 0]]), np.array([[19, 255, 0]]))
    assert matrix.matrix.dtype == np.int64
    assert matrix.matrix[19, 19] == 1 and matrix.matrix[0, 0] == 1
    assert matrix.matrix.sum() == 2
    for pred, gt, name in [(20, 0, "pred"), (-1, 0, "pred"), (0, 20, "gt")]:
        with pytest.raises(ValueError, match=rf"^{name} values must be in 0\.\.19$"):
            matrix.update(np.array([[pred]]), np.array([[gt]]))
    assert matrix.matrix.sum() == 2  # rejected frames add nothing
    small = vip.ConfusionMatrix(num_classes=3)
    with pytest.raises(ValueError, match=r"^gt values must be in 0\.\.2$"):
        small.update(np.array([[0]]), np.array([[3]]))


def test_iou_of_absent_classes_is_nan_without_warnings():
    """Classes with an empty union give NaN, skipped by the mean, silently."""
    matrix = vip.ConfusionMatrix(num_classes=4)
    # Class 0: TP 2, union 3; class 2: TP 1, union 2; classes 1, 3 absent.
    matrix.update(np.array([[0, 0, 2, 2]]), np.array([[0, 0, 0, 2]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iou = matrix.per_class_iou()
        miou = matrix.miou()
        empty = vip.ConfusionMatrix(num_classes=4)
        assert np.isnan(empty.per_class_iou()).all() and np.isnan(empty.miou())
    assert iou.dtype == np.float64
    np.testing.assert_allclose(iou[[0, 2]], [2 / 3, 1 / 2])
    assert np.isnan(iou[1]) and np.isnan(iou[3])
    assert miou == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_write_parts_value_range_and_existing_folders(tmp_path):
    out = tmp_path / "nested" / "out"  # missing parents are created
    pred = np.array([[0, 255, 19], [1, 2, 3]])
    (path,) = vip.write_parts(out, "v", ["f1"], [pred])
    assert path == out / "v" / "f1.png"
    with Image.open(path) as image:
        np.testing.assert_array_equal(np.asarray(image), pred)
    # Writing again into the existing folder overwrites.
    (path,) = vip.write_parts(out, "v", ["f1"], [pred[::-1]])
    with Image.open(path) as image:
        np.testing.assert_array_equal(np.asarray(image), pred[::-1])
    message = r"^prediction for f2 must be \[H, W\] in 0\.\.255$"
    bad = [
        np.array([[0, 256]]),  # one past 255, no negative value
        np.array([[-1, 5]]),
        np.array([[-1, 256]]),
        np.zeros((2, 2, 1), np.int64),  # in range but not [H, W]
        np.zeros(3, np.int64),
    ]
    for value in bad:
        with pytest.raises(ValueError, match=message):
            vip.write_parts(out, "v", ["f2"], [value])
    assert not (out / "v" / "f2.png").exists()


def test_write_summary_nested_folder_numpy_values_and_no_per_class(tmp_path):
    out = tmp_path / "a" / "b" / "c"  # missing parents are created
    results = {
        "mIoU": np.float64(0.25),
        "per_class_IoU": np.array([0.5, np.nan, 0.0]),
        "pixels": np.int64(7),
        "videos": ["x", "y"],
    }
    json_path, csv_path = vip.write_summary(out, results)
    assert (json_path, csv_path) == (out / "vip_summary.json", out / "vip_summary.csv")
    assert json.loads(json_path.read_text()) == {
        "mIoU": 0.25,
        "per_class_IoU": [0.5, None, 0.0],
        "pixels": 7,
        "videos": ["x", "y"],
    }
    rows = list(csv.reader(csv_path.read_text().splitlines()))
    assert rows == [
        ["class", "IoU"],
        ["0", "0.5"],
        ["1", ""],
        ["2", "0.0"],
        ["mean", "0.25"],
    ]

    # Results without per-class IoUs: only the header and the mean.
    json_path, csv_path = vip.write_summary(out, {"mIoU": 0.5})
    assert json.loads(json_path.read_text()) == {"mIoU": 0.5}
    rows = list(csv.reader(csv_path.read_text().splitlines()))
    assert rows == [["class", "IoU"], ["mean", "0.5"]]
