"""Where a run's first state comes from: its latest checkpoint (when the model
config still matches), shared weights (``init_from``), or a fresh init."""

from __future__ import annotations

import inspect
import json

import jax
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from siammae_jax import weights
from siammae_jax.models import SiamMAE
from siammae_jax.models.definition import PREDATED, ModelDef
from siammae_jax.train import checkpoint
from siammae_jax.train import state as state_lib
from siammae_jax.weights import params as weight_params


def _saved_defaults(saved: dict) -> tuple[dict, dict]:
    """(what each model field missing from ``saved`` meant, the subset of
    those that predate the field: ``definition.PREDATED``)."""
    params = inspect.signature(SiamMAE.__init__).parameters
    defaults = {
        k: json.loads(json.dumps(p.default))
        for k, p in params.items()
        if k not in saved and isinstance(p.default, (bool, int, float, str, tuple))
    }
    before = {k: v for k, v in PREDATED.items() if k not in saved}
    return {**defaults, **before}, before


def model_changes(saved: dict, now: dict) -> list[str]:
    """``field: saved -> now`` for every model field that differs, except the
    compute dtype (parameters are float32 either way).

    A field the saved config lacks (written before the field existed) counts
    as the model's default for it, which is how that checkpoint was trained;
    for a field whose default differs from the behaviour before it, as that
    behaviour (``definition.PREDATED``: norm-pix ddof 0, visible rule
    ``round``).
    """
    saved, now = json.loads(json.dumps(saved)), json.loads(json.dumps(now))
    defaults, before = _saved_defaults(saved)

    def was(k):
        if k in saved:
            return repr(saved[k])
        if k in before:
            return f"{before[k]!r} (before the field existed; not saved)"
        return f"{defaults[k]!r} (the default; not saved)" if k in defaults else "None"

    return [
        f"{k}: {was(k)} -> {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if k != "dtype" and saved.get(k, defaults.get(k)) != now.get(k)
    ]


def warm_start(state: state_lib.TrainState, path: str) -> state_lib.TrainState:
    """``state`` with the weights at ``path``: the whole model's parameters,
    or the encoder's only (the decoder stays freshly initialised).

    Raises:
      FileNotFoundError: nothing loadable at ``path``.
      ValueError: the weights do not fit this run's model (names the
        parameters).
    """
    model, _ = weights.load(path)
    whole = isinstance(model, SiamMAE)
    loaded = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    target = state.params if whole else state.params["encoder"]
    problems = weight_params.mismatches(target, loaded)
    if problems:
        raise ValueError(
            f"init_from={path}: the weights do not fit this run's model "
            f"({'; '.join(problems)})"
        )
    placed = jax.tree.map(
        lambda x, t: jax.make_array_from_callback(
            t.shape, t.sharding, lambda index: np.asarray(x)[index]
        ),
        weight_params.like(loaded, target),
        target,
    )
    params = placed if whole else {**state.params, "encoder": placed}
    logging.info(
        "warm start from %s: %s; fresh optimizer, step 0",
        path,
        "the whole model" if whole else "the encoder (decoder freshly initialised)",
    )
    return state.replace(params=params)


def restore_or_init(
    ckpt: checkpoint.Checkpointer,
    data,
    *,
    model_def: ModelDef,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    abstract_state: state_lib.TrainState,
    model_config: dict,
    seed: int,
    init_from: str = "",
) -> tuple[state_lib.TrainState, state_lib.Counters]:
    """The latest complete checkpoint's state, counters and data position
    (``data`` is moved there); else a new state (warm-started from
    ``init_from`` when given) and zero counters.

    Raises:
      ValueError: the checkpoint was written with another model config (a
        workdir reused after a config change), naming the fields that differ.
    """
    latest = ckpt.latest_step()
    if latest is None:
        state = state_lib.create_state(model_def, tx, mesh, seed)
        if init_from:
            return warm_start(state, init_from), state_lib.Counters()
        logging.info("no checkpoint in %s: starting from scratch", ckpt.directory)
        return state, state_lib.Counters()
    changes = model_changes(ckpt.saved_config(latest).get("model", {}), model_config)
    if changes:
        raise ValueError(
            f"the checkpoint at step {latest} in {ckpt.directory} was written "
            f"with another model ({'; '.join(changes)}): use a new --workdir, or "
            "the old config to resume."
        )
    logging.info("resuming from step %d", latest)
    return ckpt.restore(latest, abstract_state, data), ckpt.saved_counters(latest)
