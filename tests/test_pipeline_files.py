"""The pipeline over real files: bad videos among good ones, formats agree."""

import logging

import av
import numpy as np
import pytest
from absl import flags
from PIL import Image

from siammae_jax.data import pairs, pipeline, prepare, sources, synthetic
from siammae_jax.data.video import BadVideoError

SIZE = (48, 64)
FRAMES = 20
NUM_GOOD = 5
SAMPLER = pairs.PairSampler(size=16, min_gap=4, max_gap=8, repeats=2)


def _write_mp4(path, frames, gop=6):
    """H.264 yuv420p at 30 fps with a keyframe every ``gop`` frames."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "x264-params": f"keyint={gop}:min-keyint={gop}"}
        for frame in frames:
            container.mux(
                stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24"))
            )
        container.mux(stream.encode())


@pytest.fixture(autouse=True, scope="module")
def _parsed_flags():
    # grain worker processes read absl flags; outside absl.app.run mark them parsed.
    flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="module")
def good_videos():
    """Frames of the good videos, uint8 [NUM_GOOD, FRAMES, H, W, 3]."""
    return np.stack(
        [synthetic.make_video(3, i, FRAMES, SIZE).frames for i in range(NUM_GOOD)]
    )


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, good_videos):
    """Good mp4s plus a corrupt, an empty and a too-short one; the bad paths."""
    folder = tmp_path_factory.mktemp("mixed")
    for i, frames in enumerate(good_videos):
        _write_mp4(folder / f"good_{i}.mp4", frames)
    bad = {
        "corrupt": folder / "corrupt.mp4",
        "empty": folder / "empty.mp4",
        "short": folder / "short.mp4",
    }
    bad["corrupt"].write_bytes(np.random.default_rng(0).bytes(4096))
    bad["empty"].write_bytes(b"")
    _write_mp4(bad["short"], good_videos[0, :2])  # 2 frames < min_gap 4
    return folder, {k: str(v) for k, v in bad.items()}


def test_bad_files_are_skipped_counted_and_logged(mixed_folder, caplog):
    folder, bad = mixed_folder
    source = sources.VideoFolderSource(folder)
    assert len(source) == NUM_GOOD + 3
    for path in bad.values():  # each one is bad for its own reason
        with pytest.raises(BadVideoError):
            SAMPLER(source[source.paths.index(path)], np.random.default_rng(0))
    kw = dict(batch_size=4, sampler=SAMPLER, seed=0, num_epochs=1)
    with caplog.at_level(logging.WARNING):
        batches = list(pipeline.make_pipeline(source, **kw))

    assert len(batches) == len(source) // 2  # every record still yields 2 pairs
    assert sum(int(b["skipped"]) for b in batches) == 3
    bad_indices = {source.paths.index(p) for p in bad.values()}
    used = {int(v) for b in batches for v in b["video"]}
    assert used.isdisjoint(bad_indices)
    assert used == set(range(len(source))) - bad_indices
    logged = [
        r.getMessage() for r in caplog.records if "skipping video" in r.getMessage()
    ]
    assert len(logged) == 3
    assert sorted(m.split()[2].rstrip(":") for m in logged) == sorted(bad.values())
    assert any("too short" in m for m in logged if bad["short"] in m)

    # Every pair is the crop and flip of its own good video's decoded frames.
    for batch in batches:
        for frames, video, indices, crop, flip in zip(
            batch["frames"],
            batch["video"],
            batch["indices"],
            batch["crop"],
            batch["flip"],
            strict=True,
        ):
            decoded = source[int(video)].read(indices.tolist())
            for k in range(2):
                expected = SAMPLER.crop_resize(decoded[k], crop, bool(flip))
                np.testing.assert_array_equal(frames[k], expected)
            assert indices[0] < indices[1]

    # Worker processes (the sources pickled into them) skip the same videos.
    in_workers = list(pipeline.make_pipeline(source, num_workers=2, **kw))
    assert len(in_workers) == len(batches)
    for a, b in zip(batches, in_workers, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def _write_frame_folders(root, videos):
    for i, frames in enumerate(videos):
        folder = root / f"video_{i}"
        folder.mkdir(parents=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=95)


def test_frame_folders_and_array_record_give_the_same_pairs(tmp_path, good_videos):
    _write_frame_folders(tmp_path / "frames", good_videos)
    prepare.prepare(
        tmp_path / "frames",
        tmp_path / "records",
        short_side=None,
        format="frames",
        progress=False,
    )
    kw = dict(batch_size=4, sampler=SAMPLER, seed=7, num_epochs=2)
    folders = list(
        pipeline.make_pipeline(sources.FrameFolderSource(tmp_path / "frames"), **kw)
    )
    records = list(
        pipeline.make_pipeline(sources.ArrayRecordSource(tmp_path / "records"), **kw)
    )
    assert len(folders) == len(records) == 2 * NUM_GOOD * 2 // 4
    for a, b in zip(folders, records, strict=True):
        for key in ("indices", "crop", "flip", "video", "skipped"):
            np.testing.assert_array_equal(a[key], b[key])
        # JPEG quality 95, then decoded and re-encoded at quality 90 by prepare.
        diff = np.abs(a["frames"].astype(int) - b["frames"].astype(int))
        assert diff.mean() < 3, diff.mean()
    # The same pairs are also those of the source frames (up to JPEG error).
    batch = folders[0]
    for r in range(len(batch["video"])):
        frames = good_videos[batch["video"][r]][batch["indices"][r]]
        for k in range(2):
            expected = SAMPLER.crop_resize(
                frames[k], batch["crop"][r], batch["flip"][r]
            )
            diff = np.abs(batch["frames"][r, k].astype(int) - expected.astype(int))
            assert diff.mean() < 3, diff.mean()
