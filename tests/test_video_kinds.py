"""Every readable video is used (issue 15): real containers and codecs.

One video per kind a user's folder holds (``tests/video_kinds.py``): H.264 mp4
with B-frames, variable-frame-rate mp4, MPEG-4 Part 2 AVI at 24000/1001 fps,
a Cinepak AVI whose time base is finer than its frames, an MPEG-2 program
stream without a frame count, an MPEG-2 transport stream, VP9 WebM and H.264
MKV. Each frame shows its own number in a corner, so the tests know which
frame a reader returned from the pixels alone; plain sequential decoding with
PyAV is the reference for the exact pixels.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import video_kinds
from absl import flags
from PIL import Image
from video_kinds import NUM_FRAMES, frame_number

from siammae_jax.data import encode, pairs, pipeline, prepare, sources
from siammae_jax.data import video as video_lib_base
from siammae_jax.data import video_file as video_lib
from siammae_jax.data.video import BadVideoError, PackedVideo
from siammae_jax.data.video_file import FrameIndex, VideoFile
from siammae_jax.eval import attention

ROOT = Path(__file__).resolve().parents[1]
KINDS = (
    "mp4_h264_bframes",
    "mp4_vfr",
    "avi_mpeg4_23.976",
    "avi_mpeg4_packed_bframes",
    "avi_cinepak_fine_timebase",
    "mpg_mpeg2_ps",
    "ts_mpeg2",
    "webm_vp9",
    "mkv_h264",
)


@pytest.fixture(autouse=True, scope="module")
def _parsed_flags():
    flags.FLAGS.mark_as_parsed()  # grain reads absl flags outside app.run


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    paths = video_kinds.write_kinds(tmp_path_factory.mktemp("kinds"))
    assert sorted(paths) == sorted(KINDS)
    return paths


@pytest.fixture(scope="module")
def reference(kinds):
    """name -> every frame by plain sequential decoding."""
    return {name: video_kinds.decode_all(path) for name, path in kinds.items()}


@pytest.fixture(autouse=True)
def _fresh_caches():
    """Each test builds its own frame indexes."""
    video_lib._INDEX_CACHE.clear()
    video_lib._UNRELIABLE_SEEKS.clear()
    video_lib._SEEK_BY_DTS.clear()


@pytest.mark.parametrize("name", KINDS)
def test_random_access_returns_the_frames_sequential_decoding_gives(
    kinds, reference, name
):
    expected = reference[name]
    # The reference shows the frames written, in order (numbers from pixels).
    assert [frame_number(f) for f in expected] == list(range(NUM_FRAMES))
    video = VideoFile(kinds[name])
    assert video.num_frames == NUM_FRAMES
    for i in range(NUM_FRAMES):
        np.testing.assert_array_equal(video.read([i])[0], expected[i], err_msg=str(i))
    order = [39, 0, 20, 20, 5, 36, 12, 13, 38, 1]  # Any order, repeats.
    np.testing.assert_array_equal(video.read(order), expected[order])
    np.testing.assert_array_equal(video.read(range(NUM_FRAMES)), expected)
    # The sequential reader (prepare's) gives the same frames.
    np.testing.assert_array_equal(np.stack(list(video.iter_frames())), expected)


def _timestamps(path):
    """Seconds of every decoded frame, read with PyAV alone."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        return [float(f.pts * stream.time_base) for f in container.decode(stream)]


@pytest.mark.parametrize("name", KINDS)
def test_frame_rate_is_measured_from_the_timestamps(kinds, name):
    seconds = _timestamps(kinds[name])
    video = VideoFile(kinds[name])
    span = max(seconds) - min(seconds)  # (packed B-frames: out of order)
    assert video.fps == pytest.approx((len(seconds) - 1) / span)
    written = {
        "mp4_h264_bframes": 30000 / 1001,
        "mp4_vfr": (NUM_FRAMES - 1) / (video_kinds.VFR_MS[-1] / 1000),
        "avi_mpeg4_23.976": 24000 / 1001,
        "avi_mpeg4_packed_bframes": 24000 / 1001,
        "avi_cinepak_fine_timebase": 15.0,
        "ts_mpeg2": 25.0,
        "webm_vp9": 25.0,
        "mkv_h264": 25.0,
        # The muxer leaves one 2-frame step in the timestamps: 39 / 1.6 s.
        "mpg_mpeg2_ps": 39 / 1.6,
    }
    assert video.fps == pytest.approx(written[name], rel=1e-6)


def test_headers_that_mislead_arithmetic(kinds):
    """What broke the old reader: the index does not trust these headers."""
    with av.open(kinds["avi_cinepak_fine_timebase"]) as container:
        stream = container.streams.video[0]
        assert (stream.frames, float(stream.average_rate)) == (1600, 600.0)
    with av.open(kinds["mpg_mpeg2_ps"]) as container:
        assert container.streams.video[0].frames == 0  # No count in the header.
    cinepak = VideoFile(kinds["avi_cinepak_fine_timebase"])
    assert (cinepak.num_frames, cinepak.fps) == (NUM_FRAMES, 15.0)
    # Gaps keep their meaning in time: 4-48 frames at 30 fps = 2-24 at 15 fps.
    assert pairs.PairSampler().gap_range(cinepak.num_frames, cinepak.fps) == (2, 24)


def test_seeks_decode_one_gop_and_count_restarts(kinds, reference, tmp_path):
    video = VideoFile(kinds["mp4_h264_bframes"])  # a keyframe every 12 frames
    for wanted in ([39], [25, 27], [1, 38]):
        np.testing.assert_array_equal(
            video.read(wanted), reference["mp4_h264_bframes"][wanted]
        )
        assert video.frames_decoded <= len(wanted) * (12 + 4)  # (+ decoder delay)
    # The package's own mp4 writer (B-frames, an edit list, GOP 12): a seek by
    # the keyframe's presentation timestamp lands on it, not a GOP earlier.
    path = str(tmp_path / "gop12.mp4")
    video_lib_base.write_mp4(path, video_kinds.frames(), gop=12)
    own = VideoFile(path)
    for i in (13, 30, 39, 25):
        assert frame_number(own.read([i])[0]) == i
        assert own.frames_decoded <= 12 + 4 and own.restarts == 0, i
    transport = VideoFile(kinds["ts_mpeg2"])
    transport.read([30])
    assert transport.frames_decoded <= 12 + 4 and transport.restarts == 0
    # The program stream's timestamps change after a seek: found out once,
    # then that file is read from the start, and the cost is counted.
    program = VideoFile(kinds["mpg_mpeg2_ps"])
    restarted = []
    for i in range(NUM_FRAMES):
        before = program.restarts
        np.testing.assert_array_equal(
            program.read([i])[0], reference["mpg_mpeg2_ps"][i]
        )
        restarted.append(program.restarts - before)
        if restarted[-1]:
            assert program.frames_decoded >= i + 1  # From the first frame.
    first = restarted.index(1)  # Seeking went wrong at least once ...
    assert restarted[first:] == [1] * (NUM_FRAMES - first)  # ... then never tried.
    again = VideoFile(kinds["mpg_mpeg2_ps"])  # (known per process)
    np.testing.assert_array_equal(again.read([2]), reference["mpg_mpeg2_ps"][[2]])
    assert again.restarts == 1 and again.frames_decoded == 3


def test_packed_bframes_are_read_as_sequential_decoding_gives(kinds, reference):
    """DivX/XviD packing: an anchor and a B-frame in one packet, then a 7-byte
    placeholder; decoding stamps frames 0, 1, 2, 3 with ticks 1, 3, 2, 5."""
    path = kinds["avi_mpeg4_packed_bframes"]
    with av.open(path) as container:
        sizes = [p.size for p in container.demux(video=0) if p.size]
    assert len(sizes) == NUM_FRAMES and sizes[2:10:2] == [7] * 4
    with av.open(path) as container:
        ticks = [f.pts for f in container.decode(video=0)]
    assert ticks[:5] == [1, 3, 2, 5, 4]
    video = VideoFile(path)
    assert video.index.packed and video.num_frames == NUM_FRAMES
    order = np.random.default_rng(0).permutation(NUM_FRAMES)
    for i in order:
        np.testing.assert_array_equal(
            video.read([i])[0], reference["avi_mpeg4_packed_bframes"][i]
        )
        assert video.frames_decoded <= 12 + 2 and video.restarts == 0, i
    np.testing.assert_array_equal(
        video.read(order[:7]), reference["avi_mpeg4_packed_bframes"][order[:7]]
    )


@pytest.fixture(scope="module")
def with_still(tmp_path_factory):
    """Two files whose first video stream is not the video: a 1-frame still
    first (as an AVIF sequence's alpha plane), and MP4 cover art."""
    root = tmp_path_factory.mktemp("streams")
    return {
        "still_first.mkv": video_kinds.write_with_still(root / "still_first.mkv"),
        "cover.mp4": video_kinds.write_with_still(
            root / "cover.mp4", format="mp4", attached=True
        ),
    }


def _decode_stream(path, index):
    with av.open(path) as container:
        frames = container.decode(container.streams[index])
        return np.stack([f.to_ndarray(format="rgb24") for f in frames])


def test_the_best_video_stream_is_read_never_a_still_or_cover_art(with_still):
    still_first, cover = with_still["still_first.mkv"], with_still["cover.mp4"]
    with av.open(still_first) as container:
        assert [s.codec_context.name for s in container.streams] == ["mjpeg", "h264"]
    with av.open(cover) as container:
        pictures = [s.disposition & av.stream.Disposition.attached_pic
                    for s in container.streams]  # fmt: skip
        assert [bool(p) for p in pictures] == [False, True]
    for path, stream in ((still_first, 1), (cover, 0)):
        expected = _decode_stream(path, stream)
        assert [frame_number(f) for f in expected] == list(range(NUM_FRAMES))
        video = VideoFile(path)
        assert (video.index.stream, video.num_frames) == (stream, NUM_FRAMES)
        np.testing.assert_array_equal(video.read([33, 2, 17]), expected[[33, 2, 17]])
        np.testing.assert_array_equal(np.stack(list(video.iter_frames())), expected)
    # Training draws pairs from both with nothing skipped.
    source = sources.VideoFolderSource(Path(still_first).parent, check=True)
    sampler = pairs.PairSampler(size=16, min_gap=4, max_gap=16, repeats=2)
    ds = pipeline.make_pipeline(source, batch_size=4, sampler=sampler, num_epochs=2)
    assert [int(b["skipped"]) for b in ds] == [0, 0]
    # prepare (and the TFDS builder: the same encode_video) and eval attention.
    jpegs, meta = encode.encode_video(still_first, "video", None, 90)
    assert (len(jpegs), meta["stream"]) == (NUM_FRAMES, 1)
    out = Path(still_first).parent / "packed"
    prepare.prepare(Path(still_first).parent, out, short_side=None, progress=False)
    (shard,) = json.loads((out / "manifest.json").read_text())["shards"].values()
    assert shard["videos"] == ["cover.mp4", "still_first.mkv"]
    assert shard["streams"] == [0, 1] and shard["num_frames"] == [NUM_FRAMES] * 2
    packed = sources.ArrayRecordSource(out)
    assert [packed[i].meta["stream"] for i in range(2)] == [0, 1]
    for i in range(2):
        numbers = [frame_number(f) for f in packed[i].read(range(NUM_FRAMES))]
        assert numbers == list(range(NUM_FRAMES))
    frames = attention.read_frames(still_first, max_frames=5)
    np.testing.assert_array_equal(frames, _decode_stream(still_first, 1)[:5])


X264_GOP12_B2 = "keyint=12:min-keyint=12:scenecut=0:bframes=2:b-adapt=0"
RAW_STREAMS = {  # name -> codec, FFmpeg muxer, encoder options (GOP 12)
    "mpeg1.m1v": ("mpeg1video", "mpeg1video", {"g": "12"}),
    "mpeg2_bframes.m2v": ("mpeg2video", "mpeg2video", {"g": "12", "bf": "2"}),
    "mpeg4_bframes.m4v": ("mpeg4", "m4v", {"g": "12", "bf": "1"}),
    # No timestamps at all: the frames' order comes from decoding once.
    "h264_bframes.h264": ("libx264", "h264", {"x264-params": X264_GOP12_B2}),
}


@pytest.mark.parametrize("name", RAW_STREAMS)
def test_raw_elementary_streams_are_read_from_keyframe_offsets(tmp_path, name):
    """No container: each read starts at its keyframe's byte offset, not at
    the first frame (the demuxers' own seeks give other timestamps)."""
    codec, muxer, options = RAW_STREAMS[name]
    path = video_kinds._write(tmp_path / name, codec, 25, format=muxer,
                              options=options, bit_rate=4_000_000)  # fmt: skip
    expected = video_kinds.decode_all(path)
    assert [frame_number(f) for f in expected] == list(range(NUM_FRAMES))
    video = VideoFile(path)
    assert video.index.pos.size == NUM_FRAMES
    assert video.index.keyframe_pos.tolist()[:1] == [0]
    for i in np.random.default_rng(1).permutation(NUM_FRAMES):
        np.testing.assert_array_equal(video.read([i])[0], expected[i], err_msg=str(i))
        assert video.restarts == 0 and video.frames_decoded <= 12 + 3, i
    np.testing.assert_array_equal(video.read([37, 3, 20]), expected[[37, 3, 20]])
    assert video.frames_decoded <= 3 * (12 + 3)


def test_raw_streams_read_as_file_objects_as_gs_paths_are(tmp_path, monkeypatch):
    """Remote files are read through file objects, offsets included."""
    monkeypatch.setattr(video_lib, "_is_local", lambda path: False)
    for name in ("mpeg1.m1v", "h264_bframes.h264"):
        codec, muxer, options = RAW_STREAMS[name]
        path = video_kinds._write(tmp_path / name, codec, 25, format=muxer,
                                  options=options, bit_rate=4_000_000)  # fmt: skip
        expected = video_kinds.decode_all(path)
        video = VideoFile(path)
        np.testing.assert_array_equal(video.read([30, 5]), expected[[30, 5]])
        assert video.restarts == 0 and video.frames_decoded <= 2 * (12 + 3)


def test_a_raw_stream_with_its_headers_only_at_the_start_is_read_from_it(tmp_path):
    """Opened at a later keyframe, an MPEG-4 stream without its VOL header
    cannot be decoded: the read falls back to decoding from the first frame."""
    path = video_kinds._write(tmp_path / "clip.m4v", "mpeg4", 25, format="m4v",
                              options={"g": "12"}, bit_rate=4_000_000)  # fmt: skip
    with av.open(path) as container:
        packets = [(bytes(p), p.is_keyframe) for p in container.demux(video=0)]
    vop = b"\x00\x00\x01\xb6"
    stripped = [data[data.index(vop) :] if key else data for data, key in packets[1:]]
    assert packets[12][1] and len(stripped[11]) < len(packets[12][0])  # headers cut
    headers_once = tmp_path / "headers_once.m4v"
    headers_once.write_bytes(packets[0][0] + b"".join(stripped))
    expected = video_kinds.decode_all(str(headers_once))
    assert [frame_number(f) for f in expected] == list(range(NUM_FRAMES))
    video = VideoFile(headers_once)
    for i in (30, 5, 39, 12):
        np.testing.assert_array_equal(video.read([i])[0], expected[i], err_msg=str(i))
    assert video.restarts == 4  # the first failure marks the file for good


def test_frame_index_is_cached_in_memory_and_in_sidecars(kinds, tmp_path, monkeypatch):
    path = kinds["mkv_h264"]
    built = VideoFile(path, index_dir=str(tmp_path)).index
    (sidecar,) = tmp_path.glob("*.frameindex.json")
    assert json.loads(sidecar.read_text())["pts"] == built.pts.tolist()

    def no_demuxing(*args):
        raise AssertionError("the index was built again")

    monkeypatch.setattr(FrameIndex, "build", no_demuxing)
    assert VideoFile(path).index is built  # memory
    video_lib._INDEX_CACHE.clear()
    from_sidecar = VideoFile(path, index_dir=str(tmp_path))  # sidecar
    np.testing.assert_array_equal(from_sidecar.index.pts, built.pts)
    assert from_sidecar.index.keyframes.tolist() == built.keyframes.tolist()
    np.testing.assert_array_equal(from_sidecar.read([17]), VideoFile(path).read([17]))
    video_lib._INDEX_CACHE.clear()
    with pytest.raises(AssertionError, match="built again"):
        VideoFile(path)  # Neither memory nor a sidecar: it must demux.


def test_a_changed_file_gets_a_new_index(kinds, tmp_path):
    path = tmp_path / "clip.mkv"
    shutil.copy(kinds["mkv_h264"], path)
    assert VideoFile(path).num_frames == NUM_FRAMES
    video_kinds._write(path, "libx264", 25, data=video_kinds.frames(10))
    assert VideoFile(path).num_frames == 10


@pytest.fixture(scope="module")
def mixed_folder(kinds, tmp_path_factory):
    """The kinds, a video without a suffix, and files that are not videos."""
    root = tmp_path_factory.mktemp("mixed")
    for path in kinds.values():
        shutil.copy(path, root / Path(path).name)
    (root / "nested").mkdir()
    shutil.copy(kinds["mkv_h264"], root / "nested" / "no_suffix")
    (root / "notes.txt").write_text("camera 2\n")
    Image.new("RGB", (8, 8)).save(root / "poster.dat", format="PNG")
    (root / "clip.bin").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "empty.mp4").write_bytes(b"")
    return root


def test_every_file_is_used_or_listed_with_its_reason(kinds, mixed_folder):
    source = sources.VideoFolderSource(mixed_folder, check=True)
    names = {Path(p).name for p in source.paths}
    assert names == {Path(p).name for p in kinds.values()} | {"no_suffix"}
    reasons = {Path(p).name: r for p, r in source.skipped}
    assert set(reasons) == {"notes.txt", "poster.dat", "clip.bin", "empty.mp4"}
    assert reasons["notes.txt"] == "not a video (.txt file)"
    assert reasons["poster.dat"].startswith("not a video: a still image")
    assert reasons["clip.bin"].startswith("not a video")
    assert reasons["empty.mp4"].startswith("cannot open")
    assert source.report() == "videos: 14 files, 10 usable, 4 skipped"
    unchecked = sources.VideoFolderSource(mixed_folder)  # bad videos found on read
    assert unchecked.report() == "videos: 14 files, 11 usable, 3 skipped"
    assert sources.infer_format(mixed_folder / "nested") == "video"  # by probing


def test_two_epochs_over_every_kind_skip_nothing(kinds):
    source = sources.VideoFolderSource(Path(kinds["mkv_h264"]).parent)
    sampler = pairs.PairSampler(size=16, min_gap=4, max_gap=16, repeats=2)
    ds = pipeline.make_pipeline(source, batch_size=4, sampler=sampler, num_epochs=2)
    batches = list(ds)
    assert sum(int(b["skipped"]) for b in batches) == 0
    seen = np.concatenate([b["video"] for b in batches])
    np.testing.assert_array_equal(np.bincount(seen), [4] * len(KINDS))


def test_prepare_packs_every_kind_and_lists_the_rest(mixed_folder, tmp_path):
    summary = prepare.prepare(mixed_folder, tmp_path, short_side=None, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert summary["packed"] == manifest["packed"] == len(KINDS) + 1
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {"notes.txt", "poster.dat", "clip.bin", "empty.mp4"}
    assert {s["path"] for s in manifest["not_videos"]} == {
        "notes.txt", "poster.dat", "clip.bin",
    }  # fmt: skip
    # One truth for "frame i": the packed frames show the same numbers.
    for record in sources.ArrayRecordSource(tmp_path)._records:
        packed = PackedVideo(record)
        assert packed.num_frames == NUM_FRAMES, packed.path
        numbers = [frame_number(f) for f in packed.read(range(NUM_FRAMES))]
        assert numbers == list(range(NUM_FRAMES)), packed.path


def test_attention_input_uses_the_same_reader(kinds, reference, tmp_path):
    frames = attention.read_frames(kinds["avi_mpeg4_23.976"], max_frames=5)
    np.testing.assert_array_equal(frames, reference["avi_mpeg4_23.976"][:5])
    (tmp_path / "notes.txt").write_text("not a video")
    with pytest.raises(BadVideoError, match="notes.txt"):
        attention.read_frames(str(tmp_path / "notes.txt"), max_frames=5)


def test_attention_cli_reports_an_unreadable_video_in_one_line(tmp_path):
    bad = tmp_path / "broken.avi"
    bad.write_bytes(np.random.default_rng(1).bytes(2000))
    proc = subprocess.run(
        [sys.executable, "-m", "siammae_jax.eval", "attention", "--random=test/8",
         "--image_size=32", f"--video={bad}", f"--out={tmp_path / 'out'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot read --video: {bad}: cannot open")
    assert "Traceback" not in proc.stderr


def test_a_data_path_is_used_as_what_it_holds(mixed_folder, tmp_path):
    """The tiny config with --config.data.path: the format comes from the files."""
    from siammae_jax.configs import siammae as siammae_config
    from siammae_jax.data import spec as data_spec

    def open_data(config, workdir):
        return data_spec.open(data_spec.DataSpec.from_config(config.data, 0), workdir)

    config = siammae_config.get_config("tiny")
    config.data.path = str(mixed_folder)
    workdir = tmp_path / "run"
    workdir.mkdir()
    source = open_data(config, workdir)
    assert isinstance(source, sources.VideoFolderSource) and len(source) == 10
    listing = (workdir / data_spec.SKIPPED_VIDEOS).read_text().splitlines()
    assert listing[0] == "# videos: 14 files, 10 usable, 4 skipped: path<TAB>reason"
    assert sorted(Path(x.split("\t")[0]).name for x in listing[1:]) == [
        "clip.bin", "empty.mp4", "notes.txt", "poster.dat",
    ]  # fmt: skip
    config.data.check_videos = 5  # More videos than that: found when read.
    assert len(open_data(config, workdir)) == 11
    shards = tmp_path / "shards"
    prepare.prepare(mixed_folder, shards, short_side=32, progress=False)
    config.data.path = str(shards)
    assert isinstance(open_data(config, workdir), sources.ArrayRecordSource)
    config.data.path, config.data.format = str(mixed_folder), "synthetic"
    with pytest.raises(ValueError, match="leave data.format empty"):
        open_data(config, workdir)


# Issue 28's folder of real-world kinds (``video_kinds.write_real_world_kinds``);
# ``video_kinds.NOT_WRITABLE`` lists those FFmpeg here cannot encode.
REAL_WORLD = {  # name -> (streams in file order, frames, frame size)
    "webm_vp8_vorbis": (["vp8", "vorbis"], NUM_FRAMES, video_kinds.SIZE),
    "m1v_mpeg1_raw": (["mpeg1video"], NUM_FRAMES, video_kinds.SIZE),
    # FFmpeg's FLV demuxer gives the data (onTextData) stream as text.
    "flv_flv1_data_first": (["text", "flv"], NUM_FRAMES, video_kinds.SIZE),
    "asf_wmv2_audio_first": (["wmav2", "wmv2"], NUM_FRAMES, video_kinds.SIZE),
    "3g2_h263": (["h263"], NUM_FRAMES, video_kinds.H263_SIZE),
    "mkv_hevc_10bit": (["hevc"], NUM_FRAMES, video_kinds.SIZE),
    "avi_msrle_pal8": (["msrle"], NUM_FRAMES, video_kinds.SIZE),
    "mov_qtrle": (["qtrle"], NUM_FRAMES, video_kinds.SIZE),
    "mp4_mpeg4": (["mpeg4"], NUM_FRAMES, video_kinds.SIZE),
    "ts_mpeg2_2frames": (["mpeg2video"], video_kinds.SHORT_TS_FRAMES, video_kinds.SIZE),
}


@pytest.fixture(scope="module")
def real_world(tmp_path_factory):
    """A folder of issue 28's kinds, the packed-B-frame AVI and a file whose
    first video stream is a still: name -> path."""
    root = tmp_path_factory.mktemp("real_world")
    paths = video_kinds.write_real_world_kinds(root)
    assert sorted(paths) == sorted(REAL_WORLD)
    paths["avi_mpeg4_packed_bframes"] = video_kinds.write_packed_bframes(
        root / "packed.avi"
    )
    paths["mkv_still_first"] = video_kinds.write_with_still(root / "still_first.mkv")
    return paths


def _codec(stream) -> str:
    return stream.codec_context.name if stream.type != "data" else "data"


@pytest.mark.parametrize("name", REAL_WORLD)
def test_real_world_kinds_read_every_frame_as_sequential_decoding_gives(
    real_world, name
):
    streams, count, size = REAL_WORLD[name]
    path = real_world[name]
    with av.open(path) as container:
        assert [_codec(s) for s in container.streams] == streams
        video = next(s for s in container.streams if s.type == "video")
        pixels = video.codec_context.pix_fmt
    if name == "mkv_hevc_10bit":
        assert pixels == "yuv420p10le"
    if name == "avi_msrle_pal8":
        assert pixels == "pal8"
    expected = video_kinds.decode_all(path)
    assert expected.shape == (count, *size, 3)
    assert [frame_number(f) for f in expected] == list(range(count))
    reader = VideoFile(path)
    assert reader.num_frames == count
    for i in np.random.default_rng(2).permutation(count):
        np.testing.assert_array_equal(reader.read([i])[0], expected[i], err_msg=str(i))
    order = np.random.default_rng(3).integers(0, count, 8)  # repeats too
    np.testing.assert_array_equal(reader.read(order), expected[order])
    np.testing.assert_array_equal(reader.read(range(count)), expected)
    np.testing.assert_array_equal(np.stack(list(reader.iter_frames())), expected)


def test_every_real_world_kind_is_usable_at_start_and_drawn_without_skips(
    real_world, tmp_path
):
    """Each clip counted usable by the start-up check (nothing listed as
    skipped), and two epochs of pairs draw every one with nothing skipped."""
    from siammae_jax.configs import siammae as siammae_config
    from siammae_jax.data import spec as data_spec

    folder = Path(real_world["mp4_mpeg4"]).parent
    n = len(real_world)
    config = siammae_config.get_config("tiny")
    config.data.path = str(folder)
    source = data_spec.open(data_spec.DataSpec.from_config(config.data, 0), tmp_path)
    assert sorted(source.paths) == sorted(real_world.values())
    listing = (tmp_path / data_spec.SKIPPED_VIDEOS).read_text().splitlines()
    assert listing == [f"# videos: {n} files, {n} usable, 0 skipped: path<TAB>reason"]
    # The paper's gaps (4-48 frames at 30 fps): the 2-frame TS at 2 fps too.
    sampler = pairs.PairSampler(size=16, min_gap=4, max_gap=48, repeats=2)
    ds = pipeline.make_pipeline(source, batch_size=4, sampler=sampler, num_epochs=2)
    batches = list(ds)
    assert sum(int(b["skipped"]) for b in batches) == 0
    seen = np.concatenate([b["video"] for b in batches])
    np.testing.assert_array_equal(np.bincount(seen, minlength=n), [4] * n)


@pytest.mark.slow  # ~40 s on two shared cores
def test_a_folder_of_every_real_world_kind_trains_without_skips(real_world, tmp_path):
    """Issue 28's "done when": the folder of real kinds, the packed-B-frame
    AVI and a multi-stream file train with 0 skipped draws (setup, restore
    and the loop in process, a tiny model)."""
    from siammae_jax.configs import siammae as siammae_config
    from siammae_jax.data import spec as data_spec
    from siammae_jax.train import loop, metrics, setup

    folder = Path(real_world["mp4_mpeg4"]).parent
    n = len(real_world)
    config = siammae_config.get_config("tiny")
    config.model.update(encoder="test/8", image_size=32, decoder_dim=32)
    config.model.update(decoder_depth=2, decoder_heads=2)
    config.batch_size = 8
    config.data.update(path=str(folder), num_workers=0)
    config.train.update(steps=3, log_every=1, image_every=0, measure_every=0)
    workdir = tmp_path / "run"
    run = setup.setup(config, str(workdir))
    state, counters = setup.restore_or_init(run)
    logger = metrics.MetricsLogger(str(workdir), is_main=True, console=False)
    loop.train_loop(run, state, logger, counters)
    logger.close()
    run.ckpt.close()
    listing = (workdir / data_spec.SKIPPED_VIDEOS).read_text().splitlines()
    assert listing == [f"# videos: {n} files, {n} usable, 0 skipped: path<TAB>reason"]
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "data_skipped" in r]
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert [r["data_skipped"] for r in logged] == [0, 0, 0]


def test_an_avi_whose_palette_changes_is_read_as_sequential_decoding_gives(tmp_path):
    """A palette change is a chunk before the frame's packet: a seek past it
    leaves the decoder with an older palette, so such files read from the
    first frame on (the index keeps only the first keyframe)."""
    path = video_kinds._write_with_others(
        tmp_path / "palettes.avi", "msrle", 25, pix="pal8", palette_per_frame=True
    )
    with av.open(path) as container:
        changes = [
            p.has_sidedata("palette") for p in container.demux(video=0) if p.size
        ]
    assert len(changes) == NUM_FRAMES and all(changes)
    expected = video_kinds.decode_all(path)
    assert [frame_number(f) for f in expected] == list(range(NUM_FRAMES))
    video = VideoFile(path)
    for i in np.random.default_rng(4).permutation(NUM_FRAMES):
        np.testing.assert_array_equal(video.read([i])[0], expected[i], err_msg=str(i))
    np.testing.assert_array_equal(video.read([31, 2, 17]), expected[[31, 2, 17]])
    assert video.index.keyframes.tolist() == [video.index.pts[0]]
