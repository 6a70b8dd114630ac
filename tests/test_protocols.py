"""Named evaluation protocols checked against their sources' formulas.

Each rule is recomputed here the way its source writes it (DINO's
``read_frame``/``read_seg``/``restrict_neighborhood``/queue, videowalk's
``MaskedAttention``/``context_index_bank``/front padding), not by calling the
package, and compared with what the evaluators do, on DAVIS-like frame sizes
(854x480, 910x480, 1920x1080, portrait) at patch 8 and 16.
"""

import json
import math
import queue
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siammae_jax.data import synthetic
from siammae_jax.eval import config as eval_config
from siammae_jax.eval import geometry, propagation, protocols, provenance, run

# (height, width) of real DAVIS frames: 480p, a wider 480p, full HD, portrait.
SIZES = [(480, 854), (480, 910), (1080, 1920), (854, 480), (480, 640)]
PATCHES = [8, 16]


def _section(name, task="davis", **overrides):
    section, _ = protocols.resolve(
        name, task, eval_config.task_section(task), overrides
    )
    return section


# ----------------------------------------------------------- input sizes


def _dino_read_frame_size(ori_h, ori_w, scale=480):
    """facebookresearch/dino eval_video_segmentation.py read_frame, as written."""
    if ori_h > ori_w:
        tw = scale
        th = (tw * ori_h) / ori_w
        th = int((th // 64) * 64)
    else:
        th = scale
        tw = (th * ori_w) / ori_h
        tw = int((tw // 64) * 64)
    return th, tw


def _nearest_multiple(x, m):
    return max(m, int(math.floor(x / m + 0.5)) * m)  # x never ends in .5 here


@pytest.mark.parametrize("patch", PATCHES)
@pytest.mark.parametrize("hw", SIZES)
def test_input_sizes_follow_each_source(hw, patch):
    h, w = hw
    assert geometry.input_size(h, w, patch, _section("dino")) == (
        _dino_read_frame_size(h, w)
    )
    assert geometry.input_size(h, w, patch, _section("480x880")) == (480, 880)
    assert geometry.input_size(h, w, patch, _section("crw")) == (
        _nearest_multiple(h, patch),
        _nearest_multiple(w, patch),
    )
    s = 480 / min(h, w)
    assert geometry.input_size(h, w, patch, _section("siammae")) == (
        _nearest_multiple(h * s, patch),
        _nearest_multiple(w * s, patch),
    )
    # The figures: 480x848 (ours), 480x832 (DINO) for 854x480 at patch 16.
    if (h, w, patch) == (480, 854, 16):
        assert geometry.input_size(h, w, patch, _section("siammae")) == (480, 848)
        assert geometry.input_size(h, w, patch, _section("dino")) == (480, 832)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="not a positive multiple of the patch"):
        geometry.input_size(480, 854, 16, _section("480x880", fixed_size=(480, 870)))
    with pytest.raises(ValueError, match="resize must be one of"):
        geometry.input_size(480, 854, 16, _section("siammae", resize="bogus"))


# --------------------------------------------------------- neighbourhoods


def _dino_restrict_neighborhood(h, w, size):
    """DINO's restrict_neighborhood, loops as written ([h*w, h*w], 1 = kept)."""
    mask = np.zeros((h, w, h, w))
    for i in range(h):
        for j in range(w):
            for p in range(2 * size + 1):
                for q in range(2 * size + 1):
                    if i - size + p < 0 or i - size + p >= h:
                        continue
                    if j - size + q < 0 or j - size + q >= w:
                        continue
                    mask[i, j, i - size + p, j - size + q] = 1
    return mask.reshape(h * w, h * w)


def _crw_masked_attention(h, w, radius):
    """videowalk's MaskedAttention.make (flat=False), in numpy."""
    gx, gy = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    d = (
        (gx[None, None, :, :] - gx[:, :, None, None]) ** 2
        + (gy[None, None, :, :] - gy[:, :, None, None]) ** 2
    ) ** 0.5
    return (d < radius).reshape(h * w, h * w)


@pytest.mark.parametrize("grid", [(6, 10), (30 // 3, 52 // 4)])
def test_neighbourhood_masks_equal_the_sources(grid):
    h, w = grid
    dino = _section("dino")
    got = propagation._near(h, w, 3, dino.neighbourhood)
    np.testing.assert_array_equal(got, _dino_restrict_neighborhood(h, w, 3) == 1)
    crw = _section("crw")
    got = propagation._near(h, w, 3.5, crw.neighbourhood)
    np.testing.assert_array_equal(got, _crw_masked_attention(h, w, 3.5))
    # The jitted evaluator's chunked mask is the same set.
    chunked = np.asarray(propagation._neighbourhood(h, w, 3.0, 16, "square"))
    flat = chunked.reshape(-1, h * w)[: h * w]
    np.testing.assert_array_equal(flat, _dino_restrict_neighborhood(h, w, 3) == 1)


# ---------------------------------------------------------------- context


def _dino_contexts(t_len, n_last):
    """The frames DINO's eval_video_segmentation puts beside frame 0, per target."""
    que, contexts = queue.Queue(n_last), {}
    for cnt in range(1, t_len):
        contexts[cnt] = [0] + [pair for pair in list(que.queue)]
        if que.qsize() == n_last:
            que.get()
        que.put(cnt)
    return contexts


def _crw_contexts(t_len, n_context):
    """videowalk: the video front-padded with n_context copies of frame 0
    (index i -> frame max(0, i - n_context)); query t + n_context takes the
    long-memory frame 0 and padded frames t .. t + n_context - 1."""
    padded = [max(0, i - n_context) for i in range(t_len + n_context)]
    return {
        t: [0] + [padded[j] for j in range(t, t + n_context)] for t in range(1, t_len)
    }


@pytest.mark.parametrize("t_len", [3, 12, 30])
def test_context_frames_equal_the_sources(t_len):
    dino = propagation.PropagationConfig(**_prop(_section("dino")))
    crw = propagation.PropagationConfig(**_prop(_section("crw")))
    want_dino, want_crw = _dino_contexts(t_len, 7), _crw_contexts(t_len, 20)
    for t in range(1, t_len):
        assert [0, *propagation._context_frames(t, dino)] == want_dino[t]
        assert [0, *propagation._context_frames(t, crw)] == want_crw[t]


def _prop(section):
    fields = propagation.PropagationConfig.__dataclass_fields__
    return {k: section[k] for k in fields if k in section}


# ------------------------------------------------------------ label transfer


@pytest.mark.parametrize("patch", PATCHES)
@pytest.mark.parametrize("hw", [(480, 854), (854, 480)])
def test_dino_first_labels_and_output(hw, patch):
    """Frame 0's ids to the grid and predictions back, as DINO's code does."""
    rng = np.random.default_rng(0)
    h, w = hw
    ids = np.zeros(hw, np.uint8)
    ids[h // 4 : h // 2, w // 3 : w // 2] = 1
    ids[h // 2 :, : w // 5] = 3  # Object ids 1 and 3: channels for 0..3.
    th, tw = _dino_read_frame_size(h, w)
    # read_seg: PIL nearest (resample 0) of the PNG to the grid, then one-hot.
    small = np.array(Image.fromarray(ids).resize((tw // patch, th // patch), 0))
    want = np.eye(4, dtype=np.float32)[small]
    section = _section("dino")
    got = geometry.labels_in(
        ids, np.arange(4), (th // patch, tw // patch), "pil_nearest"
    )
    np.testing.assert_array_equal(got, want)

    # Output: bilinear x patch (align_corners=False), norm_mask, argmax, PIL nearest.
    soft = rng.random((th // patch, tw // patch, 4)).astype(np.float32)
    up = _bilinear_half_pixel(soft, (th, tw))
    for c in range(4):
        if up[..., c].max() > 0:
            up[..., c] -= up[..., c].min()
            up[..., c] /= up[..., c].max()
    index = up.argmax(-1).astype(np.uint8)
    want = np.array(Image.fromarray(index).resize((w, h), 0))
    got = geometry.labels_out(soft, hw, (th, tw), section.labels_out, section.norm_mask)
    np.testing.assert_array_equal(got, want)


def _bilinear_half_pixel(x, size):
    """torch F.interpolate(bilinear, align_corners=False) written out in numpy."""
    h, w, _ = x.shape

    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo).astype(np.float32)

    y0, y1, fy = axis(h, size[0])
    x0, x1, fx = axis(w, size[1])
    rows = x[y0] * (1 - fy)[:, None, None] + x[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def test_frame_resize_cv2_linear_is_half_pixel_bilinear():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
    got = geometry.resize_frames(frames, (12, 26), "cv2_linear")
    want = [_bilinear_half_pixel(f.astype(np.float32), (12, 26)) for f in frames]
    want = np.clip(np.round(np.stack(want)), 0, 255)
    assert got.dtype == np.uint8
    assert np.abs(got.astype(int) - want).max() <= 1


# --------------------------------------------------------------- registry


def test_every_protocol_sets_every_field_with_a_source():
    for name, tasks in protocols.PROTOCOLS.items():
        for task, values in tasks.items():
            assert set(values) == set(protocols.PROTOCOLS["siammae"][task]), (
                name,
                task,
            )
            for field, value in values.items():
                assert value.source.strip(), (name, task, field)
    for (name, task), why in protocols.UNDEFINED.items():
        with pytest.raises(ValueError, match=why):
            protocols.settings(name, task)


def test_docs_table_is_the_registry():
    docs = Path(__file__).resolve().parents[1] / "docs" / "protocols.md"
    assert docs.read_text() == protocols.markdown()


def test_resolve_records_departures():
    section, departures = protocols.resolve(
        "dino", "davis", eval_config.task_section("davis"), {"topk": 7, "queue": 7}
    )
    assert section.topk == 7 and section.temperature == 0.1
    assert departures == {"topk": {"protocol": 5, "used": 7}}
    # A training config's section: what differs from siammae counts as given.
    base = eval_config.task_section("davis")
    base.short_side = 64
    section, departures = protocols.resolve("dino", "davis", base)
    assert section.short_side == 64 and section.topk == 5
    assert departures == {"short_side": {"protocol": 480, "used": 64}}
    with pytest.raises(ValueError, match="no such field"):
        protocols.resolve("dino", "davis", base, {"tpok": 3})
    with pytest.raises(ValueError, match="unknown protocol"):
        protocols.resolve("dinov2", "davis", base, {})


# ------------------------------------------------- evaluate, summary, compare


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocols")
    synthetic.write_dataset(root, videos=2, frames=5, size=(64, 96), progress=False)
    return root / "DAVIS"


def _colour_features(frames: np.ndarray) -> np.ndarray:
    """A plain feature function: mean colour of each 8x8 patch, plus a bias."""
    n, h, w, _ = frames.shape
    x = frames.reshape(n, h // 8, 8, w // 8, 8, 3).mean((2, 4)) / 255.0
    return np.concatenate([x, np.full((*x.shape[:3], 1), 0.5)], -1)


def _evaluate(root, out, features, protocol, **overrides):
    return run.evaluate(
        "davis", features, root, protocol, out, overrides=overrides,
        overlays=0, progress=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def results(davis_root, tmp_path_factory):
    """DINO's protocol at short side 64 (64x96 frames -> 64x64 input), twice
    with different features, and videowalk's (native 64x96)."""
    out = tmp_path_factory.mktemp("results")
    dino = _evaluate(davis_root, out / "dino", _colour_features, "dino", short_side=64)
    other = _evaluate(
        davis_root, out / "other", lambda f: _colour_features(f) ** 2, "dino",
        short_side=64,
    )  # fmt: skip
    crw = _evaluate(davis_root, out / "crw", _colour_features, "crw")
    return out, dino, other, crw


def test_summary_names_protocol_inputs_and_weights(results):
    out, dino, _, crw = results
    assert set(dino["scores"]) >= {"J&F-Mean", "J-Mean", "F-Mean"}
    assert dino["protocol"]["name"] == "dino"
    settings = dino["protocol"]["settings"]
    assert (settings["topk"], settings["queue"], settings["temperature"]) == (5, 7, 0.1)
    assert dino["protocol"]["departures"] == {
        "short_side": {"protocol": 480, "used": 64}
    }
    names = [f"synth_{i:04d}" for i in range(2)]
    assert dino["inputs"]["sizes"] == {n: [64, 64] for n in names}
    assert crw["inputs"]["sizes"] == {n: [64, 96] for n in names}
    # The hash is over the frame lists and sizes, recomputed here.
    digest = provenance.Inputs()
    for n in names:
        digest.add(n, [f"{t:05d}" for t in range(5)], (64, 96), (64, 64))
    assert dino["inputs"]["sha256"] == digest.as_dict()["sha256"]
    assert dino["weights"]["kind"] == "callable"
    assert dino["weights"]["name"].endswith("_colour_features")
    assert dino["version"] and dino["commit"]
    assert json.loads((out / "dino" / "summary.json").read_text()) == dino


def test_compare_says_what_differs(results):
    out, dino, other, crw = results
    comparable, lines = provenance.compare(dino, other)
    assert comparable
    assert any(line.startswith(". weights.name") for line in lines)
    comparable, lines = provenance.compare(dino, crw)
    assert not comparable
    text = "\n".join(lines)
    for key in ("topk: 5 vs 10", "temperature: 0.1 vs 0.05", "inputs differ"):
        assert key in text, text
    # The command line: exit 1 and the same lines.
    proc = subprocess.run(
        [sys.executable, "-m", "siammae_jax.eval", "compare",
         str(out / "dino" / "summary.json"), str(out / "crw" / "summary.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "NOT comparable" in proc.stdout and "! setting topk: 5 vs 10" in proc.stdout


def test_dino_rule_refuses_a_too_small_long_side(davis_root, tmp_path):
    """32 * 96 / 64 = 48 floors to 0: DINO's rule gives no width; said, not run."""
    with pytest.raises(ValueError, match="gives 32x0 .*not a positive multiple"):
        _evaluate(davis_root, tmp_path, _colour_features, "dino", short_side=32)


def test_a_jax_encoder_and_its_function_score_alike(davis_root, tmp_path):
    """The same ViT as a model and as a plain function: equal scores; the
    model's record carries the parameters' sha256."""
    from flax import nnx

    from siammae_jax.eval import encoder
    from siammae_jax.models import vit

    model = vit.ViT("test/8", image_size=32, rngs=nnx.Rngs(0))
    as_model = _evaluate(davis_root, tmp_path / "m", model, "siammae", short_side=64)
    function = encoder.FeatureExtractor(model)
    as_fn = _evaluate(davis_root, tmp_path / "f", function, "siammae", short_side=64)
    assert as_model["scores"] == as_fn["scores"]
    assert as_model["inputs"] == as_fn["inputs"]
    assert as_model["weights"]["kind"] == "jax"
    assert len(as_model["weights"]["sha256"]) == 64
    assert provenance.compare(as_model, as_fn)[0]


@pytest.mark.parametrize(
    ("protocol", "patch", "grid"), [("crw", 8, 40), ("480x880", 16, 20)]
)
def test_jhmdb_inputs_give_the_sources_grids(protocol, patch, grid):
    """videowalk: 320x320 at stride 8 (eval_pck's feat_res 40); CropMAE:
    320x320 at patch 16 (feat_res [20, 20]); any frame shape (square resize)."""
    section = _section(protocol, "jhmdb")
    for h, w in ((240, 320), (320, 240)):
        size = geometry.input_size(h, w, patch, section)
        assert size == (320, 320) and size[0] // patch == grid


def test_jhmdb_runner_follows_the_protocols_rules(tmp_path):
    """run_jhmdb under crw: videowalk's heatmaps in, corner decoding out, PCK
    with invisible joints skipped; the written joints equal that composition."""
    from siammae_jax.datasets import jhmdb

    synthetic.write_dataset(tmp_path, videos=1, frames=4, size=(48, 64), progress=False)
    root = tmp_path / "JHMDB"
    section = _section("crw", "jhmdb", size=64)
    result = run.evaluate(
        "jhmdb", _colour_features, root, "crw", tmp_path / "out",
        overrides={"size": 64}, patch=8, overlays=0, progress=False,
    )  # fmt: skip
    ((cls, name),) = jhmdb.read_split(root, section.split)
    v = jhmdb.load_video(root, cls, name)
    frames = geometry.resize_frames(v.frames, (64, 64), "cv2_linear")
    feats = run.CallableFeatures(_colour_features, 8)(frames)
    first = jhmdb.joint_heatmaps(
        v.joints[0], (48, 64), (8, 8), sigma=0.5, style="crw", coords="corner"
    )
    config = propagation.PropagationConfig(**_prop(section))
    soft = propagation.propagate(feats, first, config)
    want = jhmdb.decode_joints(soft, (48, 64), topk=3, coords="corner")
    written = json.loads(
        (tmp_path / "out" / cls / name / "joint_positions.json").read_text()
    )
    got = np.array(written["joints"], dtype=float)
    np.testing.assert_allclose(got, want)
    pck = jhmdb.pck([want], [v.joints], invalid="skip")
    assert result["scores"]["PCK@0.1"] == pytest.approx(pck["PCK@0.1"])


def test_a_siammae_in_bfloat16_is_scored_as_its_float32_weights():
    """``evaluate`` given a SiamMAE scores the encoder its saved weights would
    load as (float32), not the bfloat16 compute of the training model."""
    import jax.numpy as jnp
    from conftest import TINY
    from flax import nnx

    from siammae_jax.models import SiamMAE

    bf16 = SiamMAE(**TINY, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    f32 = SiamMAE(**TINY, rngs=nnx.Rngs(0))  # the same parameters
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    section = _section("siammae")
    got, patch, record = run.backbone(bf16, section)
    want, _, want_record = run.backbone(f32, section)
    assert patch == 8 and record == want_record  # same weights, same sha256
    np.testing.assert_array_equal(got(frames), want(frames))
    assert bf16.encoder.dtype == jnp.bfloat16  # the model itself is untouched
