"""The train step: a pure function of (state, batch, key), jitted over a mesh."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from siammae_jax.data import pairs
from siammae_jax.models import layers
from siammae_jax.models.definition import ModelDef
from siammae_jax.train import config as config_lib
from siammae_jax.train import mesh as mesh_lib
from siammae_jax.train import optim
from siammae_jax.train import state as state_lib
from siammae_jax.train.state import TrainState


def make_train_step(
    model_def: ModelDef,
    tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    *,
    accum_steps: int = 1,
) -> Callable:
    """Builds ``step(state, batch, key) -> (state, metrics)``.

    The masks of step ``s`` come from ``fold_in(key, s)`` (and the micro-batch
    index): one key for the global batch, so every sample, hence every
    device, gets its own mask, and the draw is the same on any mesh.
    A non-finite loss or gradient skips the update (counted in
    ``bad_in_a_row``); the step counter still advances.
    """

    def loss_fn(params, buffers, frames, key):
        frames = layers.constrain(pairs.normalize(frames), ("batch",))
        out = model_def.apply(params, buffers, frames[:, 0], frames[:, 1], key)
        return out.loss

    grad_fn = jax.value_and_grad(loss_fn)

    def grads_of(params, buffers, frames, key):
        if accum_steps == 1:
            return grad_fn(params, buffers, frames, key)
        b = frames.shape[0]
        micro = frames.reshape(b // accum_steps, accum_steps, *frames.shape[1:])

        def body(carry, i):
            loss, grads = grad_fn(
                params, buffers, micro[:, i], jax.random.fold_in(key, i)
            )
            return jax.tree.map(jnp.add, carry, (loss, grads)), None

        zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
        total, _ = jax.lax.scan(body, zeros, jnp.arange(accum_steps))
        return jax.tree.map(lambda x: x / accum_steps, total)

    def step(state: TrainState, buffers, batch, key):
        key = jax.random.fold_in(key, state.step)
        loss, grads = grads_of(state.params, buffers, batch["frames"], key)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_state = TrainState(
            step=state.step + 1,
            params=jax.tree.map(keep, params, state.params),
            opt_state=jax.tree.map(keep, opt_state, state.opt_state),
            bad_in_a_row=jnp.where(finite, 0, state.bad_in_a_row + 1),
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": lr_schedule(state.step),
            "finite": finite,
        }
        return new_state, metrics

    return step


def compile_step(
    step: Callable,
    state_shardings: TrainState,
    abstract_state: TrainState,
    model_def: ModelDef,
    mesh: Mesh,
    rules: mesh_lib.Rules,
    batch_shapes: dict,
) -> tuple[Callable, object]:
    """Jits the step over ``mesh`` (state donated) and compiles it ahead of time.

    Returns:
      ``(compiled, memory)``: the executable and its memory analysis (or None
      where the backend gives none).
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    data = mesh_lib.batch_sharding(mesh)
    buffers = jax.tree.map(lambda _: replicated, model_def.buffers)
    batch_sh = jax.tree.map(lambda _: data, batch_shapes)
    jitted = jax.jit(
        step,
        in_shardings=(state_shardings, buffers, batch_sh, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    abstract_buffers = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), model_def.buffers
    )
    abstract_batch = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        batch_shapes,
        batch_sh,
    )
    with jax.set_mesh(mesh), nnx.logical_axis_rules(list(rules)):
        lowered = jitted.lower(
            abstract_state, abstract_buffers, abstract_batch, jax.random.key(0)
        )
        compiled = lowered.compile()
    return compiled, compiled.memory_analysis()


@dataclasses.dataclass(frozen=True)
class Built:
    """A config's model, optimizer and compiled train step; nothing run yet.

    Attributes:
      model_def: the model's structure and buffers.
      tx: AdamW with the config's schedule.
      abstract_state: the train state's shapes and shardings.
      compiled: ``(state, buffers, batch, key) -> (state, metrics)``.
      memory: the executable's memory analysis, or None.
    """

    model_def: ModelDef
    tx: optax.GradientTransformation
    abstract_state: TrainState
    compiled: Callable
    memory: object


def build(
    config: ml_collections.ConfigDict, mesh: Mesh, schedule: config_lib.Schedule
) -> Built:
    """Model, optimizer and ahead-of-time compiled step of ``config`` on ``mesh``.

    Args:
      config: a training config (``configs/siammae.py``).
      mesh: the device mesh.
      schedule: a ``siammae_jax.train.config.Schedule`` (steps and peak lr).
    """
    rules = [tuple(r) for r in config.sharding_rules]
    model_def = ModelDef.from_config(config.model, rules)
    o = config.optim
    lr = optim.schedule(
        schedule.peak_lr, schedule.total_steps, schedule.warmup_steps, o.end_lr
    )
    tx = optim.make_optimizer(
        lr,
        b1=o.b1,
        b2=o.b2,
        weight_decay=o.weight_decay,
        grad_clip=o.grad_clip,
        mu_dtype=o.mu_dtype,
    )
    size = config.model.image_size
    shapes = {
        "frames": jax.ShapeDtypeStruct((config.batch_size, 2, size, size, 3), jnp.uint8)
    }
    abstract = state_lib.abstract_state(model_def, tx, mesh)
    compiled, memory = compile_step(
        make_train_step(model_def, tx, lr, accum_steps=o.accum_steps),
        state_lib.state_shardings(model_def, tx, mesh),
        abstract,
        model_def,
        mesh,
        rules,
        shapes,
    )
    return Built(model_def, tx, abstract, compiled, memory)
