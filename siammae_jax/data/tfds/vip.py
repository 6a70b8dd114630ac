"""``vip``: VIP (video instance-level human parsing) from its official layout,
as a TFDS builder.

The manual directory is the ``VIP`` folder the evaluator reads
(:mod:`siammae_jax.datasets.vip`: ``Images``, ``Category_ids``, ``lists``). Each
``lists/<name>_videos.txt`` is a split (``val`` is named ``validation``).

One example per video (key: its name): the frames as their JPEG files' bytes,
the part labels (class 0..19 per pixel, 255 void) as single-channel PNGs, the
frame names and the video name. Prepared with Apache Beam (one video per
element). A frame without its annotation (or the reverse), a size mismatch or
an out-of-range class fails the build with the evaluator's message: a benchmark
is complete or not scored.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from siammae_jax.data.tfds import common
from siammae_jax.datasets import vip

_MANUAL = """\
Download VIP (Video Instance-level Parsing: Images, Category_ids, lists) and pass
the folder holding those three as --manual_dir.
"""
TFDS_SPLITS = {"val": "validation"}  # list name -> split name, where they differ


def _png(label: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(label).save(buffer, format="PNG")  # 2-D uint8 -> "L"
    return buffer.getvalue()


class Vip(common.ArrayRecordBuilder):
    """VIP videos with their part labels per frame (official layout)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
    HOMEPAGE = "https://github.com/HCPLab-SYSU/ATEN"

    def _features(self) -> dict:
        return {
            "frames": tfds.features.Sequence(
                tfds.features.Image(encoding_format="jpeg")
            ),
            "labels": tfds.features.Sequence(
                tfds.features.Image(shape=(None, None, 1), encoding_format="png")
            ),
            "frame_names": tfds.features.Sequence(tfds.features.Text()),
            "video": tfds.features.Text(),
        }

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = common.manual_root(dl_manager, _MANUAL)
        lists = sorted((root / "lists").glob("*_videos.txt"))
        if not lists:
            raise FileNotFoundError(f"no {root}/lists/<split>_videos.txt.\n{_MANUAL}")
        splits = {}
        for path in lists:
            name = path.name.removesuffix("_videos.txt")
            videos = vip.read_list(root, name)
            if videos:
                splits[TFDS_SPLITS.get(name, name)] = self._generate_examples(
                    root, videos
                )
        return splits

    def _generate_examples(self, root: epath.Path, videos: list[str]):
        return common.beam_map(videos, functools.partial(_example, root))


def _example(root: epath.Path, name: str) -> tuple[str, dict]:
    """``(key, example)`` of one video, with the evaluator's reading checks."""
    video = vip.load_video(root, name)
    images = root / "Images" / name
    example = {
        "frames": [
            (images / f"{f}{vip.IMAGE_SUFFIX}").read_bytes() for f in video.frame_names
        ],
        "labels": [_png(label) for label in video.labels],
        "frame_names": video.frame_names,
        "video": name,
    }
    return name, example
