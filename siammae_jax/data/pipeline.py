"""The grain input pipeline: videos -> shuffled, host-sharded batches of pairs.

Random access first, iterator last (grain's recommended layout)::

    range(num_videos) -> host shard -> shuffle(seed) -> repeat
      -> random_map(PairMaker)          # decode 2 x repeats frames, augment
      -> batch(per-host pairs / repeats) # in the MapDataset: same batches
      -> to_iter_dataset -> mp_prefetch  # whatever the number of workers

Every random choice comes from the rng that grain derives from the seed and
the record's position, so the iterator state is small and exact (saved and
restored with ``get_state`` / ``set_state``, or grain's orbax handler).

Bad videos (corrupt, truncated, empty, unreadable, shorter than the minimum
gap) never stop the pipeline and never yield a wrong pair: the record is
replaced by the next readable video, logged with its path and reason, and
counted in the batch's ``skipped`` field (each bad video once per epoch).
"""

from __future__ import annotations

import ctypes
import signal
import sys
from typing import Any

import grain
import numpy as np
from absl import logging

from siammae_jax.data import pairs
from siammae_jax.data.video import BadVideoError


class PairMaker:
    """Random map: record index -> ``repeats`` pairs of a readable video."""

    def __init__(self, source: Any, sampler: pairs.PairSampler, max_retries: int = 32):
        self.source = source
        self.sampler = sampler
        self.max_retries = max_retries

    def __repr__(self) -> str:
        return f"PairMaker({self.source!r}, {self.sampler!r}, {self.max_retries})"

    def _try(self, index: int, rng: np.random.Generator) -> dict | BadVideoError:
        try:
            return self.sampler(self.source[index], rng)
        except BadVideoError as e:
            return e

    def __call__(self, index: int, rng: np.random.Generator) -> dict:
        n = len(self.source)
        for k in range(self.max_retries + 1):
            j = (index + k) % n
            out = self._try(j, rng)
            if not isinstance(out, BadVideoError):
                out["video"] = np.full(self.sampler.repeats, j, np.int32)
                out["skipped"] = np.int32(k > 0)  # this record's own video was bad
                return out
            if k == 0:
                logging.warning("skipping video %s: %s", out.path, out.reason)
        raise RuntimeError(
            f"no readable video among {self.max_retries + 1} consecutive records "
            f"of {self.source!r} from index {index}; last error: {out}"
        )


def collate(items: list[dict], normalize: bool) -> dict:
    """Stacks per-video items into a batch of pairs ([B, 2, H, W, 3])."""
    frames = np.concatenate([it["frames"] for it in items])
    batch = {
        "frames": pairs.normalize(frames) if normalize else frames,
        "indices": np.concatenate([it["indices"] for it in items]),
        "crop": np.concatenate([it["crop"] for it in items]),
        "flip": np.concatenate([it["flip"] for it in items]),
        "video": np.concatenate([it["video"] for it in items]),
        "skipped": np.int32(sum(int(it["skipped"]) for it in items)),
    }
    return batch


class _Collate:
    """Picklable ``batch_fn`` (worker processes need importable callables)."""

    def __init__(self, normalize: bool):
        self.normalize = normalize

    def __call__(self, items):
        return collate(list(items), self.normalize)


def make_pipeline(
    source: Any,
    *,
    batch_size: int,
    sampler: pairs.PairSampler | None = None,
    seed: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    num_workers: int = 0,
    normalize: bool = False,
    max_retries: int = 32,
) -> grain.IterDataset:
    """Builds the pair pipeline over a random-access video source.

    Args:
      source: a source of ``siammae_jax.data.sources`` (one record = one video).
      batch_size: pairs per batch on this host; a multiple of ``repeats``.
      sampler: pair sampling and augmentation (default: the paper's).
      seed: shuffling and augmentation seed (same seed => same batches).
      shard_index, shard_count: this host's shard (``jax.process_index()``,
        ``jax.process_count()``); shards are disjoint and cover the videos.
      num_epochs: passes over the data, None for endless.
      num_workers: decoding processes (0 = in the calling process).
      normalize: float32 ImageNet-normalised frames instead of uint8.
      max_retries: consecutive bad videos tolerated before failing.

    Returns:
      A ``grain.IterDataset`` of dicts: ``frames`` [B, 2, S, S, 3], ``indices``
      [B, 2], ``crop`` [B, 4], ``flip`` [B], ``video`` [B] (source index of
      each pair's video) and ``skipped`` (bad videos replaced in this batch).
    """
    sampler = sampler or pairs.PairSampler()
    _check(len(source), batch_size, sampler.repeats, shard_index, shard_count)
    ds = grain.MapDataset.range(len(source))
    ds = ds.slice(slice(shard_index, None, shard_count)).shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    ds = ds.random_map(PairMaker(source, sampler, max_retries), seed=seed)
    ds = ds.batch(
        batch_size // sampler.repeats, drop_remainder=True, batch_fn=_Collate(normalize)
    )
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
    if num_workers > 0:
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers),
            worker_init_fn=die_with_parent,
        )
    return it


def die_with_parent(worker_index: int, worker_count: int) -> None:
    """Worker init: the kernel kills this worker when the trainer dies.

    Grain's workers otherwise outlive a trainer killed with SIGKILL (seen with
    grain 0.2.18). Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere a no-op.
    """
    del worker_index, worker_count
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _check(num_videos, batch_size, repeats, shard_index, shard_count):
    if batch_size < 1 or batch_size % repeats:
        raise ValueError(
            f"batch_size={batch_size} must be a positive multiple of repeats={repeats}."
        )
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} must lie in [0, {shard_count}).")
    if num_videos < shard_count:
        raise ValueError(
            f"{num_videos} videos cannot be split over {shard_count} hosts."
        )
