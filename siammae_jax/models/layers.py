"""Transformer building blocks shared by the ViT encoder and the SiamMAE decoder.

Every parameter carries logical axis names through ``nnx.with_partitioning``
(stored as the variable's ``out_sharding`` metadata) and the main activations
are constrained with ``flax.linen.with_logical_constraint``. Both are no-ops
until a training step installs logical-axis rules and a mesh, so the same
modules run unsharded on one CPU and sharded on a pod slice.

Logical axis names used throughout:

* ``batch``: examples; ``length``: tokens; ``embed``: model width;
* ``heads`` / ``kv``: attention heads and the per-head width;
* ``mlp``: the hidden width of the feed-forward block;
* ``patch``: flattened pixels of one patch; ``norm``: LayerNorm scale/bias.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.linen import with_logical_constraint

Dtype = Any

# Activation layouts, named once so every module constrains them alike.
TOKENS = ("batch", "length", "embed")
HIDDEN = ("batch", "length", "mlp")
HEADS = ("batch", "length", "heads", "kv")

_xavier = nnx.initializers.xavier_uniform()


def named(init: Callable, names: tuple[str | None, ...]) -> Callable:
    """Wraps an initializer so its variable records logical axis ``names``.

    Sharding is not applied at creation (``eager_sharding=False``): the train
    step derives the parameters' shardings from these names and the config's
    rules, and creates them in place with ``jax.jit(..., out_shardings=...)``.
    """
    return nnx.with_partitioning(init, names, eager_sharding=False)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Applies a logical sharding constraint (a no-op without axis rules)."""
    return with_logical_constraint(x, names)


def dense(
    in_features: int,
    out_features: int,
    names: tuple[str | None, str | None],
    *,
    dtype: Dtype,
    param_dtype: Dtype,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """A ``Linear`` layer with Xavier-uniform weights (as MAE) and named axes."""
    return nnx.Linear(
        in_features,
        out_features,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=named(_xavier, names),
        bias_init=named(nnx.initializers.zeros, names[1:]),
        rngs=rngs,
    )


def layer_norm(
    features: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs
) -> nnx.LayerNorm:
    """LayerNorm with eps 1e-6 (as timm/MAE ViTs) and named parameters."""
    return nnx.LayerNorm(
        features,
        epsilon=1e-6,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=named(nnx.initializers.ones, ("norm",)),
        bias_init=named(nnx.initializers.zeros, ("norm",)),
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Multi-head attention; queries from ``x``, keys and values from ``context``.

    With ``context=None`` it is self-attention. The softmax is computed in
    float32 whatever the compute dtype, and the attention weights can be
    returned (for [CLS] attention maps and decoder correspondence).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the width {dim}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dtype = dtype
        # LinearGeneral initialises the flattened [in, out] kernel: Xavier over it,
        # as MAE/timm initialise their fused qkv and proj matrices.
        qkv_init = out_init = _xavier

        def proj(in_f, out_f, init, names, bias_names, axis=-1):
            return nnx.LinearGeneral(
                in_f,
                out_f,
                axis=axis,
                dtype=dtype,
                param_dtype=param_dtype,
                kernel_init=named(init, names),
                bias_init=named(nnx.initializers.zeros, bias_names),
                rngs=rngs,
            )

        heads = (num_heads, self.head_dim)
        qkv_names = ("embed", "heads", "kv")
        self.query = proj(dim, heads, qkv_init, qkv_names, ("heads", "kv"))
        self.key = proj(dim, heads, qkv_init, qkv_names, ("heads", "kv"))
        self.value = proj(dim, heads, qkv_init, qkv_names, ("heads", "kv"))
        self.out = proj(
            heads, dim, out_init, ("heads", "kv", "embed"), ("embed",), axis=(-2, -1)
        )

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        return_weights: bool = False,
    ) -> tuple[jax.Array, jax.Array | None]:
        context = x if context is None else context
        q = constrain(self.query(x), HEADS)
        k = constrain(self.key(context), HEADS)
        v = constrain(self.value(context), HEADS)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(self.head_dim).astype(
            q.dtype
        )
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
        out = constrain(self.out(out), TOKENS)
        return out, (weights if return_weights else None)


class Mlp(nnx.Module):
    """Two-layer feed-forward block with exact GELU (as timm's ViT)."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        *,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = dense(dim, hidden, ("embed", "mlp"), **kw)
        self.fc2 = dense(hidden, dim, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = constrain(nnx.gelu(self.fc1(x), approximate=False), HIDDEN)
        return constrain(self.fc2(h), TOKENS)


class Block(nnx.Module):
    """Pre-norm transformer block: self-attention then MLP, both residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = layer_norm(dim, **kw)
        self.attn = Attention(dim, num_heads, **kw)
        self.norm2 = layer_norm(dim, **kw)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)

    def __call__(
        self, x: jax.Array, *, return_weights: bool = False
    ) -> tuple[jax.Array, jax.Array | None]:
        a, weights = self.attn(self.norm1(x), return_weights=return_weights)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return constrain(x, TOKENS), weights
