"""siammae_jax: Siamese Masked Autoencoders in JAX/Flax."""

__version__ = "0.1.0"


def load_encoder(path):
    """The ViT encoder of an export (see ``siammae_jax.export.load_encoder``).

    Imported on first use, so ``import siammae_jax`` stays light.
    """
    from siammae_jax.export import load_encoder as _load

    return _load(path)
