"""The model a config describes: structure, fixed buffers, parameter layout.

``ModelDef.from_config(config.model)`` is the one mapping from a config's
``model`` section to a SiamMAE, used by training, evaluation and the weights
loaders alike. Parameters travel as pure dicts (``init_params``, checkpoints);
``apply`` and ``model`` put them back into the module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.linen import logical_to_mesh_axes
from jax.sharding import PartitionSpec

from siammae_jax.models import siammae
from siammae_jax.models.siammae import SiamMAE

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Model fields added with a default unlike the behaviour before them, and the
# value that behaviour has: a config saved before the field existed was
# trained with it (issue 26: MAE's norm-pix variance and visible count).
PREDATED = {"norm_pix_ddof": 0, "visible_rule": "round"}
# Logical axis -> mesh axis (or axes, or None: replicated).
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def model_kwargs(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``SiamMAE`` from a config's ``model`` section.

    Raises:
      ValueError: an unknown ``dtype`` name, a bad ``norm_pix_ddof`` or
        ``visible_rule`` (named as ``model.<field>``).
    """
    if hasattr(model_config, "to_dict"):
        model_config = model_config.to_dict()
    kw = dict(model_config)
    dtype = kw.pop("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r} must be one of {sorted(DTYPES)}.")
    try:
        siammae.check_conventions(**{k: kw[k] for k in PREDATED if k in kw})
    except ValueError as e:
        raise ValueError(f"model.{e}") from None
    image = kw.get("image_size")
    if isinstance(image, list):  # (JSON stores tuples as lists)
        kw["image_size"] = tuple(image)
    return {**kw, "dtype": DTYPES[dtype]}


def saved_model(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """A saved ``model`` section as it was trained: the fields it predates
    (:data:`PREDATED`) set to the behaviour before them, not to today's
    defaults."""
    if hasattr(model_config, "to_dict"):
        model_config = model_config.to_dict()
    return {**PREDATED, **model_config}


def spec_for(names: Sequence[str | None] | None, rules: Rules) -> PartitionSpec:
    """Logical axis names -> PartitionSpec (names without a rule: replicated)."""
    if not names:
        return PartitionSpec()
    return PartitionSpec(*logical_to_mesh_axes(tuple(names), list(rules)))


def state_specs(state: nnx.State, rules: Rules) -> dict:
    """PartitionSpecs of an ``nnx.State``'s variables, as a pure dict."""
    specs = nnx.map_state(
        lambda _, v: spec_for(v.get_metadata().get("out_sharding"), rules), state
    )
    return nnx.to_pure_dict(specs)


class ModelDef:
    """The model's structure, fixed buffers and parameter layout, built once.

    Args:
      model_kwargs: keyword arguments of ``SiamMAE`` (see :func:`model_kwargs`).
      rules: logical-axis -> mesh-axis rules for ``param_specs`` (none:
        everything replicated).

    Attributes:
      graphdef: ``nnx`` graph definition of the model.
      buffers: non-trained variables (sin-cos position embeddings), pure dict.
      param_specs: PartitionSpec per parameter under ``rules``.
      patch: the encoder's patch size.
    """

    def __init__(self, model_kwargs: Mapping[str, Any], rules: Rules = ()):
        self.model_kwargs = dict(model_kwargs)
        model = SiamMAE(**self.model_kwargs, rngs=nnx.Rngs(0))
        self.patch = model.encoder.patch
        self.graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
        self.buffers = nnx.to_pure_dict(buffers)
        self.param_specs = state_specs(params, rules)

    @classmethod
    def from_config(
        cls, model_config: Mapping[str, Any], rules: Rules = ()
    ) -> ModelDef:
        """The model of a config's ``model`` section."""
        return cls(model_kwargs(model_config), rules)

    def init_params(self, key: jax.Array) -> dict:
        """Freshly initialised parameters (pure dict)."""
        model = SiamMAE(**self.model_kwargs, rngs=nnx.Rngs(params=key))
        return nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[1])

    def apply(self, params: dict, buffers: dict, *args, **kwargs):
        """Runs the model on ``args`` with these parameters."""
        return nnx.merge(self.graphdef, params, buffers)(*args, **kwargs)

    def model(self, params: dict) -> SiamMAE:
        """The module holding ``params`` (and this definition's buffers)."""
        return nnx.merge(self.graphdef, params, self.buffers)
