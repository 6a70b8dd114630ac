"""Our ViT encoder <-> timm ``VisionTransformer`` state dicts, in pure numpy.

The timm layout (``vit_small_patch16_224``, ``vit_base_patch16_224``, ...,
created with ``num_classes=0``) is what DINO and MAE release too, so one
converter serves exports to PyTorch and imports of those baselines:

=============================  ==============================================
timm key                       ours
=============================  ==============================================
``cls_token`` [1, 1, D]        ``cls_token``
``pos_embed`` [1, 1+N, D]      ``pos_embed`` (fixed sin-cos, zero [CLS] row)
``patch_embed.proj.weight``    ``patch_embed.kernel`` [p*p*3, D] reshaped
  [D, 3, p, p]                   (p, p, 3, D), transposed (3, 2, 0, 1)
``blocks.i.attn.qkv.*``        ``query``/``key``/``value`` [D, heads, hd]
  [3D, D] (q, k, v fused)        flattened, concatenated, transposed
``blocks.i.attn.proj.*``       ``attn.out`` [heads, hd, D]
``blocks.i.norm1/2``, ``mlp``  LayerNorm ``scale`` = ``weight``; Linear
  ``fc1/fc2``, ``norm``          ``kernel`` = ``weight.T``
=============================  ==============================================

An imported ``pos_embed`` (learned, as DINO's) replaces our fixed one, [CLS]
row included; like ours it is resampled bicubically for other input sizes.

Files: ``.safetensors`` (read with safetensors' numpy API) or torch state
dicts (``.pt``, ``.pth``, ``.bin``) read *only* with
``torch.load(weights_only=True)``: a file that needs real unpickling is
refused, since unpickling an untrusted file can run arbitrary code (the one
class allowed besides tensors is ``argparse.Namespace``, the ``args`` that
DINO's and MAE's training checkpoints keep: a bag of plain attributes).
Released checkpoints wrap the state dict and mix it with heads and decoders:
:mod:`siammae_jax.weights.peers` knows the layouts of DINO, MAE, CropMAE, RSP
and T-CoRe and keeps exactly the encoder.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath
from flax import nnx

from siammae_jax.models import vit
from siammae_jax.weights import params as params_lib
from siammae_jax.weights import peers

State = dict[str, np.ndarray]

# timm's names of our named sizes (at 224 pixels).
TIMM_NAMES = {"Ti": "tiny", "S": "small", "B": "base", "L": "large"}
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def _np(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _linear_to_timm(p: Mapping, prefix: str) -> State:
    return {f"{prefix}.weight": _np(p["kernel"]).T, f"{prefix}.bias": _np(p["bias"])}


def _norm_to_timm(p: Mapping, prefix: str) -> State:
    return {f"{prefix}.weight": _np(p["scale"]), f"{prefix}.bias": _np(p["bias"])}


def _block_to_timm(b: Mapping, prefix: str) -> State:
    attn = b["attn"]
    width = _np(attn["query"]["kernel"]).shape[0]
    qkv_w = [_np(attn[n]["kernel"]).reshape(width, width).T for n in _QKV]
    qkv_b = [_np(attn[n]["bias"]).reshape(width) for n in _QKV]
    out = {
        f"{prefix}.attn.qkv.weight": np.concatenate(qkv_w),
        f"{prefix}.attn.qkv.bias": np.concatenate(qkv_b),
        f"{prefix}.attn.proj.weight": _np(attn["out"]["kernel"]).reshape(-1, width).T,
        f"{prefix}.attn.proj.bias": _np(attn["out"]["bias"]),
    }
    out.update(_norm_to_timm(b["norm1"], f"{prefix}.norm1"))
    out.update(_norm_to_timm(b["norm2"], f"{prefix}.norm2"))
    out.update(_linear_to_timm(b["mlp"]["fc1"], f"{prefix}.mlp.fc1"))
    out.update(_linear_to_timm(b["mlp"]["fc2"], f"{prefix}.mlp.fc2"))
    return out


_QKV = ("query", "key", "value")


def to_timm_state_dict(model: vit.ViT) -> State:
    """Our encoder as a timm ``VisionTransformer`` state dict (float32 numpy).

    Loads into ``timm.create_model("vit_small_patch16_224", pretrained=False,
    num_classes=0)`` (for ``S/16`` at 224; see ``timm_model_args``) with
    ``load_state_dict(..., strict=True)``.
    """
    params = nnx.to_pure_dict(nnx.state(model))
    p = model.patch
    kernel = _np(params["patch_embed"]["kernel"]).reshape(p, p, 3, -1)
    state = {
        "cls_token": _np(params["cls_token"]),
        "pos_embed": _np(params["pos_embed"]),
        "patch_embed.proj.weight": kernel.transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": _np(params["patch_embed"]["bias"]),
    }
    for i in range(len(model.blocks)):
        blocks = params["blocks"]
        state.update(_block_to_timm(blocks[i], f"blocks.{i}"))
    state.update(_norm_to_timm(params["norm"], "norm"))
    return {k: np.array(v, np.float32, order="C") for k, v in state.items()}


def timm_model_args(model: vit.ViT) -> dict[str, Any]:
    """``architecture`` name (None without one) and ``VisionTransformer`` kwargs."""
    size, patch = vit.parse_variant(model.variant)
    name = vit._VARIANT.match(model.variant)["size"]
    image = (model.grid[0] * patch, model.grid[1] * patch)
    arch = None
    if name in TIMM_NAMES and size.mlp_ratio == 4.0:
        arch = f"vit_{TIMM_NAMES[name]}_patch{patch}_224"
    kwargs = dict(
        img_size=list(image),
        patch_size=patch,
        embed_dim=size.width,
        depth=size.depth,
        num_heads=size.num_heads,
        mlp_ratio=size.mlp_ratio,
        num_classes=0,
    )
    return {"architecture": arch, "model_args": kwargs}


# ---------------------------------------------------------------- import


def _from_linear(state: State, prefix: str) -> dict:
    return {"kernel": state[f"{prefix}.weight"].T, "bias": state[f"{prefix}.bias"]}


def _from_norm(state: State, prefix: str) -> dict:
    return {"scale": state[f"{prefix}.weight"], "bias": state[f"{prefix}.bias"]}


def _from_block(state: State, prefix: str, heads: int) -> dict:
    w = state[f"{prefix}.attn.qkv.weight"]
    b = state[f"{prefix}.attn.qkv.bias"]
    width = w.shape[1]
    hd = width // heads
    attn = {
        n: {
            "kernel": w[j * width : (j + 1) * width].T.reshape(width, heads, hd),
            "bias": b[j * width : (j + 1) * width].reshape(heads, hd),
        }
        for j, n in enumerate(_QKV)
    }
    proj = state[f"{prefix}.attn.proj.weight"]
    attn["out"] = {
        "kernel": proj.T.reshape(heads, hd, width),
        "bias": state[f"{prefix}.attn.proj.bias"],
    }
    return {
        "attn": attn,
        "norm1": _from_norm(state, f"{prefix}.norm1"),
        "norm2": _from_norm(state, f"{prefix}.norm2"),
        "mlp": {
            "fc1": _from_linear(state, f"{prefix}.mlp.fc1"),
            "fc2": _from_linear(state, f"{prefix}.mlp.fc2"),
        },
    }


def infer_variant(state: Mapping[str, Any]) -> str:
    """``"<size>/<patch>"`` from a timm state dict's shapes (width, depth, MLP).

    Heads leave no trace in the shapes; they come from the named size whose
    width, depth and MLP ratio match.

    Raises:
      ValueError: no named size matches (pass the variant explicitly).
    """
    try:
        width, _, patch, _ = np.shape(state["patch_embed.proj.weight"])
        hidden = np.shape(state["blocks.0.mlp.fc1.weight"])[0]
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"cannot infer the ViT size: no timm-layout patch_embed.proj.weight "
            f"[D, 3, p, p] / blocks.0.mlp.fc1.weight ({e}); keys: {sorted(state)[:8]}..."
        ) from None
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for name, size in vit.SIZES.items():
        if (size.width, size.depth, size.width * size.mlp_ratio) == (
            width,
            depth,
            hidden,
        ):
            return f"{name}/{patch}"
    raise ValueError(
        f"no named ViT size has width {width}, depth {depth}, MLP {hidden} "
        f"(sizes: {sorted(vit.SIZES)}); pass the variant (e.g. --weights_variant S/16)."
    )


def check_state_dict(state: Mapping[str, Any], model: vit.ViT, source: str) -> None:
    """Raises a ValueError listing missing, unexpected and mis-shaped keys.

    ``pos_embed`` may have any token grid (it is resampled), not another width.
    """
    want = {k: v.shape for k, v in to_timm_state_dict(model).items()}
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    wrong = []
    for k in sorted(set(want) & set(state)):
        got = tuple(np.shape(state[k]))
        ok = got == want[k]
        if k == "pos_embed":
            ok = len(got) == 3 and got[0] == 1 and got[2] == want[k][2]
        if not ok:
            wrong.append(f"{k}: {got} != {tuple(want[k])}")
    if missing or extra or wrong:
        try:
            looks = f" (its shapes look like {infer_variant(state)!r})"
        except ValueError:
            looks = ""
        hint = ""
        if any(re.search(r"\.ls[12]\.gamma$", k) for k in extra):
            hint = (
                " (DINOv2-style LayerScale: layout='tcore' folds it into the weights)"
            )
        raise ValueError(
            f"{source}: not a timm ViT state dict of encoder {model.variant!r}"
            f"{looks}: missing keys {_listed(missing)}, unexpected keys "
            f"{_listed(extra)}, wrong shapes {_listed(wrong)}{hint}"
        )


def _listed(items: list[str], n: int = 12) -> str:
    """``items`` as a list, the first ``n`` of them and a count of the rest."""
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return f"{items[:n]}{more}"


def _square_grid(tokens: int, source: str) -> tuple[int, int]:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(
            f"{source}: pos_embed has {tokens} patch tokens, not a square grid; "
            "pass image_size."
        )
    return side, side


def _native_grid(tokens: int, model_grid: tuple[int, int], source: str):
    if tokens == model_grid[0] * model_grid[1]:
        return tuple(model_grid)
    return _square_grid(tokens, source)


def from_timm_state_dict(
    state: Mapping[str, Any],
    variant: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    *,
    source: str = "timm state dict",
) -> vit.ViT:
    """Our encoder from a timm-layout ViT state dict (numpy arrays).

    Args:
      state: timm ``VisionTransformer`` keys (wrappers/prefixes as in the
        module docstring are removed first).
      variant: e.g. ``"S/16"``; inferred from the shapes when None.
      image_size: the model's grid size in pixels; None: the grid of the
        imported ``pos_embed`` (square), so it is used as it is.
      source: names the file in errors.

    Raises:
      ValueError: listing missing, unexpected and mis-shaped keys.
    """
    state = {k: _np(v) for k, v in clean_state_dict(state, source).items()}
    variant = variant or infer_variant(state)
    _, patch = vit.parse_variant(variant)
    if "pos_embed" not in state or np.ndim(state["pos_embed"]) != 3:
        raise ValueError(f"{source}: missing keys ['pos_embed'] [1, 1+N, D]")
    tokens = state["pos_embed"].shape[1] - 1
    if image_size is None:
        image_size = tuple(g * patch for g in _square_grid(tokens, source))
    model = vit.ViT(variant, image_size=image_size, rngs=nnx.Rngs(0))
    check_state_dict(state, model, source)
    p = patch
    params = {
        "cls_token": state["cls_token"],
        "patch_embed": {
            "kernel": state["patch_embed.proj.weight"]
            .transpose(2, 3, 1, 0)
            .reshape(p * p * 3, -1),
            "bias": state["patch_embed.proj.bias"],
        },
        "blocks": {
            i: _from_block(state, f"blocks.{i}", model.blocks[i].attn.num_heads)
            for i in range(len(model.blocks))
        },
        "norm": _from_norm(state, "norm"),
    }
    params_lib.set_params(model, params, source)
    native = _native_grid(tokens, model.grid, source)
    pos = vit.resample_pos_embed(state["pos_embed"], native, model.grid)
    model.pos_embed.set_value(np.asarray(pos, np.float32))
    return model


def clean_state_dict(
    state: Mapping[str, Any],
    source: str = "state dict",
    layout: str | None = None,
    branch: str | None = None,
) -> dict:
    """The encoder's flat state dict inside a released checkpoint.

    See ``peers.encoder_state``: the layout (detected when None) says which
    entry holds the state dict, which prefixes to strip (``module.``,
    ``backbone.``) and which heads and decoders to drop.

    Raises:
      ValueError: no flat mapping of arrays found, or weights the layout
        refuses.
    """
    return peers.encoder_state(state, layout, branch, source)[0]


# ---------------------------------------------------------------- files


def save_safetensors(
    path: str | epath.Path, state: Mapping[str, Any], metadata: dict | None = None
) -> None:
    """Writes a flat dict of arrays as a ``.safetensors`` file (local or gs://)."""
    from safetensors import numpy as st_numpy

    tensors = {k: np.ascontiguousarray(v) for k, v in state.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    epath.Path(path).write_bytes(st_numpy.save(tensors, metadata=meta or None))


def read_safetensors_metadata(path: str | epath.Path) -> dict[str, str]:
    """The string metadata in a ``.safetensors`` file's header (no tensors read).

    Raises:
      ValueError: not a valid safetensors header (the path is named).
    """
    with epath.Path(path).open("rb") as f:
        try:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a valid safetensors file ({e}).") from None
    return dict(header.get("__metadata__") or {})


def read_safetensors(path: str | epath.Path) -> tuple[State, dict[str, str]]:
    """A ``.safetensors`` file's arrays and its string metadata.

    Raises:
      ValueError: not a valid safetensors file (the path is named).
    """
    from safetensors import numpy as st_numpy

    data = epath.Path(path).read_bytes()
    try:
        tensors = st_numpy.load(data)
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a valid safetensors file ({e}).") from None
    return tensors, dict(header.get("__metadata__") or {})


def load_weights(
    path: str | epath.Path, *, layout: str | None = None, branch: str | None = None
) -> State:
    """The encoder's flat state dict in a ``.safetensors`` or torch file.

    Torch files (``.pt``, ``.pth``, ``.bin``) are read only with
    ``torch.load(weights_only=True)``; the encoder is found as in
    ``peers.encoder_state`` (``layout``, ``branch``).

    Raises:
      ValueError: unknown suffix, corrupt file, a file that needs unpickling,
        or weights the layout refuses.
      ImportError: a torch file without torch installed.
    """
    return load_state(path, layout=layout, branch=branch)[0]


def load_state(
    path: str | epath.Path, *, layout: str | None = None, branch: str | None = None
) -> tuple[State, peers.Found]:
    """``load_weights``'s state dict and the layout (and branch) it was read as."""
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        checkpoint = read_safetensors(path)[0]
    elif path.suffix in TORCH_SUFFIXES:
        checkpoint = _load_torch(path)
    else:
        raise ValueError(
            f"{path}: unknown weights format {path.suffix!r}; give a .safetensors "
            f"file or a torch state dict ({', '.join(TORCH_SUFFIXES)})."
        )
    return peers.encoder_state(checkpoint, layout, branch, str(path))


def _load_torch(path: epath.Path):
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"{path}: reading a torch file needs torch (pip install "
            "'siammae_jax[torch]'). It is loaded only with "
            "torch.load(weights_only=True), which reads tensors without running "
            "pickled code; or convert it to .safetensors."
        ) from None
    # DINO's and MAE's training checkpoints keep their argparse ``args``.
    allowed = getattr(getattr(torch, "serialization", None), "safe_globals", None)
    allow = allowed([argparse.Namespace]) if allowed else contextlib.nullcontext()
    try:
        with warnings.catch_warnings(), allow:  # pickle-protocol notes: see error
            warnings.simplefilter("ignore")
            obj = torch.load(
                io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True
            )
    except Exception as e:
        reason = _torch_reason(e)
        raise ValueError(
            f"{path}: refused: torch.load(weights_only=True) cannot read it "
            f"({reason}). Either it is corrupt, or it holds pickled Python objects "
            "besides tensors; unpickling those can run arbitrary code, so a file "
            "from elsewhere is never unpickled here. Re-save just the state dict "
            "(torch.save(model.state_dict(), f)) or as .safetensors where you "
            "trust the file."
        ) from None
    return _torch_to_numpy(obj, torch)


def _torch_reason(error: Exception) -> str:
    """The specific part of a ``torch.load`` error (not its generic preamble)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


def _torch_to_numpy(obj, torch):
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return (t.float() if t.is_floating_point() else t).numpy()
    if isinstance(obj, Mapping):
        return {k: _torch_to_numpy(v, torch) for k, v in obj.items()}
    return obj


def load_timm_encoder(
    path: str | epath.Path,
    variant: str | None = None,
    image_size: int | tuple[int, int] | None = None,
) -> vit.ViT:
    """Our encoder from a timm-layout weights file (see ``load_weights``)."""
    return _encoder(path, variant, image_size, None, None)[0]


def _encoder(path, variant, image_size, layout, branch):
    state, found = load_state(path, layout=layout, branch=branch)
    source = f"{path} ({found.layout} layout)"
    return from_timm_state_dict(state, variant, image_size, source=source), found


def load_timm(
    path: str | epath.Path,
    variant: str | None = None,
    *,
    layout: str | None = None,
    branch: str | None = None,
) -> tuple[vit.ViT, peers.Found]:
    """Our encoder from a timm-layout or peer checkpoint file (see
    ``load_state``), or an export folder holding ``model.safetensors`` and the
    ``config.json`` that names its size; and the layout it was read as."""
    path = epath.Path(path)
    if not path.is_dir():
        return _encoder(path, variant, None, layout, branch)
    image = None
    config = path / "config.json"
    if config.exists():
        stored = json.loads(config.read_text()).get("siammae_jax")
        if stored:
            variant = variant or stored["model"]["encoder"]
            image = stored["model"]["image_size"]
    image = tuple(image) if isinstance(image, list) else image
    return _encoder(path / "model.safetensors", variant, image, layout, branch)
