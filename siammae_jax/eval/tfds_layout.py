"""Benchmarks read through TFDS, scored by the folder evaluators.

``python -m siammae_jax.eval davis --data tfds:davis/480p [--tfds_data_dir DIR]``
(and ``tfds:jhmdb``, ``tfds:vip``) reads the benchmark's split with
``tfds.data_source`` and writes it once, under ``<out>/tfds/``, in the official
layout that :mod:`~siammae_jax.datasets.davis`, :mod:`~siammae_jax.datasets.jhmdb`
and :mod:`~siammae_jax.datasets.vip` read; the evaluation then runs on that
folder with the same code, so a TFDS source and the folder layout it was built
from score identically. Frames keep their encoded bytes (the original JPEG or
PNG files); labels are decoded and written as the evaluators' PNGs, joints as
JHMDB's ``.mat`` files. The written layout is reused while its
``source.json`` names the same dataset, split and data_dir.

The datasets: DAVIS-2017 is the TFDS catalog's ``davis`` builder (``davis/480p``;
``video`` = frames + colormap segmentations, ``metadata.video_name``); JHMDB and
VIP are the package's builders (:mod:`siammae_jax.data.tfds`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import ml_collections
import numpy as np
from absl import logging
from etils import epath
from tqdm import tqdm

from siammae_jax.data import sources
from siammae_jax.datasets import davis, jhmdb, vip

PREFIX = "tfds:"
MARKER = "source.json"
# The evaluators' split names -> the TFDS split names, where they differ.
SPLITS = {"val": "validation"}


def is_tfds(data: str) -> bool:
    """Whether ``--data`` names a TFDS dataset (``tfds:NAME``)."""
    return str(data).startswith(PREFIX)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _examples(ds, what: str, progress: bool) -> Iterator[dict]:
    for i in tqdm(range(len(ds)), desc=f"writing {what}", disable=not progress):
        yield ds[i]


def _davis(ds, root: epath.Path, cfg, progress: bool) -> int:
    names = []
    for ex in _examples(ds, "DAVIS", progress):
        name = _text(ex["metadata"]["video_name"])
        labels = np.stack([np.asarray(s)[..., 0] for s in ex["video"]["segmentations"]])
        davis.write_sequence(root, name, list(ex["video"]["frames"]), labels)
        names.append(name)
    davis.write_set(root, sorted(names), cfg.split)
    return len(names)


def _jhmdb(ds, root: epath.Path, cfg, progress: bool) -> int:
    classes: dict[str, list[str]] = {}
    for ex in _examples(ds, "JHMDB", progress):
        cls, video = _text(ex["class"]), _text(ex["video"])
        folder = root / "Rename_Images" / cls / video
        folder.mkdir(parents=True, exist_ok=True)
        for t, png in enumerate(ex["frames"]):
            (folder / f"{t + 1:05d}.png").write_bytes(png)
        mats = root / "joint_positions" / cls / video
        mats.mkdir(parents=True, exist_ok=True)
        jhmdb.write_mat(mats / jhmdb.MAT_NAME, np.asarray(ex["joints"]))
        classes.setdefault(cls, []).append(video)
    jhmdb.write_split(root, {c: sorted(v) for c, v in classes.items()}, cfg.split)
    return sum(len(v) for v in classes.values())


def _vip(ds, root: epath.Path, cfg, progress: bool) -> int:
    videos = []
    for ex in _examples(ds, "VIP", progress):
        video = _text(ex["video"])
        names = [_text(n) for n in ex["frame_names"]]
        folder = root / "Images" / video
        folder.mkdir(parents=True, exist_ok=True)
        for name, jpeg in zip(names, ex["frames"], strict=True):
            (folder / f"{name}{vip.IMAGE_SUFFIX}").write_bytes(jpeg)
        labels = np.stack([np.asarray(x)[..., 0] for x in ex["labels"]])
        vip.write_parts(root / "Category_ids", video, names, labels)
        videos.append(video)
    vip.write_list(root, sorted(videos), cfg.split)
    return len(videos)


# task -> (folder name, writer, features left encoded)
TASKS = {
    "davis": ("DAVIS", _davis, {"video": {"frames": True}}),
    "jhmdb": ("JHMDB", _jhmdb, {"frames": True}),
    "vip": ("VIP", _vip, {"frames": True}),
}


def dataset_and_split(task: str, name: str, cfg) -> tuple[str, str]:
    """The TFDS dataset and split that hold ``task``'s evaluation videos.

    JHMDB's official split ``cfg.split`` (1-3) is the builder config
    ``jhmdb/split<N>`` when ``name`` names none; its videos are the ``test``
    split. DAVIS and VIP's ``val`` is TFDS's ``validation``.
    """
    if task == "jhmdb":
        return (name if "/" in name else f"{name}/split{cfg.split}"), "test"
    return name, SPLITS.get(cfg.split, cfg.split)


def materialize(
    task: str,
    data: str,
    data_dir: str | None,
    out: str | epath.Path,
    cfg: ml_collections.ConfigDict,
    progress: bool = True,
) -> epath.Path:
    """Writes ``task``'s evaluation split of ``data`` (``tfds:NAME``) in the
    official layout under ``<out>/tfds/`` and returns its root.

    Raises:
      ValueError: ``data`` is not ``tfds:NAME``, or the split is empty.
      FileNotFoundError: the dataset is not prepared in ``data_dir``.
    """
    if not is_tfds(data) or task not in TASKS:
        raise ValueError(f"expected --data tfds:NAME for {sorted(TASKS)}, got {data!r}")
    folder_name, write, encoded = TASKS[task]
    name, split = dataset_and_split(task, data[len(PREFIX) :], cfg)
    source = {"name": name, "split": split, "data_dir": data_dir or ""}
    base = epath.Path(out) / "tfds" / name.replace("/", "_").replace(":", "_")
    root = base / folder_name
    marker = base / MARKER
    if (
        marker.exists()
        and {k: v for k, v in json.loads(marker.read_text()).items() if k != "videos"}
        == source
    ):
        logging.info("reusing %s, written from tfds:%s [%s]", root, name, split)
        return root
    ds = sources.open_tfds(name, split, data_dir, encoded)
    if not len(ds):
        raise ValueError(f"tfds:{name} [{split}] holds no videos")
    tmp = base.parent / f"{base.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    count = write(ds, tmp / folder_name, cfg, progress)
    (tmp / MARKER).write_text(json.dumps({**source, "videos": count}, indent=1))
    if base.exists():
        shutil.rmtree(base)
    tmp.rename(base)
    logging.info("wrote %d videos of tfds:%s [%s] to %s", count, name, split, root)
    return root
