"""Analytic FLOP counts of SiamMAE, for MFU.

Counts the matrix multiplications (2 FLOPs per multiply-add), including the
attention score and value products; norms, softmax and GELU are ignored
(about 1-3% at ViT-S sizes). A training step costs about three forward
passes (forward + backward), the usual convention for MFU.
"""

from __future__ import annotations

import jax

from siammae_jax.models import siammae, vit


def _attention(tokens: int, context: int, dim: int) -> float:
    """One attention layer: ``tokens`` queries over ``context`` keys/values."""
    proj = 2 * dim * dim * (2 * tokens + 2 * context)  # q, out on tokens; k, v
    scores = 4 * tokens * context * dim  # q.k and weights.v
    return proj + scores


def _mlp(tokens: int, dim: int, hidden: int) -> float:
    return 4 * tokens * dim * hidden


def encoder_flops(variant: str, tokens: int, patches: int) -> float:
    """Forward FLOPs of the ViT on ``tokens`` tokens (``patches`` embedded)."""
    size, patch = vit.parse_variant(variant)
    d, h = size.width, int(size.width * size.mlp_ratio)
    per_block = _attention(tokens, tokens, d) + _mlp(tokens, d, h)
    return 2 * patches * patch * patch * 3 * d + size.depth * per_block


def pair_flops(
    encoder: str = "S/16",
    *,
    image_size: int | tuple[int, int] = 224,
    mask_ratio: float = 0.95,
    decoder_type: str = "cross_self",
    decoder_dim: int = 512,
    decoder_depth: int = 8,
    decoder_heads: int = 16,
    decoder_mlp_ratio: float = 4.0,
    visible_rule: str = "int",
    **unused,
) -> dict[str, float]:
    """Forward FLOPs for one frame pair, by part.

    Takes the same keyword arguments as ``SiamMAE`` (others are ignored), so
    ``pair_flops(**model_kwargs)`` counts the model that those build.

    Returns:
      A dict with ``encoder_f1``, ``encoder_f2``, ``decoder``, ``forward``
      and ``train`` (= 3 x forward) FLOPs.
    """
    del decoder_heads, unused  # Heads do not change the count.
    size, patch = vit.parse_variant(encoder)
    hw = (image_size, image_size) if isinstance(image_size, int) else image_size
    n = (hw[0] // patch) * (hw[1] // patch)
    k = siammae.num_visible(n, mask_ratio, visible_rule)
    e1 = encoder_flops(encoder, 1 + n, n)
    e2 = encoder_flops(encoder, 1 + k, k)
    dd, hh = decoder_dim, int(decoder_dim * decoder_mlp_ratio)
    q = 1 + n  # f2 tokens in the decoder ([CLS] + all patches)
    if decoder_type == "joint":
        per_block = _attention(2 * q, 2 * q, dd) + _mlp(2 * q, dd, hh)
    else:
        per_block = _attention(q, q, dd) + _mlp(q, dd, hh)
        if decoder_type == "cross_self":
            per_block += _attention(q, q, dd)
    embed = 2 * (q + 1 + k) * size.width * dd
    pred = 2 * q * dd * patch * patch * 3
    dec = embed + decoder_depth * per_block + pred
    fwd = e1 + e2 + dec
    return {
        "encoder_f1": e1,
        "encoder_f2": e2,
        "decoder": dec,
        "forward": fwd,
        "train": 3 * fwd,
    }


# Dense bf16 peak FLOP/s per chip, keyed by ``jax.Device.device_kind``.
# Looked up case-insensitively: an exact key first, else the longest key that
# starts the device kind (so "NVIDIA A100-SXM4-80GB" finds "NVIDIA A100").
PEAK_FLOPS: dict[str, float] = {
    "TPU v4": 275e12,
    "TPU v4 lite": 138e12,  # v4i (inference chip); keeps it off "TPU v4".
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5": 459e12,  # v5p reports "TPU v5".
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,  # v6e, Trillium
    "TPU v6e": 918e12,
    "NVIDIA A100": 312e12,  # SXM and PCIe alike.
    "NVIDIA H100": 989e12,  # SXM: "NVIDIA H100 80GB HBM3".
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H200": 989e12,
}


def device_peak_flops(
    device: jax.Device | None = None, override: float | None = None
) -> float | None:
    """Dense bf16 peak FLOP/s of one chip, or None when unknown (e.g. CPU).

    Args:
      device: the device to look up (default: ``jax.devices()[0]``).
      override: returned as is when given (for chips missing from the table).
    """
    if override is not None:
        return float(override)
    device = jax.devices()[0] if device is None else device
    if device.platform == "cpu":
        return None
    return _lookup_peak(device.device_kind)


def _lookup_peak(device_kind: str) -> float | None:
    kind = device_kind.lower()
    table = {k.lower(): v for k, v in PEAK_FLOPS.items()}
    if kind in table:
        return table[kind]
    prefixes = [k for k in table if kind.startswith(k)]
    return table[max(prefixes, key=len)] if prefixes else None
