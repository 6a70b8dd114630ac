"""Analytic FLOPs vs XLA's cost analysis, and fwd+bwd for every named size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from siammae_jax.models import SiamMAE, flops


def _loss_fn(kwargs):
    model = nnx.eval_shape(lambda: SiamMAE(**kwargs, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, rest, f1, f2, key):
        return nnx.merge(graphdef, params, rest)(f1, f2, key).loss

    return loss, params, rest


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(encoder="S/16", image_size=224),  # the paper's ViT-S/16, 512x8 decoder
        dict(encoder="S/16", image_size=224, decoder_dim=256, decoder_depth=4,
             decoder_heads=8),
        dict(encoder="B/16", image_size=160, decoder_type="cross"),
        dict(encoder="demo/8", image_size=64, decoder_type="joint", decoder_dim=256,
             decoder_depth=2, mask_ratio=0.75),
    ],
)  # fmt: skip
def test_analytic_flops_match_xla(kwargs):
    loss, params, rest = _loss_fn(kwargs)
    size = kwargs["image_size"]
    frame = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    lowered = jax.jit(loss).lower(params, rest, frame, frame, jax.random.key(0))
    xla = lowered.cost_analysis()["flops"]
    ours = flops.pair_flops(**kwargs)["forward"]
    assert abs(ours - xla) / xla < 0.10, (ours, xla)


def _fwd_bwd(kwargs):
    model = SiamMAE(**kwargs, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, f1, f2, key):
        return nnx.merge(graphdef, params, rest)(f1, f2, key).loss

    size = kwargs["image_size"]
    f1 = jax.random.normal(jax.random.key(1), (1, size, size, 3))
    f2 = jnp.roll(f1, 3, axis=2)
    value, grads = jax.jit(jax.value_and_grad(loss))(params, f1, f2, jax.random.key(2))
    assert np.isfinite(value) and value > 0
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and max(norms) > 0
    # Every parameter but the f2-only [MASK] token path gets a gradient.
    assert sum(n > 0 for n in norms) >= len(norms) - 1


def test_forward_backward_vits16():
    _fwd_bwd(dict(encoder="S/16", image_size=224))


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(encoder="S/8", image_size=112),  # reduced resolution to keep memory
        dict(encoder="B/16", image_size=224),
        dict(encoder="L/16", image_size=224),
    ],
)
def test_forward_backward_large_sizes(kwargs):
    _fwd_bwd(kwargs)
