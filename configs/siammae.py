"""The documented ``--config`` path: ``--config configs/siammae.py:vits16``.

The configs are :mod:`siammae_jax.configs.siammae` (installed with the
package; ``--config siammae_jax/configs/siammae.py:vits16`` works as well).
This file only re-exports them so the command lines in the README, the TPU
scripts and the benchmarks keep working from a checkout.
"""

from siammae_jax.configs.siammae import VARIANTS, get_config

__all__ = ["VARIANTS", "get_config"]
