"""Label propagation: chunked jax vs dense numpy, ideal features, radius, resizing."""

import numpy as np
import pytest

from siammae_jax.eval import propagation as P


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _random_video(t_len, h, w, d, c, seed=0):
    rng = np.random.default_rng(seed)
    feats = _unit(rng.standard_normal((t_len, h, w, d)))
    labels = np.eye(c, dtype=np.float32)[rng.integers(0, c, (h, w))]
    return feats, labels


@pytest.mark.parametrize("queue_mode", ["videowalk", "dino"])
@pytest.mark.parametrize("queue", [0, 3])
def test_chunked_matches_dense_reference(queue_mode, queue):
    # 5x6 = 30 positions in 4 chunks of 8 (2 padding targets); radius 2.5 masks most
    # of the grid; T = 9 > queue + 2, so the ring buffer wraps.
    feats, labels = _random_video(9, 5, 6, 16, 3)
    config = P.PropagationConfig(
        topk=4, queue=queue, radius=2.5, queue_mode=queue_mode, chunk=8
    )
    assert P._chunk_layout(30, 8) == (8, 4)
    got = P.propagate(feats, labels, config)
    want = P.propagate_reference(feats, labels, config)
    assert got.shape == (9, 5, 6, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0], labels)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    assert np.abs(got[1:] - np.round(got[1:])).max() > 0.05  # Labels are soft.


def test_queue_modes_differ():
    feats, labels = _random_video(6, 5, 6, 16, 3, seed=1)
    walk = P.propagate(feats, labels, P.PropagationConfig(3, 4, 2.5, chunk=7))
    dino = P.propagate(
        feats, labels, P.PropagationConfig(3, 4, 2.5, queue_mode="dino", chunk=7)
    )
    assert np.abs(walk[1:] - dino[1:]).max() > 1e-3


def _moving_square(t_len=12, size=16, side=4):
    """Ground truth [T, size, size] of a square moving one cell per frame."""
    masks = np.zeros((t_len, size, size), np.int64)
    for t in range(t_len):
        masks[t, 2 + t // 2 : 2 + t // 2 + side, 1 + t : 1 + t + side] = 1
    return masks


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    return float((pred & truth).sum() / (pred | truth).sum())


def test_ideal_features_track_a_moving_square():
    truth = _moving_square()
    rng = np.random.default_rng(0)
    onehot = np.eye(8)[truth]  # [T, 16, 16, 8]; classes in dims 0 and 1.
    feats = _unit(onehot + 0.01 * rng.standard_normal(onehot.shape))
    first = np.eye(2, dtype=np.float32)[truth[0]]
    pred = P.propagate(feats, first, P.DAVIS).argmax(-1)
    assert _iou(pred[1:] == 1, truth[1:] == 1) > 0.95

    noise = _unit(rng.standard_normal(onehot.shape))
    pred = P.propagate(noise, first, P.DAVIS).argmax(-1)
    assert _iou(pred[1:] == 1, truth[1:] == 1) < 0.7


def _radius_video(source_in_frame0: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 1x10 video whose frame-2 cell 0 matches one source at distance 9.

    Background cells are ~e1 (label 0); cell 9 is the labelled object (label
    1). The target (frame 2, cell 0) is e3. If ``source_in_frame0``, frame 0's
    cell 9 is e3 itself; otherwise frame 0's cell 9 is e0 (labelled 1) and
    frame 1's cell 9, (e0 + e3) / sqrt(2), inherits label 1 from it, so the
    only source resembling the target is in a queue frame.
    """
    eye = np.eye(4)
    feats = np.tile(eye[1] + 0.1 * eye[3], (3, 1, 10, 1))
    feats[0, 0, 9] = eye[3] if source_in_frame0 else eye[0]
    feats[1, 0, 9] = eye[0] + eye[3]
    feats[2, 0, 0] = eye[3]
    labels = np.zeros((1, 10, 2), np.float32)
    labels[0, :, 0] = 1
    labels[0, 9] = (0, 1)
    return _unit(feats), labels


@pytest.mark.parametrize("queue_mode", ["videowalk", "dino"])
def test_radius_restricts_queue_frames_only(queue_mode):
    feats, labels = _radius_video(source_in_frame0=False)
    label_of_target = {}
    for radius in (3.0, 9.0, 9.5):
        config = P.PropagationConfig(1, 1, radius, queue_mode=queue_mode)
        got = P.propagate(feats, labels, config)
        np.testing.assert_allclose(got, P.propagate_reference(feats, labels, config))
        assert got[1, 0, 9].argmax() == 1  # Inherited from frame 0, distance 0.
        label_of_target[radius] = int(got[2, 0, 0].argmax())
    # Distance 9 >= radius: the queue source is ignored; 9 < 9.5: it is used.
    assert label_of_target == {3.0: 0, 9.0: 0, 9.5: 1}

    # The same source in frame 0 is used at any distance.
    feats, labels = _radius_video(source_in_frame0=True)
    config = P.PropagationConfig(1, 1, 3.0, queue_mode=queue_mode)
    assert P.propagate(feats, labels, config)[2, 0, 0].argmax() == 1


def test_labels_to_grid_hand_values():
    # 1-D: 5 -> 2 samples at (i + 0.5) * 2.5 - 0.5 = 0.75, 3.25.
    row = np.array([1.0, 0, 0, 0, 2.0]).reshape(1, 5, 1)
    np.testing.assert_allclose(P.labels_to_grid(row, (1, 2))[0, :, 0], [0.25, 0.5])
    # A 3x3 object in the top-left of a 4x4 image -> 2x2 grid (2x2 averages).
    mask = np.zeros((4, 4), np.int64)
    mask[:3, :3] = 1
    grid = P.labels_to_grid(np.eye(2)[mask], (2, 2))
    np.testing.assert_allclose(grid[..., 1], [[1.0, 0.5], [0.5, 0.25]])
    np.testing.assert_allclose(grid.sum(-1), 1.0)
    assert grid.dtype == np.float32


def test_grid_to_labels_hand_values():
    # 2 -> 4 samples at -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
    soft = np.array([[0.0, 1.0], [2.0, 3.0]]).reshape(2, 2, 1)
    up = P.grid_to_labels(soft, (4, 4))[..., 0]
    ramp = np.array([0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(up, 2 * ramp[:, None] + ramp[None, :], atol=1e-6)
    assert up.shape == (4, 4)


def test_compiled_once_per_size():
    config = P.PropagationConfig(topk=3, queue=2, radius=3.0, chunk=16)
    for t_len, seed in ((5, 0), (7, 1)):
        feats, labels = _random_video(t_len, 4, 7, 8, 2, seed=seed)
        P.propagate(feats, labels, config)
    assert P._step_fn(4, 7, 8, 2, config)._cache_size() == 1


@pytest.mark.parametrize(
    "field, value",
    [
        ("topk", 0),
        ("topk", 2.0),
        ("queue", -1),
        ("radius", 0.0),
        ("radius", float("nan")),
        ("temperature", -1.0),
        ("queue_mode", "crw"),
        ("chunk", 0),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        P.PropagationConfig(**{field: value})


def test_paper_defaults_and_input_checks():
    assert (P.DAVIS.topk, P.DAVIS.queue, P.DAVIS.radius) == (7, 20, 20)
    assert (P.VIP.topk, P.VIP.queue, P.VIP.radius) == (10, 20, 8)
    assert P.JHMDB == P.DAVIS
    default = P.PropagationConfig()
    assert (default.topk, default.queue, default.radius) == (7, 20, 20.0)
    assert default.temperature == 0.7 and default.queue_mode == "videowalk"
    for preset in (P.DAVIS, P.VIP, P.JHMDB):
        assert preset.temperature == 0.7 and preset.queue_mode == "videowalk"
    feats, labels = _random_video(3, 2, 2, 4, 2)
    with pytest.raises(ValueError, match="topk"):
        P.propagate(feats, labels, P.DAVIS)
    with pytest.raises(ValueError, match="first_labels"):
        P.propagate(feats, labels[:1], P.PropagationConfig(topk=2))


# Every field of each benchmark section of ``eval/config.py`` (SIAMMAE.md,
# "Evaluation": Table 4b plus our assumed temperature, queue mode and sizes).
EVAL_DEFAULTS = {
    "davis": dict(split="val", short_side=480, topk=7, queue=20, radius=20),
    "jhmdb": dict(split=1, size=320, sigma=0.5, topk=7, queue=20, radius=20),
    "vip": dict(split="val", long_side=880, topk=10, queue=20, radius=8),
}


@pytest.mark.parametrize("benchmark", sorted(EVAL_DEFAULTS))
def test_eval_config_defaults_by_name(benchmark):
    """Each benchmark section holds the protocol's values, field by field."""
    from siammae_jax.eval import config, tasks

    section = getattr(config.get_config(), benchmark)
    want = {
        **EVAL_DEFAULTS[benchmark],
        "temperature": 0.7,
        "queue_mode": "videowalk",
        "chunk": 1024,
    }
    assert section.to_dict() == want
    preset = {"davis": P.DAVIS, "jhmdb": P.JHMDB, "vip": P.VIP}[benchmark]
    assert tasks.prop_config(section) == preset


def _two_source_video() -> tuple[np.ndarray, np.ndarray]:
    """A 1x2 video: frame 0 cells e0 (label A) and (0.6, 0.8) (label B).

    Frame 1's cell 0 is e0, so its cosine affinities to the two sources are
    1 and 0.6; frame 1's cell 1 is e1 (affinities 0 and 0.8).
    """
    feats = np.array(
        [[[[1.0, 0.0], [0.6, 0.8]]], [[[1.0, 0.0], [0.0, 1.0]]]], np.float32
    )
    labels = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)
    return feats, labels


@pytest.mark.parametrize("fn", [P.propagate, P.propagate_reference])
def test_softmax_temperature_hand_values(fn):
    """Top-2 weights are softmax(cosine / temperature), 0.7 unless set.

    With two sources of affinities a > b, the weight of the first is
    1 / (1 + exp(-(a - b) / temperature)): 0.63909 for 1 vs 0.6 at 0.7
    (0.59869 at temperature 1), 0.75820 for 0.8 vs 0 at 0.7.
    """
    feats, labels = _two_source_video()
    got = fn(feats, labels, P.PropagationConfig(topk=2, queue=0))
    np.testing.assert_allclose(got[1, 0, 0], [0.6390927, 0.3609073], atol=1e-6)
    np.testing.assert_allclose(got[1, 0, 1], [0.2417962, 0.7582038], atol=1e-6)
    # The configured temperature is the one used: 1 / (1 + exp(-0.4 / 0.35)).
    sharp = fn(feats, labels, P.PropagationConfig(topk=2, queue=0, temperature=0.35))
    np.testing.assert_allclose(sharp[1, 0, 0], [0.7582038, 0.2417962], atol=1e-6)
