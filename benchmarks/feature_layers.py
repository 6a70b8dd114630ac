"""Issue 17 diagnostic: held-out J&F of each encoder block's tokens, trained
encoder against its random-init twin.

Usage: python benchmarks/feature_layers.py --run STUDY/TAG/seedK [--step N]
    [--out DIR]

For a run of ``benchmarks/cpu_learn_study.py`` (its frozen sets A and B, its
checkpoint at ``--step``, default the last), propagates DAVIS-style labels
(the evaluation's settings) with the L2-normalised patch tokens after the
patch embedding (layer 0) and after each block (layers 1..depth, before the
final LayerNorm), and with the evaluation's own features (``final``: after the
final LayerNorm). A diagnostic of where in the encoder the useful features
are, not the protocol: the study's claims use ``final``.
"""

from __future__ import annotations

import argparse
import json

import checkout_configs
import cpu_learn_study
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

import siammae_jax
from siammae_jax.data import pairs
from siammae_jax.eval import encoder, tasks
from siammae_jax.models.definition import ModelDef
from siammae_jax.train import logs
from siammae_jax.weights import params as weight_params


def layer_extractors(model) -> dict:
    """name -> ``frames -> features`` for every layer of the ViT ``model``."""
    graphdef, state = nnx.split(model)
    depth, patch = len(model.blocks), model.patch

    @jax.jit
    def all_layers(state, frames):
        vit = nnx.merge(graphdef, state)
        x = vit.embed(pairs.normalize(frames))
        out = [x]
        for block in vit.blocks:
            x, _ = block(x)
            out.append(x)
        out.append(vit.norm(x))
        return jnp.stack([o[:, 1:].astype(jnp.float32) for o in out])

    def extract(index):
        def fn(frames):
            grid = (frames.shape[1] // patch, frames.shape[2] // patch)

            def run(chunk):
                x = np.asarray(all_layers(state, chunk))[index]
                x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
                return x.reshape(x.shape[0], *grid, x.shape[-1])

            return encoder.in_batches(run, frames, 8)

        return fn

    names = [str(k) for k in range(depth + 1)] + ["final"]
    return {name: extract(i) for i, name in enumerate(names)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="STUDY/TAG/seedK of the study")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--out", default=None, help="default: RUN/layers")
    args = p.parse_args()
    logs.quiet_library_logs()
    run = epath.Path(args.run)
    study = run.parent.parent
    seed = int(run.name.removeprefix("seed"))
    steps = sorted(
        int(s.name) for s in (run / "checkpoints").iterdir() if s.name.isdigit()
    )
    step = args.step or steps[-1]
    model, model_config = siammae_jax.load(str(run / "checkpoints" / str(step)))
    config = checkout_configs.config_with_overrides("tiny")  # the eval settings
    config.model.update(model_config)
    size = config.model.image_size
    config.eval.davis.short_side = size  # as the study
    sets = cpu_learn_study.write_sets(study, size)
    model_def = ModelDef.from_config(config.model)
    twin_params = jax.device_get(model_def.init_params(jax.random.key(seed)))
    twin = weight_params.encoder_from(config.model, twin_params["encoder"], "twin")
    out = epath.Path(args.out or run / "layers")
    cfg = config.eval.davis
    result = {"run": str(run), "step": step, "layers": {}}
    for who, vit in (("trained", model.encoder), ("twin", twin)):
        for name, extract in layer_extractors(vit).items():
            row = result["layers"].setdefault(name, {})
            for s, root in sets.items():
                scores = tasks.run_davis(
                    extract, vit.patch, root, out / who / name / s, cfg, 0, False
                )
                row[f"{who}_{s}"] = float(scores["J&F-Mean"])
            print(name, who, row, flush=True)
    (out / "layers.json").write_text(json.dumps(result, indent=1))
    print(f"\n{run} step {step}\n")
    print("| layer | trained A | twin A | gain A | trained B | twin B | gain B |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in result["layers"].items():
        print(
            f"| {name} | {r['trained_A']:.3f} | {r['twin_A']:.3f} | "
            f"{r['trained_A'] - r['twin_A']:+.3f} | {r['trained_B']:.3f} | "
            f"{r['twin_B']:.3f} | {r['trained_B'] - r['twin_B']:+.3f} |"
        )


if __name__ == "__main__":
    main()
