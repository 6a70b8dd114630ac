"""One video, decoded once in order, as resized JPEG frames.

What both stores of prepared videos hold: the array_record shards of
:mod:`siammae_jax.data.prepare` and the ``video_folder`` TFDS builder
(:mod:`siammae_jax.data.tfds.video_folder`) encode every video with
:func:`encode_video`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

from siammae_jax.data.video import BadVideoError, FrameFolder
from siammae_jax.data.video_file import VideoFile


def _resize(frame: np.ndarray, short_side: int | None) -> Image.Image:
    image = Image.fromarray(frame)
    if not short_side:
        return image
    w, h = image.size
    scale = short_side / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def _frames(path: str, kind: str) -> tuple[Iterator[np.ndarray], dict[str, Any]]:
    """Frames of one input video, decoded in order, and its ``fps`` (and for
    a video file, ``stream``: the index of the video stream read)."""
    if kind == "video":
        video = VideoFile(path)
        return video.iter_frames(), {"fps": video.fps, "stream": video.index.stream}
    folder = FrameFolder(path)
    frames = (folder.read([i])[0] for i in range(folder.num_frames))
    return frames, {"fps": folder.fps}


def encode_video(
    path: str, kind: str, short_side: int | None, quality: int
) -> tuple[list[bytes], dict[str, Any]]:
    """Decodes one video in order, resizes and JPEG-encodes its frames.

    Args:
      path: the video file or frame folder.
      kind: ``"video"`` or ``"frames"``.
      short_side: the short side of the stored frames (None: keep the size).
      quality: JPEG quality.

    Returns:
      The JPEG frames and ``fps``, ``height``, ``width``, ``orig_height``,
      ``orig_width`` (and for a video file ``stream``, the index of the
      video stream read: FFmpeg's best, see
      :func:`~siammae_jax.data.video_file.best_stream`).

    Raises:
      BadVideoError: the video cannot be used (also for any unexpected error:
        one odd video must not stop a long job).
    """
    try:
        frames, source = _frames(path, kind)
        jpegs, orig, size = [], None, None
        for frame in frames:
            orig = orig or frame.shape[:2]
            image = _resize(frame, short_side)
            size = size or (image.height, image.width)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=quality)
            jpegs.append(buffer.getvalue())
    except BadVideoError:
        raise
    except Exception as e:
        raise BadVideoError(path, f"{type(e).__name__}: {e}") from e
    if not jpegs:
        raise BadVideoError(path, "no frames")
    meta = {
        "fps": float(source["fps"]),
        "height": size[0],
        "width": size[1],
        "orig_height": int(orig[0]),
        "orig_width": int(orig[1]),
        **{k: v for k, v in source.items() if k != "fps"},
    }
    return jpegs, meta
