"""Orbax checkpoints of the whole run: train state, data iterator, config,
counters.

Saves are asynchronous and atomic (orbax writes to a temporary folder and
renames it when complete), so a crash mid-save leaves the previous steps as
they were and the half-written one is never taken for a checkpoint. Restores
target abstract arrays that carry the *current* mesh's shardings, so a run
saved on 8 devices continues on 1 or 4.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import grain
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from siammae_jax.train.state import Counters, TrainState
from siammae_jax.weights.layout import (
    CONFIG_ITEM,
    COUNTERS_ITEM,
    DATA_ITEM,
    STATE_ITEM,
)

_policies = ocp.checkpoint_managers


# The key under which the value of eval.best_metric ranks checkpoints when
# keep_best is on ("J&F" from before eval.best_metric; kept so older runs rank alike).
BEST_METRIC = "J&F"


def _best_metric(metrics: dict[str, float]) -> float:
    return metrics[BEST_METRIC]


class _IteratorSnapshot:
    """The data iterator's state taken at save time.

    The iterator keeps moving while an asynchronous save runs; grain's handler
    reads ``get_state()`` from this frozen copy instead.
    """

    def __init__(self, iterator: grain.DatasetIterator):
        self._state = json.dumps(iterator.get_state(), indent=1).encode()

    def get_state(self) -> bytes:
        return self._state


class Checkpointer:
    """Saves and restores (state, data iterator, config, counters) under
    ``directory``.

    Args:
      directory: where step folders are written (``<workdir>/checkpoints``).
      every: save every N steps (plus forced saves: final step, SIGTERM).
      keep: number of latest checkpoints kept.
      keep_every: also keep every N-th step for good (0: none).
      async_save: write in the background while training goes on.
      keep_best: also keep the checkpoint with the highest ``metrics[BEST_METRIC]``
        (orbax's ``BestN`` policy; steps saved without metrics are kept only
        as latest or every-N-th ones).
    """

    def __init__(
        self,
        directory: str | epath.Path,
        *,
        every: int,
        keep: int = 3,
        keep_every: int = 0,
        async_save: bool = True,
        keep_best: bool = False,
    ):
        preserve = [_policies.LatestN(n=keep)]
        if keep_every > 0:
            preserve.append(_policies.EveryNSteps(interval_steps=keep_every))
        best = {}
        if keep_best:
            preserve.append(
                _policies.BestN(
                    get_metric_fn=_best_metric,
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
            best = {"best_fn": _best_metric, "best_mode": "max"}
        options = ocp.CheckpointManagerOptions(
            **best,
            save_decision_policy=_policies.FixedIntervalPolicy(every),
            preservation_policy=_policies.AnyPreservationPolicy(preserve),
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        directory = str(directory)
        if "://" not in directory:  # orbax needs absolute local paths
            directory = os.path.abspath(directory)
        self.directory = epath.Path(directory)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self.keep_best = keep_best

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step (None when there is none)."""
        return self.manager.latest_step()

    def save(
        self,
        step: int,
        state: TrainState,
        iterator: grain.DatasetIterator,
        config: ml_collections.ConfigDict,
        *,
        force: bool = False,
        metrics: dict[str, float] | None = None,
        counters: Counters | None = None,
    ) -> bool:
        """Starts saving ``step`` if the policy (or ``force``) says so;
        ``metrics`` (``{"J&F": ...}``) rank it for ``keep_best``; ``counters``
        are saved with it (a resumed run continues them)."""
        items = {
            STATE_ITEM: ocp.args.StandardSave(state),
            DATA_ITEM: grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator)),
            CONFIG_ITEM: ocp.args.JsonSave(json.loads(config.to_json())),
        }
        if counters is not None:
            items[COUNTERS_ITEM] = ocp.args.JsonSave(dataclasses.asdict(counters))
        args = ocp.args.Composite(**items)
        return self.manager.save(step, args=args, force=force, metrics=metrics)

    def best_step(self) -> int | None:
        """The kept step with the highest ranked value (None: none was ranked)."""
        return self.manager.best_step() if self.keep_best else None

    def restore(
        self, step: int, abstract_state: TrainState, iterator: grain.DatasetIterator
    ) -> TrainState:
        """Restores the state onto ``abstract_state``'s shardings; sets the iterator."""
        args = ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardRestore(abstract_state),
            DATA_ITEM: grain.checkpoint.CheckpointRestore(iterator),
        })  # fmt: skip
        return self.manager.restore(step, args=args)[STATE_ITEM]

    def saved_config(self, step: int) -> dict[str, Any]:
        """The config stored with ``step``."""
        args = ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()})
        return self.manager.restore(step, args=args)[CONFIG_ITEM]

    def saved_counters(self, step: int) -> Counters:
        """The counters stored with ``step`` (zeros for a checkpoint written
        before they were)."""
        if not (self.directory / str(step) / COUNTERS_ITEM).exists():
            return Counters()
        args = ocp.args.Composite(**{COUNTERS_ITEM: ocp.args.JsonRestore()})
        return Counters(**self.manager.restore(step, args=args)[COUNTERS_ITEM])

    def wait(self) -> None:
        """Blocks until the asynchronous saves in flight are complete."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
