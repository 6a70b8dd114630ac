"""Label propagation: chunked jax vs dense numpy, ideal features, radius, resizing."""

import dataclasses
import math
import re

import jax
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


def _in_neighbourhood(ty, tx, sy, sx, config) -> bool:
    """videowalk's circle (math.hypot < radius), or DINO's square window: the
    cells (ty - r + p, tx - r + q) for p, q in 0..2r (its restrict_neighborhood)."""
    if config.neighbourhood == "circle":
        return math.hypot(ty - sy, tx - sx) < config.radius
    r = int(config.radius)
    window = {
        (ty - r + p, tx - r + q) for p in range(2 * r + 1) for q in range(2 * r + 1)
    }
    return (sy, sx) in window


def _loop_propagation(feats, first, config):
    """Label propagation one target position at a time, in plain Python.

    Context frames come from the padded video (videowalk) or the predicted
    frames in the window (dino); distances are math.hypot per pair; the top-k
    is Python's stable sort (ties keep context order: frame 0 first).
    """
    t_len, h, w, d = feats.shape
    flat = feats.reshape(t_len, h * w, d).astype(np.float32)
    out = [first.reshape(h * w, -1).astype(np.float64)]
    padded = [0] * config.queue + list(range(t_len))  # Front-padded with frame 0.
    for t in range(1, t_len):
        if config.queue_mode == "videowalk":
            context = padded[t : t + config.queue]  # The queue before padded[t + q].
        else:
            context = [j for j in range(1, t) if j >= t - config.queue]
        sims = [
            flat[t] @ flat[j].T / np.float32(config.temperature) for j in [0] + context
        ]
        pred = np.zeros_like(out[0])
        for target in range(h * w):
            ty, tx = divmod(target, w)
            cands = []  # (affinity, label) over (context frame, position).
            for slot, j in enumerate([0] + context):
                for src in range(h * w):
                    sy, sx = divmod(src, w)
                    if slot > 0 or config.restrict_first:
                        if not _in_neighbourhood(ty, tx, sy, sx, config):
                            continue
                    cands.append((float(sims[slot][target, src]), out[j][src]))
            top = sorted(cands, key=lambda cand: -cand[0])[: config.topk]
            weights = np.exp([a - top[0][0] for a, _ in top])
            pred[target] = sum(
                wt * lab for wt, (_, lab) in zip(weights, top, strict=True)
            )
            pred[target] /= weights.sum()
        out.append(pred)
    return np.stack(out).reshape(t_len, h, w, -1)


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
    # Both against the protocol written out target by target (no shared helpers).
    np.testing.assert_allclose(
        want, _loop_propagation(feats, labels, config), atol=1e-5
    )
    assert want.dtype == np.float32
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    assert np.abs(got[1:] - np.round(got[1:])).max() > 0.05  # Labels are soft.


@pytest.mark.parametrize("restrict_first", [False, True])
def test_square_neighbourhood_matches_loop(restrict_first):
    """DINO's square window (optionally over frame 0 too), chunked = dense = loop."""
    feats, labels = _random_video(7, 5, 6, 16, 3, seed=2)
    config = P.PropagationConfig(
        topk=4, queue=3, radius=1, queue_mode="dino", chunk=8,
        neighbourhood="square", restrict_first=restrict_first,
    )  # fmt: skip
    got = P.propagate(feats, labels, config)
    want = P.propagate_reference(feats, labels, config)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(
        want, _loop_propagation(feats, labels, config), atol=1e-5
    )
    circle = dataclasses.replace(config, neighbourhood="circle", radius=1.5)
    # radius-1 square = 3x3 window; the radius-1.5 circle is the same 3x3 set
    # (hypot(1, 1) < 1.5), so both agree; a radius-1 circle is a plus sign.
    np.testing.assert_allclose(P.propagate(feats, labels, circle), got, atol=1e-5)
    plus = dataclasses.replace(config, neighbourhood="circle", radius=1.0 + 1e-9)
    assert np.abs(P.propagate(feats, labels, plus) - got).max() > 1e-3


def test_restrict_first_limits_frame_0():
    """With restrict_first, a far frame-0 source is ignored as queue sources are."""
    feats, labels = _radius_video(source_in_frame0=True)
    for restrict, want in ((False, 1), (True, 0)):
        config = P.PropagationConfig(
            1, 1, 3.0, queue_mode="dino", restrict_first=restrict
        )
        got = P.propagate(feats, labels, config)
        np.testing.assert_allclose(got, P.propagate_reference(feats, labels, config))
        assert got[2, 0, 0].argmax() == want


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
    up = P.grid_to_labels(soft, (4, 4))
    assert up.shape == (4, 4, 1) and up.dtype == np.float32  # C = 1 kept, not w.
    ramp = np.array([0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(up[..., 0], 2 * ramp[:, None] + ramp[None, :], atol=1e-6)


def test_resizing_is_plain_bilinear_in_float32():
    """No antialiasing when a side shrinks; float16 input still gives float32.

    4 -> 2 samples at (i + 0.5) * 2 - 0.5 = 0.5, 2.5: the means of neighbour
    pairs (an antialiased filter would blend in a third cell).
    """
    row = np.array([0.0, 0.0, 4.0, 8.0]).reshape(1, 4, 1)
    for resize in (P.grid_to_labels, P.labels_to_grid):
        np.testing.assert_allclose(resize(row, (1, 2))[0, :, 0], [0.0, 6.0])
        got = resize(row.astype(np.float16), (1, 2))
        assert got.dtype == np.float32
        np.testing.assert_allclose(got[0, :, 0], [0.0, 6.0])


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


# Every field of each benchmark section of ``eval/config.py`` (the siammae
# protocol, docs/protocols.md: Table 4b plus our assumed temperature, queue mode
# and sizes).
# The siammae protocol's input, normalisation and label transfer
# (docs/protocols.md).
_INPUT = dict(
    frame_resize="pil_bilinear",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    pos_interp="bicubic_aa",
    neighbourhood="circle",
    restrict_first=False,
)
_MASKS = dict(labels_in="bilinear", labels_out="bilinear", norm_mask=False)
EVAL_DEFAULTS = {
    "davis": dict(
        split="val", pre_resize=(0, 0), resize="short_round", short_side=480,
        fixed_size=(0, 0), topk=7, queue=20, radius=20, **_INPUT, **_MASKS,
    ),
    "jhmdb": dict(
        split=1, resize="square", size=320, sigma=0.5, heatmap="gaussian",
        coords="centre", decode_topk=3, pck_invalid="miss", topk=7, queue=20,
        radius=20, **_INPUT,
    ),
    "vip": dict(
        split="val", resize="long_round", long_side=880, count_first=False,
        topk=10, queue=20, radius=8, **_INPUT, **_MASKS,
    ),
}  # fmt: skip


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


@pytest.mark.parametrize("fn", [P.propagate, P.propagate_reference])
def test_low_temperature_is_numerically_stable(fn):
    """At temperature 0.01 the logits reach 100: the softmax must not overflow.

    Weights 1 / (1 + exp(-40)) and 1 / (1 + exp(-80)) are 1 within float32.
    """
    feats, labels = _two_source_video()
    got = fn(feats, labels, P.PropagationConfig(topk=2, queue=0, temperature=0.01))
    np.testing.assert_allclose(got[1, 0], [[1.0, 0.0], [0.0, 1.0]], atol=1e-6)


def _tie_video() -> tuple[np.ndarray, np.ndarray]:
    """A float64 1x10 video whose top-4 ties are settled by position.

    Frame 0 (float32-exact; A = label 0, B = label 1): cells 1, 2, 3, 6, 7 are
    e0, labelled A A A B A; cells 0, 4, 5, 8 are e2, labelled A; cell 9 is
    e2 + 2^-10 e3, labelled B.
    Frame 1: cell 0 is e0 (five tied sources: the first four are 1, 2, 3, 6
    -> 3/4 A, 1/4 B); cell 1 is e2 + 1e-6 e3, whose cosine to cell 9 exceeds
    the others' by 1e-9 in float64 (cell 9 first -> 3/4 A) but ties in float32
    (first four 0, 4, 5, 8 -> all A); the rest are e1 (every source at
    affinity 0: cells 0-3 -> all A).
    """
    eye = np.eye(4)
    frame0 = np.tile(eye[2], (10, 1))
    frame0[[1, 2, 3, 6, 7]] = eye[0]
    frame0[9] += 2.0**-10 * eye[3]
    frame1 = np.tile(eye[1], (10, 1))
    frame1[0], frame1[1] = eye[0], eye[2] + 1e-6 * eye[3]
    labels = np.eye(2, dtype=np.float32)[[0, 0, 0, 0, 0, 0, 1, 0, 0, 1]]
    return np.stack([frame0, frame1])[:, None], labels[None]


@pytest.mark.parametrize(
    "fn, x64",
    [(P.propagate, False), (P.propagate, True), (P.propagate_reference, False)],
)
def test_ties_go_to_the_lowest_index_in_float32(fn, x64):
    """Affinities are float32 (propagation.py), even for float64 features and with
    jax_enable_x64; exact ties keep the lowest source index, like lax.top_k."""
    feats, labels = _tie_video()
    with jax.enable_x64(x64):
        got = fn(feats, labels, P.PropagationConfig(topk=4, queue=0))
    assert got.dtype == np.float32
    want = np.tile([1.0, 0.0], (1, 10, 1))
    want[0, 0] = (0.75, 0.25)
    np.testing.assert_allclose(got[1], want, atol=1e-6)


def _dot_generals(jaxpr):
    """Every dot_general equation of a jaxpr, nested ones (map, jit) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                yield from _dot_generals(inner)


def test_affinities_request_highest_precision():
    """The feature contraction asks for float32 (bf16/TF32 are the GPU/TPU
    default and flip near-equal neighbours); CPU ignores the
    setting, so the traced step is inspected."""
    config = P.PropagationConfig(topk=2, queue=1, chunk=2)
    h, w, d, c = 1, 3, 5, 2  # d = 5: the only contraction over 5 is the affinity.
    state = P._initial_state(_unit(np.ones((h * w, d))), np.ones((h * w, c)), config)
    step = P._step_fn(h, w, d, c, config)
    mask = P._neighbourhood(h, w, 20.0, 2)
    feat = jax.numpy.ones((h * w, d))
    jaxpr = jax.make_jaxpr(step)(state, feat, np.int32(1), mask).jaxpr
    affinity = [
        eqn
        for eqn in _dot_generals(jaxpr)
        if eqn.invars[0].aval.shape[eqn.params["dimension_numbers"][0][0][0]] == d
    ]
    assert len(affinity) == 1
    highest = jax.lax.Precision.HIGHEST
    assert affinity[0].params["precision"] == (highest, highest)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("chunk", 0, "chunk must be >= 1, got 0"),
        ("queue", -1, "queue must be >= 0, got -1"),
        ("topk", 2.0, "topk must be an int, got 2.0"),
        ("radius", "20", "radius must be a number, got '20'"),
        ("temperature", True, "temperature must be a number, got True"),
        ("radius", float("inf"), "radius must be finite and > 0, got inf"),
    ],
)
def test_config_errors_give_field_and_value(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        P.PropagationConfig(**{field: value})


def test_smallest_valid_config():
    config = P.PropagationConfig(topk=1, queue=0, radius=1e-3, chunk=1)
    assert (config.topk, config.queue, config.chunk) == (1, 0, 1)


@pytest.mark.parametrize("fn", [P.propagate, P.propagate_reference])
def test_input_checks_name_shapes(fn):
    feats, labels = _random_video(1, 2, 3, 4, 2)
    config = P.PropagationConfig(topk=2)
    for bad in (feats[0], feats[:0]):
        want = f"features must be [T>=1, h, w, D], got {bad.shape}"
        with pytest.raises(ValueError, match=re.escape(want)):
            fn(bad, labels, config)
    want = "first_labels must be [h, w, C] with (h, w) = (2, 3), got (3, 2, 2)"
    with pytest.raises(ValueError, match=re.escape(want)):
        fn(feats, labels.reshape(3, 2, 2), config)
    want = "topk = 7 exceeds the 6 positions of frame 0"
    with pytest.raises(ValueError, match=re.escape(want)):
        fn(feats, labels, P.PropagationConfig(topk=7))

    # One frame: nothing to propagate, frame 0's labels come back as float32.
    got = fn(feats, labels.astype(np.float64), config)
    assert got.shape == (1, 2, 3, 2) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0], labels)
    # topk = h * w is allowed, also on a tall grid (3 x 1).
    tall = fn(
        feats.reshape(1, 3, 2, 4)[:, :, :1],
        labels.reshape(3, 2, 2)[:, :1],
        P.PropagationConfig(topk=3),
    )
    np.testing.assert_array_equal(tall[0], labels.reshape(3, 2, 2)[:, :1])
