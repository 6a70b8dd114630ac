"""The package's own exports: orbax folders, safetensors files, timm folders.

An export holds the encoder (``what="encoder"``: the ViT's variables, its
position embeddings included) or the whole model (``what="model"``: encoder,
decoder and prediction head, to continue pre-training), plus its model config::

    DIR/params/ + DIR/config/   orbax (StandardSave of the variables; JsonSave
                                {"format": ..., "what": ..., "model": {...}})
    DIR/encoder.safetensors     our parameter names, the config in the file's
    DIR/siammae.safetensors     metadata (encoder / whole model)
    DIR/model.safetensors       timm's VisionTransformer layout (encoder only)
      + DIR/config.json         (see :mod:`siammae_jax.weights.timm`)
    DIR/model_card.json         what the weights are: model config, training
                                step, data and last measures, package version
                                and git commit, sha256 of every weight file

Loading verifies every hash the model card lists and refuses a file that does
not match, naming it.
"""

from __future__ import annotations

import datetime
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from tqdm import tqdm

from siammae_jax.files import sha256
from siammae_jax.models import SiamMAE, vit
from siammae_jax.version import __version__
from siammae_jax.weights import params as params_lib
from siammae_jax.weights import timm
from siammae_jax.weights.checkpoints import restore_on_one_device

FORMATS = ("orbax", "safetensors", "timm")
WHAT = ("encoder", "model")
CONFIG_FORMAT = {"encoder": "siammae_jax.encoder/1", "model": "siammae_jax.model/1"}
NATIVE_FILES = {"encoder": "encoder.safetensors", "model": "siammae.safetensors"}
TIMM_FILE = "model.safetensors"
MODEL_CARD = "model_card.json"
CARD_FORMAT = "siammae_jax.model_card/1"


def _host(tree: Any, progress: bool) -> Any:
    """``tree`` with its arrays fetched to host numpy, with a progress bar."""
    leaves, treedef = jax.tree.flatten(tree)
    leaves = [np.asarray(x) for x in tqdm(leaves, desc="tensors", disable=not progress)]
    return jax.tree.unflatten(treedef, leaves)


def json_config(model_config: Mapping, what: str) -> dict:
    """The stored config: format tag, what the weights are, the model config."""
    model = json.loads(json.dumps(dict(model_config)))
    image = model.get("image_size")
    if isinstance(image, tuple):
        model["image_size"] = list(image)
    return {"format": CONFIG_FORMAT[what], "what": what, "model": model}


def variables(
    weights: vit.ViT | SiamMAE | Mapping, model_config: Mapping, what: str
) -> dict:
    """The tree an export stores: the encoder's variables (``pos_embed``
    included) or the whole model's parameters, as a pure dict.

    ``weights`` is a module or a parameter dict: a training state's
    ``params`` (whole model) or ``params["encoder"]``.
    """
    if what not in WHAT:
        raise ValueError(f"what={what!r} is not one of {WHAT}")
    if isinstance(weights, SiamMAE):
        if what == "model":
            return nnx.to_pure_dict(nnx.state(weights, nnx.Param))
        weights = nnx.to_pure_dict(nnx.state(weights.encoder, nnx.Param))
    if isinstance(weights, vit.ViT):
        if what == "model":
            raise ValueError("a ViT encoder cannot be exported as a whole model")
        return nnx.to_pure_dict(nnx.state(weights))
    weights = dict(weights)
    if what == "model":
        model = params_lib.model_from(model_config, weights, "the weights given")
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if "encoder" in weights and "decoder_embed" in weights:
        weights = weights["encoder"]
    model = params_lib.encoder_from(model_config, weights, "the weights given")
    return nnx.to_pure_dict(nnx.state(model))


def save(
    out: str | epath.Path,
    weights: vit.ViT | SiamMAE | Mapping,
    model_config: Mapping,
    *,
    format: str = "orbax",
    what: str = "encoder",
    training: Mapping | None = None,
    progress: bool = False,
) -> epath.Path:
    """Writes an export folder with its model card.

    Args:
      out: a new folder (local or ``gs://``); orbax requires it not to exist.
      weights: a module or parameter dict (see :func:`variables`).
      model_config: a training config's ``model`` section (at least
        ``encoder`` and ``image_size``).
      format: one of :data:`FORMATS`.
      what: ``encoder`` or ``model`` (timm: encoder only).
      training: what the model card says about the training (steps, data,
        measures); see :func:`siammae_jax.weights.checkpoints.describe`.
      progress: show a progress bar over the tensors.

    Returns:
      The export folder.
    """
    if format not in FORMATS:
        raise ValueError(f"format {format!r} is not one of {FORMATS}")
    if format == "timm" and what != "encoder":
        raise ValueError(
            "the timm layout holds an encoder only; export the whole model with "
            "--format orbax or safetensors"
        )
    out = epath.Path(out)
    tree = params_lib.str_keys(_host(variables(weights, model_config, what), progress))
    config = json_config(model_config, what)
    _write_weights(out, tree, config, format)
    write_model_card(out, config, format, training)
    return out


def _write_weights(out: epath.Path, tree: dict, config: dict, format: str) -> None:
    """The weight files of one export format (see the module docstring)."""
    if format == "orbax":
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            checkpointer.save(
                out,
                ocp.args.Composite(
                    params=ocp.args.StandardSave(tree),
                    config=ocp.args.JsonSave(config),
                ),
            )
    elif format == "safetensors":
        out.mkdir(parents=True, exist_ok=True)
        meta = {"siammae_jax": json.dumps(config)}
        flat = dict(params_lib.flatten(tree, sep="."))
        timm.save_safetensors(out / NATIVE_FILES[config["what"]], flat, meta)
    else:
        out.mkdir(parents=True, exist_ok=True)
        model = params_lib.encoder_from(config["model"], tree, "the weights given")
        state = timm.to_timm_state_dict(model)
        timm.save_safetensors(out / TIMM_FILE, state, {"format": "pt"})
        args = timm.timm_model_args(model)
        args["siammae_jax"] = config
        (out / "config.json").write_text(json.dumps(args, indent=2))


def _git_commit() -> str | None:
    """The git commit of the package's checkout, if it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _weight_files(folder: epath.Path) -> list[epath.Path]:
    """Every file of an export folder except the model card."""
    files = [
        epath.Path(parent) / name
        for parent, _, names in folder.walk()
        for name in names
        if name != MODEL_CARD
    ]
    return sorted(files, key=str)


def write_model_card(
    folder: epath.Path, config: Mapping, format: str, training: Mapping | None
) -> epath.Path:
    """``folder/model_card.json``: what the weights are, and their hashes."""
    card = {
        "format": CARD_FORMAT,
        "what": config["what"],
        "export_format": format,
        "model": config["model"],
        "training": dict(training) if training else None,
        "package": {"version": __version__, "git_commit": _git_commit()},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "files": {
            str(p.relative_to(folder)): {"sha256": sha256(p), "bytes": p.stat().length}
            for p in _weight_files(folder)
        },
    }
    path = folder / MODEL_CARD
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def read_model_card(folder: epath.Path) -> dict | None:
    """The folder's model card, or None when it has none."""
    path = folder / MODEL_CARD
    return json.loads(path.read_text()) if path.exists() else None


def verify(folder: epath.Path, card: Mapping) -> None:
    """Checks the sha256 of every file the model card lists.

    Raises:
      ValueError: a listed file is missing or does not match, named.
    """
    for name, entry in card.get("files", {}).items():
        path = folder / name
        if not path.exists():
            raise ValueError(f"{path}: listed in {folder / MODEL_CARD} but missing")
        if sha256(path) != entry["sha256"]:
            raise ValueError(
                f"{path}: its sha256 does not match {folder / MODEL_CARD}: the "
                "file was changed or damaged after the export; refusing it"
            )


def read_orbax(folder: epath.Path) -> tuple[dict, dict]:
    """(stored config, variables) of an orbax export folder."""
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
        config = checkpointer.restore(folder / "config", ocp.args.JsonRestore())
    return config, restore_on_one_device(folder / "params")


def read_native(path: epath.Path) -> tuple[dict, dict]:
    """(stored config, variables) of a native ``.safetensors`` export.

    Raises:
      ValueError: the file has no siammae_jax config (timm layout instead).
    """
    tensors, meta = timm.read_safetensors(path)
    if "siammae_jax" not in meta:
        raise ValueError(f"{path}: no siammae_jax config in its metadata")
    return json.loads(meta["siammae_jax"]), params_lib.nest(tensors)
