"""Stop requests: SIGTERM (TPU preemption) or Ctrl-C, agreed across hosts.

The handler only sets a flag; the loop asks :func:`stop_requested` at its
check steps (``train.check_every``), saves a checkpoint there and exits.
"""

from __future__ import annotations

import signal

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


class Preemption:
    """A stop request: SIGTERM (TPU preemption) or a first Ctrl-C (SIGINT).

    The loop then saves a checkpoint at its next check and exits cleanly; a
    second Ctrl-C aborts at once (KeyboardInterrupt). Use as a context
    manager (or call :meth:`restore`) to put the previous handlers back.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.name = ""
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt("second Ctrl-C: aborting without saving")
        self.name = signal.Signals(signum).name
        logging.warning(
            "%s: saving a checkpoint at the next check, then exiting%s",
            self.name,
            " (Ctrl-C again aborts)" if signum == signal.SIGINT else "",
        )
        self.requested = True

    def restore(self) -> None:
        """Puts back the handlers that were there before."""
        for s, previous in self._previous.items():
            signal.signal(s, previous)

    def __enter__(self) -> Preemption:
        return self

    def __exit__(self, *exc_info) -> None:
        self.restore()


def stop_requested(flag: Preemption) -> bool:
    """Whether any process was asked to stop (an all-gather across hosts,
    so every process stops at the same step)."""
    if jax.process_count() == 1:
        return flag.requested
    gathered = multihost_utils.process_allgather(np.int32(flag.requested))
    return bool(np.any(gathered))
