"""``run(config, workdir)``: SiamMAE pre-training from one CPU to a pod slice.

Phases, each a function: validate -> mesh -> data -> schedule -> model and
optimizer -> compile (memory analysis logged before step 0) -> restore or
initialise -> loop (metrics, pictures, checkpoints, SIGTERM/Ctrl-C, divergence).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import signal
import time
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from siammae_jax import weights
from siammae_jax.data import pairs, pipeline, sources, synthetic
from siammae_jax.eval import learning, pictures
from siammae_jax.models import SiamMAE, flops
from siammae_jax.models.definition import PREDATED, ModelDef
from siammae_jax.train import checkpoint, evaluation, metrics
from siammae_jax.train import config as config_lib
from siammae_jax.train import mesh as mesh_lib
from siammae_jax.train import state as state_lib
from siammae_jax.train import step as step_lib
from siammae_jax.weights import params as weight_params

SKIPPED_VIDEOS = "skipped_videos.txt"  # in the workdir: unused files, with why


class Diverged(RuntimeError):
    """Too many non-finite steps in a row."""


@dataclasses.dataclass
class Run:
    """What the loop needs, built once by ``setup``."""

    config: ml_collections.ConfigDict
    workdir: epath.Path
    mesh: jax.sharding.Mesh
    model_def: ModelDef
    schedule: config_lib.Schedule
    step: Any  # the compiled train step
    abstract_state: state_lib.TrainState
    tx: Any
    predict: Any  # jitted (params, buffers, uint8 frames, step) -> (frames, Output)
    measures: Any  # (params, step) -> dict of learning measures, or None
    evaluate: evaluation.OnlineDavis | None  # online J&F (eval.every > 0)
    data: grain.DatasetIterator
    ckpt: checkpoint.Checkpointer
    flops_per_pair: float


def open_data(
    config: ml_collections.ConfigDict, workdir: epath.Path
) -> (
    sources.VideoFolderSource
    | sources.FrameFolderSource
    | sources.ArrayRecordSource
    | sources.TfdsSource
):
    """The video source of ``config.data`` (the synthetic set is made on demand).

    Logs ``videos: N files, M usable, K skipped (see WORKDIR/skipped_videos.txt)``
    and writes that file (every file under ``data.path`` not used, with why).
    """
    d = config.data
    made = bool(d.path) and (epath.Path(d.path) / "synthetic.json").exists()
    if d.format == "synthetic" or (not d.format and (not d.path or made)):
        root = epath.Path(d.path or workdir / "synthetic")
        marker = root / "synthetic.json"
        if jax.process_index() == 0 and not marker.exists():
            if root.exists() and any(root.iterdir()):
                raise ValueError(
                    f"data.format=synthetic would write a synthetic set into {root}, "
                    "which holds other files; leave data.format empty to use them"
                )
            logging.info("writing the synthetic video set to %s", root)
            synthetic.write_dataset(
                root,
                videos=d.synthetic_videos,
                frames=d.synthetic_frames,
                size=(d.synthetic_size, d.synthetic_size),
                seed=d.get("synthetic_seed", config.seed),
                progress=False,
            )
        mesh_lib.barrier("synthetic_data")
        source = sources.open_source(root / "frames", "frames")
    elif d.format == "tfds":
        source = sources.TfdsSource(
            d.tfds_name, d.tfds_data_dir or None, d.get("tfds_split") or "train"
        )
    else:
        source = sources.open_source(
            d.path, d.format or None, index_dir=d.get("index_dir") or None
        )
        if isinstance(source, sources.VideoFolderSource):
            if len(source) <= d.get("check_videos", 0):
                source.check()
            else:
                logging.info("not opening %d videos now (data.check_videos="
                             "%d): bad ones are counted in data_skipped",
                             len(source), d.get("check_videos", 0))  # fmt: skip
    listing = workdir / SKIPPED_VIDEOS
    if jax.process_index() == 0:
        lines = [f"{path}\t{reason}\n" for path, reason in source.skipped]
        listing.write_text(f"# {source.report()}: path<TAB>reason\n" + "".join(lines))
    logging.info("%s (see %s)", source.report(), listing)
    return source


def data_iterator(
    config: ml_collections.ConfigDict, source: Any
) -> grain.DatasetIterator:
    """This host's iterator of batches (its shard, its share of the batch)."""
    hosts = jax.process_count()
    ds = pipeline.make_pipeline(
        source,
        batch_size=config.batch_size // hosts,
        sampler=config_lib.sampler(config),
        seed=config.seed,
        shard_index=jax.process_index(),
        shard_count=hosts,
        num_workers=config.data.num_workers,
    )
    return iter(ds)


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Validates, builds and compiles everything; no step is taken."""
    config_lib.validate(config, jax.device_count(), jax.process_count())
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh_lib.make_mesh(config.mesh.to_dict())
    source = open_data(config, workdir)
    schedule = config_lib.schedule(config, len(source))
    built = step_lib.build(config, mesh, schedule)
    _log_memory(built.abstract_state, built.memory)
    ckpt = checkpoint.Checkpointer(
        workdir / "checkpoints",
        every=config.checkpoint.every,
        keep=config.checkpoint.keep,
        keep_every=config.checkpoint.keep_every,
        async_save=config.checkpoint.async_save,
        keep_best=_evaluating(config) and config.eval.keep_best,
    )
    evaluate = None
    if _evaluating(config):
        evaluate = evaluation.OnlineDavis(
            config,
            built.model_def,
            mesh,
            workdir,
            progress=config.train.get("progress_bar", False),
        )
    return Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        model_def=built.model_def,
        schedule=schedule,
        step=built.compiled,
        abstract_state=built.abstract_state,
        tx=built.tx,
        predict=_make_predict(built.model_def, config.seed),
        measures=_make_measures(config, built.model_def),
        evaluate=evaluate,
        data=data_iterator(config, source),
        ckpt=ckpt,
        flops_per_pair=flops.pair_flops(**built.model_def.model_kwargs)["train"],
    )


def _evaluating(config: ml_collections.ConfigDict) -> bool:
    return bool(config.get("eval") and config.eval.every)


def _log_memory(abstract: state_lib.TrainState, memory) -> None:
    """Per-device bytes of parameters, optimizer state and temporaries."""

    def per_device(tree) -> int:
        return sum(
            int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
            for x in jax.tree.leaves(tree)
        )

    mib = 2**20
    logging.info(
        "memory per device: params %.1f MiB, optimizer %.1f MiB, temporaries %s",
        per_device(abstract.params) / mib,
        per_device(abstract.opt_state) / mib,
        f"{memory.temp_size_in_bytes / mib:.1f} MiB" if memory else "n/a",
    )


def model_changes(saved: dict, now: dict) -> list[str]:
    """``field: saved -> now`` for every model field that differs, except the
    compute dtype (parameters are float32 either way).

    A field the saved config lacks (written before the field existed) counts
    as the model's default for it, which is how that checkpoint was trained;
    for a field whose default differs from the behaviour before it, as that
    behaviour (``definition.PREDATED``: norm-pix ddof 0, visible rule
    ``round``).
    """
    saved, now = json.loads(json.dumps(saved)), json.loads(json.dumps(now))
    params = inspect.signature(SiamMAE.__init__).parameters
    defaults = {
        k: json.loads(json.dumps(p.default))
        for k, p in params.items()
        if k not in saved and isinstance(p.default, (bool, int, float, str, tuple))
    }
    before = {k: v for k, v in PREDATED.items() if k not in saved}
    defaults.update(before)

    def was(k):
        if k in saved:
            return repr(saved[k])
        if k in before:
            return f"{before[k]!r} (before the field existed; not saved)"
        return f"{defaults[k]!r} (the default; not saved)" if k in defaults else "None"

    return [
        f"{k}: {was(k)} -> {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if k != "dtype" and saved.get(k, defaults.get(k)) != now.get(k)
    ]


def restore_or_init(run: Run) -> state_lib.TrainState:
    """The latest complete checkpoint's state (and data position), else a new one.

    Raises:
      ValueError: the checkpoint was written with another model config (a
        workdir reused after a config change), naming the fields that differ.
    """
    latest = run.ckpt.latest_step()
    if latest is None:
        state = state_lib.create_state(run.model_def, run.tx, run.mesh, run.config.seed)
        if run.config.get("init_from"):
            return warm_start(state, run.config.init_from)
        logging.info("no checkpoint in %s: starting from scratch", run.ckpt.directory)
        return state
    saved = run.ckpt.saved_config(latest).get("model", {})
    changes = model_changes(saved, run.config.model.to_dict())
    if changes:
        raise ValueError(
            f"the checkpoint at step {latest} in {run.ckpt.directory} was written "
            f"with another model ({'; '.join(changes)}): use a new --workdir, or "
            "the old config to resume."
        )
    logging.info("resuming from step %d", latest)
    return run.ckpt.restore(latest, run.abstract_state, run.data)


def warm_start(state: state_lib.TrainState, path: str) -> state_lib.TrainState:
    """``state`` with the weights at ``path``: the whole model's parameters,
    or the encoder's only (the decoder stays freshly initialised).

    Raises:
      FileNotFoundError: nothing loadable at ``path``.
      ValueError: the weights do not fit this run's model (names the
        parameters).
    """
    model, _ = weights.load(path)
    whole = isinstance(model, SiamMAE)
    loaded = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    target = state.params if whole else state.params["encoder"]
    problems = weight_params.mismatches(target, loaded)
    if problems:
        raise ValueError(
            f"init_from={path}: the weights do not fit this run's model "
            f"({'; '.join(problems)})"
        )
    loaded = weight_params.like(loaded, target)
    placed = jax.tree.map(
        lambda x, t: jax.make_array_from_callback(
            t.shape, t.sharding, lambda index: np.asarray(x)[index]
        ),
        loaded,
        target,
    )
    params = placed if whole else {**state.params, "encoder": placed}
    logging.info(
        "warm start from %s: %s; fresh optimizer, step 0",
        path,
        "the whole model" if whole else "the encoder (decoder freshly initialised)",
    )
    return state.replace(params=params)


class _Preemption:
    """A stop request: SIGTERM (TPU preemption) or a first Ctrl-C (SIGINT).

    The loop then saves a checkpoint at the next step and exits cleanly; a
    second Ctrl-C aborts at once (KeyboardInterrupt).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.name = ""
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt("second Ctrl-C: aborting without saving")
        self.name = signal.Signals(signum).name
        logging.warning(
            "%s: saving a checkpoint at the next step, then exiting%s",
            self.name,
            " (Ctrl-C again aborts)" if signum == signal.SIGINT else "",
        )
        self.requested = True

    def restore(self):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


def global_frames(run: Run, local: np.ndarray) -> jax.Array:
    """This host's frames -> the global batch array sharded over the mesh."""
    return jax.make_array_from_process_local_data(
        mesh_lib.batch_sharding(run.mesh), local
    )


def _stop_requested(flag: _Preemption) -> bool:
    if jax.process_count() == 1:
        return flag.requested
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag.requested))))


def _pictures(run: Run, state, batch: dict, step: int) -> dict[str, np.ndarray]:
    """f1 | masked f2 | reconstruction | f2 for the first pairs of ``batch``."""
    frames = batch["frames"][:4]
    out_frames, out = run.predict(state.params, run.model_def.buffers, frames, step)
    out_frames, out = jax.device_get((out_frames, out))
    grid = pictures.reconstruction_grid(
        out_frames[:, 0],
        out_frames[:, 1],
        out.mask,
        out.pred,
        out.target,
        patch=run.model_def.patch,
        norm_pix=run.config.model.norm_pix_loss,
    )
    return {"reconstruction": grid}


def _make_predict(model_def: ModelDef, seed: int):
    @jax.jit
    def predict(params, buffers, frames, step):
        x = pairs.normalize(frames)
        key = jax.random.fold_in(jax.random.key(seed + 1), step)
        return x, model_def.apply(params, buffers, x[:, 0], x[:, 1], key)

    return predict


def _make_measures(config, model_def: ModelDef):
    """Learning measures on held-out synthetic videos (``train.measure_every``)."""
    if not config.train.measure_every:
        return None
    held = learning.heldout_pairs(
        config.seed + 1000,
        config.train.measure_videos,
        config.model.image_size,
        gap=config.train.measure_gap,
    )

    apply = learning.model_apply(model_def)

    def measure(params, step: int) -> dict[str, float]:
        key = jax.random.fold_in(jax.random.key(config.seed + 2), step)
        fn = functools.partial(apply, params)
        return learning.measures(fn, held, key, model_def.patch)

    return measure


def train_loop(
    run: Run, state: state_lib.TrainState, logger: metrics.MetricsLogger
) -> state_lib.TrainState:
    """Steps from the state's step to the end (or a stop signal); returns the state."""
    c, total = run.config, run.schedule.total_steps
    start = int(state.step)
    key = jax.random.key(c.seed)
    main, bar_on = jax.process_index() == 0, c.train.get("progress_bar", False)
    hooks = metrics.progress_hooks(
        str(run.workdir), total, main, c.train.profile_steps, report=not bar_on
    )
    bar = metrics.TrainingBar(total, start, enabled=main and bar_on)
    if run.evaluate and start == 0:  # the random-init twin, once per run
        twin = run.evaluate.random_init_params()
        first = _evaluate(run, logger, twin, 0, True).scalars
        logger.write_scalars(0, first)
        bar.update(0, first)
        del twin
    flag, window = _Preemption(), _Window(time.perf_counter(), start)
    skipped = bad_total = 0
    try:
        for step in range(start, total):
            batch = next(run.data)
            skipped += int(batch["skipped"])
            frames = global_frames(run, batch["frames"])
            state, m = run.step(state, run.model_def.buffers, {"frames": frames}, key)
            done, bad = step + 1, int(state.bad_in_a_row)
            bad_total += int(bad > 0)
            if bad >= c.train.max_bad_steps:
                _diverged(run, done, bad)
            scalars = {}
            if done % c.train.log_every == 0 or done == total:
                scalars = {**m, "data_skipped": skipped, "bad_steps": bad_total}
                scalars.update(window.rates(run, done))
            measuring = time.perf_counter()
            if run.measures and (done % c.train.measure_every == 0 or done == total):
                scalars.update(run.measures(state.params, done))
            ranked = None
            if (
                run.evaluate
                and bad == 0
                and (done % c.eval.every == 0 or done == total)
            ):
                result = _evaluate(run, logger, state.params["encoder"], done)
                scalars.update(result.scalars)
                if result.jf is not None:
                    ranked = {checkpoint.BEST_METRIC: result.jf}
            window.time += time.perf_counter() - measuring  # not training time
            if scalars:
                logger.write_scalars(done, scalars)
            bar.update(done, scalars)
            if c.train.image_every and done % c.train.image_every == 0:
                logger.write_images(done, _pictures(run, state, batch, done))
            stop = _stop_requested(flag)
            if bad == 0:
                force = stop or done == total or ranked is not None
                run.ckpt.save(done, state, run.data, c, force=force, metrics=ranked)
            for hook in hooks:
                hook(done)
            if stop:
                logging.warning("stopped by %s after step %d", flag.name, done)
                break
    finally:
        bar.close()
        flag.restore()
        run.ckpt.wait()
    _log_best(run)
    return state


def _evaluate(
    run: Run, logger, params, step: int, random_init: bool = False
) -> evaluation.Result:
    """Online J&F of the encoder ``params``, its pictures written."""
    result = run.evaluate(params, step, random_init=random_init)
    if result.images:
        logger.write_images(step, result.images)
    return result


def _log_best(run: Run) -> None:
    best = run.ckpt.best_step()
    if best is not None:
        jf = run.ckpt.manager.metrics(best)[checkpoint.BEST_METRIC]
        logging.info(
            "best online J&F %.4f at step %d: %s",
            jf,
            best,
            run.ckpt.directory / str(best),
        )


def _diverged(run: Run, step: int, bad: int):
    run.ckpt.wait()
    raise Diverged(
        f"training diverged: {bad} non-finite losses or gradients in a row at step "
        f"{step} (train.max_bad_steps={run.config.train.max_bad_steps}); the last "
        f"good checkpoint is step {run.ckpt.latest_step()} in {run.ckpt.directory}. "
        "Lower optim.base_lr or enable optim.grad_clip and resume."
    )


@dataclasses.dataclass
class _Window:
    """Throughput over the steps since the last report."""

    time: float
    step: int

    def rates(self, run: Run, step: int) -> dict[str, float]:
        now = time.perf_counter()
        out = metrics.throughput_scalars(
            steps=step - self.step,
            seconds=now - self.time,
            pairs_per_step=run.config.batch_size,
            flops_per_pair=run.flops_per_pair,
            num_devices=jax.device_count(),
            peak_per_device=flops.device_peak_flops(),
        )
        self.time, self.step = now, step
        return out


def run(config: ml_collections.ConfigDict, workdir: str) -> state_lib.TrainState:
    """Trains (or resumes) ``config`` in ``workdir``; returns the final state."""
    r = setup(config, workdir)
    state = restore_or_init(r)
    logger = metrics.MetricsLogger(
        str(r.workdir),
        is_main=jax.process_index() == 0,
        total_steps=r.schedule.total_steps,
        console=not config.train.get("progress_bar", False),
    )
    logger.truncate_after(int(state.step) + 1)  # lines logged after the checkpoint
    logging.info(
        "training %d steps (%.1f steps per epoch, warmup %d, peak lr %.3g)",
        r.schedule.total_steps,
        r.schedule.steps_per_epoch,
        r.schedule.warmup_steps,
        r.schedule.peak_lr,
    )
    try:
        return train_loop(r, state, logger)
    finally:
        logger.close()
        r.ckpt.close()
        close = getattr(r.data, "close", None)
        if close:
            close()
