"""The three label-propagation evaluators: DAVIS-2017, JHMDB and VIP.

Each runner reads a benchmark in its official layout, propagates frame 0's
labels with frozen features, writes predictions in the official format plus
overlay pictures for the first ``overlays`` videos, scores them and returns
the summary. Nothing partial is ever reported as a score: an error in any
video stops the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import ml_collections
import numpy as np
from etils import epath
from PIL import Image
from tqdm import tqdm

from siammae_jax.eval import davis, davis_score, jhmdb, pictures, propagation, vip

PathLike = str | os.PathLike

Extractor = Callable[[np.ndarray], np.ndarray]


def input_size(
    height: int,
    width: int,
    patch: int,
    *,
    short_side: int = 0,
    long_side: int = 0,
    size: int = 0,
) -> tuple[int, int]:
    """The encoder's input size: a fixed square ``size``, or the short (long)
    side scaled to ``short_side`` (``long_side``), each side rounded to a
    multiple of the patch."""
    if size:
        h, w = size, size
    elif short_side:
        scale = short_side / min(height, width)
        h, w = height * scale, width * scale
    else:
        scale = long_side / max(height, width)
        h, w = height * scale, width * scale
    return max(patch, round(h / patch) * patch), max(patch, round(w / patch) * patch)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of uint8 frames [T, H, W, 3] to ``size`` (h, w)."""
    if frames.shape[1:3] == tuple(size):
        return frames
    return np.stack(
        [
            np.asarray(Image.fromarray(f).resize(size[::-1], Image.Resampling.BILINEAR))
            for f in frames
        ]
    )


def prop_config(section: ml_collections.ConfigDict) -> propagation.PropagationConfig:
    return propagation.PropagationConfig(
        topk=section.topk,
        queue=section.queue,
        radius=section.radius,
        temperature=section.temperature,
        queue_mode=section.queue_mode,
        chunk=section.chunk,
    )


def propagate_video(
    extract: Extractor,
    frames: np.ndarray,
    first_labels: np.ndarray,
    config: ml_collections.ConfigDict,
    size: tuple[int, int],
) -> np.ndarray:
    """Features of the resized frames, then propagation of frame 0's [H, W, C]
    labels; returns soft labels on the feature grid [T, h, w, C]."""
    feats = extract(resize_frames(frames, size))
    first = propagation.labels_to_grid(first_labels, feats.shape[1:3])
    return propagation.propagate(feats, first, config)


def _argmax_at(soft: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return propagation.grid_to_labels(soft, size).argmax(-1)


def davis_sequence(
    extract: Extractor, patch: int, root: PathLike, seq: str,
    cfg: ml_collections.ConfigDict,
) -> tuple[davis.DavisSequence, np.ndarray]:  # fmt: skip
    """One DAVIS sequence and its propagated object ids, uint8 [T, H, W]
    (frame 0 is the ground truth)."""
    s = davis.load_sequence(root, seq)
    ids = np.array((0, *s.object_ids))
    onehot = (s.first_mask[..., None] == ids).astype(np.float32)
    h, w = s.first_mask.shape
    size = input_size(h, w, patch, short_side=cfg.short_side)
    soft = propagate_video(extract, s.frames, onehot, prop_config(cfg), size)
    masks = np.stack([ids[_argmax_at(x, (h, w))] for x in soft]).astype(np.uint8)
    masks[0] = s.first_mask
    return s, masks


def run_davis(
    extract: Extractor, patch: int, root: PathLike, out: PathLike,
    cfg: ml_collections.ConfigDict, overlays: int = 3, progress: bool = True,
) -> dict:  # fmt: skip
    """DAVIS-2017 semi-supervised: indexed PNGs, then the official scores."""
    out = epath.Path(out)
    names = davis.read_set(root, cfg.split)
    for i, seq in enumerate(tqdm(names, desc="DAVIS", disable=not progress)):
        s, masks = davis_sequence(extract, patch, root, seq, cfg)
        davis.write_masks(out, seq, s.frame_names, masks)
        if i < overlays:
            _save_strip(out / "overlays" / f"{seq}.png", s.frames, masks)
    global_row, rows = davis_score.score(root, out, cfg.split, progress=progress)
    davis_score.write_csvs(out, global_row, rows, cfg.split)
    return global_row


def overlay_strip(frames: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A few frames of a video with their labels drawn over them, side by side."""
    picks = pictures.pick_frames(len(frames))
    return pictures.strip([pictures.overlay(frames[t], labels[t]) for t in picks])


def _save_strip(path: epath.Path, frames, labels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures.save(path, overlay_strip(frames, labels))


def run_jhmdb(
    extract: Extractor, patch: int, root: PathLike, out: PathLike,
    cfg: ml_collections.ConfigDict, overlays: int = 3, progress: bool = True,
) -> dict:  # fmt: skip
    """JHMDB pose propagation: 15 joint heatmaps, top-3 decoding, PCK."""
    out = epath.Path(out)
    preds, truths = [], []
    videos = jhmdb.read_split(root, cfg.split)
    for i, (cls, name) in enumerate(tqdm(videos, desc="JHMDB", disable=not progress)):
        v = jhmdb.load_video(root, cls, name)
        hw = v.frames.shape[1:3]
        size = input_size(*hw, patch, size=cfg.size)
        feats = extract(resize_frames(v.frames, size))
        first = jhmdb.joint_heatmaps(v.joints[0], hw, feats.shape[1:3], sigma=cfg.sigma)
        soft = propagation.propagate(feats, first, prop_config(cfg))
        pred = jhmdb.decode_joints(soft, hw)
        jhmdb.write_predictions(out, cls, name, pred)
        preds.append(pred)
        truths.append(v.joints)
        if i < overlays:
            picks = pictures.pick_frames(len(v.frames))
            images = [pictures.skeleton(v.frames[t], pred[t]) for t in picks]
            (out / "overlays").mkdir(parents=True, exist_ok=True)
            pictures.save(out / "overlays" / f"{name}.png", pictures.strip(images))
    results = jhmdb.pck(preds, truths)
    jhmdb.write_summary(out, results)
    return {k: v for k, v in results.items() if k.startswith("PCK@")}


def run_vip(
    extract: Extractor, patch: int, root: PathLike, out: PathLike,
    cfg: ml_collections.ConfigDict, overlays: int = 3, progress: bool = True,
) -> dict:  # fmt: skip
    """VIP part propagation: class-index PNGs and mIoU over all frames but 0."""
    out = epath.Path(out)
    confusion = vip.ConfusionMatrix()
    names = vip.read_list(root, cfg.split)
    for i, name in enumerate(tqdm(names, desc="VIP", disable=not progress)):
        v = vip.load_video(root, name)
        hw = v.labels.shape[1:3]
        size = input_size(*hw, patch, long_side=cfg.long_side)
        onehot = vip.onehot(v.labels[0])
        soft = propagate_video(extract, v.frames, onehot, prop_config(cfg), size)
        preds = np.stack([_argmax_at(x, hw) for x in soft]).astype(np.uint8)
        preds[0] = v.labels[0]
        for t in range(1, len(preds)):
            confusion.update(preds[t], v.labels[t])
        vip.write_parts(out, name, v.frame_names, preds)
        if i < overlays:
            _save_strip(out / "overlays" / f"{name}.png", v.frames, preds)
    summary = confusion.summary()
    vip.write_summary(out, summary)
    return {"mIoU": summary["mIoU"]}


RUNNERS = {"davis": run_davis, "jhmdb": run_jhmdb, "vip": run_vip}
