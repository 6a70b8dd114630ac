"""The three evaluators, one shape: videos, one video's propagation, a score.

A :class:`Benchmark` knows its official layout (``videos``), carries frame 0's
labels through one video and writes that video's predictions in the official
format (``run_video``), and scores the videos done (``score``). The offline
evaluation (:func:`run`, the CLI and :func:`siammae_jax.eval.evaluate`) and
the online one during training (:mod:`siammae_jax.train.evaluation`) drive the
same objects; only what they do around a failing video and a time bound
differs. Adding a benchmark is a format module in
:mod:`siammae_jax.datasets`, a ``Benchmark`` here and its config section.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import ml_collections
import numpy as np
from etils import epath
from tqdm import tqdm

from siammae_jax.datasets import davis, davis_score, jhmdb, vip
from siammae_jax.eval import geometry, pictures, propagation, provenance

Extractor = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class Video:
    """One propagated video: what ``score`` needs and its overlay picture.

    Attributes:
      name: the video's name in its split.
      partial: the benchmark's per-video result (None for DAVIS, whose score
        reads the written predictions).
      picture: frames with the predictions drawn over them (uint8), or None.
    """

    name: str
    partial: Any = None
    picture: np.ndarray | None = None


def input_size(
    height: int,
    width: int,
    patch: int,
    *,
    short_side: int = 0,
    long_side: int = 0,
    size: int = 0,
) -> tuple[int, int]:
    """The encoder's input size: a fixed square ``size``, or the short (long)
    side scaled to ``short_side`` (``long_side``), each side rounded to a
    multiple of the patch (the ``siammae`` protocol's rules; every rule is in
    :func:`siammae_jax.eval.geometry.input_size`)."""
    if size:
        rule = dict(resize="square", size=size)
    elif short_side:
        rule = dict(resize="short_round", short_side=short_side)
    else:
        rule = dict(resize="long_round", long_side=long_side)
    return geometry.input_size(height, width, patch, ml_collections.ConfigDict(rule))


def prop_config(section: ml_collections.ConfigDict) -> propagation.PropagationConfig:
    return propagation.PropagationConfig(
        topk=section.topk,
        queue=section.queue,
        radius=section.radius,
        temperature=section.temperature,
        queue_mode=section.queue_mode,
        chunk=section.chunk,
        neighbourhood=section.neighbourhood,
        restrict_first=section.restrict_first,
    )


def encoder_input(
    extract: Extractor, frames: np.ndarray, patch: int, cfg: ml_collections.ConfigDict
) -> tuple[np.ndarray, tuple[int, int]]:
    """Features [T, h, w, D] of the frames resized by the protocol's rule,
    and the input size (height, width) the encoder saw."""
    size = geometry.input_size(*frames.shape[1:3], patch, cfg)
    return extract(geometry.resize_frames(frames, size, cfg.frame_resize)), size


def propagate_ids(
    extract: Extractor,
    frames: np.ndarray,
    first: np.ndarray,
    classes: np.ndarray,
    patch: int,
    cfg: ml_collections.ConfigDict,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Frame 0's label ids ``first`` [H, W] carried through the video.

    Returns ``(ids, input size)``: ids [T, H, W] (values of ``classes``;
    frame 0 is ``first``) and the encoder's input (height, width).
    """
    feats, size = encoder_input(extract, frames, patch, cfg)
    labels = geometry.labels_in(first, classes, feats.shape[1:3], cfg.labels_in, size)
    soft = propagation.propagate(feats, labels, prop_config(cfg))
    index = [
        geometry.labels_out(x, first.shape, size, cfg.labels_out, cfg.norm_mask)
        for x in soft
    ]
    ids = np.asarray(classes)[np.stack(index)]
    ids[0] = first
    return ids, size


def overlay_strip(frames: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A few frames of a video with their labels drawn over them, side by side."""
    picks = pictures.pick_frames(len(frames))
    return pictures.strip([pictures.overlay(frames[t], labels[t]) for t in picks])


class Benchmark:
    """One benchmark's layout, per-video propagation and score.

    Attributes:
      name: ``davis``, ``jhmdb`` or ``vip`` (the config section's name).
      folder: its folder in a synthetic set (``synthetic.write_dataset``).
      metrics: ``{logged name: key of the score dict}``.
    """

    name: ClassVar[str]
    folder: ClassVar[str]
    metrics: ClassVar[dict[str, str]]

    def videos(self, root, cfg: ml_collections.ConfigDict) -> list[str]:
        """The split's videos, in order."""
        raise NotImplementedError

    def run_video(
        self, extract: Extractor, patch: int, root, video: str,
        cfg: ml_collections.ConfigDict, out: epath.Path | None,
        inputs: provenance.Inputs | None = None, picture: bool = False,
    ) -> Video:  # fmt: skip
        """Propagates one video and writes its predictions under ``out``
        (nothing written when None)."""
        raise NotImplementedError

    def score(
        self, root, out: epath.Path, cfg: ml_collections.ConfigDict,
        done: Sequence[Video], progress: bool = False,
    ) -> dict[str, float]:  # fmt: skip
        """The official scores of the videos ``done`` (predictions in
        ``out``), with the summary files written there."""
        raise NotImplementedError


class Davis(Benchmark):
    """DAVIS-2017 semi-supervised: indexed PNGs, then the official J&F."""

    name, folder = "davis", "DAVIS"
    metrics = {"J&F": "J&F-Mean", "J": "J-Mean", "F": "F-Mean"}

    def videos(self, root, cfg):
        return davis.read_set(root, cfg.split)

    def run_video(self, extract, patch, root, video, cfg, out, inputs=None,
                  picture=False):  # fmt: skip
        s = davis.load_sequence(root, video)
        ids = np.array((0, *s.object_ids))
        masks, size = propagate_ids(extract, s.frames, s.first_mask, ids, patch, cfg)
        masks = masks.astype(np.uint8)
        if inputs is not None:
            inputs.add(video, s.frame_names, s.frames.shape[1:3], size)
        if out is not None:
            davis.write_masks(out, video, s.frame_names, masks)
        strip = overlay_strip(s.frames, masks) if picture else None
        return Video(video, None, strip)

    def score(self, root, out, cfg, done, progress=False):
        names = [v.name for v in done]
        row, rows = davis_score.score(root, out, cfg.split, progress, names=names)
        davis_score.write_csvs(out, row, rows, cfg.split)
        return row


class Jhmdb(Benchmark):
    """JHMDB pose propagation: 15 joint heatmaps, top-k decoding, PCK."""

    name, folder = "jhmdb", "JHMDB"
    metrics = {"PCK@0.1": "PCK@0.1", "PCK@0.2": "PCK@0.2"}

    def videos(self, root, cfg):
        return [f"{cls}/{name}" for cls, name in jhmdb.read_split(root, cfg.split)]

    def run_video(self, extract, patch, root, video, cfg, out, inputs=None,
                  picture=False):  # fmt: skip
        cls, name = video.split("/")
        v = jhmdb.load_video(root, cls, name)
        hw = v.frames.shape[1:3]
        feats, size = encoder_input(extract, v.frames, patch, cfg)
        if inputs is not None:
            inputs.add(video, [str(len(v.frames))], hw, size)
        first = jhmdb.joint_heatmaps(
            v.joints[0], hw, feats.shape[1:3], sigma=cfg.sigma, style=cfg.heatmap,
            coords=cfg.coords,
        )  # fmt: skip
        soft = propagation.propagate(feats, first, prop_config(cfg))
        pred = jhmdb.decode_joints(soft, hw, topk=cfg.decode_topk, coords=cfg.coords)
        if out is not None:
            jhmdb.write_predictions(out, cls, name, pred)
        strip = None
        if picture:
            picks = pictures.pick_frames(len(v.frames))
            strip = pictures.strip(
                [pictures.skeleton(v.frames[t], pred[t]) for t in picks]
            )
        return Video(video, (pred, v.joints), strip)

    def score(self, root, out, cfg, done, progress=False):
        preds = [v.partial[0] for v in done]
        truths = [v.partial[1] for v in done]
        results = jhmdb.pck(preds, truths, invalid=cfg.pck_invalid)
        jhmdb.write_summary(out, results)
        return {k: v for k, v in results.items() if k.startswith("PCK@")}


class Vip(Benchmark):
    """VIP part propagation: class-index PNGs and mIoU over all frames but 0
    (all frames with ``cfg.count_first``: frame 0 is the ground truth)."""

    name, folder = "vip", "VIP"
    metrics = {"mIoU": "mIoU"}

    def videos(self, root, cfg):
        return vip.read_list(root, cfg.split)

    def run_video(self, extract, patch, root, video, cfg, out, inputs=None,
                  picture=False):  # fmt: skip
        v = vip.load_video(root, video)
        hw = v.labels.shape[1:3]
        vip.onehot(v.labels[0])  # Checks the label values.
        first = np.where(v.labels[0] == vip.VOID, 0, v.labels[0])
        classes = np.arange(vip.NUM_CLASSES)
        preds, size = propagate_ids(extract, v.frames, first, classes, patch, cfg)
        preds = preds.astype(np.uint8)
        preds[0] = v.labels[0]
        if inputs is not None:
            inputs.add(video, v.frame_names, hw, size)
        confusion = vip.ConfusionMatrix()
        for t in range(0 if cfg.count_first else 1, len(preds)):
            confusion.update(preds[t], v.labels[t])
        if out is not None:
            vip.write_parts(out, video, v.frame_names, preds)
        strip = overlay_strip(v.frames, preds) if picture else None
        return Video(video, confusion.matrix, strip)

    def score(self, root, out, cfg, done, progress=False):
        confusion = vip.ConfusionMatrix()
        for v in done:
            confusion.matrix += v.partial
        summary = confusion.summary()
        vip.write_summary(out, summary)
        return {"mIoU": summary["mIoU"]}


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (Davis(), Jhmdb(), Vip())}


def run(
    task: str, extract: Extractor, patch: int, root, out,
    cfg: ml_collections.ConfigDict, overlays: int = 3, progress: bool = True,
    inputs: provenance.Inputs | None = None,
) -> dict:  # fmt: skip
    """Scores every video of the split (offline: an error in any video stops
    the run; nothing partial is reported as a score). Writes predictions,
    overlay pictures (the first ``overlays`` videos) and the summary files."""
    bench, out = BENCHMARKS[task], epath.Path(out)
    done = []
    names = bench.videos(root, cfg)
    for i, name in enumerate(tqdm(names, desc=task.upper(), disable=not progress)):
        video = bench.run_video(
            extract, patch, root, name, cfg, out, inputs, picture=i < overlays
        )
        if video.picture is not None:
            path = out / "overlays" / f"{name.split('/')[-1]}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pictures.save(path, video.picture)
        done.append(video)
    return bench.score(root, out, cfg, done, progress)


run_davis = functools.partial(run, "davis")
run_jhmdb = functools.partial(run, "jhmdb")
run_vip = functools.partial(run, "vip")
RUNNERS = {"davis": run_davis, "jhmdb": run_jhmdb, "vip": run_vip}


def parse(text: str) -> list[str]:
    """``"davis,jhmdb"`` -> ``["davis", "jhmdb"]``; unknown names raise."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    unknown = [t for t in names if t not in BENCHMARKS]
    if not names or unknown:
        raise ValueError(
            f"eval.tasks={text!r}: give a comma-separated subset of "
            f"{sorted(BENCHMARKS)}"
        )
    return list(dict.fromkeys(names))


def metric_names(task_names: list[str]) -> list[str]:
    """Every ``<task>/<metric>`` the tasks log (what eval.best_metric names)."""
    return [f"{t}/{m}" for t in task_names for m in BENCHMARKS[t].metrics]
