"""Videos with random frame access: video files, frame folders, packed records.

Every data source returns a :class:`Video`; ``video.read(indices)`` gives
uint8 RGB frames ``[len(indices), H, W, 3]``. Three implementations:

* :class:`VideoFile`: a container file decoded with PyAV. Construction probes
  the frame count and rate from the header (or by demuxing packets when the
  header has no count), so a file that cannot be opened raises at
  construction (that is, at ``source[i]``). ``read`` seeks to the keyframe
  before each wanted frame and decodes forward only to it; a file whose frames
  cannot all be decoded (truncated, corrupt data) raises at ``read``.
* :class:`FrameFolder`: a folder of images, one per frame, decoded with Pillow.
* :class:`PackedVideo`: one array_record record written by
  :mod:`siammae_jax.data.prepare` (JPEG frames + metadata, msgpack).

Any failure to open, probe or read raises :class:`BadVideoError`; a wrong or
stale frame is never returned in place of a requested one.
"""

from __future__ import annotations

import abc
import contextlib
import io
import json
import re
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any

import av
import msgpack
import numpy as np
from etils import epath
from PIL import Image

DEFAULT_FPS = 30.0
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")
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
# Video files (PyAV)


class VideoFile(Video):
    """A video container file (mp4, avi, webm, mkv, ...) read with PyAV.

    Frame ``i`` is the frame whose timestamp is
    ``start_time + i / fps`` (in seconds); ``fps`` is the stream's average
    rate. Local files are opened by name, others (``gs://``) through
    ``epath.Path.open``.

    Args:
      path: the file.

    Raises:
      BadVideoError: the file cannot be opened, has no video stream, no frame
        rate or no frames.
    """

    def __init__(self, path: str | epath.Path):
        self.path = str(path)
        self.frames_decoded = 0
        try:
            with self._open() as container:
                self._probe(container)
        except BadVideoError:
            raise
        except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
            raise BadVideoError(self.path, f"cannot open: {_reason(e)}") from e

    @contextlib.contextmanager
    def _open(self) -> Iterator[av.container.InputContainer]:
        """The open container (local files by name, others as file objects)."""
        path = epath.Path(self.path)
        if _is_local(path):
            with av.open(self.path, "r") as container:
                yield container
        else:
            with path.open("rb") as f, av.open(f, "r") as container:
                yield container

    def _probe(self, container: av.container.InputContainer) -> None:
        if not container.streams.video:
            raise BadVideoError(self.path, "no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or rate <= 0:
            raise BadVideoError(self.path, "unknown frame rate")
        self._rate = Fraction(rate)
        self._time_base = Fraction(stream.time_base)
        self._start = stream.start_time or 0
        self.fps = float(rate)
        num_frames = stream.frames
        if num_frames <= 0:  # No count in the header: count packets.
            num_frames = sum(1 for p in container.demux(stream) if p.size)
        if num_frames <= 0:
            raise BadVideoError(self.path, "no frames")
        self.num_frames = int(num_frames)

    def _pts(self, index: int) -> int:
        """Timestamp (stream time base) of frame ``index``."""
        return self._start + int(index / self._rate / self._time_base)

    def _index(self, pts: int) -> int:
        """Frame index of timestamp ``pts`` (nearest frame)."""
        return round((pts - self._start) * self._time_base * self._rate)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """See :meth:`Video.read`; decodes only the GOPs holding the frames."""
        wanted = self._check_indices(indices)
        self.frames_decoded = 0  # Decoded by this read (for tests, profiling).
        try:
            with self._open() as container:
                frames = self._decode(container, sorted(set(wanted)))
        except BadVideoError:
            raise
        except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
            raise BadVideoError(self.path, f"decoding failed: {_reason(e)}") from e
        return _stack(self.path, [frames[i] for i in wanted])

    def _decode(
        self, container: av.container.InputContainer, targets: list[int]
    ) -> dict[int, np.ndarray]:
        """Decodes ``targets`` (sorted, unique), seeking about once per GOP."""
        stream = container.streams.video[0]
        out: dict[int, np.ndarray] = {}
        seek_pts: int | None = self._pts(targets[0])
        for _ in range(3 * len(targets) + 8):  # Each pass makes progress.
            seek_pts = self._decode_from(container, stream, seek_pts, targets, out)
            if seek_pts is None:
                return out
        missing = [t for t in targets if t not in out]
        raise BadVideoError(self.path, f"seeking does not reach frame {missing[0]}")

    def _decode_from(self, container, stream, seek_pts, targets, out) -> int | None:
        """Seeks to the keyframe at or before ``seek_pts`` and decodes forward.

        Stores wanted frames in ``out``. Returns None when all are there, else
        the timestamp to seek to next: the next wanted frame once a keyframe at
        or before it is reached, or an earlier timestamp when the seek landed
        past the first wanted frame.

        Raises:
          BadVideoError: the stream ends before a wanted frame, or has no frame
            at a wanted frame's timestamp.
        """
        container.seek(max(seek_pts, self._start), backward=True, stream=stream)
        pending = [t for t in targets if t not in out]
        landed = None  # Timestamp of the first packet after the seek.
        passed = False  # Decoded a frame before pending[0] since the seek.
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                next_pts = self._pts(pending[0])
                if landed is None:
                    landed = packet.pts
                elif packet.is_keyframe and packet.pts <= next_pts != seek_pts:
                    return next_pts  # A later GOP holds the next frame: jump.
            for frame in packet.decode():
                self.frames_decoded += 1
                index = None if frame.pts is None else self._index(frame.pts)
                if index is None or index < pending[0]:
                    passed = passed or index is not None
                    continue
                if index > pending[0]:
                    if passed or seek_pts <= self._start:
                        raise BadVideoError(
                            self.path,
                            f"no frame has the timestamp of frame {pending[0]}",
                        )
                    return min(seek_pts, landed if landed is not None else seek_pts) - 1
                out[index] = frame.to_ndarray(format="rgb24")
                pending.pop(0)
                passed = True
                if not pending:
                    return None
        raise BadVideoError(
            self.path,
            f"stream ended before frame {pending[0]} "
            f"(header says {self.num_frames} frames)",
        )

    def iter_frames(self) -> Iterator[np.ndarray]:
        """Decodes every frame once, in order (uint8 RGB ``[H, W, 3]``).

        Raises:
          BadVideoError: decoding fails or yields no frame.
        """
        count = 0
        try:
            with self._open() as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    count += 1
                    yield frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
            raise BadVideoError(self.path, f"decoding failed: {_reason(e)}") from e
        if count == 0:
            raise BadVideoError(self.path, "no frame could be decoded")


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


class PackedVideo(Video):
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
            self._jpegs = data.pop("frames")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadVideoError(path or "<record>", f"bad record: {e}") from e
        self.meta = data
        self.path = path or str(data.get("source", "<record>"))
        self.num_frames = len(self._jpegs)
        self.fps = float(data.get("fps", DEFAULT_FPS))
        if not self.num_frames:
            raise BadVideoError(self.path, "no frames")

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """See :meth:`Video.read`; decodes only the wanted JPEGs."""
        wanted = self._check_indices(indices)
        decoded = {
            i: _decode_image(f"{self.path}#frame{i}", self._jpegs[i])
            for i in set(wanted)
        }
        return _stack(self.path, [decoded[i] for i in wanted])


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
