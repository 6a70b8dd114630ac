"""Training workdirs as weight sources: a workdir, its checkpoints, a step.

The step-folder layout is read through the item names of
:mod:`siammae_jax.weights.layout` (``state``, ``config``), and the
parameters are restored onto this process's first device, whatever mesh
they were saved from.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from siammae_jax.data import coverage
from siammae_jax.data import spec as data_spec
from siammae_jax.models.definition import saved_model
from siammae_jax.weights.layout import CHECKPOINTS, CONFIG_ITEM, STATE_ITEM


def absolute(path: str | epath.Path) -> epath.Path:
    """``path`` made absolute when local (orbax wants absolute paths)."""
    path = epath.Path(path)
    return path if "://" in str(path) else epath.Path(path).resolve()


def is_training_checkpoint(path: epath.Path) -> bool:
    """A step folder, a ``checkpoints`` folder or a workdir holding one."""
    if (path / STATE_ITEM).exists():
        return True
    folder = path / CHECKPOINTS if (path / CHECKPOINTS).exists() else path
    return folder.is_dir() and any(
        p.name.isdigit() and (p / STATE_ITEM).exists() for p in folder.iterdir()
    )


def resolve_step_dir(path: str | epath.Path) -> epath.Path:
    """The step folder of a workdir, a checkpoints folder or a step folder
    (the newest complete step).

    Raises:
      FileNotFoundError: nothing usable at ``path`` (named in the message).
    """
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {path} does not exist.")
    if (path / STATE_ITEM).exists():
        return path
    folder = path / CHECKPOINTS if (path / CHECKPOINTS).exists() else path
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
    steps = [s for s in steps if (folder / str(s) / STATE_ITEM).exists()]
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint step under {folder}.")
    return folder / str(max(steps))


def saved_config(step_dir: epath.Path) -> dict[str, Any]:
    """The whole training config saved with a step, its ``model`` section as
    it was trained (fields it predates set by ``definition.saved_model``).

    Raises:
      FileNotFoundError: the step has no saved config.
    """
    item = step_dir / CONFIG_ITEM
    if not item.exists():
        raise FileNotFoundError(f"{item}: no saved config in this checkpoint.")
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
        config = checkpointer.restore(item, ocp.args.JsonRestore())
    if "model" in config:
        config["model"] = saved_model(config["model"])
    return config


def restore_on_one_device(directory: str | epath.Path) -> Any:
    """An orbax ``StandardSave`` item restored onto this process's first device."""
    checkpointer = ocp.StandardCheckpointer()
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
        checkpointer.metadata(directory).item_metadata,
    )
    return checkpointer.restore(directory, target)


def load_params(path: str | epath.Path) -> tuple[dict, dict[str, Any], epath.Path]:
    """(all model parameters, saved config, step folder) of a training
    checkpoint (a workdir, its checkpoints folder or a step folder)."""
    step_dir = resolve_step_dir(absolute(path))
    config = saved_config(step_dir)
    params = restore_on_one_device(step_dir / STATE_ITEM)["params"]
    return params, config, step_dir


def describe(step_dir: epath.Path, config: dict[str, Any]) -> dict[str, Any]:
    """What a model card says about the training behind a checkpoint.

    Its data's ``coverage.json``, when it has one (``prepare`` or the
    ``video_folder`` builder given an annotation list), is summed up under
    ``data.coverage`` (:func:`siammae_jax.data.coverage.card`): the copy the
    run took when it started, else (older runs) the data's report as it is now.
    """
    data = config.get("data", {})
    info: dict[str, Any] = {
        "step": int(step_dir.name) if step_dir.name.isdigit() else None,
        "data": {
            **{k: data.get(k) for k in ("path", "format")},
            "pairs": data.get("pairs", "frames"),  # frames: saved before pairs
        },
        "batch_size": config.get("batch_size"),
        "checkpoint": str(step_dir),
    }
    workdir = step_dir.parent.parent
    found = workdir / coverage.SNAPSHOT
    if not found.exists():  # a run started before snapshots: the data's now
        found = data_spec.coverage_report(data)
    if found is not None:
        info["data"]["coverage"] = coverage.card(found)
    metrics = step_dir.parent.parent / "metrics.jsonl"
    if metrics.exists():
        last: dict[str, Any] = {}
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            if row.get("step", 0) <= (info["step"] or 0):
                last.update({k: v for k, v in row.items() if isinstance(v, float)})
        measured = ("loss", "eval/", "correspondence", "past_frame")
        scores = {k: last[k] for k in sorted(last) if k.startswith(measured)}
        info["scores"] = scores
    return info
