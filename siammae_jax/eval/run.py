"""``evaluate``: score any backbone on a benchmark under a named protocol.

    from siammae_jax.eval import evaluate
    result = evaluate("davis", features, "/data/DAVIS", protocol="dino")

``features`` is one of:

- a callable ``features(frames_uint8[N, H, W, 3]) -> [N, h, w, D]`` (NumPy in,
  NumPy out): any framework's model. It sees raw uint8 RGB frames at the
  protocol's input size and does its own normalisation; its output is
  L2-normalised per position here. Its patch size (H / h) is probed with one
  black 224 x 224 frame unless ``patch`` is given.
- anything :func:`siammae_jax.load` reads (a path), or a loaded ViT or SiamMAE:
  then the protocol's image statistics and position-embedding rule apply.

The result is the ``summary.json`` body (see :mod:`.provenance`), written to
``out`` (a temporary folder when None) with the predictions in the
benchmark's official format and overlay pictures.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from etils import epath
from flax import nnx

from siammae_jax import files
from siammae_jax.datasets import davis
from siammae_jax.datasets import summary as summary_lib
from siammae_jax.eval import config as eval_config
from siammae_jax.eval import encoder, protocols, provenance, tasks, tfds_layout

PathLike = str | os.PathLike


class CallableFeatures:
    """A user's feature function checked and L2-normalised.

    Raises ValueError naming what is wrong when the function's output is not
    [N, H / patch, W / patch, D] for input [N, H, W, 3].
    """

    def __init__(self, fn: Callable[[np.ndarray], Any], patch: int | None = None):
        self.fn = fn
        self.patch = patch or self._probe()

    def _probe(self) -> int:
        out = np.asarray(self.fn(np.zeros((1, 224, 224, 3), np.uint8)))
        if out.ndim != 4 or out.shape[1] == 0 or out.shape[1] != out.shape[2]:
            raise ValueError(
                "features(frames [1, 224, 224, 3]) must return [1, h, w, D] with "
                f"h = w = 224 / patch, got shape {out.shape}; pass patch= explicitly"
            )
        if 224 % out.shape[1]:
            raise ValueError(
                f"features of a 224x224 frame form a {out.shape[1]}x{out.shape[2]} "
                "grid: 224 is not a multiple of it; pass patch= explicitly"
            )
        return 224 // out.shape[1]

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = np.asarray(self.fn(frames), np.float32)
        n, h, w = frames.shape[:3]
        want = (n, h // self.patch, w // self.patch)
        if out.ndim != 4 or out.shape[:3] != want:
            raise ValueError(
                f"features(frames {frames.shape}) returned shape {out.shape}, "
                f"expected [{want[0]}, {want[1]}, {want[2]}, D] (patch {self.patch})"
            )
        norm = np.linalg.norm(out, axis=-1, keepdims=True)
        return out / np.maximum(norm, 1e-12)


def _callable_name(fn: Callable) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', '?')}.{name}"


def _describe(where: epath.Path) -> dict[str, Any]:
    """A weights file's sha256, or an export folder's model card."""
    from siammae_jax.weights import exports

    if where.is_file():
        return {"file_sha256": files.sha256(where)}
    card = exports.read_model_card(where)
    return {"model_card": card} if card is not None else {}


def backbone(
    features: Any,
    section: Any,
    *,
    patch: int | None = None,
    batch_size: int = 8,
    variant: str | None = None,
) -> tuple[tasks.Extractor, int, dict[str, Any]]:
    """``(extract, patch, weights record)`` for ``features`` (module doc).

    The record names what was scored: ``sha256`` over the encoder's
    parameters for a JAX encoder (plus the file's sha256 and model card for a
    path), the function's name for a callable (whose weights cannot be seen).
    """
    from siammae_jax import weights
    from siammae_jax.models import SiamMAE, vit

    record: dict[str, Any] = {}
    if isinstance(features, str | os.PathLike):
        path = epath.Path(features)
        kind, where = weights.detect(path)
        model, model_config = weights.load(path, variant)
        features = weights.encoder_of(model, model_config)
        record = {"kind": kind, "path": str(path), "variant": features.variant}
        record.update(
            {k: model_config[k] for k in ("layout", "branch") if k in model_config}
        )
        record.update(_describe(where))
    elif isinstance(features, SiamMAE):
        # Scored as its saved weights would be: a float32 encoder, whatever
        # compute dtype the model trained in.
        enc = features.encoder
        size = (enc.grid[0] * enc.patch, enc.grid[1] * enc.patch)
        features = weights.encoder_of(
            features, {"encoder": enc.variant, "image_size": size}
        )
    if isinstance(features, vit.ViT):
        record.setdefault("kind", "jax")
        record.setdefault("variant", features.variant)
        states = nnx.state(features, nnx.Param, vit.PosEmbed)
        record["sha256"] = provenance.params_sha256(
            [nnx.to_pure_dict(s) for s in states]
        )
        extract = encoder.FeatureExtractor(
            features,
            batch_size=batch_size,
            mean=section.mean,
            std=section.std,
            pos_interp=section.pos_interp,
        )
        return extract, features.patch, record
    if not callable(features):
        raise TypeError(
            "features must be a callable frames -> features, a ViT/SiamMAE, or "
            f"a path siammae_jax.load reads; got {type(features).__name__}"
        )
    extract = CallableFeatures(features, patch)
    record = {"kind": "callable", "name": _callable_name(features)}
    return extract, extract.patch, record


def evaluate(
    task: str,
    features: Any,
    data: PathLike,
    protocol: str = "siammae",
    out: PathLike | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    patch: int | None = None,
    batch_size: int = 8,
    overlays: int = 3,
    progress: bool = True,
    tfds_data_dir: str | None = None,
    weights_record: Mapping[str, Any] | None = None,
    variant: str | None = None,
) -> dict[str, Any]:
    """Scores ``features`` on ``task`` (davis, jhmdb, vip) under ``protocol``.

    Args:
      task: the benchmark.
      features: see the module doc.
      data: the benchmark root in its official layout, or ``tfds:NAME``.
      protocol: a name of :func:`siammae_jax.eval.protocols.names`.
      out: where predictions, pictures and ``summary.json`` go.
      overrides: ``{field: value}`` on top of the protocol (departures).
      patch: a callable's patch size (probed when None).
      batch_size: frames per encoder call (JAX encoders).
      overlays: videos drawn as overlay pictures.
      progress: show progress bars.
      tfds_data_dir: the TFDS data_dir for ``tfds:`` data.
      weights_record: what to record as the weights (default: computed).
      variant: the ViT size of a timm/torch file without a config.

    Returns:
      The ``summary.json`` body: scores, protocol, inputs, weights, version,
      commit.
    """
    base = eval_config.task_section(task) if task in protocols.TASKS else None
    section, departures = protocols.resolve(protocol, task, base, overrides or {})
    if out is None:
        out = tempfile.mkdtemp(prefix=f"siammae_eval_{task}_")
    out = epath.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extract, patch, record = backbone(
        features, section, patch=patch, batch_size=batch_size, variant=variant
    )
    if weights_record is not None:
        record = {**record, **weights_record}
    root = str(data)
    if tfds_layout.is_tfds(root):
        try:
            root = tfds_layout.materialize(task, root, tfds_data_dir, out, section)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"cannot read --data {data}: {e}") from e
    if task == "davis" and any(section.pre_resize):
        h, w = section.pre_resize
        root = davis.resized_copy(root, out / f"davis_{h}x{w}", section.split, (h, w))
    inputs = provenance.Inputs()
    scores = tasks.RUNNERS[task](
        extract, patch, root, out, section, overlays, progress, inputs
    )
    result = provenance.record(
        task,
        scores,
        provenance.protocol_record(protocol, section.to_dict(), departures),
        inputs,
        record,
        data=str(data),
        out=str(out),
    )
    summary_lib.write_json(out / "summary.json", result)
    return result
