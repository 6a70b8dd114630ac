"""siammae_jax.eval.baselines: the trivial features and the grid ceiling that
BENCHMARKS.md and the demo print beside an encoder's J&F."""

import numpy as np
import pytest

from siammae_jax.configs import siammae as siammae_config
from siammae_jax.data import synthetic
from siammae_jax.eval import baselines


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("set")
    synthetic.write_dataset(
        root, videos=2, frames=4, size=(32, 32), seed=1, progress=False
    )
    return root / "DAVIS"


def _cfg(short_side=32):
    cfg = siammae_config.get_config("tiny").eval.davis
    cfg.short_side = short_side
    return cfg


def test_patch_features_are_normalised_colours_and_pixels():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 16, 24, 3), np.uint8)
    colour = baselines.patch_features(frames, 8, mean_only=True)
    assert colour.shape == (2, 2, 3, 3)
    block = frames[1, 8:16, 16:24].reshape(-1, 3).mean(0) / 255.0
    np.testing.assert_allclose(
        colour[1, 1, 2], block / np.linalg.norm(block), rtol=1e-5
    )
    pixels = baselines.patch_features(frames, 8, mean_only=False)
    assert pixels.shape == (2, 2, 3, 192)
    np.testing.assert_allclose(np.linalg.norm(pixels, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(pixels.mean(-1), 0.0, atol=1e-6)


def test_the_grid_ceiling_is_the_truth_at_one_pixel_patches(davis_root, tmp_path):
    row = baselines.grid_ceiling(davis_root, tmp_path / "p1", 1, _cfg())
    assert row["J&F-Mean"] == pytest.approx(1.0)
    coarse = baselines.grid_ceiling(davis_root, tmp_path / "p8", 8, _cfg())
    assert 0.0 < coarse["J&F-Mean"] < 1.0


def test_the_first_mask_baseline_scores_a_still_copy(davis_root, tmp_path):
    row = baselines.first_mask(davis_root, tmp_path / "first", _cfg())
    # The objects move, so a still copy is wrong somewhere but right in part.
    assert 0.0 < row["J&F-Mean"] < 1.0
    assert (
        row["J&F-Mean"]
        < baselines.grid_ceiling(davis_root, tmp_path / "p1", 1, _cfg())["J&F-Mean"]
    )
