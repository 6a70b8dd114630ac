"""Console logging: keep library chatter out of the training output."""

from __future__ import annotations

import logging

from absl import logging as absl_logging


class _QuietLibraries(logging.Filter):
    """Drops INFO chatter of orbax (one line per file written); keeps warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        noisy = "/orbax/" in record.pathname or "/grain/" in record.pathname
        return record.levelno >= logging.WARNING or not noisy


def quiet_library_logs() -> None:
    """Keeps orbax's and grain's INFO lines out of the console."""
    absl_logging.get_absl_handler().addFilter(_QuietLibraries())
