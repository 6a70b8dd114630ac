"""Where released checkpoints of other projects keep their ViT encoder.

Each peer saves a timm-style ``VisionTransformer`` state dict (the keys of
:mod:`siammae_jax.weights.timm`), but wrapped, prefixed and mixed with heads,
decoders or training state. A :class:`Layout` says how to find the encoder:
the entry that holds the state dict, the key prefixes to strip and the
non-encoder entries to drop. What is left must be exactly the encoder:
``timm.check_state_dict`` refuses any other key, naming it, so no encoder
weight is ever silently ignored.

=========  ===========================  ========================================
layout     wrapper / prefixes           dropped entries (not the encoder)
=========  ===========================  ========================================
timm       none, ``state_dict`` or      ``head.*`` (classifier)
           ``module``
dino       none (released backbone) or  ``head.*`` (DINOHead, ``module.head.*``)
           ``teacher`` / ``student``;
           ``module.``, ``backbone.``
mae        ``model``                    ``decoder_*``, ``mask_token``, ``head.*``
cropmae    ``model``                    ``decoder_*`` (cross-attention decoder
                                        blocks), ``mask_token``
rsp        ``model``                    ``decoder_*``, ``mask_token``,
                                        ``to_prior.*``, ``to_posterior.*``
tcore      ``teacher``; ``module.``,    ``dino_head.*``, ``ibot_head.*``,
           ``backbone.``                ``mask_token``; LayerScale folded
=========  ===========================  ========================================

Sources (read in the projects' public code; functions named, with line
numbers counted in the versions read: DINO main, MAE main, CropMAE ffafcf4,
RSP 0a96349, T-CoRe 67c8bf9):

* DINO (facebookresearch/dino): ``main_dino.py``, ``train_dino``: the
  checkpoint is ``{'student', 'teacher', 'optimizer', 'epoch', 'args',
  'dino_loss'[, 'fp16_scaler']}``; student and teacher are
  ``utils.MultiCropWrapper(backbone, DINOHead)`` (keys ``backbone.*`` and
  ``head.*``), the student inside ``DistributedDataParallel`` (``module.``);
  the teacher is DDP-wrapped only with batch norms, so a ViT teacher has no
  ``module.``. ``utils.load_pretrained_weights`` takes ``checkpoint_key``
  (``eval_video_segmentation.py`` defaults to ``teacher``), then strips
  ``module.`` and ``backbone.``. The released ``dino_deitsmall16_pretrain.pth``
  is the bare backbone (timm keys).
* MAE (facebookresearch/mae): ``util/misc.py``, ``save_model``: ``{'model':
  model_without_ddp.state_dict(), 'optimizer', 'epoch', 'scaler', 'args'}``;
  ``models_mae.py``: encoder keys plus ``mask_token``, ``decoder_embed``,
  ``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``,
  ``decoder_pred``. ``models_vit.py`` with ``global_pool`` deletes ``norm``
  for ``fc_norm``, which normalises the pooled feature: refused (no token
  norm to import).
* CropMAE (alexandre-eymael/CropMAE): ``models/components/mae/util/misc.py``,
  ``save_model`` (MAE's: ``{'model', 'optimizer', 'epoch', 'scaler',
  'args'}``); ``models/SiamMAE.py`` is MAE's model with
  ``decoder_blocks.i.{self_attn,multihead_attn,linear1,linear2,norm1-3}``
  (``models/components/DecoderBlock.py``); the propagation evaluation
  ``downstreams/propagation/src/models_mae.py`` l. 61-71 reads
  ``ckpt["model"]`` and keeps the encoder's keys, l. 74-93 interpolates
  position embeddings with DINO's rule.
* RSP (huiwon-jang/RSP): ``util/misc.py``, ``save_model`` (MAE's, keyed
  ``model``); ``models_rsp.py``, ``RSP.__init__``: encoder keys plus
  ``to_posterior``, ``to_prior``, ``decoder_embed_mae``,
  ``decoder_embed_deter``, ``decoder_embed_stoch``, ``mask_token``,
  ``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``,
  ``decoder_pred``; ``eval_video_segmentation_davis.py`` (``__main__``)
  builds DINO's ``vision_transformer`` and calls ``util/load_ckpt.py`` l. 8-24
  ``load_pretrained_weights(model, path, 'model')`` (strips ``module.``,
  ``backbone.``, ``base_encoder.``; ``strict=False``).
* T-CoRe (yafeng19/T-CORE, CVPR 2025, built on DINOv2):
  ``base_model/train/train.py`` l. 151-160, ``do_test``: ``torch.save({"teacher":
  model.teacher.state_dict()})`` with ``backbone.*`` (a DINOv2 ViT:
  ``ls1.gamma``/``ls2.gamma`` LayerScale, ``mask_token``, optional
  ``register_tokens``) and ``dino_head.*`` (``ibot_head.*`` with a separate
  iBOT head), ``base_model/train/arch.py``; ``base_model/eval/setup.py``
  l. 44-49 ``build_model_for_eval`` loads ``"teacher"`` through
  ``base_model/utils/utils.py`` l. 14-24 ``load_pretrained_weights`` (strips
  ``module.``, ``backbone.``). LayerScale is folded into the linear layer
  before it (``gamma * (W x + b)``), exact up to float rounding. Register
  tokens (``base_model/configs/ssl_default_config.yaml`` sets
  ``num_register_tokens: 4``) take part in attention and our ViT has none:
  such checkpoints are refused. Its ViT resamples position embeddings with
  ``interpolate_antialias: true`` and ``interpolate_offset: 0.0``, i.e. our
  default ``"bicubic_aa"``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

State = dict[str, Any]
BRANCHES = ("teacher", "student")
# Stripped from every key, repeatedly, as the peers' own loaders do.
PREFIXES = ("module.", "backbone.")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one project's released checkpoint holds a timm-layout ViT encoder.

    Attributes:
      name: the layout's name (recorded in the loaded model's config).
      wrappers: top-level entries that may hold the state dict, tried in
        order (``"teacher"``/``"student"`` stand for the chosen branch); a
        checkpoint that is already a flat state dict needs none.
      dropped: regex of the stripped keys that are not the encoder.
      fix: a last step on the stripped state dict (folds, refusals).
    """

    name: str
    wrappers: tuple[str, ...]
    dropped: str
    fix: Callable[[State, str], State] | None = None


def _refuse_global_pool(state: State, source: str) -> State:
    if any(k.startswith("fc_norm.") for k in state):
        raise ValueError(
            f"{source}: a ViT fine-tuned with global pooling (fc_norm.* instead of "
            "norm.*, MAE's models_vit.py / timm global_pool='avg'): its fc_norm "
            "normalises the pooled feature, not the patch tokens, so there is no "
            "final token norm to import. Use the pre-trained checkpoint (e.g. MAE's "
            "mae_pretrain_vit_base.pth)."
        )
    return state


def _fold_layer_scale(state: State, source: str) -> State:
    """DINOv2's ViT as ours: chunked blocks (``blocks.c.i.*``) renumbered
    ``blocks.i.*``, ``x + gamma * f(x)`` as ``x + f'(x)`` (``ls1.gamma``
    scales the rows and bias of ``attn.proj``, ``ls2.gamma`` those of
    ``mlp.fc2``); register tokens refused."""
    if "register_tokens" in state:
        n = np.shape(state["register_tokens"])[1]
        raise ValueError(
            f"{source}: a DINOv2-style encoder with {n} register tokens "
            "(register_tokens [1, n, D], e.g. T-CoRe's num_register_tokens: 4): they "
            "take part in every attention and our ViT has none, so dropping them "
            "would change every feature. Not supported."
        )
    state = _refuse_global_pool(state, source)
    state = {
        re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()
    }
    for key in [k for k in state if re.search(r"\.ls[12]\.gamma$", k)]:
        block, which, _ = key.rsplit(".", 2)
        layer = f"{block}.attn.proj" if which == "ls1" else f"{block}.mlp.fc2"
        if f"{layer}.weight" not in state:
            raise ValueError(f"{source}: {key} without {layer}.weight to fold it into")
        gamma = np.asarray(state.pop(key), np.float32)
        state[f"{layer}.weight"] = gamma[:, None] * np.asarray(state[f"{layer}.weight"])
        if f"{layer}.bias" in state:
            state[f"{layer}.bias"] = gamma * np.asarray(state[f"{layer}.bias"])
    return state


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("timm", ("state_dict", "module"), r"^head(\.|$)", _refuse_global_pool),
        Layout("dino", BRANCHES, r"^head(\.|$)", _refuse_global_pool),
        Layout(
            "mae", ("model",), r"^(decoder_|mask_token$|head\.)", _refuse_global_pool
        ),
        Layout("cropmae", ("model",), r"^(decoder_|mask_token$)", _refuse_global_pool),
        Layout(
            "rsp",
            ("model",),
            r"^(decoder_|mask_token$|to_prior\.|to_posterior\.)",
            _refuse_global_pool,
        ),
        Layout(
            "tcore",
            BRANCHES,
            r"^(dino_head\.|ibot_head\.|mask_token$)",
            _fold_layer_scale,
        ),
    )
}


@dataclasses.dataclass(frozen=True)
class Found:
    """Which layout a checkpoint has and, where it holds both, which branch."""

    layout: str
    branch: str | None = None


def is_flat(state: Any) -> bool:
    """Whether ``state`` is a mapping of arrays (a state dict, not a wrapper)."""
    return isinstance(state, Mapping) and all(
        hasattr(v, "shape") for v in state.values()
    )


def strip(key: str) -> str:
    """``key`` without the ``module.`` / ``backbone.`` prefixes."""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _marks_tcore(keys, layer_scale: bool) -> bool:
    """DINOv2-style heads or register tokens (and, inside a teacher/student
    entry, where DINO has none, LayerScale) mark T-CoRe's layout. A bare state
    dict with LayerScale alone stays ``timm`` and is refused naming the keys,
    unless ``layout="tcore"`` is given."""
    heads = ("dino_head.", "ibot_head.")
    return any(
        k.startswith(heads) or k == "register_tokens"
        or (layer_scale and re.search(r"\.ls[12]\.gamma$", k))
        for k in map(strip, keys)
    )  # fmt: skip


def _model_layout(keys) -> str:
    keys = [strip(k) for k in keys]
    if any(
        k.startswith(("to_prior.", "to_posterior.", "decoder_embed_deter."))
        for k in keys
    ):
        return "rsp"
    if any(k.startswith("decoder_blocks.") and ".multihead_attn." in k for k in keys):
        return "cropmae"
    return "mae"


def detect(checkpoint: Mapping, branch: str | None = None) -> Found:
    """The layout of a loaded checkpoint (numpy leaves), by its entries and keys.

    Args:
      checkpoint: what ``torch.load`` / safetensors gave.
      branch: ``"teacher"`` or ``"student"`` for checkpoints holding both;
        None: the teacher (the network DINO and T-CoRe evaluate).

    Raises:
      ValueError: no state dict of arrays found, or the branch is missing.
    """
    if branch is not None and branch not in BRANCHES:
        raise ValueError(f"branch={branch!r} is not one of {BRANCHES}")
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"not a state dict or a checkpoint dict: {type(checkpoint)}")
    if is_flat(checkpoint):
        if branch is not None:
            raise ValueError(
                f"branch={branch!r}: the checkpoint is a bare state dict with no "
                f"{BRANCHES} entries"
            )
        if _marks_tcore(checkpoint, layer_scale=False):
            return Found("tcore")
        backbone = any(
            k.startswith(("backbone.", "module.backbone.")) for k in checkpoint
        )
        return Found("dino" if backbone else "timm")
    if any(isinstance(checkpoint.get(b), Mapping) for b in BRANCHES):
        chosen = branch or "teacher"
        inner = checkpoint.get(chosen)
        if not isinstance(inner, Mapping):
            raise ValueError(
                f"branch={chosen!r}: no such entry; top-level keys {_top(checkpoint)}"
            )
        tcore = _marks_tcore(inner, layer_scale=True)
        return Found("tcore" if tcore else "dino", chosen)
    if branch is not None:
        raise ValueError(
            f"branch={branch!r}: the checkpoint has no {BRANCHES} entries; top-level "
            f"keys {_top(checkpoint)}"
        )
    if isinstance(checkpoint.get("model"), Mapping):
        return Found(_model_layout(checkpoint["model"]))
    if any(isinstance(checkpoint.get(w), Mapping) for w in LAYOUTS["timm"].wrappers):
        return Found("timm")
    raise ValueError(
        f"no state dict of tensors found; top-level keys {_top(checkpoint)} "
        f"(known layouts: {sorted(LAYOUTS)})"
    )


def _top(checkpoint: Mapping) -> list[str]:
    return sorted(map(str, checkpoint))[:20]


def _forced(checkpoint: Mapping, layout: str, branch: str | None) -> Found:
    """``Found`` for a layout the caller names (the branch checked)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {sorted(LAYOUTS)}")
    if branch is not None and branch not in BRANCHES:
        raise ValueError(f"branch={branch!r} is not one of {BRANCHES}")
    holds = not is_flat(checkpoint) and any(
        isinstance(checkpoint.get(b), Mapping) for b in BRANCHES
    )
    if LAYOUTS[layout].wrappers == BRANCHES and holds:
        return Found(layout, branch or "teacher")
    if branch is not None:
        raise ValueError(
            f"branch={branch!r}: this checkpoint has no {BRANCHES} entries for "
            f"layout {layout!r}"
        )
    return Found(layout)


def _descend(checkpoint: Mapping, found: Found) -> Mapping:
    """The flat state dict inside the layout's wrapper entries."""
    spec = LAYOUTS[found.layout]
    state = checkpoint
    while not is_flat(state):
        names = spec.wrappers
        if names == BRANCHES:
            names = (found.branch,) if found.branch else ()
        inner = [w for w in names if isinstance(state.get(w), Mapping)]
        if not inner:
            raise ValueError(
                f"no state dict of tensors found for layout {found.layout!r}; "
                f"top-level keys {_top(state)} (entries looked into: {list(names)})"
            )
        state = state[inner[0]]
    return state


def encoder_state(
    checkpoint: Mapping,
    layout: str | None = None,
    branch: str | None = None,
    source: str = "state dict",
) -> tuple[State, Found]:
    """The encoder's flat timm-layout state dict inside a released checkpoint.

    Args:
      checkpoint: a loaded checkpoint (numpy leaves).
      layout: a name of :data:`LAYOUTS`; None: :func:`detect` it (a bare
        timm-layout state dict reads as ``timm``: name ``dino`` to record
        DINO's released backbone as such).
      branch: ``"teacher"`` / ``"student"`` where the checkpoint holds both
        (DINO's training checkpoints); None: the teacher.
      source: names the file in errors.

    Returns:
      ``(state, found)``: the encoder's keys only, and the layout (and branch)
      they were read as.

    Raises:
      ValueError: an unknown layout or branch, no state dict where the layout
        keeps it, or weights the layout refuses (named).
    """
    try:
        if layout is None:
            found = detect(checkpoint, branch)
        else:
            found = _forced(checkpoint, layout, branch)
        flat = _descend(checkpoint, found)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    spec = LAYOUTS[found.layout]
    dropped = re.compile(spec.dropped)
    state = {}
    for key, value in flat.items():
        key = strip(key)
        if not dropped.match(key):
            state[key] = value
    if spec.fix is not None:
        state = spec.fix(state, f"{source} ({spec.name} layout)")
    return state, found
