"""Config variants with overrides given on a benchmark script's command line."""

from __future__ import annotations

import ast

from siammae_jax.configs.siammae import get_config


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def config_with_overrides(spec: str):
    """``variant[,field=value,...]``, e.g. ``tiny,model.decoder_depth=2``: the
    variant with those fields set (values read as Python literals, else as
    strings)."""
    variant, *overrides = spec.split(",")
    config = get_config(variant)
    for item in overrides:
        field, text = item.split("=", 1)
        *parents, leaf = field.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = _value(text)
    return config
