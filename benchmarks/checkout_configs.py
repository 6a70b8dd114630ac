"""``configs/siammae.py`` of this checkout, for scripts run as ``python benchmarks/X.py``.

A script's own folder, not the repository root, is first on ``sys.path``, so the
``configs`` folder is loaded from its path rather than imported.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib

PATH = pathlib.Path(__file__).resolve().parents[1] / "configs" / "siammae.py"


def get_config(variant: str):
    """``get_config(variant)`` of this checkout's ``configs/siammae.py``."""
    spec = importlib.util.spec_from_file_location("siammae_configs", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


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
