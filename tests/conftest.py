"""Shared test setup: 8 fake CPU devices, tiny models built once per session."""

import os

# Must happen before jax is imported anywhere (multi-device tests use it).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from siammae_jax.models import SiamMAE  # noqa: E402

# The size every model test compiles: 32x32 frames, 4x4 patches of 8 px.
TINY = dict(
    encoder="test/8",
    image_size=32,
    decoder_dim=32,
    decoder_depth=2,
    decoder_heads=2,
)


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny SiamMAE: cross_self decoder, 50% masking (8 of the 16 f2 patches visible)."""
    return SiamMAE(**TINY, mask_ratio=0.5, rngs=nnx.Rngs(0))


@pytest.fixture(scope="session")
def tiny_apply(tiny_model):
    """Jitted ``(f1, f2, key) -> Output`` of ``tiny_model`` (compiled once per shape)."""
    graphdef, state = nnx.split(tiny_model)

    @jax.jit
    def apply(f1, f2, key):
        return nnx.merge(graphdef, state)(f1, f2, key, return_attention=True)

    return apply
