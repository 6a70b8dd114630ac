"""Evaluation with frozen features: label propagation and its benchmarks.

``evaluate(task, features, data, protocol="siammae", out=None)`` scores any
backbone (see :mod:`siammae_jax.eval.run`); ``protocols`` names the settings.
"""

from siammae_jax.eval.run import evaluate

__all__ = ["evaluate"]
