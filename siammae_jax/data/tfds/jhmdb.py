"""``jhmdb``: JHMDB (pose propagation) from its official layout, as a TFDS builder.

The manual directory is the ``JHMDB`` folder the evaluator reads
(:mod:`siammae_jax.datasets.jhmdb`: ``Rename_Images``, ``joint_positions``,
``splits``). One config per official split (``jhmdb/split1`` is the default;
``--config '{"name": "split2", "split": 2}'`` builds another), each with the
``train`` and ``test`` videos its split files mark (1 and 2).

One example per video (key ``<class>/<video>``): the frames as their PNG
files' bytes, the 15 ground-truth joints per frame as 0-based (x, y) pixel
coordinates (``pos_img - 1``, the evaluator's convention), the class and the
video name. Prepared with Apache Beam (one video per element), like
``video_folder``. A video with a missing frame or joint file fails the build
with the evaluator's message: a benchmark is complete or not scored, never
scored on a silent subset.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from siammae_jax.data.tfds import common
from siammae_jax.datasets import jhmdb

_MANUAL = """\
Download JHMDB (http://jhmdb.is.tue.mpg.de/: joint_positions, Rename_Images,
splits) and pass the folder holding those three as --manual_dir.
"""


@dataclasses.dataclass
class JhmdbConfig(tfds.core.BuilderConfig):
    """Attributes: split: the official split (1, 2 or 3)."""

    split: int = 1


def _videos(root: epath.Path, split: int) -> dict[str, list[tuple[str, str]]]:
    """``{"train": [(class, video)], "test": [...]}`` of one official split
    (empty parts left out)."""
    test = jhmdb.read_split(root, split)  # also checks every line
    train = []
    for path in sorted((root / "splits").glob(f"*_test_split{split}.txt")):
        cls = path.name[: -len(f"_test_split{split}.txt")]
        for line in path.read_text().splitlines():
            fields = line.split()
            if fields and fields[1] == "1":
                train.append((cls, fields[0].removesuffix(".avi")))
    out = {"train": sorted(train), "test": test}
    return {k: v for k, v in out.items() if v}


class Jhmdb(common.ArrayRecordBuilder):
    """JHMDB videos with their 15 joints per frame (official layout)."""

    BUILDER_CONFIGS = [JhmdbConfig(name="split1", description="Official split 1.")]
    DEFAULT_CONFIG_NAME = "split1"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
    HOMEPAGE = "http://jhmdb.is.tue.mpg.de/"

    def _features(self) -> dict:
        return {
            "frames": tfds.features.Sequence(
                tfds.features.Image(encoding_format="png")
            ),
            "joints": tfds.features.Tensor(
                shape=(None, jhmdb.NUM_JOINTS, 2), dtype=np.float64
            ),
            "class": tfds.features.Text(),
            "video": tfds.features.Text(),
        }

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = common.manual_root(dl_manager, _MANUAL)
        videos = _videos(root, self.builder_config.split)
        return {
            split: self._generate_examples(root, pairs)
            for split, pairs in videos.items()
        }

    def _generate_examples(self, root: epath.Path, pairs: list[tuple[str, str]]):
        return common.beam_map(pairs, functools.partial(_example, root))


def _example(root: epath.Path, pair: tuple[str, str]) -> tuple[str, dict]:
    """``(key, example)`` of one video, with the evaluator's reading checks
    (every frame present, joints of the right shape)."""
    cls, video = pair
    paths = jhmdb._frame_paths(root / "Rename_Images" / cls / video)
    joints = jhmdb._read_pos_img(
        root / "joint_positions" / cls / video / jhmdb.MAT_NAME, len(paths)
    )
    example = {
        "frames": [p.read_bytes() for p in paths],
        "joints": joints,
        "class": cls,
        "video": video,
    }
    return f"{cls}/{video}", example
