"""Console logging: keep library chatter out of the training output."""

from __future__ import annotations

import logging

from absl import logging as absl_logging

# orbax warns at every save without metrics once a best-checkpoint policy is
# on; the loop ranks only the evaluated steps, on purpose.
_EXPECTED = ("did not provide metrics",)


class _QuietLibraries(logging.Filter):
    """Drops INFO chatter of orbax (one line per file written) and its expected
    warnings; keeps the other warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        noisy = "/orbax/" in record.pathname or "/grain/" in record.pathname
        if noisy and any(text in record.getMessage() for text in _EXPECTED):
            return False
        return record.levelno >= logging.WARNING or not noisy


def quiet_library_logs() -> None:
    """Keeps orbax's and grain's INFO lines out of the console."""
    quiet = _QuietLibraries()
    absl_logging.get_absl_handler().addFilter(quiet)
    # Outside absl.app.run records reach Python's handlers instead.
    logging.getLogger("absl").addFilter(quiet)
