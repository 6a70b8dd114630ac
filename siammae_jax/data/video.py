"""Videos with random frame access: the interface, frame folders, packed records.

Every data source returns a :class:`Video`; ``video.read(indices)`` gives
uint8 RGB frames ``[len(indices), H, W, 3]``. Three kinds:

* :class:`~siammae_jax.data.video_file.VideoFile`: a container file decoded
  with PyAV, with a per-file frame index (see :mod:`siammae_jax.data.video_file`).
* :class:`FrameFolder`: a folder of images, one per frame, decoded with Pillow.
* :class:`PackedVideo`: one array_record record written by
  :mod:`siammae_jax.data.prepare` (JPEG frames + metadata, msgpack);
  :class:`JpegVideo`, its base, holds any encoded frames (a TFDS example's).

Any failure to open, probe or read raises :class:`BadVideoError`; a wrong or
stale frame is never returned in place of a requested one.
"""

from __future__ import annotations

import abc
import io
import json
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import av
import msgpack
import numpy as np
from etils import epath
from PIL import Image

DEFAULT_FPS = 30.0
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Name of the optional metadata file of a frame folder: {"fps": 25.0}.
FRAME_FOLDER_META = "meta.json"
# Version tag of the record format written by prepare.
RECORD_FORMAT = "siammae_jax.packed_video.v1"


class BadVideoError(ValueError):
    """A video that cannot be used: corrupt, truncated, empty, unreadable.

    Attributes:
      path: the video's path.
      reason: why it cannot be used, one line.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


class Video(abc.ABC):
    """A video with random access to its frames.

    Attributes:
      path: where the video lives (for logs and skip reports).
      num_frames: frames that can be read: ``read(range(num_frames))`` works.
      fps: frames per second of the original video.
    """

    path: str
    num_frames: int
    fps: float

    @abc.abstractmethod
    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 RGB frames ``[len(indices), H, W, 3]`` at 0-based indices.

        Indices may come in any order and repeat.

        Raises:
          IndexError: an index outside ``[0, num_frames)``.
          BadVideoError: a wanted frame cannot be decoded.
        """

    def _check_indices(self, indices: Sequence[int]) -> list[int]:
        out = [int(i) for i in indices]
        for i in out:
            if not 0 <= i < self.num_frames:
                raise IndexError(
                    f"{self.path}: frame {i} out of range [0, {self.num_frames})"
                )
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self.path!r}, "
            f"num_frames={self.num_frames}, fps={self.fps:g})"
        )


def _stack(path: str, frames: list[np.ndarray]) -> np.ndarray:
    """Stacks frames, or raises BadVideoError when their shapes differ."""
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise BadVideoError(path, f"frames of different sizes: {sorted(shapes)}")
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.stack(frames)


def _reason(error: Exception) -> str:
    """A one-line reason without the path (FFmpeg errors repeat it)."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _is_local(path: epath.Path) -> bool:
    return "://" not in str(path)


# --------------------------------------------------------------------------
# Frame folders (Pillow)


def natural_key(name: str) -> tuple:
    """Sort key that orders ``frame2.jpg`` before ``frame10.jpg``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _decode_image(path: str, data: bytes | None = None) -> np.ndarray:
    """Decodes one image file (or its bytes) to uint8 RGB, else BadVideoError."""
    try:
        if data is None:
            data = epath.Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadVideoError(path, f"cannot decode image: {e}") from e


class FrameFolder(Video):
    """A folder of frame images (``*.jpg``, ``*.jpeg``, ``*.png``).

    Frames are the images in natural name order (``2.jpg`` before ``10.jpg``).
    The frame rate is :data:`DEFAULT_FPS` unless given, or unless the folder
    holds a ``meta.json`` with an ``"fps"`` entry.

    Args:
      path: the folder.
      frames: the frame file names in order; listed from the folder if None.
      fps: frames per second; from ``meta.json`` or the default if None.

    Raises:
      BadVideoError: the folder cannot be listed or has no images.
    """

    def __init__(
        self,
        path: str | epath.Path,
        frames: Sequence[str] | None = None,
        fps: float | None = None,
    ):
        self.path = str(path)
        folder = epath.Path(path)
        try:
            if frames is None:
                frames = list_frames(folder)
            if fps is None:
                fps = read_fps(folder)
        except OSError as e:
            raise BadVideoError(self.path, f"cannot list frames: {e}") from e
        if not frames:
            raise BadVideoError(self.path, "no frame images")
        self._frames = list(frames)
        self.num_frames = len(self._frames)
        self.fps = float(fps)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """See :meth:`Video.read`; decodes each distinct wanted image once."""
        wanted = self._check_indices(indices)
        decoded = {
            i: _decode_image(f"{self.path}/{self._frames[i]}") for i in set(wanted)
        }
        return _stack(self.path, [decoded[i] for i in wanted])


def list_frames(folder: epath.Path) -> list[str]:
    """Names of the frame images in ``folder``, in natural order."""
    names = [
        p.name
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]
    return sorted(names, key=natural_key)


def read_fps(folder: epath.Path) -> float:
    """The ``fps`` of ``folder/meta.json`` if there is one, else the default."""
    meta = folder / FRAME_FOLDER_META
    if not meta.exists():
        return DEFAULT_FPS
    try:
        return float(json.loads(meta.read_text())["fps"])
    except (ValueError, KeyError, TypeError) as e:
        raise BadVideoError(str(folder), f"bad {FRAME_FOLDER_META}: {e}") from e


# --------------------------------------------------------------------------
# Packed records (array_record + msgpack)


def encode_record(frames: Sequence[bytes], meta: dict[str, Any]) -> bytes:
    """Serialises one packed video: JPEG frames plus metadata, with msgpack.

    The record is a msgpack map (keys in this order): ``format``
    (:data:`RECORD_FORMAT`), then ``meta`` entries (``source``, ``fps``,
    ``height``, ``width``, ``orig_height``, ``orig_width``), ``num_frames``
    and ``frames`` (a list of JPEG byte strings).
    """
    record = {"format": RECORD_FORMAT, **meta}
    record["num_frames"] = len(frames)
    record["frames"] = list(frames)
    return msgpack.packb(record, use_bin_type=True)


class JpegVideo(Video):
    """A video held as encoded frames in memory (JPEG or PNG bytes).

    Args:
      frames: the encoded frames, in order.
      fps: frames per second.
      path: a name for logs.

    Raises:
      BadVideoError: no frames.
    """

    def __init__(self, frames: Sequence[bytes], fps: float, path: str):
        self._encoded = frames
        self.path = path
        self.num_frames = len(frames)
        self.fps = float(fps)
        if not self.num_frames:
            raise BadVideoError(self.path, "no frames")

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """See :meth:`Video.read`; decodes only the wanted frames."""
        wanted = self._check_indices(indices)
        decoded = {
            i: _decode_image(f"{self.path}#frame{i}", self._encoded[i])
            for i in set(wanted)
        }
        return _stack(self.path, [decoded[i] for i in wanted])


class PackedVideo(JpegVideo):
    """A video packed by :mod:`siammae_jax.data.prepare` (one record).

    Args:
      record: the serialised record (see :func:`encode_record`).
      path: a name for logs; the record's ``source`` if None.

    Raises:
      BadVideoError: the record cannot be parsed or has no frames.
    """

    def __init__(self, record: bytes, path: str | None = None):
        try:
            data = msgpack.unpackb(record, raw=False)
            if data.get("format") != RECORD_FORMAT:
                raise ValueError(f"format {data.get('format')!r} != {RECORD_FORMAT}")
            jpegs = data.pop("frames")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadVideoError(path or "<record>", f"bad record: {e}") from e
        self.meta = data
        path = path or str(data.get("source", "<record>"))
        super().__init__(jpegs, data.get("fps", DEFAULT_FPS), path)


def write_mp4(
    path: str | epath.Path,
    frames: np.ndarray,
    fps: float = DEFAULT_FPS,
    gop: int = 12,
    crf: int = 15,
) -> None:
    """Writes uint8 RGB frames [T, H, W, 3] (even H and W) as H.264 mp4 (PyAV).

    yuv420p, a keyframe every ``gop`` frames (short GOPs make seeking cheap).
    """
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator())
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {
            "crf": str(crf),
            "x264-params": f"keyint={gop}:min-keyint={gop}",
        }
        for frame in frames:
            container.mux(
                stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24"))
            )
        container.mux(stream.encode())
