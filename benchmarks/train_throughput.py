"""Steady-state throughput and MFU of the full SiamMAE train step.

Usage::

    python benchmarks/train_throughput.py --config configs/siammae.py:tiny
    python benchmarks/train_throughput.py --config configs/siammae.py:vits16 \
        --config.batch_size=8 --config.model.dtype=float32

Builds the run exactly as ``siammae_jax.main`` does (``train.setup``: mesh,
sharded state, AOT-compiled step, grain pipeline), then times the step on one
resident batch (data excluded) and with a fresh batch from the pipeline each
step (data included). MFU is against the device's peak where known (TPU,
H100...); on a CPU the reference is a large float32 matmul timed in the same
run.

Then the training loop itself (``loop.train_loop`` on the same run) for
``--loop_steps`` steps at each ``--check_every``, nothing else due in between
(no metrics, pictures or measures; checkpoint saves stubbed out, as they cost
the same at any cadence), the cadences interleaved ``--repeats`` times
(1, 100, 100, 1, ...) in this one process, the median taken. The gap between
``check_every`` 1 (the host reads the device after every step) and 100 (it
runs ahead) is the per-step cost of reading the device; ``host_ms_per_step``
is the host's own work per step (the next batch, placed on the mesh), which
running ahead can overlap with the device's.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import tempfile
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from siammae_jax.models import flops
from siammae_jax.train import config as config_lib
from siammae_jax.train import loop, metrics, setup

_CONFIG = config_flags.DEFINE_config_file("config", "configs/siammae.py:tiny")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per measurement.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Scratch dir (default: a temp dir).")
_LOOP_STEPS = flags.DEFINE_integer(
    "loop_steps", 100, "Loop steps per timing (0: none)."
)
_CHECK_EVERY = flags.DEFINE_list("check_every", ["1", "100"], "Cadences to time.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timings per cadence (interleaved).")


def _time_steps(run, state, steps: int, with_data: bool):
    batch = next(run.data)
    frames = setup.global_frames(run, batch["frames"])
    key = jax.random.key(0)
    for _ in range(2):  # warm-up
        state, m = run.step(state, run.buffers, {"frames": frames}, key)
    jax.block_until_ready(m)
    start = time.perf_counter()
    for _ in range(steps):
        if with_data:
            frames = setup.global_frames(run, next(run.data)["frames"])
        state, m = run.step(state, run.buffers, {"frames": frames}, key)
    jax.block_until_ready(m)
    return state, time.perf_counter() - start


def main(argv):
    del argv
    config = _CONFIG.value
    # Nothing due in the timed loop but its checks and its last step's log.
    config.train.update(log_every=10**9, measure_every=0, image_every=0)
    config.eval.every = 0
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="siammae_bench_")
    run = setup.setup(config, workdir)
    state, _ = setup.restore_or_init(run)
    peak = flops.device_peak_flops()
    reference = "device peak"
    if peak is None:
        sys.path.insert(0, "benchmarks")
        from model_step import matmul_flops_per_sec

        peak, reference = matmul_flops_per_sec() / jax.device_count(), "f32 matmul"
    result = {
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "model": config.model.to_dict(),
        "batch_size": config.batch_size,
        "train_gflop_per_pair": run.flops_per_pair / 1e9,
        "mfu_reference": reference,
        "peak_tflops_per_device": peak / 1e12,
    }
    for name, with_data in (("step_only", False), ("with_data", True)):
        state, seconds = _time_steps(run, state, _STEPS.value, with_data)
        scalars = metrics.throughput_scalars(
            steps=_STEPS.value,
            seconds=seconds,
            pairs_per_step=config.batch_size,
            flops_per_pair=run.flops_per_pair,
            num_devices=jax.device_count(),
            peak_per_device=peak,
        )
        result[name] = {k: round(float(v), 4) for k, v in scalars.items()}
    if _LOOP_STEPS.value:
        result["host_ms_per_step"] = round(1e3 * _host_seconds(run, _STEPS.value), 2)
        result["loop"] = _time_loop(run, state, _LOOP_STEPS.value, _REPEATS.value)
    run.ckpt.close()
    print(json.dumps(result, indent=2))


def _host_seconds(run, steps: int) -> float:
    """Seconds per step of the host's own work: the next batch, on the mesh."""
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(setup.global_frames(run, next(run.data)["frames"]))
    return (time.perf_counter() - start) / steps


class _NoCheckpoints:
    """Stands in for the run's Checkpointer while the loop is timed."""

    def save(self, *args, **kwargs) -> bool:
        return False

    def wait(self) -> None:
        pass

    def best_step(self) -> None:
        return None


def _loop_for(run, state, logger, every: int, steps: int):
    """``loop.train_loop`` for ``steps`` more steps, checking every ``every``."""
    total = int(state.step) + steps
    run.schedule = dataclasses.replace(run.schedule, total_steps=total)
    run.cadence = config_lib.Cadence((every,), total)
    return loop.train_loop(run, state, logger)


def _time_loop(run, state, steps: int, repeats: int) -> dict:
    """Median pairs/s of the loop at each ``--check_every`` (interleaved), and
    the seconds per step each costs beyond the fastest."""
    cadences = [int(c) for c in _CHECK_EVERY.value]
    order = [c for r in range(repeats) for c in cadences[:: 1 - 2 * (r % 2)]]
    logger = metrics.MetricsLogger(f"{run.workdir}/loop", console=False)
    checkpointer, run.ckpt = run.ckpt, _NoCheckpoints()
    state = _loop_for(run, state, logger, cadences[0], 10)  # warm-up
    seconds = {c: [] for c in cadences}
    for every in order:
        start = time.perf_counter()
        state = _loop_for(run, state, logger, every, steps)
        seconds[every].append(time.perf_counter() - start)
    run.ckpt = checkpointer
    logger.close()
    batch = run.config.batch_size
    rates = {c: batch * steps / statistics.median(t) for c, t in seconds.items()}
    fastest = max(rates.values())
    return {
        **{f"check_every={c}": round(r, 2) for c, r in rates.items()},
        "ms_per_step_beyond_fastest": {
            f"check_every={c}": round(1e3 * batch * (1 / r - 1 / fastest), 2)
            for c, r in rates.items()
        },
        "seconds": {f"check_every={c}": t for c, t in seconds.items()},
    }


if __name__ == "__main__":
    app.run(main)
