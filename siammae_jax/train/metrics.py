"""Training metrics: clu writers + metrics.jsonl, reconstruction pictures, MFU.

Process 0 writes TensorBoard event files and console lines through a clu
writer and mirrors every scalar into ``workdir/metrics.jsonl`` (one JSON
object per ``write_scalars`` call), which scripts and tests can read without
TensorFlow. Other processes only log to the console and write nothing to disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from tqdm import tqdm

JSONL_NAME = "metrics.jsonl"


class MetricsLogger:
    """Scalars to clu (TensorBoard + logging) and metrics.jsonl; images to TB.

    Usable as a context manager; ``close`` is idempotent. Writing after
    ``close`` raises ``RuntimeError``.

    Attributes:
      workdir: where the event files and metrics.jsonl go.
      is_main: whether this is process 0 (the only one writing to disk).
      total_steps: the run's length, for the progress hooks' ETA.
      console: also log every scalar to the console (off under a progress
        bar: TensorBoard and metrics.jsonl keep them all).
      writer: the clu writer (logging only on non-main processes).
      jsonl_path: path of metrics.jsonl, or None when none is written.
    """

    def __init__(
        self,
        workdir: str,
        *,
        is_main: bool = True,
        total_steps: int | None = None,
        console: bool = True,
    ):
        self.workdir = os.fspath(workdir)
        self.is_main = is_main
        self.total_steps = total_steps
        self.console = console
        if is_main and not console:
            self.writer = metric_writers.AsyncMultiWriter(
                [metric_writers.SummaryWriter(self.workdir)]
            )
        else:
            self.writer = metric_writers.create_default_writer(
                self.workdir, just_logging=not is_main
            )
        self.jsonl_path: str | None = None
        self._jsonl = None
        self._closed = False
        if not is_main:
            return
        if "://" in self.workdir:
            logging.warning(
                "workdir %s is not a local path: %s is not written (TensorBoard "
                "event files still are).",
                self.workdir,
                JSONL_NAME,
            )
            return
        os.makedirs(self.workdir, exist_ok=True)
        self.jsonl_path = os.path.join(self.workdir, JSONL_NAME)
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")

    def write_scalars(
        self, step: int, scalars: Mapping[str, float | jax.Array | np.ndarray]
    ) -> None:
        """Writes one step's scalars (device arrays fetched in one transfer).

        Args:
          step: the training step the values belong to.
          scalars: name -> single number (Python, NumPy or jax.Array; any shape
            with exactly one element). Integers stay integers.
        """
        self._check_open()
        if "step" in scalars:
            raise ValueError("scalar name 'step' is reserved for the step number.")
        values = _to_python_numbers(scalars)
        self.writer.write_scalars(int(step), values)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
            self._jsonl.flush()

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """Writes pictures to TensorBoard (main process only).

        Args:
          step: the training step the pictures belong to.
          images: name -> uint8 [0, 255] or float [0, 1] array, [N, H, W, C]
            or [H, W, C] with C in (1, 3, 4).
        """
        self._check_open()
        if not self.is_main:
            return
        self.writer.write_images(
            int(step), {name: _image_batch(name, x) for name, x in images.items()}
        )

    def truncate_after(self, step: int) -> int:
        """Drops metrics.jsonl lines with step >= ``step``; call when resuming.

        A run that crashed after logging but before checkpointing resumes from
        an earlier step; this keeps the file free of duplicate or stale steps.
        Unreadable lines (a write cut short by the crash) are dropped as well,
        and counted in a warning.

        Args:
          step: the step the run resumes from.

        Returns:
          The number of valid lines dropped.
        """
        self._check_open()
        if self._jsonl is None:
            return 0
        self._jsonl.close()
        with open(self.jsonl_path, encoding="utf-8") as f:
            kept, dropped, unreadable = _split_lines(f, step)
        if dropped or unreadable:
            tmp = self.jsonl_path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(kept)
            os.replace(tmp, self.jsonl_path)
        if unreadable:
            logging.warning(
                "Dropped %d unreadable line(s) from %s.", unreadable, self.jsonl_path
            )
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        return dropped

    def hooks(self, profile_steps: int = 0) -> list[periodic_actions.PeriodicAction]:
        """``progress_hooks`` for this run, reporting steps/s to this writer."""
        return progress_hooks(
            self.workdir,
            self.total_steps,
            self.is_main,
            profile_steps,
            writer=self.writer,
            report=self.console,
        )

    def flush(self) -> None:
        """Flushes the clu writer and metrics.jsonl."""
        self._check_open()
        self.writer.flush()
        if self._jsonl is not None:
            self._jsonl.flush()

    def close(self) -> None:
        """Flushes and closes everything; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self.writer.close()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"MetricsLogger({self.workdir!r}) is closed.")


def _to_python_numbers(scalars: Mapping[str, Any]) -> dict[str, int | float]:
    """One ``device_get`` for all values, then Python ints (bool, int) or floats."""
    host = jax.device_get(dict(scalars))
    out = {}
    for name, value in host.items():
        x = np.asarray(value)
        if x.size != 1:
            raise ValueError(
                f"scalar {name!r} has shape {x.shape}; expected a single number."
            )
        x = x.reshape(())
        out[name] = int(x) if x.dtype.kind in "biu" else float(x)
    return out


def _image_batch(name: str, image: Any) -> np.ndarray:
    """[H, W, C] or [N, H, W, C], uint8 or float in [0, 1] -> uint8 [N, H, W, C]."""
    x = np.asarray(jax.device_get(image))
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"image {name!r} has shape {x.shape}; expected [N, H, W, C] or "
            "[H, W, C] with C in (1, 3, 4)."
        )
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise ValueError(
            f"image {name!r} has dtype {x.dtype}; expected uint8 or float in [0, 1]."
        )
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _split_lines(lines, step: int) -> tuple[list[str], int, int]:
    """(lines to keep, valid lines at or after ``step``, unreadable lines)."""
    kept, dropped, unreadable = [], 0, 0
    for line in lines:
        if not line.strip():
            continue
        try:
            line_step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            unreadable += 1
            continue
        if line_step >= step:
            dropped += 1
        else:
            kept.append(line if line.endswith("\n") else line + "\n")
    return kept, dropped, unreadable


def throughput_scalars(
    steps: int,
    seconds: float,
    pairs_per_step: int,
    flops_per_pair: float,
    num_devices: int,
    peak_per_device: float | None,
) -> dict[str, float]:
    """Throughput over a window of ``steps`` training steps.

    Args:
      steps: steps in the window.
      seconds: wall-clock length of the window.
      pairs_per_step: global batch size (frame pairs).
      flops_per_pair: training FLOPs per pair (forward + backward, e.g.
        ``flops.pair_flops(...)["train"]``).
      num_devices: chips the step runs on.
      peak_per_device: peak FLOP/s of one chip, or None when unknown.

    Returns:
      ``pairs_per_sec``, ``pairs_per_sec_per_device``, ``steps_per_sec``,
      ``tflops_per_sec_per_device`` and, when the peak is known, ``mfu``
      (achieved FLOP/s over the devices' total peak).
    """
    if seconds <= 0 or num_devices < 1:
        raise ValueError(
            f"seconds={seconds} must be positive and num_devices={num_devices} "
            "at least 1."
        )
    pairs_per_sec = steps * pairs_per_step / seconds
    flops_per_sec = pairs_per_sec * flops_per_pair
    out = {
        "pairs_per_sec": pairs_per_sec,
        "pairs_per_sec_per_device": pairs_per_sec / num_devices,
        "steps_per_sec": steps / seconds,
        "tflops_per_sec_per_device": flops_per_sec / num_devices / 1e12,
    }
    if peak_per_device:
        out["mfu"] = flops_per_sec / (peak_per_device * num_devices)
    return out


def progress_hooks(
    workdir: str,
    total_steps: int | None,
    is_main: bool,
    profile_steps: int = 0,
    *,
    every_secs: float = 60.0,
    writer: metric_writers.MetricWriter | None = None,
    report: bool = True,
) -> list[periodic_actions.PeriodicAction]:
    """clu periodic actions to call as ``hook(step)`` after every step.

    Args:
      workdir: where profiles go.
      total_steps: the run's length, for the ETA (None: no ETA).
      is_main: only process 0 reports and profiles; others get no hooks.
      profile_steps: steps per profile; 0 turns profiling off.
      every_secs: how often progress (steps/s, ETA) is reported.
      writer: also writes steps/s and uptime there when given.
      report: include ``ReportProgress`` (off under a progress bar).

    Returns:
      ``ReportProgress`` (when ``report``), then ``Profile`` when
      ``profile_steps > 0``.
    """
    if not is_main:
        return []
    hooks: list[periodic_actions.PeriodicAction] = []
    if report:
        hooks.append(
            periodic_actions.ReportProgress(
                num_train_steps=total_steps, writer=writer, every_secs=every_secs
            )
        )
    if profile_steps > 0:
        hooks.append(
            periodic_actions.Profile(logdir=workdir, num_profile_steps=profile_steps)
        )
    return hooks


class TrainingBar:
    """One live console line for a training run (tqdm): steps, ETA and the
    latest loss, pairs/s and online J&F.

    Args:
      total: the run's steps.
      start: the step the run starts (or resumes) from.
      enabled: draw it (process 0 with ``train.progress_bar``).
      file: where to draw (stderr by default).
    """

    SHOWN = (  # scalar -> (label, format)
        ("loss", "loss", ".4f"),
        ("pairs_per_sec", "pairs/s", ".0f"),
        ("eval/davis/J&F_random_init", "J&F at init", ".3f"),
        ("eval/davis/J&F", "J&F", ".3f"),
    )

    def __init__(self, total: int, start: int, enabled: bool, file=None):
        self._bar = tqdm(
            total=total,
            initial=start,
            desc="pre-training",
            unit="step",
            disable=not enabled,
            dynamic_ncols=True,
            mininterval=0.5,
            file=file,
        )
        self._shown: dict[str, str] = {}

    def update(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Moves to ``step``, showing any of ``SHOWN`` in ``scalars``."""
        if self._bar.disable:
            return
        for key, label, fmt in self.SHOWN:
            if key in scalars:
                self._shown[label] = format(float(scalars[key]), fmt)
        text = ", ".join(f"{k} {v}" for k, v in self._shown.items())
        self._bar.set_postfix_str(text, refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        self._bar.close()
