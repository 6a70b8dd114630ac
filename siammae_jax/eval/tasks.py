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
from tqdm import tqdm

from siammae_jax.datasets import davis, davis_score, jhmdb, vip
from siammae_jax.eval import geometry, pictures, propagation, provenance

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
    multiple of the patch (the ``siammae`` protocol's rules; every rule is in
    :func:`siammae_jax.eval.geometry.input_size`)."""
    if size:
        rule = dict(resize="square", size=size)
    elif short_side:
        rule = dict(resize="short_round", short_side=short_side)
    else:
        rule = dict(resize="long_round", long_side=long_side)
    return geometry.input_size(height, width, patch, ml_collections.ConfigDict(rule))


def prop_config(section: ml_collections.ConfigDict) -> propagation.PropagationConfig:
    return propagation.PropagationConfig(
        topk=section.topk,
        queue=section.queue,
        radius=section.radius,
        temperature=section.temperature,
        queue_mode=section.queue_mode,
        chunk=section.chunk,
        neighbourhood=section.neighbourhood,
        restrict_first=section.restrict_first,
    )


def encoder_input(
    extract: Extractor, frames: np.ndarray, patch: int, cfg: ml_collections.ConfigDict
) -> tuple[np.ndarray, tuple[int, int]]:
    """Features [T, h, w, D] of the frames resized by the protocol's rule,
    and the input size (height, width) the encoder saw."""
    size = geometry.input_size(*frames.shape[1:3], patch, cfg)
    return extract(geometry.resize_frames(frames, size, cfg.frame_resize)), size


def propagate_ids(
    extract: Extractor,
    frames: np.ndarray,
    first: np.ndarray,
    classes: np.ndarray,
    patch: int,
    cfg: ml_collections.ConfigDict,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Frame 0's label ids ``first`` [H, W] carried through the video.

    Returns ``(ids, input size)``: ids [T, H, W] (values of ``classes``;
    frame 0 is ``first``) and the encoder's input (height, width).
    """
    feats, size = encoder_input(extract, frames, patch, cfg)
    grid = feats.shape[1:3]
    labels = geometry.labels_in(first, classes, grid, cfg.labels_in, size)
    soft = propagation.propagate(feats, labels, prop_config(cfg))
    hw = first.shape
    index = [
        geometry.labels_out(x, hw, size, cfg.labels_out, cfg.norm_mask) for x in soft
    ]
    ids = np.asarray(classes)[np.stack(index)]
    ids[0] = first
    return ids, size


def davis_sequence(
    extract: Extractor, patch: int, root: PathLike, seq: str,
    cfg: ml_collections.ConfigDict, inputs: provenance.Inputs | None = None,
) -> tuple[davis.DavisSequence, np.ndarray]:  # fmt: skip
    """One DAVIS sequence and its propagated object ids, uint8 [T, H, W]
    (frame 0 is the ground truth); its input size goes to ``inputs``."""
    s = davis.load_sequence(root, seq)
    ids = np.array((0, *s.object_ids))
    masks, size = propagate_ids(extract, s.frames, s.first_mask, ids, patch, cfg)
    if inputs is not None:
        inputs.add(seq, s.frame_names, s.frames.shape[1:3], size)
    return s, masks.astype(np.uint8)


def run_davis(
    extract: Extractor, patch: int, root: PathLike, out: PathLike,
    cfg: ml_collections.ConfigDict, overlays: int = 3, progress: bool = True,
    inputs: provenance.Inputs | None = None,
) -> dict:  # fmt: skip
    """DAVIS-2017 semi-supervised: indexed PNGs, then the official scores."""
    out = epath.Path(out)
    names = davis.read_set(root, cfg.split)
    for i, seq in enumerate(tqdm(names, desc="DAVIS", disable=not progress)):
        s, masks = davis_sequence(extract, patch, root, seq, cfg, inputs)
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
    inputs: provenance.Inputs | None = None,
) -> dict:  # fmt: skip
    """JHMDB pose propagation: 15 joint heatmaps, top-3 decoding, PCK."""
    out = epath.Path(out)
    preds, truths = [], []
    videos = jhmdb.read_split(root, cfg.split)
    for i, (cls, name) in enumerate(tqdm(videos, desc="JHMDB", disable=not progress)):
        v = jhmdb.load_video(root, cls, name)
        hw = v.frames.shape[1:3]
        feats, size = encoder_input(extract, v.frames, patch, cfg)
        if inputs is not None:
            inputs.add(f"{cls}/{name}", [str(len(v.frames))], hw, size)
        grid = feats.shape[1:3]
        first = jhmdb.joint_heatmaps(
            v.joints[0], hw, grid, sigma=cfg.sigma, style=cfg.heatmap, coords=cfg.coords
        )
        soft = propagation.propagate(feats, first, prop_config(cfg))
        pred = jhmdb.decode_joints(soft, hw, topk=cfg.decode_topk, coords=cfg.coords)
        jhmdb.write_predictions(out, cls, name, pred)
        preds.append(pred)
        truths.append(v.joints)
        if i < overlays:
            picks = pictures.pick_frames(len(v.frames))
            images = [pictures.skeleton(v.frames[t], pred[t]) for t in picks]
            (out / "overlays").mkdir(parents=True, exist_ok=True)
            pictures.save(out / "overlays" / f"{name}.png", pictures.strip(images))
    results = jhmdb.pck(preds, truths, invalid=cfg.pck_invalid)
    jhmdb.write_summary(out, results)
    return {k: v for k, v in results.items() if k.startswith("PCK@")}


def run_vip(
    extract: Extractor, patch: int, root: PathLike, out: PathLike,
    cfg: ml_collections.ConfigDict, overlays: int = 3, progress: bool = True,
    inputs: provenance.Inputs | None = None,
) -> dict:  # fmt: skip
    """VIP part propagation: class-index PNGs and mIoU over all frames but 0
    (all frames with ``cfg.count_first``: frame 0 is the ground truth)."""
    out = epath.Path(out)
    confusion = vip.ConfusionMatrix()
    names = vip.read_list(root, cfg.split)
    for i, name in enumerate(tqdm(names, desc="VIP", disable=not progress)):
        v = vip.load_video(root, name)
        hw = v.labels.shape[1:3]
        vip.onehot(v.labels[0])  # Checks the label values.
        first = np.where(v.labels[0] == vip.VOID, 0, v.labels[0])
        classes = np.arange(vip.NUM_CLASSES)
        preds, size = propagate_ids(extract, v.frames, first, classes, patch, cfg)
        preds = preds.astype(np.uint8)
        preds[0] = v.labels[0]
        if inputs is not None:
            inputs.add(name, v.frame_names, hw, size)
        for t in range(0 if cfg.count_first else 1, len(preds)):
            confusion.update(preds[t], v.labels[t])
        vip.write_parts(out, name, v.frame_names, preds)
        if i < overlays:
            _save_strip(out / "overlays" / f"{name}.png", v.frames, preds)
    summary = confusion.summary()
    vip.write_summary(out, summary)
    return {"mIoU": summary["mIoU"]}


RUNNERS = {"davis": run_davis, "jhmdb": run_jhmdb, "vip": run_vip}
