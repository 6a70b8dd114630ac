"""ViT encoder: parameter counts, position embeddings, patching, attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from siammae_jax.models import vit


def _trainable(model) -> int:
    params = nnx.state(model, nnx.Param)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _timm_vit_params(width: int, depth: int, patch: int, mlp_ratio: int = 4) -> int:
    """timm VisionTransformer without head and without pos_embed, from its layers."""
    hidden = mlp_ratio * width
    patch_embed = width * 3 * patch * patch + width  # Conv2d weight + bias
    cls_token = width
    block = (
        2 * width  # norm1
        + 3 * width * width
        + 3 * width  # qkv Linear
        + width * width
        + width  # proj Linear
        + 2 * width  # norm2
        + width * hidden
        + hidden  # fc1
        + hidden * width
        + width  # fc2
    )
    return patch_embed + cls_token + depth * block + 2 * width  # final norm


@pytest.mark.parametrize(
    "variant, width, depth, patch, published",
    [
        # timm totals minus the head (1000-way) and the learned pos_embed.
        ("S/16", 384, 12, 16, 22_050_664 - 385_000 - 197 * 384),
        ("B/16", 768, 12, 16, 86_567_656 - 769_000 - 197 * 768),
    ],
)
def test_param_count_matches_timm(variant, width, depth, patch, published):
    model = nnx.eval_shape(lambda: vit.ViT(variant, rngs=nnx.Rngs(0)))
    assert _timm_vit_params(width, depth, patch) == published
    assert _trainable(model) == published


def test_sincos_matches_formula():
    dim, grid = 16, (3, 5)
    got = vit.sincos_2d(dim, grid)
    want = np.zeros((grid[0] * grid[1], dim))
    quarter = dim // 4
    for r in range(grid[0]):
        for c in range(grid[1]):
            t = r * grid[1] + c
            for i in range(quarter):
                w = 1.0 / 10000 ** (i / quarter)
                want[t, i] = np.sin(c * w)
                want[t, quarter + i] = np.cos(c * w)
                want[t, 2 * quarter + i] = np.sin(r * w)
                want[t, 3 * quarter + i] = np.cos(r * w)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_patchify_roundtrip_and_order():
    x = np.arange(2 * 8 * 12 * 3, dtype=np.float32).reshape(2, 8, 12, 3)
    p = vit.patchify(jnp.asarray(x), 4)
    assert p.shape == (2, 6, 48)
    # Patch (row 1, col 2) flattened as (pixel row, pixel col, channel).
    np.testing.assert_array_equal(p[1, 1 * 3 + 2], x[1, 4:8, 8:12].reshape(-1))
    np.testing.assert_array_equal(vit.unpatchify(p, 4, (2, 3)), x)


def test_resample_pos_embed_keeps_cls_and_identity():
    pos = jnp.asarray(
        np.concatenate([np.ones((1, 8)), vit.sincos_2d(8, (4, 4))])[None], jnp.float32
    )
    assert vit.resample_pos_embed(pos, (4, 4), (4, 4)) is pos
    out = vit.resample_pos_embed(pos, (4, 4), (6, 3))
    assert out.shape == (1, 1 + 18, 8)
    np.testing.assert_array_equal(out[0, 0], np.ones(8))


def test_resample_pos_embed_matches_torch_antialiased_bicubic():
    # torch 2.14 F.interpolate(x, size, mode="bicubic", align_corners=False,
    # antialias=True) of x = arange(16).reshape(4, 4) ** 1.5: what timm's
    # resample_abs_pos_embed does for non-224 inputs (down- and upsampling).
    x = np.arange(16, dtype=np.float32).reshape(4, 4) ** 1.5
    pos = jnp.asarray(np.concatenate([[0.0], x.reshape(-1)])[None, :, None])
    down = [[1.37891, 3.65998, 6.92690], [15.63830, 20.77883, 26.36599]]
    down += [[38.68902, 45.52862, 52.71335]]
    up = [-0.56338, -0.03253, 1.10046, 2.80762, 4.41787]
    up_last = [42.58329, 46.27719, 50.93907, 55.76460, 59.76614]
    got = vit.resample_pos_embed(pos, (4, 4), (3, 3))[0, 1:, 0].reshape(3, 3)
    np.testing.assert_allclose(got, down, atol=1e-4)
    got = vit.resample_pos_embed(pos, (4, 4), (6, 5))[0, 1:, 0].reshape(6, 5)
    np.testing.assert_allclose(got[0], up, atol=1e-4)
    np.testing.assert_allclose(got[-1], up_last, atol=1e-4)


@pytest.fixture(scope="module")
def encoder():
    return vit.ViT("test/8", image_size=32, rngs=nnx.Rngs(0))


def test_attention_maps(encoder):
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    tokens, attn = encoder(images, return_attention=True)
    plain, none = encoder(images)
    assert none is None
    np.testing.assert_allclose(tokens, plain, atol=1e-6)
    assert tokens.shape == (2, 17, 32)
    assert attn.shape == (2, 2, 17, 17)
    np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)

    # Recompute the last block's attention from its parameters.
    block = encoder.blocks[-1]
    x = encoder.patch_embed(vit.patchify(images, 8)) + encoder.pos_embed[...][:, 1:]
    cls = encoder.cls_token[...] + encoder.pos_embed[...][:, :1]
    x = jnp.concatenate([jnp.broadcast_to(cls, (2, 1, 32)), x], 1)
    for b in encoder.blocks[:-1]:
        x, _ = b(x)
    h = block.norm1(x)
    q = np.einsum("bte,ehd->bthd", h, block.attn.query.kernel[...])
    q = q + block.attn.query.bias[...]
    k = np.einsum("bte,ehd->bthd", h, block.attn.key.kernel[...])
    k = k + block.attn.key.bias[...]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(16)
    want = np.exp(logits - logits.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(attn, want, atol=1e-5)


def test_features_are_unit_norm_grid(encoder):
    images = jax.random.normal(jax.random.key(0), (1, 48, 64, 3))
    feats = encoder.features(images)  # another grid: position embeddings resampled
    assert feats.shape == (1, 6, 8, 32)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=-1), 1.0, atol=1e-5)


def _np_patches(images, patch):
    """[B, H, W, 3] -> [B, h*w, patch*patch*3]: row-major patches, each flattened
    row by row (pixels, then channels)."""
    b, h, w, c = images.shape
    x = np.asarray(images, np.float64).reshape(
        b, h // patch, patch, w // patch, patch, c
    )
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, patch * patch * c)


def test_masked_encode_gives_each_visible_patch_its_own_position(encoder):
    """Encoding only ``visible`` patches: the token entering the blocks for
    visible patch ``p`` is patch_embed(patch p) + pos[1 + p] (numpy, float64),
    not the position of its slot among the K visible ones; the encoder's output
    is the blocks run on those tokens."""
    images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    # Not the first K positions, not sorted, different per sample.
    visible = np.array([[9, 2, 14, 6, 11], [15, 0, 7, 12, 5]])
    w = np.asarray(encoder.patch_embed.kernel[...], np.float64)
    bias = np.asarray(encoder.patch_embed.bias[...], np.float64)
    pos = np.asarray(encoder.pos_embed[...], np.float64)[0]
    cls = np.asarray(encoder.cls_token[...], np.float64)[0, 0] + pos[0]
    patches = np.take_along_axis(_np_patches(images, 8), visible[..., None], axis=1)
    want = np.concatenate(
        [np.broadcast_to(cls, (2, 1, 32)), patches @ w + bias + pos[1 + visible]], 1
    )
    got = encoder.embed(images, jnp.asarray(visible))
    np.testing.assert_allclose(got, want, atol=1e-5)
    x = jnp.asarray(want, jnp.float32)
    for block in encoder.blocks:
        x, _ = block(x)
    tokens, _ = encoder(images, visible=jnp.asarray(visible))
    np.testing.assert_allclose(tokens, encoder.norm(x), atol=1e-5)
    # The same tokens as the whole image's embedding at those patches.
    whole = np.asarray(encoder.embed(images))
    np.testing.assert_allclose(
        got[:, 1:], np.take_along_axis(whole[:, 1:], visible[..., None], 1), atol=1e-5
    )


def test_features_are_the_normalised_patch_tokens_in_grid_order(encoder):
    """``features``: the encoder's tokens without [CLS] (index 0), each
    L2-normalised, laid out row-major on the h x w grid (numpy from ``encoder``'s
    tokens; a 4x6 grid so rows and columns cannot be swapped)."""
    images = jax.random.normal(jax.random.key(3), (2, 32, 48, 3))
    tokens, _ = encoder(images)
    tokens = np.asarray(tokens, np.float64)
    assert tokens.shape == (2, 1 + 24, 32)
    patches = tokens[:, 1:]
    unit = patches / np.linalg.norm(patches, axis=-1, keepdims=True)
    want = np.empty((2, 4, 6, 32))
    for row in range(4):
        for col in range(6):
            want[:, row, col] = unit[:, row * 6 + col]
    feats = encoder.features(images)
    assert feats.dtype == jnp.float32
    np.testing.assert_allclose(feats, want, atol=1e-5)


def test_every_variable_names_its_axes():
    model = nnx.eval_shape(lambda: vit.ViT("test/8", image_size=32, rngs=nnx.Rngs(0)))
    allowed = {None, "patch", "embed", "heads", "kv", "mlp", "norm"}
    variables = jax.tree.leaves(
        nnx.state(model), is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    assert variables
    for v in variables:
        names = v.get_metadata().get("out_sharding")
        assert names is not None and len(names) == v.ndim, v
        assert set(names) <= allowed


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(variant="S/16", image_size=100), "image_size"),
        (dict(variant="X/16"), "encoder"),
        (dict(variant="S16"), "encoder"),
    ],
)
def test_bad_encoder_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        nnx.eval_shape(lambda: vit.ViT(**kwargs, rngs=nnx.Rngs(0)))
