"""Between image and feature grid: each protocol's resize rules.

The settings named here are fields of a benchmark's config section (see
:mod:`siammae_jax.eval.protocols`, which cites each rule's source):

``resize`` (the encoder's input size)
    ``short_round``: the short side scaled to ``short_side``, both sides
    rounded to a multiple of the patch. ``long_round``: the same from
    ``long_side``. ``square``: ``size`` x ``size`` (rounded to the patch).
    ``short_floor64``: DINO's rule: the short side is ``short_side``, the long
    side ``int((short_side * long / short) // 64 * 64)``. ``fixed``:
    ``fixed_size`` (height, width) whatever the frame's shape.
    ``native_round``: the frame's own size, each side rounded to a multiple
    of the patch (videowalk's ``--cropSize -1`` for a ViT).
    ``long_floor64``: CropMAE's one-value crop size: the long side is
    ``long_side``, the short side ``int(short * long_side / long) // 64 * 64``.
``frame_resize``
    ``pil_bilinear`` (PIL's bilinear filter, antialiased when shrinking) or
    ``cv2_linear`` (cv2.INTER_LINEAR: half-pixel bilinear, no antialiasing;
    computed in float32 and rounded, where cv2 uses fixed-point arithmetic:
    at most one grey level apart).
``labels_in`` (frame 0's ids to the feature grid)
    ``bilinear``: one-hot, then bilinear with half-pixel centres.
    ``pil_nearest``: the id map resized with PIL's nearest filter, then
    one-hot (DINO). ``input_nearest_bilinear``: the id map resized to the
    input size with nearest (cv2 INTER_NEAREST, as PIL's), one-hot, then
    bilinear to the grid (CropMAE).
``labels_out`` (soft labels on the grid to ids at image size) and ``norm_mask``
    ``bilinear``: bilinear straight to the image size, argmax.
    ``input_nearest``: bilinear to the input size (grid x patch), argmax,
    then PIL nearest to the image size (DINO). ``norm_mask`` rescales each
    channel to [0, 1] (min-max over the frame) before the argmax, as DINO's
    ``norm_mask``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from siammae_jax.eval import propagation

RESIZE_RULES = (
    "short_round",
    "long_round",
    "square",
    "short_floor64",
    "fixed",
    "native_round",
    "long_floor64",
)
FRAME_RESIZE = ("pil_bilinear", "cv2_linear")
LABELS_IN = ("bilinear", "pil_nearest", "input_nearest_bilinear")
LABELS_OUT = ("bilinear", "input_nearest")


def _round(side: float, patch: int) -> int:
    return max(patch, round(side / patch) * patch)


def input_size(height: int, width: int, patch: int, cfg) -> tuple[int, int]:
    """The encoder's input (height, width) for a frame of ``height x width``
    under ``cfg.resize`` (see the module doc).

    Raises:
      ValueError: an unknown rule, or a rule whose size is not a multiple of
        the patch (``fixed``, ``short_floor64``'s short side).
    """
    rule = cfg.resize
    if rule == "short_round" or rule == "long_round":
        side = cfg.short_side if rule == "short_round" else cfg.long_side
        ref = min(height, width) if rule == "short_round" else max(height, width)
        scale = side / ref
        return _round(height * scale, patch), _round(width * scale, patch)
    if rule == "square":
        return _round(cfg.size, patch), _round(cfg.size, patch)
    if rule == "native_round":
        return _round(height, patch), _round(width, patch)
    if rule == "short_floor64":
        short = cfg.short_side
        if height > width:
            size = (int((short * height / width) // 64 * 64), short)
        else:
            size = (short, int((short * width / height) // 64 * 64))
    elif rule == "long_floor64":
        long = cfg.long_side
        if width > height:
            size = (int(height * long / width) // 64 * 64, long)
        else:
            size = (long, int(width * long / height) // 64 * 64)
    elif rule == "fixed":
        size = tuple(int(s) for s in cfg.fixed_size)
    else:
        raise ValueError(f"resize must be one of {RESIZE_RULES}, got {rule!r}")
    if min(size) < patch or size[0] % patch or size[1] % patch:
        raise ValueError(
            f"resize {rule!r} gives {size[0]}x{size[1]} for a {height}x{width} "
            f"frame: not a positive multiple of the patch size {patch}"
        )
    return size


def resize_frames(
    frames: np.ndarray, size: tuple[int, int], method: str = "pil_bilinear"
) -> np.ndarray:
    """uint8 frames [T, H, W, 3] resized to ``size`` (h, w) by ``method``."""
    if method not in FRAME_RESIZE:
        raise ValueError(f"frame_resize must be one of {FRAME_RESIZE}, got {method!r}")
    if frames.shape[1:3] == tuple(size):
        return frames
    if method == "pil_bilinear":
        return np.stack(
            [
                np.asarray(
                    Image.fromarray(f).resize(size[::-1], Image.Resampling.BILINEAR)
                )
                for f in frames
            ]
        )
    return np.stack([_linear_uint8(f, tuple(size)) for f in frames])


@functools.partial(jax.jit, static_argnums=1)
def _linear_uint8(frame: jax.Array, size: tuple[int, int]) -> jax.Array:
    shape = (*size, frame.shape[-1])
    out = jax.image.resize(frame.astype(jnp.float32), shape, "linear", antialias=False)
    return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


def nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 id map [H, W] resized to ``size`` (h, w) with PIL's nearest filter."""
    image = Image.fromarray(np.asarray(ids, np.uint8))
    return np.asarray(image.resize(size[::-1], Image.Resampling.NEAREST))


def labels_in(
    ids: np.ndarray,
    classes: np.ndarray,
    grid: tuple[int, int],
    method: str,
    input_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Frame 0's [H, W] label ids as [h, w, C] soft labels on the feature grid.

    Args:
      ids: [H, W] integer labels.
      classes: the C label values, channel c holding ``classes[c]``.
      grid: (h, w) of the feature grid.
      method: see ``LABELS_IN`` and the module doc.
      input_hw: the encoder's input size (``input_nearest_bilinear`` only).
    """
    classes = np.asarray(classes)
    if method == "input_nearest_bilinear":
        ids, method = nearest(ids, input_hw), "bilinear"
    if method == "bilinear":
        onehot = (ids[..., None] == classes).astype(np.float32)
        return propagation.labels_to_grid(onehot, grid)
    if method == "pil_nearest":
        return (nearest(ids, grid)[..., None] == classes).astype(np.float32)
    raise ValueError(f"labels_in must be one of {LABELS_IN}, got {method!r}")


def norm_mask(soft: np.ndarray) -> np.ndarray:
    """Each channel of [H, W, C] min-max scaled to [0, 1] where its maximum is
    positive (DINO's ``norm_mask``); a channel that is then constant becomes 0
    (where DINO divides by zero)."""
    soft = np.array(soft, np.float32)
    for c in range(soft.shape[-1]):
        channel = soft[..., c]
        if channel.max() > 0:
            channel = channel - channel.min()
            top = channel.max()
            soft[..., c] = channel / top if top > 0 else 0.0
    return soft


def labels_out(
    soft: np.ndarray,
    size: tuple[int, int],
    input_hw: tuple[int, int],
    method: str,
    normalize: bool = False,
) -> np.ndarray:
    """Soft labels [h, w, C] on the grid -> channel indices [H, W] (int).

    Args:
      soft: [h, w, C] propagated labels.
      size: (H, W) of the image the result is scored at.
      input_hw: (height, width) the encoder saw (``input_nearest`` only).
      method: ``bilinear`` or ``input_nearest`` (see the module doc).
      normalize: apply :func:`norm_mask` before the argmax.
    """
    if method not in LABELS_OUT:
        raise ValueError(f"labels_out must be one of {LABELS_OUT}, got {method!r}")
    at = tuple(size) if method == "bilinear" else tuple(input_hw)
    up = propagation.grid_to_labels(soft, at)
    if normalize:
        up = norm_mask(up)
    index = up.argmax(-1)
    if method == "bilinear" or at == tuple(size):
        return index
    if index.max() > 255:
        raise ValueError("input_nearest handles at most 256 label channels")
    return nearest(index.astype(np.uint8), size).astype(index.dtype)
