"""``run(config, workdir)``: SiamMAE pre-training from one CPU to a pod slice.

``train.setup`` builds the run (data, model, compiled step), ``train.restore``
gives its first state; this module only drives the steps. It dispatches them
without looking at the device; the non-finite guard, the stop check
(SIGTERM, Ctrl-C: ``train.preemption``), metrics, pictures, evaluations and
checkpoints happen at the steps ``Run.cadence`` names (``train.check_every``
and the other periods), so between them the host runs ahead of the device.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import ml_collections
from absl import logging

from siammae_jax.models import flops
from siammae_jax.train import checkpoint, evaluation, measures, metrics, preemption
from siammae_jax.train import setup as setup_lib
from siammae_jax.train import state as state_lib
from siammae_jax.train.setup import Run


class Diverged(RuntimeError):
    """Too many non-finite steps in a row."""


class _Host:
    """What the host keeps between checks: the counters, the finite flags of
    the steps since the last check (still on the device), the throughput
    window, the progress bar and the clu hooks."""

    def __init__(self, run: Run, logger, start: int, counters: state_lib.Counters):
        c, total = run.config, run.schedule.total_steps
        main, bar_on = jax.process_index() == 0, c.train.get("progress_bar", False)
        self.logger, self.counters, self.pending = logger, counters, []
        self.hooks = metrics.progress_hooks(
            str(run.workdir), total, main, c.train.profile_steps, report=not bar_on
        )
        self.bar = metrics.TrainingBar(total, start, enabled=main and bar_on)
        self.window = _Window(time.perf_counter(), start)

    def bad_in_a_row(self, state: state_lib.TrainState) -> int:
        """Counts the non-finite steps since the last check (reads the device)."""
        finite = jax.device_get(self.pending)
        self.counters.bad_steps += sum(not f for f in finite)
        self.pending = []
        return int(state.bad_in_a_row)

    def tick(self, step: int) -> None:
        self.bar.update(step, {})
        for hook in self.hooks:
            hook(step)


def train_loop(
    run: Run,
    state: state_lib.TrainState,
    logger: metrics.MetricsLogger,
    counters: state_lib.Counters | None = None,
) -> state_lib.TrainState:
    """Steps from the state's step to the end (or a stop signal); returns the state."""
    start = int(state.step)
    host = _Host(run, logger, start, counters or state_lib.Counters())
    if run.evaluate and start == 0:  # the random-init twin, once per run
        first = _evaluate(run, logger, run.evaluate.random_init_params(), 0, True)
        logger.write_scalars(0, first.scalars)
        host.bar.update(0, first.scalars)
    try:
        with preemption.Preemption() as flag:
            state = _drive(run, state, host, flag, start)
    finally:
        host.bar.close()
        run.ckpt.wait()
    _log_best(run)
    return state


def _drive(run: Run, state, host: _Host, flag, start: int) -> state_lib.TrainState:
    """Dispatches the steps; the host reads the device only at due steps."""
    key = setup_lib.replicated(
        run.mesh, jax.random.key(measures.seed(run.config.seed, "train"))
    )
    for step in range(start, run.schedule.total_steps):
        batch = next(run.data)
        host.counters.data_skipped += int(batch["skipped"])
        frames = setup_lib.global_frames(run, batch["frames"])
        state, m = run.step(state, run.buffers, {"frames": frames}, key)
        host.pending.append(m["finite"])
        done = step + 1
        stop = run.cadence.due(done) and _check(run, state, m, batch, done, host, flag)
        host.tick(done)
        if stop:
            logging.warning("stopped by %s after step %d", flag.name, done)
            break
    return state


def _check(run: Run, state, m, batch, done: int, host: _Host, flag) -> bool:
    """The non-finite guard, metrics, pictures, evaluation, stop check and
    checkpoint of step ``done``; returns whether to stop."""
    bad = host.bad_in_a_row(state)
    if bad >= run.config.train.max_bad_steps:
        _diverged(run, done, bad)
    ranked = _observe(run, state, m, batch, done, host, bad)
    stop = preemption.stop_requested(flag)
    if bad == 0:  # a step that went bad is never saved
        force = stop or done == run.schedule.total_steps or ranked is not None
        run.ckpt.save(done, state, run.data, run.config, force=force, metrics=ranked,
                      counters=host.counters)  # fmt: skip
    return stop


def _observe(run: Run, state, m, batch, done: int, host: _Host, bad: int):
    """Writes the step's scalars and pictures; returns the checkpoint's rank
    (``{"J&F": ...}`` after an online evaluation), else None."""
    c, total = run.config, run.schedule.total_steps
    due = lambda every: every and (done % every == 0 or done == total)  # noqa: E731
    scalars = {}
    if due(c.train.log_every):
        counters = dataclasses.asdict(host.counters)
        scalars = {**m, **counters, **host.window.rates(run, done)}
    measuring, ranked = time.perf_counter(), None
    if run.measures and due(c.train.measure_every):
        scalars.update(run.measures(state.params, done))
    if run.evaluate and bad == 0 and due(c.eval.every):
        result = _evaluate(run, host.logger, state.params["encoder"], done)
        scalars.update(result.scalars)
        if result.best is not None:
            ranked = {checkpoint.BEST_METRIC: result.best}
    host.window.time += time.perf_counter() - measuring  # not training time
    if scalars:
        host.logger.write_scalars(done, scalars)
    host.bar.update(done, scalars)
    if c.train.image_every and done % c.train.image_every == 0:
        norm_pix = c.model.norm_pix_loss
        pictures = measures.reconstruction(
            run.predict, run.model_def, state.params, batch["frames"], done, norm_pix
        )
        host.logger.write_images(done, pictures)
    return ranked


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
        value = run.ckpt.manager.metrics(best)[checkpoint.BEST_METRIC]
        name = run.config.eval.get("best_metric", "davis/J&F")
        logging.info(
            "best online %s %.4f at step %d: %s",
            name,
            value,
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
    r = setup_lib.setup(config, workdir)
    state, counters = setup_lib.restore_or_init(r)
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
        return train_loop(r, state, logger, counters)
    finally:
        logger.close()
        r.ckpt.close()
        close = getattr(r.data, "close", None)
        if close:
            close()
