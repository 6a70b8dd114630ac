"""Probe a training checkpoint: measures (a) and (b) at several frame gaps.

Usage::

    python benchmarks/learning_probe.py --checkpoint WORKDIR [--gaps 2,4,8,12]
        [--videos 40] [--seed 1]

Restores the whole model of a checkpoint (a workdir, its ``checkpoints`` folder
or one step folder) and, for held-out synthetic pairs ``gap`` frames apart
(``siammae_jax.eval.learning.heldout_pairs``), prints one markdown row per gap:
the masked-patch loss with the true f1, another video's f1, the true f1 with
its patches shuffled, and f1 = f2 (a perfectly aligned past frame: what exact
copying could reach), then the decoder correspondence of every block for
visible and masked f2 patches against the same-position guess and chance.
Small gaps show whether the decoder copies from the right place; gaps beyond
one patch of motion show whether its attention follows the motion.
"""

from __future__ import annotations

import argparse

import jax
import ml_collections

from siammae_jax.data import pairs as pairs_lib
from siammae_jax.eval import encoder, learning
from siammae_jax.train import config as config_lib
from siammae_jax.train import logs
from siammae_jax.train import state as state_lib


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="Workdir or step folder.")
    p.add_argument("--gaps", default="2,4,8,12", help="Frame gaps f1 -> f2.")
    p.add_argument("--videos", type=int, default=40, help="Held-out videos.")
    p.add_argument("--seed", type=int, default=1, help="Held-out video seed.")
    return p.parse_args()


def _blocks(values) -> str:
    return "/".join(f"{v:.3f}" for v in values)


def probe(checkpoint: str, gaps: list[int], videos: int, seed: int) -> str:
    params, model_cfg, state_dir = encoder.load_checkpoint_params(checkpoint)
    kwargs = config_lib.model_kwargs(ml_collections.ConfigDict({"model": model_cfg}))
    model_def = state_lib.ModelDef(kwargs, [])

    @jax.jit
    def with_attention(f1, f2, key):
        return model_def.apply(
            params, model_def.buffers, f1, f2, key, return_attention=True
        )

    @jax.jit
    def plain(f1, f2, key):
        return model_def.apply(params, model_def.buffers, f1, f2, key)

    def apply(f1, f2, key, attention):
        return (with_attention if attention else plain)(f1, f2, key)

    key = jax.random.key(0)
    lines = [
        f"checkpoint {state_dir.parent}: {model_cfg['encoder']}, "
        f"{model_cfg['decoder_type']} decoder x{model_cfg['decoder_depth']}, "
        f"mask {model_cfg['mask_ratio']}; {videos} held-out videos (seed {seed}); "
        "correspondence per decoder block (first/.../last)",
        "",
        "| gap | loss true f1 | other f1 | shuffled f1 | f1 = f2 | corr. visible "
        "| corr. masked | same position | chance |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for gap in gaps:
        held = learning.heldout_pairs(seed, videos, model_cfg["image_size"], gap=gap)
        past = learning.past_frame_use(apply, held, key, model_def.patch)
        f2 = pairs_lib.normalize(held.frames[:, 1])
        aligned = float(apply(f2, f2, key, False).loss)
        corr = learning.decoder_correspondence(apply, held, key, model_def.patch)
        lines.append(
            f"| {gap} | {past.true:.3f} | {past.other:.3f} | {past.shuffled:.3f} "
            f"| {aligned:.3f} | {_blocks(corr.visible)} | {_blocks(corr.masked)} "
            f"| {corr.same_position:.3f} | {corr.chance:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    logs.quiet_library_logs()
    gaps = [int(g) for g in args.gaps.split(",")]
    print(probe(args.checkpoint, gaps, args.videos, args.seed), flush=True)


if __name__ == "__main__":
    main()
