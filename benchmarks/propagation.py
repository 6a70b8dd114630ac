"""Label propagation speed and memory: chunked jax vs dense numpy reference.

Usage: python benchmarks/propagation.py [--frames 60] [--dense_frames 10]
    [--flat_frames 30 120]

DAVIS-style setting: 480x880 input, ViT-S/16 features (30x55 grid, D=384,
random L2-normalised features), C label channels from frame 0's mask, the
DAVIS config (top-k 7, queue 20, radius 20). Every measurement runs in its own
subprocess, so its peak RSS (``ru_maxrss``) is its own. The dense reference
(full affinity matrices, argsort top-k) is slow, so it runs on the first
``--dense_frames`` frames of the same video (features are seeded per frame,
so those frames are identical) and rates are per propagated frame. Flatness:
the chunked version on ``--flat_frames`` videos; "working" memory is the peak
RSS minus the RSS once the inputs exist (features grow with T, the working
set should not). Prints a JSON object and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from siammae_jax.eval import propagation as P


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_inputs(args: argparse.Namespace, frames: int) -> tuple[np.ndarray, ...]:
    """Features [T, h, w, D] (seeded per frame) and frame 0's labels [h, w, C]."""
    h, w = args.height // args.patch, args.width // args.patch
    feats = np.empty((frames, h, w, args.dim), np.float32)
    for t in range(frames):
        rng = np.random.default_rng([args.seed, t])
        x = rng.standard_normal((h, w, args.dim), dtype=np.float32)
        feats[t] = x / np.linalg.norm(x, axis=-1, keepdims=True)
    # Frame 0: C - 1 elliptic objects on background, resized like a DAVIS mask.
    rows, cols = np.mgrid[: args.height, : args.width]
    mask = np.zeros((args.height, args.width), np.int64)
    for obj in range(1, args.classes):
        cy, cx = args.height * (0.3 + 0.1 * obj), args.width * 0.18 * obj
        inside = ((rows - cy) / 60.0) ** 2 + ((cols - cx) / 90.0) ** 2 < 1
        mask[inside] = obj
    onehot = np.eye(args.classes, dtype=np.float32)[mask]
    return feats, P.labels_to_grid(onehot, (h, w))


def worker(args: argparse.Namespace) -> None:
    """Runs one implementation; writes its soft labels and a JSON of numbers."""
    feats, first = make_inputs(args, args.worker_frames)
    rss_inputs = peak_rss_mib()
    config = P.PropagationConfig(
        topk=args.topk, queue=args.queue, radius=args.radius, chunk=args.chunk
    )
    compile_s = 0.0
    if args.worker == "chunked":  # Compile on a 2-frame video of the same size.
        start = time.perf_counter()
        P.propagate(feats[:2], first, config)
        compile_s = time.perf_counter() - start
        fn = P.propagate
    else:
        fn = P.propagate_reference
    start = time.perf_counter()
    labels = fn(feats, first, config)
    seconds = time.perf_counter() - start
    np.save(args.worker_out + ".npy", labels)
    result = {
        "impl": args.worker,
        "frames": args.worker_frames,
        "seconds": seconds,
        "frames_per_s": (args.worker_frames - 1) / seconds,
        "compile_s": compile_s,
        "peak_rss_mib": peak_rss_mib(),
        "rss_inputs_mib": rss_inputs,
    }
    result["working_mib"] = result["peak_rss_mib"] - rss_inputs
    with open(args.worker_out + ".json", "w") as f:
        json.dump(result, f)


def run_worker(impl: str, frames: int, out: str) -> tuple[dict, np.ndarray]:
    """Runs ``worker`` in a subprocess; returns its numbers and soft labels."""
    cmd = [sys.executable, __file__, *sys.argv[1:]]
    cmd += ["--worker", impl, "--worker_frames", str(frames), "--worker_out", out]
    subprocess.run(cmd, check=True)
    with open(out + ".json") as f:
        result = json.load(f)
    print(f"  {impl} x {frames} frames: {result}", file=sys.stderr, flush=True)
    return result, np.load(out + ".npy")


def agreement(chunked: np.ndarray, dense: np.ndarray, size: tuple[int, int]) -> dict:
    """Max |difference| of soft labels and argmax agreement (grid and image)."""
    at_image = [
        (P.grid_to_labels(a, size).argmax(-1) == P.grid_to_labels(b, size).argmax(-1))
        for a, b in zip(chunked[1:], dense[1:], strict=True)
    ]
    return {
        "compared_frames": len(dense),
        "max_abs_diff": float(np.abs(chunked - dense).max()),
        "argmax_agreement_grid": float((chunked.argmax(-1) == dense.argmax(-1)).mean()),
        "argmax_agreement_image": float(np.mean(at_image)),
    }


def markdown(results: list[dict], summary: dict) -> str:
    lines = [
        "| implementation | frames | seconds | frames/s | compile s | peak RSS MiB "
        "| RSS with inputs MiB | working MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['impl']} | {r['frames']} | {r['seconds']:.1f} | "
            f"{r['frames_per_s']:.2f} | {r['compile_s']:.1f} | {r['peak_rss_mib']:.0f} "
            f"| {r['rss_inputs_mib']:.0f} | {r['working_mib']:.0f} |"
        )
    lines.append("")
    lines.append(
        f"speedup (frames/s, chunked / dense): {summary['speedup']:.1f}x; "
        f"max |diff| {summary['max_abs_diff']:.2e}, argmax agreement "
        f"{summary['argmax_agreement_grid']:.5f} (grid), "
        f"{summary['argmax_agreement_image']:.5f} (image), over "
        f"{summary['compared_frames']} frames; working MiB by frames: "
        f"{summary['working_mib_by_frames']}"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--dense_frames", type=int, default=10)
    p.add_argument("--flat_frames", type=int, nargs="*", default=[30, 120])
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=880)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--topk", type=int, default=P.DAVIS.topk)
    p.add_argument("--queue", type=int, default=P.DAVIS.queue)
    p.add_argument("--radius", type=float, default=P.DAVIS.radius)
    p.add_argument("--chunk", type=int, default=P.DAVIS.chunk)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", choices=["chunked", "dense"], help=argparse.SUPPRESS)
    p.add_argument("--worker_frames", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker_out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        chunked, labels = run_worker("chunked", args.frames, os.path.join(tmp, "c"))
        dense, reference = run_worker(
            "dense", args.dense_frames, os.path.join(tmp, "d")
        )
        flat = [
            run_worker("chunked", n, os.path.join(tmp, f"f{n}"))[0]
            for n in args.flat_frames
        ]
    summary = agreement(labels[: len(reference)], reference, (args.height, args.width))
    summary["speedup"] = chunked["frames_per_s"] / dense["frames_per_s"]
    summary["working_mib_by_frames"] = {
        r["frames"]: round(r["working_mib"]) for r in [chunked, *flat]
    }
    setting = {k: v for k, v in vars(args).items() if not k.startswith("worker")}
    setting["grid"] = (args.height // args.patch, args.width // args.patch)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform()}
    results = [chunked, dense, *flat]
    out = {"setting": setting, "machine": machine, "results": results, **summary}
    print(json.dumps(out, indent=2))
    print(markdown(results, summary))


if __name__ == "__main__":
    main()
