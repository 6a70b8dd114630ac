"""Learning-signal study: what pre-training learns, over training time and seeds.

Usage::

    python benchmarks/learning_signal.py --out /tmp/ls [--config tiny]
        [--steps 600] [--measure_every 150] [--seeds 0,1,2]
        [--decoder_type cross_self|cross|joint] [--mask_ratio 0.9]
        [--heldout_videos 40]

For every seed, ``siammae_jax.train.loop.run`` trains the config in its own
workdir (``<out>/<tag>/seed<k>``; a finished run is not trained again) with
``train.measure_every`` set, so the loop logs the measures of
``siammae_jax.eval.learning`` on held-out synthetic videos to ``metrics.jsonl``:
(a) past-frame use (masked-patch loss with the true f1 vs f1 of another video
and vs the true f1 with its patches shuffled) and (b) decoder correspondence
(fraction within 1 patch for every decoder block, against the chance rate and
the same-position guess), on held-out pairs ``train.measure_gap`` frames apart.
At the end of each run, (c) DAVIS-style J&F of label propagation with the
frozen pre-trained encoder vs a random-init encoder of the same size, on
``--heldout_videos`` synthetic videos of seed 1 (as ``make demo``).

``--compare tag1,tag2`` prints the final-step measures of finished runs side
by side (the ablation tables of BENCHMARKS.md).

Writes ``<out>/<tag>/results.md`` (mean +- std over seeds per measured step),
``results.json`` and ``curves.png`` (drawn with PIL), and prints the table.

``--config`` is a variant of ``configs/siammae.py`` optionally followed by
comma-separated ``field=value`` overrides, e.g. a larger CPU config::

    --config tiny,model.image_size=96,data.synthetic_size=128
"""

from __future__ import annotations

import argparse
import json
import time

import checkout_configs
import jax
import numpy as np
from etils import epath
from PIL import Image, ImageDraw

from siammae_jax.data import synthetic
from siammae_jax.eval import config as eval_config
from siammae_jax.eval import encoder, tasks
from siammae_jax.train import logs, loop
from siammae_jax.weights import params as weight_params

SCORES = ("J&F-Mean", "J-Mean", "F-Mean")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="Root of the runs and results.")
    p.add_argument("--config", default="tiny", help="variant[,field=value,...]")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--measure_every", type=int, default=150)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--decoder_type", default=None, help="cross_self|cross|joint")
    p.add_argument("--mask_ratio", type=float, default=None)
    p.add_argument("--heldout_videos", type=int, default=40, help="J&F videos.")
    p.add_argument("--measure_videos", type=int, default=40, help="(a), (b) videos.")
    p.add_argument("--tag", default=None, help="Sub-folder name (default: derived).")
    p.add_argument(
        "--compare",
        default=None,
        help="Comma-separated tags under --out: print their final-step measures "
        "side by side (no training).",
    )
    return p.parse_args()


def make_config(args: argparse.Namespace, seed: int):
    """The variant with the overrides of ``--config`` and the ablation flags."""
    config = checkout_configs.config_with_overrides(args.config)
    if args.decoder_type:
        config.model.decoder_type = args.decoder_type
    if args.mask_ratio is not None:
        config.model.mask_ratio = args.mask_ratio
    config.seed = seed
    config.train.steps = args.steps
    config.train.measure_every = args.measure_every
    config.train.measure_videos = args.measure_videos
    config.train.image_every = 0
    config.checkpoint.every = args.measure_every  # a checkpoint at every measure
    config.checkpoint.keep_every = args.measure_every
    config.checkpoint.async_save = False
    return config


def run_tag(args: argparse.Namespace) -> str:
    if args.tag:
        return args.tag
    parts = [args.config.replace(",", "_").replace("=", "-"), f"{args.steps}steps"]
    if args.decoder_type:
        parts.append(args.decoder_type)
    if args.mask_ratio is not None:
        parts.append(f"mask{args.mask_ratio}")
    return "_".join(parts)


def heldout_davis(root: epath.Path, videos: int, size: int) -> epath.Path:
    """The held-out synthetic set (seed 1) in DAVIS layout, written once."""
    folder = root / f"heldout_{videos}v_{size}px"
    if not (folder / "synthetic.json").exists():
        synthetic.write_dataset(
            folder, videos=videos, frames=24, size=(size, size), seed=1
        )
    return folder / "DAVIS"


def jf_scores(config, params, davis_root, workdir, seed: int) -> dict:
    """(c) J&F of the pre-trained vs a random-init encoder (as ``make demo``)."""
    size = config.model.image_size
    trained = weight_params.encoder_from(
        config.model, jax.device_get(params["encoder"]), "train state"
    )
    random = encoder.random_encoder(config.model.encoder, size, seed=seed + 1)
    cfg = eval_config.get_config().davis
    cfg.short_side = size
    scores = {}
    for name, model in (("pretrained", trained), ("random", random)):
        extract = encoder.FeatureExtractor(model)
        row = tasks.run_davis(
            extract, model.patch, davis_root, workdir / "davis" / name, cfg, 0, False
        )
        scores[name] = {k: float(row[k]) for k in SCORES}
    return scores


def train_one(args, seed: int, root: epath.Path, davis_root) -> dict:
    """Trains (or finds) one seed's run; returns its measures and J&F."""
    workdir = root / f"seed{seed}"
    done = workdir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    config = make_config(args, seed)
    start = time.time()
    state = loop.run(config, str(workdir))
    train_s = time.time() - start
    scores = jf_scores(config, state.params, davis_root, workdir, seed)
    result = {
        "seed": seed,
        "train_seconds": round(train_s),
        "jf_seconds": round(time.time() - start - train_s),
        "measures": read_measures(workdir / "metrics.jsonl"),
        "jf": scores,
    }
    done.write_text(json.dumps(result, indent=1))
    return result


def read_measures(path: epath.Path) -> dict[str, dict[str, float]]:
    """{step: {measure: value}} from the lines of metrics.jsonl that hold them."""
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "correspondence" in row:
            out[str(row["step"])] = {
                k: v
                for k, v in row.items()
                if k.startswith(("past_frame_loss", "correspondence"))
            }
    return out


def _ms(values) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


# (column / curve label, metrics key) of the past-frame losses (a): true f1,
# another video's f1, the true f1 with its patches shuffled (same colours).
LOSSES = (
    ("loss true f1", "past_frame_loss_true"),
    ("loss other f1", "past_frame_loss_other"),
    ("loss shuffled f1", "past_frame_loss_shuffled"),
)
# (column / curve label, metrics key) of the correspondence measures; the
# decoder's last block is ``correspondence`` (visible f2 patches).
CORRESPONDENCE = (
    ("corr. visible, last", "correspondence"),
    ("corr. visible, block 0", "correspondence_visible_block0"),
    ("corr. masked, last", "correspondence_masked_last"),
    ("corr. masked, block 0", "correspondence_masked_block0"),
    ("same position", "correspondence_same_position"),
    ("chance", "correspondence_chance"),
)


def _with_last(m: dict) -> dict:
    """Adds ``correspondence_masked_last`` (the highest masked block index), and
    the shuffled-f1 loss as NaN for runs measured before it existed."""
    blocks = [k for k in m if k.startswith("correspondence_masked_block")]
    last = max(blocks, key=lambda k: int(k.rsplit("block", 1)[1]))
    return {
        "past_frame_loss_shuffled": np.nan,
        **m,
        "correspondence_masked_last": m[last],
    }


def _gaps(rows: list[dict]) -> list[np.ndarray]:
    """Per run: other-video f1 loss - true f1 loss, shuffled f1 loss - true."""
    true = np.array([m["past_frame_loss_true"] for m in rows])
    return [
        np.array([m["past_frame_loss_other"] for m in rows]) - true,
        np.array([m["past_frame_loss_shuffled"] for m in rows]) - true,
    ]


def table(results: list[dict]) -> str:
    """Markdown: measures per step, then J&F at the end (mean ± std over seeds)."""
    steps = sorted({int(s) for r in results for s in r["measures"]})
    names = " | ".join(label for label, _ in CORRESPONDENCE)
    losses = " | ".join(label for label, _ in LOSSES)
    lines = [
        f"| step | {losses} | gap | layout gap | {names} |",
        "|---:|" + "---:|" * (len(LOSSES) + 2 + len(CORRESPONDENCE)),
    ]
    for step in steps:
        rows = [
            _with_last(r["measures"][str(step)])
            for r in results
            if str(step) in r["measures"]
        ]
        cells = [[m[k] for m in rows] for _, k in LOSSES] + _gaps(rows)
        cells += [[m[k] for m in rows] for _, k in CORRESPONDENCE]
        lines.append(f"| {step} | " + " | ".join(_ms(c) for c in cells) + " |")
    lines += ["", "| encoder (final step) | J&F | J | F |", "|---|---:|---:|---:|"]
    for name in ("pretrained", "random"):
        cells = [_ms([r["jf"][name][k] for r in results]) for k in SCORES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    diff = [
        r["jf"]["pretrained"]["J&F-Mean"] - r["jf"]["random"]["J&F-Mean"]
        for r in results
    ]
    lines.append(f"| pre-trained − random | {_ms(diff)} | | |")
    return "\n".join(lines)


def _curves(results: list[dict]) -> dict[str, tuple[list[int], np.ndarray]]:
    """name -> (steps, [seeds, steps] values) for the plotted measures."""
    steps = sorted({int(s) for r in results for s in r["measures"]})
    keep = [s for s in steps if all(str(s) in r["measures"] for r in results)]

    def grid(key):
        return np.array(
            [[_with_last(r["measures"][str(s)])[key] for s in keep] for r in results]
        )

    return {label: (keep, grid(k)) for label, k in LOSSES + CORRESPONDENCE}


COLOURS = {
    "loss true f1": (31, 119, 180),
    "loss other f1": (255, 127, 14),
    "loss shuffled f1": (140, 86, 75),
    "corr. visible, last": (44, 160, 44),
    "corr. visible, block 0": (148, 103, 189),
    "corr. masked, last": (23, 190, 207),
    "corr. masked, block 0": (188, 189, 34),
    "same position": (214, 39, 40),
    "chance": (150, 150, 150),
}


def _panel(draw, box, title, curves, names) -> None:
    """One panel: each seed thin, the seed mean thick, axes labelled."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0))
    values = np.concatenate([curves[n][1].ravel() for n in names])
    lo, hi = float(values.min()), float(values.max())
    lo, hi = (lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
    steps = curves[names[0]][0]
    s_lo, s_hi = min(steps), max(max(steps), min(steps) + 1)

    def xy(s, v):
        x = x0 + (s - s_lo) / (s_hi - s_lo) * (x1 - x0)
        return x, y1 - (v - lo) / (hi - lo) * (y1 - y0)

    for v in (lo, hi):
        draw.text((x0 - 44, xy(s_lo, v)[1] - 6), f"{v:.3f}", fill=(0, 0, 0))
    for s in steps:
        draw.text((xy(s, lo)[0] - 10, y1 + 4), str(s), fill=(0, 0, 0))
    for i, name in enumerate(names):
        colour = COLOURS[name]
        runs = curves[name][1]
        for run in runs:
            draw.line([xy(s, v) for s, v in zip(steps, run, strict=True)], colour, 1)
        mean = [xy(s, v) for s, v in zip(steps, runs.mean(0), strict=True)]
        draw.line(mean, colour, 3)
        draw.text((x0 + 8, y0 + 6 + 14 * i), name, fill=colour)


def plot(results: list[dict], path: epath.Path, title: str) -> None:
    """Two panels (past-frame losses; correspondence vs chance) over steps."""
    curves = _curves(results)
    image = Image.new("RGB", (900, 380), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((60, 8), title, fill=(0, 0, 0))
    _panel(draw, (60, 50, 430, 330), "(a) past-frame use: masked loss", curves,
           [label for label, _ in LOSSES])  # fmt: skip
    _panel(draw, (510, 50, 880, 330), "(b) decoder correspondence", curves,
           [label for label, _ in CORRESPONDENCE])  # fmt: skip
    draw.text((420, 355), "training step (thin: seeds, thick: mean)", fill=(0, 0, 0))
    image.save(path)


def compare(out: epath.Path, tags: list[str]) -> str:
    """Markdown: each tag's final measured step and J&F (mean ± std over seeds)."""
    labels = " | ".join(label for label, _ in CORRESPONDENCE)
    lines = [
        f"| run | seeds | step | loss gap | layout gap | {labels} "
        "| J&F pre-trained − random |",
        "|---|---:|---:|---:|---:|" + "---:|" * (1 + len(CORRESPONDENCE)),
    ]
    for tag in tags:
        results = json.loads((out / tag / "results.json").read_text())
        step = max(int(s) for s in results[0]["measures"])
        rows = [_with_last(r["measures"][str(step)]) for r in results]
        cells = _gaps(rows) + [[m[k] for m in rows] for _, k in CORRESPONDENCE]
        cells.append(
            [
                r["jf"]["pretrained"]["J&F-Mean"] - r["jf"]["random"]["J&F-Mean"]
                for r in results
            ]
        )
        lines.append(
            f"| {tag} | {len(results)} | {step} | "
            + " | ".join(_ms(c) for c in cells)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    logs.quiet_library_logs()
    if args.compare:
        print(compare(epath.Path(args.out), args.compare.split(",")))
        return
    root = epath.Path(args.out) / run_tag(args)
    root.mkdir(parents=True, exist_ok=True)
    size = make_config(args, 0).model.image_size
    davis_root = heldout_davis(epath.Path(args.out), args.heldout_videos, size)
    start = time.time()
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        results.append(train_one(args, seed, root, davis_root))
        print(f"[learning_signal] seed {seed} done, {time.time() - start:.0f} s")
    text = table(results)
    header = (
        f"config `{args.config}` decoder {args.decoder_type or 'default'} mask "
        f"{args.mask_ratio or 'default'}, {args.steps} steps, seeds {args.seeds}, "
        f"measures on {args.measure_videos} held-out videos, J&F on "
        f"{args.heldout_videos}; train s per seed "
        f"{[r['train_seconds'] for r in results]}, J&F s "
        f"{[r['jf_seconds'] for r in results]}"
    )
    (root / "results.md").write_text(header + "\n\n" + text + "\n")
    (root / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, root / "curves.png", f"{root.name}, seeds {args.seeds}")
    print(header + "\n\n" + text)


if __name__ == "__main__":
    main()
