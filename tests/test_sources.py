"""Video sources: seeking equals sequential decoding, frame folders, bad input."""

import dataclasses
import fractions
import pathlib
import pickle
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from siammae_jax.data import pairs, sources
from siammae_jax.data import spec as data_spec
from siammae_jax.data.video import BadVideoError, FrameFolder
from siammae_jax.data.video_file import VideoFile

NUM_FRAMES = 40


def make_frames(n=NUM_FRAMES, h=48, w=64, seed=0):
    """Frames that differ from each other (a rolling texture + a counter)."""
    base = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(base).resize((w // 4, h // 4)).resize((w, h)))
    frames = np.stack([np.roll(base, 2 * i, axis=1) for i in range(n)])
    frames[:, :8, :8] = (np.arange(n) * 6 % 256)[:, None, None, None]
    return frames


def write_video(path, frames, codec="libx264", fps=25, gop=12, options=None, **kw):
    """Encodes ``frames`` with PyAV; returns the path as a string."""
    with av.open(str(path), "w", options=kw.get("container_options", {})) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        stream.options = options or {}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return str(path)


X264_LONG_GOP = {"x264-params": "keyint=250:min-keyint=250:scenecut=0"}
X264_BFRAMES = {"x264-params": "bframes=3:b-adapt=0:keyint=12:scenecut=0"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """name -> path of small test videos in several containers and codecs."""
    root = tmp_path_factory.mktemp("videos")
    frames = make_frames()
    return {
        "mp4_gop12": write_video(root / "gop12.mp4", frames),
        "mp4_long_gop": write_video(root / "long.mp4", frames, options=X264_LONG_GOP),
        "mp4_bframes_29.97": write_video(
            root / "bframes.mp4",
            frames,
            fps=fractions.Fraction(30000, 1001),
            options=X264_BFRAMES,
        ),
        "avi_mpeg4": write_video(root / "clip.avi", frames, codec="mpeg4"),
        "webm_vp9": write_video(root / "clip.webm", frames, codec="libvpx-vp9"),
        "mkv_h264": write_video(root / "clip.mkv", frames),
    }


def sequential(path):
    return np.stack(list(VideoFile(path).iter_frames()))


@pytest.mark.parametrize(
    "name",
    [
        "mp4_gop12",
        "mp4_long_gop",
        "mp4_bframes_29.97",
        "avi_mpeg4",
        "webm_vp9",
        "mkv_h264",
    ],
)
def test_seeking_equals_sequential_decoding(videos, name):
    video = VideoFile(videos[name])
    expected = sequential(videos[name])
    assert video.num_frames == len(expected) == NUM_FRAMES
    last = NUM_FRAMES - 1
    for index in [0, last, 1, 11, 12, 13, 23, 24, 25, 37, 2]:
        np.testing.assert_array_equal(video.read([index])[0], expected[index])
    indices = [last, 0, 20, 20, 5, 36, 12]  # Any order, repeats.
    np.testing.assert_array_equal(video.read(indices), expected[indices])
    np.testing.assert_array_equal(video.read(range(NUM_FRAMES)), expected)


def test_frame_count_without_header_count(videos):
    with av.open(videos["webm_vp9"]) as container:
        assert container.streams.video[0].frames == 0  # Counted by demuxing.
    video = VideoFile(videos["webm_vp9"])
    assert video.num_frames == NUM_FRAMES
    assert video.fps == 25.0


def test_fps(videos):
    assert VideoFile(videos["mp4_gop12"]).fps == 25.0
    assert VideoFile(videos["mp4_bframes_29.97"]).fps == pytest.approx(29.97, abs=1e-3)


def test_seeking_decodes_only_the_gops_needed(videos):
    video = VideoFile(videos["mp4_gop12"])
    video.read([NUM_FRAMES - 1])
    assert video.frames_decoded <= 12 + 4  # One GOP (+ decoder delay).
    video.read([25, 27])  # Same GOP: decoded once.
    assert video.frames_decoded <= 12 + 4
    video.read([1, 38])  # Two GOPs far apart: two seeks, not 38 frames.
    assert video.frames_decoded <= 2 * (12 + 4)


def test_index_out_of_range(videos):
    video = VideoFile(videos["mp4_gop12"])
    with pytest.raises(IndexError):
        video.read([NUM_FRAMES])
    with pytest.raises(IndexError):
        video.read([-1])


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory):
    """name -> path of unusable video files."""
    root = tmp_path_factory.mktemp("bad")
    good = write_video(root / "good.mp4", make_frames(60))
    faststart = write_video(
        root / "faststart.mp4",
        make_frames(60),
        container_options={"movflags": "+faststart"},
    )
    data = open(good, "rb").read()
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "empty.mp4").write_bytes(b"")
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    fs = open(faststart, "rb").read()
    (root / "truncated_faststart.mp4").write_bytes(fs[: len(fs) // 2])
    (root / "good.mp4").unlink()
    (root / "faststart.mp4").unlink()
    return root


@pytest.mark.parametrize("name", ["corrupt.mp4", "empty.mp4", "truncated.mp4"])
def test_unopenable_files_raise_at_getitem(bad_videos, name):
    source = sources.VideoFolderSource(bad_videos)
    index = [p.rsplit("/", 1)[-1] for p in source.paths].index(name)
    with pytest.raises(BadVideoError) as info:
        source[index]
    assert info.value.path == str(bad_videos / name)
    assert str(bad_videos / name) in str(info.value) and info.value.reason


def test_truncated_file_is_refused_when_opened(bad_videos):
    # moov atom first: the header promises 60 frames, half the data is gone.
    path = str(bad_videos / "truncated_faststart.mp4")
    with pytest.raises(BadVideoError, match="truncated: the header lists 60") as info:
        VideoFile(path)
    assert info.value.path == path


def _zero_last_packets(path, count):
    """Overwrites the payload of the last ``count`` packets with zeros."""
    with av.open(path) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(open(path, "rb").read())
    for pos, size in packets[-count:]:
        data[pos : pos + size] = bytes(size)
    open(path, "wb").write(data)


def test_damaged_frames_raise_at_read(tmp_path):
    path = write_video(tmp_path / "clip.mp4", make_frames(36))
    expected = sequential(path)
    _zero_last_packets(path, 20)
    video = VideoFile(path)  # The index (the sample table) is intact ...
    np.testing.assert_array_equal(video.read([0]), expected[:1])
    with pytest.raises(BadVideoError, match="decoding failed") as info:
        video.read([35])  # ... the pictures are not.
    assert info.value.path == path


def test_damaged_matroska_is_refused_when_opened(tmp_path):
    # Matroska blocks carry their own headers: zeroed blocks end the demuxing
    # early, without an error. The declared duration tells.
    path = write_video(tmp_path / "clip.mkv", make_frames(36))
    _zero_last_packets(path, 20)
    with pytest.raises(BadVideoError, match="the frames cover 0.6. s of the 1.44 s"):
        VideoFile(path)


def test_bad_video_error_pickles():
    error = pickle.loads(pickle.dumps(BadVideoError("/x.mp4", "broken")))
    assert (error.path, error.reason) == ("/x.mp4", "broken")


def dump_frames(path, frames, fps=None, suffix=".png"):
    path.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(path / f"{i:05d}{suffix}")
    if fps is not None:
        (path / "meta.json").write_text(f'{{"fps": {fps}}}')
    return path


def test_frame_folder_source_matches_video(videos, tmp_path):
    expected = sequential(videos["mp4_gop12"])
    dump_frames(tmp_path / "frames" / "a" / "clip", expected, fps=25)
    dump_frames(tmp_path / "frames" / "b", expected[:5], suffix=".jpg")
    source = sources.FrameFolderSource(tmp_path / "frames")
    assert len(source) == 2
    folder = source[0]
    assert (folder.num_frames, folder.fps) == (NUM_FRAMES, 25.0)
    np.testing.assert_array_equal(folder.read([3, 39, 3]), expected[[3, 39, 3]])
    assert (source[1].num_frames, source[1].fps) == (5, 30.0)  # Default fps.
    assert np.abs(source[1].read([4])[0] - expected[4].astype(float)).mean() < 4


def test_frame_folder_natural_order_and_bad_image(tmp_path):
    frames = make_frames(12)
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"img_{i}.png")  # Unpadded.
    np.testing.assert_array_equal(FrameFolder(folder).read([2, 10]), frames[[2, 10]])
    (folder / "img_12.png").write_bytes(b"not an image")
    video = FrameFolder(folder)
    assert video.num_frames == 13
    with pytest.raises(BadVideoError, match="img_12.png"):
        video.read([12])


def test_missing_and_empty_paths(tmp_path):
    for cls in (
        sources.VideoFolderSource,
        sources.FrameFolderSource,
        sources.ArrayRecordSource,
    ):
        with pytest.raises(FileNotFoundError, match="nowhere"):
            cls(tmp_path / "nowhere")
        with pytest.raises(ValueError, match=str(tmp_path)):
            cls(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _open(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no videos found"):
        _open(tmp_path)


def _open(path, format=""):
    return data_spec.open(data_spec.DataSpec(path=str(path), format=format))


def test_open_infers_the_format(videos, tmp_path):
    video_dir = str(VideoFile(videos["mp4_gop12"]).path).rsplit("/", 1)[0]
    assert isinstance(_open(video_dir), sources.VideoFolderSource)
    dump_frames(tmp_path / "f" / "clip", make_frames(3))
    assert isinstance(_open(tmp_path / "f"), sources.FrameFolderSource)
    assert isinstance(_open(tmp_path / "f", "frames"), sources.FrameFolderSource)
    with pytest.raises(
        ValueError, match="video, frames, array_record, tfds, images, synth"
    ):
        _open(tmp_path / "f", "tfrecord")


def test_sources_pickle_and_repr(videos, tmp_path):
    video_dir = VideoFile(videos["mp4_gop12"]).path.rsplit("/", 1)[0]
    dump_frames(tmp_path / "f" / "clip", make_frames(3))
    for source in (
        sources.VideoFolderSource(video_dir),
        sources.FrameFolderSource(tmp_path / "f"),
    ):
        clone = pickle.loads(pickle.dumps(source))
        assert repr(clone) == repr(source) == repr(type(source)(source._root))
        assert str(len(source)) in repr(source) and source._root in repr(source)
        np.testing.assert_array_equal(clone[0].read([1]), source[0].read([1]))
    assert len(sources.VideoFolderSource(video_dir)) == len(videos)


def test_videos_too_short_for_the_gap_are_skipped_at_start(tmp_path):
    """The start-up check applies the run's length rule (the minimum gap)."""
    from siammae_jax.configs import siammae as siammae_config
    from siammae_jax.train import config as config_lib
    from siammae_jax.train import setup

    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "long.mp4", make_frames(12))
    write_video(folder / "one_frame.mp4", make_frames(1))
    write_video(folder / "three.mp4", make_frames(3), fps=30)
    config = siammae_config.get_config("tiny")
    config.data.min_gap = 4  # frames at 30 fps: three.mp4 has no pair 4 apart
    rule = setup.length_rule(config_lib.sampler(config))
    spec = data_spec.DataSpec(path=str(folder), format="video", check_videos=10)
    workdir = tmp_path / "run"
    workdir.mkdir()
    source = data_spec.open(spec, workdir, length_rule=rule)
    assert [p.rsplit("/", 1)[1] for p in source.paths] == ["long.mp4"]
    listing = (workdir / data_spec.SKIPPED_VIDEOS).read_text().splitlines()
    assert listing[0] == "# videos: 3 files, 1 usable, 2 skipped: path<TAB>reason"
    reasons = dict(line.split("\t") for line in listing[1:])
    assert reasons[str(folder / "one_frame.mp4")] == (
        "too short: 1 frames at 25 fps, the minimum gap is 3 frames"
    )
    assert reasons[str(folder / "three.mp4")].startswith("too short: 3 frames")
    # Without the rule (or beyond data.check_videos) they are found when drawn.
    assert len(data_spec.open(spec, workdir)) == 3


def test_a_folder_of_unusable_videos_is_refused_at_start_in_one_line(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "one_frame.mp4", make_frames(1))
    (folder / "notes.txt").write_text("camera 2")
    spec = data_spec.DataSpec(path=str(folder), format="video", check_videos=10)
    rule = pairs.PairSampler().gap_range
    with pytest.raises(sources.NoUsableVideo) as refused:
        data_spec.open(spec, tmp_path, length_rule=rule)
    message = str(refused.value)
    assert "\n" not in message
    assert message == (
        f"no usable video file under {folder} (videos: 2 files, 0 usable, "
        f"2 skipped); e.g. {folder / 'one_frame.mp4'}: too short: 1 frames at "
        "25 fps, the minimum gap is 3 frames "
        f"(every file with its reason: {tmp_path / data_spec.SKIPPED_VIDEOS})"
    )
    listing = (tmp_path / data_spec.SKIPPED_VIDEOS).read_text()
    assert f"{folder / 'one_frame.mp4'}\ttoo short: 1 frames" in listing
    assert pickle.loads(pickle.dumps(refused.value)).skipped == refused.value.skipped


def test_training_refuses_a_folder_of_unusable_videos_in_one_line(tmp_path):
    """`python -m siammae_jax.main` stops before building anything."""
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "one_frame.mp4", make_frames(1))
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "siammae_jax.main",
         "--config=siammae_jax/configs/siammae.py:tiny",
         f"--config.data.path={folder}", f"--workdir={tmp_path / 'run'}"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no usable video file under {folder} (videos: 1 ")
    assert "too short: 1 frames" in last and "Traceback" not in proc.stderr
    listing = (tmp_path / "run" / data_spec.SKIPPED_VIDEOS).read_text()
    assert "one_frame.mp4\ttoo short: 1 frames" in listing


def test_frame_folders_too_short_for_the_gap_are_skipped_at_start(tmp_path):
    root = tmp_path / "frames"
    dump_frames(root / "long", make_frames(10))
    dump_frames(root / "two", make_frames(2))
    dump_frames(root / "slow", make_frames(3))
    (root / "slow" / "meta.json").write_text('{"fps": 5}')  # gap 4 at 30 = 1 here
    dump_frames(root / "bad_meta", make_frames(10))
    (root / "bad_meta" / "meta.json").write_text("{}")
    spec = data_spec.DataSpec(path=str(root), format="frames", check_videos=10)
    rule = pairs.PairSampler(min_gap=4).gap_range
    source = data_spec.open(spec, tmp_path, length_rule=rule)
    assert [p.rsplit("/", 1)[1] for p in source.paths] == ["long", "slow"]
    reasons = dict(source.skipped)
    assert reasons[str(root / "two")] == (
        "too short: 2 frames at 30 fps, the minimum gap is 4 frames"
    )
    assert reasons[str(root / "bad_meta")].startswith("bad meta.json")
    listing = (tmp_path / data_spec.SKIPPED_VIDEOS).read_text()
    assert f"{root / 'two'}\ttoo short: 2 frames" in listing
    assert len(data_spec.open(spec)) == 4  # no rule: found when drawn
    with pytest.raises(sources.NoUsableVideo, match="no usable frame folder under"):
        data_spec.open(
            dataclasses.replace(spec, path=str(root / "two")), length_rule=rule
        )
