"""SiamMAE: masking, visible-only encoding, targets, loss, configs, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY
from flax import nnx

from siammae_jax.models import SiamMAE, siammae, vit

PATCH, GRID = 8, (4, 4)


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


@pytest.mark.parametrize("ratio", [0.95, 0.75, 0.5, 0.1])
def test_mask_counts_and_randomness(ratio):
    n, b = 196, 8
    visible, restore, mask = siammae.random_mask(jax.random.key(0), b, n, ratio)
    keep = round(n * (1 - ratio))
    assert visible.shape == (b, keep)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), n - keep)
    for i in range(b):  # visible indices are exactly the unmasked patches
        assert set(np.asarray(visible[i])) == set(np.flatnonzero(mask[i] == 0))
        np.testing.assert_array_equal(np.sort(restore[i]), np.arange(n))
    assert len({tuple(np.sort(v)) for v in np.asarray(visible)}) == b
    again = siammae.random_mask(jax.random.key(0), b, n, ratio)[2]
    np.testing.assert_array_equal(mask, again)
    other = siammae.random_mask(jax.random.key(1), b, n, ratio)[2]
    assert not np.array_equal(mask, other)


def test_norm_pix_matches_numpy():
    x = np.random.default_rng(0).normal(3.0, 2.0, (2, 5, 48)).astype(np.float32)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    np.testing.assert_allclose(
        siammae.norm_pix(jnp.asarray(x)), (x - mean) / np.sqrt(var + 1e-6), atol=1e-5
    )


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


def test_model_loss_is_masked_l2_of_norm_pix(tiny_apply):
    f1, f2 = _frames()
    out = tiny_apply(f1, f2, jax.random.key(3))
    target = siammae.norm_pix(vit.patchify(f2, PATCH))
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
    model = SiamMAE(**TINY, decoder_type=decoder_type, rngs=nnx.Rngs(0))
    f1, f2 = _frames(batch=2)
    out = model(f1, f2, jax.random.key(0), return_attention=True)
    out2 = model(f1 + 1.0, f2, jax.random.key(0))
    assert np.isfinite(out.loss)
    assert np.abs(np.asarray(out2.pred) - np.asarray(out.pred)).max() > 1e-3
    assert out.attention.shape == (2, 2, 2, 16, 17)
    np.testing.assert_allclose(out.attention.sum(-1), 1.0, atol=1e-5)


def test_cross_block_has_no_self_attention():
    def count(t):
        m = nnx.eval_shape(lambda: SiamMAE(**TINY, decoder_type=t, rngs=nnx.Rngs(0)))
        return sum(x.size for x in jax.tree.leaves(nnx.state(m.decoder_blocks)))

    d = TINY["decoder_dim"]
    per_attn = 4 * d * d + 4 * d + 2 * d  # q, k, v, out (+ biases) + pre-norm
    assert count("cross_self") - count("cross") == TINY["decoder_depth"] * per_attn


def test_bfloat16_compute_close_to_float32():
    f1, f2 = _frames()
    key = jax.random.key(5)
    losses = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = SiamMAE(**TINY, dtype=dtype, rngs=nnx.Rngs(0))
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
