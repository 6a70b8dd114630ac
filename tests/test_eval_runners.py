"""End-to-end runs of the DAVIS, JHMDB and VIP evaluators with ideal features.

Each runner reads a synthetic set in the official layout (non-square frames,
so that a height/width swap anywhere shows), calls the extractor on resized
frames and writes official outputs. The extractors here are oracles: they
look up the ground truth of the video whose frames they are given (read from
disk with PIL/scipy, not with the evaluators' readers) and encode it as
features, so propagation can reproduce the ground truth and the score must be
near-perfect; the same features given to the wrong video must score far
lower. A hand-made VIP set checks the mIoU pooling with exact values.
"""

import csv
import json

import numpy as np
import pytest
import scipy.io
from PIL import Image

from siammae_jax.data import synthetic
from siammae_jax.eval import config as eval_config
from siammae_jax.eval import tasks

SIZE = (32, 48)  # (H, W): non-square
FRAMES = 6
VIDEOS = 2
NAMES = [f"synth_{i:04d}" for i in range(VIDEOS)]
PATCH = 3  # DAVIS: frames resized 1.5x to 48x72, a 16x24 feature grid
VIP_PATCH = 2  # VIP: frames resized 2x to 64x96, a 32x48 feature grid
JHMDB_PATCH = 2  # JHMDB: frames resized to 64x64, a 32x32 feature grid


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("runners")
    synthetic.write_dataset(
        out, videos=VIDEOS, frames=FRAMES, size=SIZE, progress=False
    )
    return out


def _read_images(paths, mode=None) -> np.ndarray:
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(np.asarray(image.convert(mode) if mode else image))
    return np.stack(images)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class Oracle:
    """An extractor ``frames [T, h, w, 3] -> features [T, h/p, w/p, C]``.

    It finds which video it is given by the mean colour of the frames (the
    runner's resizing keeps it), checks the frames' size, and returns
    ``encode(video index, grid)``. With ``swap``, it returns the features of
    the other video instead.
    """

    def __init__(self, frames, input_hw, patch, encode, swap=False):
        self.means = [f.reshape(-1, 3).mean(0) for f in frames]
        self.input_hw = input_hw  # the size the runner must resize frames to
        self.patch = patch
        self.encode = encode
        self.swap = swap
        self.calls = []

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        assert frames.dtype == np.uint8
        assert frames.shape == (FRAMES, *self.input_hw, 3), frames.shape
        mean = frames.reshape(-1, 3).astype(np.float64).mean(0)
        index = int(np.argmin([np.abs(mean - m).sum() for m in self.means]))
        self.calls.append(index)
        if self.swap:
            index = (index + 1) % len(self.means)
        grid = (self.input_hw[0] // self.patch, self.input_hw[1] // self.patch)
        return self.encode(index, grid)


def _pooled_onehot(labels: np.ndarray, classes: int, grid) -> np.ndarray:
    """Unit-norm fractions of each class in each grid cell: [T, gh, gw, classes]."""
    t, h, w = labels.shape
    fy, fx = h // grid[0], w // grid[1]
    assert (fy * grid[0], fx * grid[1]) == (h, w)
    onehot = np.eye(classes)[labels].reshape(t, grid[0], fy, grid[1], fx, classes)
    return _unit(onehot.mean((2, 4)))


def _miou_pooled(preds, gts, classes=20) -> float:
    """IoU per class over all pixels of all given frames, mean over present classes."""
    pred = np.concatenate([p.ravel() for p in preds]).astype(np.int64)
    gt = np.concatenate([g.ravel() for g in gts]).astype(np.int64)
    pred, gt = pred[gt != 255], gt[gt != 255]
    ious = [
        np.sum((pred == c) & (gt == c)) / np.sum((pred == c) | (gt == c))
        for c in range(classes)
        if np.any((pred == c) | (gt == c))
    ]
    return float(np.mean(ious))


def _miou_per_frame(preds, gts) -> float:
    return float(
        np.mean([_miou_pooled([p], [g]) for p, g in zip(preds, gts, strict=True)])
    )


# ------------------------------------------------------------------- DAVIS


def _davis_oracle(root, swap=False) -> Oracle:
    frames, truth = [], []
    for name in NAMES:
        frames.append(
            _read_images(sorted((root / "JPEGImages/480p" / name).glob("*.jpg")), "RGB")
        )
        truth.append(
            _read_images(sorted((root / "Annotations/480p" / name).glob("*.png")))
        )
    return Oracle(
        frames, (48, 72), PATCH, lambda i, grid: _pooled_onehot(truth[i], 8, grid), swap
    )


def _run_davis(root, out, oracle) -> dict:
    cfg = eval_config.get_config().davis
    cfg.short_side = 48  # 32x48 -> 48x72 (paper: 480)
    return tasks.run_davis(oracle, PATCH, root, out, cfg, overlays=1, progress=False)


def test_run_davis_ideal_features(synth, tmp_path):
    """Ground-truth features score J&F > 0.93; the other video's features < 0.3.

    (Not 1: the feature grid's cells are 2x2 pixels of the 32x48 frames.)

    The official outputs are written: one indexed PNG per frame of every
    sequence, the two CSVs and one overlay.
    """
    root = synth / "DAVIS"
    oracle = _davis_oracle(root)
    scores = _run_davis(root, tmp_path / "ideal", oracle)
    assert sorted(oracle.calls) == [0, 1]
    assert list(scores) == [
        "J&F-Mean",
        "J-Mean",
        "J-Recall",
        "J-Decay",
        "F-Mean",
        "F-Recall",
        "F-Decay",
    ]
    assert scores["J&F-Mean"] > 0.93, scores
    out = tmp_path / "ideal"
    for name in NAMES:
        pngs = sorted((out / name).glob("*.png"))
        assert [p.stem for p in pngs] == [f"{t:05d}" for t in range(FRAMES)]
        with Image.open(pngs[1]) as image:
            assert image.mode == "P" and image.size == SIZE[::-1]
    with open(out / "global_results-val.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "J&F-Mean"
    assert float(rows[1][0]) == pytest.approx(scores["J&F-Mean"], abs=5e-4)
    assert (out / "per-sequence_results-val.csv").is_file()
    assert [p.name for p in (out / "overlays").iterdir()] == ["synth_0000.png"]

    wrong = _run_davis(root, tmp_path / "swap", _davis_oracle(root, swap=True))
    assert wrong["J&F-Mean"] < 0.3, wrong


# ------------------------------------------------------------------- JHMDB


def _joint_code(joints: np.ndarray, image_hw, grid, sigma: float) -> np.ndarray:
    """Unit-norm features [T, gh, gw, 16]: a Gaussian of each cell's distance
    to each joint (in cells, half-pixel centres) plus a constant channel."""
    scale = np.array([grid[1] / image_hw[1], grid[0] / image_hw[0]])
    cells = (joints + 0.5) * scale - 0.5  # [T, 15, 2] (x, y) on the grid
    ys, xs = np.mgrid[: grid[0], : grid[1]]
    d2 = (xs[None, ..., None] - cells[:, None, None, :, 0]) ** 2
    d2 = d2 + (ys[None, ..., None] - cells[:, None, None, :, 1]) ** 2
    code = np.exp(-d2 / (2 * sigma**2))
    return _unit(np.concatenate([np.full(code.shape[:-1] + (1,), 0.1), code], -1))


def _jhmdb_videos(root):
    """[(class, name, frames, joints [T, 15, 2] 0-based (x, y))] from the files."""
    videos = []
    for mat in sorted((root / "joint_positions").glob("*/*/joint_positions.mat")):
        cls, name = mat.parent.parent.name, mat.parent.name
        pngs = sorted((root / "Rename_Images" / cls / name).glob("*.png"))
        joints = scipy.io.loadmat(mat)["pos_img"].transpose(2, 1, 0) - 1.0
        videos.append((cls, name, _read_images(pngs, "RGB"), joints))
    return videos


def _jhmdb_oracle(videos, swap=False, sigma=0.5) -> Oracle:
    return Oracle(
        [v[2] for v in videos],
        (64, 64),
        JHMDB_PATCH,
        lambda i, grid: _joint_code(videos[i][3], SIZE, grid, sigma),
        swap,
    )


def _run_jhmdb(root, out, oracle) -> dict:
    cfg = eval_config.get_config().jhmdb
    cfg.size = 64  # 32x48 -> 64x64 (paper: 320)
    return tasks.run_jhmdb(
        oracle, JHMDB_PATCH, root, out, cfg, overlays=1, progress=False
    )


def _pck_by_hand(preds, truths, a) -> float:
    """Mean over joints of the fraction of frames >= 1 within a * 0.6 * GT box diagonal."""
    correct, frames = np.zeros(15), 0
    for pred, truth in zip(preds, truths, strict=True):
        for p, g in zip(pred[1:], truth[1:], strict=True):
            box = g.max(0) - g.min(0)
            limit = a * 0.6 * np.hypot(*box)
            correct += np.hypot(*(p - g).T) <= limit * (1 + 1e-9)
            frames += 1
    return float(np.mean(correct / frames))


def test_run_jhmdb_ideal_features(synth, tmp_path):
    """Features coding the distance to the true joints give PCK@0.2 > 0.95.

    Frames are 32x48 and the input 64x64, so decoding with height and width
    swapped would misplace every joint. The written .mat predictions (1-based
    ``pos_img``) score the same by an independent PCK; the other video's
    features score ~0.
    """
    root = synth / "JHMDB"
    videos = _jhmdb_videos(root)
    assert len(videos) == VIDEOS
    oracle = _jhmdb_oracle(videos)
    out = tmp_path / "ideal"
    scores = _run_jhmdb(root, out, oracle)
    assert sorted(oracle.calls) == [0, 1]
    assert sorted(scores) == ["PCK@0.1", "PCK@0.2"]
    assert scores["PCK@0.2"] > 0.95 and scores["PCK@0.1"] > 0.8, scores
    preds = []
    for cls, name, _, _ in videos:
        folder = out / cls / name
        pos_img = scipy.io.loadmat(folder / "joint_positions.mat")["pos_img"]
        assert pos_img.shape == (2, 15, FRAMES)
        preds.append(pos_img.transpose(2, 1, 0) - 1.0)
        record = json.loads((folder / "joint_positions.json").read_text())
        np.testing.assert_allclose(record["joints"], preds[-1], atol=1e-9)
    truths = [v[3] for v in videos]
    for a in (0.1, 0.2):
        assert scores[f"PCK@{a}"] == pytest.approx(_pck_by_hand(preds, truths, a))
    summary = json.loads((out / "jhmdb_summary.json").read_text())
    assert summary["PCK@0.2"] == pytest.approx(scores["PCK@0.2"])
    assert summary["frames"] == VIDEOS * (FRAMES - 1)
    assert (out / "jhmdb_summary.csv").is_file()
    assert [p.name for p in (out / "overlays").iterdir()] == [f"{videos[0][1]}.png"]

    wrong = _run_jhmdb(root, tmp_path / "swap", _jhmdb_oracle(videos, swap=True))
    assert wrong["PCK@0.2"] < 0.3, wrong


# --------------------------------------------------------------------- VIP


def _vip_oracle(root, swap=False) -> Oracle:
    frames, truth = [], []
    for name in NAMES:
        frames.append(
            _read_images(sorted((root / "Images" / name).glob("*.jpg")), "RGB")
        )
        truth.append(_read_images(sorted((root / "Category_ids" / name).glob("*.png"))))
    return Oracle(
        frames,
        (64, 96),
        VIP_PATCH,
        lambda i, grid: _pooled_onehot(truth[i], 20, grid),
        swap,
    )


def _run_vip(root, out, extract, long_side=96, patch=VIP_PATCH) -> dict:
    cfg = eval_config.get_config().vip
    cfg.long_side = long_side  # paper: 880
    cfg.queue = 5  # paper: 20 (a shorter queue keeps the test fast)
    return tasks.run_vip(extract, patch, root, out, cfg, overlays=1, progress=False)


def _vip_outputs(root, out, names):
    """(predictions, ground truth) of frames >= 1 of every video, read from the PNGs."""
    preds, truths = [], []
    for name in names:
        pngs = sorted((root / "Category_ids" / name).glob("*.png"))
        written = [out / name / p.name for p in pngs]
        for path in written:
            with Image.open(path) as image:
                assert image.mode == "L"
        preds += list(_read_images(written)[1:])
        truths += list(_read_images(pngs)[1:])
    return preds, truths


def test_run_vip_ideal_features(synth, tmp_path):
    """One-hot part features reproduce the parts (mIoU > 0.95); the other
    video's features score < 0.3. The returned mIoU is the one of a single
    confusion over all frames but 0 of all videos, recomputed from the written
    PNGs (the swapped run, where it differs from a per-frame average)."""
    root = synth / "VIP"
    oracle = _vip_oracle(root)
    out = tmp_path / "ideal"
    scores = _run_vip(root, out, oracle)
    assert sorted(oracle.calls) == [0, 1]
    assert list(scores) == ["mIoU"]
    assert scores["mIoU"] > 0.95, scores
    preds, truths = _vip_outputs(root, out, NAMES)
    assert len(preds) == VIDEOS * (FRAMES - 1)
    assert scores["mIoU"] == pytest.approx(_miou_pooled(preds, truths), abs=1e-12)
    summary = json.loads((out / "vip_summary.json").read_text())
    assert summary["mIoU"] == pytest.approx(scores["mIoU"])
    assert summary["pixels"] == VIDEOS * (FRAMES - 1) * SIZE[0] * SIZE[1]
    assert (out / "vip_summary.csv").is_file()
    assert [p.name for p in (out / "overlays").iterdir()] == ["synth_0000.png"]

    out = tmp_path / "swap"
    wrong = _run_vip(root, out, _vip_oracle(root, swap=True))
    assert wrong["mIoU"] < 0.3, wrong
    preds, truths = _vip_outputs(root, out, NAMES)
    pooled = _miou_pooled(preds, truths)
    assert abs(pooled - _miou_per_frame(preds, truths)) > 0.005
    assert wrong["mIoU"] == pytest.approx(pooled, abs=1e-12)


def test_run_vip_pools_frames_hand_made(tmp_path):
    """mIoU is one confusion over frames 1..T-1: 13/18, not the per-frame 0.75.

    A 4x6 video of 3 frames, every frame's ground truth two columns each of
    classes 1, 2 and 0. The extractor gives one-hot features of the ground
    truth in frames 0 and 2, and of a map where class 2 looks like class 1 in
    frame 1, so propagation predicts exactly those maps. Pooled over frames 1
    and 2: IoU 0 = 16/16, IoU 1 = 16/24, IoU 2 = 8/16 -> 13/18. Averaging
    frames gives (1/2 + 1) / 2 = 3/4; including frame 0 gives 29/36.
    """
    root = tmp_path / "VIP"
    truth = np.tile(np.repeat(np.array([1, 2, 0], np.uint8), 2), (4, 1))
    for folder in ("Images/hand", "Category_ids/hand", "lists"):
        (root / folder).mkdir(parents=True)
    for t in range(3):
        Image.new("RGB", (6, 4), (40 * t, 0, 0)).save(root / f"Images/hand/{t:05d}.jpg")
        Image.fromarray(truth).save(root / f"Category_ids/hand/{t:05d}.png")
    (root / "lists" / "val_videos.txt").write_text("hand\n")
    seen = np.where(truth == 2, 1, truth)
    maps = np.stack([truth, seen, truth])

    def extract(frames):
        assert frames.shape == (3, 4, 6, 3)
        return np.eye(3, dtype=np.float32)[maps]

    scores = _run_vip(root, tmp_path / "out", extract, long_side=6, patch=1)
    preds, truths = _vip_outputs(root, tmp_path / "out", ["hand"])
    np.testing.assert_array_equal(preds, maps[1:])
    assert scores["mIoU"] == pytest.approx(13 / 18)
    with Image.open(tmp_path / "out" / "hand" / "00000.png") as image:
        np.testing.assert_array_equal(np.asarray(image), truth)  # frame 0 as given
