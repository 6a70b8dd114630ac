"""Export weights to share: the encoder, or the whole model to continue training.

    python -m siammae_jax.export --checkpoint PATH --out DIR \\
        [--format orbax|safetensors|timm] [--what encoder|model]

``PATH`` is anything :func:`siammae_jax.weights.load` reads (a training
workdir or step folder, another export, timm weights). ``--what model``
writes encoder, decoder and prediction head (orbax or safetensors), which
``--config.init_from=DIR`` continues pre-training from. Every export carries a
``model_card.json`` (model config, training step and data, last measures,
package version and commit, sha256 of each file); see
:mod:`siammae_jax.weights.exports` for the layouts.
"""

from __future__ import annotations

import sys
from typing import Any

from absl import app, flags
from etils import epath

from siammae_jax import weights
from siammae_jax.models import SiamMAE
from siammae_jax.weights import checkpoints, exports

FORMATS = exports.FORMATS


def export_checkpoint(
    checkpoint: str | epath.Path,
    out: str | epath.Path,
    fmt: str = "orbax",
    *,
    what: str = "encoder",
    progress: bool = True,
) -> epath.Path:
    """Exports the weights at ``checkpoint`` (newest step of a workdir).

    Raises:
      ValueError: an unknown format, or ``what="model"`` from encoder-only
        weights or into the timm layout.

    Returns:
      The written folder.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
    if what not in exports.WHAT:
        raise ValueError(f"what={what!r} is not one of {exports.WHAT}")
    model, model_config = weights.load(checkpoint)
    if what == "model" and not isinstance(model, SiamMAE):
        raise ValueError(
            f"{checkpoint} holds an encoder only: export it with --what encoder"
        )
    training: dict[str, Any] | None = None
    kind, where = weights.detect(checkpoint)
    if kind == "checkpoint":
        step_dir = checkpoints.resolve_step_dir(checkpoints.absolute(where))
        training = checkpoints.describe(step_dir, checkpoints.saved_config(step_dir))
    return exports.save(
        out, model, model_config, format=fmt, what=what, training=training,
        progress=progress,
    )  # fmt: skip


def _define_flags() -> None:
    """The CLI's flags (defined only when run, so importing never clashes)."""
    flags.DEFINE_string(
        "checkpoint", None, "Training workdir, step folder, or any weights to convert."
    )
    flags.DEFINE_string("out", None, "Output folder.")
    flags.DEFINE_enum("format", "orbax", FORMATS, "Export format.")
    flags.DEFINE_enum("what", "encoder", exports.WHAT, "Encoder, or the whole model.")


def main(argv: list[str]) -> None:
    """``python -m siammae_jax.export --checkpoint P --out DIR [--format] [--what]``."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    f = flags.FLAGS
    if not (f.checkpoint and f.out):
        raise app.UsageError("give --checkpoint and --out")
    written = export_checkpoint(f.checkpoint, f.out, f.format, what=f.what)
    print(
        f"{f.format} export ({f.what}) of {f.checkpoint} in {written}", file=sys.stderr
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
