"""Forward + backward time of a SiamMAE step vs this machine's matmul FLOP/s.

Usage: python benchmarks/model_step.py [--encoder S/16] [--batch 8] [--steps 5]

Prints the step time, the achieved FLOP/s (analytic training FLOPs, i.e. 3x the
forward count of ``siammae_jax.models.flops``) and, measured in the same run,
the FLOP/s of a large float32 matmul: the practical limit of this machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
from flax import nnx

from siammae_jax.models import SiamMAE, flops


def matmul_flops_per_sec(n: int = 4096, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        mm(a, b).block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def step_time(model_kwargs: dict, batch: int, steps: int) -> tuple[float, float]:
    """Returns (compile seconds, mean seconds per forward+backward)."""
    model = SiamMAE(**model_kwargs, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, f1, f2, key):
        return nnx.merge(graphdef, params, rest)(f1, f2, key).loss

    size = model_kwargs["image_size"]
    f1 = jax.random.normal(jax.random.key(1), (batch, size, size, 3))
    f2 = jnp.roll(f1, 5, axis=2)
    start = time.perf_counter()
    fn = jax.jit(jax.value_and_grad(loss)).lower(params, f1, f2, jax.random.key(0))
    fn = fn.compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(fn(params, f1, f2, jax.random.key(0)))  # warm-up
    start = time.perf_counter()
    for i in range(steps):
        jax.block_until_ready(fn(params, f1, f2, jax.random.key(i)))
    return compile_s, (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="S/16")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--decoder_dim", type=int, default=512)
    p.add_argument("--decoder_depth", type=int, default=8)
    p.add_argument("--decoder_heads", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    kwargs = dict(
        encoder=args.encoder,
        image_size=args.image_size,
        decoder_dim=args.decoder_dim,
        decoder_depth=args.decoder_depth,
        decoder_heads=args.decoder_heads,
    )
    peak = matmul_flops_per_sec()
    compile_s, sec = step_time(kwargs, args.batch, args.steps)
    train_flops = flops.pair_flops(**kwargs)["train"] * args.batch
    achieved = train_flops / sec
    result = {
        "model": kwargs,
        "batch": args.batch,
        "device": str(jax.devices()[0].device_kind),
        "cpu": platform.processor() or platform.machine(),
        "compile_s": round(compile_s, 1),
        "step_s": round(sec, 3),
        "pairs_per_s": round(args.batch / sec, 2),
        "model_gflops_per_s": round(achieved / 1e9, 1),
        "matmul_gflops_per_s": round(peak / 1e9, 1),
        "ratio_to_matmul": round(achieved / peak, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
