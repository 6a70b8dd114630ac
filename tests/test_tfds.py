"""The package's TFDS builders and the TFDS route into training (issue 18).

``tfds_videos`` (conftest) is ``video_folder`` built by the ``tfds build``
command line with Beam's DirectRunner on two worker processes.
"""

import io
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from conftest import TFDS_VIDEOS
from etils import epath
from PIL import Image

from siammae_jax.configs import siammae as siammae_config
from siammae_jax.data import pipeline, sources, video_file
from siammae_jax.data.video import BadVideoError
from siammae_jax.data.video_file import VideoFile
from siammae_jax.train import config as config_lib

VERSION = "1.0.0"


def _folder(data_dir):
    return data_dir / TFDS_VIDEOS / VERSION


def test_build_skips_and_lists_bad_videos(tfds_videos):
    data_dir, manual = tfds_videos
    report = json.loads((_folder(data_dir) / "skipped-train.json").read_text())
    assert report["videos_found"] == 10  # 8 good, a truncated and an empty one
    assert report["videos_written"] == 8
    assert sorted(s["path"] for s in report["skipped"]) == ["broken.mp4", "empty.mp4"]
    assert all(s["reason"] for s in report["skipped"])
    assert [s["path"] for s in report["not_videos"]] == ["notes.txt"]
    info = json.loads((_folder(data_dir) / "dataset_info.json").read_text())
    assert info["fileFormat"] == "array_record"
    (split,) = info["splits"]
    assert split["name"] == "train" and int(split["shardLengths"][0]) == 8


def test_examples_equal_the_videos_decoding(tfds_videos):
    data_dir, manual = tfds_videos
    source = sources.TfdsSource(TFDS_VIDEOS, str(data_dir))
    assert len(source) == 8
    names = set()
    for i in range(len(source)):
        video = source[i]
        names.add(video.path)
        want = VideoFile(str(manual / video.path))
        assert (video.num_frames, video.fps) == (want.num_frames, want.fps) == (12, 30)
        got = video.read(range(12)).astype(np.int16)
        ref = want.read(range(12))
        assert got.shape == ref.shape == (12, 32, 32, 3)
        # The frames as decoded, through JPEG at quality 90 (Pillow here).
        jpeg = np.stack([_jpeg_round_trip(frame, 90) for frame in ref])
        assert np.abs(got - jpeg).max() <= 1
    assert names == {f"synth_{i:04d}.mp4" for i in range(8)}


def _jpeg_round_trip(frame, quality):
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"), np.int16)


def test_metadata_features(tfds_videos):
    import tensorflow_datasets as tfds

    data_dir, _ = tfds_videos
    ds = tfds.data_source(TFDS_VIDEOS, split="train", data_dir=str(data_dir))
    example = ds[0]
    assert example["num_frames"] == 12 and len(example["frames"]) == 12
    assert example["frames"][0].shape == (32, 32, 3)  # decoded by TFDS itself
    assert (example["height"], example["width"]) == (32, 32)
    assert (example["orig_height"], example["orig_width"]) == (32, 32)
    assert example["fps"] == pytest.approx(30.0)
    assert example["source"].decode().startswith("synth_")


def test_grain_pipeline_over_tfds_resumes_exactly(tfds_videos):
    data_dir, _ = tfds_videos
    source = pickle.loads(pickle.dumps(sources.TfdsSource(TFDS_VIDEOS, str(data_dir))))

    def make():
        return iter(pipeline.make_pipeline(source, batch_size=4, seed=3))

    it = make()
    first = next(it)
    assert first["frames"].shape == (4, 2, 224, 224, 3) and first["skipped"] == 0
    state = it.get_state()
    want = [next(it) for _ in range(3)]
    resumed = make()
    resumed.set_state(state)
    for a, b in zip(want, [next(resumed) for _ in range(3)], strict=True):
        np.testing.assert_array_equal(a["frames"], b["frames"])
        np.testing.assert_array_equal(a["video"], b["video"])


def test_a_bad_example_is_a_bad_video(tfds_videos):
    data_dir, _ = tfds_videos
    source = sources.TfdsSource(TFDS_VIDEOS, str(data_dir))
    source._records = [{"fps": 30.0}, {"frames": [], "source": b"x.mp4"}]
    with pytest.raises(BadVideoError, match="bad example"):
        source[0]
    with pytest.raises(BadVideoError, match="no frames"):
        source[1]


def test_reading_needs_no_tensorflow(tfds_videos):
    data_dir, _ = tfds_videos
    code = (
        "import sys\nfrom siammae_jax.data import sources\n"
        f"s = sources.TfdsSource({TFDS_VIDEOS!r}, {str(data_dir)!r})\n"
        "assert s[0].read([0, 5]).shape == (2, 32, 32, 3)\n"
        "print('tensorflow' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "False"


def test_missing_dataset_and_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared in .*tfds build"):
        sources.TfdsSource(TFDS_VIDEOS, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no TFDS dataset 'no_such_set'"):
        sources.TfdsSource("no_such_set", str(tmp_path))
    config = siammae_config.get_config("tiny")
    config.data.format = "tfds"
    with pytest.raises(ValueError, match="data.tfds_name"):
        config_lib.validate(config, num_devices=1, num_hosts=1)


def test_beam_counts_written_and_skipped_videos(tfds_videos, tmp_path):
    """The split's Beam graph on its own: the metrics count what the build
    wrote and skipped, and the examples are the readable videos."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.util import assert_that, equal_to

    from siammae_jax.data.tfds import video_folder

    _, manual = tfds_videos
    videos, not_videos = video_file.find_videos(epath.Path(manual))
    pipeline = beam.Pipeline(runner="DirectRunner")
    examples = pipeline | beam.ptransform_fn(video_folder.encode_videos)(
        videos, not_videos, str(manual), "train", str(tmp_path / "skipped.json"), 32, 90
    )
    keys = examples | beam.Map(lambda kv: (kv[0], kv[1]["num_frames"]))
    assert_that(keys, equal_to([(f"synth_{i:04d}.mp4", 12) for i in range(8)]))
    result = pipeline.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("video_folder"))[
            "counters"
        ]
    }
    assert counters == {"videos_written": 8, "videos_skipped": 2}
    report = json.loads((tmp_path / "skipped.json").read_text())
    assert [s["path"] for s in report["skipped"]] == ["broken.mp4", "empty.mp4"]
