"""Did pre-training learn correspondence? Three measures on held-out videos.

a. **Past-frame use**: the masked-patch loss with the true f1 against the same
   f2 and mask with f1 taken from another video. A model that learned to copy
   from the past frame has a clear gap. A third f1, the true one with its
   patches shuffled, keeps the frame's colours and patch statistics but not its
   layout: a model that only reads the past frame's palette loses nothing to
   the shuffle, one that copies from the right place does.
b. **Decoder correspondence**: for each f2 patch, the f1 patch with the
   highest cross-attention (heads averaged) against the true position given by
   the synthetic motion; the fraction within one patch (Chebyshev distance <= 1
   on the patch grid) for every decoder block, separately for visible f2
   patches (queries that carry content) and masked ones (the mask token plus
   position); the headline is the last block on visible patches. Against two
   baselines: the chance rate of a uniformly random guess, and the
   *same-position* guess (f2 patch (r, c) -> f1 patch (r, c)), which a model
   reaches by copying without following motion.
c. **Encoder features**: DAVIS J&F of label propagation with the frozen
   encoder (``siammae_jax.eval.tasks.run_davis``), pre-trained vs random init.

(a) and (b) work on un-augmented pairs of the synthetic videos
(``heldout_pairs``) whose true motion is known.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

from siammae_jax.data import pairs as pairs_lib
from siammae_jax.data import synthetic
from siammae_jax.models.definition import ModelDef

# (f1, f2, key, return_attention) -> siammae.Output; normalised float frames.
Apply = Callable[..., object]


def model_apply(model_def: ModelDef) -> Callable[..., object]:
    """``(params, f1, f2, key, attention)`` -> the model's output, jitted once
    per ``attention`` value; ``functools.partial(fn, params)`` is an ``Apply``.

    Args:
      model_def: a ``siammae_jax.models.definition.ModelDef``.
    """

    @functools.partial(jax.jit, static_argnums=4)
    def apply(params, f1, f2, key, attention):
        return model_def.apply(
            params, model_def.buffers, f1, f2, key, return_attention=attention
        )

    return apply


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """Un-augmented frame pairs of synthetic videos with their true motion.

    Attributes:
      frames: uint8 [B, 2, H, W, 3] (f1 = frame t1, f2 = frame t2 of video b).
      motions: each video's ``motion()`` arrays (affine, labels, ...).
      t1, t2: the frame indices of f1 and f2.
    """

    frames: np.ndarray
    motions: tuple[dict, ...]
    t1: int
    t2: int

    def first(self, n: int) -> HeldOut:
        """The first ``n`` pairs."""
        return dataclasses.replace(
            self, frames=self.frames[:n], motions=self.motions[:n]
        )


def heldout_pairs(
    seed: int,
    videos: int,
    size: int,
    frames: int = 24,
    gap: int = 12,
    style: str = "default",
) -> HeldOut:
    """Pairs (frame t, frame t + gap) of ``videos`` synthetic videos.

    A 64-px synthetic video moves a median point by ~1.2 px per frame of gap:
    at 4 frames (the ``tiny`` config's ``train.measure_gap``, inside its
    training gaps) the same-position guess is within one 8-px patch of the
    truth for every patch, at 12 frames for only ~1/3 of them.

    Raises:
      ValueError: ``gap`` outside [1, frames - 1].
    """
    if not 1 <= gap < frames:
        raise ValueError(f"gap={gap} frames must be in [1, {frames - 1}] ({frames=}).")
    t1 = (frames - 1 - gap) // 2
    vids = [
        synthetic.make_video(seed, i, frames, (size, size), style)
        for i in range(videos)
    ]
    stack = np.stack([v.frames[[t1, t1 + gap]] for v in vids])
    return HeldOut(stack, tuple(v.motion() for v in vids), t1, t1 + gap)


class PastFrame(NamedTuple):
    """Masked-patch losses (a) of the same f2 and mask with three past frames.

    true: the video's own f1.
    other: f1 of another video (the next one of the held-out set).
    shuffled: the own f1 with its patches permuted (no patch stays in place).
    """

    true: float
    other: float
    shuffled: float


def shuffle_patches(frames: np.ndarray, patch: int, seed: int = 0) -> np.ndarray:
    """[B, H, W, C] frames with their ``patch``-size tiles moved, none in place.

    Each frame gets its own cyclic permutation of a random tile order (a
    derangement), so colours and tile statistics stay and the layout goes.
    """
    b, height, width, c = frames.shape
    h, w = height // patch, width // patch
    if h * patch != height or w * patch != width or h * w < 2:
        raise ValueError(f"frames {frames.shape[1:3]} are not >= 2 tiles of {patch}")
    tiles = frames.reshape(b, h, patch, w, patch, c).transpose(0, 1, 3, 2, 4, 5)
    tiles = tiles.reshape(b, h * w, patch, patch, c)
    rng = np.random.default_rng(seed)
    out = np.empty_like(tiles)
    for i in range(b):
        order = rng.permutation(h * w)
        out[i, order] = tiles[i, np.roll(order, 1)]
    out = out.reshape(b, h, w, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(frames.shape)


def past_frame_use(
    apply: Apply, held: HeldOut, key: jax.Array, patch: int
) -> PastFrame:
    """Losses with the true, another video's and the patch-shuffled true f1."""
    x = pairs_lib.normalize(held.frames)
    f1, f2 = x[:, 0], x[:, 1]
    return PastFrame(
        true=float(apply(f1, f2, key, False).loss),
        other=float(apply(np.roll(f1, 1, axis=0), f2, key, False).loss),
        shuffled=float(apply(shuffle_patches(f1, patch), f2, key, False).loss),
    )


def true_patches(
    held: HeldOut, patch: int, grid: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """For every f2 patch centre: its true f1 patch (row, col) and visibility."""
    ys, xs = np.meshgrid(
        np.arange(grid[0]) * patch + (patch - 1) / 2,
        np.arange(grid[1]) * patch + (patch - 1) / 2,
        indexing="ij",
    )
    centres = np.stack([ys, xs], -1).reshape(-1, 2)
    where, seen = [], []
    for motion in held.motions:
        yx, visible = synthetic.true_position(motion, held.t2, held.t1, centres)
        where.append(np.floor(yx / patch).astype(int))
        seen.append(visible)
    return np.stack(where), np.stack(seen)  # [B, N, 2], [B, N]


class Correspondence(NamedTuple):
    """Decoder correspondence (b): fractions of f2 patches whose attention peak
    lies within 1 patch of the true position.

    masked: per decoder block, over masked f2 patches (mask-token queries).
    visible: per decoder block, over visible f2 patches (queries with content).
    chance: expected rate of a uniformly random f1 patch.
    same_position: rate of the f1 patch at the f2 patch's own position.
    """

    masked: tuple[float, ...]
    visible: tuple[float, ...]
    chance: float
    same_position: float

    @property
    def last(self) -> float:
        """The headline figure: the last decoder block, visible f2 patches."""
        return self.visible[-1]

    def scalars(self) -> dict[str, float]:
        """Flat names for metrics.jsonl / TensorBoard."""
        out = {"correspondence": self.last, "correspondence_chance": self.chance}
        out["correspondence_same_position"] = self.same_position
        for name in ("masked", "visible"):
            for i, value in enumerate(getattr(self, name)):
                out[f"correspondence_{name}_block{i}"] = value
        return out


def measures(
    apply: Apply, held: HeldOut, key: jax.Array, patch: int
) -> dict[str, float]:
    """Past-frame use and decoder correspondence of one model on ``held``, as
    the flat names of the training log (``past_frame_loss_*``,
    ``correspondence*``)."""
    past = past_frame_use(apply, held, key, patch)
    out = {f"past_frame_loss_{k}": v for k, v in past._asdict().items()}
    return {**out, **decoder_correspondence(apply, held, key, patch).scalars()}


def _near_share(truth: np.ndarray, h: int, w: int) -> np.ndarray:
    """[B, N] share of the h x w grid within Chebyshev distance 1 of ``truth``."""
    rows = np.minimum(truth[..., 0] + 1, h - 1) - np.maximum(truth[..., 0] - 1, 0) + 1
    cols = np.minimum(truth[..., 1] + 1, w - 1) - np.maximum(truth[..., 1] - 1, 0) + 1
    return rows * cols / (h * w)


def decoder_correspondence(
    apply: Apply, held: HeldOut, key: jax.Array, patch: int, draws: int = 4
) -> Correspondence:
    """Per-block rates of f2 patches attended within 1 patch of their true position.

    ``apply(f1, f2, key, True).attention`` is [B, blocks, heads, N, 1+N]; heads
    are averaged and the f1 [CLS] key ignored. ``draws`` mask draws (keys
    folded from ``key``) enlarge the sample of visible patches.
    """
    x = pairs_lib.normalize(held.frames)
    h, w = held.frames.shape[2] // patch, held.frames.shape[3] // patch
    truth, seen = true_patches(held, patch, (h, w))
    valid = seen & np.all((truth >= 0) & (truth < [h, w]), axis=-1)  # [B, N]
    own = np.stack(np.divmod(np.arange(h * w), w), -1)  # f2 patch's own (row, col)
    hits = {"masked": 0, "visible": 0}
    counts = {"masked": 0, "visible": 0}
    for k in range(draws):
        draw = key if key is None else jax.random.fold_in(key, k)
        out = apply(x[:, 0], x[:, 1], draw, True)
        best = np.asarray(out.attention).mean(2)[..., 1:].argmax(-1)  # [B, L, N]
        guess = np.stack([best // w, best % w], -1)  # [B, L, N, 2]
        hit = np.abs(guess - truth[:, None]).max(-1) <= 1  # [B, L, N]
        masked = np.asarray(out.mask) > 0
        for name, chosen in (("masked", masked), ("visible", ~masked)):
            where = (valid & chosen)[:, None]
            hits[name] = hits[name] + (hit & where).sum((0, 2))
            counts[name] += int(where.sum())
    rates = {
        name: tuple(float(v) for v in np.atleast_1d(hits[name]) / max(1, counts[name]))
        for name in hits
    }
    count = max(1, int(valid.sum()))
    same = np.abs(own - truth).max(-1) <= 1
    return Correspondence(
        masked=rates["masked"],
        visible=rates["visible"],
        chance=float(_near_share(truth, h, w)[valid].sum() / count),
        same_position=float((same & valid).sum() / count),
    )
