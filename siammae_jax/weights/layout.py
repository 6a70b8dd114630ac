"""The checkpoint layout of a training workdir, shared by writer and readers.

``<workdir>/checkpoints/<step>/<item>``, one orbax item per name below:
:mod:`siammae_jax.train.checkpoint` writes them and
:mod:`siammae_jax.weights.checkpoints` reads them. This module imports
nothing, so both can depend on it without depending on each other.
"""

CHECKPOINTS = "checkpoints"  # the folder of step folders in a workdir
STATE_ITEM = "state"  # the train state (parameters, optimizer, step, counters)
DATA_ITEM = "data"  # the data iterator's state (grain)
CONFIG_ITEM = "config"  # the whole config, as JSON
COUNTERS_ITEM = "counters"  # data_skipped and bad_steps, as JSON (may be absent)
