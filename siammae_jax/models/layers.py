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

# model.attention: the kernel behind jax.nn.dot_product_attention.
ATTENTION = ("xla", "cudnn", "auto")
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


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


def cudnn_fits(dtype: Dtype, head_dim: int) -> str | None:
    """Why cuDNN's flash attention cannot run these heads (None: it can)."""
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in _CUDNN_DTYPES]:
        return f"it needs bfloat16 or float16 activations, not {jnp.dtype(dtype)}"
    if head_dim % 8 or head_dim > 256:
        return (
            f"it needs a head width that is a multiple of 8 and <= 256, not {head_dim}"
        )
    return None


def kernel(attention: str, dtype: Dtype, head_dim: int) -> str:
    """The ``implementation`` of ``jax.nn.dot_product_attention`` for a
    ``model.attention`` setting: ``auto`` is cuDNN on a GPU where it fits."""
    if attention == "auto":
        fits = jax.default_backend() == "gpu" and cudnn_fits(dtype, head_dim) is None
        return "cudnn" if fits else "xla"
    return attention


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple:
    """Explicit softmax(q k^T / sqrt(d)) v over [B, T, H, D] / [B, S, H, D],
    softmax in float32. Returns ``(out [B, T, H, D], weights [B, H, T, S])``;
    used where the weights are wanted, and as the kernels' reference."""
    scale = jnp.sqrt(q.shape[-1]).astype(q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / scale
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    return out, weights


def attend(
    q: jax.Array, k: jax.Array, v: jax.Array, implementation: str, pad_to: int = 0
) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v by ``jax.nn.dot_product_attention`` (logits
    and softmax in float32 on every implementation).

    ``pad_to > 1`` pads the query and key lengths up to a multiple of it and
    passes the true lengths (``query_seq_lengths``/``key_value_seq_lengths``):
    padded keys get no weight, padded query rows are dropped, and no dense
    mask or bias is built, so cuDNN runs odd token counts ([CLS] + 196) in its
    padding mode while the result equals the unpadded attention.
    """
    t, s = q.shape[1], k.shape[1]
    lengths = {}
    if pad_to > 1:
        tp, sp = -(-t // pad_to) * pad_to, -(-s // pad_to) * pad_to
        if (tp, sp) != (t, s):
            q = jnp.pad(q, ((0, 0), (0, tp - t), (0, 0), (0, 0)))
            k, v = (jnp.pad(a, ((0, 0), (0, sp - s), (0, 0), (0, 0))) for a in (k, v))
            b = q.shape[0]
            lengths = dict(
                query_seq_lengths=jnp.full((b,), t, jnp.int32),
                key_value_seq_lengths=jnp.full((b,), s, jnp.int32),
            )
    out = jax.nn.dot_product_attention(
        q, k, v, implementation=implementation, **lengths
    )
    return out[:, :t]


class Attention(nnx.Module):
    """Multi-head attention; queries from ``x``, keys and values from ``context``.

    With ``context=None`` it is self-attention. The softmax is computed in
    float32 whatever the compute dtype. The attention weights can be returned
    (for [CLS] attention maps and decoder correspondence): that call takes the
    explicit path (:func:`reference_attention`); otherwise ``attention``
    (``model.attention``: xla, cudnn or auto) picks the kernel of
    ``jax.nn.dot_product_attention`` and ``pad_to`` its token padding.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        attention: str = "xla",
        pad_to: int = 0,
        rngs: nnx.Rngs,
    ):
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the width {dim}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dtype = dtype
        check_attention(attention, pad_to, dtype, self.head_dim)
        self.attention = attention
        self.pad_to = pad_to
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
        split: int | None = None,
    ) -> tuple[jax.Array, jax.Array | None]:
        """``split``: self-attention within ``x[:, :split]`` and within
        ``x[:, split:]`` separately (two frames' tokens in one call: the
        projections run once over both, the attention per frame)."""
        if split is not None and (context is not None or return_weights):
            raise ValueError("split is for self-attention without weights")
        context = x if context is None else context
        q = constrain(self.query(x), HEADS)
        k = constrain(self.key(context), HEADS)
        v = constrain(self.value(context), HEADS)
        if return_weights:
            out, weights = reference_attention(q, k, v)
        else:
            implementation = kernel(self.attention, q.dtype, self.head_dim)
            weights = None
            if split is None:
                out = attend(q, k, v, implementation, self.pad_to)
            else:
                out = jnp.concatenate(
                    [
                        attend(q[:, s], k[:, s], v[:, s], implementation, self.pad_to)
                        for s in (slice(None, split), slice(split, None))
                    ],
                    axis=1,
                )
        out = constrain(self.out(out), TOKENS)
        return out, weights


def check_attention(attention: str, pad_to: int, dtype: Dtype, head_dim: int) -> None:
    """Raises ValueError naming the field for a bad attention setting."""
    if attention not in ATTENTION:
        raise ValueError(f"model.attention={attention!r} must be one of {ATTENTION}.")
    if not isinstance(pad_to, int) or pad_to < 0:
        raise ValueError(f"model.attention_pad={pad_to!r} must be an int >= 0.")
    why = cudnn_fits(dtype, head_dim) if attention == "cudnn" else None
    if why:
        raise ValueError(
            f"model.attention='cudnn' cannot run here: {why} (use model.dtype="
            "'bfloat16', or model.attention='auto' to fall back to xla)."
        )


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
        attention: str = "xla",
        pad_to: int = 0,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = layer_norm(dim, **kw)
        self.attn = Attention(dim, num_heads, attention=attention, pad_to=pad_to, **kw)
        self.norm2 = layer_norm(dim, **kw)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)

    def __call__(
        self, x: jax.Array, *, return_weights: bool = False, split: int | None = None
    ) -> tuple[jax.Array, jax.Array | None]:
        """``split``: two frames' tokens, attending each within its own
        (``Attention``); norms and MLP run over both at once."""
        a, weights = self.attn(
            self.norm1(x), return_weights=return_weights, split=split
        )
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return constrain(x, TOKENS), weights
