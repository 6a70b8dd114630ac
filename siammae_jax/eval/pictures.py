"""Pictures of evaluation results: label overlays and skeletons on frames."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from siammae_jax.eval import davis

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


def save(path, image: np.ndarray) -> None:
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
