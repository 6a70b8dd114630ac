"""ViT encoder with fixed 2-D sin-cos position embeddings and a [CLS] token.

Why Flax NNX: it is what Flax recommends for new code, its variables carry
sharding metadata (logical axis names) directly, and ``nnx.split`` gives a
plain pytree of parameters for a functional, jit-compiled train step and for
orbax checkpoints, the layout big_vision and MaxText use.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from siammae_jax.models import layers

Dtype = Any


@dataclasses.dataclass(frozen=True)
class ViTSize:
    """Width, depth and heads of a named ViT size."""

    width: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


# Standard sizes (ViT/DeiT papers) plus two small ones: `demo` is the CPU
# pre-training size of the demo, `test` the size the unit tests compile.
SIZES: dict[str, ViTSize] = {
    "test": ViTSize(32, 2, 2),
    "demo": ViTSize(192, 4, 3),
    "Ti": ViTSize(192, 12, 3),
    "S": ViTSize(384, 12, 6),
    "B": ViTSize(768, 12, 12),
    "L": ViTSize(1024, 24, 16),
}

_VARIANT = re.compile(r"^(?:ViT-)?(?P<size>[A-Za-z]+)/(?P<patch>\d+)$")


def parse_variant(variant: str) -> tuple[ViTSize, int]:
    """Parses ``"S/16"`` (or ``"ViT-S/16"``) into its size and patch size.

    Raises:
      ValueError: naming the field ``encoder`` and the allowed sizes.
    """
    m = _VARIANT.match(variant)
    if not m or m["size"] not in SIZES or int(m["patch"]) < 1:
        raise ValueError(
            f"encoder={variant!r} is not a ViT variant; expected '<size>/<patch>' "
            f"with size in {sorted(SIZES)}, e.g. 'S/16' or 'B/16'."
        )
    return SIZES[m["size"]], int(m["patch"])


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """Sin-cos embedding of positions ``pos`` with ``dim`` channels (sin, then cos)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid: tuple[int, int]) -> np.ndarray:
    """Fixed 2-D sin-cos position embeddings, MAE's layout, shape [h*w, dim].

    Tokens are in row-major order; the first half of the channels encodes the
    column (x) coordinate and the second half the row (y), as in MAE's released
    ``get_2d_sincos_pos_embed`` so its checkpoints line up with ours.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need width % 4 == 0, got {dim}.")
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    return np.concatenate(
        [sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1
    ).astype(np.float32)


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], each patch flattened (row, col, channel)."""
    b, h, w, c = images.shape
    if h % patch or w % patch:
        raise ValueError(
            f"image size {h}x{w} is not divisible by the patch size {patch}."
        )
    x = images.reshape(b, h // patch, patch, w // patch, patch, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), -1)


def unpatchify(patches: jax.Array, patch: int, grid: tuple[int, int]) -> jax.Array:
    """Inverse of ``patchify``: [B, h*w, p*p*C] -> [B, h*p, w*p, C]."""
    b, _, d = patches.shape
    c = d // (patch * patch)
    x = patches.reshape(b, grid[0], grid[1], patch, patch, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, grid[0] * patch, grid[1] * patch, c)


class PosEmbed(nnx.Variable):
    """Position embeddings: a fixed buffer, not trained (excluded from ``nnx.Param``)."""


# How ``resample_pos_embed`` maps position embeddings to another token grid.
POS_INTERP = ("bicubic_aa", "dino")


def resample_pos_embed(
    pos: jax.Array,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    method: str = "bicubic_aa",
) -> jax.Array:
    """Resamples [1, 1+h*w, D] position embeddings to another grid (bicubic).

    The [CLS] entry (index 0) is kept as it is; an unchanged grid is returned
    as it is. ``method`` is one of :data:`POS_INTERP`:

    * ``"bicubic_aa"``: antialiased Keys bicubic with half-pixel centres to the
      target size, what timm's ``resample_abs_pos_embed`` does (torch
      ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)``):
      both agree within 1e-6 when up- and downsampling.
    * ``"dino"``: DINO's ``VisionTransformer.interpolate_pos_encoding``
      (facebookresearch/dino, vision_transformer.py l. 174-194), which the
      label-propagation code of DINO, CropMAE and RSP evaluates with: torch
      ``F.interpolate(mode="bicubic")`` without antialiasing, given the scale
      factor ``(n + 0.1) / m`` per axis (``m`` the stored side, ``n`` the new
      one) instead of a size. Output index ``i`` then reads source coordinate
      ``(i + 0.5) / scale - 0.5`` with cubic convolution (A = -0.75) over 4
      taps whose indices are clamped to the border; the 0.1 makes the samples
      sit slightly closer together than the target size alone would.

    Raises:
      ValueError: an unknown ``method``.
    """
    if method not in POS_INTERP:
        raise ValueError(
            f"pos_interp={method!r} is not one of {POS_INTERP} (how position "
            "embeddings are resampled to another token grid)."
        )
    if tuple(old_grid) == tuple(new_grid):
        return pos
    cls, grid = pos[:, :1], pos[:, 1:]
    d = grid.shape[-1]
    grid = grid.reshape(*old_grid, d).astype(jnp.float32)
    if method == "dino":
        rows = jnp.asarray(_dino_weights(old_grid[0], new_grid[0]))
        cols = jnp.asarray(_dino_weights(old_grid[1], new_grid[1]))
        hi = jax.lax.Precision.HIGHEST
        grid = jnp.einsum("ia,abd,jb->ijd", rows, grid, cols, precision=hi)
    else:
        grid = jax.image.resize(grid, (*new_grid, d), method="bicubic", antialias=True)
    return jnp.concatenate([cls, grid.reshape(1, -1, d).astype(pos.dtype)], axis=1)


def _dino_weights(old: int, new: int) -> np.ndarray:
    """[new, old] weights of torch's bicubic upsampling at DINO's scale factor
    ``(new + 0.1) / old`` (see ``resample_pos_embed``); source coordinates in
    float32 as torch's CPU kernel computes them (``1 / scale`` rounded once)."""
    step = np.float32(1.0 / ((new + 0.1) / old))
    src = step * (np.arange(new, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    first = np.floor(src)
    t = (src - first).astype(np.float64)[:, None]
    d = np.abs(t - np.arange(-1, 3))  # distances to the 4 taps
    a = -0.75
    near = ((a + 2) * d - (a + 3)) * d * d + 1  # |d| <= 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # 1 < |d| < 2
    taps = np.where(d <= 1, near, far)
    index = np.clip(first[:, None] + np.arange(-1, 3), 0, old - 1).astype(int)
    weights = np.zeros((new, old))
    np.add.at(weights, (np.repeat(np.arange(new), 4), index.ravel()), taps.ravel())
    return weights.astype(np.float32)


class ViT(nnx.Module):
    """Vision Transformer encoder (pre-norm blocks, final LayerNorm).

    Args:
      variant: named size and patch, e.g. ``"S/16"`` (see ``SIZES``).
      image_size: the (square or ``(h, w)``) training resolution; position
        embeddings are built for its grid and resampled for other inputs.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); ``param_dtype``: storage.
      attention, attention_pad: the attention kernel and its token padding
        (``layers.Attention``; they do not change the function).
      pos_interp: how position embeddings are resampled for another input
        size, one of :data:`POS_INTERP` (see ``resample_pos_embed``); a plain
        attribute, so ``model.pos_interp = "dino"`` switches a built model.
    """

    def __init__(
        self,
        variant: str = "S/16",
        *,
        image_size: int | tuple[int, int] = 224,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        attention: str = "xla",
        attention_pad: int = 0,
        pos_interp: str = "bicubic_aa",
        rngs: nnx.Rngs,
    ):
        size, patch = parse_variant(variant)
        if pos_interp not in POS_INTERP:
            raise ValueError(
                f"pos_interp={pos_interp!r} is not one of {POS_INTERP} (how position "
                "embeddings are resampled to another token grid)."
            )
        hw = (
            (image_size, image_size)
            if isinstance(image_size, int)
            else tuple(image_size)
        )
        if any(s % patch for s in hw):
            raise ValueError(
                f"image_size={image_size} must be divisible by the patch size {patch} "
                f"of encoder={variant!r}."
            )
        if size.width % size.num_heads:
            raise ValueError(
                f"encoder={variant!r}: heads {size.num_heads} must divide width {size.width}."
            )
        self.variant = variant
        self.patch = patch
        self.pos_interp = pos_interp
        self.width = size.width
        self.grid = (hw[0] // patch, hw[1] // patch)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.patch_embed = layers.dense(
            patch * patch * 3, size.width, ("patch", "embed"), **kw
        )
        self.cls_token = nnx.Param(
            layers.named(nnx.initializers.normal(0.02), (None, None, "embed"))(
                rngs.params(), (1, 1, size.width), param_dtype
            )
        )
        pos = np.concatenate(
            [np.zeros((1, size.width)), sincos_2d(size.width, self.grid)]
        )
        self.pos_embed = PosEmbed(
            jnp.asarray(pos[None], jnp.float32),
            out_sharding=(None, None, "embed"),
            eager_sharding=False,
        )
        self.blocks = nnx.List(
            [
                layers.Block(
                    size.width,
                    size.num_heads,
                    size.mlp_ratio,
                    attention=attention,
                    pad_to=attention_pad,
                    **kw,
                )
                for _ in range(size.depth)
            ]
        )
        self.norm = layers.layer_norm(size.width, **kw)

    def pos_for_grid(self, grid: tuple[int, int]) -> jax.Array:
        """Position embeddings [1, 1+h*w, D] for a token grid, resampled if
        needed by the rule ``self.pos_interp`` names."""
        return resample_pos_embed(self.pos_embed[...], self.grid, grid, self.pos_interp)

    def __call__(
        self,
        images: jax.Array,
        *,
        visible: jax.Array | None = None,
        return_attention: bool = False,
    ) -> tuple[jax.Array, jax.Array | None]:
        """Encodes images.

        Args:
          images: [B, H, W, 3], H and W multiples of the patch size.
          visible: optional [B, K] int indices of the patches to encode (in
            row-major patch order); the others never enter the network.
          return_attention: also return the last block's attention weights.

        Returns:
          ``(tokens, attention)``: tokens [B, 1+K, D] after the final norm with
          [CLS] first (K = all patches when ``visible`` is None); attention
          [B, heads, 1+K, 1+K] in float32, or None.
        """
        x = self.embed(images, visible)
        attention = None
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x, attention = block(x, return_weights=return_attention and last)
        return self.norm(x), attention

    def embed(self, images: jax.Array, visible: jax.Array | None = None) -> jax.Array:
        """Tokens [B, 1+K, D] entering the first block: [CLS], then the
        (``visible``) patches with their position embeddings."""
        grid = (images.shape[1] // self.patch, images.shape[2] // self.patch)
        patches = patchify(images, self.patch)
        pos = self.pos_for_grid(grid)
        x = self.patch_embed(patches.astype(self.dtype)) + pos[:, 1:].astype(self.dtype)
        if visible is not None:
            x = jnp.take_along_axis(x, visible[..., None], axis=1)
        cls = (self.cls_token[...] + pos[:, :1]).astype(x.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], 1)
        return layers.constrain(x, layers.TOKENS)

    def encode_pair(
        self, f1: jax.Array, f2: jax.Array, visible: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """``(self(f1)[0], self(f2, visible=visible)[0])`` in one pass: the two
        frames' token rows go through each dense layer, norm and MLP together
        (one larger matmul instead of a large and a tiny one) and attend each
        within its own frame, so the function is that of two calls."""
        x1, x2 = self.embed(f1), self.embed(f2, visible)
        n1 = x1.shape[1]
        x = jnp.concatenate([x1, x2], axis=1)
        for block in self.blocks:
            x, _ = block(x, split=n1)
        x = self.norm(x)
        return x[:, :n1], x[:, n1:]

    def features(self, images: jax.Array) -> jax.Array:
        """Frozen features for label propagation: L2-normalised patch tokens.

        Returns [B, h, w, D] (the [CLS] token dropped), in float32.
        """
        tokens, _ = self(images)
        grid = (images.shape[1] // self.patch, images.shape[2] // self.patch)
        x = tokens[:, 1:].astype(jnp.float32)
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        return x.reshape(x.shape[0], *grid, x.shape[-1])
