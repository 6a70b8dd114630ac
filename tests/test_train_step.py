"""Sharded train step: same math on any mesh, parameters placed by the rules."""

import jax
import numpy as np
import optax
import pytest
from conftest import TINY
from jax.sharding import PartitionSpec as P

from configs import siammae as siammae_config
from siammae_jax.train import config as config_lib
from siammae_jax.train import mesh as mesh_lib
from siammae_jax.train import optim
from siammae_jax.train import state as state_lib
from siammae_jax.train import step as step_lib

RULES = siammae_config.get_config("tiny").sharding_rules
MESHES = [dict(data=1), dict(data=8), dict(data=4, fsdp=2)]


@pytest.fixture(scope="module")
def setup():
    model_def = state_lib.ModelDef(TINY, RULES)
    lr = optim.schedule(1e-3, 20, 2)
    tx = optim.make_optimizer(lr)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 8, 2, 32, 32, 3), dtype=np.uint8)
    return model_def, lr, tx, frames


def _train(setup, shape, accum_steps=1):
    model_def, lr, tx, frames = setup
    size = int(np.prod(list(shape.values())))
    mesh = mesh_lib.make_mesh(shape, jax.devices()[:size])
    state = state_lib.create_state(model_def, tx, mesh, seed=0)
    fn = step_lib.make_train_step(model_def, tx, lr, accum_steps=accum_steps)
    shapes = {"frames": jax.ShapeDtypeStruct(frames.shape[1:], np.uint8)}
    compiled, memory = step_lib.compile_step(
        fn,
        state_lib.state_shardings(model_def, tx, mesh),
        state_lib.abstract_state(model_def, tx, mesh),
        model_def,
        mesh,
        RULES,
        shapes,
    )
    losses = []
    for batch in frames:
        batch = {"frames": jax.device_put(batch, mesh_lib.batch_sharding(mesh))}
        state, metrics = compiled(state, model_def.buffers, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    return losses, state, memory


@pytest.fixture(scope="module")
def runs(setup):
    return {str(shape): _train(setup, shape) for shape in MESHES}


def test_same_losses_on_every_mesh(runs):
    reference = runs[str(MESHES[0])][0]
    assert reference[-1] < reference[0]  # it trains
    for losses, _, _ in runs.values():
        np.testing.assert_allclose(losses, reference, rtol=2e-5)
    final = [jax.device_get(state.params) for _, state, _ in runs.values()]
    for params in final[1:]:
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), params, final[0]
        )


def test_parameters_sharded_as_the_rules_say(runs):
    _, state, memory = runs[str(dict(data=4, fsdp=2))]
    blocks = state.params["encoder"]["blocks"][0]
    assert blocks["mlp"]["fc1"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert blocks["attn"]["query"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
    assert blocks["norm1"]["scale"].sharding.is_fully_replicated
    shard = blocks["mlp"]["fc1"]["kernel"].addressable_shards[0]
    assert shard.data.shape == (32 // 2, 128)  # embed split over fsdp=2
    mu = state.opt_state[0].mu["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"]
    assert mu.sharding.spec == P("fsdp", "tensor")  # moments follow their params
    assert memory is not None and memory.temp_size_in_bytes > 0


def test_gradient_accumulation_averages_micro_batches(setup):
    # Independent computation: the mean of the micro-batches' gradients, micro
    # batch i being rows i, i + accum, ... with key fold_in(fold_in(key, step), i).
    model_def, lr, tx, frames = setup
    mesh = mesh_lib.make_mesh(dict(data=2), jax.devices()[:2])
    state = state_lib.create_state(model_def, tx, mesh, seed=0)
    step = jax.jit(step_lib.make_train_step(model_def, tx, lr, accum_steps=2))
    batch = frames[0]
    _, metrics = step(state, model_def.buffers, {"frames": batch}, jax.random.key(1))

    def loss(params, x, key):
        x = step_lib.device_normalize(x)
        return model_def.apply(params, model_def.buffers, x[:, 0], x[:, 1], key).loss

    key = jax.random.fold_in(jax.random.key(1), 0)
    micro = batch.reshape(4, 2, *batch.shape[1:])
    grads = [
        jax.grad(loss)(state.params, micro[:, i], jax.random.fold_in(key, i))
        for i in range(2)
    ]
    mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    want = float(optax.tree.norm(mean))
    assert float(metrics["grad_norm"]) == pytest.approx(want, rel=1e-4)
    losses = [
        loss(state.params, micro[:, i], jax.random.fold_in(key, i)) for i in range(2)
    ]
    assert float(metrics["loss"]) == pytest.approx(float(np.mean(losses)), rel=1e-5)


def test_nonfinite_step_is_skipped(setup):
    model_def, lr, tx, frames = setup
    mesh = mesh_lib.make_mesh(dict(data=1), jax.devices()[:1])
    state = state_lib.create_state(model_def, tx, mesh, seed=0)
    fn = jax.jit(step_lib.make_train_step(model_def, tx, lr))
    bad = {"frames": np.full(frames.shape[1:], np.nan, np.float32)}
    new, metrics = fn(state, model_def.buffers, bad, jax.random.key(0))
    assert not bool(metrics["finite"])
    assert int(new.step) == 1 and int(new.bad_in_a_row) == 1
    jax.tree.map(np.testing.assert_array_equal, new.params, state.params)
    good = {"frames": frames[0]}
    newer, metrics = fn(new, model_def.buffers, good, jax.random.key(0))
    assert bool(metrics["finite"]) and int(newer.bad_in_a_row) == 0


def _cfg(**overrides):
    c = siammae_config.get_config("tiny")
    for key, value in overrides.items():
        node, *path = key.split(".")
        target = c
        for part in [node, *path][:-1]:
            target = target[part]
        target[[node, *path][-1]] = value
    return c


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"batch_size": 12}, "batch_size"),  # not divisible by 8 devices
        ({"mesh.data": 3}, "mesh"),
        ({"optim.base_lr": -1.0}, "optim.base_lr"),
        ({"optim.warmup_epochs": 200}, "optim.warmup_epochs"),
        ({"model.decoder_type": "dense"}, "decoder_type"),
        ({"data.min_gap": 0}, "min_gap"),
        ({"model.dtype": "float16"}, "model.dtype"),
    ],
)
def test_bad_config_fails_before_compiling(overrides, field):
    with pytest.raises(ValueError, match=field):
        config_lib.validate(_cfg(**overrides), num_devices=8, num_hosts=1)
        model_def = state_lib.ModelDef(
            config_lib.model_kwargs(_cfg(**overrides)), RULES
        )
        del model_def


def test_unknown_mesh_axis_and_rule():
    with pytest.raises(ValueError, match="unknown axes"):
        mesh_lib.mesh_shape({"model": 2}, 8)
    with pytest.raises(ValueError, match="mesh axis"):
        mesh_lib.check_rules([("embed", "model")])


def test_epochs_to_steps():
    c = _cfg(**{"optim.epochs": 10, "optim.warmup_epochs": 2})
    s = config_lib.schedule(c, num_videos=40)  # 40 videos x 2 pairs / 16 = 5 per epoch
    assert (s.total_steps, s.warmup_steps, s.steps_per_epoch) == (50, 10, 5.0)
    assert s.peak_lr == pytest.approx(1e-3)
    c.train.steps = 20
    assert config_lib.schedule(c, 40).total_steps == 20
    assert config_lib.schedule(c, 40).warmup_steps == 4
