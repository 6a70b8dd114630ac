"""AdamW, its decay mask, MAE's lr rule and the warmup + cosine schedule, each
against a hand computation (a straightforward numpy AdamW, closed-form lrs)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from siammae_jax.train import optim


def test_weight_decay_only_on_kernels():
    mask = optim.decay_mask(
        {"a": {"kernel": np.ones((2, 3)), "bias": np.ones((2, 3))}, "scale": np.ones(3)}
    )
    assert mask == {"a": {"kernel": True, "bias": False}, "scale": False}
    # Leaves under lists (no dict key) are not kernels.
    assert optim.decay_mask({"blocks": [np.ones(2)]}) == {"blocks": [False]}


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_adamw_decays_only_the_model_kernels(tiny_model, grad_clip):
    """On the real SiamMAE parameters, one AdamW step with zero gradients is pure
    weight decay: every weight matrix (``kernel``) becomes exactly
    (1 - lr x wd) = 0.95 of itself; every bias, LayerNorm scale and the [CLS]
    and mask tokens stay as they are (position embeddings are not parameters).
    """
    params = nnx.to_pure_dict(nnx.state(tiny_model, nnx.Param))
    tx = optim.make_optimizer(
        optax.constant_schedule(0.1), weight_decay=0.5, grad_clip=grad_clip
    )

    @jax.jit
    def step(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        updates, _ = tx.update(zeros, tx.init(params), params)
        return optax.apply_updates(params, updates)

    new = step(params)
    names = set()
    for path, before in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = path[-1].key
        names.add(name)
        after = new
        for key in path:
            after = after[key.key]
        where = jax.tree_util.keystr(path)
        if name == "kernel":
            np.testing.assert_allclose(
                after, 0.95 * np.asarray(before), rtol=1e-6, err_msg=where
            )
        else:
            assert name in ("bias", "scale", "cls_token", "mask_token"), where
            np.testing.assert_array_equal(after, before, err_msg=where)
    assert names == {"kernel", "bias", "scale", "cls_token", "mask_token"}


def _numpy_adamw(params, grads, lr, b1, b2, wd, clip, eps=1e-8):
    """Textbook AdamW (decoupled decay on kernels only, optional global-norm
    clipping of each step's gradients first); returns the parameters after
    every step."""
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    p = {k: x.copy() for k, x in params.items()}
    out = []
    for t, g in enumerate(grads, start=1):
        if clip:
            norm = math.sqrt(sum(float(np.sum(x**2)) for x in g.values()))
            g = {k: x * min(1.0, clip / norm) for k, x in g.items()}
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            step = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            decay = wd * p[k] if k == "kernel" else 0.0
            p[k] = p[k] - lr * (step + decay)
        out.append({k: x.copy() for k, x in p.items()})
    return out


# Parameters and two steps' gradients (norm ~10, then ~0.5: clipping at 1.0
# shows through Adam's moments).
TWO_STEPS = (
    {"kernel": np.array([[1.0, -2.0], [0.5, 3.0]]), "bias": np.array([1.0, -1.0])},
    [
        {"kernel": np.array([[6.0, -4.0], [2.0, 5.0]]), "bias": np.array([3.0, 1.0])},
        {"kernel": np.array([[0.1, 0.3], [-0.2, 0.1]]), "bias": np.array([-0.2, 0.1])},
    ],
)


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_adamw_defaults_match_a_numpy_adamw(grad_clip):
    """Two steps with the defaults (b1 0.9, b2 0.95, weight decay 0.05: the
    paper's recipe) equal a numpy AdamW; gradients of norm ~10 then ~0.5 make
    clipping at 1.0 visible through Adam's moments."""
    params, grads = TWO_STEPS
    clip = {"grad_clip": grad_clip} if grad_clip else {}  # default: no clipping
    tx = optim.make_optimizer(optax.constant_schedule(0.01), **clip)
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    got = []
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
        p = optax.apply_updates(p, updates)
        got.append(p)
    want = _numpy_adamw(params, grads, 0.01, 0.9, 0.95, 0.05, grad_clip)
    for g, w in zip(got, want, strict=True):
        for k in params:
            np.testing.assert_allclose(g[k], w[k], rtol=2e-6, atol=1e-7, err_msg=k)
    # The clipped and unclipped runs differ (so the clip is really applied).
    other = _numpy_adamw(params, grads, 0.01, 0.9, 0.95, 0.05, 1.0 - grad_clip)
    assert not np.allclose(other[1]["kernel"], want[1]["kernel"], rtol=1e-4)


def test_adamw_uses_the_given_moments_and_decay():
    """b1, b2 and weight decay given by the config (optim.b1...) are the ones used."""
    params = {"kernel": np.array([1.0, -2.0]), "bias": np.array([0.5])}
    grads = [
        {"kernel": np.array([0.3, -1.0]), "bias": np.array([2.0])},
        {"kernel": np.array([-0.5, 0.2]), "bias": np.array([0.1])},
    ]
    tx = optim.make_optimizer(
        optax.constant_schedule(0.1), b1=0.5, b2=0.7, weight_decay=0.3
    )
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
        p = optax.apply_updates(p, updates)
    want = _numpy_adamw(params, grads, 0.1, 0.5, 0.7, 0.3, 0.0)[-1]
    for k in params:
        np.testing.assert_allclose(p[k], want[k], rtol=2e-6, err_msg=k)


def test_scaled_lr_is_mae_rule():
    """lr = base x batch / 256: the paper's 1.5e-4 at batch 2048 is 1.2e-3."""
    assert optim.scaled_lr(1.5e-4, 2048) == pytest.approx(1.2e-3, rel=1e-12)
    assert optim.scaled_lr(1.0, 64) == 0.25
    assert optim.scaled_lr(1.0, 64, reference_batch=32) == 2.0


@pytest.mark.parametrize("end_lr", [0.0, 0.1])
def test_schedule_warmup_and_cosine(end_lr):
    """Linear warmup 0 -> peak over ``warmup`` steps, then cosine from peak to
    ``end_lr`` at ``total`` steps (closed form), flat after."""
    peak, total, warmup = 2.0, 100, 10
    lr = optim.schedule(peak, total, warmup, end_lr=end_lr)
    for t in (0, 1, 5, 10):
        assert float(lr(t)) == pytest.approx(peak * t / warmup, abs=1e-6), t
    for t in (10, 20, 55, 90, 100):
        frac = (t - warmup) / (total - warmup)
        want = end_lr + (peak - end_lr) * 0.5 * (1 + math.cos(math.pi * frac))
        assert float(lr(t)) == pytest.approx(want, abs=1e-5), t
    assert float(lr(150)) == pytest.approx(end_lr, abs=1e-6)
    assert optim.schedule(peak, total, warmup)(total) == pytest.approx(0.0, abs=1e-6)


def test_bf16_first_moment_is_stored_in_bf16_and_steps_like_adamw():
    """optim.mu_dtype=bfloat16: Adam's first moment is kept in bfloat16 (the
    second stays float32) and the steps stay within bfloat16 rounding of the
    float32 AdamW (parameter changes within 1%)."""
    params, grads = TWO_STEPS
    tx = optim.make_optimizer(optax.constant_schedule(0.01), mu_dtype="bfloat16")
    p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = tx.init(p)
    adam = state[0]
    assert {x.dtype for x in jax.tree.leaves(adam.mu)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(adam.nu)} == {jnp.dtype(jnp.float32)}
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
        p = optax.apply_updates(p, updates)
    want = _numpy_adamw(params, grads, 0.01, 0.9, 0.95, 0.05, 0.0)[-1]
    for k in params:
        np.testing.assert_allclose(p[k] - params[k], want[k] - params[k], rtol=1e-2)
    with pytest.raises(ValueError, match="optim.mu_dtype='int8' must be one of"):
        optim.make_optimizer(optax.constant_schedule(0.01), mu_dtype="int8")
