"""Train-step throughput, MFU and bfloat16 numerics on an accelerator (GPU/TPU).

The prepared device check of issue 19 (one command, a hard wall-time budget)::

    python benchmarks/accelerator_step.py --sweep --budget_s 540 --out DIR

measures the throughput levers (``LEVERS``: cuDNN attention, one encoder pass
for both frames, bfloat16 Adam moments, token padding) for ``vits16`` and
``vitb16`` at batches 128 and 256, and XLA GPU flag sets (``FLAGS``, one
process each, sharing a persistent compilation cache), in ``PLAN``'s order
until the budget would be exceeded (the rest are listed as skipped). Each case
is appended to ``DIR/sweep.jsonl`` as soon as it is measured; a lever the
platform refuses is an error row, not a stop. ``PROFILED``'s compiled step is
traced for 5 steps (``jax.profiler``) and its ten most expensive device ops go
to ``DIR/profile_top_ops.json``. ``DIR/sweep.md`` holds the table (step ms,
pairs/s, TFLOP/s, MFU against the same run's bf16 matmul and the datasheet,
XLA temp and peak memory) and the top ops. ``--smoke`` runs the same
machinery on a CPU at the ``tiny`` size.

The single-configuration mode::

    python benchmarks/accelerator_step.py [--variants vits16,vitb16]
        [--batches 64,128] [--dtypes bfloat16,float32] [--steps 20]
        [--numerics_steps 100] [--out results.json]

Builds the train step exactly as ``siammae_jax.train.setup.setup`` does (model
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


def build(variant: str, batch: int, dtype: str, overrides: str = ""):
    """(config, model_def, compiled step, state, memory analysis, build s);
    ``overrides``: ``field=value,...`` on top of the variant (a sweep's levers)."""
    config = checkout_configs.config_with_overrides(
        ",".join(x for x in (variant, overrides) if x)
    )
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


def throughput(
    variant: str,
    batch: int,
    dtype: str,
    steps: int,
    peaks: dict,
    overrides: str = "",
    profile_dir: pathlib.Path | None = None,
):
    """One configuration's timed steps; ``profile_dir``: also trace 5 more."""
    built = build(variant, batch, dtype, overrides)
    config, model_def, compiled, state, memory, compile_s = built
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
    if profile_dir is not None:
        with jax.profiler.trace(str(profile_dir), create_perfetto_trace=True):
            for _ in range(5):
                state, m = compiled(state, model_def.buffers, {"frames": frames}, key)
            jax.block_until_ready(m)
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
        "peak_gib": _peak_gib(),
        "loss": float(m["loss"]),
    }


def _peak_gib() -> float | None:
    """The device's peak memory in use so far (None where not reported)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


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


# ---------------------------------------------------------------- the sweep

# Throughput levers (issue 19) as config overrides on top of each variant.
LEVERS = {
    "base": "",  # XLA attention, two encoder calls, float32 Adam moments
    "cudnn": "model.attention=cudnn",
    "cudnn+fuse": "model.attention=cudnn,model.fuse_encoder=True",
    "all": "model.attention=cudnn,model.fuse_encoder=True,optim.mu_dtype=bfloat16",
    "all+pad8": "model.attention=cudnn,model.fuse_encoder=True,"
    "optim.mu_dtype=bfloat16,model.attention_pad=8",
    "xla+fuse+mu": "model.fuse_encoder=True,optim.mu_dtype=bfloat16",
}
# XLA GPU flags (set before the backend starts, so one process per set).
FLAGS = {
    "default": "",
    "no_triton_gemm": "--xla_gpu_enable_triton_gemm=false",
    "cudnn_layer_norm": "--xla_gpu_enable_cudnn_layer_norm=true",
}
# (flags, variant, batch, levers), the most telling first: the budget cuts the
# tail. The profile is of PROFILED's compiled step, right after its timing.
PLAN = [
    ("default", "vits16", 128, "base"),
    ("default", "vits16", 128, "cudnn"),
    ("default", "vits16", 128, "all"),
    ("default", "vits16", 256, "all"),
    ("default", "vitb16", 128, "all"),
    ("default", "vitb16", 256, "all"),
    ("default", "vits16", 128, "cudnn+fuse"),
    ("default", "vits16", 128, "xla+fuse+mu"),
    ("default", "vits16", 128, "all+pad8"),
    ("default", "vitb16", 128, "base"),
    ("no_triton_gemm", "vits16", 128, "all"),
    ("cudnn_layer_norm", "vits16", 128, "all"),
]
PROFILED = ("default", "vits16", 128, "all")
# --smoke: the same machinery on CPU at the CPU test size, in seconds.
SMOKE = [
    ("default", "tiny", 8, "base"),
    ("default", "tiny", 8, "cudnn"),  # refused off GPU: an error row
    ("default", "tiny", 8, "xla+fuse+mu"),
    ("no_triton_gemm", "tiny", 8, "xla+fuse+mu"),
]
SMOKE_PROFILED = ("default", "tiny", 8, "xla+fuse+mu")
FIRST_ESTIMATE_S = 75.0  # one case before any was measured (49-s compiles)


def top_ops(trace_dir: pathlib.Path, n: int = 10) -> list[dict]:
    """The ``n`` ops taking the most device time in a ``jax.profiler`` trace
    (its ``perfetto_trace.json.gz``): name, total ms, share, calls. On a GPU or
    TPU only the device's own timelines count; on a CPU the XLA threads'."""
    import collections
    import gzip

    paths = sorted(trace_dir.rglob("perfetto_trace.json.gz"))
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    with gzip.open(paths[-1], "rt") as f:
        events = json.load(f)["traceEvents"]
    names = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") in ("process_name", "thread_name"):
            key = e["pid"] if e["name"] == "process_name" else (e["pid"], e["tid"])
            names[key] = e["args"]["name"]
    devices = {p for p, v in names.items() if isinstance(p, int) and "/device:" in v}

    def counted(e) -> bool:
        if devices:
            return e["pid"] in devices
        thread = names.get((e["pid"], e["tid"]), "")
        return thread.startswith("tf_XLA") and not _bookkeeping(e["name"])

    total, calls = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and counted(e):
            total[e["name"]] += e.get("dur", 0.0)
            calls[e["name"]] += 1
    whole = sum(total.values()) or 1.0
    return [
        {"op": name, "ms": us / 1e3, "share": us / whole, "calls": calls[name]}
        for name, us in total.most_common(n)
    ]


def _bookkeeping(name: str) -> bool:
    """CPU runtime events that are not ops (waits, thread pools)."""
    return name.startswith("end:") or "::" in name


def _case_name(case) -> str:
    flags, variant, batch, levers = case
    return f"{variant} b{batch} {levers}" + ("" if flags == "default" else f" +{flags}")


def run_worker(args: argparse.Namespace) -> None:
    """Runs one flag set's cases (this process's XLA_FLAGS) until the deadline,
    appending a row per case to ``sweep.jsonl`` as soon as it is measured."""
    out = pathlib.Path(args.out)
    cases = [tuple(c) for c in json.loads(args.worker)]
    profiled = tuple(json.loads(args.profiled)) if args.profiled else None
    peaks = {"bfloat16": matmul_tflops("bfloat16", args.matmul_n)}
    estimate = args.first_estimate
    for case in cases:
        flags, variant, batch, levers = case
        row = {"case": _case_name(case), "flags": flags, "levers": levers}
        remaining = args.deadline - time.time()
        if remaining < estimate:
            row["skipped"] = (
                f"budget: {remaining:.0f} s left, a case takes ~{estimate:.0f}"
            )
        else:
            start = time.perf_counter()
            trace = pathlib.Path(args.trace_dir) if case == profiled else None
            try:
                row.update(
                    throughput(
                        variant,
                        batch,
                        "bfloat16",
                        args.steps,
                        peaks,
                        LEVERS[levers],
                        trace,
                    )
                )
                if trace is not None:
                    ops = top_ops(trace)
                    (out / "profile_top_ops.json").write_text(json.dumps(ops, indent=1))
                    row["profiled"] = True
            except Exception as e:  # a lever the platform refuses: a row, not a stop
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            estimate = max(
                estimate if "error" in row else 0.0, time.perf_counter() - start
            )
            jax.clear_caches()
        row["matmul_tflops"] = peaks["bfloat16"]
        with (out / "sweep.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def run_sweep(args: argparse.Namespace) -> None:
    """Every flag set's cases in a process of its own, within ``--budget_s``."""
    import os
    import subprocess
    import sys

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.jsonl").unlink(missing_ok=True)
    plan, profiled = (SMOKE, SMOKE_PROFILED) if args.smoke else (PLAN, PROFILED)
    deadline = time.time() + args.budget_s - 10.0  # room for the table
    device = jax.devices()[0]
    print(f"sweep on {device.device_kind} ({device.platform}), jax {jax.__version__}, "
          f"budget {args.budget_s:.0f} s, {len(plan)} cases", flush=True)  # fmt: skip
    for flags in dict.fromkeys(c[0] for c in plan):
        cases = [c for c in plan if c[0] == flags]
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {FLAGS[flags]}".strip()
        env.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/siammae_jax_cache")
        command = [
            sys.executable, __file__, "--out", str(out), "--worker", json.dumps(cases),
            "--profiled", json.dumps(profiled), "--deadline", str(deadline),
            "--steps", str(args.steps), "--matmul_n", str(args.matmul_n),
            "--first_estimate", str(args.first_estimate),
            "--trace_dir", args.trace_dir,
        ]  # fmt: skip
        left = deadline - time.time()
        if left < args.first_estimate / 2:
            _append_skipped(out, cases, f"budget: {left:.0f} s left")
            continue
        try:
            done = subprocess.run(command, env=env, timeout=left + 5)
            if done.returncode:
                _append_missing(out, cases, f"worker exited with {done.returncode}")
        except subprocess.TimeoutExpired:
            _append_missing(out, cases, "stopped at the budget")
    table = sweep_table(out, device.device_kind, args.budget_s)
    (out / "sweep.md").write_text(table)
    print(table, flush=True)


def _append_skipped(out: pathlib.Path, cases, why: str) -> None:
    with (out / "sweep.jsonl").open("a") as f:
        for c in cases:
            f.write(json.dumps({"case": _case_name(c), "skipped": why}) + "\n")


def _append_missing(out: pathlib.Path, cases, why: str) -> None:
    """Rows for the cases a dead or stopped worker left without one."""
    done = {r["case"] for r in _rows(out)}
    _append_skipped(out, [c for c in cases if _case_name(c) not in done], why)


def _rows(out: pathlib.Path) -> list[dict]:
    path = out / "sweep.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def sweep_table(out: pathlib.Path, device_kind: str, budget_s: float) -> str:
    """The sweep's Markdown table (and the profile's top ops) from its rows."""
    rows = _rows(out)
    sheet = DATASHEET.get(device_kind, {}).get("bfloat16")
    lines = [
        f"# accelerator_step.py --sweep on {device_kind}, jax {jax.__version__}, "
        f"{time.strftime('%Y-%m-%d')}, budget {budget_s:.0f} s",
        "",
        f"MFU against the same run's bf16 matmul and the datasheet ({sheet} TFLOP/s).",
        "",
        "| case | compile s | step ms | pairs/s | TFLOP/s | MFU matmul | MFU datasheet "
        "| XLA temp GiB | peak GiB | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def num(r, k, fmt):
        v = r.get(k)
        return "" if v is None else format(v, fmt)

    for r in rows:
        note = (
            r.get("error")
            or r.get("skipped")
            or ("profiled" if r.get("profiled") else "")
        )
        step_ms = r["step_s"] * 1e3 if "step_s" in r else None
        lines.append(
            f"| {r['case']} | {num(r, 'compile_s', '.1f')} | "
            f"{'' if step_ms is None else f'{step_ms:.1f}'} | "
            f"{num(r, 'pairs_per_s', '.0f')} | {num(r, 'tflops', '.1f')} | "
            f"{num(r, 'mfu_vs_measured_matmul', '.3f')} | "
            f"{num(r, 'mfu_vs_datasheet', '.3f')} | {num(r, 'temp_gib', '.1f')} | "
            f"{num(r, 'peak_gib', '.1f')} | {note} |"
        )
    ops_path = out / "profile_top_ops.json"
    if ops_path.exists():
        lines += ["", "Top ops of the profiled case (device time over 5 steps):", ""]
        lines += ["| op | ms | share | calls |", "|---|---:|---:|---:|"]
        for op in json.loads(ops_path.read_text()):
            lines.append(
                f"| `{op['op'][:80]}` | {op['ms']:.2f} | {op['share']:.1%} | {op['calls']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="vits16,vitb16")
    p.add_argument("--batches", default="64,128")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--numerics_steps", type=int, default=100)
    p.add_argument("--numerics_batch", type=int, default=32)
    p.add_argument("--matmul_n", type=int, default=8192, help="Reference size.")
    p.add_argument(
        "--out",
        default=None,
        help="Also write the results as JSON (--sweep: a folder).",
    )
    p.add_argument("--sweep", action="store_true", help="The issue-19 lever sweep.")
    p.add_argument("--budget_s", type=float, default=540.0, help="--sweep wall time.")
    p.add_argument("--smoke", action="store_true", help="--sweep at the CPU size.")
    p.add_argument("--trace_dir", default="/tmp/siammae_sweep_trace")
    p.add_argument("--first_estimate", type=float, default=FIRST_ESTIMATE_S)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--profiled", default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return run_worker(args)
    if args.sweep:
        if not args.out:
            p.error("--sweep needs --out DIR")
        return run_sweep(args)
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
