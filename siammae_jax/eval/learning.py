"""Did pre-training learn correspondence? Three measures on held-out videos.

a. **Past-frame use**: the masked-patch loss with the true f1 against the same
   f2 and mask with f1 taken from another video. A model that learned to copy
   from the past frame has a clear gap.
b. **Decoder correspondence**: for each masked f2 patch, the f1 patch with the
   highest cross-attention (heads averaged) against the true position given by
   the synthetic motion; the fraction within one patch (Chebyshev distance <= 1
   on the patch grid) for every decoder block (the last one is the headline),
   the chance rate of a uniformly random guess, and the rate of the
   *same-position* guess (f2 patch (r, c) -> f1 patch (r, c)), which a model
   can reach by copying without following motion.
c. **Encoder features**: DAVIS J&F of label propagation with the frozen
   encoder (``siammae_jax.eval.tasks.run_davis``), pre-trained vs random init.

(a) and (b) work on un-augmented pairs of the synthetic videos
(``heldout_pairs``) whose true motion is known.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

from siammae_jax.data import pairs as pairs_lib
from siammae_jax.data import synthetic

# (f1, f2, key, return_attention) -> siammae.Output; normalised float frames.
Apply = Callable[..., object]


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


def heldout_pairs(
    seed: int, videos: int, size: int, frames: int = 24, gap: int = 8
) -> HeldOut:
    """Pairs (frame t, frame t + gap) of ``videos`` synthetic videos."""
    t1 = (frames - 1 - gap) // 2
    vids = [synthetic.make_video(seed, i, frames, (size, size)) for i in range(videos)]
    stack = np.stack([v.frames[[t1, t1 + gap]] for v in vids])
    return HeldOut(stack, tuple(v.motion() for v in vids), t1, t1 + gap)


def past_frame_use(apply: Apply, held: HeldOut, key: jax.Array) -> tuple[float, float]:
    """(loss with the true f1, loss with f1 from the next video): same f2, same mask."""
    x = pairs_lib.normalize(held.frames)
    f1, f2 = x[:, 0], x[:, 1]
    true = float(apply(f1, f2, key, False).loss)
    other = float(apply(np.roll(f1, 1, axis=0), f2, key, False).loss)
    return true, other


def _true_patches(held: HeldOut, patch: int, grid: tuple[int, int]):
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
    """Decoder correspondence (b): fractions of valid masked f2 patches.

    blocks: per decoder block, attended within 1 patch of the true position.
    chance: expected rate of a uniformly random f1 patch.
    same_position: rate of the f1 patch at the f2 patch's own position.
    """

    blocks: tuple[float, ...]
    chance: float
    same_position: float

    @property
    def last(self) -> float:
        """The headline figure: the last decoder block's rate."""
        return self.blocks[-1]

    def scalars(self) -> dict[str, float]:
        """Flat names for metrics.jsonl / TensorBoard."""
        out = {"correspondence": self.last, "correspondence_chance": self.chance}
        out["correspondence_same_position"] = self.same_position
        for i, value in enumerate(self.blocks):
            out[f"correspondence_block{i}"] = value
        return out


def decoder_correspondence(
    apply: Apply, held: HeldOut, key: jax.Array, patch: int
) -> Correspondence:
    """Per-block fractions of masked f2 patches attended within 1 patch of the truth.

    ``apply(f1, f2, key, True).attention`` is [B, blocks, heads, N, 1+N].
    """
    x = pairs_lib.normalize(held.frames)
    out = apply(x[:, 0], x[:, 1], key, True)
    h, w = held.frames.shape[2] // patch, held.frames.shape[3] // patch
    attn = np.asarray(out.attention).mean(2)[..., 1:]  # heads averaged, no [CLS]
    truth, visible = _true_patches(held, patch, (h, w))
    valid = visible & (np.asarray(out.mask) > 0)
    valid &= np.all((truth >= 0) & (truth < [h, w]), axis=-1)
    count = max(1, int(valid.sum()))

    def rate(guess):  # guess [B, N, 2] patch (row, col)
        hit = np.abs(guess - truth).max(-1) <= 1
        return float((hit & valid).sum() / count)

    best = attn.argmax(-1)  # [B, blocks, N]
    blocks = tuple(
        rate(np.stack([best[:, i] // w, best[:, i] % w], -1))
        for i in range(best.shape[1])
    )
    own = np.stack(np.divmod(np.arange(h * w), w), -1)  # f2 patch's own (row, col)
    rows = np.clip(truth[..., 0:1] + np.arange(-1, 2), 0, h - 1)
    cols = np.clip(truth[..., 1:2] + np.arange(-1, 2), 0, w - 1)
    # Chance: the share of the grid within Chebyshev distance 1 of the truth.
    near = np.array([[len(set(r)) * len(set(c)) for r, c in zip(rr, cc, strict=True)]
                     for rr, cc in zip(rows, cols, strict=True)])  # fmt: skip
    chance = float((near / (h * w))[valid].sum() / count)
    return Correspondence(blocks, chance, rate(np.broadcast_to(own, truth.shape)))
