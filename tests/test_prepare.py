"""prepare: packing videos into array_record shards (resumable, parallel, CLI)."""

import json
import os
import pickle
import subprocess
import sys

import av
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader
from PIL import Image

from siammae_jax.data import sources
from siammae_jax.data import spec as data_spec
from siammae_jax.data.prepare import SHARD_PATTERN, TMP_SUFFIX, prepare
from siammae_jax.data.video import PackedVideo
from siammae_jax.data.video_file import VideoFile

SHAPES = {"a/clip1.mp4": (48, 64), "a/clip2.avi": (64, 48), "b/clip3.mp4": (48, 96)}
BAD = ["a/corrupt.mp4", "b/empty.mp4", "b/truncated.mp4"]


def write_video(path, n, h, w, codec="libx264", fps=25, seed=0):
    """A small video of ``n`` distinct frames, encoded with PyAV."""
    # Smooth content, so JPEG error stays small even at these tiny sizes.
    base = np.random.default_rng(seed).integers(0, 256, (h // 16, w // 16, 3), np.uint8)
    base = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR))
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width, stream.pix_fmt = h, w, "yuv420p"
        for i in range(n):
            frame = np.roll(base, 2 * i, axis=1)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """3 good videos (2 containers, 2 orientations) and 3 bad ones."""
    root = tmp_path_factory.mktemp("inputs")
    for i, (name, (h, w)) in enumerate(SHAPES.items()):
        codec = "mpeg4" if name.endswith(".avi") else "libx264"
        write_video(root / name, 10 + 5 * i, h, w, codec=codec, fps=25, seed=i)
    (root / BAD[0]).write_bytes(np.random.default_rng(0).bytes(4000))
    (root / BAD[1]).write_bytes(b"")
    data = (root / "a/clip1.mp4").read_bytes()
    (root / BAD[2]).write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="module")
def packed(video_dir, tmp_path_factory):
    """``video_dir`` packed at the videos' own size (short side 48)."""
    out = tmp_path_factory.mktemp("packed")
    summary = prepare(video_dir, out, short_side=48, shard_size=2, progress=False)
    return out, summary


def records(out):
    """Every record of every shard under ``out``, in order."""
    result = []
    for shard in sorted(out.glob("*.array_record")):
        reader = ArrayRecordReader(str(shard))
        result += reader.read(list(range(reader.num_records())))
        reader.close()
    return result


def test_packed_frames_match_the_videos(video_dir, packed):
    out, summary = packed
    source = data_spec.open(data_spec.DataSpec(path=str(out)))
    assert isinstance(source, sources.ArrayRecordSource)
    assert len(source) == summary["packed"] == 3
    for i, name in enumerate(sorted(SHAPES)):
        video, original = source[i], VideoFile(video_dir / name)
        assert video.path == name
        assert (video.num_frames, video.fps) == (original.num_frames, original.fps)
        assert (video.meta["orig_height"], video.meta["orig_width"]) == SHAPES[name]
        expected = original.read(range(original.num_frames)).astype(float)
        frames = video.read(range(video.num_frames))
        assert frames.shape == expected.shape  # Short side already 48.
        # JPEG error only (4:2:0 chroma at q90 on tiny frames: ~5.5), well
        # below the difference to the neighbouring frame.
        error = np.abs(frames - expected).mean(axis=(1, 2, 3))
        shifted = np.abs(frames[1:] - expected[:-1]).mean(axis=(1, 2, 3))
        assert error.max() < 7 and (error[1:] < shifted / 2).all()


def test_frame_folders_and_packed_records_agree(tmp_path):
    # One video, as a frame folder (lossless PNGs) and packed (from the video
    # file and from the frame folder) at half size.
    write_video(tmp_path / "videos" / "clip.mp4", 12, 96, 128, seed=7)
    frames = VideoFile(tmp_path / "videos" / "clip.mp4").read(range(12))
    folder = tmp_path / "frames" / "clip"
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
    (folder / "meta.json").write_text('{"fps": 25}')
    original = sources.FrameFolderSource(tmp_path / "frames")[0]
    lanczos = Image.Resampling.LANCZOS
    want = np.stack(
        [Image.fromarray(f).resize((64, 48), lanczos) for f in original.read([0, 11])]
    ).astype(float)
    for name in ("videos", "frames"):
        prepare(
            tmp_path / name, tmp_path / f"out_{name}", short_side=48, progress=False
        )
        packed = sources.ArrayRecordSource(tmp_path / f"out_{name}")[0]
        assert (packed.num_frames, packed.fps) == (original.num_frames, original.fps)
        got = packed.read([0, 11])
        assert got.shape == (2, 48, 64, 3)  # Short side 96 -> 48.
        assert np.abs(got - want).mean() < 5  # JPEG error (4:2:0, q90).


def test_bad_videos_are_skipped_with_reasons(video_dir, packed):
    out, summary = packed
    assert summary["num_skipped"] == 3
    assert sorted(s["path"] for s in summary["skipped"]) == sorted(BAD)
    assert all(s["reason"] for s in summary["skipped"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["skipped"] == summary["skipped"]
    assert manifest["packed"] == 3


def test_resume(video_dir, packed, tmp_path):
    out, first = packed
    before = {p.name: p.read_bytes() for p in out.glob("*.array_record")}
    assert len(before) == 3  # 6 inputs, 2 per shard.
    again = prepare(video_dir, out, short_side=48, shard_size=2, progress=False)
    assert again["written"] == [] and again["reused"] == first["shards"]
    assert (again["packed"], again["skipped"]) == (first["packed"], first["skipped"])
    # A crash while writing shard 1: its temp file is left, not renamed.
    name = SHARD_PATTERN.format(index=1, count=3)
    os.replace(out / name, out / (name + TMP_SUFFIX))
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["shards"][name]
    (out / "manifest.json").write_text(json.dumps(manifest))
    redone = prepare(video_dir, out, short_side=48, shard_size=2, progress=False)
    assert redone["written"] == [name]
    assert not list(out.glob("*" + TMP_SUFFIX))
    assert {p.name: p.read_bytes() for p in out.glob("*.array_record")} == before
    assert redone["skipped"] == first["skipped"]
    with pytest.raises(ValueError, match="other settings"):
        prepare(video_dir, out, short_side=32, shard_size=2, progress=False)


def test_parallel_equals_serial(video_dir, packed, tmp_path):
    out, _ = packed
    summary = prepare(
        video_dir, tmp_path, short_side=48, shard_size=2, workers=2, progress=False
    )
    assert summary["packed"] == 3
    assert records(tmp_path) == records(out)
    for shard in summary["shards"]:
        assert (tmp_path / shard).read_bytes() == (out / shard).read_bytes()


def test_array_record_source_pickles(packed):
    out, _ = packed
    source = sources.ArrayRecordSource(out)
    clone = pickle.loads(pickle.dumps(source))
    assert repr(clone) == repr(source) == repr(sources.ArrayRecordSource(out))
    assert "shards=3" in repr(source) and "videos=3" in repr(source)
    np.testing.assert_array_equal(clone[2].read([1, 0]), source[2].read([1, 0]))
    assert isinstance(clone[0], PackedVideo)


def test_cli(video_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable, "-m", "siammae_jax.data.prepare",
            "--videos", str(video_dir), "--out", str(tmp_path),
            "--short_side", "24", "--workers", "1", "--shard_size", "4",
        ],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert "packed 3 videos into 2 shards" in result.stdout
    assert "skipped 3:" in result.stdout and "b/empty.mp4" in result.stdout
    video = sources.ArrayRecordSource(tmp_path)[2]  # b/clip3.mp4: 48 x 96.
    assert video.read([0]).shape == (1, 24, 48, 3)
