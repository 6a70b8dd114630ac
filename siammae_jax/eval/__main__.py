"""Label-propagation evaluation CLI.

    python -m siammae_jax.eval davis|jhmdb|vip \
        (--weights PATH | --checkpoint WORKDIR_OR_STEP_DIR | --random SIZE) \
        --data ROOT|tfds:NAME --out DIR [--tfds_data_dir DIR] \
        [--weights_variant S/16] [--config.davis.topk=7 ...]
    python -m siammae_jax.eval score-davis --data DAVIS_ROOT --results DIR [--set val]
    python -m siammae_jax.eval attention (--checkpoint DIR | --random SIZE) \
        --video VIDEO_OR_FRAMES --out DIR [--short_side 480]

Propagates with the frozen encoder, writes predictions in each benchmark's
official format plus overlay pictures, scores them, prints a summary table and
saves it as ``<out>/summary.json``.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from siammae_jax import weights
from siammae_jax.data import video
from siammae_jax.eval import attention, davis_score, encoder, tasks, tfds_layout
from siammae_jax.eval import config as eval_config

_CONFIG = config_flags.DEFINE_config_dict("config", eval_config.get_config())
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Training workdir or step dir (same as --weights)."
)
_RANDOM = flags.DEFINE_string("random", None, "Random-init encoder, e.g. vits16.")
_WEIGHTS = flags.DEFINE_string(
    "weights",
    None,
    "Any weights: a training workdir or step dir, an export folder, a "
    ".safetensors file (ours or timm's) or a torch state dict (.pt/.pth/.bin).",
)
_WEIGHTS_VARIANT = flags.DEFINE_string(
    "weights_variant", None, "--weights size, e.g. S/16 (default: from the shapes)."
)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Grid of a --random encoder.")
_DATA = flags.DEFINE_string(
    "data",
    None,
    "Benchmark root (official layout), or tfds:NAME: a prepared TFDS dataset "
    "(davis/480p, jhmdb, vip), written once under --out in that layout.",
)
_TFDS_DATA_DIR = flags.DEFINE_string(
    "tfds_data_dir", None, "--data tfds:NAME: the TFDS data_dir (default: TFDS's)."
)
_OUT = flags.DEFINE_string("out", None, "Output folder for predictions and scores.")
_RESULTS = flags.DEFINE_string("results", None, "score-davis: results folder.")
_SET = flags.DEFINE_string("set", "val", "score-davis: ImageSets/2017 set name.")
_VIDEO = flags.DEFINE_string(
    "video", None, "attention: a video, frame folder or image."
)
_SHORT_SIDE = flags.DEFINE_integer("short_side", 480, "attention: input short side.")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", 60, "attention: frames to read.")

COMMANDS = (*tasks.RUNNERS, "score-davis", "attention")


def _encoder():
    given = [_CHECKPOINT.value, _RANDOM.value, _WEIGHTS.value]
    if sum(bool(v) for v in given) != 1:
        raise app.UsageError("give exactly one of --checkpoint, --random and --weights")
    path = _CHECKPOINT.value or _WEIGHTS.value
    if path:
        kind, _ = weights.detect(path)
        model = weights.load_encoder(path, _WEIGHTS_VARIANT.value)
        logging.info("encoder %s from %s (%s)", model.variant, path, kind)
        return model, f"{kind} {path} ({model.variant})"
    model = encoder.random_encoder(_RANDOM.value, _IMAGE_SIZE.value)
    return model, f"random-init {model.variant}"


def _print_table(title: str, scores: dict) -> None:
    print(f"\n{title}")
    for key, value in scores.items():
        print(f"  {key:<12} {value:.3f}")


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"give one command of {COMMANDS}, got {argv[1:]}")
    command = argv[1]
    if command == "score-davis":
        if not (_DATA.value and _RESULTS.value):
            raise app.UsageError("score-davis needs --data and --results")
        scores, rows = davis_score.score(_DATA.value, _RESULTS.value, _SET.value)
        davis_score.write_csvs(_RESULTS.value, scores, rows, _SET.value)
        _print_table(f"DAVIS-2017 {_SET.value}: {_RESULTS.value}", scores)
        return
    if command == "attention":
        if not (_VIDEO.value and _OUT.value):
            raise app.UsageError("attention needs --video and --out")
        model, name = _encoder()
        try:
            info = attention.run(
                model, _VIDEO.value, _OUT.value, _SHORT_SIDE.value, _MAX_FRAMES.value
            )
        except (FileNotFoundError, video.BadVideoError) as e:
            sys.exit(f"error: cannot read --video: {e}")
        print(f"[CLS] attention of {name}: {info}; pictures in {_OUT.value}")
        return
    if not (_DATA.value and _OUT.value):
        raise app.UsageError(f"{command} needs --data and --out")
    model, name = _encoder()
    config = _CONFIG.value
    out = epath.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    data = _DATA.value
    if tfds_layout.is_tfds(data):
        try:
            data = tfds_layout.materialize(
                command, data, _TFDS_DATA_DIR.value, out, config[command]
            )
        except (FileNotFoundError, ValueError) as e:
            sys.exit(f"error: cannot read --data {_DATA.value}: {e}")
    extract = encoder.FeatureExtractor(model, batch_size=config.batch_size)
    scores = tasks.RUNNERS[command](
        extract, model.patch, data, out, config[command], config.overlays
    )
    summary = {"task": command, "encoder": name, "scores": scores}
    summary["data"] = _DATA.value
    summary["config"] = config[command].to_dict()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_table(f"{command}: {name}", scores)
    print(f"predictions, overlays and scores in {out}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
