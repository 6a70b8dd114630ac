"""Steady-state throughput and MFU of the full SiamMAE train step.

Usage::

    python benchmarks/train_throughput.py --config configs/siammae.py:tiny
    python benchmarks/train_throughput.py --config configs/siammae.py:vits16 \
        --config.batch_size=8 --config.model.dtype=float32

Builds the run exactly as ``siammae_jax.main`` does (``loop.setup``: mesh,
sharded state, AOT-compiled step, grain pipeline), then times the step on one
resident batch (data excluded) and with a fresh batch from the pipeline each
step (data included). MFU is against the device's peak where known (TPU,
H100...); on a CPU the reference is a large float32 matmul timed in the same
run.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from siammae_jax.models import flops
from siammae_jax.train import loop, metrics

_CONFIG = config_flags.DEFINE_config_file("config", "configs/siammae.py:tiny")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per measurement.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Scratch dir (default: a temp dir).")


def _time_steps(run, state, steps: int, with_data: bool):
    batch = next(run.data)
    frames = loop.global_frames(run, batch["frames"])
    key = jax.random.key(0)
    for _ in range(2):  # warm-up
        state, m = run.step(state, run.model_def.buffers, {"frames": frames}, key)
    jax.block_until_ready(m)
    start = time.perf_counter()
    for _ in range(steps):
        if with_data:
            frames = loop.global_frames(run, next(run.data)["frames"])
        state, m = run.step(state, run.model_def.buffers, {"frames": frames}, key)
    jax.block_until_ready(m)
    return state, time.perf_counter() - start


def main(argv):
    del argv
    config = _CONFIG.value
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="siammae_bench_")
    run = loop.setup(config, workdir)
    state = loop.restore_or_init(run)
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
    run.ckpt.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
