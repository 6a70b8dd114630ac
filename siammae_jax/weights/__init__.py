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

``timm`` and ``torch`` files may be other projects' released checkpoints:
DINO (bare backbone, or the training checkpoint's ``teacher``/``student``),
MAE, CropMAE, RSP and T-CoRe; :mod:`siammae_jax.weights.peers` finds the
encoder in each (``layout=`` names one, ``branch=`` picks DINO's student) and
the model config records it: ``{"encoder": "S/16", "image_size": [224, 224],
"layout": "dino", "branch": "teacher"}``. ``detect_layout(path)`` reports it
without building a model.

``pos_interp="dino"`` gives an encoder that resamples its position embeddings
for other input sizes as DINO's evaluation does (``vit.resample_pos_embed``);
a built encoder switches with ``model.pos_interp = "dino"`` (an attribute of
the module, not of the weights: exports do not keep it).
"""

from __future__ import annotations

from typing import Any

from etils import epath
from flax import nnx

from siammae_jax.models import SiamMAE, vit
from siammae_jax.weights import checkpoints, exports, layout, timm
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


def detect_layout(
    path: str | epath.Path, branch: str | None = None
) -> tuple[str, str | None]:
    """(which of :data:`SOURCES` ``path`` is, the peer layout of its state dict).

    The layout (a name of ``peers.LAYOUTS``) is None for this package's own
    formats; for ``timm``/``torch`` files the file is read to find it.

    Raises:
      FileNotFoundError: ``path`` does not exist or holds no known weights.
      ValueError: no state dict found, or ``branch`` missing (named).
    """
    kind, where = detect(path)
    if kind not in ("timm", "torch"):
        return kind, None
    if kind == "timm" and where.is_dir():
        where = where / exports.TIMM_FILE
    return kind, timm.load_state(where, branch=branch)[1].layout


def _verify(kind: str, path: epath.Path) -> None:
    """Checks the model card of an export folder (or of a file's folder)."""
    if kind == "checkpoint":
        return
    folder = path if path.is_dir() else path.parent
    card = exports.read_model_card(folder)
    if card is not None:
        exports.verify(folder, card)


def load(
    path: str | epath.Path,
    variant: str | None = None,
    *,
    layout: str | None = None,
    branch: str | None = None,
    pos_interp: str | None = None,
) -> tuple[SiamMAE | vit.ViT, dict[str, Any]]:
    """The model stored at ``path`` and its model config (see the module doc).

    Args:
      path: any source of :data:`SOURCES`, local or ``gs://``.
      variant: the ViT size of a timm/torch file without a config (e.g.
        ``S/16``); inferred from the shapes when None.
      layout: the peer layout of a timm/torch file (``peers.LAYOUTS``:
        ``timm``, ``dino``, ``mae``, ``cropmae``, ``rsp``, ``tcore``);
        detected when None (a bare timm-layout file reads as ``timm``: name
        ``dino`` to record DINO's released backbone as such).
      branch: ``"teacher"`` (the default where a checkpoint holds both, as
        DINO's evaluation reads) or ``"student"``.
      pos_interp: how the encoder resamples position embeddings for other
        input sizes (``vit.POS_INTERP``; ``"dino"`` for DINO's evaluation
        rule); None keeps the encoder's default.

    Raises:
      FileNotFoundError: nothing loadable at ``path``.
      ValueError: a file that does not match its model card, parameters that
        do not fit the stored config, or state dict keys that are not the
        encoder's (named); ``layout``/``branch`` given for this package's own
        formats.
    """
    kind, where = detect(path)
    _verify(kind, where)
    if kind in ("timm", "torch"):
        model, found = timm.load_timm(where, variant, layout=layout, branch=branch)
        image = [g * model.patch for g in model.grid]
        model_config = {"encoder": model.variant, "image_size": image}
        model_config["layout"] = found.layout
        if found.branch is not None:
            model_config["branch"] = found.branch
    elif layout is not None or branch is not None:
        raise ValueError(
            f"{path}: layout/branch apply to timm and torch state dicts, not to "
            f"this package's {kind!r} weights."
        )
    else:
        model, model_config = _load_own(kind, where)
    if pos_interp is not None:
        if pos_interp not in vit.POS_INTERP:
            raise ValueError(
                f"pos_interp={pos_interp!r} is not one of {vit.POS_INTERP}"
            )
        encoder = model if isinstance(model, vit.ViT) else model.encoder
        encoder.pos_interp = pos_interp
    return model, model_config


def _load_own(kind: str, where: epath.Path) -> tuple[SiamMAE | vit.ViT, dict]:
    """A training checkpoint or an export of this package."""
    if kind == "checkpoint":
        params, config, step_dir = checkpoints.load_params(where)
        model_config = config["model"]
        source = str(step_dir / layout.STATE_ITEM)
        return params_lib.model_from(model_config, params, source), model_config
    read = exports.read_orbax if kind == "orbax" else exports.read_native
    config, tree = read(where)
    model_config = config["model"]
    if config.get("what", "encoder") == "model":
        return params_lib.model_from(model_config, tree, str(where)), model_config
    return params_lib.encoder_from(model_config, tree, str(where)), model_config


def encoder_of(model: SiamMAE | vit.ViT, model_config: dict[str, Any]) -> vit.ViT:
    """The float32 encoder of a loaded model (the model itself if a ViT), with
    the model's ``pos_interp``."""
    if isinstance(model, vit.ViT):
        return model
    params = nnx.to_pure_dict(nnx.state(model.encoder, nnx.Param))
    encoder = params_lib.encoder_from(model_config, params, "the model's encoder")
    encoder.pos_interp = model.encoder.pos_interp
    return encoder


def load_encoder(
    path: str | epath.Path, variant: str | None = None, **kwargs: Any
) -> vit.ViT:
    """The ViT encoder of any weights :func:`load` reads (same arguments)."""
    return encoder_of(*load(path, variant, **kwargs))


__all__ = [
    "SOURCES",
    "detect",
    "detect_layout",
    "encoder_of",
    "load",
    "load_encoder",
]
