"""The train state, created directly in its sharded layout."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from siammae_jax.models.definition import ModelDef


@flax.struct.dataclass
class TrainState:
    """Everything the step updates (and a checkpoint must hold).

    Attributes:
      step: number of steps taken (skipped non-finite steps included).
      params: the model's ``nnx.Param`` values as a pure dict.
      opt_state: the optimizer's state.
      bad_in_a_row: consecutive steps whose loss or gradient was not finite.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    bad_in_a_row: jax.Array


@dataclasses.dataclass
class Counters:
    """Host-side tallies of a run, checkpointed with its state so that a
    resumed run continues them.

    Attributes:
      data_skipped: videos that could not be read and were replaced (this
        process's; process 0's is logged and saved).
      bad_steps: steps whose loss or gradient was not finite (update skipped).
    """

    data_skipped: int = 0
    bad_steps: int = 0


def state_shardings(
    model_def: ModelDef, tx: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """NamedShardings of the train state: optimizer moments follow their params."""
    replicated = NamedSharding(mesh, PartitionSpec())
    params = jax.tree.map(lambda s: NamedSharding(mesh, s), model_def.param_specs)
    abstract_params = jax.eval_shape(model_def.init_params, jax.random.key(0))
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt = optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        abstract_opt,
        params,
        transform_non_params=lambda _: replicated,
    )
    return TrainState(
        step=replicated, params=params, opt_state=opt, bad_in_a_row=replicated
    )


def create_state(
    model_def: ModelDef, tx: optax.GradientTransformation, mesh: Mesh, seed: int
) -> TrainState:
    """Initialises the state on the mesh, each array born with its sharding."""

    def init(key):
        params = model_def.init_params(key)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            bad_in_a_row=jnp.zeros((), jnp.int32),
        )

    shardings = state_shardings(model_def, tx, mesh)
    with jax.set_mesh(mesh):
        return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


def abstract_state(
    model_def: ModelDef, tx: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """ShapeDtypeStructs with the current mesh's shardings (restore targets)."""
    shapes = jax.eval_shape(
        lambda k: TrainState(
            step=jnp.zeros((), jnp.int32),
            params=model_def.init_params(k),
            opt_state=tx.init(model_def.init_params(k)),
            bad_in_a_row=jnp.zeros((), jnp.int32),
        ),
        jax.random.key(0),
    )
    shardings = state_shardings(model_def, tx, mesh)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        shapes,
        shardings,
    )
