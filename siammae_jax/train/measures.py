"""What the loop measures besides the loss: the learning measures on held-out
synthetic videos (``train.measure_every``) and the reconstruction pictures
(``train.image_every``), each with its own random stream of ``config.seed``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np

from siammae_jax.data import pairs
from siammae_jax.eval import learning, pictures
from siammae_jax.models.definition import ModelDef

# Every random stream of a run, as an offset to ``config.seed``: one use each,
# so no two uses share draws. The train step's masks use the seed itself
# (folded with the step); the held-out videos sit far from the small seeds
# that runs take, so they never equal a training set's synthetic videos.
SEED_OFFSETS = {
    "train": 0,  # the train step's masks: fold_in(key(seed), step)
    "pictures": 1,  # the masks of the reconstruction pictures, per step
    "measure_masks": 2,  # the masks of the learning measures, per step
    "heldout_videos": 1000,  # the held-out synthetic videos of the measures
}


def seed(run_seed: int, use: str) -> int:
    """The seed of ``use`` (a key of :data:`SEED_OFFSETS`) in a run seeded
    ``run_seed``."""
    return run_seed + SEED_OFFSETS[use]


def step_key(run_seed: int, use: str, step: int) -> jax.Array:
    """The key of ``use`` at ``step``: ``fold_in(key(seed(...)), step)``."""
    return jax.random.fold_in(jax.random.key(seed(run_seed, use)), step)


def make_predict(model_def: ModelDef, run_seed: int) -> Callable:
    """Jitted ``(params, buffers, uint8 frames, step) -> (frames, Output)``."""

    @jax.jit
    def predict(params, buffers, frames, step):
        x = pairs.normalize(frames)
        key = step_key(run_seed, "pictures", step)
        return x, model_def.apply(params, buffers, x[:, 0], x[:, 1], key)

    return predict


def reconstruction(
    predict: Callable,
    model_def: ModelDef,
    params,
    frames,
    step: int,
    norm_pix: bool,
) -> dict[str, np.ndarray]:
    """f1 | masked f2 | reconstruction | f2 for the first pairs of ``frames``."""
    out_frames, out = predict(params, model_def.buffers, frames[:4], step)
    out_frames, out = jax.device_get((out_frames, out))
    grid = pictures.reconstruction_grid(
        out_frames[:, 0],
        out_frames[:, 1],
        out.mask,
        out.pred,
        out.target,
        patch=model_def.patch,
        norm_pix=norm_pix,
    )
    return {"reconstruction": grid}


def make_measures(
    model_def: ModelDef,
    *,
    run_seed: int,
    videos: int,
    image_size: int,
    gap: int,
) -> Callable[..., dict[str, float]]:
    """``measure(params, step)``: past-frame use and decoder correspondence on
    ``videos`` held-out synthetic videos (see :mod:`siammae_jax.eval.learning`).
    """
    held = learning.heldout_pairs(
        seed(run_seed, "heldout_videos"), videos, image_size, gap=gap
    )
    apply = learning.model_apply(model_def)

    def measure(params, step: int) -> dict[str, float]:
        key = step_key(run_seed, "measure_masks", step)
        fn = functools.partial(apply, params)
        return learning.measures(fn, held, key, model_def.patch)

    return measure
