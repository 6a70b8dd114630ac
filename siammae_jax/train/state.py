"""The train state, created directly in its sharded layout."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from siammae_jax.models import SiamMAE
from siammae_jax.train import mesh as mesh_lib


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


class ModelDef:
    """The model's structure, fixed buffers and parameter layout, built once.

    Attributes:
      graphdef: ``nnx`` graph definition of the model.
      buffers: non-trained variables (sin-cos position embeddings), pure dict.
      param_specs: PartitionSpec per parameter under the given rules.
    """

    def __init__(self, model_kwargs: dict, rules: mesh_lib.Rules):
        self.model_kwargs = dict(model_kwargs)
        model = SiamMAE(**self.model_kwargs, rngs=nnx.Rngs(0))
        self.patch = model.encoder.patch
        self.graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
        self.buffers = nnx.to_pure_dict(buffers)
        self.param_specs = mesh_lib.state_specs(params, rules)
        self.buffer_specs = mesh_lib.state_specs(buffers, rules)

    def init_params(self, key: jax.Array) -> dict:
        model = SiamMAE(**self.model_kwargs, rngs=nnx.Rngs(params=key))
        return nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[1])

    def apply(self, params: dict, buffers: dict, *args, **kwargs):
        """Runs the model on ``args`` with these parameters."""
        return nnx.merge(self.graphdef, params, buffers)(*args, **kwargs)


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
