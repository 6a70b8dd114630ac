"""VIP part propagation: data reading, one-hot labels, mIoU and outputs.

Layout read (``root`` is the ``VIP`` folder)::

    Images/<video>/<frame>.jpg          RGB frames
    Category_ids/<video>/<frame>.png    class index per pixel, 0..19 (255 void)
    lists/<split>_videos.txt            one video name per line

Every frame needs an annotation with the same name and size and vice versa.
Classes: 0 is the background, 1..19 the parts (``NUM_CLASSES`` = 20). The
score is one confusion matrix accumulated over all frames of all videos;
mIoU = nanmean over classes of TP / (GT + Pred - TP).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from siammae_jax.datasets import summary

NUM_CLASSES = 20
VOID = 255  # ignored by the metric; background for label propagation
IMAGE_SUFFIX = ".jpg"
LABEL_SUFFIX = ".png"


@dataclasses.dataclass(frozen=True)
class VipVideo:
    """One VIP video with its part annotations.

    Attributes:
      name: video name.
      frame_names: frame file stems in sorted order (e.g. ``000000000001``).
      frames: uint8 [T, H, W, 3] RGB frames.
      labels: uint8 [T, H, W] class indices (0..19, 255 void).
    """

    name: str
    frame_names: list[str]
    frames: np.ndarray
    labels: np.ndarray


# ------------------------------------------------------------------ reading


def read_list(root: str | Path, split: str = "val") -> list[str]:
    """Video names of ``lists/<split>_videos.txt`` in file order (blank lines skipped).

    Raises:
      FileNotFoundError: the list file is missing (its path in the message).
    """
    path = Path(root) / "lists" / f"{split}_videos.txt"
    if not path.is_file():
        raise FileNotFoundError(f"VIP video list not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _frame_names(image_dir: Path, label_dir: Path) -> list[str]:
    """Sorted frame stems; errors name the image or annotation a frame lacks."""
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"VIP folder not found: {folder}")
    images = {p.stem for p in image_dir.glob(f"*{IMAGE_SUFFIX}")}
    labels = {p.stem for p in label_dir.glob(f"*{LABEL_SUFFIX}")}
    if not images and not labels:
        raise FileNotFoundError(f"no {IMAGE_SUFFIX} frames in {image_dir}")
    if labels - images:
        stem = min(labels - images)
        raise FileNotFoundError(
            f"missing VIP frame {image_dir / (stem + IMAGE_SUFFIX)}"
        )
    if images - labels:
        stem = min(images - labels)
        raise FileNotFoundError(
            f"missing VIP annotation {label_dir / (stem + LABEL_SUFFIX)}"
        )
    return sorted(images)


def _read_label(path: Path) -> np.ndarray:
    """uint8 [H, W] class indices of an "L" or "P" PNG; errors name the file."""
    with Image.open(path) as image:
        if image.mode not in ("L", "P"):
            raise ValueError(
                f"{path}: expected an 'L' or 'P' PNG, got mode {image.mode}"
            )
        label = np.asarray(image, np.uint8)
    bad = (label >= NUM_CLASSES) & (label != VOID)
    if bad.any():
        raise ValueError(
            f"{path}: class values {sorted(set(label[bad].tolist()))[:5]} "
            f"outside 0..{NUM_CLASSES - 1} (and {VOID} void)"
        )
    return label


def load_video(root: str | Path, video: str) -> VipVideo:
    """Reads one video's frames and part annotations.

    Args:
      root: the ``VIP`` folder.
      video: video name.

    Returns:
      The video.

    Raises:
      FileNotFoundError: a missing folder, frame or annotation.
      ValueError: an annotation or frame whose size differs, or bad labels.
    """
    image_dir = Path(root) / "Images" / video
    label_dir = Path(root) / "Category_ids" / video
    names = _frame_names(image_dir, label_dir)
    frames, labels = [], []
    for name in names:
        image_path = image_dir / (name + IMAGE_SUFFIX)
        label_path = label_dir / (name + LABEL_SUFFIX)
        with Image.open(image_path) as image:
            frame = np.asarray(image.convert("RGB"))
        label = _read_label(label_path)
        if frames and frame.shape != frames[0].shape:
            raise ValueError(
                f"{image_path}: frame size {frame.shape[:2]} differs from "
                f"{names[0]}{IMAGE_SUFFIX}'s {frames[0].shape[:2]}"
            )
        if label.shape != frame.shape[:2]:
            raise ValueError(
                f"{label_path}: annotation size {label.shape} differs from "
                f"its frame's {frame.shape[:2]}"
            )
        frames.append(frame)
        labels.append(label)
    return VipVideo(video, names, np.stack(frames), np.stack(labels))


def onehot(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """float32 [H, W, num_classes] one-hot labels; void (255) counts as background.

    Raises:
      ValueError: values outside 0..num_classes-1 other than 255.
    """
    labels = np.asarray(labels)
    labels = np.where(labels == VOID, 0, labels).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in 0..{num_classes - 1} or {VOID}, "
            f"got {labels.min()}..{labels.max()}"
        )
    return np.eye(num_classes, dtype=np.float32)[labels]


# ------------------------------------------------------------------- metric


class ConfusionMatrix:
    """Pixel confusion matrix accumulated over all frames of all videos.

    ``matrix[g, p]`` counts pixels of ground-truth class g predicted as p;
    pixels whose ground truth is ``ignore_index`` are skipped.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = VOID):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Adds one frame: ``pred`` and ``gt`` [H, W] class indices."""
        pred, gt = np.asarray(pred).astype(np.int64), np.asarray(gt).astype(np.int64)
        if pred.shape != gt.shape:
            raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape")
        keep = gt != self.ignore_index
        pred, gt = pred[keep], gt[keep]
        n = self.num_classes
        for name, values in (("pred", pred), ("gt", gt)):
            if values.size and (values.min() < 0 or values.max() >= n):
                raise ValueError(f"{name} values must be in 0..{n - 1}")
        self.matrix += np.bincount(gt * n + pred, minlength=n * n).reshape(n, n)

    def per_class_iou(self) -> np.ndarray:
        """float64 [num_classes] TP / (GT + Pred - TP); NaN where the union is 0."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(1) + self.matrix.sum(0) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        """Mean IoU over classes present in ground truth or prediction (NaN if none)."""
        iou = self.per_class_iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan

    def summary(self) -> dict:
        """``{"mIoU", "per_class_IoU" (list, NaN kept), "pixels"}``."""
        return {
            "mIoU": self.miou(),
            "per_class_IoU": self.per_class_iou().tolist(),
            "pixels": int(self.matrix.sum()),
        }


# ------------------------------------------------------------------ writing


def write_parts(
    out_dir: str | Path,
    video: str,
    frame_names: Sequence[str],
    preds: np.ndarray | Sequence[np.ndarray],
    compress_level: int = 6,
) -> list[Path]:
    """Writes class indices as ``<out_dir>/<video>/<frame>.png`` ("L" mode).

    Predictions and ground truth (``<root>/Category_ids``) alike.

    Args:
      out_dir: output root.
      video: video name.
      frame_names: one file stem per prediction.
      preds: [T, H, W] integer class indices in 0..255.
      compress_level: zlib level of the PNGs (1: fast, for large frames).

    Returns:
      The written paths.
    """
    if len(frame_names) != len(preds):
        raise ValueError(f"{len(frame_names)} frame names but {len(preds)} predictions")
    folder = Path(out_dir) / video
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, pred in zip(frame_names, preds, strict=True):
        pred = np.asarray(pred)
        if pred.ndim != 2 or (pred.size and (pred.min() < 0 or pred.max() > 255)):
            raise ValueError(f"prediction for {name} must be [H, W] in 0..255")
        path = folder / f"{name}{LABEL_SUFFIX}"
        image = Image.fromarray(pred.astype(np.uint8))  # 2-D uint8 -> "L"
        image.save(path, compress_level=compress_level)
        paths.append(path)
    return paths


def write_video(
    root: str | Path,
    video: str,
    jpegs: Sequence[bytes],
    parts: np.ndarray,
    compress_level: int = 6,
) -> None:
    """One ground-truth video in the official layout: ``Images`` (the given
    JPEG files) and ``Category_ids`` (:func:`write_parts`), frames ``00000``..."""
    names = [f"{t:05d}" for t in range(len(jpegs))]
    images = Path(root) / "Images" / video
    images.mkdir(parents=True, exist_ok=True)
    for name, jpeg in zip(names, jpegs, strict=True):
        (images / f"{name}{IMAGE_SUFFIX}").write_bytes(jpeg)
    write_parts(Path(root) / "Category_ids", video, names, parts, compress_level)


def write_list(root: str | Path, videos: Sequence[str], split: str = "val") -> Path:
    """``lists/<split>_videos.txt`` listing ``videos``."""
    folder = Path(root) / "lists"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}_videos.txt"
    path.write_text("".join(f"{v}\n" for v in videos))
    return path


def write_summary(out_dir: str | Path, results: Mapping) -> tuple[Path, Path]:
    """Writes ``vip_summary.json`` (all of ``results``, NaN -> null) and ``vip_summary.csv``.

    The CSV has columns ``class,IoU``: rows 0..C-1 from ``per_class_IoU``
    (empty where NaN), then ``mean`` with ``mIoU``.

    Args:
      out_dir: output folder (created).
      results: e.g. ``ConfusionMatrix.summary()`` plus extra JSON-able entries.

    Returns:
      The (.json, .csv) paths.
    """
    json_path, csv_path = summary.summary_paths(out_dir, "vip")
    summary.write_json(json_path, dict(results))
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "IoU"])
        for c, iou in enumerate(results.get("per_class_IoU", [])):
            writer.writerow(
                [c, "" if summary.json_safe(float(iou)) is None else float(iou)]
            )
        writer.writerow(["mean", results["mIoU"]])
    return json_path, csv_path
