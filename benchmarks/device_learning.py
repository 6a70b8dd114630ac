"""Issue 17 on an accelerator: a 224-px ViT pre-trained on synthetic videos in a
few minutes, with online J&F against its random-init twin. One prepared command.

Usage (one GPU; the whole run, compiles and data preparation included, stays
within ``--budget_s``)::

    python benchmarks/device_learning.py --out DIR [--budget_s 480]
        [--config vits16] [--batch 128] [--videos 256] [--every 500]
    python benchmarks/device_learning.py --out DIR --smoke   # CPU check, ~1 min

1. Renders ``--videos`` synthetic training videos (256 px, 24 frames, default
   style, data seed 0) as JPEG frame folders in parallel on the host's CPUs,
   and the frozen held-out set A (seed 1, 20 videos) at the model's size in
   DAVIS layout (BENCHMARKS.md, issue 17).
2. Trains ``--config`` with ``--config.eval.every=--every`` on set A under a
   wall-clock deadline: at ``--budget_s`` minus a reserve for the last
   evaluation the run gets SIGTERM, which saves and stops it cleanly (the
   loop's preemption path); otherwise it runs ``--steps``.
3. Writes ``DIR/device_learning.json`` and ``.md``: device, jax version, date,
   seconds per phase, pairs/s, and the J&F curve beside the twin's
   (``eval/davis/J&F_random_init``), with the gain at the best and last step.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import signal
import threading
import time

import checkout_configs
import jax
import numpy as np
from absl import flags
from etils import epath
from PIL import Image

from siammae_jax.data import synthetic
from siammae_jax.train import logs, loop

FRAMES = 24
HELDOUT_VIDEOS = 20
EVAL_RESERVE_S = 45.0  # left for the final evaluation and checkpoint


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--budget_s", type=float, default=480.0)
    p.add_argument("--config", default="vits16", help="variant[,field=value,...]")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--videos", type=int, default=256, help="Training videos.")
    p.add_argument("--video_size", type=int, default=256)
    p.add_argument("--steps", type=int, default=4000, help="Upper bound.")
    p.add_argument("--every", type=int, default=500, help="Online J&F interval.")
    p.add_argument("--lr", type=float, default=1e-3, help="Peak learning rate.")
    p.add_argument("--smoke", action="store_true", help="Tiny sizes, for CPU.")
    return p.parse_args()


def _render(args: tuple[int, epath.Path, int]) -> None:
    index, root, size = args
    video = synthetic.make_video(0, index, FRAMES, (size, size))
    folder = root / video.name
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(video.frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=92)


def _heldout(root: epath.Path, size: int) -> None:
    synthetic.write_dataset(
        root, HELDOUT_VIDEOS, FRAMES, (size, size), seed=1, progress=False
    )


def prepare(out: epath.Path, videos: int, video_size: int, size: int) -> tuple:
    """Training frame folders and held-out set A, rendered in parallel."""
    train, heldout = out / "train_frames", out / f"heldout_A_{size}px"
    workers = os.cpu_count() or 2
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        held = None
        if not (heldout / synthetic.MARKER).exists():
            held = pool.submit(_heldout, heldout, size)
        todo = [
            (i, train, video_size)
            for i in range(videos)
            if not (train / f"synth_{i:04d}" / f"{FRAMES - 1:05d}.jpg").exists()
        ]
        list(pool.map(_render, todo, chunksize=4))
        if held:
            held.result()
    return train, heldout / "DAVIS"


def make_config(args: argparse.Namespace, train: epath.Path, davis_root):
    config = checkout_configs.config_with_overrides(args.config)
    if args.smoke:
        config.model.update(
            encoder="test/8", image_size=32, decoder_dim=32, decoder_depth=2,
            decoder_heads=2, dtype="float32",
        )  # fmt: skip
    config.batch_size = args.batch
    config.data.path = str(train)
    config.data.format = "frames"
    config.data.num_workers = min(16, os.cpu_count() or 2)
    config.optim.base_lr = args.lr * config.optim.lr_reference_batch / args.batch
    config.optim.warmup_epochs = round(0.05 * config.optim.epochs)
    config.train.steps = args.steps
    config.train.log_every = 50
    config.train.image_every = 0
    config.train.measure_every = 0
    config.eval.every = args.every
    config.eval.data = str(davis_root)
    config.eval.max_videos = HELDOUT_VIDEOS
    config.eval.davis.short_side = config.model.image_size
    config.checkpoint.every = args.every
    return config


def _deadline(seconds: float) -> threading.Event:
    """SIGTERM to this process after ``seconds`` (once the training loop has
    its handler: it then saves and stops); set the returned event to cancel."""
    cancel = threading.Event()

    def fire():
        if cancel.wait(max(1.0, seconds)):
            return
        while signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            if cancel.wait(0.5):
                return
        print("[device_learning] deadline: stopping the run", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=fire, daemon=True).start()
    return cancel


def report(workdir: epath.Path, phases: dict, args) -> dict:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    twin = next(r["eval/davis/J&F_random_init"] for r in rows if r["step"] == 0)
    curve = {r["step"]: r["eval/davis/J&F"] for r in rows if "eval/davis/J&F" in r}
    rates = [r["pairs_per_sec"] for r in rows if "pairs_per_sec" in r]
    best = max(curve, key=curve.get) if curve else None
    last = max(curve) if curve else None
    return {
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
        "config": args.config,
        "batch": args.batch,
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "steps": max(r["step"] for r in rows),
        "pairs_per_sec_median": float(np.median(rates)) if rates else None,
        "jf_random_init": twin,
        "jf": curve,
        "gain_best": curve[best] - twin if curve else None,
        "gain_last": curve[last] - twin if curve else None,
    }


def markdown(r: dict) -> str:
    lines = [
        f"{r['device']}, jax {r['jax']}, {r['date']}: `{r['config']}` batch "
        f"{r['batch']}, {r['steps']} steps, median {r['pairs_per_sec_median']} "
        f"pairs/s; seconds {r['phases_s']}",
        "",
        "| step | J&F (set A) | gain over the twin |",
        "|---:|---:|---:|",
        f"| 0 (random-init twin) | {r['jf_random_init']:.3f} | |",
    ]
    for step, value in sorted(r["jf"].items()):
        lines.append(f"| {step} | {value:.3f} | {value - r['jf_random_init']:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.smoke:
        args.batch, args.videos, args.video_size = 8, 16, 48
        args.steps, args.every, args.budget_s = 40, 20, min(args.budget_s, 300)
    logs.quiet_library_logs()
    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    start = time.time()
    out = epath.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = checkout_configs.config_with_overrides(args.config).model.image_size
    size = 32 if args.smoke else size
    train, davis_root = prepare(out, args.videos, args.video_size, size)
    phases = {"data": time.time() - start}
    config = make_config(args, train, davis_root)
    cancel = _deadline(args.budget_s - EVAL_RESERVE_S - (time.time() - start))
    loop.run(config, str(out / "run"))
    cancel.set()
    phases["training"] = time.time() - start - phases["data"]
    result = report(out / "run", phases, args)
    (out / "device_learning.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (out / "device_learning.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
