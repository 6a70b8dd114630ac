"""Issue 19's throughput levers against today's path, on CPU.

The reference is the explicit attention (``layers.reference_attention``: einsum
logits, float32 softmax), which the model used before the levers and still uses
where attention weights are returned. Every lever must leave the model's
function alone: float32 variants agree with the reference to float32 round-off
(loss 1e-5 relative); bfloat16 variants within 2% on the loss and with
gradients of cosine > 0.999 against the float32 reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY
from flax import nnx

from siammae_jax.configs import siammae as siammae_config
from siammae_jax.models import SiamMAE, layers
from siammae_jax.models.definition import model_kwargs
from siammae_jax.train import config as config_lib


def _qkv(t, s, dtype=jnp.float32, heads=2, dim=8, batch=3):
    keys = jax.random.split(jax.random.key(0), 3)
    shapes = ((batch, t, heads, dim), (batch, s, heads, dim), (batch, s, heads, dim))
    return [
        jax.random.normal(k, sh).astype(dtype)
        for k, sh in zip(keys, shapes, strict=True)
    ]


@pytest.mark.parametrize(
    "t,s,pad_to", [(11, 17, 0), (11, 17, 8), (16, 16, 2), (1, 197, 64)]
)
def test_attend_equals_the_explicit_softmax_at_any_padding(t, s, pad_to):
    """Odd token counts ([CLS] + patches) padded for the kernel and masked by
    their lengths give exactly the unpadded attention: unmasked zero keys would
    take weight exp(0) and move every output."""
    q, k, v = _qkv(t, s)
    want, _ = layers.reference_attention(q, k, v)
    got = layers.attend(q, k, v, "xla", pad_to)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    def grads(fn):  # compiled: op by op, these took seconds each
        loss = jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a))), (0, 1, 2))
        return jax.jit(loss)(q, k, v)

    g_want = grads(lambda *a: layers.reference_attention(*a)[0])
    g_got = grads(lambda *a: layers.attend(*a, "xla", pad_to))
    for a, b in zip(g_got, g_want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_padding_without_the_lengths_would_be_caught():
    """The check above can fail: zero-padded keys left unmasked change the output."""
    q, k, v = _qkv(11, 17)
    want, _ = layers.reference_attention(q, k, v)
    pad = ((0, 0), (0, 7), (0, 0), (0, 0))
    unmasked = jax.nn.dot_product_attention(q, jnp.pad(k, pad), jnp.pad(v, pad))
    assert np.abs(np.asarray(unmasked - want)).max() > 1e-2


def test_bf16_attention_keeps_float32_softmax_statistics():
    q, k, v = _qkv(11, 197, jnp.bfloat16)
    want, _ = layers.reference_attention(*(a.astype(jnp.float32) for a in (q, k, v)))
    got = layers.attend(q, k, v, "xla", 8)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=2e-2)


def test_auto_is_xla_off_gpu_and_cudnn_refuses_what_it_cannot_run():
    assert jax.default_backend() == "cpu"
    assert layers.kernel("auto", jnp.bfloat16, 64) == "xla"
    assert layers.kernel("cudnn", jnp.bfloat16, 64) == "cudnn"
    assert layers.cudnn_fits(jnp.bfloat16, 64) is None
    assert "bfloat16" in layers.cudnn_fits(jnp.float32, 64)
    assert "multiple of 8" in layers.cudnn_fits(jnp.bfloat16, 12)
    assert "<= 256" in layers.cudnn_fits(jnp.bfloat16, 512)
    with pytest.raises(ValueError, match="model.attention='cudnn' cannot run here"):
        SiamMAE(**TINY, attention="cudnn", rngs=nnx.Rngs(0))  # float32
    with pytest.raises(ValueError, match="model.attention='flash' must be one of"):
        SiamMAE(**TINY, attention="flash", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.attention_pad=-1"):
        SiamMAE(**TINY, attention_pad=-1, rngs=nnx.Rngs(0))


def test_config_fields_reach_the_model_and_are_checked():
    c = siammae_config.get_config("vits16")
    assert (c.model.attention, c.model.attention_pad, c.optim.mu_dtype) == (
        "xla",
        0,
        "",
    )
    c.model.update(attention="auto", attention_pad=8)
    kw = model_kwargs(c.model)
    assert (kw["attention"], kw["attention_pad"]) == ("auto", 8)
    c.optim.mu_dtype = "float16"
    with pytest.raises(ValueError, match="optim.mu_dtype='float16' must be one of"):
        config_lib.validate(c, num_devices=1, num_hosts=1)


# ---------------------------------------------------------------- the model

SIZES = {
    "test": dict(TINY, mask_ratio=0.5),
    "tiny": dict(
        encoder="demo/8", image_size=64, decoder_dim=128, decoder_depth=1,
        decoder_heads=4, mask_ratio=0.9,
    ),
}  # fmt: skip


def _loss_and_grads(size, **levers):
    kw = SIZES[size]
    model = SiamMAE(**kw, **levers, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    res = kw["image_size"]
    f1, f2 = jax.random.normal(jax.random.key(1), (2, 4, res, res, 3))

    @jax.jit
    def run(params):
        def loss(p):
            return nnx.merge(graphdef, p, rest)(f1, f2, jax.random.key(2)).loss

        return jax.value_and_grad(loss)(params)

    loss, grads = run(params)
    flat = jnp.concatenate(
        [g.astype(jnp.float32).ravel() for g in jax.tree.leaves(grads)]
    )
    return float(loss), np.asarray(flat)


@pytest.fixture(scope="module")
def reference():
    """Loss and gradients of today's path (explicit attention), float32."""
    saved = layers.attend
    layers.attend = lambda q, k, v, implementation, pad_to=0: (
        layers.reference_attention(q, k, v)[0]
    )
    try:
        return {size: _loss_and_grads(size) for size in SIZES}
    finally:
        layers.attend = saved


def _cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize(
    "size,levers,rtol",
    [
        ("test", dict(attention="xla"), 1e-5),
        ("test", dict(attention="auto", attention_pad=8), 1e-5),
        ("tiny", dict(attention="xla", attention_pad=8), 1e-5),
        ("test", dict(fuse_encoder=True), 1e-5),
        ("tiny", dict(fuse_encoder=True, attention_pad=8), 1e-5),
        ("test", dict(attention="xla", attention_pad=8, dtype=jnp.bfloat16), 2e-2),
        ("tiny", dict(attention="auto", fuse_encoder=True, dtype=jnp.bfloat16), 2e-2),
    ],
)
def test_every_lever_keeps_the_loss_and_gradients(reference, size, levers, rtol):
    want_loss, want_grads = reference[size]
    loss, grads = _loss_and_grads(size, **levers)
    assert loss == pytest.approx(want_loss, rel=rtol)
    cos = _cosine(grads, want_grads)
    assert cos > (0.999999 if rtol < 1e-3 else 0.999), cos


def test_one_encoder_pass_for_both_frames_is_two_passes(tiny_model):
    """``ViT.encode_pair``: f1 whole and f2's visible patches through each
    layer together, attending per frame, give the two separate calls' tokens."""
    vit = tiny_model.encoder
    f1, f2 = jax.random.normal(jax.random.key(3), (2, 3, 32, 32, 3))
    visible = jnp.array([[0, 5, 9], [2, 3, 15], [1, 7, 8]])
    z1, z2 = vit.encode_pair(f1, f2, visible)
    np.testing.assert_allclose(z1, vit(f1)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z2, vit(f2, visible=visible)[0], rtol=1e-5, atol=1e-5)
    # Attention across the frames (no split) would differ: the check can fail.
    joint = jnp.concatenate([vit.embed(f1), vit.embed(f2, visible)], axis=1)
    for block in vit.blocks:
        joint, _ = block(joint)
    assert np.abs(np.asarray(vit.norm(joint)[:, 17:] - z2)).max() > 1e-2


def test_a_cudnn_trained_model_loads_anywhere():
    """Weights of a run with model.attention=cudnn load as ``auto`` (XLA here)."""
    from siammae_jax.models.definition import ModelDef
    from siammae_jax.weights import params as params_lib

    config = dict(TINY, attention="cudnn", dtype="bfloat16")
    params = ModelDef.from_config(dict(TINY)).init_params(jax.random.key(0))
    model = params_lib.model_from(config, params, "test")
    assert model.encoder.blocks[0].attn.attention == "auto"


def test_bf16_step_runs_every_matmul_on_bf16_operands():
    """model.dtype=bfloat16: in the lowered loss-and-gradient HLO every dot
    takes bf16 operands; the only float32 results are the attention logits
    (and their gradients), accumulated from bf16 inputs (``dot_bf16_bf16_f32``)
    for the float32 softmax. A stray float32 layer would show a plain f32 dot."""
    import re

    model = SiamMAE(
        **SIZES["test"], dtype=jnp.bfloat16, fuse_encoder=True, rngs=nnx.Rngs(0)
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    f1, f2 = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))

    def loss(p):
        return nnx.merge(graphdef, p, rest)(f1, f2, jax.random.key(2)).loss

    hlo = jax.jit(jax.value_and_grad(loss)).lower(params).as_text(dialect="hlo")
    dots = [line for line in hlo.splitlines() if " dot(" in line]
    kinds = [re.search(r"= (\w+)\[", line).group(1) for line in dots]
    assert "bf16" in kinds
    stray = [
        line.strip()[:120]
        for line, kind in zip(dots, kinds, strict=True)
        if kind != "bf16" and "algorithm=dot_bf16_bf16_f32" not in line
    ]
    assert not stray, stray
    # In float32 the same check finds plain float32 dots: it can fail.
    f32 = SiamMAE(**SIZES["test"], rngs=nnx.Rngs(0))
    g32, p32, r32 = nnx.split(f32, nnx.Param, ...)
    hlo32 = (
        jax.jit(lambda p: nnx.merge(g32, p, r32)(f1, f2, jax.random.key(2)).loss)
        .lower(p32)
        .as_text(dialect="hlo")
    )
    assert any(
        " dot(" in x and "= f32[" in x and "algorithm" not in x
        for x in hlo32.splitlines()
    )


def test_xla_flags_from_the_config_refuse_to_come_too_late(monkeypatch):
    """config.xla_flags reach XLA_FLAGS only before a backend starts (the
    subprocess test in test_train_e2e.py sees them take effect)."""
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    config_lib.apply_xla_flags("")  # nothing asked: nothing checked or changed
    jax.devices()  # this process's backend is running
    with pytest.raises(RuntimeError, match="comes too late"):
        config_lib.apply_xla_flags("--xla_gpu_enable_triton_gemm=false")
    assert "triton" not in __import__("os").environ["XLA_FLAGS"]
