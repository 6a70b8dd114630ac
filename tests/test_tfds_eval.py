"""The evaluators through TFDS (issue 18): the package's ``jhmdb`` and ``vip``
builders (Beam DirectRunner, two workers) and the TFDS catalog's ``davis``
builder, built from one synthetic set, score exactly as that set's folder
layouts.

The catalog's ``davis/480p`` is built by its own code and feature spec: only
its download is replaced by the synthetic DAVIS folder (the layout of the zip
it fetches).
"""

import json
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from etils import epath

from siammae_jax.data import synthetic
from siammae_jax.eval import baselines, tasks, tfds_layout
from siammae_jax.eval import config as eval_config

SIZE = (32, 48)  # (H, W): non-square
PATCH = 4
FOLDERS = {"davis": "DAVIS", "jhmdb": "JHMDB", "vip": "VIP"}
NAMES = {"davis": "davis/480p", "jhmdb": "jhmdb", "vip": "vip"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(synthetic root, TFDS data_dir) with davis/480p, jhmdb and vip built."""
    import tensorflow_datasets as tfds

    import siammae_jax.data.tfds  # noqa: F401 (registers jhmdb, vip)

    root = tmp_path_factory.mktemp("bench")
    synthetic.write_dataset(
        root / "synth", videos=3, frames=6, size=SIZE, progress=False
    )
    data_dir = root / "tfds"
    # The catalog builder needs a non-empty train split too.
    (root / "synth/DAVIS/ImageSets/2017/train.txt").write_text("synth_0000\n")
    from apache_beam.options.pipeline_options import PipelineOptions

    beam = PipelineOptions(runner="DirectRunner", direct_num_workers=2,
                           direct_running_mode="multi_threading")  # fmt: skip
    for name in ("jhmdb", "vip"):
        config = tfds.download.DownloadConfig(
            manual_dir=str(root / "synth" / FOLDERS[name]), beam_options=beam
        )
        tfds.builder(name, data_dir=str(data_dir)).download_and_prepare(
            download_config=config
        )
    with mock.patch.object(
        tfds.download.DownloadManager,
        "download_and_extract",
        return_value=epath.Path(root / "synth"),
    ):
        tfds.builder("davis/480p", data_dir=str(data_dir)).download_and_prepare(
            file_format="array_record"
        )
    return root / "synth", data_dir


def _cfg(task):
    cfg = eval_config.get_config()[task]
    cfg.update({"davis": {"short_side": 32}, "jhmdb": {"size": 32},
                "vip": {"long_side": 48}}[task])  # fmt: skip
    return cfg


def _colour(frames):
    """Mean-colour patch features: no model, a real propagation input."""
    return baselines.patch_features(frames, PATCH, True)


@pytest.mark.parametrize("task", ["davis", "jhmdb", "vip"])
def test_tfds_source_scores_as_the_folder_layout(built, tmp_path, task):
    synth, data_dir = built
    cfg = _cfg(task)
    want = tasks.RUNNERS[task](
        _colour, PATCH, synth / FOLDERS[task], tmp_path / "folder", cfg, 1, False
    )
    root = tfds_layout.materialize(
        task, f"tfds:{NAMES[task]}", str(data_dir), tmp_path / "t", cfg, False
    )
    got = tasks.RUNNERS[task](_colour, PATCH, root, tmp_path / "t", cfg, 1, False)
    assert got == want
    headline = next(iter(want.values()))  # J&F-Mean, PCK@0.1, mIoU
    assert 0.0 < headline < 1.0


def test_layout_is_written_once_per_source(built, tmp_path):
    synth, data_dir = built
    cfg = _cfg("vip")
    root = tfds_layout.materialize(
        "vip", "tfds:vip", str(data_dir), tmp_path, cfg, False
    )
    marker = root.parent / tfds_layout.MARKER
    assert json.loads(marker.read_text()) == {
        "name": "vip", "split": "validation", "data_dir": str(data_dir), "videos": 3,
    }  # fmt: skip
    stamp = os.stat(marker).st_mtime_ns
    frames = sorted(p.name for p in (root / "Images" / "synth_0000").iterdir())
    assert frames == sorted(p.name for p in (synth / "VIP/Images/synth_0000").iterdir())
    # The JPEG files are the source's bytes, unchanged.
    for name in frames:
        got = (root / "Images" / "synth_0000" / name).read_bytes()
        assert got == (synth / "VIP/Images/synth_0000" / name).read_bytes()
    tfds_layout.materialize("vip", "tfds:vip", str(data_dir), tmp_path, cfg, False)
    assert os.stat(marker).st_mtime_ns == stamp  # reused
    with pytest.raises(FileNotFoundError, match="not prepared"):
        tfds_layout.materialize(
            "vip", "tfds:vip", str(tmp_path / "none"), tmp_path, cfg
        )


def test_davis_catalog_features_as_decoded(built):
    """The catalog's segmentations (colormap PNGs) decode to the object ids."""
    from siammae_jax.data import sources
    from siammae_jax.datasets import davis

    synth, data_dir = built
    ds = sources.open_tfds("davis/480p", "validation", str(data_dir), {})
    assert len(ds) == 3
    for i in range(3):
        ex = ds[i]
        name = ex["metadata"]["video_name"]
        name = name.decode() if isinstance(name, bytes) else name
        labels = np.stack([s[..., 0] for s in ex["video"]["segmentations"]])
        np.testing.assert_array_equal(
            labels, davis.read_annotations(synth / "DAVIS", name)
        )


def test_cli_reports_a_missing_tfds_dataset(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "siammae_jax.eval", "vip", "--random", "test/8",
         "--image_size", "32", "--data", "tfds:vip",
         f"--tfds_data_dir={tmp_path}", f"--out={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "error: cannot read --data tfds:vip: TFDS dataset 'vip' is not prepared" in (
        proc.stderr
    )


def test_jhmdb_and_vip_features_as_decoded_by_tfds(built):
    """TFDS's own decoding of the package's builders gives the evaluators'
    reading of the layout they were built from."""
    import tensorflow_datasets as tfds

    from siammae_jax.datasets import jhmdb, vip

    synth, data_dir = built
    ds = tfds.data_source("jhmdb", split="test", data_dir=str(data_dir))
    assert len(ds) == 3
    for ex in (ds[i] for i in range(len(ds))):
        want = jhmdb.load_video(
            synth / "JHMDB", ex["class"].decode(), ex["video"].decode()
        )
        np.testing.assert_array_equal(np.stack(ex["frames"]), want.frames)
        np.testing.assert_array_equal(ex["joints"], want.joints)
    ds = tfds.data_source("vip", split="validation", data_dir=str(data_dir))
    assert len(ds) == 3
    for ex in (ds[i] for i in range(len(ds))):
        want = vip.load_video(synth / "VIP", ex["video"].decode())
        assert [n.decode() for n in ex["frame_names"]] == want.frame_names
        np.testing.assert_array_equal(np.stack(ex["frames"]), want.frames)
        np.testing.assert_array_equal(np.stack(ex["labels"])[..., 0], want.labels)
