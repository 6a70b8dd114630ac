"""Model smoke demo: fits a tiny SiamMAE to generated frame pairs on the CPU.

Until the data and training issues land, ``make demo`` runs this: frame pairs
whose f2 is f1 shifted by a random offset (a smooth random texture), so the
masked f2 patches can only be predicted by copying from f1. It prints the
training loss, then the masked-patch loss with the true f1 against f1 taken
from another pair: a model that learned to use the past frame shows a gap.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from siammae_jax.models import SiamMAE

MODEL = dict(
    encoder="demo/8",
    image_size=64,
    mask_ratio=0.9,
    decoder_dim=128,
    decoder_depth=2,
    decoder_heads=4,
)


def shifted_pairs(rng: np.random.Generator, batch: int, size: int) -> np.ndarray:
    """[B, 2, size, size, 3] pairs: f2 is f1 moved by up to 12 px (smooth texture)."""
    big = size + 32
    freqs = rng.normal(0, 0.25, (batch, 8, 2))
    phase = rng.uniform(0, 2 * np.pi, (batch, 8, 3))
    yy, xx = np.mgrid[:big, :big]
    arg = freqs[..., 0, None, None] * yy + freqs[..., 1, None, None] * xx
    tex = np.sin(arg[..., None] + phase[:, :, None, None]).mean(1)  # [B, big, big, 3]
    shift = rng.integers(-12, 13, (batch, 2))
    pairs = np.empty((batch, 2, size, size, 3), np.float32)
    for i, (dy, dx) in enumerate(shift):
        pairs[i, 0] = tex[i, 16 : 16 + size, 16 : 16 + size]
        pairs[i, 1] = tex[i, 16 + dy : 16 + dy + size, 16 + dx : 16 + dx + size]
    return pairs / pairs.std()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    print("siammae_jax model smoke (training and data pipelines are not in yet)")
    print(f"devices: {jax.devices()}")
    model = SiamMAE(**MODEL, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adamw(1e-3, b1=0.9, b2=0.95, weight_decay=0.05)
    opt_state = tx.init(params)

    def loss_fn(params, pairs, key):
        return nnx.merge(graphdef, params, rest)(pairs[:, 0], pairs[:, 1], key).loss

    @jax.jit
    def step(params, opt_state, pairs, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, pairs, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(0)
    start = time.time()
    for i in range(args.steps):
        pairs = jnp.asarray(shifted_pairs(rng, args.batch, MODEL["image_size"]))
        params, opt_state, loss = step(params, opt_state, pairs, jax.random.key(i))
        if i % 25 == 0 or i == args.steps - 1:
            print(f"step {i:4d}  loss {float(loss):.4f}  ({time.time() - start:.0f}s)")

    held_out = jnp.asarray(shifted_pairs(np.random.default_rng(1), 64, 64))
    other = jnp.concatenate([held_out[1:, :1], held_out[:1, :1]], 0)
    swapped = jnp.concatenate([other, held_out[:, 1:]], axis=1)
    eval_fn = jax.jit(loss_fn)
    key = jax.random.key(10_000)
    true_f1, other_f1 = eval_fn(params, held_out, key), eval_fn(params, swapped, key)
    print(
        f"past-frame use: loss with true f1 {float(true_f1):.3f} "
        f"vs other-pair f1 {float(other_f1):.3f}"
    )


if __name__ == "__main__":
    main()
