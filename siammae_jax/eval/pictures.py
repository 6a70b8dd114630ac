"""Every picture the library draws: label overlays and skeletons on frames,
reconstructions, decoder correspondence, attention heat maps, strips and grids."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw

from siammae_jax.data import pairs
from siammae_jax.datasets import davis
from siammae_jax.eval import learning
from siammae_jax.models import vit

PALETTE = davis.palette()

# JHMDB's 15 joints (0 neck, 1 belly, 2 face, 3/4 shoulders, 5/6 hips,
# 7/8 elbows, 9/10 knees, 11/12 wrists, 13/14 ankles) and their bones.
BONES = (
    (0, 2), (0, 1), (0, 3), (0, 4), (3, 7), (7, 11), (4, 8), (8, 12),
    (1, 5), (1, 6), (5, 9), (9, 13), (6, 10), (10, 14),
)  # fmt: skip


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends palette colours of non-zero ``labels`` [H, W] onto ``frame``."""
    colours = PALETTE[labels.astype(np.int64) % len(PALETTE)].astype(np.float32)
    mix = frame.astype(np.float32) * (1 - alpha) + colours * alpha
    return np.where(labels[..., None] > 0, mix, frame).astype(np.uint8)


def skeleton(frame: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """Draws joints [15, 2] (x, y) and their bones on a copy of ``frame``."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    r = max(1, frame.shape[0] // 80)
    for a, b in BONES:
        if np.isfinite(joints[[a, b]]).all():
            draw.line([tuple(joints[a]), tuple(joints[b])], fill=(255, 255, 0), width=r)
    for j, (x, y) in enumerate(joints):
        if np.isfinite([x, y]).all():
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(PALETTE[1 + j % 20]))
    return np.asarray(image)


def strip(images: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Images of one height side by side with white gaps."""
    h = images[0].shape[0]
    parts = []
    for i, image in enumerate(images):
        if i:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        parts.append(image)
    return np.concatenate(parts, axis=1)


def pick_frames(num_frames: int, count: int = 4) -> list[int]:
    """Evenly spaced frame indices, first and last included."""
    return sorted(
        {round(i * (num_frames - 1) / max(1, count - 1)) for i in range(count)}
    )


def save(path: str | os.PathLike, image: np.ndarray) -> None:
    Image.fromarray(image).save(path)


def captioned_column(
    panels: Sequence[tuple[str, np.ndarray]], width: int, caption_height: int = 16
) -> np.ndarray:
    """Panels stacked top to bottom, each scaled to ``width`` under its caption."""
    rows = []
    for caption, image in panels:
        h = max(1, round(image.shape[0] * width / image.shape[1]))
        scaled = Image.fromarray(image).resize((width, h), Image.Resampling.NEAREST)
        bar = Image.new("RGB", (width, caption_height), (255, 255, 255))
        ImageDraw.Draw(bar).text((4, 2), caption, fill=(0, 0, 0))
        rows += [np.asarray(bar), np.asarray(scaled.convert("RGB"))]
    return np.concatenate(rows, axis=0)


GREY = 128  # Masked patches in the reconstruction picture.


NORM_PIX_EPS = 1e-6  # As in ``siammae.norm_pix``.


def reconstruction_grid(
    f1: Any,
    f2: Any,
    mask: Any,
    pred: Any,
    target: Any,
    patch: int,
    norm_pix: bool,
    max_pairs: int = 4,
    *,
    separator: int = 0,
    ddof: int = 1,
) -> np.ndarray:
    """A picture of SiamMAE's reconstructions, one row per pair.

    Each row holds f1 | f2 with its masked patches grey | reconstruction |
    f2. The reconstruction keeps f2's visible patches and takes the masked
    ones from the prediction; with ``norm_pix`` a predicted patch is
    de-normalised with the mean and std of f2's true patch (as MAE's
    visualisation does).

    Args:
      f1, f2: [B, H, W, 3] frames, ImageNet-normalised.
      mask: [B, N], 1 where f2's patch is masked.
      pred: [B, N, patch*patch*3] predicted patches (``vit.patchify`` order).
      target: [B, N, patch*patch*3] the model's targets (checked for shape;
        the de-normalisation uses f2's pixels).
      patch: patch size in pixels.
      norm_pix: whether ``pred`` is in per-patch normalised units.
      max_pairs: at most this many (first) pairs are drawn.
      separator: width of white lines between cells (0: none).
      ddof: the norm-pix variance's delta degrees of freedom (the model's
        ``norm_pix_ddof``: 1, MAE's unbiased variance, or 0).

    Returns:
      uint8 [rows*H + (rows-1)*separator, 4*W + 3*separator, 3], rows =
      min(B, max_pairs).
    """
    f1, f2, mask, pred, target = (
        np.asarray(x, np.float32) for x in jax.device_get((f1, f2, mask, pred, target))
    )
    _check_grid_inputs(f1, f2, mask, pred, target, patch)
    rows = min(max_pairs, f2.shape[0])
    f1, f2, mask, pred = f1[:rows], f2[:rows], mask[:rows], pred[:rows]
    grid = (f2.shape[1] // patch, f2.shape[2] // patch)
    truth = vit.patchify(f2, patch)
    if norm_pix:
        mean = truth.mean(-1, keepdims=True)
        std = np.sqrt(truth.var(-1, ddof=ddof, keepdims=True) + NORM_PIX_EPS)
        pred = pred * std + mean
    masked = np.broadcast_to(mask[..., None] > 0.5, truth.shape)
    recon = vit.unpatchify(np.where(masked, pred, truth), patch, grid)
    pixel_masked = vit.unpatchify(masked, patch, grid)
    f2_pixels = _to_pixels(f2)
    cells = [
        _to_pixels(f1),
        np.where(pixel_masked, np.uint8(GREY), f2_pixels),
        _to_pixels(recon),
        f2_pixels,
    ]
    return _tile(cells, separator)


def _check_grid_inputs(f1, f2, mask, pred, target, patch: int) -> None:
    if f2.ndim != 4 or f2.shape[-1] != 3 or f1.shape != f2.shape:
        raise ValueError(f"f1 {f1.shape} and f2 {f2.shape} must both be [B, H, W, 3].")
    b, h, w, _ = f2.shape
    if h % patch or w % patch:
        raise ValueError(f"frame size {h}x{w} is not divisible by patch={patch}.")
    n = (h // patch) * (w // patch)
    if mask.shape != (b, n):
        raise ValueError(f"mask has shape {mask.shape}; expected {(b, n)}.")
    for name, x in (("pred", pred), ("target", target)):
        if x.shape != (b, n, patch * patch * 3):
            raise ValueError(
                f"{name} has shape {x.shape}; expected {(b, n, patch * patch * 3)}."
            )


def _to_pixels(x: np.ndarray) -> np.ndarray:
    """ImageNet-normalised floats -> uint8 [0, 255]."""
    x = (x * pairs.STD + pairs.MEAN) * 255.0
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _tile(cells: list[np.ndarray], separator: int) -> np.ndarray:
    """Columns of [rows, H, W, 3] uint8 cells -> one picture on white."""
    rows, h, w, _ = cells[0].shape
    cols = len(cells)
    out = np.full(
        (rows * h + (rows - 1) * separator, cols * w + (cols - 1) * separator, 3),
        255,
        np.uint8,
    )
    for r in range(rows):
        for c, cell in enumerate(cells):
            y, x = r * (h + separator), c * (w + separator)
            out[y : y + h, x : x + w] = cell[r]
    return out


def _box(image: Image.Image, cell: tuple[int, int], size: int, colour) -> None:
    y, x = cell[0] * size, cell[1] * size
    ImageDraw.Draw(image).rectangle(
        [x, y, x + size - 1, y + size - 1], outline=colour, width=max(1, size // 12)
    )


def correspondence_picture(
    apply: learning.Apply,
    held: learning.HeldOut,
    key: jax.Array,
    patch: int,
    scale: int = 4,
    per_row: int = 1,
) -> np.ndarray:
    """Where the last decoder block looks, for each held-out pair.

    Each pair shows f2 with a masked patch boxed in red (the valid one nearest
    the centre: its true source is visible in f1), then f1 darkened where that
    patch's cross-attention (heads averaged, last block) is low, with the
    attention peak boxed in yellow and the true source patch in green.
    ``per_row`` pairs side by side (8-px white gaps) in each row (2-px gaps).

    Returns:
      uint8 image; with ``per_row=1``, [pairs * (scale * H + 2) - 2,
      2 * scale * W + 2, 3] (pairs without a usable patch are left out).
    """
    x = pairs.normalize(held.frames)
    out = apply(x[:, 0], x[:, 1], key, True)
    attn = np.asarray(out.attention)[:, -1].mean(1)[..., 1:]  # [B, N, N]
    masked = np.asarray(out.mask) > 0
    height, width = held.frames.shape[2:4]
    h, w = height // patch, width // patch
    truth, seen = learning.true_patches(held, patch, (h, w))
    valid = seen & np.all((truth >= 0) & (truth < [h, w]), axis=-1) & masked
    own = np.stack(np.divmod(np.arange(h * w), w), -1)
    centre_distance = np.abs(own - (np.array([h, w]) - 1) / 2).sum(-1)
    size = patch * scale
    cells = []
    for b in range(len(held.frames)):
        if not valid[b].any():
            continue
        q = int(np.argmin(np.where(valid[b], centre_distance, np.inf)))
        f2 = Image.fromarray(held.frames[b, 1]).resize((width * scale, height * scale))
        _box(f2, tuple(own[q]), size, (255, 0, 0))
        heat = attn[b, q].reshape(h, w) / attn[b, q].max()
        heat = np.kron(heat, np.ones((size, size)))[..., None]
        f1 = np.asarray(
            Image.fromarray(held.frames[b, 0]).resize((width * scale, height * scale))
        )
        f1 = Image.fromarray((f1 * (0.25 + 0.75 * heat)).astype(np.uint8))
        peak = int(attn[b, q].argmax())
        _box(f1, (peak // w, peak % w), size, (255, 220, 0))
        _box(f1, tuple(truth[b, q]), size, (0, 220, 0))
        cells.append(strip([np.asarray(f2), np.asarray(f1)]))
    if not cells:
        raise ValueError("no held-out pair has a masked f2 patch visible in f1.")
    blank = np.full_like(cells[0], 255)
    cells += [blank] * (-len(cells) % per_row)
    rows = [strip(cells[i : i + per_row], gap=8) for i in range(0, len(cells), per_row)]
    gap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([r for row in rows for r in (gap, row)][1:], axis=0)


def heat(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A [h, w] map -> an RGB heat picture at ``size`` (min-max scaled)."""
    lo, hi = amap.min(), amap.max()
    x = (amap - lo) / max(hi - lo, 1e-12)
    image = Image.fromarray((x * 255).astype(np.uint8)).resize(
        size[::-1], Image.Resampling.BILINEAR
    )
    v = np.asarray(image, np.float32) / 255.0
    # A blue -> yellow ramp, readable in print and for most colour blindness.
    rgb = np.stack([v, v**0.8, 1.0 - v], axis=-1) * 255
    return rgb.astype(np.uint8)


def blend(frame: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    mix = frame.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha
    return mix.astype(np.uint8)
