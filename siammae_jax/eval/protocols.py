"""Named evaluation protocols: each published evaluator's settings, cited.

Label-propagation scores move by points with settings that papers rarely
print (input size, context, top-k, neighbourhood, temperature, how labels
reach the feature grid and come back). A protocol pins all of them for one
benchmark, each value with the source line it comes from:

``siammae``
    The paper's Table 4b (top-k, queue, neighbourhood) with our assumptions
    where it is silent, each with its reason (``ours (assumed)`` in
    ``docs/protocols.md``): the default.
``dino``
    facebookresearch/dino ``eval_video_segmentation.py`` (DAVIS only).
``crw``
    ajabri/videowalk ``code/test.py`` with its README command lines.
``480x880``
    The fixed 480x880 input of CropMAE / RSP / T-CoRe, the rest as their
    evaluation code does.

:func:`resolve` turns a protocol name and a benchmark into the settings an
evaluator runs with (a ConfigDict section, see :mod:`siammae_jax.eval.config`)
plus the departures: values given on top of the protocol. ``docs/protocols.md``
is :func:`markdown` (a test keeps them equal).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

TASKS = ("davis", "jhmdb", "vip")

# Where the values come from (pinned to the commits read).
DINO = "facebookresearch/dino@cc72fe9 eval_video_segmentation.py"
DINO_VIT = "facebookresearch/dino vision_transformer.py"
CROPMAE = "alexandre-eymael/CropMAE@ffafcf4 "
RSP = "huiwon-jang/RSP@53c5593 "
CRW = "ajabri/videowalk@0834ff9 code/"
PAPER = "SiamMAE paper Table 4b"
OURS = "ours (assumed)"  # where the paper is silent


@dataclasses.dataclass(frozen=True)
class Value:
    """One setting of a protocol.

    Attributes:
      value: the setting.
      source: where it comes from: ``repo file:line``, the paper, or
        ``open: ...`` when the source leaves it to the user (then the value
        is our choice, said so).
    """

    value: Any
    source: str


def _v(value: Any, source: str) -> Value:
    return Value(value, source)


# ----------------------------------------------------------------- siammae

_SIAMMAE_PROPAGATION = {
    "queue": _v(20, PAPER + " (queue length)"),
    "temperature": _v(0.7, OURS),
    "queue_mode": _v("videowalk", OURS + ": videowalk's front padding"),
    "neighbourhood": _v("circle", OURS + ": videowalk's MaskedAttention"),
    "restrict_first": _v(False, OURS + ": videowalk leaves frame 0 whole"),
    "frame_resize": _v("pil_bilinear", OURS),
    "mean": _v((0.485, 0.456, 0.406), OURS + " (ImageNet)"),
    "std": _v((0.229, 0.224, 0.225), OURS + " (ImageNet)"),
    "pos_interp": _v("bicubic_aa", OURS + ": timm's resample_abs_pos_embed"),
}
_SIAMMAE_MASKS = {
    "labels_in": _v("bilinear", OURS + ": one-hot, bilinear (cv2 INTER_LINEAR)"),
    "labels_out": _v("bilinear", OURS + ": bilinear to the image size, argmax"),
    "norm_mask": _v(False, OURS),
}

SIAMMAE = {
    "davis": {
        "pre_resize": _v((0, 0), OURS + ": none, scored at the annotations' size"),
        "resize": _v("short_round", OURS + ": short side, sides rounded to patch"),
        "short_side": _v(480, OURS + " (480p)"),
        "fixed_size": _v((0, 0), "unused (resize is not fixed)"),
        "topk": _v(7, PAPER),
        "radius": _v(20.0, PAPER),
        **_SIAMMAE_PROPAGATION,
        **_SIAMMAE_MASKS,
    },
    "jhmdb": {
        "resize": _v("square", OURS),
        "size": _v(320, OURS),
        "sigma": _v(0.5, OURS + ": videowalk's heatmaps"),
        "heatmap": _v("gaussian", OURS + ": continuous Gaussians, half-pixel"),
        "coords": _v("centre", OURS + ": half-pixel cell centres"),
        "decode_topk": _v(3, OURS + ": videowalk's process_pose top-3"),
        "pck_invalid": _v("miss", OURS + ": a joint that cannot be decoded misses"),
        "topk": _v(7, PAPER),
        "radius": _v(20.0, PAPER),
        **_SIAMMAE_PROPAGATION,
    },
    "vip": {
        "resize": _v("long_round", OURS),
        "long_side": _v(880, OURS),
        "count_first": _v(False, OURS + ": frame 0 is given, not scored"),
        "topk": _v(10, PAPER),
        "radius": _v(8.0, PAPER),
        **_SIAMMAE_PROPAGATION,
        **_SIAMMAE_MASKS,
    },
}

# -------------------------------------------------------------------- dino

DINO_DAVIS = {
    "pre_resize": _v((0, 0), DINO + ":288 reads JPEGImages/480p as it is"),
    "fixed_size": _v((0, 0), "unused (resize is not fixed)"),
    "resize": _v("short_floor64", DINO + ":203-211 `tw = int((tw // 64) * 64)`"),
    "short_side": _v(480, DINO + ":198 `scale_size=[480]`"),
    "frame_resize": _v("cv2_linear", DINO + ":214 `cv2.resize(img, (tw, th))`"),
    "mean": _v((0.485, 0.456, 0.406), DINO + ":244"),
    "std": _v((0.228, 0.224, 0.225), DINO + ":244 (std[0] = 0.228)"),
    "pos_interp": _v("dino", DINO_VIT + ":174-193 `w0, h0 = w0 + 0.1, h0 + 0.1`"),
    "labels_in": _v("pil_nearest", DINO + ":239-241 `seg.resize(..., 0)`"),
    "topk": _v(5, DINO + ":263 `--topk default=5`"),
    "queue": _v(7, DINO + ":260 `--n_last_frames default=7`"),
    "queue_mode": _v("dino", DINO + ":61-70 `[first_seg] + que`"),
    "temperature": _v(0.1, DINO + ":129 `torch.exp(... / 0.1)`"),
    "neighbourhood": _v("square", DINO + ":85-99 restrict_neighborhood"),
    "radius": _v(12.0, DINO + ":261 `--size_mask_neighborhood default=12`"),
    "restrict_first": _v(True, DINO + ":131-135 `aff *= mask_neighborhood`"),
    "labels_out": _v("input_nearest", DINO + ":74,80 bilinear x patch, PIL nearest"),
    "norm_mask": _v(True, DINO + ":75,102-110 norm_mask"),
}

# --------------------------------------------------------------------- crw

_CRW_PROPAGATION = {
    "queue": _v(20, CRW + "utils/arguments.py:32 `--videoLen default=20`"),
    "queue_mode": _v("videowalk", CRW + "data/vos.py:142,148-150 front padding"),
    "neighbourhood": _v("circle", CRW + "utils/__init__.py:354-356 `D < radius`"),
    "restrict_first": _v(False, CRW + "utils/test_utils.py:154 long_mem unmasked"),
    "frame_resize": _v("cv2_linear", CRW + "data/vos.py:38-42 `cv2.resize`"),
    "mean": _v((0.485, 0.456, 0.406), CRW + "data/vos.py:173"),
    "std": _v((0.229, 0.224, 0.225), CRW + "data/vos.py:173"),
    "pos_interp": _v("bicubic_aa", "open: videowalk evaluates a ResNet (ours)"),
    "labels_in": _v("bilinear", CRW + "data/vos.py:245-262 one-hot, INTER_LINEAR"),
    "labels_out": _v("bilinear", CRW + "utils/test_utils.py:86-93 `cv2.resize`"),
    "norm_mask": _v(False, CRW + "utils/arguments.py:56 `--norm_mask False`"),
}

CRW_DAVIS = {
    "pre_resize": _v((0, 0), CRW + "eval/davis_vallist.txt reads 480p as it is"),
    "fixed_size": _v((0, 0), "unused (resize is not fixed)"),
    "resize": _v(
        "native_round",
        "open: README `--cropSize -1` (native 480p) at stride 8; a ViT needs "
        "patch multiples, so each side is rounded to the patch (ours)",
    ),
    "short_side": _v(480, "unused (native size)"),
    "topk": _v(10, CRW + "README.md DAVIS command `--topk 10`"),
    "radius": _v(12.0, CRW + "README.md DAVIS command `--radius 12`"),
    "temperature": _v(0.05, CRW + "README.md DAVIS command `--temperature 0.05`"),
    **_CRW_PROPAGATION,
}

_MASK_ONLY = ("labels_", "norm_mask")  # settings of mask benchmarks only

CRW_JHMDB = {
    "resize": _v("square", CRW + "data/jhmdb.py:206-219 `ratio = 1.0`"),
    "size": _v(320, CRW + "utils/arguments.py:35 `--cropSize default=320`"),
    "sigma": _v(0.5, CRW + "data/jhmdb.py:126 `sigma=0.5`"),
    "heatmap": _v("crw", CRW + "data/jhmdb.py:287-319 draw_labelmap, :266"),
    "coords": _v("corner", CRW + "data/jhmdb.py:233-239; eval/eval_pck.py:62-63"),
    "decode_topk": _v(3, CRW + "utils/test_utils.py:55 `process_pose(topk=3)`"),
    "pck_invalid": _v("skip", CRW + "eval/eval_pck.py:53-56 visible joints only"),
    "topk": _v(
        10, CRW + "utils/arguments.py:28 `--topk default=10` (no README command)"
    ),
    "radius": _v(12.0, CRW + "utils/arguments.py:30 `--radius default=12`"),
    "temperature": _v(0.07, CRW + "utils/arguments.py:26 `--temperature 0.07`"),
    **{k: v for k, v in _CRW_PROPAGATION.items() if not k.startswith(_MASK_ONLY)},
    "queue_mode": _v("videowalk", CRW + "data/jhmdb.py:163,168-170 front padding"),
}

# ----------------------------------------------------------------- 480x880
# CropMAE's downstreams/propagation (videowalk's test.py ported to ViTs);
# T-CoRe (yafeng19/T-CORE@67c8bf9) copies it with the same defaults.

_CROPMAE_PROPAGATION = {
    "restrict_first": _v(False, CROPMAE + "src/test.py:97-112 long_mem unmasked"),
    "queue": _v(20, CROPMAE + "downstreams/propagation/util.py:31 video_len 20"),
    "queue_mode": _v("videowalk", CROPMAE + "src/data/vos.py:100,107 padding"),
    "neighbourhood": _v("circle", CROPMAE + "src/utils/__init__.py:31-33"),
    "frame_resize": _v("cv2_linear", CROPMAE + "src/data/vos.py:150 `resize`"),
    "mean": _v((0.485, 0.456, 0.406), CROPMAE + "src/data/vos.py:128"),
    "std": _v((0.229, 0.224, 0.225), CROPMAE + "src/data/vos.py:128"),
    "pos_interp": _v("dino", CROPMAE + "src/models_mae.py `w0 + 0.1` bicubic"),
    "temperature": _v(0.7, CROPMAE + "downstreams/propagation/util.py:28"),
    "radius": _v(20.0, CROPMAE + "downstreams/propagation/util.py:30"),
}
_CROPMAE_MASKS = {
    "labels_out": _v("bilinear", CROPMAE + "src/utils/test_utils.py:86-94"),
    "norm_mask": _v(False, CROPMAE + "start.py norm_mask=False"),
}

DAVIS_480x880 = {
    "pre_resize": _v(
        (480, 880),
        CROPMAE
        + "util.py:15-16 scores DAVIS_480_880, made as "
        + RSP
        + "data_preprocessing/eval/davis_preprocessing.py:25,44 "
        "(PIL nearest, frames and annotations; CropMAE leaves it open)",
    ),
    "resize": _v("fixed", CROPMAE + "util.py:32 `--davis_crop_size [480, 880]`"),
    "fixed_size": _v((480, 880), CROPMAE + "util.py:32"),
    "short_side": _v(480, "unused (fixed size)"),
    "topk": _v(7, CROPMAE + "downstreams/propagation/util.py:29"),
    **_CROPMAE_PROPAGATION,
    "labels_in": _v("bilinear", CROPMAE + "src/data/vos.py:178-194"),
    **_CROPMAE_MASKS,
}

VIP_480x880 = {
    "resize": _v("long_floor64", CROPMAE + "src/data/vos.py:138-148 one value"),
    "long_side": _v(880, CROPMAE + "util.py:47 `--vip_crop_size [880]`"),
    "topk": _v(10, CROPMAE + "util.py:44 `--vip_topk 10`"),
    "count_first": _v(True, CROPMAE + "src/eval/eval_vip.py scores frame 0 too"),
    **_CROPMAE_PROPAGATION,
    "labels_in": _v("input_nearest_bilinear", CROPMAE + "src/data/vos.py:152,178-194"),
    "labels_out": _v(
        "input_nearest", CROPMAE + "src/eval/eval_vip.py PIL nearest to GT size"
    ),
    "norm_mask": _CROPMAE_MASKS["norm_mask"],
}

JHMDB_480x880 = {
    "resize": _v("square", CROPMAE + "util.py:39 `--jhmdb_crop_size [320, 320]`"),
    "size": _v(320, CROPMAE + "util.py:39"),
    "sigma": _v(0.5, CROPMAE + "src/data/jhmdb.py:89 `sigma=0.5`"),
    "heatmap": _v("crw", CROPMAE + "src/data/jhmdb.py draw_labelmap (videowalk's)"),
    "coords": _v("corner", CROPMAE + "src/data/jhmdb.py:216; src/eval/eval_pck.py"),
    "decode_topk": _v(5, CROPMAE + "src/utils/test_utils.py:55 `topk=5`"),
    "pck_invalid": _v("skip", CROPMAE + "src/eval/eval_pck.py (videowalk's)"),
    "topk": _v(7, CROPMAE + "downstreams/propagation/util.py:36"),
    **_CROPMAE_PROPAGATION,
}

PROTOCOLS: dict[str, dict[str, dict[str, Value]]] = {
    "siammae": SIAMMAE,
    "dino": {"davis": DINO_DAVIS},
    "crw": {"davis": CRW_DAVIS, "jhmdb": CRW_JHMDB},
    "480x880": {"davis": DAVIS_480x880, "jhmdb": JHMDB_480x880, "vip": VIP_480x880},
}

# Where a source defines no protocol for a benchmark, and why.
UNDEFINED = {
    ("dino", "jhmdb"): "facebookresearch/dino evaluates DAVIS only",
    ("dino", "vip"): "facebookresearch/dino evaluates DAVIS only",
    ("crw", "vip"): "ajabri/videowalk ships no VIP input size or scorer",
}

# Fields that are not part of any protocol: which data, and memory.
OPERATIONAL = ("split", "chunk")


def names() -> tuple[str, ...]:
    """The protocol names."""
    return tuple(PROTOCOLS)


def settings(name: str, task: str) -> dict[str, Any]:
    """``{field: value}`` of protocol ``name`` for benchmark ``task``.

    Raises:
      ValueError: an unknown protocol or benchmark, or a protocol its source
        does not define for that benchmark (the reason named).
    """
    if task not in TASKS:
        raise ValueError(f"unknown benchmark {task!r}; expected one of {TASKS}")
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of {names()}")
    if task not in PROTOCOLS[name]:
        why = UNDEFINED.get((name, task), "not defined")
        raise ValueError(f"protocol {name!r} has no {task} settings: {why}")
    return {k: v.value for k, v in PROTOCOLS[name][task].items()}


def resolve(
    name: str,
    task: str,
    base: ml_collections.ConfigDict,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[ml_collections.ConfigDict, dict[str, dict[str, Any]]]:
    """The settings a benchmark runs with, and their departures.

    Args:
      name: protocol name.
      task: ``davis``, ``jhmdb`` or ``vip``.
      base: the benchmark's config section (operational fields such as
        ``split`` and ``chunk`` are taken from it).
      overrides: ``{field: value}`` given on top of the protocol (the
        command line's ``--config.<task>.*``); None: every field of ``base``
        that differs from the ``siammae`` protocol counts as given (what a
        training config's ``eval`` section holds).

    Returns:
      ``(section, departures)``: the section with the protocol's values and
      then the overrides; departures ``{field: {"protocol": v, "used": v}}``
      for each override that differs from the protocol.

    Raises:
      ValueError: see :func:`settings`; an override of an unknown field.
    """
    chosen = settings(name, task)
    if overrides is None:
        default = settings("siammae", task)
        overrides = {
            k: v for k, v in base.items() if k in default and _differ(v, default[k])
        }
    section = ml_collections.ConfigDict(base.to_dict())
    for field, value in chosen.items():
        if field not in section:
            raise ValueError(f"config section {task} has no field {field!r}")
        section[field] = value
    departures = {}
    for field, value in overrides.items():
        if field not in section:
            raise ValueError(f"--config.{task}.{field}: no such field")
        section[field] = value
        if field in chosen and _differ(value, chosen[field]):
            departures[field] = {"protocol": chosen[field], "used": value}
    return section, departures


def _differ(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) != list(b)
    return a != b


def markdown() -> str:
    """``docs/protocols.md``'s tables: per benchmark, each protocol's value
    and source for every setting."""
    lines = [
        "# Evaluation protocols",
        "",
        "Generated by `python -m siammae_jax.eval protocols` from",
        "`siammae_jax/eval/protocols.py`; a test keeps this file equal to it.",
        "`open:` marks a value the source leaves to the user (ours, said so).",
    ]
    for task in TASKS:
        defined = [n for n in PROTOCOLS if task in PROTOCOLS[n]]
        fields = list(dict.fromkeys(f for n in defined for f in PROTOCOLS[n][task]))
        lines += ["", f"## {task}", "", "| setting | " + " | ".join(defined) + " |"]
        lines.append("|---" * (len(defined) + 1) + "|")
        for field in fields:
            cells = []
            for n in defined:
                v = PROTOCOLS[n][task].get(field)
                cells.append("-" if v is None else f"`{v.value}` ({v.source})")
            lines.append(f"| {field} | " + " | ".join(cells) + " |")
        missing = [
            f"`{n}`: {UNDEFINED[(n, task)]}"
            for n in PROTOCOLS
            if (n, task) in UNDEFINED
        ]
        if missing:
            lines += ["", "Not defined: " + "; ".join(missing) + "."]
    return "\n".join(lines) + "\n"
