"""Entry point: ``python -m siammae_jax.main --config configs/siammae.py:tiny --workdir DIR``.

Parses flags, starts multi-host JAX when asked, and calls
``siammae_jax.train.loop.run(config, workdir)``; the same command resumes.
"""

from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from siammae_jax.train.config import apply_xla_flags
from siammae_jax.train.logs import quiet_library_logs

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Training config file (e.g. configs/siammae.py:vits16).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    False,
    "Call jax.distributed.initialize() (TPU pod slices and SLURM discover peers).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "host:port of process 0, for hand-started processes."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process' index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_library_logs()
    apply_xla_flags(_CONFIG.value.get("xla_flags", ""))
    if _COORDINATOR.value:
        jax.distributed.initialize(
            _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
        )
    elif _MULTIHOST.value:
        jax.distributed.initialize()
    logging.info(
        "process %d of %d, %d local / %d global devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].device_kind,
    )
    from siammae_jax.data.sources import NoUsableVideo  # noqa: PLC0415
    from siammae_jax.train import loop  # noqa: PLC0415 (after distributed init)

    try:
        loop.run(_CONFIG.value, _WORKDIR.value)
    except NoUsableVideo as e:  # refused at start: one line, no traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    app.run(main)
