"""What DAVIS-style J&F on a held-out set measures: trivial features and the
ceiling of the patch grid, beside which an encoder's J&F (and its gain over a
random-init twin) should be read.

Usage::

    python benchmarks/jf_baselines.py --root SET/DAVIS [--patch 8] [--short_side 64]

Scores, with the settings of ``python -m siammae_jax.eval davis`` (the same
propagation, resizing and scorer):
- ``mean colour``: each patch's mean RGB, L2-normalised (its chromaticity; 3
  numbers, no learning);
- ``pixels``: each patch's pixels, mean-removed and L2-normalised;
- ``first mask``: frame 0's masks copied to every frame (nothing moves: the
  score of a feature that only knows positions);
- ``grid ceiling``: no propagation at all: every frame's true masks pooled to
  the feature grid and upsampled as propagated labels are; what a perfect
  feature could reach at this patch size.
"""

from __future__ import annotations

import argparse
import tempfile

from siammae_jax.configs import siammae as siammae_config
from siammae_jax.eval import baselines, tasks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="A DAVIS-2017 layout root.")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--short_side", type=int, default=64)
    args = p.parse_args()
    cfg = siammae_config.get_config("tiny").eval.davis
    cfg.short_side = args.short_side
    with tempfile.TemporaryDirectory() as tmp:
        for name, mean_only in (("mean colour", True), ("pixels", False)):
            row = tasks.run_davis(
                lambda f, m=mean_only: baselines.patch_features(f, args.patch, m),
                args.patch, args.root, f"{tmp}/{name}", cfg, 0, False,
            )  # fmt: skip
            print(f"{name}: J&F {row['J&F-Mean']:.4f}", flush=True)
        row = baselines.first_mask(args.root, f"{tmp}/first", cfg)
        print(f"first mask: J&F {row['J&F-Mean']:.4f}", flush=True)
        row = baselines.grid_ceiling(args.root, f"{tmp}/ceiling", args.patch, cfg)
        print(f"grid ceiling: J&F {row['J&F-Mean']:.4f}", flush=True)


if __name__ == "__main__":
    main()
