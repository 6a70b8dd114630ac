"""siammae_jax: Siamese Masked Autoencoders in JAX/Flax."""

__version__ = "0.1.0"
