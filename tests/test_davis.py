"""Tests of the DAVIS-2017 reader, mask writer and J&F scorer.

The scorer is compared with an independent implementation of the official
``davis2017-evaluation`` definitions written here with explicit loops and a
distance transform for the boundary tolerance, and with numbers worked out by
hand.
"""

import math
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from siammae_jax.data import synthetic
from siammae_jax.datasets import davis, davis_score

SIZE = (32, 48)
FRAMES = 6
VIDEOS = 3
KEYS = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


# ------------------------------------------------ independent reference


def ref_boundary(mask):
    """Boundary by the definition: differs from an in-image right/bottom/bottom-right neighbour."""
    h, w = mask.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            for ny, nx in ((y, x + 1), (y + 1, x), (y + 1, x + 1)):
                if ny < h and nx < w and bool(mask[ny, nx]) != bool(mask[y, x]):
                    out[y, x] = True
    return out


def ref_j(gt, pred):
    inter = union = 0
    for a, b in zip(gt.ravel().tolist(), pred.ravel().tolist(), strict=True):
        inter += a and b
        union += a or b
    return 1.0 if union == 0 else inter / union


def ref_f(gt, pred):
    h, w = gt.shape
    radius = math.ceil(0.008 * math.sqrt(h * h + w * w))
    gb, pb = ref_boundary(gt), ref_boundary(pred)
    if not gb.any() and not pb.any():
        return 1.0
    if not gb.any() or not pb.any():
        return 0.0
    # Distance of every pixel to the nearest boundary pixel of the other mask.
    precision = np.mean(ndimage.distance_transform_edt(~gb)[pb] <= radius)
    recall = np.mean(ndimage.distance_transform_edt(~pb)[gb] <= radius)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def ref_stats(values):
    """Mean, recall, decay with the official bins, written with Python integers."""
    n = len(values)
    edges = [math.floor(1 + i * (n - 1) / 4 + 0.5) - 1 for i in range(5)]
    first = values[edges[0] : edges[1] + 1]
    last = values[edges[3] : edges[4] + 1]
    decay = sum(first) / len(first) - sum(last) / len(last)
    return sum(values) / n, sum(v > 0.5 for v in values) / n, decay


def ref_sequence(name, gt, pred):
    """Per-object rows: objects 1..max id of frame 0, frames 1..T-2."""
    rows = []
    for k in range(1, int(gt[0].max()) + 1):
        j = [ref_j(gt[t] == k, pred[t] == k) for t in range(1, len(gt) - 1)]
        f = [ref_f(gt[t] == k, pred[t] == k) for t in range(1, len(gt) - 1)]
        jm, jr, jd = ref_stats(j)
        fm, fr, fd = ref_stats(f)
        rows.append(
            dict(
                zip(
                    ("Sequence",) + KEYS,
                    (f"{name}_{k}", jm, jr, jd, fm, fr, fd),
                    strict=True,
                )
            )
        )
    return rows


def ref_global(rows):
    out = {key: sum(r[key] for r in rows) / len(rows) for key in KEYS}
    out["J&F-Mean"] = (out["J-Mean"] + out["F-Mean"]) / 2
    return out


# ------------------------------------------------ helpers


def write_davis(root, sequences):
    """A DAVIS layout from {name: gt [T, H, W]}: black JPEGs, GT PNGs, val.txt."""
    for name, gt in sequences.items():
        frames = root / "JPEGImages" / "480p" / name
        frames.mkdir(parents=True)
        for t in range(len(gt)):
            Image.new("RGB", gt.shape[1:][::-1]).save(frames / f"{t:05d}.jpg")
        names = [f"{t:05d}" for t in range(len(gt))]
        davis.write_masks(root / "Annotations" / "480p", name, names, gt)
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("".join(f"{n}\n" for n in sequences))


def write_results(results, predictions):
    for name, pred in predictions.items():
        davis.write_masks(results, name, [f"{t:05d}" for t in range(len(pred))], pred)


def random_sequence(rng, frames, size, objects):
    """Random rectangles and disks per object; some objects vanish in some frames."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((frames, h, w), np.uint8)
    for t in range(frames):
        for k in range(1, objects + 1):
            if t > 0 and rng.random() < 0.2:
                continue  # absent in this frame
            y0, x0 = rng.integers(-3, h), rng.integers(-3, w)
            if rng.random() < 0.5:
                shape = (yy >= y0) & (yy < y0 + rng.integers(2, h)) & (xx >= x0)
                shape &= xx < x0 + rng.integers(2, w)
            else:
                shape = (yy - y0) ** 2 + (xx - x0) ** 2 <= rng.integers(2, 60)
            labels[t][shape] = k
    return labels


def perturb(rng, gt):
    """A prediction: shifted (wrapping at the border), some ids dropped or added."""
    pred = np.roll(gt, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), (1, 2))
    pred = pred.copy()
    noise = rng.random(pred.shape) < 0.03
    pred[noise] = rng.integers(0, 9, noise.sum())  # incl. ids not in GT
    pred[rng.integers(0, len(pred))] = 0  # one empty frame
    return pred


def assert_rows_close(rows, expected):
    assert [r["Sequence"] for r in rows] == [e["Sequence"] for e in expected]
    for row, exp in zip(rows, expected, strict=True):
        for key in KEYS:
            assert row[key] == pytest.approx(exp[key], abs=1e-6), (row["Sequence"], key)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A synthetic DAVIS set: 3 videos, 6 frames, 32x48."""
    out = tmp_path_factory.mktemp("davis_synth") / "set"
    summary = synthetic.write_dataset(
        out, videos=VIDEOS, frames=FRAMES, size=SIZE, progress=False
    )
    return out / "DAVIS", summary["names"]


@pytest.fixture
def davis_copy(synth, tmp_path):
    """A writable copy of the synthetic DAVIS set."""
    root = tmp_path / "DAVIS"
    shutil.copytree(synth[0], root)
    return root, synth[1]


# ------------------------------------------------ hand-checked numbers


def test_hand_checked_4x4():
    gt = np.zeros((4, 4), np.uint8)
    gt[1:3, 1:3] = 1  # 2x2 square
    corner = np.zeros((4, 4), np.uint8)
    corner[3, 3] = 1  # the bottom-right pixel: no boundary of its own
    np.testing.assert_array_equal(
        davis_score.boundary_map(gt),
        [[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]],
    )
    np.testing.assert_array_equal(
        davis_score.boundary_map(corner),
        [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 0]],
    )
    assert davis_score.tolerance((4, 4)) == 1  # ceil(0.008 * 5.66): a 4-neighbour cross
    # Precision 3/3; recall 3/8 (GT boundary pixels next to (2,2), (2,3), (3,2)).
    j, f = davis_score.frame_scores(gt, corner, 1)
    assert j[0] == 0.0 and f[0] == pytest.approx(2 * 1 * (3 / 8) / (1 + 3 / 8))
    assert f[0] == pytest.approx(6 / 11)
    shifted = np.roll(gt, 1, axis=1)  # IoU 2/6; every boundary pixel within 1 px
    j, f = davis_score.frame_scores(gt, shifted, 1)
    assert j[0] == pytest.approx(1 / 3) and f[0] == 1.0

    # A sequence of 6 frames: frames 1-4 scored with J = [1, 1/3, 0, 0] and
    # F = [1, 1, 6/11, 0] (frame 4 predicts nothing).
    seq = np.stack([gt] * 6)
    pred = np.stack([gt, gt, shifted, corner, np.zeros_like(gt), corner])
    js, fs = davis_score.sequence_scores(seq, pred)
    np.testing.assert_allclose(js, [[1, 1 / 3, 0, 0]])
    np.testing.assert_allclose(fs, [[1, 1, 6 / 11, 0]])
    # Official decay bins for 4 values: [0:2] and [2:4] -> mean(1, 1/3) - 0.
    assert davis_score.statistics(js[0]) == pytest.approx((1 / 3, 0.25, 2 / 3))
    assert davis_score.statistics(fs[0]) == pytest.approx((7 / 11, 0.75, 1 - 3 / 11))


def test_hand_checked_sequence_through_files(tmp_path):
    gt = np.zeros((6, 4, 4), np.uint8)
    gt[:, 1:3, 1:3] = 1
    pred = gt.copy()
    pred[2] = np.roll(gt[2], 1, axis=1)
    pred[3] = 0
    pred[3, 3, 3] = 1
    pred[4] = 0
    pred[0] = pred[5] = 0  # first and last predictions are not scored
    write_davis(tmp_path / "DAVIS", {"square": gt})
    write_results(tmp_path / "res", {"square": pred})
    row, rows = davis_score.score(tmp_path / "DAVIS", tmp_path / "res", progress=False)
    expected = {
        "J&F-Mean": 16 / 33,
        "J-Mean": 1 / 3,
        "J-Recall": 0.25,
        "J-Decay": 2 / 3,
        "F-Mean": 7 / 11,
        "F-Recall": 0.75,
        "F-Decay": 8 / 11,
    }
    assert list(row) == list(davis_score.GLOBAL_COLUMNS)
    assert row == pytest.approx(expected, abs=1e-12)
    assert [r["Sequence"] for r in rows] == ["square_1"]


@pytest.mark.parametrize("axis", [0, 1])
def test_tolerance_at_480p_hand_checked(axis):
    """At 480x854 the tolerance is ceil(0.008 * 979.6) = 8 px, not 9 or 10.

    The ground truth is a band across the whole image (rows, or columns, 100
    to 299), so its 1-px boundary is two full lines: the line before the band
    and the band's last line. A prediction that extends the band by ``s`` px
    moves the second line by ``s``: within 8 px every boundary pixel is
    matched (F = 1); at 9 px half of each boundary is (P = R = F = 1/2).
    """
    shape = (480, 854)
    assert davis_score.tolerance(shape) == 8
    length = shape[1 - axis]
    gt = np.zeros(shape, np.uint8)
    np.moveaxis(gt, axis, 0)[100:300] = 1
    for extend, want_f in ((8, 1.0), (9, 0.5)):
        pred = np.zeros(shape, np.uint8)
        np.moveaxis(pred, axis, 0)[100 : 300 + extend] = 1
        assert (
            davis_score.boundary_map(gt).sum() == davis_score.boundary_map(pred).sum()
        )
        assert davis_score.boundary_map(gt).sum() == 2 * length
        j, f = davis_score.frame_scores(gt, pred, 1)
        assert j[0] == pytest.approx(200 / (200 + extend))
        assert f[0] == pytest.approx(want_f), extend


# ------------------------------------------------ against the reference


def test_boundary_matches_definition():
    rng = np.random.default_rng(0)
    for size in ((4, 4), (7, 5), (20, 31)):
        for _ in range(5):
            mask = rng.random(size) < rng.uniform(0.1, 0.9)
            np.testing.assert_array_equal(
                davis_score.boundary_map(mask), ref_boundary(mask)
            )
    full = np.ones((5, 6), bool)  # touches every border: no boundary at all
    assert not davis_score.boundary_map(full).any()


@pytest.mark.parametrize(
    "gt_mask, pred_mask, j, f",
    [
        (np.zeros((9, 9)), np.zeros((9, 9)), 1.0, 1.0),  # both empty
        (np.ones((9, 9)), np.ones((9, 9)), 1.0, 1.0),  # whole image: no boundary
        (np.eye(9), np.zeros((9, 9)), 0.0, 0.0),  # prediction empty
        (np.zeros((9, 9)), np.eye(9), 0.0, 0.0),  # ground truth empty
    ],
)
def test_empty_cases(gt_mask, pred_mask, j, f):
    js, fs = davis_score.frame_scores(
        gt_mask.astype(np.uint8), pred_mask.astype(np.uint8), 1
    )
    assert (js[0], fs[0]) == (j, f)
    assert (ref_j(gt_mask > 0, pred_mask > 0), ref_f(gt_mask > 0, pred_mask > 0)) == (
        j,
        f,
    )


@pytest.mark.parametrize("size", [(20, 31), (40, 150)])  # tolerance 1 and 2 px
def test_scores_match_reference_implementation(tmp_path, size):
    rng = np.random.default_rng(size[1])
    assert davis_score.tolerance(size) == (1 if size[1] < 100 else 2)
    sequences, predictions = {}, {}
    for i, (frames, objects) in enumerate([(7, 3), (5, 1), (9, 2)]):
        gt = random_sequence(rng, frames, size, objects)
        gt[0, 0, :objects] = np.arange(1, objects + 1)  # every id in frame 0
        if i == 2:
            gt[3:5][gt[3:5] == 2] = 0  # object 2 absent in frames 3, 4
            gt[1, -2:, -2:] = 5  # a later id > max of frame 0: not an object
        sequences[f"seq{i}"] = gt
        predictions[f"seq{i}"] = perturb(rng, gt)
    pred = predictions["seq2"]
    pred[3][pred[3] == 2] = 0  # object 2 absent from GT and prediction: 1, 1
    pred[4][pred[4] == 2] = 0
    pred[4, 2:6, 2:6] = 2  # absent from GT only: 0, 0
    predictions["seq0"][2, :3, :3] = 255  # an id outside 1..K: ignored
    write_davis(tmp_path / "DAVIS", sequences)
    write_results(tmp_path / "res", predictions)

    expected = []
    for name, gt in sequences.items():
        expected += ref_sequence(name, gt, predictions[name])
        j, f = davis_score.sequence_scores(gt, predictions[name])
        assert j.shape == f.shape == (int(gt[0].max()), len(gt) - 2)
    row, rows = davis_score.score(tmp_path / "DAVIS", tmp_path / "res", progress=False)
    assert_rows_close(rows, expected)
    assert row == pytest.approx(ref_global(expected), abs=1e-6)
    assert 0 < row["J&F-Mean"] < 1


def test_objects_come_from_first_frame_ids():
    gt = np.zeros((4, 8, 8), np.uint8)
    gt[:, 1:4, 1:4] = 3  # ids 1 and 2 absent in frame 0, but 3 is the max
    gt[1:, 5:7, 5:7] = 4  # appears after frame 0: not scored
    gt[2, 6:8, 0:2] = 1
    pred = gt.copy()
    pred[1, 0, 0] = 2  # object 2 predicted where the GT has none
    j, f = davis_score.sequence_scores(gt, pred)
    np.testing.assert_array_equal(j, [[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(f, [[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])


# ------------------------------------------------ round trips on synthetic data


def test_round_trip_ground_truth_scores_one(synth, tmp_path):
    root, names = synth
    for seq in names:
        gt = davis.read_annotations(root, seq)
        davis.write_masks(tmp_path, seq, [f"{t:05d}" for t in range(FRAMES)], gt)
    row, rows = davis_score.score(root, tmp_path, progress=False)
    assert row["J&F-Mean"] == 1.0 and row["J-Mean"] == 1.0 and row["F-Mean"] == 1.0
    assert row["J-Decay"] == 0.0 and row["F-Recall"] == 1.0
    n_objects = sum(int(davis.read_annotations(root, s)[0].max()) for s in names)
    assert len(rows) == n_objects


def test_round_trip_shifted_prediction(synth, tmp_path):
    root, names = synth
    direct = []
    for seq in names:
        gt = davis.read_annotations(root, seq)
        pred = np.roll(gt, 2, axis=2)
        pred[:, 10:14, 10:14] = 0  # erode a little as well
        davis.write_masks(tmp_path, seq, [f"{t:05d}" for t in range(FRAMES)], pred)
        for k in range(1, int(gt[0].max()) + 1):
            a, b = gt[1:-1] == k, pred[1:-1] == k
            inter = (a & b).sum(axis=(1, 2))
            union = (a | b).sum(axis=(1, 2))
            direct.append(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1)))
    row, rows = davis_score.score(root, tmp_path, progress=False)
    assert row["J&F-Mean"] < 1.0
    np.testing.assert_allclose([r["J-Mean"] for r in rows], direct, rtol=0, atol=1e-12)
    assert row["J-Mean"] == pytest.approx(np.mean(direct), abs=1e-12)


# ------------------------------------------------ reader and writer


def test_reader_on_synthetic_set(synth, tmp_path):
    root, names = synth
    assert davis.read_set(root) == names
    assert davis.read_set(root, "train") == []
    seq = davis.load_sequence(root, names[1])
    assert seq.name == names[1]
    assert seq.frame_names == tuple(f"{t:05d}" for t in range(FRAMES))
    assert seq.frames.shape == (FRAMES, *SIZE, 3) and seq.frames.dtype == np.uint8
    assert seq.first_mask.shape == SIZE and seq.first_mask.dtype == np.uint8
    labels = np.load(root.parent / "motion" / f"{names[1]}.npz")["labels"]
    np.testing.assert_array_equal(seq.first_mask, labels[0])
    assert seq.object_ids == tuple(range(1, int(labels[0].max()) + 1))
    gt = davis.read_annotations(root, names[1])
    assert gt.shape == (FRAMES, *SIZE) and gt.dtype == np.uint8
    np.testing.assert_array_equal(gt, labels)

    folder = davis.write_masks(tmp_path, names[1], seq.frame_names, gt)
    with Image.open(folder / "00003.png") as image:
        assert image.mode == "P"
        palette = np.array(image.getpalette()[:768], np.uint8).reshape(256, 3)
        # PASCAL VOC / DAVIS colours by hand: black, then the bit-spread ids.
        want = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
        np.testing.assert_array_equal(palette[:5], want)
        np.testing.assert_array_equal(palette[255], [224, 224, 192])
        np.testing.assert_array_equal(palette, davis.palette())
        np.testing.assert_array_equal(np.array(image), gt[3])


def test_void_is_background(davis_copy):
    root, names = davis_copy
    path = root / "Annotations" / "480p" / names[0] / "00000.png"
    with Image.open(path) as image:
        mask = np.array(image)
    mask[:4, :4] = 255
    davis.write_masks(path.parent.parent, names[0], ["00000"], mask[None])
    seq = davis.load_sequence(root, names[0])
    assert (seq.first_mask[:4, :4] == 0).all() and 255 not in seq.object_ids
    assert (davis.read_annotations(root, names[0])[0, :4, :4] == 0).all()


def test_missing_files_name_the_file(davis_copy, tmp_path):
    root, names = davis_copy
    frames = root / "JPEGImages" / "480p"
    annotations = root / "Annotations" / "480p"
    (frames / names[0] / "00003.jpg").unlink()
    for call in (davis.load_sequence, davis.read_annotations):
        with pytest.raises(FileNotFoundError, match=r"00003\.jpg"):
            call(root, names[0])
    (frames / names[1] / "00000.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"00000\.jpg"):
        davis.load_sequence(root, names[1])
    (annotations / names[2] / "00004.png").unlink()
    davis.load_sequence(root, names[2])  # only the first annotation is needed
    with pytest.raises(
        FileNotFoundError,
        match=rf"annotation .*{names[2]}/00004\.png not found, but frame 00004\.jpg "
        rf"of '{names[2]}' exists \(scoring needs every frame's ground truth\)$",
    ):
        davis.read_annotations(root, names[2])
    (annotations / names[2] / "00000.png").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{names[2]}/00000\.png"):
        davis.load_sequence(root, names[2])


def test_size_and_decode_errors_name_the_file(davis_copy):
    root, names = davis_copy
    annotations = root / "Annotations" / "480p" / names[0]
    frames = root / "JPEGImages" / "480p" / names[0]
    davis.write_masks(
        annotations.parent, names[0], ["00002"], np.zeros((1, 16, 16), np.uint8)
    )
    with pytest.raises(ValueError, match=r"00002\.png is 16x16"):
        davis.read_annotations(root, names[0])
    davis.write_masks(
        annotations.parent, names[0], ["00000"], np.zeros((1, 16, 16), np.uint8)
    )
    with pytest.raises(ValueError, match=r"00000\.png is 16x16"):
        davis.load_sequence(root, names[0])
    Image.new("RGB", (20, 10)).save(root / "JPEGImages/480p" / names[1] / "00004.jpg")
    with pytest.raises(ValueError, match=r"00004\.jpg is 10x20"):
        davis.load_sequence(root, names[1])
    (frames / "00001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot decode frame .*00001\.jpg"):
        davis.load_sequence(root, names[0])


def test_set_file_errors(davis_copy):
    root, names = davis_copy
    with pytest.raises(FileNotFoundError, match=r"ImageSets/2017/test-dev\.txt"):
        davis.read_set(root, "test-dev")
    (root / "ImageSets/2017/test-dev.txt").write_text(f"{names[0]}\n\nghost\n")
    with pytest.raises(ValueError, match="'ghost'"):
        davis.read_set(root, "test-dev")
    shutil.rmtree(root / "Annotations" / "480p" / names[2])
    with pytest.raises(ValueError, match=rf"{names[2]}.*Annotations"):
        davis.read_set(root)


def test_prediction_errors_name_the_file(synth, tmp_path):
    root, names = synth
    for seq in names:
        davis.write_masks(
            tmp_path,
            seq,
            [f"{t:05d}" for t in range(FRAMES)],
            davis.read_annotations(root, seq),
        )
    (tmp_path / names[1] / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{names[1]}/00002\.png"):
        davis_score.score(root, tmp_path, progress=False)
    davis.write_masks(tmp_path, names[1], ["00002"], np.zeros((1, 31, 48), np.uint8))
    with pytest.raises(
        ValueError, match=rf"{names[1]}/00002\.png is 31x48 \(HxW\), expected 32x48$"
    ):
        davis_score.score(root, tmp_path, progress=False)
    Image.new("RGB", SIZE[::-1]).save(tmp_path / names[1] / "00002.png")
    with pytest.raises(ValueError, match=r"00002\.png must be an indexed"):
        davis_score.score(root, tmp_path, progress=False)


# ------------------------------------------------ CSV files


def test_csv_files(tmp_path):
    row = dict(
        zip(
            davis_score.GLOBAL_COLUMNS,
            (0.5, 1 / 3, 0.25, 2 / 3, 2 / 3, 1.0, -0.0126),
            strict=True,
        )
    )
    rows = [
        {"Sequence": "bike-packing_1", "J-Mean": 0.12345, "F-Mean": 1.0},
        {"Sequence": "bike-packing_2", "J-Mean": 0.9996, "F-Mean": 0.0},
    ]
    (tmp_path / "global_results-val.csv").write_text("stale\n")
    paths = davis_score.write_csvs(tmp_path, row, rows)
    assert paths == (
        tmp_path / "global_results-val.csv",
        tmp_path / "per-sequence_results-val.csv",
    )
    assert paths[0].read_text() == (
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
        "0.500,0.333,0.250,0.667,0.667,1.000,-0.013\n"
    )
    assert paths[1].read_text() == (
        "Sequence,J-Mean,F-Mean\n"
        "bike-packing_1,0.123,1.000\n"
        "bike-packing_2,1.000,0.000\n"
    )
    davis_score.write_csvs(tmp_path, row, rows[:1], split="test-dev")
    assert (tmp_path / "per-sequence_results-test-dev.csv").read_text().count("\n") == 2


# ------------------------------------------------ edge cases of the scorer


def test_one_pixel_objects():
    """Union 1: an exactly predicted one-pixel object has J = 1, F = 1."""
    gt = np.zeros((4, 4), np.uint8)
    gt[1, 1] = 1
    gt[3, 0] = 2
    pred = gt.copy()
    pred[3, 0] = 0
    pred[3, 1] = 2  # object 2 one pixel to the right: IoU 0
    j, f = davis_score.frame_scores(gt, pred, 2)
    assert j.dtype == f.dtype == np.float64 and j.shape == f.shape == (2,)
    assert j[0] == 1.0 and f[0] == 1.0
    assert j[1] == 0.0 and f[1] == pytest.approx(ref_f(gt == 2, pred == 2))


def test_tolerance_uses_only_the_last_two_dimensions():
    # ceil(0.008 * 979.6) = 8 whatever leads; with the 1000 it would be 12.
    assert (
        davis_score.tolerance((1000, 480, 854))
        == davis_score.tolerance((480, 854))
        == 8
    )
    assert davis_score.tolerance((2, 4, 4)) == 1


def fast_boundary(mask):
    """The boundary by another route: pad by edge copies, whose differences are 0."""
    m = np.asarray(mask, bool)
    p = np.pad(m, ((0, 1), (0, 1)), mode="edge")
    return (m != p[:-1, 1:]) | (m != p[1:, :-1]) | (m != p[1:, 1:])


def test_f_at_480p_with_many_boundary_pixels():
    """Boundaries longer than one matching step (about 5300 pixels at 8 px)."""
    rng = np.random.default_rng(7)
    blocks = rng.random((30, 54)) < 0.5
    gt = np.kron(blocks, np.ones((16, 16), bool))[:480, :854]
    pred = np.roll(gt, (5, -6), (0, 1))
    pred ^= rng.random(gt.shape) < 0.002
    small = rng.random((9, 13)) < 0.5
    np.testing.assert_array_equal(fast_boundary(small), ref_boundary(small))
    gb, pb = fast_boundary(gt), fast_boundary(pred)
    assert gb.sum() > 2 * 5322 and pb.sum() > 2 * 5322
    precision = np.mean(ndimage.distance_transform_edt(~gb)[pb] <= 8)
    recall = np.mean(ndimage.distance_transform_edt(~pb)[gb] <= 8)
    want = 2 * precision * recall / (precision + recall)
    assert 0.3 < want < 0.99
    j, f = davis_score.frame_scores(gt.astype(np.uint8), pred.astype(np.uint8), 1)
    assert f[0] == pytest.approx(want, abs=1e-12)
    assert j[0] == pytest.approx((gt & pred).sum() / (gt | pred).sum(), abs=1e-12)


def test_frame_scores_shape_errors():
    gt = np.zeros((4, 4), np.uint8)
    with pytest.raises(
        ValueError, match=r"gt \(4, 4\) and pred \(1, 4\) must be equal 2-D"
    ):
        davis_score.frame_scores(gt, gt[:1], 1)  # would broadcast
    with pytest.raises(
        ValueError, match=r"gt \(2, 4, 4\) and pred \(2, 4, 4\) must be equal 2-D"
    ):
        davis_score.frame_scores(np.stack([gt, gt]), np.stack([gt, gt]), 1)


def test_sequence_scores_frame_counts():
    gt = np.zeros((3, 4, 4), np.uint8)
    gt[:, 1:3, 1:3] = 1
    pred = gt.copy()
    pred[1] = np.roll(gt[1], 1, axis=1)
    j, f = davis_score.sequence_scores(gt, pred)  # T = 3: one scored frame
    np.testing.assert_allclose(j, [[1 / 3]])
    np.testing.assert_array_equal(f, [[1.0]])
    for g, p in (
        (gt[:2], pred[:2]),  # T = 2 (H = 4 >= 3): nothing to score
        (np.concatenate([gt, gt[:1]]), np.concatenate([pred, pred])),  # 4 vs 6
        (np.concatenate([gt, gt[:1]]), pred),  # 4 vs 3
        (gt[0], pred[0]),  # not a sequence
    ):
        shapes = rf"\({', '.join(map(str, g.shape))},?\), \({', '.join(map(str, p.shape))},?\)"
        with pytest.raises(
            ValueError, match=r"need \[T, H, W\] gt and pred with T >= 3, got " + shapes
        ):
            davis_score.sequence_scores(g, p)


def test_statistics_edge_cases():
    assert davis_score.statistics([0.7]) == (0.7, 1.0, 0.0)  # one frame: both bins
    # Recall counts values strictly above 0.5 (official ``X > 0.5``).
    assert davis_score.statistics([0.5, 0.75])[1] == 0.5
    assert davis_score.statistics(np.float32([0.5, 0.5, 0.25]))[1] == 0.0
    for bad in (np.zeros(0), np.ones((2, 3))):
        shape = re.escape(str(bad.shape))
        with pytest.raises(
            ValueError, match=rf"need a non-empty 1-D array, got shape {shape}"
        ):
            davis_score.statistics(bad)


def test_statistics_in_float64_for_float32_values():
    """float32 per-frame values are averaged in float64, not float32."""
    values = np.float32([0.1, 0.7, 0.3, 0.9, 0.2, 0.6, 0.4, 0.8])
    exact = [float(v) for v in values]
    mean, recall, decay = davis_score.statistics(values)
    # Bins of 8 frames: [0:3] and [5:8].
    assert mean == pytest.approx(math.fsum(exact) / 8, abs=1e-15)
    assert recall == 0.5
    want = math.fsum(exact[0:3]) / 3 - math.fsum(exact[5:8]) / 3
    assert decay == pytest.approx(want, abs=1e-15)
    assert abs(mean - 0.5) > 1e-9  # float32 arithmetic would give exactly 0.5


# ------------------------------------------------ scoring sets and splits


def square_sequence(frames, shift_frame=None):
    gt = np.zeros((frames, 4, 4), np.uint8)
    gt[:, 1:3, 1:3] = 1
    pred = gt.copy()
    if shift_frame is not None:
        pred[shift_frame] = np.roll(gt[shift_frame], 1, axis=1)
    return gt, pred


def test_score_splits_three_frames_and_progress(tmp_path, capsys):
    """3-frame sequences (one scored frame); the split picks the sequences."""
    a_gt, a_pred = square_sequence(3)
    b_gt, b_pred = square_sequence(3, shift_frame=1)  # J 1/3, F 1
    root, res = tmp_path / "DAVIS", tmp_path / "res"
    write_davis(root, {"a": a_gt, "b": b_gt})
    write_results(res, {"a": a_pred, "b": b_pred})
    (root / "ImageSets/2017/test-dev.txt").write_text("b\n")
    capsys.readouterr()

    row, rows = davis_score.score(root, res, split="test-dev", progress=False)
    assert [r["Sequence"] for r in rows] == ["b_1"]
    assert row == pytest.approx(
        {
            "J&F-Mean": 2 / 3,
            "J-Mean": 1 / 3,
            "J-Recall": 0.0,
            "J-Decay": 0.0,
            "F-Mean": 1.0,
            "F-Recall": 1.0,
            "F-Decay": 0.0,
        },
        abs=1e-12,
    )
    assert capsys.readouterr().err == ""  # progress=False: no bar

    row, rows = davis_score.score(root, res)  # progress by default
    assert [r["Sequence"] for r in rows] == ["a_1", "b_1"]
    assert row["J-Mean"] == pytest.approx(2 / 3) and row["F-Mean"] == 1.0
    assert "DAVIS val" in capsys.readouterr().err
    davis_score.score(root, res, split="test-dev", progress=True)
    assert "DAVIS test-dev" in capsys.readouterr().err


def test_score_errors(tmp_path):
    gt, pred = square_sequence(2)
    root, res = tmp_path / "DAVIS", tmp_path / "res"
    write_davis(root, {"two": gt, "blank": np.zeros((3, 4, 4), np.uint8)})
    write_results(res, {"two": pred, "blank": np.zeros((3, 4, 4), np.uint8)})
    (root / "ImageSets/2017/short.txt").write_text("two\n")
    with pytest.raises(
        ValueError,
        match=r"sequence 'two' has 2 frames; scoring needs >= 3 "
        r"\(the first and last frames are not scored\)$",
    ):
        davis_score.score(root, res, split="short", progress=False)
    (root / "ImageSets/2017/blank.txt").write_text("blank\n")  # no object
    (root / "ImageSets/2017/empty.txt").write_text("\n")
    for split in ("blank", "empty"):
        with pytest.raises(
            ValueError, match=rf"no objects to score in DAVIS split '{split}'$"
        ):
            davis_score.score(root, res, split=split, progress=False)


# ------------------------------------------------ more reader and writer cases


def test_one_frame_sequence_loads(tmp_path):
    gt = np.zeros((1, 4, 6), np.uint8)
    gt[0, 1:3, 2:5] = 2
    write_davis(tmp_path, {"single": gt})
    seq = davis.load_sequence(tmp_path, "single")
    assert seq.frame_names == ("00000",) and seq.frames.shape == (1, 4, 6, 3)
    np.testing.assert_array_equal(seq.first_mask, gt[0])
    assert seq.object_ids == (2,)


def test_frame_folder_errors(davis_copy):
    root, names = davis_copy
    for call in (davis.load_sequence, davis.read_annotations):
        with pytest.raises(
            FileNotFoundError,
            match=r"DAVIS frame folder .*JPEGImages/480p/ghost not found$",
        ):
            call(root, "ghost")
    folder = root / "JPEGImages" / "480p" / names[0]
    for path in folder.glob("*.jpg"):
        path.unlink()
    for call in (davis.load_sequence, davis.read_annotations):
        with pytest.raises(
            ValueError,
            match=rf"DAVIS sequence '{names[0]}' has no \.jpg frames in "
            rf".*JPEGImages/480p/{names[0]}$",
        ):
            call(root, names[0])


def test_frames_of_other_sizes_name_both(davis_copy):
    root, names = davis_copy
    frames = root / "JPEGImages" / "480p"
    # Frame 0 differs from all the others: the message names frame 1 and 0.
    Image.new("RGB", (20, 10)).save(frames / names[0] / "00000.jpg")
    with pytest.raises(
        ValueError,
        match=rf"frame .*{names[0]}/00001\.jpg is 32x48 \(HxW\), but 00000\.jpg "
        r"is 10x20$",
    ):
        davis.load_sequence(root, names[0])
    # Frame 1 and its annotation both 10x20: each matches its frame, but not
    # the first annotation.
    Image.new("RGB", (20, 10)).save(frames / names[1] / "00001.jpg")
    davis.write_masks(
        root / "Annotations" / "480p",
        names[1],
        ["00001"],
        np.zeros((1, 10, 20), np.uint8),
    )
    with pytest.raises(
        ValueError,
        match=rf"annotation .*{names[1]}/00001\.png is 10x20 \(HxW\), but the "
        rf"first annotation of '{names[1]}' is 32x48$",
    ):
        davis.read_annotations(root, names[1])


def test_gray_annotations_and_frames(davis_copy):
    """'L' annotation PNGs hold ids like 'P' ones; gray JPEGs are read as RGB."""
    root, names = davis_copy
    want = davis.read_annotations(root, names[0])
    annotations = root / "Annotations" / "480p" / names[0]
    for t, mask in enumerate(want):
        Image.fromarray(mask, "L").save(annotations / f"{t:05d}.png")
    with Image.open(annotations / "00000.png") as image:
        assert image.mode == "L"
    np.testing.assert_array_equal(davis.read_annotations(root, names[0]), want)
    np.testing.assert_array_equal(
        davis.load_sequence(root, names[0]).first_mask, want[0]
    )

    frames = root / "JPEGImages" / "480p" / names[1]
    rng = np.random.default_rng(3)
    for t in range(FRAMES):
        gray = rng.integers(0, 256, SIZE, dtype=np.uint8)
        Image.fromarray(gray, "L").save(frames / f"{t:05d}.jpg")
    seq = davis.load_sequence(root, names[1])
    assert seq.frames.shape == (FRAMES, *SIZE, 3) and seq.frames.dtype == np.uint8
    for t in range(FRAMES):
        with Image.open(frames / f"{t:05d}.jpg") as image:
            assert image.mode == "L"
            gray = np.asarray(image)
        for c in range(3):
            np.testing.assert_array_equal(seq.frames[t, ..., c], gray)


def test_undecodable_files_name_the_file(davis_copy, tmp_path):
    root, names = davis_copy
    (root / "Annotations" / "480p" / names[0] / "00002.png").write_bytes(b"no png")
    with pytest.raises(
        ValueError, match=rf"cannot decode mask .*{names[0]}/00002\.png"
    ):
        davis.read_annotations(root, names[0])
    (root / "JPEGImages" / "480p" / names[1] / "00001.jpg").write_bytes(b"no jpeg")
    with pytest.raises(
        ValueError, match=rf"cannot decode frame .*{names[1]}/00001\.jpg"
    ):
        davis.read_annotations(root, names[1])  # the size is read from the header
    with pytest.raises(FileNotFoundError, match=r"mask .*missing\.png not found$"):
        davis._read_labels(tmp_path / "missing.png")


def test_write_masks_checks(tmp_path):
    ok = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match=r"^2 frame names but 3 masks for 's'$"):
        davis.write_masks(tmp_path, "s", ["00000", "00001"], [ok, ok, ok])
    for mask, what in (
        (np.zeros((4, 4)), r"float64 \(4, 4\)"),
        (np.zeros((4, 4), np.float32), r"float32 \(4, 4\)"),
        (np.zeros((4, 4, 3), np.uint8), r"uint8 \(4, 4, 3\)"),
    ):
        with pytest.raises(
            ValueError,
            match=rf"^mask 00000 of 's' must be 2-D integer ids, got {what}$",
        ):
            davis.write_masks(tmp_path, "s", ["00000"], [mask])
    for bad in (-1, 256):
        mask = np.zeros((4, 4), np.int64)
        mask[2, 3] = bad  # a single bad id; the rest in range
        with pytest.raises(
            ValueError, match=r"^mask 00000 of 's' has ids outside 0\.\.255$"
        ):
            davis.write_masks(tmp_path, "s", ["00000"], [mask])
    # In-range int64 and bool ids are written as given, 0 and 255 included.
    mask = np.zeros((4, 4), np.int64)
    mask[0, 0], mask[1, 1] = 255, 7
    folder = davis.write_masks(tmp_path, "s", ["a", "b"], [mask, ok.astype(bool)])
    with Image.open(folder / "a.png") as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.array(image), mask)
    with Image.open(folder / "b.png") as image:
        np.testing.assert_array_equal(np.array(image), ok)


def test_csv_files_nested_folder_and_line_ends(tmp_path):
    """Folders are created; lines end in LF only (like the official CSVs)."""
    row = dict.fromkeys(davis_score.GLOBAL_COLUMNS, 0.5)
    rows = [{"Sequence": "a_1", "J-Mean": 0.25, "F-Mean": 0.75}]
    paths = davis_score.write_csvs(tmp_path / "x" / "y", row, rows)
    assert paths[0].read_bytes() == (
        b"J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
        b"0.500,0.500,0.500,0.500,0.500,0.500,0.500\n"
    )
    assert paths[1].read_bytes() == b"Sequence,J-Mean,F-Mean\na_1,0.250,0.750\n"
