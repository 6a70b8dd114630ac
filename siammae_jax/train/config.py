"""Config validation and the one place where epochs become steps (and
steps become the host's check cadence)."""

from __future__ import annotations

import dataclasses
import os

import ml_collections
from absl import logging

from siammae_jax.data import pairs
from siammae_jax.data import spec as data_spec
from siammae_jax.eval import protocols
from siammae_jax.eval import tasks as eval_tasks
from siammae_jax.models import definition
from siammae_jax.train import mesh as mesh_lib
from siammae_jax.train import optim

PAIRS = ("frames", "crops")  # data.pairs: two frames of a video, two crops of one


def sampler(
    config: ml_collections.ConfigDict,
) -> pairs.PairSampler | pairs.CropSampler:
    """The pair sampler of ``config.data`` (validates its fields)."""
    d = config.data
    kind = d.get("pairs", "frames")  # configs saved before data.pairs: frames
    if kind not in PAIRS:
        raise ValueError(
            f"bad config: data.pairs={kind!r} must be one of {', '.join(PAIRS)}."
        )
    if kind == "crops":
        return _crop_sampler(config)
    if d.format == "images":
        raise ValueError(
            "bad config: data.format=images holds still images, which have no "
            "second frame: set data.pairs=crops."
        )
    try:
        return pairs.PairSampler(
            size=config.model.image_size,
            min_gap=d.min_gap,
            max_gap=d.max_gap,
            ref_fps=d.ref_fps,
            scale=tuple(d.scale),
            ratio=tuple(d.ratio),
            flip=d.flip,
            repeats=d.repeats,
        )
    except ValueError as e:
        raise ValueError(f"config.data: {e}") from None


def _crop_sampler(config: ml_collections.ConfigDict) -> pairs.CropSampler:
    d = config.data
    try:
        return pairs.CropSampler(
            size=config.model.image_size,
            scale=tuple(d.scale),
            ratio=tuple(d.ratio),
            local_scale=tuple(d.local_scale),
            local_ratio=tuple(d.local_ratio),
            flip=d.flip,
            repeats=d.repeats,
        )
    except ValueError as e:
        raise ValueError(f"config.data: {e}") from None


def validate(
    config: ml_collections.ConfigDict, num_devices: int, num_hosts: int
) -> None:
    """Checks the config before anything is built; errors name the field."""
    o, t = config.optim, config.train
    try:
        data, fsdp, _ = mesh_lib.mesh_shape(config.mesh.to_dict(), num_devices)
        mesh_lib.check_rules(config.sharding_rules)
    except ValueError as e:
        raise ValueError(f"bad config: {e}") from None
    definition.model_kwargs(config.model)
    sampler(config)
    data_parallel = data * fsdp
    checks = [
        (config.batch_size > 0, f"batch_size={config.batch_size} must be positive"),
        (
            config.batch_size % data_parallel == 0,
            f"batch_size={config.batch_size} must be divisible by the "
            f"{data_parallel} data-parallel devices (mesh.data x mesh.fsdp)",
        ),
        (
            config.batch_size % (num_hosts * config.data.repeats) == 0,
            f"batch_size={config.batch_size} must be divisible by hosts ({num_hosts})"
            f" x data.repeats ({config.data.repeats})",
        ),
        (o.base_lr > 0, f"optim.base_lr={o.base_lr} must be positive"),
        (o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay} must be >= 0"),
        (o.accum_steps >= 1, f"optim.accum_steps={o.accum_steps} must be >= 1"),
        (
            o.mu_dtype in optim.MU_DTYPES,
            f"optim.mu_dtype={o.mu_dtype!r} must be one of {sorted(optim.MU_DTYPES)}",
        ),
        (
            (config.batch_size // data_parallel) % o.accum_steps == 0,
            f"optim.accum_steps={o.accum_steps} must divide the per-device batch",
        ),
        (o.epochs > 0, f"optim.epochs={o.epochs} must be positive"),
        (
            0 <= o.warmup_epochs < o.epochs,
            f"optim.warmup_epochs={o.warmup_epochs} must be in [0, optim.epochs="
            f"{o.epochs})",
        ),
        (t.log_every > 0, f"train.log_every={t.log_every} must be positive"),
        (t.max_bad_steps > 0, f"train.max_bad_steps={t.max_bad_steps} must be > 0"),
        (t.check_every > 0, f"train.check_every={t.check_every} must be > 0"),
        (config.checkpoint.every > 0, "checkpoint.every must be positive"),
        (
            config.data.format in data_spec.FORMATS,
            f"data.format must be one of {data_spec.FORMATS}",
        ),
        (
            config.data.format != "tfds" or bool(config.data.get("tfds_name")),
            "data.format=tfds needs data.tfds_name (e.g. video_folder)",
        ),
        (
            config.data.format != "images" or bool(config.data.path),
            "data.format=images needs data.path (a folder of images)",
        ),
        (
            config.data.get("check_videos", 0) >= 0,
            "data.check_videos must be >= 0",
        ),
    ]
    checks += _eval_checks(config)
    for ok, message in checks:
        if not ok:
            raise ValueError(f"bad config: {message}.")


def _eval_checks(config: ml_collections.ConfigDict) -> list[tuple[bool, str]]:
    """The ``eval`` section (absent in configs saved before it existed)."""
    e = config.get("eval")
    if e is None or not e.every:
        return [] if e is None else [(e.every >= 0, "eval.every must be >= 0")]
    d = data_spec.DataSpec.from_config(config.data, config.seed)
    return [
        (e.every > 0, f"eval.every={e.every} must be >= 0"),
        (
            bool(e.data),
            "eval.every > 0 needs eval.data: a DAVIS-2017 root or 'synthetic'",
        ),
        (e.max_videos >= 1, f"eval.max_videos={e.max_videos} must be >= 1"),
        (e.max_seconds > 0, f"eval.max_seconds={e.max_seconds} must be > 0"),
        (e.batch_size >= 1, f"eval.batch_size={e.batch_size} must be >= 1"),
        *_task_checks(e),
        (
            e.get("protocol", "siammae") in protocols.names(),
            f"eval.protocol={e.get('protocol')!r} must be one of {protocols.names()}",
        ),
        (
            e.data != "synthetic"
            or not data_spec.means_synthetic(d)
            or d.synthetic_seed != e.synthetic_seed,
            f"eval.synthetic_seed={e.synthetic_seed} is the synthetic training "
            "set's seed (data.synthetic_seed): the held-out videos would be the "
            "training videos",
        ),
    ]


def _task_checks(e: ml_collections.ConfigDict) -> list[tuple[bool, str]]:
    """eval.tasks names benchmarks; eval.best_metric one of their metrics."""
    try:
        names = eval_tasks.parse(e.get("tasks", "davis"))
    except ValueError as error:
        return [(False, str(error))]
    best, known = e.get("best_metric", "davis/J&F"), eval_tasks.metric_names(names)
    return [(best in known, f"eval.best_metric={best!r} must be one of {known}")]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Training length and learning rate in steps, derived from the config."""

    total_steps: int
    warmup_steps: int
    steps_per_epoch: float
    peak_lr: float


def schedule(config: ml_collections.ConfigDict, num_videos: int) -> Schedule:
    """Converts epochs (passes over the videos, ``repeats`` pairs each) to steps.

    ``train.steps`` > 0 overrides the length; warmup keeps its share of it.
    """
    o = config.optim
    steps_per_epoch = num_videos * config.data.repeats / config.batch_size
    total = max(1, round(o.epochs * steps_per_epoch))
    warmup = round(o.warmup_epochs * steps_per_epoch)
    if config.train.steps > 0:
        warmup = round(warmup * config.train.steps / total)
        total = config.train.steps
    if warmup >= total:
        raise ValueError(
            f"bad config: optim.warmup_epochs={o.warmup_epochs} gives {warmup} warmup "
            f"steps, not fewer than the {total} training steps."
        )
    peak = optim.scaled_lr(o.base_lr, config.batch_size, o.lr_reference_batch)
    return Schedule(total, warmup, steps_per_epoch, peak)


@dataclasses.dataclass(frozen=True)
class Cadence:
    """The steps at which the host looks at the device.

    Between them the loop only dispatches steps (no device-to-host transfer,
    no cross-host collective), so the host runs ahead of the device. A step
    is due when it is the last one or a multiple of any of ``periods``: the
    non-finite guard and the stop check (``train.check_every``), and every
    step that logs, measures, draws, evaluates or may checkpoint, so that a
    checkpoint is only ever taken right after a check.
    """

    periods: tuple[int, ...]
    total: int

    def due(self, step: int) -> bool:
        """Whether the host checks after ``step`` steps."""
        return step == self.total or any(step % p == 0 for p in self.periods)


def cadence(config: ml_collections.ConfigDict, total_steps: int) -> Cadence:
    """The check cadence of ``config`` over ``total_steps`` steps."""
    t, e = config.train, config.get("eval")
    periods = (
        t.check_every,
        t.log_every,
        t.measure_every,
        t.image_every,
        config.checkpoint.every,
        e.every if e else 0,
    )
    return Cadence(tuple(sorted({p for p in periods if p > 0})), total_steps)


def apply_xla_flags(extra: str) -> None:
    """Appends ``config.xla_flags`` to ``XLA_FLAGS``; XLA reads them when the
    first backend starts, so this must come before any device is touched.

    Raises:
      RuntimeError: a backend is already running (the flags would be ignored).
    """
    if not extra:
        return
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            f"config.xla_flags={extra!r} comes too late: a JAX backend already "
            "started in this process; set XLA_FLAGS in the environment instead."
        )
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {extra}".strip()
    logging.info("XLA_FLAGS=%s", os.environ["XLA_FLAGS"])
