"""Pair sampling and augmentation: two frames of a video, or two crops of one.

:class:`PairSampler` (``data.pairs=frames``, SiamMAE's minimal recipe): one
decoded video yields ``repeats`` pairs (repeated sampling). For each pair the
gap is drawn uniformly in [min_gap, max_gap] frames at ``ref_fps`` (the
paper's 4-48 frames at 30 fps), converted to the video's own frame rate and
clipped to its length; f1 comes before f2. Both frames of a pair get the same
random-resized crop (scale, aspect ratio) and the same horizontal flip.

:class:`CropSampler` (``data.pairs=crops``, CropMAE's global-to-local views):
f1 and f2 are two crops of one image or of one video frame, f2 a crop of f1.
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


def random_resized_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width): a random-resized crop box.

    torchvision's ``RandomResizedCrop`` draw: area uniform in ``scale`` (a
    fraction of the frame's) and log-aspect (width / height) uniform in
    ``ratio``; up to 10 tries, then a centre crop with the aspect ratio
    clamped to ``ratio``; the box's place is uniform over the frame.
    """
    area = height * width
    log_ratio = np.log(ratio)
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(
    frame: np.ndarray, box: tuple[int, int, int, int], size: int
) -> np.ndarray:
    """``box`` (top, left, height, width) of a uint8 frame, resized to
    ``size`` x ``size`` (Pillow's bilinear, antialiased when shrinking)."""
    top, left, h, w = (int(v) for v in box)
    image = Image.fromarray(frame).resize(
        (size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)
    )
    return np.asarray(image)


def _range_checks(name: str, value: tuple[float, float], upper: float | None):
    """(ok, message) of a (low, high) range field: 0 < low <= high [<= upper]."""
    low, high = value
    if upper is None:
        return (0 < low <= high, f"{name}={value} must satisfy 0 < low <= high")
    return (
        0 < low <= high <= upper,
        f"{name}={value} must satisfy 0 < low <= high <= {upper:g}",
    )


def _raise_first(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def _read_frames(video: Video, indices: np.ndarray) -> dict[int, np.ndarray]:
    """{index: uint8 frame} of the distinct ``indices``, each decoded once.

    Raises:
      BadVideoError: the decoder fails or returns frames of a wrong shape.
    """
    wanted = np.unique(indices)
    decoded = video.read(wanted.tolist())
    if decoded.ndim != 4 or decoded.shape[0] != len(wanted) or decoded.shape[-1] != 3:
        raise BadVideoError(video.path, f"decoder returned shape {decoded.shape}")
    return {int(i): f for i, f in zip(wanted, decoded, strict=True)}


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
            _range_checks("scale", self.scale, 1),
            _range_checks("ratio", self.ratio, None),
            (self.repeats >= 1, f"repeats={self.repeats} must be >= 1"),
        ]
        _raise_first(checks)

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
        """(top, left, crop_height, crop_width): see :func:`random_resized_box`."""
        return random_resized_box(height, width, self.scale, self.ratio, rng)

    def crop_resize(
        self, frame: np.ndarray, box: tuple[int, int, int, int], flip: bool
    ) -> np.ndarray:
        """Crops ``box`` from a uint8 frame, resizes to ``size`` (bilinear), flips."""
        out = resized_crop(frame, box, self.size)
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
        lookup = _read_frames(video, indices)
        height, width = lookup[int(indices[0, 0])].shape[:2]
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


@dataclasses.dataclass(frozen=True)
class CropSampler:
    """Samples ``repeats`` crop pairs of one frame (CropMAE's global-to-local).

    Per pair (the order of the random draws): a frame uniformly at random (an
    image has one); f1, the global view, is a random-resized crop of the frame
    (``scale``, ``ratio``) resized to ``size``; f2, the local view, is a
    random-resized crop of f1 (``local_scale``, ``local_ratio``) resized to
    ``size``, so f2 always lies inside f1; then f1 and f2 are each flipped
    horizontally with probability 0.5, independently. The model sees f1 whole
    and reconstructs f2 from its few visible patches.

    Attributes:
      size: output height and width in pixels.
      scale, ratio: f1's crop of the frame (area fraction, width / height).
      local_scale, local_ratio: f2's crop of f1.
      flip: flip each view horizontally with probability 0.5.
      repeats: pairs drawn per record (each from its own frame of a video).
    """

    size: int = 224
    scale: tuple[float, float] = (0.1, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    local_scale: tuple[float, float] = (0.3, 0.6)
    local_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    repeats: int = 1

    def __post_init__(self):
        _raise_first(
            [
                (self.size >= 1, f"size={self.size} must be positive"),
                _range_checks("scale", self.scale, 1),
                _range_checks("ratio", self.ratio, None),
                _range_checks("local_scale", self.local_scale, 1),
                _range_checks("local_ratio", self.local_ratio, None),
                (self.repeats >= 1, f"repeats={self.repeats} must be >= 1"),
            ]
        )

    def views(
        self, frame: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One pair of one uint8 frame [H, W, 3].

        Returns:
          ``frames`` uint8 [2, size, size, 3] (f1, f2, flipped), ``boxes``
          [2, 4]: f1's box in the frame and f2's box in the unflipped f1 (top,
          left, height, width in pixels), ``flips`` bool [2].
        """
        height, width = frame.shape[:2]
        outer = random_resized_box(height, width, self.scale, self.ratio, rng)
        first = resized_crop(frame, outer, self.size)
        inner = random_resized_box(
            self.size, self.size, self.local_scale, self.local_ratio, rng
        )
        second = resized_crop(first, inner, self.size)
        flips = np.array([self.flip and rng.random() < 0.5 for _ in range(2)])
        views = [
            v[:, ::-1] if f else v for v, f in zip((first, second), flips, strict=True)
        ]
        return np.stack(views), np.array([outer, inner], np.int32), flips

    def __call__(self, video: Video, rng: np.random.Generator) -> dict:
        """Samples the pairs of one video or image (a one-frame video).

        Returns:
          ``frames`` uint8 [repeats, 2, size, size, 3], ``indices`` [repeats, 2]
          (the frame of both views, twice), ``crop`` [repeats, 2, 4] and
          ``flip`` bool [repeats, 2] (see :meth:`views`).

        Raises:
          BadVideoError: the video has no frame or cannot be decoded.
        """
        if video.num_frames < 1:
            raise BadVideoError(video.path, "no frames")
        chosen = rng.integers(0, video.num_frames, self.repeats)
        lookup = _read_frames(video, chosen)
        frames = np.empty((self.repeats, 2, self.size, self.size, 3), np.uint8)
        crops = np.empty((self.repeats, 2, 4), np.int32)
        flips = np.zeros((self.repeats, 2), bool)
        for r, index in enumerate(chosen):
            frames[r], crops[r], flips[r] = self.views(lookup[int(index)], rng)
        return {
            "frames": frames,
            "indices": np.stack([chosen, chosen], axis=1).astype(np.int32),
            "crop": crops,
            "flip": flips,
        }
