"""What DAVIS-style J&F measures without any learning: the reference points
beside which an encoder's J&F (and its gain over a random-init twin) is read.

- :func:`patch_features` with ``mean_only``: each patch's mean RGB,
  L2-normalised (its chromaticity; 3 numbers); without: its pixels,
  mean-removed and L2-normalised. Either is an ``Extractor`` for
  ``tasks.run_davis`` once the patch size is bound.
- :func:`first_mask`: frame 0's masks copied to every frame (nothing moves:
  what a feature that knows only positions would score).
- :func:`grid_ceiling`: every frame's true masks pooled to the feature grid
  and upsampled as propagated labels are; what a perfect feature could reach
  at this patch size.

Scores come from ``davis_score`` with the split of ``cfg`` (the ``eval.davis``
settings), predictions written to ``out`` in the official format.
"""

from __future__ import annotations

import numpy as np
from etils import epath

from siammae_jax.datasets import davis, davis_score
from siammae_jax.eval import propagation, tasks


def patch_features(frames: np.ndarray, patch: int, mean_only: bool) -> np.ndarray:
    """uint8 [T, H, W, 3] -> [T, H/p, W/p, D] L2-normalised patch features."""
    t, h, w, _ = frames.shape
    x = frames.astype(np.float32) / 255.0
    x = x.reshape(t, h // patch, patch, w // patch, patch, 3).transpose(
        0, 1, 3, 2, 4, 5
    )
    x = x.reshape(t, h // patch, w // patch, patch * patch, 3)
    if mean_only:
        x = x.mean(3)
    else:
        x = x.reshape(*x.shape[:3], -1)
        x = x - x.mean(-1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def first_mask(root, out, cfg) -> dict:
    """J&F of frame 0's masks copied to every frame."""
    out = epath.Path(out)
    for seq in davis.read_set(root, cfg.split):
        s = davis.load_sequence(root, seq)
        masks = np.repeat(s.first_mask[None], len(s.frame_names), axis=0)
        davis.write_masks(out, seq, s.frame_names, masks)
    return davis_score.score(root, out, cfg.split, progress=False)[0]


def grid_ceiling(root, out, patch: int, cfg) -> dict:
    """J&F of the true masks seen through the feature grid (no propagation)."""
    out = epath.Path(out)
    for seq in davis.read_set(root, cfg.split):
        s = davis.load_sequence(root, seq)
        ids = np.array((0, *s.object_ids))
        h, w = s.first_mask.shape
        size = tasks.input_size(h, w, patch, short_side=cfg.short_side)
        gh, gw = size[0] // patch, size[1] // patch
        if h % gh or w % gw:
            raise ValueError(f"{seq}: {h}x{w} frames do not tile a {gh}x{gw} grid")
        masks = []
        for truth in davis.read_annotations(root, seq):
            onehot = (truth[..., None] == ids).astype(np.float32)
            # Each cell's share of every object (area pooling): the best a
            # feature grid can say, upsampled as propagated labels are.
            pooled = onehot.reshape(gh, h // gh, gw, w // gw, len(ids)).mean((1, 3))
            masks.append(ids[propagation.grid_to_labels(pooled, (h, w)).argmax(-1)])
        masks = np.stack(masks).astype(np.uint8)
        masks[0] = s.first_mask
        davis.write_masks(out, seq, s.frame_names, masks)
    row, rows = davis_score.score(root, out, cfg.split, progress=False)
    return row
