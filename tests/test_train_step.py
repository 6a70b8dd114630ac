"""Sharded train step: same math on any mesh, parameters placed by the rules;
its semantics (normalisation, keys, accumulation, metrics, skipping) on a
closed-form toy model; and ``build`` of the tiny config against hand values."""

import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TINY
from jax.sharding import PartitionSpec as P

from siammae_jax.configs import siammae as siammae_config
from siammae_jax.data import pairs
from siammae_jax.models.definition import ModelDef
from siammae_jax.train import config as config_lib
from siammae_jax.train import mesh as mesh_lib
from siammae_jax.train import optim
from siammae_jax.train import state as state_lib
from siammae_jax.train import step as step_lib

RULES = siammae_config.get_config("tiny").sharding_rules
MESHES = [dict(data=1), dict(data=8), dict(data=4, fsdp=2)]


@pytest.fixture(scope="module")
def setup():
    model_def = ModelDef(TINY, RULES)
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
    return losses, state, memory, compiled


@pytest.fixture(scope="module")
def runs(setup):
    return {str(shape): _train(setup, shape) for shape in MESHES}


def test_same_losses_on_every_mesh(runs):
    reference = runs[str(MESHES[0])][0]
    assert reference[-1] < reference[0]  # it trains
    for losses, *_ in runs.values():
        np.testing.assert_allclose(losses, reference, rtol=2e-5)
    final = [jax.device_get(state.params) for _, state, *_ in runs.values()]
    for params in final[1:]:
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), params, final[0]
        )


def test_parameters_sharded_as_the_rules_say(runs):
    _, state, memory, _ = runs[str(dict(data=4, fsdp=2))]
    blocks = state.params["encoder"]["blocks"][0]
    assert blocks["mlp"]["fc1"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert blocks["attn"]["query"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
    assert blocks["norm1"]["scale"].sharding.is_fully_replicated
    shard = blocks["mlp"]["fc1"]["kernel"].addressable_shards[0]
    assert shard.data.shape == (32 // 2, 128)  # embed split over fsdp=2
    mu = state.opt_state[0].mu["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"]
    assert mu.sharding.spec == P("fsdp", "tensor")  # moments follow their params
    assert memory is not None and memory.temp_size_in_bytes > 0


def test_step_takes_and_gives_the_compile_step_shardings(runs, setup):
    # On the fsdp mesh the compiler, left to itself, would split the position
    # embeddings (buffers) over fsdp; compile_step pins them replicated, the
    # batch over (data, fsdp), the key and the metrics replicated, and the
    # state in and out as state_shardings says.
    model_def, _, tx, _ = setup
    _, state, _, compiled = runs[str(dict(data=4, fsdp=2))]
    mesh = jax.tree.leaves(state)[0].sharding.mesh
    replicated = jax.sharding.NamedSharding(mesh, P())
    want = state_lib.state_shardings(model_def, tx, mesh)
    (state_in, buffers_in, batch_in, key_in), kwargs = compiled.input_shardings
    state_out, metrics_out = compiled.output_shardings
    assert not kwargs
    for got in (state_in, state_out):
        jax.tree.map(_assert_sharding, got, want)
    jax.tree.map(lambda s: _assert_sharding(s, replicated), buffers_in)
    _assert_sharding(batch_in["frames"], mesh_lib.batch_sharding(mesh))
    _assert_sharding(key_in, replicated)
    assert set(metrics_out) == {"loss", "grad_norm", "lr", "finite"}
    jax.tree.map(lambda s: _assert_sharding(s, replicated), metrics_out)


def _gathered_shapes(compiled):
    hlo = compiled.as_text()
    return [
        tuple(int(d) for d in dims.split(",") if d)
        for dims in re.findall(r"= \w+\[([\d,]*)\]\S* all-gather\(", hlo)
    ]


def test_step_gathers_parameters_only(runs, setup):
    # Pure data parallelism: the gradient all-reduce is the only collective;
    # nothing (the batch least of all) is all-gathered. FSDP: parameters (or a
    # one-row slice of one) are gathered, activations never: the model's
    # logical constraints keep the batch split.
    model_def = setup[0]
    hlo = runs[str(dict(data=8))][3].as_text()
    assert "all-reduce" in hlo
    for op in ("all-gather", "all-to-all", "collective-permute", "reduce-scatter"):
        assert op not in hlo, op
    params = jax.eval_shape(model_def.init_params, jax.random.key(0))
    allowed = {x.shape for x in jax.tree.leaves((params, model_def.buffers))}
    gathered = _gathered_shapes(runs[str(dict(data=4, fsdp=2))][3])
    assert gathered
    for shape in gathered:
        assert shape in allowed or shape[0] == 1, shape


def _assert_sharding(got, want):
    assert got == want, (got, want)


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
        x = pairs.normalize(x)
        return model_def.apply(params, model_def.buffers, x[:, 0], x[:, 1], key).loss

    key = jax.random.fold_in(jax.random.key(1), 0)
    micro = batch.reshape(4, 2, *batch.shape[1:])
    # One compiled loss-and-gradient for both micro-batches (eager, op by op,
    # the same math took ~45 s here).
    loss_and_grad = jax.jit(jax.value_and_grad(loss))
    losses, grads = zip(
        *(
            loss_and_grad(state.params, micro[:, i], jax.random.fold_in(key, i))
            for i in range(2)
        ),
        strict=True,
    )
    mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    want = float(optax.tree.norm(mean))
    assert float(metrics["grad_norm"]) == pytest.approx(want, rel=1e-4)
    assert float(metrics["loss"]) == pytest.approx(float(np.mean(losses)), rel=1e-5)


def test_nonfinite_step_is_skipped(setup, runs):
    model_def, _, tx, frames = setup
    mesh = mesh_lib.make_mesh(dict(data=1), jax.devices()[:1])
    fn = runs[str(dict(data=1))][3]  # the compiled step of that mesh (it donates)
    batch = {"frames": jax.device_put(frames[0], mesh_lib.batch_sharding(mesh))}
    # Frames are uint8 (never NaN): a huge weight makes the loss overflow instead.
    state = state_lib.create_state(model_def, tx, mesh, seed=0)
    kernel = state.params["encoder"]["patch_embed"]["kernel"]
    huge = jax.device_put(jnp.full(kernel.shape, 1e38, kernel.dtype), kernel.sharding)
    params = jax.tree.map(lambda x: x, state.params)
    params["encoder"]["patch_embed"]["kernel"] = huge
    before = jax.device_get(params)
    new, metrics = fn(state.replace(params=params), model_def.buffers, batch,
                      jax.random.key(0))  # fmt: skip
    assert not bool(metrics["finite"])
    assert int(new.step) == 1 and int(new.bad_in_a_row) == 1
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(new.params), before)
    good = state_lib.create_state(model_def, tx, mesh, seed=0)
    good = good.replace(step=new.step, bad_in_a_row=new.bad_in_a_row)
    newer, metrics = fn(good, model_def.buffers, batch, jax.random.key(0))
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
        ({"eval.every": -1}, "eval.every"),
        ({"train.check_every": 0}, "train.check_every"),
        ({"data.format": "tfrecord"}, "data.format"),
        ({"eval.every": 5, "eval.data": ""}, "eval.data"),
        ({"eval.every": 5, "eval.max_videos": 0}, "eval.max_videos"),
        ({"eval.every": 5, "eval.max_seconds": 0.0}, "eval.max_seconds"),
        ({"eval.every": 5, "eval.batch_size": 0}, "eval.batch_size"),
        # The held-out synthetic set would be the training set.
        ({"eval.every": 5, "data.synthetic_seed": 1}, "eval.synthetic_seed"),
    ],
)
def test_bad_config_fails_before_compiling(overrides, field):
    with pytest.raises(ValueError, match=field):
        config_lib.validate(_cfg(**overrides), num_devices=8, num_hosts=1)
        model_def = ModelDef.from_config(_cfg(**overrides).model, RULES)
        del model_def


def test_held_out_and_training_seeds_may_match_for_other_data():
    """The same seed number is fine when training reads a folder, not the
    synthetic set (eval.data=synthetic is then held out by construction)."""
    c = _cfg(**{"eval.every": 5, "data.synthetic_seed": 1, "data.path": "/videos"})
    config_lib.validate(c, num_devices=8, num_hosts=1)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_cpu_learn_is_tiny_with_plain_pixel_targets_trained_longer_and_scored_on_set_a():
    tiny = _flat(siammae_config.get_config("tiny").to_dict())
    learn = siammae_config.get_config("cpu_learn")
    changed = {k for k, v in _flat(learn.to_dict()).items() if tiny[k] != v}
    assert changed == {"train.steps", "eval.every", "eval.max_videos",
                       "eval.max_seconds", "model.norm_pix_loss"}  # fmt: skip
    assert learn.model.norm_pix_loss is False
    config_lib.validate(learn, num_devices=8, num_hosts=1)
    e = learn.eval
    # Frozen held-out set A (BENCHMARKS.md): synthetic seed 1, default style,
    # 40 videos of 24 frames at the model's 64 px.
    assert (e.data, e.synthetic_seed, e.synthetic_style) == ("synthetic", 1, "default")
    assert (e.max_videos, e.synthetic_frames, learn.model.image_size) == (40, 24, 64)
    assert e.davis.short_side == 64


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


# ---------------------------------------------------------------------------
# pairs.normalize (on device) and the step's semantics on a closed-form toy model.

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])  # by hand, not from pairs
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _normalize(frames):
    return (np.asarray(frames, np.float64) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def test_normalize_on_device_uint8_by_hand():
    frames = np.array([[0, 0, 0], [255, 255, 255], [51, 102, 204]], np.uint8)
    out = pairs.normalize(frames)
    assert out.dtype == np.float32
    want = [
        [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],
        [0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225],
        [(0.2 - 0.485) / 0.229, (0.4 - 0.456) / 0.224, (0.8 - 0.406) / 0.225],
    ]
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        pairs.normalize(jnp.asarray(frames)), want, rtol=1e-6, atol=1e-6
    )
    with jax.enable_x64(True):  # float32 out even where float64 is the default
        assert pairs.normalize(jnp.asarray(frames)).dtype == np.float32
        assert pairs.normalize(jnp.asarray([0.5])).dtype == np.float32


def test_normalize_passes_floats_through_as_float32():
    frames = np.array([[0.5, -1.25, 300.0]], np.float64)  # already normalised
    out = pairs.normalize(frames)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, frames)
    out = pairs.normalize(jnp.asarray(frames, jnp.bfloat16))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, frames)


class _Toy:
    """A stand-in model with a closed-form loss and gradient.

    loss = |w - t - s|^2 + q (no gradient) + sqrt(r) + uniform(key), with t the
    micro-batch mean colour of f2 minus half that of f1 and s a buffer.
    """

    buffers = {"s": np.array([0.1, -0.2, 0.3], np.float32)}

    def apply(self, params, buffers, f1, f2, key):
        t = f2.mean(axis=(0, 1, 2)) - 0.5 * f1.mean(axis=(0, 1, 2))
        loss = jnp.sum((params["w"] - t - buffers["s"]) ** 2)
        loss += jax.lax.stop_gradient(params["q"]) + jnp.sqrt(params["r"])
        return types.SimpleNamespace(loss=loss + jax.random.uniform(key))


TOY_TX = optax.adamw(0.1, weight_decay=0.5)
TOY_FRAMES = np.random.default_rng(3).integers(0, 256, (4, 2, 2, 2, 3), np.uint8)


def _toy_state(q=0.0, r=1.0):
    params = {
        "w": jnp.array([0.5, -0.5, 1.5]),
        "q": jnp.float32(q),
        "r": jnp.float32(r),
    }
    return state_lib.TrainState(
        step=jnp.int32(5),
        params=params,
        opt_state=TOY_TX.init(params),
        bad_in_a_row=jnp.int32(2),
    )


@pytest.fixture(scope="module")
def toy_steps():
    lr = lambda s: 1e-3 * (s + 1)  # noqa: E731
    return {
        accum: jax.jit(
            step_lib.make_train_step(_Toy(), TOY_TX, lr, accum_steps=accum)
            if accum > 1
            else step_lib.make_train_step(_Toy(), TOY_TX, lr)  # the default: 1
        )
        for accum in (1, 2)
    }


def _toy_expected(accum, key):
    """Loss and gradients by hand: micro-batch i is rows i, i + accum, ... with
    key fold_in(fold_in(key, step=5), i) (no micro-batch fold without accum)."""
    w, s = np.array([0.5, -0.5, 1.5]), _Toy.buffers["s"].astype(np.float64)
    n = _normalize(TOY_FRAMES)
    key = jax.random.fold_in(key, 5)
    losses, grads = [], []
    for i in range(accum):
        rows = n[i::accum]
        t = rows[:, 1].mean(axis=(0, 1, 2)) - 0.5 * rows[:, 0].mean(axis=(0, 1, 2))
        k = jax.random.fold_in(key, i) if accum > 1 else key
        u = float(jax.random.uniform(k))
        losses.append(np.sum((w - t - s) ** 2) + 0.0 + 1.0 + u)
        grads.append(2 * (w - t - s))
    return np.mean(losses), {"w": np.mean(grads, axis=0), "q": 0.0, "r": 0.5}


@pytest.mark.parametrize("accum", [1, 2])
def test_toy_step_by_hand(toy_steps, accum):
    key = jax.random.key(7)
    state = _toy_state()
    new, metrics = toy_steps[accum](state, _Toy.buffers, {"frames": TOY_FRAMES}, key)
    loss, grads = _toy_expected(accum, key)
    assert set(metrics) == {"loss", "grad_norm", "lr", "finite"}
    assert float(metrics["loss"]) == pytest.approx(loss, rel=1e-5)
    norm = np.sqrt(np.sum(grads["w"] ** 2) + 0.5**2)
    assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-5)
    assert float(metrics["lr"]) == pytest.approx(6e-3)  # lr_schedule(step=5)
    assert bool(metrics["finite"]) is True
    assert int(new.step) == 6 and int(new.bad_in_a_row) == 0
    # First AdamW step: update = -lr (g / (|g| + eps) + wd p).
    for name in ("w", "q", "r"):
        p, g = np.asarray(state.params[name], np.float64), np.asarray(grads[name])
        want = p - 0.1 * (g / (np.abs(g) + 1e-8) + 0.5 * p)
        np.testing.assert_allclose(new.params[name], want, rtol=1e-5, atol=1e-6)
    assert int(new.opt_state[0].count) == 1
    np.testing.assert_allclose(new.opt_state[0].mu["w"], 0.1 * grads["w"], rtol=1e-5)


@pytest.mark.parametrize("q, r, loss_finite", [(np.nan, 1.0, False), (0.0, 0.0, True)])
def test_toy_nonfinite_loss_or_gradient_skips_the_update(toy_steps, q, r, loss_finite):
    # A NaN loss with finite gradients, or a finite loss (sqrt(0)) with an
    # infinite gradient: either one skips the update.
    state = _toy_state(q=q, r=r)
    before = jax.device_get(state)
    new, metrics = toy_steps[1](
        state, _Toy.buffers, {"frames": TOY_FRAMES}, jax.random.key(7)
    )
    assert bool(np.isfinite(metrics["loss"])) is loss_finite
    assert bool(np.isfinite(metrics["grad_norm"])) is not loss_finite
    assert bool(metrics["finite"]) is False
    assert int(new.step) == 6 and int(new.bad_in_a_row) == 3
    jax.tree.map(np.testing.assert_array_equal, new.params, before.params)
    jax.tree.map(np.testing.assert_array_equal, new.opt_state, before.opt_state)


# ---------------------------------------------------------------------------
# build: the tiny config (shrunk to the test size), one compile on one device.

SCHEDULE = config_lib.Schedule(
    total_steps=10, warmup_steps=2, steps_per_epoch=1.0, peak_lr=1e-2
)


@pytest.fixture(scope="module")
def built():
    c = siammae_config.get_config("tiny")
    c.batch_size = 4
    c.model.update(
        dict(encoder="test/8", image_size=32, decoder_dim=16, decoder_depth=3)
    )
    c.model.decoder_heads = 2
    # Not the defaults, all different: a dropped or swapped argument shows.
    c.optim.update(dict(b1=0.5, b2=0.7, weight_decay=0.3, grad_clip=0.5, end_lr=1e-3))
    c.optim.accum_steps = 2
    mesh = mesh_lib.make_mesh(dict(data=1), jax.devices()[:1])
    return c, mesh, step_lib.build(c, mesh, SCHEDULE)


@pytest.fixture(scope="module")
def host_state(built):
    """A real train state of the built model and optimizer, on the host (made
    eagerly: jitting the init would cost another compile)."""
    _, _, b = built
    params = b.model_def.init_params(jax.random.key(0))
    return jax.device_get(
        state_lib.TrainState(
            step=np.int32(0),
            params=params,
            opt_state=b.tx.init(params),
            bad_in_a_row=np.int32(0),
        )
    )


def test_build_model_from_the_config(built, host_state):
    c, mesh, b = built
    kw = b.model_def.model_kwargs
    assert (kw["encoder"], kw["mask_ratio"], kw["decoder_type"]) == (
        "test/8",
        0.9,
        "cross_self",
    )
    params = b.abstract_state.params
    assert len(params["decoder_blocks"]) == 3
    assert params["decoder_embed"]["kernel"].shape == (32, 16)  # test: dim 32
    assert params["decoder_pred"]["kernel"].shape == (16, 8 * 8 * 3)  # 8-px patches
    assert b.model_def.buffers["decoder_pos"].shape == (1, 1 + 4 * 4, 16)  # 32 px
    # The abstract state has a real state's shapes, placed by the rules.
    assert jax.tree.structure(host_state) == jax.tree.structure(b.abstract_state)
    leaves = jax.tree.leaves(b.abstract_state), jax.tree.leaves(host_state)
    for a, r in zip(*leaves, strict=True):
        assert (a.shape, a.dtype) == (r.shape, r.dtype)
        assert a.sharding.mesh == mesh
    kernel = params["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert b.memory is not None and b.memory.temp_size_in_bytes > 0


def _numpy_adamw(params, grads_seq, lr, b1, b2, wd, clip, eps=1e-8):
    """AdamW with global-norm clipping, decay on ``kernel`` only; the updates."""
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    out = []
    for t, grads in enumerate(grads_seq, start=1):
        norm = np.sqrt(sum(np.sum(g**2) for g in grads.values()))
        scale = min(1.0, clip / norm)
        update = {}
        for k, p in params.items():
            g = grads[k] * scale
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g**2
            step = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            update[k] = -lr(t - 1) * (step + (wd * p if k == "kernel" else 0.0))
        out.append(update)
        params = {k: params[k] + update[k] for k in params}
    return out


def _closed_form_lr(step):
    peak, end, warmup, total = 1e-2, 1e-3, 2, 10
    if step < warmup:
        return peak * step / warmup
    return end + (peak - end) * 0.5 * (
        1 + np.cos(np.pi * (step - warmup) / (total - warmup))
    )


def test_build_optimizer_is_adamw_with_the_config_values(built):
    _, _, b = built
    params = {"kernel": np.array([1.0, -2.0]), "bias": np.array([0.5, 0.25])}
    grads_seq = [
        {"kernel": np.array([3.0, -4.0]), "bias": np.array([0.0, 1.0])},  # clipped
        {"kernel": np.array([0.1, 0.2]), "bias": np.array([-0.2, 0.1])},  # not
        {"kernel": np.array([-1.0, 0.5]), "bias": np.array([2.0, 0.0])},  # clipped
    ]
    want = _numpy_adamw(params, grads_seq, _closed_form_lr, 0.5, 0.7, 0.3, 0.5)

    @jax.jit
    def run(p, grads_seq):
        opt, out = b.tx.init(p), []
        for grads in grads_seq:
            updates, opt = b.tx.update(grads, opt, p)
            p = optax.apply_updates(p, updates)
            out.append(updates)
        return out

    got = run(*jax.tree.map(jnp.float32, (params, grads_seq)))
    for g, w in zip(got, want, strict=True):
        for k in params:
            np.testing.assert_allclose(g[k], w[k], rtol=2e-5, atol=1e-9)


@pytest.fixture(scope="module")
def built_runs(built, host_state):
    """The compiled step run from a fresh state at steps 0, 1, 6 and 10."""
    _, mesh, b = built
    state = host_state
    shardings = jax.tree.map(lambda a: a.sharding, b.abstract_state)
    frames = np.random.default_rng(5).integers(0, 256, (4, 2, 32, 32, 3), np.uint8)
    batch = {"frames": jax.device_put(frames, mesh_lib.batch_sharding(mesh))}
    runs = {}
    for step in (0, 1, 6, 10):
        start = jax.device_put(state.replace(step=np.int32(step)), shardings)
        new, metrics = b.compiled(start, b.model_def.buffers, batch, jax.random.key(3))
        runs[step] = (start, new, jax.device_get(metrics))
    return state, frames, runs


def test_build_step_lr_follows_the_schedule(built_runs):
    _, _, runs = built_runs
    for step, (_, new, metrics) in runs.items():
        assert float(metrics["lr"]) == pytest.approx(_closed_form_lr(step), rel=1e-5)
        assert int(new.step) == step + 1
    assert float(runs[10][2]["lr"]) == pytest.approx(1e-3)  # end_lr


def test_build_step_accumulates_config_micro_batches(built, built_runs):
    # accum_steps=2: the loss is the mean over micro-batches (rows 0, 2 and
    # 1, 3) with keys fold_in(fold_in(key, step), i), on frames normalised by hand.
    _, _, b = built
    state, frames, runs = built_runs
    normalized = np.float32(_normalize(frames))

    @jax.jit
    def loss(params, x, key):
        return b.model_def.apply(
            params, b.model_def.buffers, x[:, 0], x[:, 1], key
        ).loss

    for step in (0, 6):
        key = jax.random.fold_in(jax.random.key(3), step)
        want = np.mean(
            [
                loss(state.params, normalized[i::2], jax.random.fold_in(key, i))
                for i in range(2)
            ]
        )
        assert float(runs[step][2]["loss"]) == pytest.approx(float(want), rel=1e-5)
        assert bool(runs[step][2]["finite"])


def test_build_step_donates_the_state_and_keeps_shardings(built, built_runs):
    _, mesh, b = built
    _, _, runs = built_runs
    start, new, _ = runs[0]
    assert all(x.is_deleted() for x in jax.tree.leaves(start))  # donated
    assert not any(x.is_deleted() for x in jax.tree.leaves(b.model_def.buffers))
    want = jax.tree.map(lambda a: a.sharding, b.abstract_state)
    jax.tree.map(lambda x, sh: _assert_sharding(x.sharding, sh), new, want)
    replicated = jax.sharding.NamedSharding(mesh, P())
    (state_in, buffers_in, batch_in, key_in), kwargs = b.compiled.input_shardings
    assert not kwargs
    jax.tree.map(_assert_sharding, state_in, want)
    jax.tree.map(lambda s: _assert_sharding(s, replicated), buffers_in)
    _assert_sharding(batch_in["frames"], mesh_lib.batch_sharding(mesh))
    _assert_sharding(key_in, replicated)
    state_out, metrics_out = b.compiled.output_shardings
    jax.tree.map(_assert_sharding, state_out, want)
    assert set(metrics_out) == {"loss", "grad_norm", "lr", "finite"}
    jax.tree.map(lambda s: _assert_sharding(s, replicated), metrics_out)


def test_build_step_takes_only_the_config_batch(built):
    _, mesh, b = built
    state = b.abstract_state
    for shape, dtype in [
        ((4, 2, 32, 32, 3), np.float32),
        ((4, 2, 32, 32, 4), np.uint8),
        ((4, 3, 32, 32, 3), np.uint8),
        ((2, 2, 32, 32, 3), np.uint8),
        ((4, 2, 64, 64, 3), np.uint8),
    ]:
        with pytest.raises((TypeError, ValueError)):
            b.compiled(
                state,
                b.model_def.buffers,
                {"frames": np.zeros(shape, dtype)},
                jax.random.key(0),
            )
