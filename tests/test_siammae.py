"""SiamMAE: masking, visible-only encoding, targets, loss, configs, dtypes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY
from flax import nnx

from siammae_jax.models import SiamMAE, siammae, vit

PATCH, GRID = 8, (4, 4)
# TINY's 4x4 grid keeps int(16 x 0.05) = 0 patches at the default 95% masking:
# tests that need a model but not a mask ratio take MAE's 75% (4 visible).
MAE_RATIO = 0.75


def _frames(seed=0, batch=4):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return (
        jax.random.normal(k1, (batch, 32, 32, 3)),
        jax.random.normal(k2, (batch, 32, 32, 3)),
    )


def _patch_mask_to_pixels(mask):
    """[B, N] patch mask -> [B, H, W, 1] pixel mask."""
    m = np.asarray(mask).reshape(-1, *GRID)
    return np.kron(m, np.ones((PATCH, PATCH)))[..., None]


@pytest.mark.parametrize("rule", ["int", "round"])
@pytest.mark.parametrize("ratio", [0.95, 0.75, 0.5, 0.1])
def test_mask_counts_and_randomness(ratio, rule):
    n, b = 196, 8
    visible, restore, mask = siammae.random_mask(jax.random.key(0), b, n, ratio, rule)
    keep = int(n * (1 - ratio)) if rule == "int" else round(n * (1 - ratio))
    assert visible.shape == (b, keep)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), n - keep)
    for i in range(b):  # visible indices are exactly the unmasked patches
        assert set(np.asarray(visible[i])) == set(np.flatnonzero(mask[i] == 0))
        np.testing.assert_array_equal(np.sort(restore[i]), np.arange(n))
    assert len({tuple(np.sort(v)) for v in np.asarray(visible)}) == b
    again = siammae.random_mask(jax.random.key(0), b, n, ratio, rule)[2]
    np.testing.assert_array_equal(mask, again)
    other = siammae.random_mask(jax.random.key(1), b, n, ratio, rule)[2]
    assert not np.array_equal(mask, other)


# (N, mask_ratio, MAE's int(N x (1 - r)), round(N x (1 - r))), worked out by hand
# from the float products: 196 x 0.05 = 9.8; 10 x (1 - 0.9) = 0.9999999999999998
# in floating point (MAE keeps 0 there, not 1); 16 x 0.0625 = 1 exactly.
VISIBLE_COUNTS = [
    (196, 0.95, 9, 10),
    (196, 0.75, 49, 49),
    (784, 0.95, 39, 39),
    (256, 0.95, 12, 13),
    (64, 0.9, 6, 6),
    (16, 0.9, 1, 2),
    (16, 0.95, 0, 1),
    (10, 0.9, 0, 1),
    (16, 0.9375, 1, 1),
    (24, 0.5, 12, 12),
]


@pytest.mark.parametrize("n, ratio, floor, nearest", VISIBLE_COUNTS)
def test_visible_count_is_maes_int_or_the_old_round(n, ratio, floor, nearest):
    """``int`` is MAE's ``len_keep = int(L * (1 - mask_ratio))`` (the default),
    ``round`` the earlier rule; the mask drawn keeps exactly that many."""
    assert (floor, nearest) == (int(n * (1 - ratio)), round(n * (1 - ratio)))
    assert siammae.num_visible(n, ratio) == floor
    assert siammae.num_visible(n, ratio, "int") == floor
    assert siammae.num_visible(n, ratio, "round") == nearest
    for rule, keep in (("int", floor), ("round", nearest)):
        visible, _, mask = siammae.random_mask(jax.random.key(1), 3, n, ratio, rule)
        assert visible.shape == (3, keep)
        np.testing.assert_array_equal(np.asarray(mask).sum(1), n - keep)
    with pytest.raises(ValueError, match="visible_rule='floor' must be one of"):
        siammae.num_visible(n, ratio, "floor")


@pytest.mark.parametrize("rule, keep", [("int", 1), ("round", 2)])
def test_model_encodes_the_rules_count_of_f2_patches(rule, keep):
    """TINY at 90% masking: int(16 x 0.1) = 1 visible f2 patch (MAE), round: 2;
    the encoder sees exactly those, the mask hides the rest."""
    model = SiamMAE(**{**TINY, "visible_rule": rule}, mask_ratio=0.9, rngs=nnx.Rngs(0))
    f1, f2 = _frames(batch=2)
    z1, z2, restore, mask = model.encode_pair(f1, f2, jax.random.key(4))
    assert z1.shape == (2, 17, 32) and z2.shape == (2, 1 + keep, 32)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), 16 - keep)


def _maes_norm_pix(x, ddof):
    """MAE's forward_loss target in float64: ``(x - mean) / (var + 1e-6) ** 0.5``
    per patch, the variance with ``ddof`` (torch's ``var`` default: 1)."""
    x = np.asarray(x, np.float64)
    mean = x.sum(-1, keepdims=True) / x.shape[-1]
    var = ((x - mean) ** 2).sum(-1, keepdims=True) / (x.shape[-1] - ddof)
    return (x - mean) / (var + 1e-6) ** 0.5


def test_norm_pix_matches_numpy():
    """Default ddof 1 (MAE's unbiased variance), ddof 0 the population one; on
    48 pixels a patch's values differ by sqrt(48/47) between the two."""
    x = np.random.default_rng(0).normal(3.0, 2.0, (2, 5, 48)).astype(np.float32)
    unbiased, population = _maes_norm_pix(x, 1), _maes_norm_pix(x, 0)
    np.testing.assert_allclose(siammae.norm_pix(jnp.asarray(x)), unbiased, atol=1e-5)
    got = siammae.norm_pix(jnp.asarray(x), ddof=1)
    np.testing.assert_allclose(got, unbiased, atol=1e-5)
    got = siammae.norm_pix(jnp.asarray(x), ddof=0)
    np.testing.assert_allclose(got, population, atol=1e-5)
    np.testing.assert_allclose(population / unbiased, np.sqrt(48 / 47), rtol=1e-6)


@pytest.mark.parametrize("ddof", [0, 1])
def test_model_target_is_maes_norm_pix(ddof):
    """The model's target with ``norm_pix_ddof``: f2's patches normalised with
    that variance (numpy from MAE's formula)."""
    model = SiamMAE(
        **{**TINY, "mask_ratio": 0.5, "norm_pix_ddof": ddof}, rngs=nnx.Rngs(0)
    )
    assert model.norm_pix_ddof == ddof
    f1, f2 = _frames(batch=2)
    out = model(f1, f2, jax.random.key(0))
    patches = np.asarray(f2).reshape(2, 4, 8, 4, 8, 3).transpose(0, 1, 3, 2, 4, 5)
    want = _maes_norm_pix(patches.reshape(2, 16, 192), ddof)
    np.testing.assert_allclose(out.target, want, atol=1e-5)
    other = _maes_norm_pix(patches.reshape(2, 16, 192), 1 - ddof)
    assert np.abs(np.asarray(out.target) - other).max() > 1e-3


def test_loss_ignores_visible_patches():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 2, 6, 12)).astype(np.float32)
    mask = np.array([[1, 0, 1, 0, 0, 1], [0, 0, 1, 1, 1, 0]], np.float32)
    loss = siammae.masked_l2(pred, target, mask)
    want = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    target2 = np.where(mask[..., None] == 0, target + 5.0, target)
    pred2 = np.where(mask[..., None] == 0, pred - 3.0, pred)
    np.testing.assert_allclose(siammae.masked_l2(pred2, target2, mask), loss, rtol=1e-6)


def test_model_loss_is_masked_l2_of_norm_pix(tiny_model, tiny_apply):
    f1, f2 = _frames()
    out = tiny_apply(f1, f2, jax.random.key(3))
    target = _maes_norm_pix(vit.patchify(f2, PATCH), tiny_model.norm_pix_ddof)
    np.testing.assert_allclose(out.target, target, atol=1e-5)
    want = siammae.masked_l2(out.pred, target, out.mask)
    np.testing.assert_allclose(out.loss, want, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.mask).sum(1), 8)  # 50% of 16


def test_masked_pixels_never_reach_the_model(tiny_model, tiny_apply):
    f1, f2 = _frames()
    key = jax.random.key(3)
    out = tiny_apply(f1, f2, key)
    noise = jax.random.normal(jax.random.key(9), f2.shape) * 10
    f2_masked_changed = f2 + noise * _patch_mask_to_pixels(out.mask)
    out2 = tiny_apply(f1, f2_masked_changed, key)
    np.testing.assert_allclose(out2.pred, out.pred, atol=1e-5)

    # The encoder's f2 tokens are unchanged too; changing a visible patch does change them.
    visible, _, _ = siammae.random_mask(key, 4, 16, tiny_model.mask_ratio)
    z, _ = tiny_model.encoder(f2, visible=visible)
    z2, _ = tiny_model.encoder(f2_masked_changed, visible=visible)
    np.testing.assert_allclose(z2, z, atol=1e-5)
    f2_visible_changed = f2 + noise * (1 - _patch_mask_to_pixels(out.mask))
    z3, _ = tiny_model.encoder(f2_visible_changed, visible=visible)
    assert np.abs(np.asarray(z3) - np.asarray(z)).max() > 1e-2


def test_prediction_depends_on_f1(tiny_apply):
    f1, f2 = _frames()
    key = jax.random.key(3)
    out = tiny_apply(f1, f2, key)
    out2 = tiny_apply(f1 * -1.0 + 0.5, f2, key)
    assert np.abs(np.asarray(out2.pred) - np.asarray(out.pred)).max() > 1e-2
    assert out.attention.shape == (4, 2, 2, 16, 17)  # B, blocks, heads, N, 1+N
    np.testing.assert_allclose(out.attention.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("decoder_type", ["cross", "joint"])
def test_other_decoders_wire_f1(decoder_type):
    model = SiamMAE(
        **TINY, decoder_type=decoder_type, mask_ratio=MAE_RATIO, rngs=nnx.Rngs(0)
    )
    f1, f2 = _frames(batch=2)
    out = model(f1, f2, jax.random.key(0), return_attention=True)
    out2 = model(f1 + 1.0, f2, jax.random.key(0))
    assert np.isfinite(out.loss)
    assert np.abs(np.asarray(out2.pred) - np.asarray(out.pred)).max() > 1e-3
    assert out.attention.shape == (2, 2, 2, 16, 17)
    np.testing.assert_allclose(out.attention.sum(-1), 1.0, atol=1e-5)


def test_cross_block_has_no_self_attention():
    def count(t):
        m = nnx.eval_shape(
            lambda: SiamMAE(
                **TINY, decoder_type=t, mask_ratio=MAE_RATIO, rngs=nnx.Rngs(0)
            )
        )
        return sum(x.size for x in jax.tree.leaves(nnx.state(m.decoder_blocks)))

    d = TINY["decoder_dim"]
    per_attn = 4 * d * d + 4 * d + 2 * d  # q, k, v, out (+ biases) + pre-norm
    assert count("cross_self") - count("cross") == TINY["decoder_depth"] * per_attn


def test_bfloat16_compute_close_to_float32():
    f1, f2 = _frames()
    key = jax.random.key(5)
    losses = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = SiamMAE(**TINY, dtype=dtype, mask_ratio=MAE_RATIO, rngs=nnx.Rngs(0))
        out = model(f1, f2, key)
        assert out.pred.dtype == dtype
        assert jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype == jnp.float32
        losses[dtype] = float(out.loss)
    # Stated tolerance: bf16 compute within 2% of the float32 loss.
    assert abs(losses[jnp.bfloat16] - losses[jnp.float32]) < 0.02 * losses[jnp.float32]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(image_size=36), "image_size"),
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(mask_ratio=0.0), "mask_ratio"),
        (dict(mask_ratio=0.99), "mask_ratio"),  # leaves no visible patch
        (dict(decoder_type="dense"), "decoder_type.*cross_self"),
        (dict(decoder_heads=3), "decoder_heads"),
        (dict(decoder_depth=0), "decoder_depth"),
        (dict(encoder="S/15", image_size=30), "image_size"),
    ],
)
def test_bad_config_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        nnx.eval_shape(lambda: SiamMAE(**{**TINY, **kwargs}, rngs=nnx.Rngs(0)))


def test_wrong_frame_shape(tiny_model):
    f1, f2 = _frames(batch=1)
    with pytest.raises(ValueError, match="image_size"):
        tiny_model(f1[:, :16], f2[:, :16], jax.random.key(0))


@pytest.mark.parametrize("ratio", [0.95, 0.5])
def test_restore_puts_each_visible_index_back_at_its_place(ratio):
    """``restore`` is the inverse of the shuffle ``[visible..., masked...]``:
    the decoder's sequence ``[visible tokens, fill]`` gathered with it puts
    visible token j at patch ``visible[j]``, so ``restore[visible[j]] == j``;
    masked patches get the indices >= K, and ``mask`` is 0 exactly there."""
    n, b = 16, 6
    visible, restore, mask = map(
        np.asarray, siammae.random_mask(jax.random.key(7), b, n, ratio)
    )
    k = visible.shape[1]
    for i in range(b):
        assert sorted(restore[i]) == list(range(n))
        for j, p in enumerate(visible[i]):
            assert restore[i, p] == j
        hidden = sorted(set(range(n)) - set(visible[i]))
        assert sorted(restore[i, hidden]) == list(range(k, n))
        want = np.ones(n, np.float32)
        want[visible[i]] = 0.0
        np.testing.assert_array_equal(mask[i], want)


def _layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_decoder_puts_visible_tokens_at_their_own_positions(tiny_model):
    """With every decoder block's output projections zeroed, the blocks are
    identity residuals and the prediction at f2 patch p depends on that token
    alone: decoder_pred(norm(token_p + pos[p])), where token_p is
    decoder_embed(z2 token j) when ``visible[j] == p`` and the mask token
    elsewhere. Checked against numpy for a hand-made shuffle and distinct tokens.
    """
    model = nnx.clone(tiny_model)
    for block in model.decoder_blocks:
        for layer in (block.cross.out, block.attn.out, block.mlp.fc2):
            layer.kernel.set_value(jnp.zeros_like(layer.kernel[...]))
            layer.bias.set_value(jnp.zeros_like(layer.bias[...]))
    rng = np.random.default_rng(0)
    b, n, k, width = 2, 16, 5, model.encoder.width
    shuffle = np.stack([rng.permutation(n) for _ in range(b)])  # [visible, masked]
    restore = np.empty_like(shuffle)
    for i in range(b):
        restore[i, shuffle[i]] = np.arange(n)
    z1 = rng.normal(size=(b, 1 + n, width)).astype(np.float32)
    z2 = rng.normal(size=(b, 1 + k, width)).astype(np.float32)
    pred, _ = model.decode(jnp.asarray(z1), jnp.asarray(z2), jnp.asarray(restore))

    np_ = lambda v: np.asarray(v[...])  # noqa: E731
    w_e, b_e = np_(model.decoder_embed.kernel), np_(model.decoder_embed.bias)
    pos = np_(model.decoder_pos)[0, 1:]
    mask_token = np_(model.mask_token).reshape(-1)
    scale, bias = np_(model.decoder_norm.scale), np_(model.decoder_norm.bias)
    w_p, b_p = np_(model.decoder_pred.kernel), np_(model.decoder_pred.bias)
    want = np.empty(pred.shape, np.float32)
    for i in range(b):
        for p in range(n):
            seen = list(shuffle[i, :k])  # visible token j came from patch seen[j]
            token = z2[i, 1 + seen.index(p)] @ w_e + b_e if p in seen else mask_token
            want[i, p] = _layer_norm(token + pos[p], scale, bias) @ w_p + b_p
    np.testing.assert_allclose(pred, want, atol=1e-4)


# --- Mutation-driven checks (issue 14): numpy reference of the decoder, defaults,
# dtypes, non-square frames, loss edge cases.


def _np(v):
    return np.asarray(v[...], np.float64)


def _gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _ln(x, norm):
    return _layer_norm(x, _np(norm.scale), _np(norm.bias))


def _np_attention(attn, x, context):
    """Multi-head attention in float64: returns (out [B, Q, D], weights [B, H, Q, K])."""
    q = np.einsum("bqd,dhk->bqhk", x, _np(attn.query.kernel)) + _np(attn.query.bias)
    k = np.einsum("bqd,dhk->bqhk", context, _np(attn.key.kernel)) + _np(attn.key.bias)
    v = np.einsum("bqd,dhk->bqhk", context, _np(attn.value.kernel))
    v = v + _np(attn.value.bias)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", w, v)
    return np.einsum("bqhd,hdD->bqD", o, _np(attn.out.kernel)) + _np(attn.out.bias), w


def _np_cross_self_block(block, x, context):
    """Pre-norm cross-attention (queries x, keys/values context), self-attention, MLP."""
    a, w = _np_attention(block.cross, _ln(x, block.norm_q), _ln(context, block.norm_kv))
    x = x + a
    x = x + _np_attention(block.attn, *[_ln(x, block.norm_self)] * 2)[0]
    h = _gelu(
        _ln(x, block.norm_mlp) @ _np(block.mlp.fc1.kernel) + _np(block.mlp.fc1.bias)
    )
    return x + h @ _np(block.mlp.fc2.kernel) + _np(block.mlp.fc2.bias), w


def _decoder_inputs(model, seed=0, b=2, k=8):
    rng = np.random.default_rng(seed)
    n, width = 16, model.encoder.width
    shuffle = np.stack([rng.permutation(n) for _ in range(b)])
    restore = np.argsort(shuffle, axis=1)
    z1 = rng.normal(size=(b, 1 + n, width)).astype(np.float32)
    z2 = rng.normal(size=(b, 1 + k, width)).astype(np.float32)
    return z1, z2, shuffle, restore


def test_decoder_matches_float64_numpy_reference(tiny_model):
    """The whole cross-self decoder, every block at work, against a float64 numpy
    re-implementation from the paper's description: f1 tokens + position
    embeddings are the keys/values, f2's visible tokens go back to their own
    patches, [MASK] elsewhere; each block is pre-norm cross-attention, then
    self-attention, then an exact-GELU MLP with hidden width 4 x dim, all residual.
    The returned attention is [B, blocks, heads, N, 1+N] (f2 [CLS] query dropped)."""
    model = tiny_model
    z1, z2, shuffle, restore = _decoder_inputs(model)
    b, k = z2.shape[0], z2.shape[1] - 1
    pred, attention = model.decode(
        jnp.asarray(z1), jnp.asarray(z2), jnp.asarray(restore), return_attention=True
    )
    w_e, b_e = _np(model.decoder_embed.kernel), _np(model.decoder_embed.bias)
    pos = _np(model.decoder_pos)[0]
    x1 = z1 @ w_e + b_e + pos
    e2 = z2 @ w_e + b_e
    x2 = np.repeat(_np(model.mask_token).reshape(1, 1, -1), b, 0).repeat(17, 1)
    x2[:, 0] = e2[:, 0]
    for i in range(b):
        x2[i, 1 + shuffle[i, :k]] = e2[i, 1:]
    x2 = x2 + pos
    want_attn = []
    for block in model.decoder_blocks:
        x2, w = _np_cross_self_block(block, x2, x1)
        want_attn.append(w[:, :, 1:])
    want = _ln(x2, model.decoder_norm) @ _np(model.decoder_pred.kernel)
    want = (want + _np(model.decoder_pred.bias))[:, 1:]
    np.testing.assert_allclose(pred, want, atol=2e-4, rtol=1e-4)
    assert attention.shape == (2, 2, 2, 16, 17)
    np.testing.assert_allclose(attention, np.stack(want_attn, 1), atol=1e-5)
    # Attention weights are materialised only on request.
    assert (
        model.decode(jnp.asarray(z1), jnp.asarray(z2), jnp.asarray(restore))[1] is None
    )
    block = model.decoder_blocks[0]
    out, weights = block(jnp.asarray(x1), jnp.asarray(x1))
    assert weights is None
    np.testing.assert_allclose(out, _np_cross_self_block(block, x1, x1)[0], atol=2e-4)


def test_defaults_are_the_papers():
    """SiamMAE() is the paper's ViT-S/16 at 224 px, 95% masking, cross-self
    decoder 512 wide, 8 blocks of 16 heads, MLP ratio 4, norm-pix loss; MAE's
    unbiased norm-pix variance and int(196 x 0.05) = 9 visible f2 patches."""
    m = nnx.eval_shape(lambda: SiamMAE(rngs=nnx.Rngs(0)))
    assert (m.encoder.width, len(m.encoder.blocks), m.encoder.patch) == (384, 12, 16)
    assert m.encoder.blocks[0].attn.num_heads == 6
    assert m.encoder.grid == (14, 14)
    assert (m.mask_ratio, m.decoder_type, m.norm_pix_loss) == (0.95, "cross_self", True)
    assert (m.norm_pix_ddof, m.visible_rule) == (1, "int")
    f = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    graphdef, state = nnx.split(m)
    z2 = jax.eval_shape(
        lambda s, a, b: nnx.merge(graphdef, s).encode_pair(a, b, jax.random.key(0))[1],
        state,
        f,
        f,
    )
    assert z2.shape == (1, 1 + 9, 384)
    assert m.decoder_embed.kernel.shape == (384, 512)
    assert len(m.decoder_blocks) == 8
    blk = m.decoder_blocks[0]
    assert blk.cross.num_heads == 16 and blk.attn.num_heads == 16
    assert blk.mlp.fc1.kernel.shape == (512, 2048)
    assert m.decoder_pred.kernel.shape == (512, 16 * 16 * 3)
    assert m.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(nnx.state(m, nnx.Param))} == {
        jnp.dtype(jnp.float32)
    }


def test_dtypes_reach_encoder_and_decoder(monkeypatch):
    """compute dtype bf16: encoder tokens and the decoder's token streams are bf16
    (mask token and position embeddings cast, not promoting the stream to f32);
    param_dtype bf16: every parameter, the encoder's included, is stored in bf16."""
    m = nnx.eval_shape(
        lambda: SiamMAE(
            **TINY, param_dtype=jnp.bfloat16, mask_ratio=MAE_RATIO, rngs=nnx.Rngs(0)
        )
    )
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(m, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}

    model = SiamMAE(**TINY, mask_ratio=0.5, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    f1, f2 = _frames(batch=1)
    z, _ = jax.eval_shape(lambda x: model.encoder(x), f1)
    assert z.dtype == jnp.bfloat16
    seen = []
    original = siammae.CrossSelfBlock.__call__

    def spy(self, x, context, **kw):
        seen.append((x.dtype, context.dtype))
        return original(self, x, context, **kw)

    monkeypatch.setattr(siammae.CrossSelfBlock, "__call__", spy)
    z1, z2, _, restore = _decoder_inputs(model, b=1)
    pred, _ = jax.eval_shape(
        lambda a, c, r: model.decode(a, c, r),
        jnp.asarray(z1, jnp.bfloat16),
        jnp.asarray(z2, jnp.bfloat16),
        jnp.asarray(restore),
    )
    assert seen and set(seen) == {(jnp.dtype(jnp.bfloat16),) * 2}
    assert pred.dtype == jnp.bfloat16


def test_non_square_frames():
    """A 32x48 model (4x6 patches): 24 patches per frame, half visible; frames of
    another size are refused with the model's size as HxW."""
    model = SiamMAE(
        **{**TINY, "image_size": (32, 48)}, mask_ratio=0.5, rngs=nnx.Rngs(0)
    )
    f = jnp.zeros((2, 32, 48, 3))
    z1, z2, restore, mask = jax.eval_shape(
        lambda a, b: model.encode_pair(a, b, jax.random.key(0)), f, f
    )
    assert (z1.shape, z2.shape) == ((2, 25, 32), (2, 13, 32))
    assert (restore.shape, mask.shape) == ((2, 24), (2, 24))
    out = jax.eval_shape(lambda a, b: model(a, b, jax.random.key(0)), f, f)
    assert out.pred.shape == out.target.shape == (2, 24, 8 * 8 * 3)
    assert out.attention is None  # only on request
    for shape in [(1, 48, 48, 3), (1, 48, 32, 3), (1, 32, 32, 3)]:
        bad = jnp.zeros(shape)
        with pytest.raises(ValueError, match=r"image_size 32x48\."):
            model.encode_pair(bad, bad, jax.random.key(0))


def test_raw_pixel_target_is_float32_patches(tiny_model):
    """norm_pix_loss=False: the target is f2's patches as they are, in float32
    even for bf16 frames, and the loss is the masked L2 against them."""
    model = SiamMAE(**TINY, mask_ratio=0.5, norm_pix_loss=False, rngs=nnx.Rngs(0))
    f1, f2 = _frames()  # batch 4: eager kernels shared with the bf16 test
    out = jax.eval_shape(
        lambda a, b: model(a, b, jax.random.key(0)),
        f1.astype(jnp.bfloat16),
        f2.astype(jnp.bfloat16),
    )
    assert out.target.dtype == out.loss.dtype == jnp.float32
    with jax.enable_x64(True):  # float32 stays float32, not the x64 default float
        out = jax.eval_shape(lambda a, b: model(a, b, jax.random.key(0)), f1, f2)
        assert out.target.dtype == out.loss.dtype == jnp.float32
    out = model(f1, f2, jax.random.key(0))
    np.testing.assert_array_equal(out.target, vit.patchify(f2, PATCH))
    want = (((np.asarray(out.pred) - out.target) ** 2).mean(-1) * out.mask).sum()
    np.testing.assert_allclose(out.loss, want / 32, rtol=1e-5)  # 8 of 16 x 4


def test_norm_pix_float32_and_constant_patches():
    """Constant patches normalise to zeros (eps keeps the variance positive);
    bf16 patches are normalised in float32 (MAE's unbiased variance)."""
    flat = np.full((1, 2, 12), 3.5, np.float32)
    out = np.asarray(siammae.norm_pix(jnp.asarray(flat)))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, 0.0)
    x = np.random.default_rng(1).normal(100.0, 1.0, (3, 48)).astype(np.float32)
    xb = jnp.asarray(x, jnp.bfloat16)
    got = siammae.norm_pix(xb)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, _maes_norm_pix(xb, ddof=1), atol=1e-3)
    with jax.enable_x64(True):  # float32 stays float32, not the x64 default float
        assert siammae.norm_pix(jnp.asarray(x)).dtype == jnp.float32


def test_masked_l2_one_masked_patch_and_low_precision_inputs():
    """One masked patch: the loss is that patch's MSE (divided by 1, not more);
    no masked patch: 0; bf16 inputs: computed and returned in float32."""
    pred = np.zeros((1, 3, 4), np.float32)
    target = np.array([[[1, 1, 1, 1], [2, 0, 0, 0], [9, 9, 9, 9]]], np.float32)
    mask = np.array([[0, 1, 0]], np.float32)
    np.testing.assert_allclose(siammae.masked_l2(pred, target, mask), 1.0)
    assert float(siammae.masked_l2(pred, target, 0 * mask)) == 0.0
    rng = np.random.default_rng(2)
    p = jnp.asarray(rng.normal(size=(2, 5, 64)), jnp.bfloat16)
    t = jnp.asarray(rng.normal(size=(2, 5, 64)) + 0.01, jnp.bfloat16)
    m = jnp.asarray([[1, 0, 1, 1, 0], [0, 1, 1, 0, 1]], jnp.float32)
    loss = siammae.masked_l2(p, t, m)
    assert loss.dtype == jnp.float32
    d = np.asarray(p, np.float64) - np.asarray(t, np.float64)
    want = ((d**2).mean(-1) * np.asarray(m)).sum() / 6
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    with jax.enable_x64(True):  # float32 stays float32, not the x64 default float
        loss = siammae.masked_l2(jnp.asarray(pred), jnp.asarray(target), mask)
        assert loss.dtype == jnp.float32


def test_no_visible_patch_names_the_grid():
    """A 1x8 grid at 95% masking keeps int(8 x 0.05) = 0 patches: refused, the
    message naming the grid as rows x columns and the rule (8x8 = 64 patches
    would keep 3). TINY's 4x4 grid keeps int(0.8) = 0 under MAE's rule, refused,
    and round(0.8) = 1 under the old one."""
    want = (
        "mask_ratio=0.95 leaves no visible patch of the 1x8 grid "
        "(visible_rule='int'); lower mask_ratio or use a larger image_size."
    )
    wide = {**TINY, "image_size": (8, 64), "visible_rule": "int"}
    with pytest.raises(ValueError, match=f"^{re.escape(want)}$"):
        SiamMAE(**wide, mask_ratio=0.95, rngs=nnx.Rngs(0))
    SiamMAE(**wide, mask_ratio=0.85, rngs=nnx.Rngs(0))
    want = want.replace("1x8", "4x4")
    with pytest.raises(ValueError, match=f"^{re.escape(want)}$"):
        SiamMAE(**{**TINY, "visible_rule": "int"}, rngs=nnx.Rngs(0))
    old = SiamMAE(**{**TINY, "visible_rule": "round"}, rngs=nnx.Rngs(0))
    assert old.mask_ratio == 0.95


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(norm_pix_ddof=2), r"norm_pix_ddof=2 must be 1 \(MAE's unbiased variance\)"),
        (dict(norm_pix_ddof=-1), "norm_pix_ddof=-1 must be 1"),
        (dict(norm_pix_ddof=True), "norm_pix_ddof=True must be 1"),
        (dict(norm_pix_ddof=1.0), r"norm_pix_ddof=1\.0 must be 1"),
        (dict(norm_pix_ddof="1"), "norm_pix_ddof='1' must be 1"),
        (dict(visible_rule="floor"), r"visible_rule='floor' must be one of \('int', 'round'\)"),
        (dict(visible_rule="INT"), "visible_rule='INT' must be one of"),
    ],
)  # fmt: skip
def test_convention_fields_are_checked(kwargs, message):
    """Bad ``norm_pix_ddof`` / ``visible_rule``: the model and the config's
    model section (``model.`` + the field) refuse them by name."""
    with pytest.raises(ValueError, match=message):
        nnx.eval_shape(
            lambda: SiamMAE(**{**TINY, "mask_ratio": 0.5, **kwargs}, rngs=nnx.Rngs(0))
        )
    from siammae_jax.models import definition

    with pytest.raises(ValueError, match="^model." + message):
        definition.model_kwargs({**TINY, **kwargs})
    for good in ({"norm_pix_ddof": 0}, {"visible_rule": "round"}, {}):
        definition.model_kwargs({**TINY, **good})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(mask_ratio=1.0),
            r"mask_ratio=1.0 must lie in the open interval \(0, 1\)",
        ),
        (
            dict(mask_ratio=1.5),
            r"mask_ratio=1.5 must lie in the open interval \(0, 1\)",
        ),
        (
            dict(decoder_dim=0),
            "decoder_dim=0, decoder_depth=2, decoder_heads=2 must all be positive.",
        ),
        (dict(decoder_heads=0), "decoder_heads=0 must all be positive."),
        (
            dict(decoder_depth=0),
            "decoder_depth=0, decoder_heads=2 must all be positive.",
        ),
        # 1 is a positive size: the next check speaks.
        (dict(decoder_dim=1, decoder_heads=1), "decoder_dim=1 must be a multiple of 4"),
        (
            dict(decoder_dim=6),
            r"decoder_dim=6 must be a multiple of 4 \(sin-cos position embeddings\)\.",
        ),
    ],
)
def test_decoder_config_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nnx.eval_shape(lambda: SiamMAE(**{**TINY, **kwargs}, rngs=nnx.Rngs(0)))


def test_smallest_decoder_is_allowed():
    model = nnx.eval_shape(
        lambda: SiamMAE(
            **{**TINY, "decoder_depth": 1, "decoder_heads": 1},
            mask_ratio=MAE_RATIO,
            rngs=nnx.Rngs(0),
        )
    )
    assert len(model.decoder_blocks) == 1
    assert model.decoder_blocks[0].attn.num_heads == 1


@pytest.mark.parametrize("decoder_type", ["cross_self", "joint"])
def test_decoder_mlp_ratio_sets_the_hidden_width(decoder_type):
    model = nnx.eval_shape(
        lambda: SiamMAE(
            **{**TINY, "decoder_mlp_ratio": 2.0, "decoder_type": decoder_type},
            mask_ratio=MAE_RATIO,
            rngs=nnx.Rngs(0),
        )
    )
    for block in model.decoder_blocks:
        assert block.mlp.fc1.kernel.shape == (32, 64)  # 2 x decoder_dim 32


def test_mask_token_starts_like_maes():
    """MAE initialises the [MASK] token from N(0, 0.02^2)."""
    model = SiamMAE(
        **{**TINY, "decoder_dim": 512, "decoder_heads": 8},
        mask_ratio=MAE_RATIO,
        rngs=nnx.Rngs(0),
    )
    token = np.asarray(model.mask_token[...]).ravel()
    assert token.shape == (512,)
    assert 0.017 < token.std() < 0.023 and abs(token.mean()) < 0.004


def test_decoder_parameters_follow_the_sharding_rules():
    """The paper config's rules (embed and decoder_embed -> fsdp, mlp -> tensor)
    give these layouts; a mesh axis is used once per array."""
    from jax.sharding import PartitionSpec as P

    from siammae_jax.configs import siammae as siammae_config
    from siammae_jax.models.definition import ModelDef

    rules = siammae_config.get_config("vits16").sharding_rules
    specs = ModelDef({**TINY, "mask_ratio": MAE_RATIO}, rules).param_specs
    assert specs["decoder_embed"] == {"kernel": P("fsdp", None), "bias": P("fsdp")}
    assert specs["mask_token"] == P(None, None, "fsdp")
    assert specs["decoder_pred"] == {"kernel": P("fsdp", None), "bias": P(None)}
    assert specs["decoder_blocks"][0]["mlp"]["fc1"]["kernel"] == P("fsdp", "tensor")
