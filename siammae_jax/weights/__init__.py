"""Every source and sink of model weights, and one call to load any of them.

``load(path)`` detects what ``path`` is and returns ``(model, model_config)``:

==================  =====================================================
``checkpoint``      a training workdir, its ``checkpoints`` folder or one
                    step folder (the whole SiamMAE, newest complete step)
``orbax``           an export folder (``params/`` + ``config/``)
``safetensors``     an export's ``encoder.safetensors`` /
                    ``siammae.safetensors`` (or its folder)
``timm``            a timm-layout ``.safetensors`` file or export folder
                    (``model.safetensors`` + ``config.json``)
``torch``           a torch state dict (``.pt``, ``.pth``, ``.bin``), read only
                    with ``torch.load(weights_only=True)``, timm layout
==================  =====================================================

The model is a :class:`~siammae_jax.models.SiamMAE` for whole-model sources
(training checkpoints, ``what="model"`` exports) and a float32
:class:`~siammae_jax.models.ViT` encoder otherwise; ``load_encoder(path)``
always gives the encoder. Folders with a ``model_card.json`` are checked
against the sha256 it lists before anything is read.
"""

from __future__ import annotations

from typing import Any

from etils import epath
from flax import nnx

from siammae_jax.models import SiamMAE, vit
from siammae_jax.weights import checkpoints, exports, timm
from siammae_jax.weights import params as params_lib

SOURCES = ("checkpoint", "orbax", "safetensors", "timm", "torch")


def detect(path: str | epath.Path) -> tuple[str, epath.Path]:
    """(which of :data:`SOURCES` ``path`` is, the file or folder to read).

    Raises:
      FileNotFoundError: ``path`` does not exist or holds no known weights.
    """
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights path {path} does not exist.")
    if path.is_file():
        if path.suffix == ".safetensors":
            meta = timm.read_safetensors_metadata(path)
            return ("safetensors" if "siammae_jax" in meta else "timm"), path
        if path.suffix in timm.TORCH_SUFFIXES:
            return "torch", path
        raise FileNotFoundError(
            f"{path}: unknown weights file {path.suffix!r}; give .safetensors or a "
            f"torch state dict ({', '.join(timm.TORCH_SUFFIXES)})."
        )
    if (path / "params").exists() and (path / "config").exists():
        return "orbax", path
    for name in exports.NATIVE_FILES.values():
        if (path / name).exists():
            return "safetensors", path / name
    if (path / exports.TIMM_FILE).exists():
        return "timm", path
    if checkpoints.is_training_checkpoint(path):
        return "checkpoint", path
    raise FileNotFoundError(
        f"{path}: no weights found: expected a training workdir or step folder, "
        f"an export folder (params/ + config/, {', '.join(exports.NATIVE_FILES.values())}"
        f" or {exports.TIMM_FILE}), a .safetensors file or a torch state dict."
    )


def _verify(kind: str, path: epath.Path) -> None:
    """Checks the model card of an export folder (or of a file's folder)."""
    if kind == "checkpoint":
        return
    folder = path if path.is_dir() else path.parent
    card = exports.read_model_card(folder)
    if card is not None:
        exports.verify(folder, card)


def load(
    path: str | epath.Path, variant: str | None = None
) -> tuple[SiamMAE | vit.ViT, dict[str, Any]]:
    """The model stored at ``path`` and its model config (see the module doc).

    Args:
      path: any source of :data:`SOURCES`, local or ``gs://``.
      variant: the ViT size of a timm/torch file without a config (e.g.
        ``S/16``); inferred from the shapes when None.

    Raises:
      FileNotFoundError: nothing loadable at ``path``.
      ValueError: a file that does not match its model card, or parameters
        that do not fit the stored config (named).
    """
    kind, where = detect(path)
    _verify(kind, where)
    if kind == "checkpoint":
        params, config, step_dir = checkpoints.load_params(where)
        model_config = config["model"]
        source = str(step_dir / checkpoints.STATE_ITEM)
        return params_lib.model_from(model_config, params, source), model_config
    if kind in ("orbax", "safetensors"):
        read = exports.read_orbax if kind == "orbax" else exports.read_native
        config, tree = read(where)
        model_config = config["model"]
        if config.get("what", "encoder") == "model":
            return params_lib.model_from(model_config, tree, str(where)), model_config
        return params_lib.encoder_from(model_config, tree, str(where)), model_config
    model = timm.load_timm(where, variant)
    image = [g * model.patch for g in model.grid]
    return model, {"encoder": model.variant, "image_size": image}


def encoder_of(model: SiamMAE | vit.ViT, model_config: dict[str, Any]) -> vit.ViT:
    """The float32 encoder of a loaded model (the model itself if a ViT)."""
    if isinstance(model, vit.ViT):
        return model
    params = nnx.to_pure_dict(nnx.state(model.encoder, nnx.Param))
    return params_lib.encoder_from(model_config, params, "the model's encoder")


def load_encoder(path: str | epath.Path, variant: str | None = None) -> vit.ViT:
    """The ViT encoder of any weights :func:`load` reads."""
    return encoder_of(*load(path, variant))


__all__ = ["SOURCES", "detect", "encoder_of", "load", "load_encoder"]
