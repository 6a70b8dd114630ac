"""Shareable encoder-only checkpoints, and exports from training checkpoints.

``save_encoder(path, model_or_params, model_config)`` writes an orbax
checkpoint of the ViT encoder with its model config beside it::

    DIR/params/   orbax StandardSave of the encoder's variables (pure dict,
                  the position embeddings included)
    DIR/config/   orbax JsonSave: {"format": ..., "model": {"encoder": "S/16",
                  "image_size": 224, ...}}

so ``load_encoder(DIR)`` needs nothing else to rebuild the module (local
folders and ``gs://`` alike, through etils.epath). ``load_encoder`` also
reads the two other exports of the CLI::

    python -m siammae_jax.export --checkpoint WORKDIR[/checkpoints/STEP] \
        --out DIR [--format orbax|safetensors|timm]

``safetensors``: ``DIR/encoder.safetensors``, our parameter names
(``blocks.0.attn.query.kernel``) with the config in the file's metadata;
``timm``: ``DIR/model.safetensors`` in timm's ``VisionTransformer`` layout
(see ``siammae_jax.interop``) plus ``DIR/config.json`` naming the timm
architecture and its arguments.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags
from etils import epath
from flax import nnx
from tqdm import tqdm

from siammae_jax import interop
from siammae_jax.eval import encoder as encoder_lib
from siammae_jax.models import vit

FORMAT = "siammae_jax.encoder/1"
FORMATS = ("orbax", "safetensors", "timm")
NATIVE_FILE = "encoder.safetensors"
TIMM_FILE = "model.safetensors"


def _variables(model_or_params: vit.ViT | Mapping, model_config: Mapping) -> dict:
    """The encoder's variables (params + ``pos_embed``) as a pure dict."""
    if isinstance(model_or_params, vit.ViT):
        return nnx.to_pure_dict(nnx.state(model_or_params))
    model = encoder_lib.build_encoder(
        model_config["encoder"], model_config["image_size"]
    )
    encoder_lib.set_params(model, dict(model_or_params), "model_or_params")
    return nnx.to_pure_dict(nnx.state(model))


def _host(tree: Any, progress: bool, desc: str) -> Any:
    """``tree`` with its arrays fetched to host numpy, with a progress bar."""
    leaves, treedef = jax.tree.flatten(tree)
    leaves = [np.asarray(x) for x in tqdm(leaves, desc=desc, disable=not progress)]
    return jax.tree.unflatten(treedef, leaves)


def _config(model_config: Mapping) -> dict:
    model = json.loads(json.dumps(dict(model_config)))
    image = model["image_size"]
    model["image_size"] = list(image) if isinstance(image, (tuple, list)) else image
    return {"format": FORMAT, "model": model}


def save_encoder(
    path: str | epath.Path,
    model_or_params: vit.ViT | Mapping,
    model_config: Mapping,
    *,
    progress: bool = False,
) -> epath.Path:
    """Writes an encoder-only orbax checkpoint with its model config.

    Args:
      path: a new folder (local or ``gs://``); it must not exist yet.
      model_or_params: a ``vit.ViT`` or its ``nnx.Param`` values as a pure
        dict (e.g. a training state's ``params["encoder"]``; its fixed
        position embeddings are rebuilt from the config).
      model_config: at least ``encoder`` (e.g. ``"S/16"``) and ``image_size``;
        a training config's ``model`` section as it is.
      progress: show a progress bar over the tensors.

    Returns:
      The checkpoint folder.
    """
    path = epath.Path(path)
    tree = _host(_variables(model_or_params, model_config), progress, "tensors")
    tree = _str_keys(tree)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
        ckpt.save(
            path,
            ocp.args.Composite(
                params=ocp.args.StandardSave(tree),
                config=ocp.args.JsonSave(_config(model_config)),
            ),
        )
    return path


def _str_keys(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def load_encoder(path: str | epath.Path) -> vit.ViT:
    """The encoder of an export (orbax folder, ``.safetensors`` file or timm folder).

    Args:
      path: a ``save_encoder`` folder, a ``--format safetensors`` file (or
        its folder), or a ``--format timm`` folder; local or ``gs://``.

    Raises:
      FileNotFoundError: nothing loadable at ``path``.
      ValueError: parameters that do not fit the stored config, listed.
    """
    path = epath.Path(path)
    if path.suffix == ".safetensors":
        return _load_native_safetensors(path)
    if (path / "params").exists() and (path / "config").exists():
        return _load_orbax(path)
    if (path / NATIVE_FILE).exists():
        return _load_native_safetensors(path / NATIVE_FILE)
    if (path / TIMM_FILE).exists():
        return _load_timm_folder(path)
    raise FileNotFoundError(
        f"{path}: no encoder export (params/ + config/, {NATIVE_FILE} or "
        f"{TIMM_FILE}); for a training checkpoint use siammae_jax.eval.encoder."
    )


def _build(model_cfg: Mapping, variables: Mapping, source: str) -> vit.ViT:
    image = model_cfg["image_size"]
    image = tuple(image) if isinstance(image, list) else image
    model = encoder_lib.build_encoder(model_cfg["encoder"], image)
    variables = dict(variables)
    pos = variables.pop("pos_embed", None)
    encoder_lib.set_params(model, variables, source)
    if pos is not None:
        want = model.pos_embed[...].shape
        if tuple(np.shape(pos)) != tuple(want):
            raise ValueError(
                f"{source}: wrong shapes ['pos_embed: {np.shape(pos)} != {want}']"
            )
        model.pos_embed.set_value(np.asarray(pos, np.float32))
    return model


def _load_orbax(path: epath.Path) -> vit.ViT:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
        config = ckpt.restore(
            path, ocp.args.Composite(config=ocp.args.JsonRestore())
        ).config
        meta = ocp.StandardCheckpointer().metadata(path / "params").item_metadata
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta
        )
        params = ckpt.restore(
            path, ocp.args.Composite(params=ocp.args.StandardRestore(target))
        ).params
    return _build(config["model"], params, str(path / "params"))


def _nest(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def save_native_safetensors(
    path: str | epath.Path,
    model_or_params: vit.ViT | Mapping,
    model_config: Mapping,
    *,
    progress: bool = False,
) -> epath.Path:
    """One ``.safetensors`` file: our parameter names, the config in its metadata."""
    tree = _host(_variables(model_or_params, model_config), progress, "tensors")
    meta = {"siammae_jax": json.dumps(_config(model_config))}
    interop.save_safetensors(path, dict(encoder_lib.flatten(tree, sep=".")), meta)
    return epath.Path(path)


def _load_native_safetensors(path: epath.Path) -> vit.ViT:
    tensors, meta = interop.read_safetensors(path)
    if "siammae_jax" not in meta:
        raise ValueError(
            f"{path}: no siammae_jax config in its metadata; for timm-layout "
            "weights use siammae_jax.interop.load_timm_encoder (eval: --weights)."
        )
    config = json.loads(meta["siammae_jax"])
    return _build(config["model"], _nest(tensors), str(path))


def save_timm(
    folder: str | epath.Path,
    model: vit.ViT,
    model_config: Mapping | None = None,
    *,
    progress: bool = False,
) -> epath.Path:
    """``folder/model.safetensors`` (timm layout) and ``folder/config.json``."""
    folder = epath.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = interop.to_timm_state_dict(model)
    state = {k: state[k] for k in tqdm(state, desc="tensors", disable=not progress)}
    interop.save_safetensors(folder / TIMM_FILE, state, {"format": "pt"})
    config = interop.timm_model_args(model)
    config["siammae_jax"] = _config(model_config or _model_config(model))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def _model_config(model: vit.ViT) -> dict:
    image = [g * model.patch for g in model.grid]
    return {"encoder": model.variant, "image_size": image}


def _load_timm_folder(folder: epath.Path) -> vit.ViT:
    variant, image = None, None
    if (folder / "config.json").exists():
        model = json.loads((folder / "config.json").read_text()).get("siammae_jax")
        if model:
            variant, image = model["model"]["encoder"], model["model"]["image_size"]
    image = tuple(image) if isinstance(image, list) else image
    return interop.load_timm_encoder(folder / TIMM_FILE, variant, image)


def export_checkpoint(
    checkpoint: str | epath.Path,
    out: str | epath.Path,
    fmt: str = "orbax",
    *,
    progress: bool = True,
) -> epath.Path:
    """Exports the encoder of a training checkpoint (newest step of a workdir).

    Returns:
      The written folder (orbax, timm) or file (safetensors).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
    model, model_cfg = encoder_lib.load_checkpoint_encoder(checkpoint)
    out = epath.Path(out)
    if fmt == "orbax":
        return save_encoder(out, model, model_cfg, progress=progress)
    if fmt == "timm":
        return save_timm(out, model, model_cfg, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    return save_native_safetensors(
        out / NATIVE_FILE, model, model_cfg, progress=progress
    )


def _define_flags() -> None:
    """The CLI's flags (defined only when run, so importing never clashes)."""
    flags.DEFINE_string(
        "checkpoint", None, "Training workdir, checkpoints folder or step folder."
    )
    flags.DEFINE_string("out", None, "Output folder.")
    flags.DEFINE_enum("format", "orbax", FORMATS, "Export format.")


def main(argv: list[str]) -> None:
    """``python -m siammae_jax.export --checkpoint DIR --out DIR [--format F]``."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    f = flags.FLAGS
    if not (f.checkpoint and f.out):
        raise app.UsageError("give --checkpoint and --out")
    written = export_checkpoint(f.checkpoint, f.out, f.format)
    print(f"{f.format} export of {f.checkpoint} in {written}", file=sys.stderr)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
