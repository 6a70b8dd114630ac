"""Tests of the synthetic data set: determinism, layouts on disk, exact motion."""

import json
import subprocess
import sys

import av
import numpy as np
import pytest
import scipy.io
from PIL import Image
from scipy import ndimage

from siammae_jax.data import synthetic

# Non-square on purpose, so a swapped height and width shows.
SIZE = (32, 48)
FRAMES = 6


@pytest.fixture(scope="module")
def video():
    """Video 0 of seed 0 at the CLI defaults (24 frames, 64x64)."""
    return synthetic.make_video(0, 0)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A set of 3 small videos written in-process, with its summary."""
    out = tmp_path_factory.mktemp("synthetic") / "set"
    summary = synthetic.write_dataset(out, 3, FRAMES, SIZE, seed=0, progress=False)
    return out, summary


def _grid(size):
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    return np.stack([yy, xx], -1).astype(np.float64)


def _bilinear(image, yx):
    """Independent bilinear sampling of an [H, W, 3] image at [N, 2] points."""
    return np.stack(
        [ndimage.map_coordinates(image[..., c], yx.T, order=1) for c in range(3)], -1
    )


def test_deterministic_and_seed_dependent():
    a = synthetic.make_video(3, 1, FRAMES, SIZE)
    b = synthetic.make_video(3, 1, FRAMES, SIZE)
    for field in ("frames", "labels", "parts", "keypoints", "affine", "depth_order"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.frames, synthetic.make_video(4, 1, FRAMES, SIZE).frames)
    assert not np.array_equal(a.frames, synthetic.make_video(3, 2, FRAMES, SIZE).frames)
    shorter = synthetic.make_video(3, 1, 3, SIZE)  # a prefix of the longer video
    np.testing.assert_array_equal(shorter.frames, a.frames[:3])
    np.testing.assert_array_equal(shorter.affine, a.affine[:3])


def test_the_first_held_out_set_never_changes():
    """Seed 1 at 64 px is a frozen held-out set (BENCHMARKS.md): its random
    draws (photos, shapes, the keypoint carrier) are pinned here, as drawn
    before styles existed."""
    want = [
        (("camera", "camera", "immunohistochemistry", "immunohistochemistry"),
         ("blob", "polygon", "blob"), 1),
        (("camera", "moon", "camera"), ("ellipse", "blob"), 2),
        (("brick", "grass", "coffee", "brick"), ("ellipse", "blob", "blob"), 1),
        (("immunohistochemistry", "grass", "immunohistochemistry"),
         ("blob", "polygon"), 2),
    ]  # fmt: skip
    for index, (sources, kinds, person) in enumerate(want):
        v = synthetic.make_video(1, index, 24, (64, 64))
        assert (v.sources, v.kinds, v.person) == (sources, kinds, person), index


def _median_speed(video) -> float:
    """Median displacement of frame 0's visible pixels per frame, to frame 6."""
    yx = _grid((64, 64)).reshape(-1, 2)
    moved, visible = synthetic.true_position(video, 0, 6, yx)
    return float(np.median(np.linalg.norm(moved - yx, axis=-1)[visible])) / 6


def test_the_unseen_style_has_other_photos_and_faster_motion():
    from siammae_jax.data import synthetic_videos

    default = [synthetic.make_video(2, i, 8, (64, 64)) for i in range(6)]
    unseen = [synthetic.make_video(2, i, 8, (64, 64), "unseen") for i in range(6)]
    seen_photos = set(synthetic_videos.PHOTOS)
    assert all(not set(v.sources) & seen_photos for v in unseen)
    assert all(set(v.sources) <= seen_photos for v in default)
    slow = max(_median_speed(v) for v in default)
    fast = min(_median_speed(v) for v in unseen)
    assert fast > slow, (fast, slow)  # every unseen video moves faster
    with pytest.raises(ValueError, match="style 'noir'"):
        synthetic.make_video(0, 0, 2, (64, 64), "noir")


def test_video_contents(video):
    t, (h, w) = 24, (64, 64)
    k = len(video.kinds)
    assert 2 <= k <= 4 and video.name == "synth_0000"
    assert video.frames.shape == (t, h, w, 3) and video.frames.dtype == np.uint8
    assert video.labels.shape == video.parts.shape == (t, h, w)
    assert video.keypoints.shape == (t, 15, 2)
    assert video.affine.shape == (t, k + 1, 2, 3)
    assert sorted(video.depth_order[0]) == list(range(1, k + 1))
    assert video.frames.std() > 10  # textured, not flat


def test_every_object_visible_in_frame_0_and_one_uses_the_background_photo():
    for index in range(8):
        v = synthetic.make_video(0, index, 1)
        assert set(np.unique(v.labels[0])) == set(range(len(v.kinds) + 1))
        assert v.sources[0] in v.sources[1:], (index, v.sources)


def test_large_size_renders():
    v = synthetic.make_video(0, 0, frames=2, size=(480, 880))
    assert v.frames.shape == (2, 480, 880, 3)
    assert set(np.unique(v.labels[0])) == set(range(len(v.kinds) + 1))


def test_parts_follow_the_objects(video):
    assert video.parts.max() <= 19
    np.testing.assert_array_equal(video.parts == 0, video.labels == 0)
    assert len(np.unique(video.parts)) > 2 * len(video.kinds)


def test_true_position_identity(video):
    yx = _grid((64, 64))
    yx_to, visible = synthetic.true_position(video, 5, 5, yx)
    np.testing.assert_allclose(yx_to, yx, atol=1e-9)
    assert visible.all()
    with pytest.raises(ValueError, match="inside"):
        synthetic.true_position(video, 0, 1, np.array([[-3.0, 2.0]]))


def _interior(labels, radius=2):
    """Pixels whose (2 radius + 1)^2 neighbourhood has one label."""
    size = 2 * radius + 1
    lo = ndimage.minimum_filter(labels, size, mode="nearest")
    hi = ndimage.maximum_filter(labels, size, mode="nearest")
    return lo == hi


@pytest.mark.parametrize("t_from, t_to", [(0, 7), (3, 23), (20, 2)])
def test_true_position_follows_labels_and_texture(video, t_from, t_to):
    yx = _grid((64, 64))
    yx_to, visible = synthetic.true_position(video.motion(), t_from, t_to, yx)
    target = np.rint(yx_to).astype(int)
    # Visible pixels keep their label; `visible` is False exactly off-frame or behind.
    lab_from = video.labels[t_from]
    lab_to = video.labels[t_to][
        np.clip(target[..., 0], 0, 63), np.clip(target[..., 1], 0, 63)
    ]
    np.testing.assert_array_equal(lab_to[visible], lab_from[visible])
    # Colour at the true position matches, away from label edges in both frames.
    keep = visible & _interior(lab_from)
    keep &= _interior(video.labels[t_to])[
        np.clip(target[..., 0], 0, 63), np.clip(target[..., 1], 0, 63)
    ]
    assert keep.sum() > 500  # enough pixels seen in both frames (20-frame gaps too)
    src = video.frames[t_from].astype(np.float64)[keep]
    dst = _bilinear(video.frames[t_to].astype(np.float64), yx_to[keep])
    diff = np.abs(dst - src).mean(-1)
    shuffled = np.abs(src - np.random.default_rng(0).permutation(dst)).mean(-1)
    assert np.median(diff) < 6 and np.median(diff) < 0.4 * np.median(shuffled)


def test_background_follows_the_pan(video):
    yx = _grid((64, 64))
    background = video.labels[2] == 0
    yx_to, visible = synthetic.true_position(video, 2, 14, yx[background])
    shift = yx_to - yx[background]
    pan = video.affine[14, 0, :, 2] - video.affine[2, 0, :, 2]
    np.testing.assert_allclose(shift, np.broadcast_to(pan, shift.shape), atol=1e-9)
    assert np.hypot(*pan) > 1.0
    assert 0.3 < visible.mean() < 1.0  # some leave the frame or go behind objects
    src = video.frames[2].astype(np.float64)[background][visible]
    dst = _bilinear(video.frames[14].astype(np.float64), yx_to[visible])
    assert np.median(np.abs(dst - src)) < 6


def test_keypoints_move_with_the_person(video):
    xy0 = video.keypoints[0].astype(np.float64)
    assert (
        video.labels[0][tuple(np.rint(xy0[:, ::-1]).astype(int).T)] == video.person
    ).all()
    for t in (5, 23):
        yx_to, _ = synthetic.true_position(video, 0, t, xy0[:, ::-1])
        np.testing.assert_allclose(yx_to[:, ::-1], video.keypoints[t], atol=1e-3)
    spread = video.keypoints[0].max(0) - video.keypoints[0].min(0)
    assert np.all(spread > 5)


def test_occlusion_happens(video):
    """Some object pixels of frame 0 end up in frame behind a nearer object."""
    rank = np.zeros(len(video.kinds) + 1, int)  # position in the depth order
    rank[video.depth_order[0]] = np.arange(1, len(video.kinds) + 1)
    yx = _grid((64, 64))
    objects = video.labels[0] > 0
    occluded = 0
    for t in range(1, 24):
        yx_to, visible = synthetic.true_position(video, 0, t, yx[objects])
        target = np.rint(yx_to).astype(int)
        inside = np.all((target >= 0) & (target < 64), -1)
        over = video.labels[t][tuple(target[inside].T)]
        under = video.labels[0][objects][inside]
        in_front = (over > 0) & (rank[over] > rank[under])
        assert not np.any(visible[inside] & in_front)
        occluded += in_front.sum()
    assert occluded > 50


def test_davis_layout(written):
    out, summary = written
    davis = out / "DAVIS"
    names = (davis / "ImageSets" / "2017" / "val.txt").read_text().split()
    assert names == summary["names"] == ["synth_0000", "synth_0001", "synth_0002"]
    assert (davis / "ImageSets" / "2017" / "train.txt").read_text() == ""
    palette = np.array(
        Image.open(davis / "Annotations/480p/synth_0000/00000.png").getpalette()
    )
    assert palette.reshape(-1, 3)[:5].tolist() == [
        [0, 0, 0],
        [128, 0, 0],
        [0, 128, 0],
        [128, 128, 0],
        [0, 0, 128],
    ]
    assert len(palette) == 768
    for name in names:
        pngs = sorted(p.name for p in (davis / "Annotations/480p" / name).iterdir())
        jpgs = sorted(p.name for p in (davis / "JPEGImages/480p" / name).iterdir())
        assert pngs == [f"{t:05d}.png" for t in range(FRAMES)]
        assert jpgs == [p.replace(".png", ".jpg") for p in pngs]
        video = synthetic.make_video(0, int(name[-4:]), FRAMES, SIZE)
        for t in (0, FRAMES - 1):
            png = Image.open(davis / "Annotations/480p" / name / f"{t:05d}.png")
            assert png.mode == "P" and png.size == (SIZE[1], SIZE[0])
            np.testing.assert_array_equal(np.array(png), video.labels[t])
        ids = np.unique(
            np.array(Image.open(davis / "Annotations/480p" / name / "00000.png"))
        )
        assert ids.tolist() == list(range(len(video.kinds) + 1))


def test_mp4_decodes_close_to_the_frames(written):
    out, _ = written
    video = synthetic.make_video(0, 1, FRAMES, SIZE)
    with av.open(str(out / "videos" / "synth_0001.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 30
        decoded = np.stack(
            [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        )
    assert decoded.shape == (FRAMES, *SIZE, 3)
    mse = np.mean((decoded.astype(np.float64) - video.frames) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30
    jpeg = np.array(Image.open(out / "frames" / "synth_0001" / "00003.jpg"))
    assert (
        jpeg.shape == (*SIZE, 3)
        and np.abs(jpeg - video.frames[3].astype(float)).mean() < 4
    )


def test_jhmdb_layout(written):
    out, summary = written
    jhmdb = out / "JHMDB"
    lines = []
    for kind, names in summary["classes"].items():
        split = (jhmdb / "splits" / f"{kind}_test_split1.txt").read_text().splitlines()
        assert split == [f"{n}.avi 2" for n in names]
        lines += split
    assert len(lines) == 3
    video = synthetic.make_video(0, 2, FRAMES, SIZE)
    kind = video.kinds[video.person - 1]
    mat = scipy.io.loadmat(
        jhmdb / "joint_positions" / kind / "synth_0002" / "joint_positions.mat"
    )
    assert mat["pos_img"].shape == (2, 15, FRAMES)
    np.testing.assert_allclose(
        mat["pos_img"], video.keypoints.transpose(2, 1, 0) + 1, atol=1e-5
    )
    frames = sorted(
        p.name for p in (jhmdb / "Rename_Images" / kind / "synth_0002").iterdir()
    )
    assert frames == [f"{t:05d}.png" for t in range(1, FRAMES + 1)]
    first = np.array(
        Image.open(jhmdb / "Rename_Images" / kind / "synth_0002" / "00001.png")
    )
    np.testing.assert_array_equal(first, video.frames[0])  # PNG is lossless


def test_vip_layout(written):
    out, summary = written
    vip = out / "VIP"
    assert (vip / "lists" / "val_videos.txt").read_text().split() == summary["names"]
    video = synthetic.make_video(0, 0, FRAMES, SIZE)
    for t in range(FRAMES):
        png = Image.open(vip / "Category_ids" / "synth_0000" / f"{t:05d}.png")
        assert png.mode == "L"
        np.testing.assert_array_equal(np.array(png), video.parts[t])
        assert (vip / "Images" / "synth_0000" / f"{t:05d}.jpg").is_file()


def test_motion_file_round_trip(written):
    out, _ = written
    video = synthetic.make_video(0, 2, FRAMES, SIZE)
    with np.load(out / "motion" / "synth_0002.npz") as motion:
        np.testing.assert_array_equal(motion["affine"], video.affine)
        np.testing.assert_array_equal(motion["labels"], video.labels)
        assert motion["sources"].tolist() == list(video.sources)
        yx = np.array([[3.0, 4.0], [20.5, 30.25]])
        got = synthetic.true_position(motion, 0, 5, yx)
    want = synthetic.true_position(video, 0, 5, yx)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_rewrites_a_previous_set_and_refuses_other_folders(tmp_path):
    out = tmp_path / "set"
    synthetic.write_dataset(out, 2, 2, SIZE, progress=False)
    synthetic.write_dataset(out, 1, 2, SIZE, progress=False)  # replaces the old set
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["synth_0000.mp4"]
    assert json.loads((out / "synthetic.json").read_text())["names"] == ["synth_0000"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="--out"):
        synthetic.write_dataset(other, 1, 2, SIZE, progress=False)
    assert (other / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--size", "64"], "--size"),
        (["--size", "63x64"], "--size"),
        (["--videos", "0"], "--videos"),
        (["--frames", "-2"], "--frames"),
        (["--seed", "x"], "--seed"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path / "x"), *argv])
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_rejects_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "data.bin").write_bytes(b"x")
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path)])
    assert "--out" in capsys.readouterr().err


def test_cli_writes_every_layout(tmp_path, written):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "siammae_jax.data.synthetic", "--out", str(out)]
    cmd += ["--videos", "2", "--frames", str(FRAMES), "--size", "32x48", "--seed", "0"]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Wrote 2 synthetic videos" in result.stdout
    for folder in ("videos", "frames", "DAVIS", "JHMDB", "VIP", "motion"):
        assert (out / folder).is_dir(), folder
    # Video 1 does not depend on how many videos are written (2 here, 3 in `written`).
    with (
        np.load(out / "motion/synth_0001.npz") as a,
        np.load(written[0] / "motion/synth_0001.npz") as b,
    ):
        np.testing.assert_array_equal(a["affine"], b["affine"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
    same = (out / "frames/synth_0001/00004.jpg").read_bytes()
    assert same == (written[0] / "frames/synth_0001/00004.jpg").read_bytes()
