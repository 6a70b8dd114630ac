"""AdamW with MAE's learning-rate rule and a warmup + cosine schedule."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

# optim.mu_dtype -> the dtype of Adam's first moment ("": the parameters').
MU_DTYPES = {"": None, "float32": jnp.float32, "bfloat16": jnp.bfloat16}


def scaled_lr(base_lr: float, batch_size: int, reference_batch: int = 256) -> float:
    """MAE's linear scaling rule: lr = base_lr x batch / 256."""
    return base_lr * batch_size / reference_batch


def schedule(
    peak_lr: float, total_steps: int, warmup_steps: int, end_lr: float = 0.0
) -> optax.Schedule:
    """Linear warmup from 0 to ``peak_lr``, then cosine decay to ``end_lr``."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak_lr,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=end_lr,
    )


def decay_mask(params: Any) -> Any:
    """True for weight matrices (``kernel``); False for biases, norms and tokens."""

    def is_kernel(path, _):
        return getattr(path[-1], "key", None) == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(
    lr: optax.Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.95,
    weight_decay: float = 0.05,
    grad_clip: float = 0.0,
    mu_dtype: str = "",
) -> optax.GradientTransformation:
    """AdamW (decay only on weight matrices), optional global-norm clipping.

    ``mu_dtype``: storage dtype of Adam's first moment (``"bfloat16"`` halves
    its memory and traffic; ``""``: the parameters' dtype). The second moment
    stays in the parameters' dtype (its squares underflow in bfloat16).
    """
    if mu_dtype not in MU_DTYPES:
        raise ValueError(f"optim.mu_dtype={mu_dtype!r} must be one of {MU_DTYPES}.")
    adamw = optax.adamw(
        lr,
        b1=b1,
        b2=b2,
        weight_decay=weight_decay,
        mask=decay_mask,
        mu_dtype=MU_DTYPES[mu_dtype],
    )
    if grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(grad_clip), adamw)
    return adamw
