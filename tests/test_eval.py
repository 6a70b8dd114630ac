"""Evaluators: encoders, feature extraction, runners, ideal vs random features."""

import jax
import numpy as np
import pytest
from flax import nnx

from siammae_jax.data import pairs, synthetic
from siammae_jax.datasets import davis, davis_score
from siammae_jax.eval import config as eval_config
from siammae_jax.eval import encoder, propagation, tasks
from siammae_jax.weights import params as weight_params


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    synthetic.write_dataset(out, videos=3, frames=10, size=(32, 48), progress=False)
    return out / "DAVIS"


def test_input_size_rules():
    assert tasks.input_size(480, 854, 16, short_side=480) == (480, 848)
    assert tasks.input_size(480, 854, 16, long_side=880) == (496, 880)
    assert tasks.input_size(240, 320, 16, size=320) == (320, 320)


def test_feature_extractor_matches_model():
    model = encoder.random_encoder("test/8", image_size=32)
    extract = encoder.FeatureExtractor(model, batch_size=4)
    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 40, 3), dtype=np.uint8)
    got = extract(frames)  # 6 frames: one full batch + one padded batch
    want = model.features(jax.numpy.asarray(pairs.normalize(frames)))
    assert got.shape == (6, 4, 5, 32)
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of the patch"):
        extract(frames[:, :30])


def test_wrong_size_parameters_name_the_file():
    small = encoder.random_encoder("test/8", image_size=32)
    params = nnx.to_pure_dict(nnx.state(small, nnx.Param))
    other = weight_params.build_encoder("demo/8", 32)
    with pytest.raises(ValueError, match="weights.ckpt.*wrong shapes"):
        weight_params.set_params(other, params, "weights.ckpt")


def _one_hot_features(labels: np.ndarray, ids, noise: float, seed: int) -> np.ndarray:
    """Per-pixel one-hot of the true object id (+ noise), L2-normalised."""
    feats = (labels[..., None] == np.asarray(ids)).astype(np.float32)
    rng = np.random.default_rng(seed)
    feats = feats + noise * rng.normal(size=feats.shape).astype(np.float32)
    return feats / np.linalg.norm(feats, axis=-1, keepdims=True)


def _score_with(features_fn, davis_root, out) -> dict:
    cfg = propagation.PropagationConfig(topk=7, queue=5, radius=6)
    for seq in davis.read_set(davis_root):
        s = davis.load_sequence(davis_root, seq)
        truth = davis.read_annotations(davis_root, seq)
        ids = np.array((0, *s.object_ids))
        first = (s.first_mask[..., None] == ids).astype(np.float32)
        soft = propagation.propagate(features_fn(truth, ids), first, cfg)
        masks = ids[soft.argmax(-1)].astype(np.uint8)
        davis.write_masks(out, seq, s.frame_names, masks)
    return davis_score.score(davis_root, out, progress=False)[0]


def test_ideal_features_reproduce_ground_truth(davis_root, tmp_path):
    ideal = _score_with(
        lambda truth, ids: _one_hot_features(truth, ids, 0.01, 0),
        davis_root,
        tmp_path / "a",
    )
    rng = np.random.default_rng(1)
    noise = _score_with(
        lambda truth, ids: _one_hot_features(truth, ids, 100.0, int(rng.integers(99))),
        davis_root,
        tmp_path / "b",
    )
    assert ideal["J&F-Mean"] > 0.95
    assert noise["J&F-Mean"] < ideal["J&F-Mean"] - 0.2


def test_davis_runner_writes_official_outputs(davis_root, tmp_path):
    model = encoder.random_encoder("test/8", image_size=32)
    cfg = eval_config.get_config().davis
    cfg.short_side = 32
    scores = tasks.run_davis(
        encoder.FeatureExtractor(model), 8, davis_root, tmp_path, cfg, progress=False
    )
    assert 0.0 <= scores["J&F-Mean"] <= 1.0
    for seq in davis.read_set(davis_root):
        assert len(list((tmp_path / seq).glob("*.png"))) == 10
    assert (tmp_path / "global_results-val.csv").exists()
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 3
    again, _ = davis_score.score(
        davis_root, tmp_path, progress=False
    )  # score-davis alone
    assert again == pytest.approx(scores)


def test_attention_pictures(davis_root, tmp_path):
    from siammae_jax.eval import attention

    model = encoder.random_encoder("test/8", image_size=32)
    frames_dir = davis_root / "JPEGImages" / "480p" / davis.read_set(davis_root)[0]
    frames = attention.read_frames(str(frames_dir), max_frames=5)
    maps = attention.attention_maps(model, frames)
    assert maps.shape == (5, 2, 4, 6)
    # [CLS] attends to itself and the patches: the patch share is at most 1.
    assert np.all(maps >= 0) and np.all(maps.sum((2, 3)) <= 1.0 + 1e-5)
    info = attention.run(model, str(frames_dir), str(tmp_path), 32, 5)
    assert info["heads"] == 2
    assert (tmp_path / "attention.png").stat().st_size > 0
    assert (tmp_path / "attention.mp4").stat().st_size > 0
