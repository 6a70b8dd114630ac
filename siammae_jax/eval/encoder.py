"""Frozen encoders for evaluation: features, and the random-init baseline.

Trained encoders come from :func:`siammae_jax.weights.load_encoder` (any
checkpoint or export). ``random_encoder`` gives the random-init baseline of a
named size. ``FeatureExtractor`` turns frames into L2-normalised patch
features with one jit-compiled function per input size, batched over frames.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from siammae_jax.data import pairs
from siammae_jax.models import vit

# Short names accepted by ``--random`` (and the training configs' names).
NAMED = {"vits16": "S/16", "vits8": "S/8", "vitb16": "B/16", "vitl16": "L/16"}


def random_encoder(size: str, image_size: int = 224, seed: int = 0) -> vit.ViT:
    """A randomly initialised encoder (``vits16`` or ``S/16``): the baseline."""
    variant = NAMED.get(size, size)
    return vit.ViT(variant, image_size=image_size, rngs=nnx.Rngs(seed))


class FeatureExtractor:
    """uint8 frames [N, H, W, 3] -> L2-normalised patch features [N, h, w, D].

    Frames are normalised with ``mean`` and ``std`` (ImageNet's by default;
    an evaluation protocol may name others), encoded in batches of
    ``batch_size`` (the last batch padded, so each input size compiles once)
    in float32, with the position embeddings resampled by ``pos_interp``
    (the model's own rule when None; see ``vit.resample_pos_embed``).
    """

    def __init__(
        self,
        model: vit.ViT,
        batch_size: int = 8,
        mean=pairs.MEAN,
        std=pairs.STD,
        pos_interp: str | None = None,
    ):
        self.patch = model.patch
        self.batch_size = batch_size
        graphdef, state = nnx.split(model)
        mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

        @jax.jit
        def features(state, frames):
            model = nnx.merge(graphdef, state)
            if pos_interp is not None:
                model.pos_interp = pos_interp
            return model.features(pairs.normalize(frames, mean, std))

        self._state = state
        self._features: Callable = features

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        h, w = frames.shape[1:3]
        if h % self.patch or w % self.patch:
            raise ValueError(
                f"input size {h}x{w} is not a multiple of the patch size {self.patch}."
            )
        return in_batches(
            lambda chunk: np.asarray(self._features(self._state, chunk)),
            frames,
            self.batch_size,
        )


def in_batches(
    fn: Callable[[np.ndarray], np.ndarray], frames: np.ndarray, batch_size: int
) -> np.ndarray:
    """``fn`` over batches of exactly ``batch_size`` frames (the last one padded
    with copies of its last frame, so one shape compiles), outputs joined."""
    out = []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start : start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
        out.append(fn(chunk)[: batch_size - pad])
    return np.concatenate(out)
