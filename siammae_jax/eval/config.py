"""Evaluation settings: the ``siammae`` protocol (paper Table 4b plus our
documented assumptions) for each benchmark, plus which data and memory.

``--protocol NAME`` swaps in another protocol's values (see
:mod:`siammae_jax.eval.protocols`); every field stays overridable on the
command line, e.g. ``python -m siammae_jax.eval davis ... --config.davis.topk=5``,
and an override is recorded in ``summary.json`` as a departure.
"""

import ml_collections

from siammae_jax.eval import protocols

# Not part of any protocol: which data, and peak memory (results unchanged).
_OPERATIONAL = {
    "davis": {"split": "val"},
    "jhmdb": {"split": 1},
    "vip": {"split": "val"},
}


def task_section(task: str) -> ml_collections.ConfigDict:
    """One benchmark's section: split, the ``siammae`` protocol, chunk."""
    return ml_collections.ConfigDict(
        {
            **_OPERATIONAL[task],
            **protocols.settings("siammae", task),
            "chunk": 1024,  # target positions per affinity chunk (memory only)
        }
    )


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.batch_size = 8  # frames per encoder call
    c.overlays = 3  # videos drawn as overlay pictures
    for task in protocols.TASKS:
        c[task] = task_section(task)
    return c
