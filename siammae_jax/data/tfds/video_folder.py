"""``video_folder``: a TFDS builder over a folder tree of videos, prepared with Beam.

The pre-training data as a named dataset (``tfds.data_source("video_folder",
data_dir=DIR)``), built once into a shared ``data_dir`` (often ``gs://``) and
read by grain without TensorFlow. The manual directory is a folder tree of video
files (mp4, avi, webm, mkv, ...; other files are probed), like Kinetics' train
split. Top-level folders named after splits (``train``, ``validation``,
``test``) make those splits; otherwise every video goes to ``train``.

One example per video: its frames decoded in order, resized to a short side of
``config.short_side`` (256 by default, Pillow Lanczos) and JPEG-encoded (the
same frames as ``python -m siammae_jax.data.prepare``), its frame rate, frame
count, sizes and path relative to the manual directory (also the example key).

Preparation is an Apache Beam pipeline: the DirectRunner on one machine,
Dataflow, Flink or Spark across many workers::

    tfds build video_folder --imports siammae_jax.data.tfds \\
        --manual_dir DIR --data_dir OUT --file_format array_record \\
        --beam_pipeline_options="runner=DirectRunner,direct_num_workers=2"

A video that cannot be decoded never fails the build: it is counted in the Beam
metric ``video_folder/videos_skipped`` (beside ``videos_written``), logged, and
listed with its reason in ``skipped-<split>.json`` next to the dataset's files,
together with the files that are not videos (and, under ``written``, the frame
count of every video stored).

With ``annotations`` in the config (a dataset's annotation list, the Kinetics
CSV form; ``match`` and ``min_frames`` as for ``prepare``), the build writes
``coverage.json`` next to the dataset's files and prints its summary line
(:mod:`siammae_jax.data.coverage`)::

    tfds build video_folder --imports siammae_jax.data.tfds --manual_dir DIR \\
        --config '{"name": "k400", "annotations": "/data/k400/train.csv"}' ...
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from siammae_jax.data import coverage
from siammae_jax.data.encode import encode_video
from siammae_jax.data.tfds import common
from siammae_jax.data.video import BadVideoError
from siammae_jax.data.video_file import find_videos

SPLITS = ("train", "validation", "test")
SKIPPED = "skipped-{split}.json"  # per split, in the dataset's folder
METRICS = "video_folder"  # Beam metrics namespace

_MANUAL = """\
Put the videos (any folder tree of video files: mp4, avi, webm, mkv, ...) in the
manual directory and pass it as --manual_dir. Top-level folders named train,
validation or test become those splits; otherwise every video is in `train`.
For Kinetics-400, the folder of the downloaded train videos works as it is.
"""


@dataclasses.dataclass
class VideoFolderConfig(tfds.core.BuilderConfig):
    """How the frames are stored.

    Attributes:
      short_side: frames are resized so their short side is this (0: as
        decoded).
      quality: JPEG quality.
      annotations: an annotation list ("": none): write ``coverage.json``.
      match, min_frames: how its rows name files, and the fewest frames of a
        usable video (:func:`siammae_jax.data.coverage.tally`).
    """

    short_side: int = 256
    quality: int = 90
    annotations: str = ""
    match: str = coverage.DEFAULT_MATCH
    min_frames: int = coverage.MIN_FRAMES


class VideoFolder(common.ArrayRecordBuilder):
    """Videos of a folder tree as JPEG frame sequences (pre-training data)."""

    # One config, so `tfds build video_folder` prepares the data once; others
    # by JSON: --config '{"name": "full", "short_side": 0}' (read back as
    # video_folder/full).
    BUILDER_CONFIGS = [
        VideoFolderConfig(name="256", description="Short side 256 (the default)."),
    ]
    DEFAULT_CONFIG_NAME = "256"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
    HOMEPAGE = "https://siamese-mae.github.io/"

    def _features(self) -> dict:
        return {
            "frames": tfds.features.Sequence(
                tfds.features.Image(encoding_format="jpeg")
            ),
            "num_frames": np.int32,
            "fps": np.float32,
            "height": np.int32,
            "width": np.int32,
            "orig_height": np.int32,
            "orig_width": np.int32,
            "source": tfds.features.Text(),
        }

    def download_and_prepare(self, **kwargs) -> None:
        """Builds the dataset; then, with ``annotations`` in the config,
        writes ``coverage.json`` beside it and prints its summary line."""
        super().download_and_prepare(**kwargs)
        config = self.builder_config
        if not config.annotations:
            return
        outcomes = {}
        for path in sorted(self.data_path.glob(SKIPPED.format(split="*"))):
            outcomes.update(_outcomes(json.loads(path.read_text())))
        result = coverage.report(
            config.annotations, outcomes, match=config.match,
            min_frames=config.min_frames,
        )  # fmt: skip
        print(coverage.summary_line(result, coverage.write(self.data_path, result)))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        if config.annotations:  # A bad list fails now, not after the build.
            coverage.read_annotations(config.annotations, config.match)
        root = common.manual_root(dl_manager, _MANUAL)
        named = [s for s in SPLITS if (root / s).is_dir()]
        folders = {s: root / s for s in named} or {"train": root}
        return {
            split: self._generate_examples(root, folder, split)
            for split, folder in folders.items()
        }

    def _generate_examples(self, root: epath.Path, folder: epath.Path, split: str):
        videos, not_videos = find_videos(folder)
        if not videos:
            raise ValueError(f"no video file under {folder}")
        logging.info("video_folder/%s: %d videos under %s", split, len(videos), folder)
        config = self.builder_config
        skipped = self.data_path / SKIPPED.format(split=split)
        return tfds.core.lazy_imports.apache_beam.ptransform_fn(encode_videos)(
            videos, not_videos, str(root), split, str(skipped),
            config.short_side or None, config.quality,
        )  # fmt: skip


def encode_videos(
    pipeline,
    videos: list[str],
    not_videos: list[tuple[str, str]],
    root: str,
    split: str,
    skipped_path: str,
    short_side: int | None,
    quality: int,
):
    """The Beam graph of one split: video paths -> ``(key, example)``.

    Videos are spread over the workers, decoded and encoded
    (:func:`~siammae_jax.data.encode.encode_video`); the unreadable ones go
    to a side output, gathered into ``skipped_path`` (JSON) at the end.
    """
    beam = tfds.core.lazy_imports.apache_beam
    out = (
        pipeline
        | "list" >> beam.Create(videos)
        | "spread" >> beam.Reshuffle()
        | "encode"
        >> beam.FlatMap(_Encode(root, short_side, quality)).with_outputs(
            "skipped", "written", main="examples"
        )
    )
    manifest = _Manifest(skipped_path, root, split, len(videos), not_videos)
    _ = (
        (out.skipped, out.written)
        | "outcomes" >> beam.Flatten()
        | "gather" >> beam.combiners.ToList()
        | "manifest" >> beam.Map(manifest)
    )
    return out.examples


class _Encode:
    """One video path -> ``(key, example)``, or a tagged ``skipped`` output."""

    def __init__(self, root: str, short_side: int | None, quality: int):
        self.root, self.short_side, self.quality = root, short_side, quality

    def __call__(self, path: str):
        beam = tfds.core.lazy_imports.apache_beam
        name = _relative(path, self.root)
        try:
            jpegs, meta = encode_video(path, "video", self.short_side, self.quality)
        except BadVideoError as e:
            logging.warning("video_folder: skipping %s: %s", name, e.reason)
            beam.metrics.Metrics.counter(METRICS, "videos_skipped").inc()
            yield beam.pvalue.TaggedOutput("skipped", (name, e.reason))
            return
        beam.metrics.Metrics.counter(METRICS, "videos_written").inc()
        yield beam.pvalue.TaggedOutput("written", (name, len(jpegs)))
        del meta["stream"]  # FFmpeg's best video stream was read; not a feature
        yield name, {"frames": jpegs, "num_frames": len(jpegs), "source": name, **meta}


class _Manifest:
    """Writes the split's ``skipped-<split>.json`` (one call, all outcomes:
    ``(path, reason)`` of a skip, ``(path, frame count)`` of a stored video)."""

    def __init__(self, path, root, split, found, not_videos):
        self.path, self.root, self.split = path, root, split
        self.found = found
        self.not_videos = [(_relative(p, root), r) for p, r in not_videos]

    def __call__(self, outcomes: list[tuple[str, str | int]]) -> None:
        skipped = sorted(o for o in outcomes if isinstance(o[1], str))
        written = sorted(o for o in outcomes if not isinstance(o[1], str))
        report = {
            "split": self.split,
            "manual_dir": self.root,
            "videos_found": self.found,
            "videos_written": self.found - len(skipped),
            "skipped": [{"path": p, "reason": r} for p, r in skipped],
            "not_videos": [{"path": p, "reason": r} for p, r in self.not_videos],
            "written": [{"path": p, "frames": n} for p, n in written],
        }
        path = epath.Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")


def _outcomes(report: dict) -> dict[str, str | int]:
    """Every file of a ``skipped-<split>.json``: its reason or frame count."""
    outcomes = {
        s["path"]: s["reason"] for s in report["not_videos"] + report["skipped"]
    }
    return outcomes | {w["path"]: w["frames"] for w in report["written"]}


def _relative(path: str, root: str) -> str:
    """``path`` relative to ``root`` (local or ``gs://``), with ``/``."""
    return os.path.relpath(path, root) if "://" not in root else path[len(root) + 1 :]
