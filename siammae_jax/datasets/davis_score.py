"""DAVIS-2017 semi-supervised J&F, as the official ``davis2017-evaluation``.

The definitions (semi-supervised task):
  * Objects of a sequence are the ids 1..max id of its first ground-truth
    frame; void (255) counts as background. A predicted id outside 1..K is
    ignored, an object missing from a prediction is an empty mask.
  * First and last frames are not scored (only their ground truth is read).
  * J: intersection over union, 1 when both masks are empty.
  * F: boundary F-measure. The boundary of a binary mask is the set of pixels
    that differ from their right, bottom or bottom-right neighbour (the
    neighbours inside the image only). A boundary pixel is matched when the
    other boundary has a pixel within ``ceil(0.008 * image diagonal)``
    (Euclidean, the skimage disk). Precision and recall are the matched
    fractions; both boundaries empty: F = 1, one empty: F = 0.
  * Per object: mean, recall (fraction of frames > 0.5) and decay (mean of the
    first quarter of the frames minus the mean of the last quarter, with the
    official overlapping quarters, see ``statistics``).
  * Global: means over all objects of all sequences; J&F = (J + F) / 2.

The data set and the results are read through :mod:`siammae_jax.datasets.davis`.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage.morphology import disk
from tqdm import tqdm

from siammae_jax.datasets.davis import (
    _read_ground_truth,
    _read_labels,
    read_set,
)

BOUND_TH = 0.008  # boundary tolerance, fraction of the image diagonal


GLOBAL_COLUMNS = (
    "J&F-Mean",
    "J-Mean",
    "J-Recall",
    "J-Decay",
    "F-Mean",
    "F-Recall",
    "F-Decay",
)


SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")


_MATCH_CHUNK = 1 << 20  # gathered (pixel, offset) pairs per step of boundary matching


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-px boundaries of binary masks (the official ``seg2bmap``).

    A pixel is on the boundary when it differs from its right, bottom or
    bottom-right neighbour; neighbours outside the image are not compared, so
    a mask touching the border has no boundary along the border itself.

    Args:
      mask: [..., H, W] masks (nonzero = foreground).

    Returns:
      bool [..., H, W].
    """
    m = np.asarray(mask).astype(bool)
    b = np.zeros_like(m)
    b[..., :, :-1] |= m[..., :, :-1] ^ m[..., :, 1:]
    b[..., :-1, :] |= m[..., :-1, :] ^ m[..., 1:, :]
    b[..., :-1, :-1] |= m[..., :-1, :-1] ^ m[..., 1:, 1:]
    return b


def tolerance(shape: Sequence[int]) -> int:
    """Boundary matching radius in pixels: ``ceil(0.008 * diagonal)``."""
    return int(np.ceil(BOUND_TH * np.linalg.norm(np.asarray(shape[-2:], float))))


@functools.lru_cache(maxsize=16)
def _disk_offsets(radius: int) -> np.ndarray:
    """int [N, 2] (dy, dx) offsets of skimage's disk of ``radius``."""
    return np.argwhere(disk(radius)) - radius


def _count_matched(source: np.ndarray, padded_target: np.ndarray, radius: int) -> int:
    """Pixels of ``source`` with a target pixel inside the disk around them.

    Equals ``(source & binary_dilation(target, disk(radius))).sum()``, but
    evaluates the dilation only at the source pixels.

    Args:
      source: bool [H, W] boundary.
      padded_target: bool [H + 2r, W + 2r] other boundary, zero-padded by r.
      radius: r.
    """
    ys, xs = np.nonzero(source)
    width = padded_target.shape[1]
    base = (ys + radius) * width + (xs + radius)
    dy, dx = _disk_offsets(radius).T
    offsets = dy * width + dx
    flat = padded_target.ravel()
    step = max(1, _MATCH_CHUNK // len(offsets))
    matched = 0
    for start in range(0, base.size, step):
        window = base[start : start + step, None] + offsets[None, :]
        matched += int(np.count_nonzero(flat[window].any(axis=1)))
    return matched


def _f_measure(pred_b: np.ndarray, gt_b: np.ndarray, radius: int) -> float:
    """Boundary F-measure of two bool [H, W] boundaries."""
    n_pred, n_gt = int(np.count_nonzero(pred_b)), int(np.count_nonzero(gt_b))
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    if np.array_equal(pred_b, gt_b):
        return 1.0
    pad = ((radius, radius), (radius, radius))
    precision = _count_matched(pred_b, np.pad(gt_b, pad), radius) / n_pred
    recall = _count_matched(gt_b, np.pad(pred_b, pad), radius) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def frame_scores(
    gt: np.ndarray, pred: np.ndarray, num_objects: int
) -> tuple[np.ndarray, np.ndarray]:
    """J and F of objects 1..``num_objects`` in one frame.

    Args:
      gt: [H, W] ground-truth ids (void already mapped to 0).
      pred: [H, W] predicted ids; ids outside 1..num_objects are ignored.
      num_objects: K.

    Returns:
      ``(j, f)``: float64 [K] each.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} must be equal 2-D")
    ids = np.arange(1, num_objects + 1)[:, None, None]
    gt_masks, pred_masks = gt[None] == ids, pred[None] == ids
    inter = np.count_nonzero(gt_masks & pred_masks, axis=(1, 2))
    union = np.count_nonzero(gt_masks | pred_masks, axis=(1, 2))
    j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    gt_b, pred_b = boundary_map(gt_masks), boundary_map(pred_masks)
    radius = tolerance(gt.shape)
    f = [_f_measure(pred_b[k], gt_b[k], radius) for k in range(num_objects)]
    return j.astype(np.float64), np.array(f, np.float64).reshape(num_objects)


def sequence_scores(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-object, per-frame J and F of a sequence (first and last frames excluded).

    Args:
      gt: [T, H, W] ground-truth ids of every frame (void mapped to 0);
        objects are 1..max id of ``gt[0]``.
      pred: [T, H, W] predicted ids; only frames 1..T-2 are read.

    Returns:
      ``(j, f)``: float64 [K, T - 2] each.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.ndim != 3 or gt.shape[0] < 3 or len(pred) != len(gt):
        raise ValueError(
            f"need [T, H, W] gt and pred with T >= 3, got {gt.shape}, {pred.shape}"
        )
    num_objects = int(gt[0].max())
    j = np.zeros((num_objects, len(gt) - 2))
    f = np.zeros((num_objects, len(gt) - 2))
    for t in range(1, len(gt) - 1):
        j[:, t - 1], f[:, t - 1] = frame_scores(gt[t], pred[t], num_objects)
    return j, f


def statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall and decay of one object's per-frame values (official).

    Recall is the fraction of frames with a value > 0.5. Decay is the mean of
    the first bin minus the mean of the last of 4 bins whose edges are
    ``round(linspace(1, n, 5)) - 1`` (halves round up), each bin holding
    ``values[edge_i : edge_{i+1} + 1]``, so neighbouring bins share a frame.

    Args:
      values: float [n], n >= 1.

    Returns:
      ``(mean, recall, decay)``.
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a non-empty 1-D array, got shape {values.shape}")
    edges = (np.round(np.linspace(1, values.size, 5) + 1e-10) - 1).astype(np.int64)
    first = values[edges[0] : edges[1] + 1]
    last = values[edges[3] : edges[4] + 1]
    mean = float(np.nanmean(values))
    recall = float(np.mean(values > 0.5))
    return mean, recall, float(np.nanmean(first) - np.nanmean(last))


def _read_predictions(
    results: Path, seq: str, names: Sequence[str], size: tuple[int, int]
) -> np.ndarray:
    """uint8 [len(names), H, W] predicted ids of ``<results>/<seq>/<name>.png``."""
    masks = []
    for name in names:
        path = results / seq / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(
                f"prediction {path} not found: results need one indexed PNG per "
                f"frame, named like the ground truth ({seq}/{name}.png)"
            )
        masks.append(_read_labels(path, size))
    return np.stack(masks)


def _object_rows(seq: str, j: np.ndarray, f: np.ndarray) -> list[dict]:
    """One row per object: ``Sequence`` (``<seq>_<id>``) and J/F statistics."""
    rows = []
    for k in range(len(j)):
        jm, jr, jd = statistics(j[k])
        fm, fr, fd = statistics(f[k])
        rows.append(
            {
                "Sequence": f"{seq}_{k + 1}",
                "J-Mean": jm,
                "J-Recall": jr,
                "J-Decay": jd,
                "F-Mean": fm,
                "F-Recall": fr,
                "F-Decay": fd,
            }
        )
    return rows


def score_sequence(root: str | Path, results_dir: str | Path, seq: str) -> list[dict]:
    """Per-object rows of one sequence (see ``score``)."""
    names, gt = _read_ground_truth(Path(root), seq)
    if len(names) < 3:
        raise ValueError(
            f"sequence {seq!r} has {len(names)} frames; scoring needs >= 3 "
            "(the first and last frames are not scored)"
        )
    pred = np.zeros_like(gt)
    pred[1:-1] = _read_predictions(Path(results_dir), seq, names[1:-1], gt.shape[1:])
    return _object_rows(seq, *sequence_scores(gt, pred))


def score(
    davis_root: str | Path,
    results_dir: str | Path,
    split: str = "val",
    progress: bool = True,
    names: Sequence[str] | None = None,
) -> tuple[dict, list[dict]]:
    """Scores a results folder against DAVIS-2017 ground truth (semi-supervised).

    Only frames 1..T-2 of each sequence are read from ``results_dir``, like the
    official evaluation. Nothing is read from earlier CSV files.

    Args:
      davis_root: DAVIS-2017 root folder.
      results_dir: folder of ``<seq>/<frame>.png`` predictions.
      split: set file name under ``ImageSets/2017``.
      progress: show a tqdm bar over sequences.
      names: score only these sequences (default: all of the split's).

    Returns:
      ``(global_row, per_object)``: ``global_row`` maps ``GLOBAL_COLUMNS`` to
      floats; ``per_object`` holds one dict per object of every sequence with
      ``Sequence`` (``<seq>_<id>``), ``J-Mean``, ``J-Recall``, ``J-Decay``,
      ``F-Mean``, ``F-Recall`` and ``F-Decay``.

    Raises:
      FileNotFoundError: a set file, annotation or prediction is missing.
      ValueError: a mask of the wrong size or format, or nothing to score.
    """
    names = read_set(davis_root, split) if names is None else names
    rows = []
    for seq in tqdm(names, desc=f"DAVIS {split}", disable=not progress):
        rows.extend(score_sequence(davis_root, results_dir, seq))
    if not rows:
        raise ValueError(f"no objects to score in DAVIS split {split!r}")
    mean = {key: float(np.mean([r[key] for r in rows])) for key in GLOBAL_COLUMNS[1:]}
    global_row = {"J&F-Mean": (mean["J-Mean"] + mean["F-Mean"]) / 2, **mean}
    return global_row, rows


def write_csvs(
    results_dir: str | Path,
    global_row: dict,
    per_sequence: Sequence[dict],
    split: str = "val",
) -> tuple[Path, Path]:
    """Writes the official global and per-object CSVs (values ``%.3f``).

    Files: ``global_results-<split>.csv`` and ``per-sequence_results-<split>.csv``
    in ``results_dir``, replaced on every call.

    Args:
      results_dir: output folder.
      global_row: ``score``'s first result.
      per_sequence: ``score``'s second result.
      split: set name used in the file names.

    Returns:
      The two paths (global, per-sequence).
    """
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    global_path = folder / f"global_results-{split}.csv"
    sequence_path = folder / f"per-sequence_results-{split}.csv"
    with global_path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(GLOBAL_COLUMNS)
        writer.writerow([_fmt(global_row[key]) for key in GLOBAL_COLUMNS])
    with sequence_path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(SEQUENCE_COLUMNS)
        for row in per_sequence:
            writer.writerow([row["Sequence"], _fmt(row["J-Mean"]), _fmt(row["F-Mean"])])
    return global_path, sequence_path


def _fmt(value: float) -> str:
    """``%.3f``, like the official CSVs."""
    return f"{value:.3f}"
