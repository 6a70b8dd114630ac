"""Grain random-access data sources over videos: one record is one video.

* :class:`VideoFolderSource`: video files anywhere under a folder (found by
  suffix, or by probing files with other suffixes), decoded with PyAV on read.
* :class:`FrameFolderSource`: folders of frame images (``<video>/<frame>.jpg``,
  the DAVIS / Kinetics-dump layout), decoded with Pillow on read.
* :class:`ArrayRecordSource`: ``*.array_record`` shards written by
  :mod:`siammae_jax.data.prepare` (JPEG frames, msgpack), read with grain's
  ``ArrayRecordDataSource``.
* :class:`TfdsSource`: a prepared TFDS dataset of videos (the package's
  ``video_folder`` builder, or any with a ``frames`` sequence of images), read
  with ``tfds.data_source`` without TensorFlow, frames left encoded.

:func:`siammae_jax.data.spec.open` picks the source of a ``data.format``.
Construction lists the files once (sorted, so indices are stable) and fails
with ``FileNotFoundError`` for a missing path or ``ValueError`` when no video
is found. Every file under the root is either used or listed with its reason
in ``source.skipped``; ``source.report()`` says it in one line. ``source[i]``
returns a :class:`~siammae_jax.data.video.Video` and may
raise :class:`~siammae_jax.data.video.BadVideoError`. Sources hold only paths,
so they pickle cheaply into grain's worker processes.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable

import grain
from etils import epath
from tqdm import tqdm

from siammae_jax.data.video import (
    DEFAULT_FPS,
    FRAME_FOLDER_META,
    IMAGE_EXTENSIONS,
    BadVideoError,
    FrameFolder,
    JpegVideo,
    PackedVideo,
    Video,
    natural_key,
    read_fps,
)
from siammae_jax.data.video_file import (
    VIDEO_EXTENSIONS,
    VideoFile,
    all_files,
    find_videos,
)

ARRAY_RECORD_SUFFIX = ".array_record"


def _existing_dir(path: str | epath.Path) -> epath.Path:
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset path does not exist: {path}")
    return path


def _visible_files(
    root: epath.Path, suffixes: tuple[str, ...], files: list[epath.Path] | None = None
) -> list[epath.Path]:
    """Files under ``root`` (recursively) with one of ``suffixes``, sorted."""
    files = all_files(root) if files is None else files
    return sorted(
        (p for p in files if p.suffix.lower() in suffixes),
        key=str,
    )


class _Source:
    """Common parts: a root path, a count, the skipped files, a repr.

    Attributes:
      num_files: files found under the root.
      skipped: ``(path, reason)`` of every file under the root that is not used.
    """

    _root: str
    num_files: int = 0
    skipped: list[tuple[str, str]]

    def __len__(self) -> int:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self._root!r}, videos={len(self)})"

    def report(self) -> str:
        """``videos: N files, M usable, K skipped`` (one line)."""
        return (
            f"videos: {self.num_files} files, {len(self)} usable, "
            f"{len(self.skipped)} skipped"
        )

    def _refuse(self, what: str) -> None:
        """Raises NoUsableVideo: the count and one skipped video's reason."""
        videos = [s for s in self.skipped if not s[1].startswith("not a ")]
        example = "".join(f"; e.g. {p}: {r}" for p, r in (videos or self.skipped)[:1])
        raise NoUsableVideo(
            f"no usable {what} under {self._root} ({self.report()}){example}",
            self.skipped,
            self.report(),
        )


# Called with a video's frame count and rate; the ValueError it raises says why
# the run cannot use the video (e.g. ``PairSampler.gap_range``: too short).
LengthRule = Callable[[int, float], object]


class NoUsableVideo(ValueError):
    """No file under a dataset path is a usable video (a one-line message).

    Attributes:
      skipped: ``(path, reason)`` of every file under the path.
      report: the source's one-line count (``videos: N files, 0 usable, ...``).
    """

    def __init__(self, message: str, skipped: list[tuple[str, str]], report: str):
        super().__init__(message)
        self.skipped, self.report = skipped, report

    def __reduce__(self):
        return (type(self), (str(self), self.skipped, self.report))


def _check_videos(
    paths: list[str],
    open_video: Callable[[str], Video],
    workers: int = 8,
    *,
    length_rule: LengthRule | None = None,
) -> dict[str, str]:
    """``{path: reason}`` of the videos that cannot be opened (threads), or
    that ``length_rule`` refuses."""

    def check(path: str) -> str | None:
        try:
            video = open_video(path)
        except BadVideoError as e:
            return e.reason
        try:
            if length_rule is not None:
                length_rule(video.num_frames, video.fps)
        except ValueError as e:
            return str(e)
        return None

    bad = {}
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = pool.map(check, paths)
        bar = tqdm(results, total=len(paths), desc="checking videos", unit="video",
                   disable=len(paths) < 100, mininterval=5)  # fmt: skip
        for path, reason in zip(paths, bar, strict=True):
            if reason is not None:
                bad[path] = reason
    return bad


class VideoFolderSource(_Source):
    """Video files anywhere under a folder, in sorted path order.

    Args:
      path: the folder (local or ``gs://``), or one video file.
      check: open every video now (building its frame index, in threads) and
        leave out those that cannot be opened, listing them in ``skipped``;
        otherwise a bad video is found when read. (:meth:`check` can also
        leave out the videos too short for a run.)
      index_dir: a folder for frame-index sidecar files (None: memory only).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      NoUsableVideo: no (usable) video file under ``path``.
    """

    def __init__(
        self,
        path: str | epath.Path,
        check: bool = False,
        index_dir: str | None = None,
    ):
        root = _existing_dir(path)
        self._root = str(root)
        self._index_dir = index_dir or None
        files = all_files(root)
        self.num_files = len(files)
        self._paths, self.skipped = find_videos(root, files)
        if check:
            self.check()
        self._raise_if_empty()

    def check(self, length_rule: LengthRule | None = None) -> None:
        """Opens every video (in threads) and leaves out the unreadable ones
        and those ``length_rule`` refuses (e.g. too short for the minimum gap).

        Raises:
          NoUsableVideo: none is usable.
        """
        bad = _check_videos(self._paths, self._open, length_rule=length_rule)
        self._paths = [p for p in self._paths if p not in bad]
        self.skipped = sorted(self.skipped + list(bad.items()))
        self._raise_if_empty()

    def _raise_if_empty(self) -> None:
        if not self._paths:
            self._refuse("video file")

    def _open(self, path: str) -> VideoFile:
        return VideoFile(path, index_dir=self._index_dir)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> Video:
        """The ``index``-th video (probed; BadVideoError if unreadable)."""
        return self._open(self._paths[index])

    @property
    def paths(self) -> list[str]:
        """The video files, in index order."""
        return list(self._paths)


class FrameFolderSource(_Source):
    """Folders of frame images under a root, one video per leaf folder.

    Every folder that directly holds ``*.jpg``/``*.jpeg``/``*.png`` files is a
    video; its frames are those files in natural name order. An optional
    ``meta.json`` (``{"fps": 25}``) in the folder sets its frame rate
    (30 otherwise).

    Args:
      path: the root folder (local or ``gs://``).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: no frame images under ``path``.
    """

    def __init__(self, path: str | epath.Path):
        root = _existing_dir(path)
        self._root = str(root)
        files = all_files(root)
        self.num_files = len(files)
        folders: dict[str, list[str]] = collections.defaultdict(list)
        for p in _visible_files(root, IMAGE_EXTENSIONS, files):
            folders[str(p.parent)].append(p.name)
        self.skipped = sorted(
            (str(p), f"not a frame image ({p.suffix.lower() or 'no suffix'})")
            for p in files
            if p.suffix.lower() not in IMAGE_EXTENSIONS and p.name != FRAME_FOLDER_META
        )
        if not folders:
            raise ValueError(
                f"no frame images ({', '.join(IMAGE_EXTENSIONS)}) under {root}"
            )
        self._folders = sorted(folders)
        self._frames = [sorted(folders[f], key=natural_key) for f in self._folders]
        metas = {str(p.parent) for p in files if p.name == FRAME_FOLDER_META}
        self._has_meta = [f in metas for f in self._folders]

    def check(self, length_rule: LengthRule | None = None) -> None:
        """Leaves out the folders ``length_rule`` refuses (e.g. fewer frames
        than the minimum gap), or whose ``meta.json`` is bad; decodes nothing.

        Raises:
          NoUsableVideo: none is left.
        """
        if length_rule is None:
            return
        bad = {}
        for folder, frames, meta in zip(*self._columns(), strict=True):
            try:
                fps = read_fps(epath.Path(folder)) if meta else DEFAULT_FPS
                length_rule(len(frames), fps)
            except BadVideoError as e:
                bad[folder] = e.reason
            except ValueError as e:
                bad[folder] = str(e)
        keep = [i for i, f in enumerate(self._folders) if f not in bad]
        self._folders, self._frames, self._has_meta = (
            [column[i] for i in keep] for column in self._columns()
        )
        self.skipped = sorted(self.skipped + list(bad.items()))
        if not self._folders:
            self._refuse("frame folder")

    def _columns(self) -> tuple[list, list, list]:
        return self._folders, self._frames, self._has_meta

    def __len__(self) -> int:
        return len(self._folders)

    def __getitem__(self, index: int) -> Video:
        """The ``index``-th frame folder (no image is decoded here)."""
        # fps=None makes FrameFolder read meta.json; skip that stat otherwise.
        fps = None if self._has_meta[index] else DEFAULT_FPS
        return FrameFolder(self._folders[index], frames=self._frames[index], fps=fps)

    @property
    def paths(self) -> list[str]:
        """The frame folders, in index order."""
        return list(self._folders)


class ArrayRecordSource(_Source):
    """``*.array_record`` shards written by :mod:`siammae_jax.data.prepare`.

    Args:
      path: a folder of shards (searched recursively) or one shard file.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: no shard, or only empty shards, under ``path``.
    """

    def __init__(self, path: str | epath.Path):
        root = _existing_dir(path)
        self._root = str(root)
        self._shards = [str(p) for p in _visible_files(root, (ARRAY_RECORD_SUFFIX,))]
        self.num_files, self.skipped = len(self._shards), []
        if not self._shards:
            raise ValueError(f"no *{ARRAY_RECORD_SUFFIX} shards under {root}")
        self._records = grain.sources.ArrayRecordDataSource(self._shards)
        if not len(self._records):
            raise ValueError(f"the shards under {root} hold no videos")

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Video:
        """The ``index``-th packed video (its JPEGs are decoded on read)."""
        return PackedVideo(self._records[index])

    def __repr__(self) -> str:
        return (
            f"ArrayRecordSource(path={self._root!r}, shards={len(self._shards)}, "
            f"videos={len(self)})"
        )

    def report(self) -> str:
        """``videos: N packed videos in S shards`` (one line)."""
        return f"videos: {len(self)} packed videos in {len(self._shards)} shards"


class TfdsSource(_Source):
    """A prepared TFDS video dataset, read with ``tfds.data_source``.

    Each example needs a ``frames`` feature (a sequence of encoded images),
    which stays encoded until :meth:`~siammae_jax.data.video.Video.read`
    decodes the wanted frames, and may carry ``fps`` (30 otherwise) and
    ``source`` (its name in logs). The package's builders are registered
    first, so ``video_folder`` needs no import flag.

    Args:
      name: the dataset, ``NAME[/CONFIG][:VERSION]`` (``video_folder``).
      data_dir: the TFDS data directory it was built into (None: TFDS's).
      split: the split to read.

    Raises:
      FileNotFoundError: the dataset is not prepared in ``data_dir``.
      ValueError: the split is empty or has no ``frames`` feature.
    """

    feature = "frames"  # the feature left encoded until read
    noun = "videos"

    def __init__(self, name: str, data_dir: str | None = None, split: str = "train"):
        self.name, self.data_dir, self.split = name, data_dir, split
        self._root = f"tfds:{name}[{split}]" + (f" in {data_dir}" if data_dir else "")
        self.skipped = []
        self._records = None
        records = self._open()
        self.num_files = len(records)
        if not self.num_files:
            raise ValueError(f"{self._root} holds no {self.noun}")

    def _open(self):
        if self._records is None:
            encoded = {self.feature: True}
            self._records = open_tfds(self.name, self.split, self.data_dir, encoded)
        return self._records

    def __getstate__(self) -> dict:  # workers reopen the files
        return {**self.__dict__, "_records": None}

    def __len__(self) -> int:
        return self.num_files

    def __getitem__(self, index: int) -> Video:
        """The ``index``-th example (its frames are decoded on read)."""
        where = f"{self._root}#{index}"
        try:
            example = self._open()[index]
            encoded = self._encoded(example)
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise BadVideoError(where, f"bad example: {type(e).__name__}: {e}") from e
        return self._video(example, encoded, where)

    def _encoded(self, example) -> list:
        """The example's encoded frames."""
        return list(example[self.feature])

    def _video(self, example, encoded: list, where: str) -> Video:
        source = _text(example.get("source", b""))
        return JpegVideo(encoded, example.get("fps", DEFAULT_FPS), source or where)

    def report(self) -> str:
        """``videos: N examples of tfds:NAME[SPLIT]`` (one line)."""
        return f"{self.noun}: {len(self)} examples of {self._root}"


def _text(value) -> str:
    """A TFDS text feature as ``str`` (NumPy reads give bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def open_tfds(name: str, split: str, data_dir: str | None, encoded: dict | None = None):
    """``tfds.data_source`` over a prepared dataset, some images left encoded.

    Never downloads or prepares (a missing dataset is an error here, not a
    multi-hour job in a training process).

    Args:
      name: ``NAME[/CONFIG][:VERSION]``.
      split: the split.
      data_dir: where it was built (None: TFDS's default).
      encoded: the features to leave as their encoded bytes, a tree of
        ``True`` leaves (default ``{"frames": True}``); the rest is decoded.

    Raises:
      FileNotFoundError: the dataset is not prepared in ``data_dir``.
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415 (heavy; only this route)

    import siammae_jax.data.tfds  # noqa: F401, PLC0415 (registers the builders)

    class Encoded(tfds.decode.SkipDecoding):
        """SkipDecoding that also works with ``data_source`` (numpy) reads."""

        def decode_batch_example_np(self, serialized):
            return serialized

    def leaves(tree):
        return {
            k: leaves(v) if isinstance(v, dict) else Encoded() for k, v in tree.items()
        }

    keep = leaves({"frames": True} if encoded is None else encoded)
    where = data_dir or "the default data_dir"
    missing = (
        f"TFDS dataset {name!r} is not prepared in {where}: build it first "
        f"(tfds build {name.split('/')[0]} --imports siammae_jax.data.tfds "
        "--manual_dir DIR --data_dir DIR --file_format array_record)"
    )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        first = str(e).split("\n")[0]
        raise FileNotFoundError(f"no TFDS dataset {name!r}: {first}") from e
    except ValueError as e:  # a custom config (e.g. video_folder/s32) not built
        raise FileNotFoundError(f"{missing}: {str(e).split(':')[0]}") from e
    if not builder.is_prepared():
        raise FileNotFoundError(missing)
    return builder.as_data_source(split=split, decoders=keep)


def infer_format(path: str | epath.Path) -> str:
    """Which kind of files the dataset at ``path`` holds (its ``data.format``).

    ``array_record`` if it holds ``*.array_record`` shards, else ``video`` if
    it holds video files, else ``frames`` if it holds images, else ``video``
    if a file with another suffix probes as a video.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: none of those files under ``path``.
    """
    root = _existing_dir(path)
    files = all_files(root)
    suffixes = {p.suffix.lower() for p in files}
    if ARRAY_RECORD_SUFFIX in suffixes:
        return "array_record"
    if suffixes & set(VIDEO_EXTENSIONS):
        return "video"
    if suffixes & set(IMAGE_EXTENSIONS):
        return "frames"
    if find_videos(root, files)[0]:
        return "video"
    raise ValueError(
        f"no videos found under {root}: expected *{ARRAY_RECORD_SUFFIX} shards, "
        f"video files ({', '.join(VIDEO_EXTENSIONS)}) or frame folders "
        f"({', '.join(IMAGE_EXTENSIONS)})"
    )
