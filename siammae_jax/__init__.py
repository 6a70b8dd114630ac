"""siammae_jax: Siamese Masked Autoencoders in JAX/Flax."""

from siammae_jax.version import __version__

__all__ = ["__version__", "load", "load_encoder"]


def load(path, variant: str | None = None, **kwargs):  # -> (model, model_config)
    """``(model, model_config)`` of any weights (see ``siammae_jax.weights.load``:
    ``layout=``, ``branch=`` and ``pos_interp=`` for peers' checkpoints).

    Imported on first use, so ``import siammae_jax`` stays light.
    """
    from siammae_jax.weights import load as _load

    return _load(path, variant, **kwargs)


def load_encoder(path, variant: str | None = None, **kwargs):  # -> ViT
    """The ViT encoder of any weights (see ``siammae_jax.weights.load_encoder``)."""
    from siammae_jax.weights import load_encoder as _load

    return _load(path, variant, **kwargs)
