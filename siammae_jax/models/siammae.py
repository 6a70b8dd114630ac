"""Siamese Masked Autoencoder (Gupta et al., NeurIPS 2023).

One ViT encoder with shared weights encodes the past frame f1 whole and the
visible 5% of the future frame f2; a decoder of cross-self blocks predicts the
masked patches of f2 from its visible tokens and all of f1's tokens.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from siammae_jax.models import layers, vit

Dtype = Any
DECODER_TYPES = ("cross_self", "cross", "joint")
# How many f2 patches stay visible: MAE's floor, or rounding to the nearest.
VISIBLE_RULES = ("int", "round")


class Output(NamedTuple):
    """What a SiamMAE forward pass returns.

    loss: scalar, mean squared error over the masked f2 patches (float32).
    pred: [B, N, p*p*3] predicted pixels of every f2 patch.
    target: [B, N, p*p*3] the (norm-pix when enabled) f2 patches.
    mask: [B, N] float32, 1 where the f2 patch was masked (the loss' support).
    attention: [B, blocks, heads, N, 1+N] every decoder block's attention of
      f2 patch queries over f1 tokens ([CLS] first), when requested; else None.
    """

    loss: jax.Array
    pred: jax.Array
    target: jax.Array
    mask: jax.Array
    attention: jax.Array | None


def num_visible(num_patches: int, mask_ratio: float, rule: str = "int") -> int:
    """Visible patches per sample.

    Args:
      num_patches: patches per frame, N.
      mask_ratio: fraction of them masked.
      rule: ``"int"``, MAE's ``len_keep = int(L * (1 - mask_ratio))``
        (models_mae.py, ``random_masking``; the same float expression, so 9 of
        196 patches at 0.95), or ``"round"``, round(N x (1 - mask_ratio)) (this
        library before issue 26; 10 of 196).

    Raises:
      ValueError: an unknown ``rule``.
    """
    if rule == "int":
        return int(num_patches * (1 - mask_ratio))
    if rule == "round":
        return int(round(num_patches * (1 - mask_ratio)))
    raise ValueError(f"visible_rule={rule!r} must be one of {VISIBLE_RULES}.")


def random_mask(
    key: jax.Array,
    batch: int,
    num_patches: int,
    mask_ratio: float,
    rule: str = "int",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draws a uniformly random mask per sample.

    Returns:
      ``(visible, restore, mask)``: visible [B, K] patch indices (K =
      ``num_visible(num_patches, mask_ratio, rule)``), restore [B, N] the
      permutation that puts ``[visible..., masked...]`` back into patch order,
      mask [B, N] (1 = masked).
    """
    keep = num_visible(num_patches, mask_ratio, rule)
    shuffle = jnp.argsort(jax.random.uniform(key, (batch, num_patches)), axis=1)
    restore = jnp.argsort(shuffle, axis=1)
    mask = (restore >= keep).astype(jnp.float32)
    return shuffle[:, :keep], restore, mask


def norm_pix(patches: jax.Array, eps: float = 1e-6, ddof: int = 1) -> jax.Array:
    """Per-patch normalised pixels (MAE's norm-pix target), in float32.

    ``(x - mean) / sqrt(var + eps)`` over each patch's pixels, the variance
    with ``ddof`` (1: unbiased, torch's ``Tensor.var`` default, which MAE's
    ``forward_loss`` uses; 0: the population variance).
    """
    x = patches.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True, ddof=ddof)
    return (x - mean) / jnp.sqrt(var + eps)


def masked_l2(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over masked patches of the per-patch mean squared error."""
    per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
    return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class CrossSelfBlock(nnx.Module):
    """Decoder block: cross-attention to f1, optional self-attention, then MLP.

    ``self_attention=False`` gives the paper's ``cross`` block.
    """

    def __init__(self, dim, num_heads, mlp_ratio, *, self_attention, **kw):
        self.norm_q = layers.layer_norm(dim, **_norm_kw(kw))
        self.norm_kv = layers.layer_norm(dim, **_norm_kw(kw))
        self.cross = layers.Attention(dim, num_heads, **kw)
        if self_attention:
            self.norm_self = layers.layer_norm(dim, **_norm_kw(kw))
            self.attn = layers.Attention(dim, num_heads, **kw)
        else:
            self.attn = None
        self.norm_mlp = layers.layer_norm(dim, **_norm_kw(kw))
        self.mlp = layers.Mlp(dim, int(dim * mlp_ratio), **_norm_kw(kw))

    def __call__(self, x, context, *, return_weights=False):
        a, weights = self.cross(
            self.norm_q(x), self.norm_kv(context), return_weights=return_weights
        )
        x = x + a
        if self.attn is not None:
            x = x + self.attn(self.norm_self(x))[0]
        x = x + self.mlp(self.norm_mlp(x))
        return layers.constrain(x, layers.TOKENS), weights


def _norm_kw(kw):
    return {k: kw[k] for k in ("dtype", "param_dtype", "rngs")}


class SiamMAE(nnx.Module):
    """Siamese masked autoencoder over frame pairs.

    Args:
      encoder: ViT variant, e.g. ``"S/16"`` (see ``vit.SIZES``).
      image_size: training resolution (square int or ``(h, w)``).
      mask_ratio: fraction of f2's patches masked, in (0, 1); default 0.95.
      decoder_type: ``"cross_self"`` (default), ``"cross"`` or ``"joint"``.
      decoder_dim, decoder_depth, decoder_heads: decoder size (512/8/16, MAE's).
      decoder_mlp_ratio: hidden width of decoder MLPs over ``decoder_dim``.
      norm_pix_loss: regress per-patch normalised pixels (MAE's norm-pix).
      norm_pix_ddof: the norm-pix variance's delta degrees of freedom: 1
        (MAE's unbiased variance, the default) or 0 (the population variance).
      visible_rule: how many f2 patches stay visible (``num_visible``):
        ``"int"`` (MAE's floor, the default) or ``"round"``.
      dtype: compute dtype; param_dtype: storage dtype of the parameters.
      attention: ``model.attention``, the kernel of every attention layer
        (``xla``, ``cudnn`` or ``auto``); attention_pad: ``model.attention_pad``,
        token counts padded to a multiple of it for the kernel (0: none).
        Neither changes the model's function (``layers.attend``).
      fuse_encoder: ``model.fuse_encoder``, encode f1 and f2's visible patches
        in one encoder pass (``ViT.encode_pair``; the same function).
      rngs: ``nnx.Rngs`` for initialisation.

    Raises:
      ValueError: naming the bad field and its allowed values.
    """

    def __init__(
        self,
        encoder: str = "S/16",
        *,
        image_size: int | tuple[int, int] = 224,
        mask_ratio: float = 0.95,
        decoder_type: str = "cross_self",
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        decoder_mlp_ratio: float = 4.0,
        norm_pix_loss: bool = True,
        norm_pix_ddof: int = 1,
        visible_rule: str = "int",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        attention: str = "xla",
        attention_pad: int = 0,
        fuse_encoder: bool = False,
        rngs: nnx.Rngs,
    ):
        _check_decoder(
            mask_ratio, decoder_type, decoder_dim, decoder_depth, decoder_heads
        )
        check_conventions(norm_pix_ddof, visible_rule)
        self.encoder = vit.ViT(
            encoder,
            image_size=image_size,
            dtype=dtype,
            param_dtype=param_dtype,
            attention=attention,
            attention_pad=attention_pad,
            rngs=rngs,
        )
        grid = self.encoder.grid
        if num_visible(grid[0] * grid[1], mask_ratio, visible_rule) < 1:
            raise ValueError(
                f"mask_ratio={mask_ratio} leaves no visible patch of the {grid[0]}x{grid[1]} "
                f"grid (visible_rule={visible_rule!r}); lower mask_ratio or use a "
                "larger image_size."
            )
        self.mask_ratio = mask_ratio
        self.fuse_encoder = fuse_encoder
        self.decoder_type = decoder_type
        self.norm_pix_loss = norm_pix_loss
        self.norm_pix_ddof = norm_pix_ddof
        self.visible_rule = visible_rule
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        patch = self.encoder.patch
        self.decoder_embed = layers.dense(
            self.encoder.width, decoder_dim, ("embed", "decoder_embed"), **kw
        )
        self.mask_token = nnx.Param(
            layers.named(nnx.initializers.normal(0.02), (None, None, "decoder_embed"))(
                rngs.params(), (1, 1, decoder_dim), param_dtype
            )
        )
        pos = np.concatenate(
            [np.zeros((1, decoder_dim)), vit.sincos_2d(decoder_dim, grid)]
        )
        self.decoder_pos = vit.PosEmbed(
            jnp.asarray(pos[None], jnp.float32),
            out_sharding=(None, None, "decoder_embed"),
            eager_sharding=False,
        )
        self.decoder_blocks = _decoder_blocks(
            decoder_type, decoder_dim, decoder_heads, decoder_mlp_ratio,
            decoder_depth, attention=attention, pad_to=attention_pad, **kw,
        )  # fmt: skip
        self.decoder_norm = layers.layer_norm(decoder_dim, **kw)
        self.decoder_pred = layers.dense(
            decoder_dim, patch * patch * 3, ("decoder_embed", "patch"), **kw
        )

    def encode_pair(self, f1: jax.Array, f2: jax.Array, key: jax.Array) -> tuple:
        """Encodes f1 whole and the visible patches of f2 (drawn from ``key``)."""
        grid = self.encoder.grid
        if f1.shape != f2.shape or f1.shape[1:3] != (
            grid[0] * self.encoder.patch,
            grid[1] * self.encoder.patch,
        ):
            raise ValueError(
                f"frames of shape {f1.shape} and {f2.shape} do not match the model's "
                f"image_size {grid[0] * self.encoder.patch}x{grid[1] * self.encoder.patch}."
            )
        visible, restore, mask = random_mask(
            key, f2.shape[0], grid[0] * grid[1], self.mask_ratio, self.visible_rule
        )
        if self.fuse_encoder:
            z1, z2 = self.encoder.encode_pair(f1, f2, visible)
        else:
            z1, _ = self.encoder(f1)
            z2, _ = self.encoder(f2, visible=visible)
        return z1, z2, restore, mask

    def decode(
        self,
        z1: jax.Array,
        z2: jax.Array,
        restore: jax.Array,
        *,
        return_attention: bool = False,
    ) -> tuple:
        """Predicts every f2 patch from f1's tokens and f2's visible tokens.

        Returns ``(pred [B, N, p*p*3], attention [B, blocks, heads, N, 1+N] or
        None)``.
        """
        x1 = self.decoder_embed(z1)
        x2 = self.decoder_embed(z2)
        b, n = restore.shape
        fill = jnp.broadcast_to(
            self.mask_token[...].astype(x2.dtype),
            (b, n - (x2.shape[1] - 1), x2.shape[2]),
        )
        patches = jnp.concatenate([x2[:, 1:], fill], axis=1)
        patches = jnp.take_along_axis(patches, restore[..., None], axis=1)
        pos = self.decoder_pos[...].astype(x2.dtype)
        x2 = jnp.concatenate([x2[:, :1], patches], axis=1) + pos
        x1 = x1 + pos
        x2 = layers.constrain(x2, layers.TOKENS)
        attention = []
        for block in self.decoder_blocks:
            if self.decoder_type == "joint":
                joint, weights = block(
                    jnp.concatenate([x1, x2], 1), return_weights=return_attention
                )
                x1, x2 = joint[:, : x1.shape[1]], joint[:, x1.shape[1] :]
                if return_attention:  # f2 queries over the f1 keys, renormalised.
                    weights = weights[:, :, x1.shape[1] :, : x1.shape[1]]
                    weights = weights / weights.sum(-1, keepdims=True)
            else:
                x2, weights = block(x2, x1, return_weights=return_attention)
            if return_attention:
                attention.append(weights[:, :, 1:])  # f2's [CLS] query dropped
        pred = self.decoder_pred(self.decoder_norm(x2))[:, 1:]
        return pred, jnp.stack(attention, axis=1) if return_attention else None

    def __call__(
        self, f1: jax.Array, f2: jax.Array, key: jax.Array, *, return_attention=False
    ) -> Output:
        """Loss and predictions for a batch of frame pairs.

        Args:
          f1, f2: [B, H, W, 3] past and future frames (same crop), normalised.
          key: PRNG key for f2's masks (one mask per sample).
          return_attention: also return every decoder block's cross-attention.
        """
        z1, z2, restore, mask = self.encode_pair(f1, f2, key)
        pred, attention = self.decode(
            z1, z2, restore, return_attention=return_attention
        )
        target = vit.patchify(f2, self.encoder.patch).astype(jnp.float32)
        if self.norm_pix_loss:
            target = norm_pix(target, ddof=self.norm_pix_ddof)
        loss = masked_l2(pred, target, mask)
        return Output(loss, pred, target, mask, attention)


def _decoder_blocks(
    decoder_type: str, dim: int, heads: int, mlp_ratio: float, depth: int, **kw
) -> nnx.List:
    """``depth`` decoder blocks: self-attention over both frames' tokens
    (``joint``), or cross-attention to f1 (``cross``) then self-attention
    (``cross_self``)."""
    if decoder_type == "joint":
        blocks = [layers.Block(dim, heads, mlp_ratio, **kw) for _ in range(depth)]
    else:
        blocks = [
            CrossSelfBlock(
                dim, heads, mlp_ratio, self_attention=decoder_type == "cross_self", **kw
            )
            for _ in range(depth)
        ]
    return nnx.List(blocks)


def check_conventions(norm_pix_ddof: int = 1, visible_rule: str = "int") -> None:
    """Checks the fields that choose between MAE's target and mask conventions
    and this library's earlier ones.

    Raises:
      ValueError: naming the bad field and its allowed values.
    """
    integer = isinstance(norm_pix_ddof, (int, np.integer))
    if not integer or isinstance(norm_pix_ddof, bool) or norm_pix_ddof not in (0, 1):
        raise ValueError(
            f"norm_pix_ddof={norm_pix_ddof!r} must be 1 (MAE's unbiased variance) "
            "or 0 (the population variance)."
        )
    if visible_rule not in VISIBLE_RULES:
        raise ValueError(
            f"visible_rule={visible_rule!r} must be one of {VISIBLE_RULES} "
            "('int': MAE's int(N x (1 - mask_ratio)); 'round': the nearest integer)."
        )


def _check_decoder(mask_ratio, decoder_type, dim, depth, heads):
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(
            f"mask_ratio={mask_ratio} must lie in the open interval (0, 1)."
        )
    if decoder_type not in DECODER_TYPES:
        raise ValueError(
            f"decoder_type={decoder_type!r} must be one of {DECODER_TYPES}."
        )
    if dim < 1 or depth < 1 or heads < 1:
        raise ValueError(
            f"decoder_dim={dim}, decoder_depth={depth}, decoder_heads={heads} "
            "must all be positive."
        )
    if dim % heads:
        raise ValueError(f"decoder_heads={heads} must divide decoder_dim={dim}.")
    if dim % 4:
        raise ValueError(
            f"decoder_dim={dim} must be a multiple of 4 (sin-cos position embeddings)."
        )
