"""Probe a training checkpoint: measures (a) and (b) at several frame gaps.

Usage::

    python benchmarks/learning_probe.py --checkpoint WORKDIR[,WORKDIR...]
        [--gaps 2,4,8,12] [--videos 40] [--seed 1]

Restores the whole model of a checkpoint (a workdir, its ``checkpoints`` folder
or one step folder) and, for held-out synthetic pairs ``gap`` frames apart
(``siammae_jax.eval.learning.heldout_pairs``), prints one markdown row per gap:
the masked-patch loss with the true f1, another video's f1, the true f1 with
its patches shuffled, and f1 = f2 (a perfectly aligned past frame: what exact
copying could reach), then the decoder correspondence of every block for
visible and masked f2 patches against the same-position guess and chance.
Several checkpoints (e.g. one per seed) give mean ± std.
Small gaps show whether the decoder copies from the right place; gaps beyond
one patch of motion show whether its attention follows the motion.
"""

from __future__ import annotations

import argparse
import functools

import jax
import numpy as np

from siammae_jax.data import pairs as pairs_lib
from siammae_jax.eval import learning
from siammae_jax.models.definition import ModelDef
from siammae_jax.train import logs
from siammae_jax.weights import checkpoints


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--checkpoint",
        required=True,
        help="Workdir or step folder; comma-separated for mean ± std (seeds).",
    )
    p.add_argument("--gaps", default="2,4,8,12", help="Frame gaps f1 -> f2.")
    p.add_argument("--videos", type=int, default=40, help="Held-out videos.")
    p.add_argument("--seed", type=int, default=1, help="Held-out video seed.")
    return p.parse_args()


def measure(checkpoint: str, gaps: list[int], videos: int, seed: int):
    """(model config, {gap: {measure: value or per-block tuple}}) of a checkpoint."""
    params, config, _ = checkpoints.load_params(checkpoint)
    model_cfg = config["model"]
    model_def = ModelDef.from_config(model_cfg)

    apply = functools.partial(learning.model_apply(model_def), params)

    key = jax.random.key(0)
    out = {}
    for gap in gaps:
        held = learning.heldout_pairs(seed, videos, model_cfg["image_size"], gap=gap)
        past = learning.past_frame_use(apply, held, key, model_def.patch)
        f2 = pairs_lib.normalize(held.frames[:, 1])
        corr = learning.decoder_correspondence(apply, held, key, model_def.patch)
        out[gap] = {
            **past._asdict(),
            "aligned": float(apply(f2, f2, key, False).loss),
            "visible": corr.visible,
            "masked": corr.masked,
            "same": corr.same_position,
            "chance": corr.chance,
        }
    return model_cfg, out


def _ms(values) -> str:
    """mean ± std over checkpoints, or the value alone for one checkpoint;
    per-block tuples as block0/block1/..."""
    v = np.asarray(values, float)  # [checkpoints] or [checkpoints, blocks]
    if v.ndim == 2:
        return "/".join(_ms(v[:, i]) for i in range(v.shape[1]))
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


COLUMNS = (
    ("loss true f1", "true"),
    ("other f1", "other"),
    ("shuffled f1", "shuffled"),
    ("f1 = f2", "aligned"),
    ("corr. visible", "visible"),
    ("corr. masked", "masked"),
    ("same position", "same"),
    ("chance", "chance"),
)


def probe(checkpoints: list[str], gaps: list[int], videos: int, seed: int) -> str:
    """Markdown: one row per gap, mean ± std over ``checkpoints`` (e.g. seeds)."""
    runs = [measure(c, gaps, videos, seed) for c in checkpoints]
    cfg = runs[0][0]
    lines = [
        f"{len(runs)} checkpoint(s) of {cfg['encoder']}, {cfg['decoder_type']} "
        f"decoder x{cfg['decoder_depth']}, mask {cfg['mask_ratio']}; {videos} "
        f"held-out videos (seed {seed}); correspondence per decoder block "
        "(first/.../last)",
        "",
        "| gap | " + " | ".join(label for label, _ in COLUMNS) + " |",
        "|---:|" + "---:|" * len(COLUMNS),
    ]
    for gap in gaps:
        cells = [_ms([run[1][gap][k] for run in runs]) for _, k in COLUMNS]
        lines.append(f"| {gap} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    logs.quiet_library_logs()
    gaps = [int(g) for g in args.gaps.split(",")]
    checkpoints = args.checkpoint.split(",")
    print(probe(checkpoints, gaps, args.videos, args.seed), flush=True)


if __name__ == "__main__":
    main()
