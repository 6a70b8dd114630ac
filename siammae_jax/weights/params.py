"""Parameter trees <-> modules: pure dicts in, checked ViT / SiamMAE out.

Every loader in :mod:`siammae_jax.weights` ends here: a pure dict of arrays
(from orbax, safetensors or a timm state dict) is checked key by key and shape
by shape against the module a model config builds, and a mismatch names the
parameters and the file they came from.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from siammae_jax.models import SiamMAE, vit
from siammae_jax.models.definition import model_kwargs, saved_model


def flatten(tree: Any, sep: str = "/", prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yields ``(path, leaf)`` of a nested dict, keys joined with ``sep``."""
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from flatten(v, sep, f"{prefix}{k}{sep}")
    else:
        yield prefix[: -len(sep)], tree


def nest(flat: Mapping[str, Any], sep: str = ".") -> dict:
    """The nested dict of ``{"a.b.c": x}`` keys (inverse of :func:`flatten`)."""
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(sep)
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def str_keys(tree: Any) -> Any:
    """``tree`` with string keys (orbax stores list indices as strings)."""
    if isinstance(tree, Mapping):
        return {str(k): str_keys(v) for k, v in tree.items()}
    return tree


def mismatches(want: Mapping, got: Mapping) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``got`` against ``want``."""
    flat_want, flat_got = dict(flatten(str_keys(want))), dict(flatten(str_keys(got)))
    missing = sorted(set(flat_want) - set(flat_got))
    extra = sorted(set(flat_got) - set(flat_want))
    shapes = sorted(
        f"{k}: {np.shape(flat_got[k])} != {np.shape(v)}"
        for k, v in flat_want.items()
        if k in flat_got and np.shape(flat_got[k]) != np.shape(v)
    )
    named = [("missing", missing), ("unexpected", extra), ("wrong shapes", shapes)]
    return [f"{what} ({len(keys)}): {keys[:10]}" for what, keys in named if keys]


def like(tree: Any, template: Any) -> Any:
    """``tree`` with the key types of ``template``, leaves as jax arrays."""
    if isinstance(template, Mapping):
        return {
            k: like(tree[k] if k in tree else tree[str(k)], v)
            for k, v in template.items()
        }
    return jnp.asarray(tree)


def set_params(model: nnx.Module, params: Mapping, source: str) -> nnx.Module:
    """Loads a pure-dict parameter tree into ``model``, checking every shape.

    Raises:
      ValueError: listing missing, unexpected and mis-shaped keys, naming
        ``source`` (the file the parameters came from).
    """
    want = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    problems = mismatches(want, params)
    if problems:
        name = getattr(model, "variant", type(model).__name__)
        raise ValueError(
            f"{source}: parameters do not fit {name!r}: {'; '.join(problems)}"
        )
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, like(params, want))
    nnx.update(model, state)
    return model


def build_encoder(encoder: str, image_size: int | tuple[int, int]) -> vit.ViT:
    """A float32 ViT of a named variant (random until parameters are set)."""
    if isinstance(image_size, list):
        image_size = tuple(image_size)
    return vit.ViT(encoder, image_size=image_size, rngs=nnx.Rngs(0))


def encoder_from(model_config: Mapping, variables: Mapping, source: str) -> vit.ViT:
    """The encoder of ``model_config`` holding ``variables`` (params, and a
    ``pos_embed`` replacing the fixed one when given)."""
    model = build_encoder(model_config["encoder"], model_config["image_size"])
    variables = dict(variables)
    pos = variables.pop("pos_embed", None)
    set_params(model, variables, source)
    if pos is not None:
        want = model.pos_embed[...].shape
        if tuple(np.shape(pos)) != tuple(want):
            raise ValueError(
                f"{source}: wrong shapes ['pos_embed: {np.shape(pos)} != {want}']"
            )
        model.pos_embed.set_value(np.asarray(pos, np.float32))
    return model


def model_from(model_config: Mapping, params: Mapping, source: str) -> SiamMAE:
    """The whole SiamMAE of a stored ``model_config`` holding ``params`` (all
    of them).

    A model trained with ``attention='cudnn'`` loads with ``auto`` (the same
    function on any backend: cuDNN where it runs, else XLA's attention). A
    config stored before a field of ``definition.PREDATED`` existed loads with
    the behaviour it was trained with (``definition.saved_model``).
    """
    kw = model_kwargs(saved_model(model_config))
    if kw.get("attention") == "cudnn":
        kw["attention"] = "auto"
    model = SiamMAE(**kw, rngs=nnx.Rngs(0))
    return set_params(model, params, source)
