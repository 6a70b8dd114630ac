"""Crop pairs (``data.pairs=crops``, CropMAE) and still-image sources (issue 28).

The geometry is checked against an independent computation: images whose red
and green channels are their own x and y coordinates, so every pixel of a view
says where in the image it came from.
"""

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import av
import ml_collections
import numpy as np
import pytest
from absl import flags
from fake_videos import ListSource
from PIL import Image

from siammae_jax.configs import siammae as siammae_config
from siammae_jax.data import images, pairs, pipeline, spec
from siammae_jax.data.video import BadVideoError, Video, write_mp4
from siammae_jax.train import config as config_lib

SIZE = 32
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _parsed_flags():
    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags


def _ramp(height=200, width=240, blue=0):
    """uint8 image: red = x, green = y, blue constant (the image's id)."""
    y, x = np.mgrid[:height, :width]
    return np.stack([x, y, np.full_like(x, blue)], axis=-1).astype(np.uint8)


class _Frames(Video):
    """A video of the given uint8 frames [T, H, W, 3]."""

    def __init__(self, frames):
        self.path, self.frames = "ramps", frames
        self.num_frames, self.fps = len(frames), 30.0

    def read(self, indices):
        return self.frames[list(indices)]


# ---------------------------------------------------------------- geometry


def _torchvision_box(rng, height, width, scale, ratio):
    """RandomResizedCrop's draw, written out from torchvision's make_params."""
    for _ in range(10):
        area = height * width * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(area * aspect)))
        h = int(round(math.sqrt(area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return (
                int(rng.integers(0, height - h + 1)),
                int(rng.integers(0, width - w + 1)),
                h,
                w,
            )
    raise AssertionError("these tests draw boxes that fit within 10 tries")


def _source_coords(view_size, box):
    """Pixel-centre coordinates (rows, cols) in the cropped frame of a view of
    ``box`` resized to ``view_size``: half-pixel centres, as every resampler."""
    top, left, h, w = box
    centres = np.arange(view_size) + 0.5
    return top + centres * h / view_size - 0.5, left + centres * w / view_size - 0.5


def test_views_are_the_hand_computed_crops():
    """Same draws by hand: f1's box in the image, f2's box in f1, the two
    flips (in that order); every interior pixel of f1 and f2 holds the image
    coordinates that the boxes put there (f2 through f1)."""
    sampler = pairs.CropSampler(size=SIZE, repeats=1)
    image = _ramp()
    seen_flips = set()
    for seed in range(40):
        out = sampler(_Frames(image[None]), np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        assert rng.integers(0, 1, 1)[0] == 0  # the frame draw
        outer = _torchvision_box(rng, 200, 240, (0.1, 1.0), (3 / 4, 4 / 3))
        inner = _torchvision_box(rng, SIZE, SIZE, (0.3, 0.6), (3 / 4, 4 / 3))
        flips = (rng.random() < 0.5, rng.random() < 0.5)
        assert out["crop"][0].tolist() == [list(outer), list(inner)]
        assert out["flip"][0].tolist() == list(flips)
        seen_flips.add(flips)
        rows1, cols1 = _source_coords(SIZE, outer)
        rows2, cols2 = _source_coords(SIZE, inner)  # in f1's pixels
        f1_rows, f1_cols = rows1, cols1
        # f2's pixels in the image: through f1's linear map.
        scale_r, scale_c = outer[2] / SIZE, outer[3] / SIZE
        f2_rows = outer[0] + (rows2 + 0.5) * scale_r - 0.5
        f2_cols = outer[1] + (cols2 + 0.5) * scale_c - 0.5
        for k, (r, c) in enumerate([(f1_rows, f1_cols), (f2_rows, f2_cols)]):
            view = out["frames"][0, k].astype(float)
            if flips[k]:
                view = view[:, ::-1]
            inside = slice(2, SIZE - 2)  # away from the edges' clamped filters
            np.testing.assert_allclose(
                view[inside, inside, 0],
                np.broadcast_to(c, (SIZE, SIZE))[inside, inside],
                atol=1.5,
                err_msg=f"seed {seed} view {k} columns",
            )
            np.testing.assert_allclose(
                view[inside, inside, 1],
                np.broadcast_to(r[:, None], (SIZE, SIZE))[inside, inside],
                atol=1.5,
                err_msg=f"seed {seed} view {k} rows",
            )
    assert len(seen_flips) == 4  # each view flips on its own


def test_crop_bounds_and_f2_inside_f1_over_many_draws():
    """Over 3000 draws on wide, tall and square images: f1's box lies in the
    image with area and aspect in range, f2's box in f1 likewise, so f2 covers
    only image pixels that f1 covers; areas reach both ends of their ranges."""
    sampler = pairs.CropSampler(size=SIZE, scale=(0.2, 1.0), local_scale=(0.3, 0.6))
    rng = np.random.default_rng(0)
    f1_areas, f2_areas = [], []
    for height, width in [(120, 300), (300, 120), (160, 160)] * 1000:
        frame = np.zeros((height, width, 3), np.uint8)
        _, (outer, inner), _ = sampler.views(frame, rng)
        top, left, h, w = outer
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        fits = 0.2 * height * width * 0.97 <= h * w <= height * width
        fallback = (h, w) in {
            (height, round(height * 4 / 3)),
            (round(width * 4 / 3), width),
        }
        assert fits or fallback, (height, width, outer)
        if fits:
            assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
            f1_areas.append(h * w / (height * width))
        top, left, h, w = inner
        assert 0 <= top and top + h <= SIZE and 0 <= left and left + w <= SIZE
        assert 0.3 * 0.9 <= h * w / SIZE**2 <= 0.6 * 1.1
        assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15  # 32-px rounding
        f2_areas.append(h * w / SIZE**2)
    assert min(f1_areas) < 0.25 and max(f1_areas) > 0.95
    assert min(f2_areas) < 0.33 and max(f2_areas) > 0.57


def test_pairs_of_a_video_take_both_views_from_one_frame():
    """Crops of a video: each pair's frame uniform over the video, both views
    from it (the blue channel names the frame)."""
    frames = np.stack([_ramp(48, 64, blue=10 * t) for t in range(12)])
    sampler = pairs.CropSampler(size=16, repeats=3)
    rng = np.random.default_rng(1)
    seen = []
    for _ in range(100):
        out = sampler(_Frames(frames), rng)
        assert (out["indices"][:, 0] == out["indices"][:, 1]).all()
        for r in range(3):
            blue = out["frames"][r, :, :, :, 2]
            assert (blue == 10 * out["indices"][r, 0]).all()
        seen.extend(out["indices"][:, 0].tolist())
    assert sorted(set(seen)) == list(range(12))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(local_scale=(0.6, 0.3)), "local_scale"),
        (dict(local_scale=(0.3, 1.2)), "local_scale"),
        (dict(local_ratio=(0.0, 1.0)), "local_ratio"),
        (dict(scale=(0.0, 1.0)), "scale"),
        (dict(repeats=0), "repeats"),
        (dict(size=0), "size"),
    ],
)
def test_bad_crop_sampler(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pairs.CropSampler(**kwargs)


# ----------------------------------------------------------------- sources


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _xwd(path, array):
    """An X window dump: a picture Pillow cannot read and FFmpeg can."""
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("xwd", rate=1)
        stream.height, stream.width = array.shape[:2]
        stream.pix_fmt = "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(array, "rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    """An ImageNet-like tree: class folders of jpg/png/webp (any suffix case),
    a bmp and an xwd to probe, a text file, a video (and one named .bin), a
    corrupt png, junk."""
    root = tmp_path_factory.mktemp("images")
    arrays = {}
    names = ["n01/a.png", "n01/b.JPEG", "n02/c.webp", "n02/d.PNG", "n03/e.bmp"]
    for i, name in enumerate(names):
        arrays[name] = _ramp(40, 48, blue=20 * (i + 1))
        _write(root / name, arrays[name])
    arrays["n03/f.xwd"] = _ramp(40, 48, blue=120)
    _xwd(root / "n03/f.xwd", arrays["n03/f.xwd"])
    (root / "n03/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "labels.txt").write_text("n01\nn02\n")
    (root / "n03/junk.dat").write_bytes(b"\x00\x01junk" * 50)
    write_mp4(root / "clip.mp4", np.zeros((3, 32, 32, 3), np.uint8))
    (root / "n03/clip.bin").write_bytes((root / "clip.mp4").read_bytes())
    return root, arrays


def test_image_folder_lists_probes_and_skips(image_tree, caplog):
    root, arrays = image_tree
    with caplog.at_level(logging.WARNING):
        source = images.ImageFolderSource(root)
    want = sorted([*arrays, "n03/broken.png"])
    assert [str(Path(p).relative_to(root)) for p in source.paths] == want
    skipped = {str(Path(p).relative_to(root)): r for p, r in source.skipped}
    assert skipped == {
        "labels.txt": "not an image (.txt)",
        "clip.mp4": "a video file, not an image (data.format=video)",
        "n03/junk.dat": "not an image: Pillow: unknown format; PyAV: End of file",
        "n03/clip.bin": "a video, not an image (data.format=video)",
    }
    assert "junk.dat" in caplog.text  # a probed file left out is logged
    assert source.report() == "images: 11 files, 7 usable, 4 skipped"
    for i, path in enumerate(source.paths):
        name = str(Path(path).relative_to(root))
        image = source[i]
        assert (image.num_frames, image.fps) == (1, 30.0)
        if name == "n03/broken.png":
            with pytest.raises(BadVideoError, match="cannot decode image"):
                image.read([0])
            continue
        got = image.read([0, 0])
        assert got.shape == (2, 40, 48, 3)
        want = arrays[name]
        if name.endswith((".JPEG", ".webp")):  # lossy: as Pillow decodes the file
            want = np.asarray(Image.open(root / name).convert("RGB"))
        np.testing.assert_array_equal(got[0], want, err_msg=name)


def test_check_leaves_out_undecodable_images(image_tree):
    root, _ = image_tree
    source = spec.open(spec.DataSpec(format="images", path=str(root), check_videos=100))
    assert len(source) == 6 and source.stills
    assert any(p.endswith("broken.png") for p, _ in source.skipped)
    with pytest.raises(ValueError, match="no image"):
        images.ImageFolderSource(root / "n03" / "junk.dat")


def _pipe(source, **kw):
    kw = {"batch_size": 4, "sampler": pairs.CropSampler(size=16, repeats=2), **kw}
    return pipeline.make_pipeline(source, seed=0, **kw)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory):
    """Eight PNG images, the blue channel of image i is 10 (i + 1)."""
    root = tmp_path_factory.mktemp("clean")
    for i in range(8):
        _write(root / f"{i:02d}.png", _ramp(36, 44, blue=10 * (i + 1)))
    return root


def test_pipeline_pairs_come_from_one_image(clean_tree):
    source = images.ImageFolderSource(clean_tree)
    batches = list(_pipe(source, num_epochs=2))
    assert len(batches) == 8  # 2 epochs x 8 images x 2 pairs / 4
    for batch in batches:
        assert batch["frames"].shape == (4, 2, 16, 16, 3)
        assert batch["crop"].shape == (4, 2, 4) and batch["flip"].shape == (4, 2)
        blue = batch["frames"][..., 2].reshape(4, -1)
        assert (blue == 10 * (batch["video"][:, None] + 1)).all()
    videos = np.concatenate([b["video"][::2] for b in batches])
    assert sorted(videos[:8]) == list(range(8)) == sorted(videos[8:])


def test_crop_pipeline_same_seed_same_batches_and_resumes(clean_tree):
    source = images.ImageFolderSource(clean_tree)
    plain = _take(iter(_pipe(source)), 4)
    _assert_same(plain, _take(iter(_pipe(source)), 4))
    _assert_same(plain, _take(iter(_pipe(source, num_workers=2)), 4))
    other = _take(
        iter(
            pipeline.make_pipeline(
                source,
                batch_size=4,
                seed=1,
                sampler=pairs.CropSampler(size=16, repeats=2),
            )
        ),
        4,
    )
    assert not np.array_equal(plain[0]["frames"], other[0]["frames"])
    it = iter(_pipe(source))
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 4)
    fresh = iter(_pipe(source))
    fresh.set_state(state)
    _assert_same(expected, _take(fresh, 4))


def test_crop_pairs_of_videos_are_keyed_by_record_position():
    """Crops of video frames through the pipeline: each record's pairs are
    the sampler's with ``default_rng([seed, position])``, frame draw included,
    so the same seed gives the same batches."""
    source = ListSource(6)
    sampler = pairs.CropSampler(size=16, repeats=2)
    batches = list(_pipe(source, num_epochs=2, sampler=sampler))
    _assert_same(batches, list(_pipe(source, num_epochs=2, sampler=sampler)))
    for position, (batch, pair) in enumerate(
        (b, p) for b in batches for p in range(0, 4, 2)
    ):
        want = sampler(
            source[int(batch["video"][pair])], np.random.default_rng([0, position])
        )
        for key in ("frames", "indices", "crop", "flip"):
            np.testing.assert_array_equal(batch[key][pair : pair + 2], want[key])
    frames = np.concatenate([b["indices"][:, 0] for b in batches])
    assert len(set(frames.tolist())) > 10  # frames drawn over the videos


def test_frame_pairs_of_still_images_are_refused(clean_tree):
    source = images.ImageFolderSource(clean_tree)
    with pytest.raises(ValueError, match="data.pairs=crops"):
        pipeline.make_pipeline(source, batch_size=4, sampler=pairs.PairSampler())


# ------------------------------------------------------------------- TFDS


def _tiny_tfds(data_dir):
    """A TFDS dataset of 6 PNG images with an ``image`` feature, built here
    (no download), and one of 2 videos with a ``frames`` feature."""
    import tensorflow_datasets as tfds

    class _Tiny(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        FEATURES = {}

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(self.FEATURES)
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

    class SiammaeTestImages(_Tiny):
        FEATURES = {
            "image": tfds.features.Image(encoding_format="png"),
            "file_name": tfds.features.Text(),
        }

        def _generate_examples(self):
            for i in range(6):
                image = _ramp(36, 44, blue=10 * (i + 1))
                yield i, {"image": image, "file_name": f"{i}.png"}

    class SiammaeTestFrames(_Tiny):
        FEATURES = {"frames": tfds.features.Sequence(tfds.features.Image())}

        def _generate_examples(self):
            for i in range(2):
                yield i, {"frames": np.zeros((3, 8, 8, 3), np.uint8)}

    for builder in (SiammaeTestImages, SiammaeTestFrames):
        builder(
            data_dir=str(data_dir), file_format="array_record"
        ).download_and_prepare()


def test_tfds_image_dataset_trains_on_crops(tmp_path):
    _tiny_tfds(tmp_path)
    assert images.tfds_has_images("siammae_test_images", str(tmp_path))
    assert not images.tfds_has_images("siammae_test_frames", str(tmp_path))
    assert not images.tfds_has_images("no_such_dataset_here", str(tmp_path))
    data = spec.DataSpec(
        format="tfds", tfds_name="siammae_test_images", tfds_data_dir=str(tmp_path)
    )
    source = spec.open(data)
    assert isinstance(source, images.TfdsImageSource) and len(source) == 6
    for i in range(6):
        image = source[i]
        blue = int(image.read([0])[0, 0, 0, 2])
        assert image.path.endswith(f"({blue // 10 - 1}.png)")
        np.testing.assert_array_equal(image.read([0])[0], _ramp(36, 44, blue=blue))
    batch = next(iter(_pipe(source)))
    blue = batch["frames"][..., 2].reshape(4, -1)
    assert (blue == blue[:, :1]).all()  # both views of a pair: one image
    with pytest.raises(ValueError, match="data.pairs=crops"):
        pipeline.make_pipeline(source, batch_size=4, sampler=pairs.PairSampler())
    videos = spec.open(
        spec.DataSpec(
            format="tfds", tfds_name="siammae_test_frames", tfds_data_dir=str(tmp_path)
        )
    )
    assert not getattr(videos, "stills", False) and len(videos) == 2


# ----------------------------------------------------------------- configs


def _config(variant="tiny", **data) -> ml_collections.ConfigDict:
    c = siammae_config.get_config(variant)
    c.data.update(data)
    return c


@pytest.mark.parametrize(
    "data, message",
    [
        (dict(pairs="crop"), "data.pairs='crop' must be one of frames, crops"),
        (dict(pairs="", format="images", path="/x"), "data.pairs='' must be one of"),
        (
            dict(format="images", path="/x"),
            "images holds still images.*data.pairs=crops",
        ),
        (dict(format="images", pairs="crops"), "data.format=images needs data.path"),
        (dict(pairs="crops", local_scale=(0.5, 0.2)), "config.data: local_scale"),
        (dict(pairs="crops", local_ratio=(2.0, 1.0)), "config.data: local_ratio"),
    ],
)
def test_config_validation_names_the_field(data, message):
    with pytest.raises(ValueError, match=message):
        config_lib.validate(_config(**data), num_devices=1, num_hosts=1)


def test_samplers_of_configs():
    assert isinstance(config_lib.sampler(_config()), pairs.PairSampler)
    old = _config()
    del old.data["pairs"]  # a config saved before data.pairs: frame pairs
    assert isinstance(config_lib.sampler(old), pairs.PairSampler)
    # cpu_learn on crop pairs of the synthetic frames: one flag.
    learn = _config("cpu_learn", pairs="crops")
    config_lib.validate(learn, num_devices=1, num_hosts=1)
    assert config_lib.sampler(learn) == pairs.CropSampler(
        size=64, scale=(0.5, 1.0), local_scale=(0.3, 0.6), repeats=2
    )


def test_cropmae_config_is_cropmaes_recipe():
    c = _config("cropmae", path="/data/imagenet/train")
    config_lib.validate(c, num_devices=8, num_hosts=1)
    assert config_lib.sampler(c) == pairs.CropSampler(
        size=224,
        scale=(0.1, 1.0),
        ratio=(3 / 4, 4 / 3),
        local_scale=(0.3, 0.6),
        local_ratio=(3 / 4, 4 / 3),
        flip=True,
        repeats=1,
    )
    m, o = c.model, c.optim
    assert (m.encoder, m.mask_ratio, m.visible_rule) == ("S/16", 0.985, "int")
    assert (m.decoder_dim, m.decoder_depth, m.decoder_heads) == (256, 4, 8)
    assert m.norm_pix_loss and (c.data.format, c.data.pairs) == ("images", "crops")
    assert (o.epochs, o.warmup_epochs, o.end_lr, o.weight_decay) == (400, 20, 0, 0.05)
    assert (o.b1, o.b2) == (0.9, 0.95)
    schedule = config_lib.schedule(c, 1_281_167)  # ImageNet's training images
    assert c.batch_size == 2048 and schedule.peak_lr == pytest.approx(8e-4)
    assert schedule.total_steps == round(400 * 1_281_167 / 2048)
    assert schedule.warmup_steps == round(20 * 1_281_167 / 2048)


# -------------------------------------------------------------- end to end

E2E_FLAGS = [
    "--config=configs/siammae.py:tiny",
    "--config.model.encoder=test/8",
    "--config.model.image_size=32",
    "--config.model.decoder_dim=32",
    "--config.model.decoder_depth=2",
    "--config.model.decoder_heads=2",
    "--config.model.mask_ratio=0.75",
    "--config.batch_size=8",
    "--config.data.num_workers=0",
    "--config.train.log_every=1",
    "--config.train.image_every=100",
    "--config.train.measure_every=0",
    "--config.checkpoint.every=4",
    "--config.train.steps=4",
    "--config.data.pairs=crops",
]


def _train(workdir, *flags) -> list[dict]:
    """``python -m siammae_jax.main`` (4 steps, crop pairs); its metrics rows."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    command = [sys.executable, "-m", "siammae_jax.main", f"--workdir={workdir}"]
    proc = subprocess.run(
        command + E2E_FLAGS + list(flags),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(list(losses.values())))
    assert (workdir / "checkpoints" / "4").exists()
    return rows


@pytest.mark.slow
def test_training_on_an_image_folder(tmp_path, image_tree):
    """``python -m siammae_jax.main`` on an image folder with crop pairs: four
    steps, finite losses, the files left out listed at start."""
    root, _ = image_tree
    _train(tmp_path, "--config.data.format=images", f"--config.data.path={root}")
    listing = (tmp_path / "skipped_videos.txt").read_text().splitlines()
    assert listing[0] == "# images: 11 files, 6 usable, 5 skipped: path<TAB>reason"


@pytest.mark.slow
def test_training_on_a_tfds_image_dataset(tmp_path):
    """The same on a prepared TFDS dataset with an ``image`` feature (as
    ``imagenet2012`` is), read in a fresh process from its files alone."""
    _tiny_tfds(tmp_path / "tfds")
    rows = _train(
        tmp_path / "run",
        "--config.data.format=tfds",
        "--config.data.tfds_name=siammae_test_images",
        f"--config.data.tfds_data_dir={tmp_path / 'tfds'}",
    )
    assert rows[-1]["data_skipped"] == 0


def test_model_card_says_what_a_pair_was(tmp_path):
    from siammae_jax.weights import checkpoints

    step = tmp_path / "checkpoints" / "4"
    step.mkdir(parents=True)
    crops = {"path": str(tmp_path), "format": "images", "pairs": "crops"}
    assert checkpoints.describe(step, {"data": crops})["data"]["pairs"] == "crops"
    older = {"path": str(tmp_path), "format": ""}  # saved before data.pairs
    assert checkpoints.describe(step, {"data": older})["data"]["pairs"] == "frames"
