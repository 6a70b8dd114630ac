"""Issue 17's study: does a CPU pre-training setting beat its random-init twin,
and does its decoder follow motion? Both frozen held-out sets, every seed.

Usage::

    python benchmarks/cpu_learn_study.py --out /tmp/study \\
        --config tiny[,field=value,...] --steps 3000 --every 750 --seeds 0,1,2
    python benchmarks/cpu_learn_study.py --out /tmp/study --compare TAG1,TAG2

The frozen held-out sets (declared in BENCHMARKS.md before any tuning) are
written once under ``<out>/sets``: **A** (synthetic seed 1, default style) and
**B** (seed 2, the ``unseen`` style: other photographs, faster motion), 40
videos of 24 frames at the model's image size. For every seed the config
trains in ``<out>/<tag>/seed<k>`` (a finished run is not trained again) with
the online evaluation on set A every ``--every`` steps (``eval/davis/J&F``, and
the random-init twin's at step 0), keeping a checkpoint at each. Each kept
checkpoint is then measured on set B (J&F, against the twin's) and for motion
on both sets: the last decoder block's correspondence of masked f2 patches at
the declared gaps (A: 12 frames, B: 6; the same-position guess is right for
34% and 31% of patches there) beside that guess and chance.

The issue's targets, per seed: J&F gain >= +0.03 over the twin, and masked
correspondence >= same-position guess + 0.15 at the motion gap.

Writes ``<out>/<tag>/results.json`` and ``results.md`` (mean ± std over seeds
per evaluated step) and prints the table; ``--compare`` prints the final
step of several tags side by side.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import checkout_configs
import jax
import numpy as np
from etils import epath
from flax import nnx

import siammae_jax
from siammae_jax.data import synthetic
from siammae_jax.eval import baselines, encoder, learning, tasks
from siammae_jax.models import vit
from siammae_jax.models.definition import ModelDef
from siammae_jax.train import logs, loop
from siammae_jax.weights import params as weight_params

# set -> (seed, style, motion gap), frozen in BENCHMARKS.md (issue 17).
SETS = {"A": (1, "default", 12), "B": (2, "unseen", 6)}
VIDEOS, FRAMES = 40, 24
TARGET_GAIN, TARGET_MOTION = 0.03, 0.15


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--config", default="tiny", help="variant[,field=value,...]")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--every", type=int, default=750, help="Evaluation interval.")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--tag", default=None)
    p.add_argument(
        "--init_from",
        default=None,
        help="TAG:STEP: start each seed from that study run's checkpoint of the "
        "same seed (a second phase); gains stay over the seed's random init.",
    )
    p.add_argument("--compare", default=None, help="Tags: final steps side by side.")
    return p.parse_args()


def make_config(args: argparse.Namespace, seed: int, set_a: epath.Path):
    config = checkout_configs.config_with_overrides(args.config)
    config.seed = seed
    config.train.steps = args.steps
    config.train.measure_every = 0
    config.train.image_every = 0
    config.train.progress_bar = True
    config.eval.every = args.every
    config.eval.data = str(set_a)
    config.eval.max_videos = VIDEOS
    config.eval.max_seconds = 3600.0
    config.eval.davis.short_side = config.model.image_size
    config.checkpoint.every = args.every
    config.checkpoint.keep_every = args.every
    if args.init_from:
        tag, step = args.init_from.split(":")
        first = epath.Path(args.out) / tag / f"seed{seed}" / "checkpoints" / step
        if not first.exists():
            raise FileNotFoundError(f"--init_from {args.init_from}: no {first}")
        config.init_from = str(first)
    return config


def write_sets(out: epath.Path, size: int) -> dict[str, epath.Path]:
    roots = {}
    for name, (seed, style, _) in SETS.items():
        folder = out / "sets" / f"{name}_{size}px"
        if not (folder / synthetic.MARKER).exists():
            synthetic.write_dataset(
                folder, VIDEOS, FRAMES, (size, size), seed=seed, style=style
            )
        roots[name] = folder / "DAVIS"
    return roots


def no_training(out: epath.Path, sets: dict[str, epath.Path], config) -> dict:
    """J&F on each set of what needs no training (``siammae_jax.eval.baselines``):
    mean-colour patch features, a still copy of frame 0, the grid's ceiling.
    Computed once per set folder."""
    path = out / "sets" / f"baselines_{config.model.image_size}px.json"
    if path.exists():
        return json.loads(path.read_text())
    cfg, (_, patch) = config.eval.davis, vit.parse_variant(config.model.encoder)
    result = {}
    for name, root in sets.items():
        work = out / "sets" / "baselines" / name
        colour = tasks.run_davis(
            lambda f: baselines.patch_features(f, patch, True),
            patch, root, work / "colour", cfg, 0, False,
        )  # fmt: skip
        result[name] = {
            "mean_colour": colour["J&F-Mean"],
            "first_mask": baselines.first_mask(root, work / "first", cfg)["J&F-Mean"],
            "grid_ceiling": baselines.grid_ceiling(root, work / "grid", patch, cfg)[
                "J&F-Mean"
            ],
        }
    path.write_text(json.dumps(result, indent=1))
    return result


def baseline_line(base: dict) -> str:
    return "no training: " + "; ".join(
        f"{s} mean colour {b['mean_colour']:.3f}, first mask {b['first_mask']:.3f}, "
        f"grid ceiling {b['grid_ceiling']:.3f}"
        for s, b in base.items()
    )


def jf(model, davis_root: epath.Path, config, out: epath.Path) -> float:
    row = tasks.run_davis(
        encoder.FeatureExtractor(model), model.patch, davis_root, out,
        config.eval.davis, 0, False,
    )  # fmt: skip
    return float(row["J&F-Mean"])


def motion(model_def: ModelDef, params: dict, size: int) -> dict[str, dict]:
    """Masked / visible last-block correspondence at each set's motion gap."""
    apply = functools.partial(learning.model_apply(model_def), params)
    out = {}
    for name, (seed, style, gap) in SETS.items():
        held = learning.heldout_pairs(seed, VIDEOS, size, FRAMES, gap, style)
        c = learning.decoder_correspondence(
            apply, held, jax.random.key(7), model_def.patch
        )
        out[name] = {
            "gap": gap,
            "masked": c.masked[-1],
            "visible": c.visible[-1],
            "same_position": c.same_position,
            "chance": c.chance,
        }
    return out


def online_jf(workdir: epath.Path) -> dict[int, float]:
    rows = [
        json.loads(x) for x in (workdir / "metrics.jsonl").read_text().split("\n") if x
    ]
    out = {r["step"]: r["eval/davis/J&F"] for r in rows if "eval/davis/J&F" in r}
    twin = [
        r["eval/davis/J&F_random_init"]
        for r in rows
        if "eval/davis/J&F_random_init" in r
    ]
    return {**out, 0: twin[-1]}


def run_seed(args, seed: int, root: epath.Path, sets: dict) -> dict:
    workdir = root / f"seed{seed}"
    done = workdir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    config = make_config(args, seed, sets["A"])
    start = time.time()
    loop.run(config, str(workdir))
    train_s = time.time() - start
    size = config.model.image_size
    model_def = ModelDef.from_config(config.model)
    twin_params = jax.device_get(model_def.init_params(jax.random.key(seed)))
    twin = weight_params.encoder_from(config.model, twin_params["encoder"], "twin")
    steps = {0: {"jf_B": jf(twin, sets["B"], config, workdir / "davis" / "twin_B")}}
    steps[0]["motion"] = motion(model_def, twin_params, size)
    online = online_jf(workdir)
    for step in sorted(s for s in online if s):
        model, _ = siammae_jax.load(str(workdir / "checkpoints" / str(step)))
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        steps[step] = {
            "jf_B": jf(
                model.encoder, sets["B"], config, workdir / "davis" / f"B_{step}"
            ),
            "motion": motion(model_def, params, size),
        }
    for step, value in online.items():
        steps[step]["jf_A"] = value
    result = {
        "seed": seed,
        "train_seconds": round(train_s),
        "measure_seconds": round(time.time() - start - train_s),
        "steps": {str(k): v for k, v in sorted(steps.items())},
    }
    done.write_text(json.dumps(result, indent=1))
    return result


def _ms(values) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():+.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def _m(values) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def _row(results: list[dict], step: str) -> list[str]:
    twin = [r["steps"]["0"] for r in results]
    now = [r["steps"][step] for r in results]
    cells = [
        _ms([n["jf_A"] - t["jf_A"] for n, t in zip(now, twin, strict=True)]),
        _ms([n["jf_B"] - t["jf_B"] for n, t in zip(now, twin, strict=True)]),
    ]
    for name in SETS:
        m = [n["motion"][name] for n in now]
        cells.append(_m([x["masked"] for x in m]))
        cells.append(_m([x["visible"] for x in m]))
        cells.append(f"{m[0]['same_position']:.3f}")
    return cells


HEADER = (
    "| {first} | J&F gain A | J&F gain B | motion A: masked | visible | guess "
    "| motion B: masked | visible | guess |"
)


def table(results: list[dict], base: dict) -> str:
    twin = [r["steps"]["0"] for r in results]
    lines = [
        f"twin J&F: A {_m([t['jf_A'] for t in twin])}, B {_m([t['jf_B'] for t in twin])}; "
        f"chance A {twin[0]['motion']['A']['chance']:.3f}, "
        f"B {twin[0]['motion']['B']['chance']:.3f}",
        baseline_line(base),
        "",
        HEADER.format(first="step"),
        "|---:|" + "---:|" * 8,
    ]
    for step in sorted(results[0]["steps"], key=int):
        lines.append(f"| {step} | " + " | ".join(_row(results, step)) + " |")
    lines += ["", "targets per seed (final step): " + verdict(results)]
    return "\n".join(lines)


def verdict(results: list[dict]) -> str:
    parts = []
    for r in results:
        last = r["steps"][max(r["steps"], key=int)]
        twin = r["steps"]["0"]
        gains = [last[f"jf_{s}"] - twin[f"jf_{s}"] for s in SETS]
        moves = [
            last["motion"][s]["masked"] - last["motion"][s]["same_position"]
            for s in SETS
        ]
        ok = all(g >= TARGET_GAIN for g in gains) and all(
            m >= TARGET_MOTION for m in moves
        )
        parts.append(
            f"seed {r['seed']}: gain A {gains[0]:+.3f} B {gains[1]:+.3f}, "
            f"motion - guess A {moves[0]:+.3f} B {moves[1]:+.3f} "
            f"({'met' if ok else 'not met'})"
        )
    return "; ".join(parts)


def compare(out: epath.Path, tags: list[str]) -> str:
    lines = [HEADER.format(first="run (seeds, final step)"), "|---|" + "---:|" * 8]
    for tag in tags:
        results = json.loads((out / tag / "results.json").read_text())
        step = max(results[0]["steps"], key=int)
        name = f"{tag} ({len(results)}, {step})"
        lines.append(f"| {name} | " + " | ".join(_row(results, step)) + " |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    logs.quiet_library_logs()
    out = epath.Path(args.out)
    if args.compare:
        print(compare(out, args.compare.split(",")))
        return
    tag = args.tag or args.config.replace(",", "_").replace("=", "-") + f"_{args.steps}"
    root = out / tag
    root.mkdir(parents=True, exist_ok=True)
    size = checkout_configs.config_with_overrides(args.config).model.image_size
    sets = write_sets(out, size)
    base = no_training(out, sets, checkout_configs.config_with_overrides(args.config))
    print(baseline_line(base), flush=True)
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        results.append(run_seed(args, seed, root, sets))
        r = results[-1]
        print(f"[study] {tag} seed {seed}: train {r['train_seconds']} s, "
              f"measures {r['measure_seconds']} s", flush=True)  # fmt: skip
    text = table(results, base)
    (root / "results.json").write_text(json.dumps(results, indent=1))
    (root / "results.md").write_text(f"`{args.config}`, {args.steps} steps\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
