"""Train-step throughput, MFU and bfloat16 numerics on an accelerator (GPU/TPU).

Usage::

    python benchmarks/accelerator_step.py [--variants vits16,vitb16]
        [--batches 64,128] [--dtypes bfloat16,float32] [--steps 20]
        [--numerics_steps 100] [--out results.json]

Builds the train step exactly as ``siammae_jax.train.loop.setup`` does (model
from ``configs/siammae.py``, sharding rules, AdamW + schedule, AOT compile with
donation) without the data pipeline or the metric writers, so it runs where
only jax/flax/optax are installed. Frames are resident uint8 batches (data
excluded; ``benchmarks/data_throughput.py`` measures input).

Prints, per (variant, batch, dtype): compile seconds, step seconds, pairs/s,
achieved TFLOP/s (analytic training FLOPs of ``siammae_jax.models.flops``) and
MFU against (i) a large matmul of the same dtype timed in the same run and (ii)
the datasheet peak where known. Then bfloat16 numerics for the first variant:
the loss and gradient norm of one batch of synthetic frames in bfloat16 vs
float32 (same parameters, same masks), and the loss curves of
``--numerics_steps`` steps of training both ways on the same batches.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import checkout_configs
import jax
import jax.numpy as jnp
import numpy as np
import optax

from siammae_jax.data import pairs, synthetic
from siammae_jax.models import definition, flops
from siammae_jax.train import config as config_lib
from siammae_jax.train import mesh as mesh_lib
from siammae_jax.train import state as state_lib
from siammae_jax.train import step as step_lib

# Dense datasheet peaks (TFLOP/s, no sparsity) by device kind. XLA runs float32
# dots as TF32 on these tensor cores at its default precision, so float32 is
# compared with the TF32 peak.
DATASHEET = {
    "NVIDIA H100 80GB HBM3": {"bfloat16": 989.4, "float32": 494.7},
    "NVIDIA H200": {"bfloat16": 989.4, "float32": 494.7},
}


def matmul_tflops(dtype: str, n: int = 8192, repeats: int = 10) -> float:
    """TFLOP/s of an n x n x n matmul in ``dtype`` (mean of ``repeats``)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    mm = jax.jit(jnp.matmul)
    for _ in range(3):
        mm(a, b).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = mm(a, b)
    out.block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def build(variant: str, batch: int, dtype: str):
    """(config, model_def, compiled step, state, memory analysis, build s)."""
    config = checkout_configs.get_config(variant)
    config.batch_size = batch
    config.model.dtype = dtype
    mesh = mesh_lib.make_mesh(config.mesh.to_dict())
    schedule = config_lib.Schedule(
        total_steps=1000,
        warmup_steps=100,
        steps_per_epoch=1.0,
        peak_lr=config.optim.base_lr * batch / config.optim.lr_reference_batch,
    )
    start = time.perf_counter()
    built = step_lib.build(config, mesh, schedule)
    compile_s = time.perf_counter() - start
    state = state_lib.create_state(built.model_def, built.tx, mesh, seed=0)
    return config, built.model_def, built.compiled, state, built.memory, compile_s


def throughput(variant: str, batch: int, dtype: str, steps: int, peaks: dict):
    config, model_def, compiled, state, memory, compile_s = build(variant, batch, dtype)
    size = config.model.image_size
    rng = np.random.default_rng(0)
    frames = jnp.asarray(rng.integers(0, 256, (batch, 2, size, size, 3), np.uint8))
    key = jax.random.key(0)
    for _ in range(3):
        state, m = compiled(state, model_def.buffers, {"frames": frames}, key)
    jax.block_until_ready(m)
    start = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, model_def.buffers, {"frames": frames}, key)
    jax.block_until_ready(m)
    seconds = (time.perf_counter() - start) / steps
    train_flops = flops.pair_flops(**definition.model_kwargs(config.model))["train"]
    tflops = train_flops * batch / seconds / 1e12
    kind = jax.devices()[0].device_kind
    sheet = DATASHEET.get(kind, {}).get(dtype)
    return {
        "variant": variant,
        "encoder": config.model.encoder,
        "image_size": size,
        "batch": batch,
        "dtype": dtype,
        "compile_s": round(compile_s, 1),
        "step_s": seconds,
        "pairs_per_s": batch / seconds,
        "tflops": tflops,
        "mfu_vs_measured_matmul": tflops / peaks[dtype],
        "mfu_vs_datasheet": None if sheet is None else tflops / sheet,
        "temp_gib": memory.temp_size_in_bytes / 2**30 if memory else None,
        "loss": float(m["loss"]),
    }


def _synthetic_pairs(count: int, size: int, gap: int = 8) -> np.ndarray:
    """uint8 [count, 2, size, size, 3]: (frame t, frame t + gap) of synthetic videos."""
    out = []
    for i in range(count):
        video = synthetic.make_video(7, i, 2 + gap, (size, size))
        out.append(video.frames[[0, gap]])
    return np.stack(out)


def numerics(variant: str, batch: int, steps: int) -> dict:
    """bfloat16 vs float32: one batch's loss and grad norm, then loss curves."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        config, model_def, compiled, state, _, _ = build(variant, batch, dtype)
        if "frames" not in runs:
            runs["frames"] = jnp.asarray(
                _synthetic_pairs(2 * batch, config.model.image_size)
            )
        frames = runs["frames"]

        def loss(params, f, key, model_def=model_def):
            x = pairs.normalize(f)
            return model_def.apply(
                params, model_def.buffers, x[:, 0], x[:, 1], key
            ).loss

        value, grads = jax.jit(jax.value_and_grad(loss))(
            state.params, frames[:batch], jax.random.key(1)
        )
        leaves = jax.tree.leaves(grads)
        curve = []
        for i in range(steps):
            batch_frames = frames[(i % 2) * batch : (i % 2 + 1) * batch]
            state, m = compiled(
                state, model_def.buffers, {"frames": batch_frames}, jax.random.key(2)
            )
            curve.append(float(m["loss"]))
        runs[dtype] = {
            "loss": float(value),
            "grad_norm": float(optax.global_norm(grads)),
            "grads": [np.asarray(g, np.float32).ravel() for g in leaves],
            "curve": curve,
        }
    f32, bf16 = runs["float32"], runs["bfloat16"]
    g32, g16 = np.concatenate(f32.pop("grads")), np.concatenate(bf16.pop("grads"))
    c32, c16 = np.array(f32["curve"]), np.array(bf16["curve"])
    return {
        "variant": variant,
        "batch": batch,
        "loss_rel_diff": abs(bf16["loss"] - f32["loss"]) / f32["loss"],
        "grad_norm_rel_diff": abs(bf16["grad_norm"] - f32["grad_norm"])
        / f32["grad_norm"],
        "grad_cosine": float(g32 @ g16 / np.linalg.norm(g32) / np.linalg.norm(g16)),
        "curve_max_rel_diff": float(np.max(np.abs(c16 - c32) / c32)),
        "curve_first_last_f32": [c32[0], c32[-1]],
        "curve_first_last_bf16": [c16[0], c16[-1]],
        "curve_every_10_f32": c32[::10].round(4).tolist(),
        "curve_every_10_bf16": c16[::10].round(4).tolist(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="vits16,vitb16")
    p.add_argument("--batches", default="64,128")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--numerics_steps", type=int, default=100)
    p.add_argument("--numerics_batch", type=int, default=32)
    p.add_argument("--matmul_n", type=int, default=8192, help="Reference size.")
    p.add_argument("--out", default=None, help="Also write the results as JSON.")
    args = p.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} x{jax.device_count()} ({device.platform})")
    dtypes = args.dtypes.split(",")
    peaks = {d: matmul_tflops(d, args.matmul_n) for d in dtypes}
    print(
        f"matmul {args.matmul_n}^3 TFLOP/s:", {d: round(v, 1) for d, v in peaks.items()}
    )
    rows = []
    for variant in args.variants.split(","):
        for batch in [int(b) for b in args.batches.split(",")]:
            for dtype in dtypes:
                row = throughput(variant, batch, dtype, args.steps, peaks)
                rows.append(row)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                  for k, v in row.items()}), flush=True)  # fmt: skip
    result = {"device": device.device_kind, "matmul_tflops": peaks, "steps": rows}
    if args.numerics_steps:
        variant = args.variants.split(",")[0]
        result["numerics"] = numerics(variant, args.numerics_batch, args.numerics_steps)
        print(json.dumps(result["numerics"]), flush=True)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
