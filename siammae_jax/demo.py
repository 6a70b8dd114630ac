"""``make demo``: pre-train the cpu_learn config on CPU and show what it learned.

1. writes the embedded synthetic training videos and held-out videos (another
   seed) with DAVIS-layout ground truth and known motion;
2. pre-trains the ``cpu_learn`` config (``siammae_jax.train.loop.run``) under one
   progress line, which logs loss, learning measures, online J&F on the
   held-out videos and reconstructions to TensorBoard and metrics.jsonl;
3. measures on the held-out videos: past-frame use (with another video's and
   a patch-shuffled f1), decoder correspondence at the training gaps and at a
   gap where the same-position guess fails (motion); the J&F lines are the
   training run's online evaluation: the last one, and the random-init
   twin's at step 0;
4. writes pictures (reconstructions, where the decoder looks in f1,
   propagation overlays, [CLS] attention) and prints a one-screen summary.

``--quick`` is the ~3-minute version (``make demo QUICK=1``, 500 steps).
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from etils import epath

from siammae_jax.configs import siammae as configs
from siammae_jax.data import pairs, synthetic
from siammae_jax.eval import attention, baselines, learning, pictures, tasks
from siammae_jax.models import vit
from siammae_jax.train import evaluation, logs, loop
from siammae_jax.weights import params as weight_params

_WORKDIR = flags.DEFINE_string("workdir", "demo_out", "Where everything is written.")
_QUICK = flags.DEFINE_bool("quick", False, "The ~3-minute version.")
_STEPS = flags.DEFINE_integer(
    "steps", None, "Training steps (default: cpu_learn's 3000; 500 quick)."
)
_HELDOUT = flags.DEFINE_integer(
    "heldout_videos", None, "Held-out videos (40; 16 quick)."
)


MOTION_GAP = 12  # frames between f1 and f2 for the demo's motion line


def _say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def train(
    workdir: epath.Path, steps: int, davis_root: epath.Path, videos: int
) -> tuple[ml_collections.ConfigDict, Any]:
    """Pre-trains the cpu_learn config under one progress line, with online J&F
    on the held-out videos at the start (random init), half-way and at the end."""
    config = configs.get_config("cpu_learn")
    config.train.steps = steps
    config.train.progress_bar = True
    config.data.format = "synthetic"  # written there on the first run
    config.data.path = str(workdir / "synthetic")
    config.eval.every = max(1, steps // 2)
    config.eval.data = str(davis_root)
    config.eval.max_videos = videos
    _say(f"pre-training the cpu_learn config for {steps} steps in {workdir} ...")
    state = loop.run(config, str(workdir))
    return config, state


def heldout(workdir: epath.Path, videos: int, size: int) -> epath.Path:
    root = workdir / "heldout"
    if not (root / "synthetic.json").exists():
        _say(f"writing {videos} held-out synthetic videos (seed 1) ...")
        synthetic.write_dataset(
            root, videos=videos, frames=24, size=(size, size), seed=1
        )
    return root


def measures(
    config: ml_collections.ConfigDict, state: Any, workdir: epath.Path, videos: int
) -> dict:
    """(a) past-frame use and (b) decoder correspondence, with a picture."""
    from siammae_jax.models.definition import ModelDef

    model_def = ModelDef.from_config(config.model)
    params = jax.device_get(state.params)

    apply = functools.partial(learning.model_apply(model_def), params)

    held = learning.heldout_pairs(
        1, videos, config.model.image_size, gap=config.train.measure_gap
    )
    key = jax.random.key(123)
    scalars = learning.measures(apply, held, key, model_def.patch)
    prefix = "past_frame_loss_"
    out = {
        "past_frame": {
            k[len(prefix) :]: v for k, v in scalars.items() if k.startswith(prefix)
        },
        "correspondence": {
            k: v for k, v in scalars.items() if k.startswith("correspondence")
        },
    }
    x = pairs.normalize(held.frames[:4])
    pred = apply(x[:, 0], x[:, 1], key, False)
    grid = pictures.reconstruction_grid(
        np.asarray(x[:, 0]), np.asarray(x[:, 1]), pred.mask, pred.pred, pred.target,
        patch=model_def.patch, norm_pix=config.model.norm_pix_loss,
        ddof=config.model.norm_pix_ddof,
    )  # fmt: skip
    (workdir / "pictures").mkdir(exist_ok=True)
    pictures.save(workdir / "pictures" / "reconstruction.png", grid)
    # Motion: a gap at which the same-position guess is wrong for most patches
    # (about 2/3 of them on 64-px synthetic videos at 12 frames).
    far = learning.heldout_pairs(1, videos, config.model.image_size, gap=MOTION_GAP)
    moving = learning.decoder_correspondence(apply, far, key, model_def.patch)
    out["motion"] = {"gap": MOTION_GAP, **moving.scalars()}
    picture = pictures.correspondence_picture(
        apply, held.first(4), key, model_def.patch, scale=3, per_row=2
    )
    pictures.save(workdir / "pictures" / "correspondence.png", picture)
    return out


def online_scores(workdir: epath.Path) -> dict:
    """(c) J&F of the pre-trained encoder (the run's last online evaluation)
    and of its random-init twin (step 0), from ``metrics.jsonl``."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]

    def last(suffix: str) -> dict:
        key = f"{evaluation.PREFIX}J&F{suffix}"
        found = [r for r in rows if key in r]
        if not found:
            raise RuntimeError(
                f"no {key} in {workdir / 'metrics.jsonl'}: the online evaluation "
                "failed (see the warnings above)"
            )
        return {
            f"{name}-Mean": found[-1][f"{evaluation.PREFIX}{name}{suffix}"]
            for name in ("J&F", "J", "F")
        }

    return {"pre-trained": last(""), "random-init": last(evaluation.RANDOM_INIT)}


def attention_maps(
    config: ml_collections.ConfigDict, state: Any, davis_root: epath.Path, out
) -> None:
    """[CLS] attention maps of the pre-trained encoder on a held-out video."""
    trained = weight_params.encoder_from(
        config.model, jax.device_get(state.params["encoder"]), "train state"
    )
    first = sorted((davis_root / "JPEGImages" / "480p").iterdir())[0]
    size = config.model.image_size
    attention.run(trained, str(first), str(out), 4 * size, 24)


def colour_baseline(
    config: ml_collections.ConfigDict, davis_root: epath.Path, workdir: epath.Path
) -> dict:
    """J&F of mean-colour patch features (no learning) on the held-out set,
    with the online evaluation's settings: what the encoder gain is read beside."""
    _, patch = vit.parse_variant(config.model.encoder)
    return tasks.run_davis(
        lambda frames: baselines.patch_features(frames, patch, mean_only=True),
        patch, davis_root, workdir / "eval" / "mean_colour", config.eval.davis,
        0, False,
    )  # fmt: skip


# Where the online evaluation leaves each encoder's overlay pictures.
OVERLAYS = {
    "pre-trained": f"{evaluation.OUT_DIR}/overlays",
    "random-init": f"{evaluation.OUT_DIR}/{evaluation.TWIN_DIR}/overlays",
}


def summary_picture(workdir: epath.Path, scores: dict) -> epath.Path:
    """``pictures/summary.png``: reconstructions above the propagation overlays."""
    from PIL import Image

    def load(path):
        return np.asarray(Image.open(path).convert("RGB"))

    pics = workdir / "pictures"
    panels = [
        (
            "reconstructions (rows: f1 | f2 masked | reconstruction | f2)",
            load(pics / "reconstruction.png"),
        ),
        (
            "decoder cross-attention of a masked f2 patch (red) over f1: bright = "
            "attended, yellow = peak, green = true source",
            load(pics / "correspondence.png"),
        ),
    ]
    for name in ("pre-trained", "random-init"):
        first = sorted((workdir / OVERLAYS[name]).glob("*.png"))[0]
        jf = scores[name]["J&F-Mean"]
        caption = f"{name} encoder, label propagation ({first.stem}, J&F {jf:.3f})"
        panels.append((caption, load(first)))
    path = pics / "summary.png"
    pictures.save(path, pictures.captioned_column(panels, width=768))
    return path


def summary(workdir: epath.Path, m: dict, scores: dict) -> str:
    past, corr = m["past_frame"], m["correspondence"]
    true, other, shuffled = past["true"], past["other"], past["shuffled"]

    def by_block(name):
        keys = sorted(k for k in corr if k.startswith(f"correspondence_{name}_block"))
        return ", ".join(f"{corr[k]:.3f}" for k in keys)

    lines = [
        f"past-frame use: loss with true f1 {true:.3f} vs other-video f1 {other:.3f}",
        f"  layout use: loss with true f1's patches shuffled {shuffled:.3f} (same "
        "colours, no layout; a model that copies from the right place loses here)",
        f"decoder correspondence: {corr['correspondence']:.3f} within 1 patch "
        f"(chance {corr['correspondence_chance']:.3f}); same-position guess "
        f"{corr['correspondence_same_position']:.3f}",
        f"  per decoder block: visible f2 patches {by_block('visible')}; masked "
        f"{by_block('masked')}; same-position guess "
        f"{corr['correspondence_same_position']:.3f}",
    ]
    if "motion" in m:
        move = m["motion"]
        lines.append(
            f"motion: correspondence {move['correspondence']:.3f} at a gap of "
            f"{move['gap']} frames (same-position guess "
            f"{move['correspondence_same_position']:.3f}, chance "
            f"{move['correspondence_chance']:.3f}; following motion means beating "
            "the guess)"
        )
    for name in ("pre-trained", "random-init"):
        s = scores[name]
        lines.append(
            f"{name} encoder: J&F {s['J&F-Mean']:.3f} "
            f"(J {s['J-Mean']:.3f}, F {s['F-Mean']:.3f})"
        )
    gain = scores["pre-trained"]["J&F-Mean"] - scores["random-init"]["J&F-Mean"]
    lines.append(f"encoder gain: J&F {gain:+.3f} over random init")
    if "mean colour" in scores:
        colour = scores["mean colour"]["J&F-Mean"]
        lines.append(
            f"  no learning: mean-colour patch features J&F {colour:.3f} "
            f"({colour - scores['random-init']['J&F-Mean']:+.3f} over random init; "
            "the encoder's gain means little below it)"
        )
    lines += [
        f"pictures: {workdir / 'pictures'} (summary.png, reconstruction.png, "
        "correspondence.png, attention.png/.mp4), "
        f"{workdir / OVERLAYS['pre-trained']}",
        f"logs: tensorboard --logdir {workdir}  (scalars also in "
        f"{workdir / 'metrics.jsonl'}); checkpoints: {workdir / 'checkpoints'}",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    logs.quiet_library_logs()
    workdir = epath.Path(_WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    full = configs.get_config("cpu_learn").train.steps
    steps = _STEPS.value or (500 if _QUICK.value else full)
    videos = _HELDOUT.value or (16 if _QUICK.value else 40)
    start = time.time()
    size = configs.get_config("cpu_learn").model.image_size
    davis_root = heldout(workdir, videos, size) / "DAVIS"
    config, state = train(workdir, steps, davis_root, videos)
    _say("measuring past-frame use and decoder correspondence ...")
    m = measures(config, state, workdir, videos)
    scores = online_scores(workdir)
    scores["mean colour"] = colour_baseline(config, davis_root, workdir)
    attention_maps(config, state, davis_root, workdir / "pictures")
    summary_picture(workdir, scores)
    text = summary(workdir, m, scores)
    record = {"steps": steps, "seconds": round(time.time() - start), **m, **scores}
    (workdir / "summary.json").write_text(json.dumps(record, indent=2))
    print(
        f"\n=== SiamMAE demo summary ({steps} steps, {time.time() - start:.0f} s) ==="
    )
    print(text)


if __name__ == "__main__":
    app.run(main)
