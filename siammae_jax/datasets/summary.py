"""JSON-safe results: what the evaluators' summary files are written with."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """A JSON-safe copy: numpy to Python, NaN and inf to None, keys to str."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summary_paths(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """``(<out_dir>/<name>_summary.json, .csv)``, the folder created."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}_summary.json", folder / f"{name}_summary.csv"


def write_json(path: str | Path, value: Any) -> Path:
    """``value`` as indented JSON (see :func:`json_safe`), with a final newline."""
    path = Path(path)
    path.write_text(json.dumps(json_safe(value), indent=2) + "\n")
    return path
