"""How a result was obtained: its protocol, inputs, weights and code.

Every ``summary.json`` (offline and online) carries::

    protocol: {name, settings (every resolved value), departures}
    inputs:   {sha256 (frame lists and sizes), sizes {sequence: [h, w]}}
    weights:  {sha256, kind, ...} or a model card
    version, commit

:func:`compare` says whether two such results are comparable (same
benchmark, protocol settings and inputs) and lists every difference.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siammae_jax.datasets import summary as summary_lib

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class Inputs:
    """The inputs an evaluation fed to the encoder, in order.

    ``sha256`` hashes each sequence's name, frame list, image size and input
    size, in the order seen: two runs with equal hashes read the same frames
    and fed them at the same sizes.
    """

    def __init__(self) -> None:
        self.sizes: dict[str, list[int]] = {}
        self._hash = hashlib.sha256()

    def add(
        self,
        name: str,
        frames: Sequence[str],
        image_hw: Sequence[int],
        input_hw: Sequence[int],
    ) -> None:
        """Records one sequence: its frame names, (H, W) read, (h, w) fed."""
        record = [name, list(frames), [int(s) for s in image_hw]]
        record.append([int(s) for s in input_hw])
        self._hash.update(json.dumps(record).encode() + b"\n")
        self.sizes[name] = [int(s) for s in input_hw]

    def as_dict(self) -> dict[str, Any]:
        return {"sha256": self._hash.hexdigest(), "sizes": dict(self.sizes)}


def params_sha256(tree: Any) -> str:
    """sha256 over a parameter tree: each leaf's path, dtype, shape and bytes
    (float32 little-endian for floats), in sorted path order."""
    import jax

    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        array = np.asarray(leaf)
        if array.dtype.kind == "f":
            array = array.astype("<f4")
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("siammae_jax")
    except metadata.PackageNotFoundError:
        return "unknown"


def commit() -> str:
    """The git commit of the package's checkout (``+dirty`` when the tree has
    changes), or ``unknown`` outside a checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(PACKAGE_ROOT), *args],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def protocol_record(
    name: str, section: Mapping[str, Any], departures: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "settings": summary_lib.json_safe(dict(section)),
        "departures": summary_lib.json_safe(dict(departures)),
    }


def record(
    task: str,
    scores: Mapping[str, float],
    protocol: Mapping[str, Any],
    inputs: Inputs,
    weights: Mapping[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """A ``summary.json`` body (see the module doc)."""
    return summary_lib.json_safe(
        {
            "task": task,
            "scores": dict(scores),
            "protocol": dict(protocol),
            "inputs": inputs.as_dict(),
            "weights": dict(weights),
            "version": version(),
            "commit": commit(),
            **extra,
        }
    )


def label(task: str, protocol: str, departures: Mapping[str, Any]) -> str:
    """``davis [protocol dino]`` (``+ departures: topk`` when overridden)."""
    text = f"{task} [protocol {protocol}"
    if departures:
        text += " + departures: " + ", ".join(sorted(departures))
    return text + "]"


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """Whether results ``a`` and ``b`` are comparable, and every difference.

    Comparable: same benchmark, same resolved protocol settings and the same
    inputs (frame lists and sizes). Differences in weights, scores, version
    or commit are listed but do not make results incomparable: they are what
    one compares.

    Returns:
      ``(comparable, lines)``: one line per difference, those that break
      comparability first, each marked ``!`` (breaks) or ``.`` (informative).
    """
    for name, result in (("A", a), ("B", b)):
        missing = [k for k in ("task", "protocol", "inputs") if k not in result]
        if missing:
            raise ValueError(
                f"result {name} has no {', '.join(missing)}: written before "
                "results recorded their protocol; re-run the evaluation"
            )
    breaking, info = [], []
    if a["task"] != b["task"]:
        breaking.append(f"task: {a['task']} vs {b['task']}")
    if a["protocol"]["name"] != b["protocol"]["name"]:
        info.append(
            f"protocol name: {a['protocol']['name']} vs {b['protocol']['name']}"
        )
    sa, sb = _flat(a["protocol"]["settings"]), _flat(b["protocol"]["settings"])
    for key in sorted(set(sa) | set(sb)):
        if key in ("chunk",):
            continue  # Memory only: results are equal across chunk sizes.
        if sa.get(key) != sb.get(key):
            breaking.append(f"setting {key}: {sa.get(key)} vs {sb.get(key)}")
    if a["inputs"]["sha256"] != b["inputs"]["sha256"]:
        sizes_a, sizes_b = a["inputs"]["sizes"], b["inputs"]["sizes"]
        only = sorted(set(sizes_a) ^ set(sizes_b))
        sized = sorted(
            k for k in set(sizes_a) & set(sizes_b) if sizes_a[k] != sizes_b[k]
        )
        text = "inputs differ (frame lists or sizes)"
        if only:
            text += f"; sequences in one only: {', '.join(only[:5])}"
        if sized:
            k = sized[0]
            text += f"; input sizes differ, e.g. {k}: {sizes_a[k]} vs {sizes_b[k]}"
        breaking.append(text)
    for key in ("weights", "version", "commit"):
        fa, fb = _flat(a.get(key), key + "."), _flat(b.get(key), key + ".")
        for k in sorted(set(fa) | set(fb)):
            if fa.get(k) != fb.get(k):
                info.append(f"{k}: {fa.get(k)} vs {fb.get(k)}")
    sa, sb = _flat(a.get("scores", {})), _flat(b.get("scores", {}))
    for k in sorted(set(sa) | set(sb)):
        if sa.get(k) != sb.get(k):
            info.append(f"score {k}: {sa.get(k)} vs {sb.get(k)}")
    lines = [f"! {line}" for line in breaking] + [f". {line}" for line in info]
    return not breaking, lines
