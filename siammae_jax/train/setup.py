"""Everything a run needs before its first step, built once:
``setup(config, workdir) -> Run`` (validate -> mesh -> data -> schedule ->
model and optimizer -> compile, the memory analysis logged before step 0),
then ``restore_or_init(run)`` (``train.restore``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from siammae_jax.data import pairs, pipeline, sources
from siammae_jax.data import spec as data_spec
from siammae_jax.models import flops
from siammae_jax.models.definition import ModelDef
from siammae_jax.train import checkpoint, evaluation, measures
from siammae_jax.train import config as config_lib
from siammae_jax.train import mesh as mesh_lib
from siammae_jax.train import restore as restore_lib
from siammae_jax.train import state as state_lib
from siammae_jax.train import step as step_lib


@dataclasses.dataclass
class Run:
    """What the loop needs, built once by ``setup``."""

    config: ml_collections.ConfigDict
    workdir: epath.Path
    mesh: jax.sharding.Mesh
    model_def: ModelDef
    buffers: Any  # the model's fixed buffers, replicated on the mesh
    schedule: config_lib.Schedule
    cadence: config_lib.Cadence
    step: Any  # the compiled train step
    abstract_state: state_lib.TrainState
    tx: Any
    predict: Any  # jitted (params, buffers, uint8 frames, step) -> (frames, Output)
    measures: Any  # (params, step) -> dict of learning measures, or None
    evaluate: evaluation.Online | None  # online evaluations (eval.every > 0)
    data: grain.DatasetIterator
    ckpt: checkpoint.Checkpointer
    flops_per_pair: float


def data_iterator(
    config: ml_collections.ConfigDict, source: Any
) -> grain.DatasetIterator:
    """This host's iterator of batches (its shard, its share of the batch)."""
    hosts = jax.process_count()
    ds = pipeline.make_pipeline(
        source,
        batch_size=config.batch_size // hosts,
        sampler=config_lib.sampler(config),
        seed=config.seed,
        shard_index=jax.process_index(),
        shard_count=hosts,
        num_workers=config.data.num_workers,
    )
    return iter(ds)


def length_rule(sampler: Any) -> sources.LengthRule | None:
    """What the start-up check asks of a video's length: frame pairs need
    frames ``min_gap`` apart (``gap_range`` says why a video is too short)."""
    return sampler.gap_range if isinstance(sampler, pairs.PairSampler) else None


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Validates, builds and compiles everything; no step is taken."""
    config_lib.validate(config, jax.device_count(), jax.process_count())
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh_lib.make_mesh(config.mesh.to_dict())
    spec = data_spec.DataSpec.from_config(config.data, config.seed)
    main = jax.process_index() == 0
    if main:
        data_spec.snapshot_coverage(config.data.to_dict(), workdir)
    source = data_spec.open(
        spec, workdir, is_main=main, barrier=mesh_lib.barrier,
        length_rule=length_rule(config_lib.sampler(config)),
    )  # fmt: skip
    schedule = config_lib.schedule(config, len(source))
    built = step_lib.build(config, mesh, schedule)
    _log_memory(built.abstract_state, built.memory)
    return Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        model_def=built.model_def,
        buffers=replicated(mesh, built.model_def.buffers),
        schedule=schedule,
        cadence=config_lib.cadence(config, schedule.total_steps),
        step=built.compiled,
        abstract_state=built.abstract_state,
        tx=built.tx,
        predict=measures.make_predict(built.model_def, config.seed),
        measures=_measures(config, built.model_def),
        evaluate=_online_eval(config, built.model_def, mesh, workdir),
        data=data_iterator(config, source),
        ckpt=_checkpointer(config, workdir),
        flops_per_pair=flops.pair_flops(**built.model_def.model_kwargs)["train"],
    )


def replicated(mesh: jax.sharding.Mesh, tree):
    """``tree`` (the same values in every process) placed once on every
    device of ``mesh``, so the step does not copy it there each time."""
    everywhere = NamedSharding(mesh, PartitionSpec())
    return jax.jit(lambda t: t, out_shardings=everywhere)(tree)


def _evaluating(config: ml_collections.ConfigDict) -> bool:
    return bool(config.get("eval") and config.eval.every)


def _checkpointer(config, workdir: epath.Path) -> checkpoint.Checkpointer:
    c = config.checkpoint
    return checkpoint.Checkpointer(
        workdir / "checkpoints",
        every=c.every,
        keep=c.keep,
        keep_every=c.keep_every,
        async_save=c.async_save,
        keep_best=_evaluating(config) and config.eval.keep_best,
    )


def _online_eval(config, model_def, mesh, workdir) -> evaluation.Online | None:
    if not _evaluating(config):
        return None
    bar = config.train.get("progress_bar", False)
    return evaluation.Online(config, model_def, mesh, workdir, progress=bar)


def _measures(config, model_def: ModelDef):
    """Learning measures on held-out videos (``train.measure_every``), or None."""
    t = config.train
    if not t.measure_every:
        return None
    return measures.make_measures(
        model_def,
        run_seed=config.seed,
        videos=t.measure_videos,
        image_size=config.model.image_size,
        gap=t.measure_gap,
    )


def _log_memory(abstract: state_lib.TrainState, memory) -> None:
    """Per-device bytes of parameters, optimizer state and temporaries."""

    def per_device(tree) -> int:
        return sum(
            int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
            for x in jax.tree.leaves(tree)
        )

    mib = 2**20
    logging.info(
        "memory per device: params %.1f MiB, optimizer %.1f MiB, temporaries %s",
        per_device(abstract.params) / mib,
        per_device(abstract.opt_state) / mib,
        f"{memory.temp_size_in_bytes / mib:.1f} MiB" if memory else "n/a",
    )


def restore_or_init(run: Run) -> tuple[state_lib.TrainState, state_lib.Counters]:
    """The run's first state and counters (see ``train.restore``)."""
    return restore_lib.restore_or_init(
        run.ckpt,
        run.data,
        model_def=run.model_def,
        tx=run.tx,
        mesh=run.mesh,
        abstract_state=run.abstract_state,
        model_config=run.config.model.to_dict(),
        seed=run.config.seed,
        init_from=run.config.get("init_from", ""),
    )


def global_frames(run: Run, local: np.ndarray) -> jax.Array:
    """This host's frames -> the global batch array sharded over the mesh."""
    return jax.make_array_from_process_local_data(
        mesh_lib.batch_sharding(run.mesh), local
    )
