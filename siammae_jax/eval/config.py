"""Evaluation settings (paper Table 4b; *assumed* values are our defaults).

Every field is overridable on the command line, e.g.
``python -m siammae_jax.eval davis ... --config.davis.topk=5``.
"""

import dataclasses

import ml_collections

from siammae_jax.eval.propagation import PropagationConfig


def _propagation(topk: int, radius: float) -> dict:
    """PropagationConfig's defaults (queue, temperature, queue_mode, chunk:
    documented there) with the task's ``topk`` and ``radius``."""
    defaults = dataclasses.asdict(PropagationConfig())
    return {**defaults, "topk": topk, "radius": radius}


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.batch_size = 8  # frames per encoder call
    c.overlays = 3  # videos drawn as overlay pictures
    c.davis = ml_collections.ConfigDict(
        {"split": "val", "short_side": 480, **_propagation(topk=7, radius=20)}
    )
    c.jhmdb = ml_collections.ConfigDict(
        {"split": 1, "size": 320, "sigma": 0.5, **_propagation(topk=7, radius=20)}
    )
    c.vip = ml_collections.ConfigDict(
        {"split": "val", "long_side": 880, **_propagation(topk=10, radius=8)}
    )
    return c
