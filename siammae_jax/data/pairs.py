"""Frame-pair sampling and augmentation (SiamMAE's minimal recipe).

One decoded video yields ``repeats`` pairs (repeated sampling). For each pair
the gap is drawn uniformly in [min_gap, max_gap] frames at ``ref_fps`` (the
paper's 4-48 frames at 30 fps), converted to the video's own frame rate and
clipped to its length; f1 comes before f2. Both frames of a pair get the same
random-resized crop (scale, aspect ratio) and the same horizontal flip.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from PIL import Image

from siammae_jax.data.video import BadVideoError, Video

# ImageNet statistics, used by the paper's evaluation and by MAE's training.
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize(frames: Any, mean: Any = MEAN, std: Any = STD) -> Any:
    """uint8 RGB -> float32 normalised with ImageNet mean and std.

    The one normalisation of the model's inputs (data pipeline, train step,
    evaluation; an evaluation protocol may name other statistics, e.g. DINO's
    std 0.228 for red). Other dtypes are taken as normalised already and only
    cast to float32. NumPy arrays give NumPy arrays; jax arrays (and tracers,
    so on device inside ``jit``) give jax arrays.
    """
    if isinstance(frames, np.ndarray | np.generic):
        xp = np
    else:
        import jax.numpy as xp  # Only where jax arrays come in.
    if frames.dtype != np.uint8:
        return frames.astype(xp.float32)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return (frames.astype(xp.float32) / 255.0 - mean) / std


@dataclasses.dataclass(frozen=True)
class PairSampler:
    """Samples ``repeats`` augmented frame pairs from one video.

    Attributes:
      size: output height and width in pixels.
      min_gap, max_gap: frame gap range at ``ref_fps`` (inclusive).
      ref_fps: frame rate at which the gaps are expressed.
      scale: range of the crop's area as a fraction of the frame's.
      ratio: range of the crop's aspect ratio (width / height).
      flip: flip both frames horizontally with probability 0.5.
      repeats: pairs drawn per decoded video.
    """

    size: int = 224
    min_gap: int = 4
    max_gap: int = 48
    ref_fps: float = 30.0
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    repeats: int = 2

    def __post_init__(self):
        checks = [
            (self.size >= 1, f"size={self.size} must be positive"),
            (self.min_gap >= 1, f"min_gap={self.min_gap} must be >= 1"),
            (
                self.max_gap >= self.min_gap,
                f"max_gap={self.max_gap} must be >= min_gap={self.min_gap}",
            ),
            (self.ref_fps > 0, f"ref_fps={self.ref_fps} must be positive"),
            (
                0 < self.scale[0] <= self.scale[1] <= 1,
                f"scale={self.scale} must satisfy 0 < low <= high <= 1",
            ),
            (
                0 < self.ratio[0] <= self.ratio[1],
                f"ratio={self.ratio} must satisfy 0 < low <= high",
            ),
            (self.repeats >= 1, f"repeats={self.repeats} must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def gap_range(self, num_frames: int, fps: float) -> tuple[int, int]:
        """Allowed gaps in the video's own frames, clipped to its length.

        Raises:
          ValueError: when the video is shorter than the minimum gap.
        """
        factor = fps / self.ref_fps
        low = max(1, round(self.min_gap * factor))
        high = min(num_frames - 1, max(low, round(self.max_gap * factor)))
        if high < low:
            raise ValueError(
                f"too short: {num_frames} frames at {fps:g} fps, "
                f"the minimum gap is {low} frames"
            )
        return low, high

    def sample_indices(
        self, num_frames: int, fps: float, rng: np.random.Generator
    ) -> np.ndarray:
        """[repeats, 2] frame indices (f1, f2) with f1 < f2."""
        low, high = self.gap_range(num_frames, fps)
        gaps = rng.integers(low, high + 1, self.repeats)
        first = rng.integers(0, num_frames - gaps)  # per pair, in [0, n - gap)
        return np.stack([first, first + gaps], axis=1)

    def sample_crop(
        self, height: int, width: int, rng: np.random.Generator
    ) -> tuple[int, int, int, int]:
        """(top, left, crop_height, crop_width): a random-resized crop box.

        Area and log-aspect uniform in ``scale`` and ``ratio``; up to 10 tries,
        then a centre crop with the aspect ratio clamped to ``ratio``.
        """
        area = height * width
        log_ratio = np.log(self.ratio)
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def crop_resize(
        self, frame: np.ndarray, box: tuple[int, int, int, int], flip: bool
    ) -> np.ndarray:
        """Crops ``box`` from a uint8 frame, resizes to ``size`` (bilinear), flips."""
        top, left, h, w = box
        image = Image.fromarray(frame).resize(
            (self.size, self.size),
            Image.Resampling.BILINEAR,
            box=(left, top, left + w, top + h),
        )
        out = np.asarray(image)
        return out[:, ::-1] if flip else out

    def __call__(self, video: Video, rng: np.random.Generator) -> dict:
        """Samples the pairs of one video.

        Returns:
          ``frames`` uint8 [repeats, 2, size, size, 3], ``indices`` [repeats, 2],
          ``crop`` [repeats, 4] (top, left, height, width in source pixels),
          ``flip`` bool [repeats].

        Raises:
          BadVideoError: the video is too short or cannot be decoded.
        """
        try:
            indices = self.sample_indices(video.num_frames, video.fps, rng)
        except ValueError as e:
            raise BadVideoError(video.path, str(e)) from None
        wanted = np.unique(indices)
        decoded = video.read(wanted.tolist())
        if (
            decoded.ndim != 4
            or decoded.shape[0] != len(wanted)
            or decoded.shape[-1] != 3
        ):
            raise BadVideoError(video.path, f"decoder returned shape {decoded.shape}")
        lookup = {int(i): f for i, f in zip(wanted, decoded, strict=True)}
        height, width = decoded.shape[1:3]
        frames = np.empty((self.repeats, 2, self.size, self.size, 3), np.uint8)
        crops = np.empty((self.repeats, 4), np.int32)
        flips = np.zeros(self.repeats, bool)
        for r, pair in enumerate(indices):
            crops[r] = self.sample_crop(height, width, rng)
            flips[r] = self.flip and rng.random() < 0.5
            for k in range(2):
                frames[r, k] = self.crop_resize(
                    lookup[int(pair[k])], crops[r], flips[r]
                )
        return {
            "frames": frames,
            "indices": indices.astype(np.int32),
            "crop": crops,
            "flip": flips,
        }
