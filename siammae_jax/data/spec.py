"""``open(spec)``: the one way a training run turns its ``data`` section into
a source of videos or (``data.format=images``, a TFDS image dataset) images.

:data:`FORMATS` lists every ``data.format`` (the config validates against it)
and :func:`means_synthetic` is the one rule for when the synthetic set is
meant: ``data.format=synthetic``, or an empty format with either no
``data.path`` or a ``data.path`` that holds a synthetic set
(``synthetic.json``). The synthetic set is written on first use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
from absl import logging
from etils import epath

from siammae_jax.data import coverage, images, sources, synthetic

SKIPPED_VIDEOS = "skipped_videos.txt"  # in the workdir: unused files, with why

Source = (
    sources.VideoFolderSource
    | sources.FrameFolderSource
    | sources.ArrayRecordSource
    | sources.TfdsSource
    | images.ImageFolderSource
    | images.TfdsImageSource
)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which videos to train on (the ``data`` section of a training config).

    Attributes:
      format: one of :data:`FORMATS` ("": inferred, see :func:`synthetic_root`).
      path: a folder of videos, frame folders, images or shards; or where
        the synthetic set is (or is to be written).
      tfds_name, tfds_data_dir, tfds_split: a prepared TFDS dataset
        (``format="tfds"``) of videos (a ``frames`` feature) or of images (an
        ``image`` feature).
      index_dir: frame-index sidecar files of video files ("": none).
      check_videos: open every video file (decode every image) at startup
        when there are at most this many (0: never).
      synthetic_videos, synthetic_frames, synthetic_size, synthetic_seed: the
        synthetic set to write.
    """

    format: str = ""
    path: str = ""
    tfds_name: str = ""
    tfds_data_dir: str = ""
    tfds_split: str = "train"
    index_dir: str = ""
    check_videos: int = 0
    synthetic_videos: int = 64
    synthetic_frames: int = 24
    synthetic_size: int = 96
    synthetic_seed: int = 0

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict, seed: int) -> DataSpec:
        """The spec of a config's ``data`` section; ``seed`` (the run's) is the
        synthetic seed of configs saved before ``data.synthetic_seed``."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values.setdefault("synthetic_seed", seed)
        return cls(**values)


def _videos(
    spec: DataSpec, path: str, length_rule: sources.LengthRule | None = None
) -> Source:
    source = sources.VideoFolderSource(path, index_dir=spec.index_dir or None)
    if len(source) <= spec.check_videos:
        source.check(length_rule)
    else:
        logging.info("not opening %d videos now (data.check_videos=%d): bad "
                     "ones are counted in data_skipped", len(source),
                     spec.check_videos)  # fmt: skip
    return source


def _frames(
    spec: DataSpec, path: str, length_rule: sources.LengthRule | None = None
) -> Source:
    source = sources.FrameFolderSource(path)
    if len(source) <= spec.check_videos:
        source.check(length_rule)
    return source


def _array_record(
    spec: DataSpec, path: str, length_rule: sources.LengthRule | None = None
) -> Source:
    del spec, length_rule  # records are not opened at start
    return sources.ArrayRecordSource(path)


def _images(
    spec: DataSpec, path: str, length_rule: sources.LengthRule | None = None
) -> Source:
    del length_rule  # a still image has one frame: for crop pairs
    source = images.ImageFolderSource(path)
    if len(source) <= spec.check_videos:
        source.check()
    return source


def _tfds(
    spec: DataSpec, path: str, length_rule: sources.LengthRule | None = None
) -> Source:
    del path, length_rule  # a TFDS dataset is named, not found (nor checked)
    split, data_dir = spec.tfds_split or "train", spec.tfds_data_dir or None
    if images.tfds_has_images(spec.tfds_name, data_dir):
        return images.TfdsImageSource(spec.tfds_name, data_dir, split)
    return sources.TfdsSource(spec.tfds_name, data_dir, split)


_OPENERS: dict[str, Callable[[DataSpec, str, sources.LengthRule | None], Source]] = {
    "video": _videos,
    "frames": _frames,
    "array_record": _array_record,
    "tfds": _tfds,
    "images": _images,
}
FORMATS = ("", *_OPENERS, "synthetic")  # "": inferred from data.path


def means_synthetic(spec: DataSpec) -> bool:
    """The one rule for the synthetic set: ``format="synthetic"``, or no
    format and either no path or a path that holds a synthetic set."""
    if spec.format:
        return spec.format == "synthetic"
    return not spec.path or (epath.Path(spec.path) / synthetic.MARKER).exists()


def synthetic_root(
    spec: DataSpec, workdir: str | epath.Path | None
) -> epath.Path | None:
    """Where the synthetic set ``spec`` means is (or is to be written):
    ``data.path``, or ``workdir/synthetic`` without one; None when ``spec``
    means other data.

    Raises:
      ValueError: the synthetic set is meant, with neither a path nor a workdir.
    """
    if not means_synthetic(spec):
        return None
    if spec.path:
        return epath.Path(spec.path)
    if workdir is None:
        raise ValueError("the synthetic set needs data.path (or a run's workdir)")
    return epath.Path(workdir) / "synthetic"


def _write_synthetic(spec: DataSpec, root: epath.Path) -> None:
    if (root / synthetic.MARKER).exists():
        return
    if root.exists() and any(root.iterdir()):
        raise ValueError(
            f"data.format=synthetic would write a synthetic set into {root}, "
            "which holds other files; leave data.format empty to use them"
        )
    logging.info("writing the synthetic video set to %s", root)
    synthetic.write_dataset(
        root,
        videos=spec.synthetic_videos,
        frames=spec.synthetic_frames,
        size=(spec.synthetic_size, spec.synthetic_size),
        seed=spec.synthetic_seed,
        progress=False,
    )


def open(
    spec: DataSpec,
    workdir: str | epath.Path | None = None,
    *,
    is_main: bool = True,
    barrier: Callable[[str], None] = lambda name: None,
    length_rule: sources.LengthRule | None = None,
) -> Source:
    """The video source ``spec`` names; the synthetic set is written on demand.

    With a ``workdir``, logs ``videos: N files, M usable, K skipped (see
    WORKDIR/skipped_videos.txt)`` and writes that file (every file under the
    data path not used, with why), also when no file is usable.

    Args:
      spec: the data to open.
      workdir: a run's folder (the listing; the default synthetic set), or None.
      is_main: this process writes the synthetic set and the listing.
      barrier: ``barrier(name)`` waits for every process (after the synthetic
        set is written).
      length_rule: what a video needs for the run (e.g.
        ``PairSampler.gap_range``: frames for the minimum gap), applied to
        every video file the start-up check opens, and every frame folder
        (both when there are at most ``data.check_videos``).

    Raises:
      ValueError: an unknown format, or a synthetic set meant to go into a
        folder that holds other files.
      sources.NoUsableVideo: no usable video (one line; the listing names
        every file with its reason).
      FileNotFoundError: the data path (or TFDS dataset) does not exist.
    """
    if spec.format not in FORMATS:
        raise ValueError(
            f"unknown data.format {spec.format!r}; expected one of "
            f"{', '.join(FORMATS[1:])} (or empty: inferred from data.path)"
        )
    root = synthetic_root(spec, workdir)
    if root is None:
        format = spec.format or sources.infer_format(spec.path)
        try:
            source = _OPENERS[format](spec, spec.path, length_rule)
        except sources.NoUsableVideo as e:
            if workdir is None:
                raise
            listing = epath.Path(workdir) / SKIPPED_VIDEOS
            _list_skipped(e.skipped, e.report, listing, is_main)
            raise sources.NoUsableVideo(
                f"{e} (every file with its reason: {listing})", e.skipped, e.report
            ) from None
    else:
        if is_main:
            _write_synthetic(spec, root)
        barrier("synthetic_data")
        source = _OPENERS["frames"](spec, str(root / "frames"), length_rule)
    if workdir is not None:
        listing = epath.Path(workdir) / SKIPPED_VIDEOS
        _list_skipped(source.skipped, source.report(), listing, is_main)
    return source


def _list_skipped(
    skipped: list[tuple[str, str]], report: str, listing: epath.Path, is_main: bool
) -> None:
    if is_main:
        lines = [f"{path}\t{reason}\n" for path, reason in skipped]
        listing.write_text(f"# {report}: path<TAB>reason\n" + "".join(lines))
    logging.info("%s (see %s)", report, listing)


def coverage_report(data: Mapping[str, Any]) -> epath.Path | None:
    """The ``coverage.json`` of a config's ``data`` section (a prepared folder
    or a TFDS dataset's folder), or None."""
    if data.get("format") == "tfds" and data.get("tfds_name"):
        import tensorflow_datasets as tfds  # noqa: PLC0415 (heavy; this route only)

        import siammae_jax.data.tfds  # noqa: F401, PLC0415 (registers the builders)

        name, data_dir = data["tfds_name"], data.get("tfds_data_dir") or None
        try:
            folder = epath.Path(tfds.builder(name, data_dir=data_dir).data_path)
        except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
            logging.warning("no coverage for tfds:%s (%s in %s): %s", name,
                            type(e).__name__, data_dir, e)  # fmt: skip
            return None
    elif data.get("path"):
        folder = epath.Path(data["path"])
    else:
        return None
    path = folder / coverage.COVERAGE
    return path if path.exists() else None


def snapshot_coverage(
    data: Mapping[str, Any], workdir: str | epath.Path
) -> epath.Path | None:
    """Copies the data's ``coverage.json`` into ``workdir`` as ``coverage.SNAPSHOT``
    when a run starts, so the weights' model card describes the data they were
    trained on even if the folder is prepared again later. A resumed run keeps
    the first copy (and warns when the data's report has changed since)."""
    found = coverage_report(data)
    if found is None:
        return None
    copy = epath.Path(workdir) / coverage.SNAPSHOT
    if not copy.exists():
        copy.write_bytes(found.read_bytes())
    elif copy.read_bytes() != found.read_bytes():
        logging.warning("%s changed since this run began; the model card keeps the "
                        "report of the start (%s)", found, copy)  # fmt: skip
    return copy
