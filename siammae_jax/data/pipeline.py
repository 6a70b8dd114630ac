"""The grain input pipeline: videos -> shuffled, host-sharded batches of pairs.

Random access first, iterator last (grain's recommended layout)::

    order = range(num_videos) -> shuffle(seed) -> repeat   # one global order
    range(host records) -> map(HostPositions)  # this host's slice of each
                                               # global batch -> global position
      -> map(PairMaker)                   # order[position]: decode, augment
      -> batch(per-host pairs / repeats)  # in the MapDataset: same batches
      -> to_iter_dataset -> mp_prefetch   # whatever the number of workers

Host h takes the h-th slice of every global batch, so the hosts read disjoint
videos that together cover the data, and the global batch (hosts' slices in
process order) is the same whatever the number of hosts. Every random choice
comes from ``np.random.default_rng([seed, position])`` with the record's
global position, so batches do not depend on hosts or workers and the
iterator state is small and exact (``get_state`` / ``set_state``).

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


class HostPositions:
    """Map: host-local record index -> global position in the shuffled order."""

    def __init__(self, per_host: int, shard_index: int, shard_count: int):
        self.per_host, self.shard_index, self.shard_count = (
            per_host,
            shard_index,
            shard_count,
        )

    def __repr__(self) -> str:
        return f"HostPositions({self.per_host}, {self.shard_index}, {self.shard_count})"

    def __call__(self, index: int) -> int:
        batch, offset = divmod(index, self.per_host)
        return (batch * self.shard_count + self.shard_index) * self.per_host + offset


class PairMaker:
    """Map: global position -> ``repeats`` pairs of a readable video."""

    def __init__(
        self,
        source: Any,
        sampler: pairs.PairSampler | pairs.CropSampler,
        order: grain.MapDataset,
        seed: int,
        max_retries: int = 32,
    ):
        self.source = source
        self.sampler = sampler
        self.order = order
        self.seed = seed
        self.max_retries = max_retries

    def __repr__(self) -> str:
        return (
            f"PairMaker({self.source!r}, {self.sampler!r}, seed={self.seed}, "
            f"max_retries={self.max_retries})"
        )

    def _try(self, index: int, rng: np.random.Generator) -> dict | BadVideoError:
        try:
            return self.sampler(self.source[index], rng)
        except BadVideoError as e:
            return e

    def __call__(self, position: int) -> dict:
        index = int(self.order[position])
        rng = np.random.default_rng([self.seed, position])
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
    sampler: pairs.PairSampler | pairs.CropSampler | None = None,
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
      source: a source of ``siammae_jax.data.sources`` or
        ``siammae_jax.data.images`` (one record = one video or image).
      batch_size: pairs per batch on this host; a multiple of ``repeats``
        (the global batch is ``batch_size x shard_count``).
      sampler: pair sampling and augmentation (default: the paper's frame
        pairs); a ``CropSampler`` draws two crops of one frame or image.
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
      each pair's video) and ``skipped`` (bad videos replaced in this batch);
      with a ``CropSampler``, ``crop`` [B, 2, 4] and ``flip`` [B, 2] (one per
      view).

    Raises:
      ValueError: a bad batch or shard, or frame pairs asked of still images.
    """
    sampler = sampler or pairs.PairSampler()
    if getattr(source, "stills", False) and not isinstance(sampler, pairs.CropSampler):
        raise ValueError(
            f"{source!r} holds still images, which have no second frame: "
            "train on them with data.pairs=crops"
        )
    _check(len(source), batch_size, sampler.repeats, shard_index, shard_count)
    per_host = batch_size // sampler.repeats  # records per host batch
    order = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(num_epochs)
    if num_epochs is None:
        records = sys.maxsize // shard_count
    else:  # whole global batches only, so every host yields as many batches
        records = len(order) // (per_host * shard_count) * per_host
    ds = grain.MapDataset.range(records)
    ds = ds.map(HostPositions(per_host, shard_index, shard_count))
    ds = ds.map(PairMaker(source, sampler, order, seed, max_retries))
    ds = ds.batch(per_host, drop_remainder=True, batch_fn=_Collate(normalize))
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
    Workers also ignore Ctrl-C (SIGINT, sent by a terminal to the whole
    process group): the trainer decides what it means, and needs its workers
    to save a checkpoint.
    """
    del worker_index, worker_count
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
