"""SiamMAE models: the ViT encoder and the siamese masked autoencoder."""

from siammae_jax.models.siammae import Output, SiamMAE, random_mask
from siammae_jax.models.vit import SIZES, ViT, parse_variant

__all__ = ["SiamMAE", "Output", "random_mask", "SIZES", "ViT", "parse_variant"]
