"""Still images as training data (``data.format=images``; ``data.pairs=crops``).

* :class:`ImageFolderSource`: image files anywhere under a folder (an
  ImageNet-style ``train/<class>/*.JPEG`` tree, or any other). Files named
  ``.jpg``, ``.jpeg``, ``.png`` or ``.webp`` are taken as they are; video
  files and known text or data files are left out; any other file is probed,
  with Pillow and then PyAV (which reads formats Pillow does not, e.g. EXR),
  and used when it decodes to one picture. Every file left out is listed with
  its reason in ``source.skipped`` (unreadable ones are also logged).
* :class:`TfdsImageSource`: a prepared TFDS dataset with an ``image`` feature
  (``imagenet2012`` after its manual download, or any other), read with
  ``tfds.data_source`` without TensorFlow, images left encoded until read.

A record is one image, returned as a one-frame
:class:`~siammae_jax.data.video.Video`, so the pipeline draws crop pairs of it
as it does of a video frame. These sources have ``stills = True``: frame pairs
(``data.pairs=frames``) are refused, since an image has no second frame.
:func:`siammae_jax.data.spec.open` picks them for ``data.format=images`` and
for ``data.format=tfds`` when the dataset has an ``image`` feature and no
``frames``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import av
import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from siammae_jax.data import sources
from siammae_jax.data.video import DEFAULT_FPS, BadVideoError, JpegVideo, Video
from siammae_jax.data.video_file import (
    NOT_VIDEO_EXTENSIONS,
    VIDEO_EXTENSIONS,
    all_files,
)

# Taken without probing.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
# Left out without probing: videos, and text or data files (FFmpeg would read
# a .txt as ANSI art). Suffixes Pillow can read (.gif, .bmp, .tif) are probed.
_NOT_PROBED = tuple(
    s for s in NOT_VIDEO_EXTENSIONS if s not in Image.registered_extensions()
)
_PIL, _AV = "pil", "av"  # how an image is decoded


def decode(path: str, decoder: str = _PIL) -> np.ndarray:
    """uint8 RGB [H, W, 3] of one image file, with Pillow or PyAV.

    Raises:
      BadVideoError: the file cannot be read or decoded.
    """
    try:
        with epath.Path(path).open("rb") as f:
            data = f.read()
        if decoder == _PIL:
            with Image.open(io.BytesIO(data)) as image:
                return np.asarray(image.convert("RGB"))
        with av.open(io.BytesIO(data)) as container:
            for frame in container.decode(video=0):
                return frame.to_ndarray(format="rgb24")
        raise ValueError("no picture in the file")
    except Image.UnidentifiedImageError as e:
        raise BadVideoError(path, "cannot decode image: unknown format") from e
    except (OSError, ValueError, av.FFmpegError, Image.DecompressionBombError) as e:
        raise BadVideoError(path, f"cannot decode image: {_reason(e)}") from e


def _reason(error: Exception) -> str:
    """One line, without the path (FFmpeg's errors repeat it)."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def probe(path: str) -> tuple[str | None, str]:
    """How to decode ``path`` (``"pil"``, ``"av"``) and why not (None, reason).

    Pillow first; then PyAV, whose file must hold exactly one picture (a
    video is not an image).
    """
    try:
        decode(path, _PIL)
        return _PIL, ""
    except BadVideoError as e:
        pil_error = e.reason.removeprefix("cannot decode image: ")
    try:
        with epath.Path(path).open("rb") as f, av.open(f) as container:
            if not container.streams.video:
                raise ValueError("no picture stream")
            pictures = 0
            for _ in container.decode(video=0):
                pictures += 1
                if pictures > 1:
                    return None, "a video, not an image (data.format=video)"
        if pictures == 1:
            return _AV, ""
        av_error = "no picture in the file"
    except (OSError, ValueError, av.FFmpegError) as e:
        av_error = _reason(e)
    return None, f"not an image: Pillow: {pil_error}; PyAV: {av_error}"


class StillImage(Video):
    """One image file as a one-frame video (fps :data:`DEFAULT_FPS`).

    Args:
      path: the file.
      decoder: ``"pil"`` or ``"av"`` (see :func:`probe`).
    """

    def __init__(self, path: str, decoder: str = _PIL):
        self.path, self._decoder = str(path), decoder
        self.num_frames, self.fps = 1, DEFAULT_FPS

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """See :meth:`Video.read` (every index is 0); decodes the file once."""
        wanted = self._check_indices(indices)
        image = decode(self.path, self._decoder)
        return np.stack([image] * len(wanted))


def _classify(files: list[epath.Path]):
    """(paths, decoders, skipped) of the files under a folder, sorted by path."""
    paths, decoders, skipped = [], [], []
    for p in sorted(files, key=str):
        suffix = p.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            decoder, reason = _PIL, ""
        elif suffix in VIDEO_EXTENSIONS:
            decoder, reason = None, "a video file, not an image (data.format=video)"
        elif suffix in _NOT_PROBED:
            decoder, reason = None, f"not an image ({suffix})"
        else:
            decoder, reason = probe(str(p))
            if decoder is None:
                logging.warning("not using %s: %s", p, reason)
        if decoder is None:
            skipped.append((str(p), reason))
        else:
            paths.append(str(p))
            decoders.append(decoder)
    return paths, decoders, skipped


class ImageFolderSource(sources._Source):
    """Image files anywhere under a folder, in sorted path order.

    Args:
      path: the folder (local or ``gs://``), or one image file.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: no image under ``path``.
    """

    stills = True

    def __init__(self, path: str | epath.Path):
        root = sources._existing_dir(path)
        self._root = str(root)
        files = all_files(root)
        self.num_files = len(files)
        self._paths, self._decoders, self.skipped = _classify(files)
        self._raise_if_empty()

    def _raise_if_empty(self) -> None:
        if not self._paths:
            listed = "".join(f"\n  {p}: {r}" for p, r in self.skipped[:20])
            raise ValueError(
                f"no image ({', '.join(IMAGE_EXTENSIONS)}, or another file that "
                f"Pillow or PyAV decodes) under {self._root}{listed}"
            )

    def check(self) -> None:
        """Decodes every image (in threads) and leaves out the unreadable ones.

        Raises:
          ValueError: none is readable.
        """
        decoders = dict(zip(self._paths, self._decoders, strict=True))
        bad = sources._check_videos(
            self._paths, lambda p: StillImage(p, decoders[p]).read([0])
        )
        keep = [i for i, p in enumerate(self._paths) if p not in bad]
        self._paths = [self._paths[i] for i in keep]
        self._decoders = [self._decoders[i] for i in keep]
        self.skipped = sorted(self.skipped + list(bad.items()))
        self._raise_if_empty()

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> Video:
        """The ``index``-th image (decoded on read)."""
        return StillImage(self._paths[index], self._decoders[index])

    @property
    def paths(self) -> list[str]:
        """The image files, in index order."""
        return list(self._paths)

    def __repr__(self) -> str:
        return f"ImageFolderSource(path={self._root!r}, images={len(self)})"

    def report(self) -> str:
        """``images: N files, M usable, K skipped`` (one line)."""
        return (
            f"images: {self.num_files} files, {len(self)} usable, "
            f"{len(self.skipped)} skipped"
        )


class TfdsImageSource(sources.TfdsSource):
    """A prepared TFDS dataset of images, read with ``tfds.data_source``.

    Each example's ``feature`` (an encoded image) stays encoded until read;
    its ``file_name``, when it has one (``imagenet2012`` does), names it in
    logs.

    Args:
      name: the dataset, ``NAME[/CONFIG][:VERSION]`` (e.g. ``imagenet2012``).
      data_dir: the TFDS data directory it was built into (None: TFDS's).
      split: the split to read.
      feature: the image feature.

    Raises:
      FileNotFoundError: the dataset is not prepared in ``data_dir``.
      ValueError: the split is empty.
    """

    stills = True
    noun = "images"

    def __init__(
        self,
        name: str,
        data_dir: str | None = None,
        split: str = "train",
        feature: str = "image",
    ):
        self.feature = feature
        super().__init__(name, data_dir, split)

    def _encoded(self, example) -> list:
        return [bytes(example[self.feature])]

    def _video(self, example, encoded: list, where: str) -> Video:
        name = sources._text(example.get("file_name", b""))
        return JpegVideo(encoded, DEFAULT_FPS, f"{where} ({name})" if name else where)

    def __repr__(self) -> str:
        return f"TfdsImageSource(path={self._root!r}, images={len(self)})"


def tfds_has_images(name: str, data_dir: str | None, feature: str = "image") -> bool:
    """Whether TFDS dataset ``name`` holds images: an ``image`` feature and no
    ``frames`` (a video dataset's). False for a name TFDS does not know (the
    video source then says so)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415 (heavy; only this route)

    import siammae_jax.data.tfds  # noqa: F401, PLC0415 (registers the builders)

    try:
        features = tfds.builder(name, data_dir=data_dir).info.features
    except (tfds.core.registered.DatasetNotFoundError, ValueError):
        return False  # not an error here: sources.open_tfds raises the clear one
    keys = set(features.keys())
    return feature in keys and "frames" not in keys
