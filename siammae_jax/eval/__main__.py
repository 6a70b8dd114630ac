"""Label-propagation evaluation CLI.

    python -m siammae_jax.eval davis|jhmdb|vip \
        (--weights PATH | --checkpoint WORKDIR_OR_STEP_DIR | --random SIZE) \
        --data ROOT|tfds:NAME --out DIR [--protocol siammae|dino|crw|480x880] \
        [--tfds_data_dir DIR] [--weights_variant S/16] [--config.davis.topk=7 ...]
    python -m siammae_jax.eval compare A/summary.json B/summary.json
    python -m siammae_jax.eval protocols        # the protocol tables (markdown)
    python -m siammae_jax.eval score-davis --data DAVIS_ROOT --results DIR [--set val]
    python -m siammae_jax.eval attention (--checkpoint DIR | --random SIZE) \
        --video VIDEO_OR_FRAMES --out DIR [--short_side 480]

Propagates with the frozen encoder under a named protocol (every setting
cited in ``docs/protocols.md``; ``--config.<task>.*`` values on top of it are
recorded as departures), writes predictions in each benchmark's official
format plus overlay pictures, scores them, prints a summary table that names
the protocol and saves ``<out>/summary.json`` (protocol, inputs, weights,
version, commit). ``compare`` exits 0 when two results are comparable and
lists every difference.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from etils import epath
from ml_collections import config_flags

from siammae_jax import weights
from siammae_jax.data import video
from siammae_jax.datasets import davis_score
from siammae_jax.eval import attention, encoder, protocols, provenance, run, tasks
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
_PROTOCOL = flags.DEFINE_enum(
    "protocol",
    "siammae",
    list(protocols.names()),
    "Evaluation protocol (docs/protocols.md); --config.<task>.* on top of it "
    "are recorded as departures.",
)
_RESULTS = flags.DEFINE_string("results", None, "score-davis: results folder.")
_SET = flags.DEFINE_string("set", "val", "score-davis: ImageSets/2017 set name.")
_VIDEO = flags.DEFINE_string(
    "video", None, "attention: a video, frame folder or image."
)
_SHORT_SIDE = flags.DEFINE_integer("short_side", 480, "attention: input short side.")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", 60, "attention: frames to read.")

COMMANDS = (*tasks.RUNNERS, "score-davis", "attention", "compare", "protocols")


def _encoder():
    """(a path or a random-init ViT, its name, extra weights record)."""
    given = [_CHECKPOINT.value, _RANDOM.value, _WEIGHTS.value]
    if sum(bool(v) for v in given) != 1:
        raise app.UsageError("give exactly one of --checkpoint, --random and --weights")
    path = _CHECKPOINT.value or _WEIGHTS.value
    if path:
        kind, _ = weights.detect(path)
        return path, f"{kind} {path}", {}
    model = encoder.random_encoder(_RANDOM.value, _IMAGE_SIZE.value)
    record = {"kind": "random-init", "variant": model.variant, "seed": 0}
    return model, f"random-init {model.variant}", record


def _compare(argv: list[str]) -> None:
    if len(argv) != 4:
        raise app.UsageError("compare needs two summary.json files: compare A B")
    a, b = (json.loads(epath.Path(p).read_text()) for p in argv[2:])
    try:
        comparable, lines = provenance.compare(a, b)
    except ValueError as e:
        sys.exit(f"error: {e}")
    verdict = "comparable" if comparable else "NOT comparable"
    print(f"{argv[2]} vs {argv[3]}: {verdict}")
    for line in lines:
        print(f"  {line}")
    sys.exit(0 if comparable else 1)


def _print_table(title: str, scores: dict, tag: str = "") -> None:
    print(f"\n{title}")
    for key, value in scores.items():
        print(f"  {key:<12} {value:.3f} {tag}".rstrip())


def main(argv: list[str]) -> None:
    if len(argv) > 1 and argv[1] == "compare":
        return _compare(argv)
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"give one command of {COMMANDS}, got {argv[1:]}")
    command = argv[1]
    if command == "protocols":
        print(protocols.markdown(), end="")
        return
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
        model, name, _ = _encoder()
        if not isinstance(model, encoder.vit.ViT):
            model = weights.load_encoder(model, _WEIGHTS_VARIANT.value)
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
    features, name, record = _encoder()
    config = _CONFIG.value
    overrides = {
        key.split(".", 1)[1]: value
        for key, value in config_flags.get_override_values(
            flags.FLAGS["config"]
        ).items()
        if key.startswith(command + ".")
    }
    try:
        result = run.evaluate(
            command,
            features,
            _DATA.value,
            _PROTOCOL.value,
            _OUT.value,
            overrides=overrides,
            batch_size=config.batch_size,
            overlays=config.overlays,
            tfds_data_dir=_TFDS_DATA_DIR.value,
            weights_record=record,
            variant=_WEIGHTS_VARIANT.value,
        )
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    departures = result["protocol"]["departures"]
    label = provenance.label(command, _PROTOCOL.value, departures)
    _print_table(f"{label}: {name}", result["scores"], f"[{_PROTOCOL.value}]")
    print(f"predictions, overlays and summary.json in {_OUT.value}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
