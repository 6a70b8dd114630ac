"""The host runs ahead of the device: the loop reads nothing from the devices
and asks no other host anything between its check steps, and what it counts
between them (``bad_steps``, ``data_skipped``) survives a stop and a resume.

On a CPU, ``jax.transfer_guard_device_to_host`` sees nothing (host and device
share memory), so the loop's reads are counted instead: on the 8-device mesh
every host read of a ``jax.Array`` (``int()``, ``np.asarray``,
``jax.device_get``, ``.item()``...) goes through ``ArrayImpl._value``, which
the test wraps (and checks that it sees each of those reads).
"""

import collections
import json
import os
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import array as array_lib
from jax.sharding import NamedSharding, PartitionSpec

from siammae_jax.configs import siammae as siammae_config
from siammae_jax.train import loop, metrics, preemption, setup

STEPS = 12
CHECK_EVERY, LOG_EVERY, CHECKPOINT_EVERY = 4, 5, 6
DUE = {4, 5, 6, 8, 10, 12}  # multiples of 4, 5 or 6, and the last step
BAD = {2, 7, 11}  # steps the test marks non-finite (none of them due)
SIGTERM_AFTER = 9  # the interrupted run is signalled after this step...
STOPS_AT = 10  # ...and stops (and saves) at the next check


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """8 synthetic videos; the first one's frames are all unreadable."""
    from siammae_jax.data import synthetic

    out = tmp_path_factory.mktemp("synthetic")
    synthetic.write_dataset(out, videos=8, frames=12, size=(32, 32), progress=False)
    broken = sorted(p for p in (out / "frames").iterdir() if p.is_dir())[0]
    for frame in broken.iterdir():
        frame.write_bytes(b"not a jpeg")
    return out


def _config(data_dir):
    c = siammae_config.get_config("tiny")
    c.model.update(encoder="test/8", image_size=32, decoder_dim=32)
    c.model.update(decoder_depth=2, decoder_heads=2, mask_ratio=0.75)
    c.batch_size = 8
    c.data.update(path=str(data_dir), min_gap=2, max_gap=4, num_workers=0)
    c.train.update(steps=STEPS, check_every=CHECK_EVERY, log_every=LOG_EVERY)
    c.train.update(image_every=0, measure_every=0)
    c.checkpoint.every = CHECKPOINT_EVERY
    return c


class _Record:
    """Steps dispatched, and the host's device reads and stop checks by the
    number of steps dispatched when they happened."""

    def __init__(self, start: int):
        self.steps = start
        self.reads = collections.Counter()
        self.stop_checks = []


def _instrument(run, start, monkeypatch, sigterm_after=None) -> _Record:
    """Wraps ``run.step`` (marks the steps of BAD non-finite, as a NaN loss
    would, and sends SIGTERM after ``sigterm_after``), device reads and the
    stop check."""
    record, step, read = _Record(start), run.step, array_lib.ArrayImpl._value
    check = preemption.stop_requested

    def marked_step(state, *args):
        state, m = step(state, *args)
        record.steps += 1
        if record.steps in BAD:
            m = {**m, "finite": jnp.zeros((), bool)}
            state = state.replace(bad_in_a_row=state.bad_in_a_row + 1)
        if record.steps == sigterm_after:
            os.kill(os.getpid(), signal.SIGTERM)
        return state, m

    def counted(array):
        if threading.current_thread() is threading.main_thread():
            record.reads[record.steps] += 1
        return read.fget(array)

    def stop_requested(flag):
        record.stop_checks.append(record.steps)
        return check(flag)

    run.step = marked_step
    monkeypatch.setattr(array_lib.ArrayImpl, "_value", property(counted))
    monkeypatch.setattr(preemption, "stop_requested", stop_requested)
    return record


def _train(config, workdir, monkeypatch, sigterm_after=None) -> _Record:
    """``loop.run`` with the instruments on: setup, restore, the loop."""
    run = setup.setup(config, str(workdir))
    state, counters = setup.restore_or_init(run)
    start = int(state.step)
    logger = metrics.MetricsLogger(str(workdir), is_main=True, console=False)
    logger.truncate_after(start + 1)
    with monkeypatch.context() as patch:
        record = _instrument(run, start, patch, sigterm_after)
        loop.train_loop(run, state, logger, counters)
    logger.close()
    run.ckpt.close()
    return record


def _rows(workdir) -> dict[int, dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as monkeypatch:
        record = _train(_config(data_dir), workdir, monkeypatch)
    return workdir, record


def test_the_instrument_sees_every_kind_of_read(monkeypatch):
    mesh = jax.make_mesh((8,), ("data",))
    x = jax.device_put(jnp.ones(()), NamedSharding(mesh, PartitionSpec()))
    record = _Record(0)
    read = array_lib.ArrayImpl._value

    def counted(array):
        record.reads[0] += 1
        return read.fget(array)

    monkeypatch.setattr(array_lib.ArrayImpl, "_value", property(counted))
    reads = (int, float, bool, np.asarray, jax.device_get, lambda a: a.item())
    for i, how in enumerate(reads, 1):
        how(x)
        assert record.reads[0] == i, how


def test_no_device_read_and_no_stop_check_between_checks(straight):
    _, record = straight
    assert record.steps == STEPS
    read_at = set(record.reads) - {0}  # 0: the loop reads the state's step
    assert read_at <= DUE, f"device reads after non-check steps {read_at - DUE}"
    assert read_at == DUE  # every check reads (the guard, the metrics)
    assert record.stop_checks == sorted(DUE)


def test_counters_are_logged_with_the_non_finite_and_skipped_steps(straight):
    workdir, _ = straight
    rows = _rows(workdir)
    assert sorted(rows) == [5, 10, 12]
    assert [rows[s]["bad_steps"] for s in (5, 10, 12)] == [1, 2, 3]
    skipped = [rows[s]["data_skipped"] for s in (5, 10, 12)]
    assert 0 < skipped[0] < skipped[1] < skipped[2]  # the broken video, each epoch
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    assert not set(saved) & BAD and set(saved) <= DUE


def test_sigterm_saves_at_the_next_check_and_counters_continue(
    straight, data_dir, tmp_path, monkeypatch
):
    config = _config(data_dir)
    record = _train(config, tmp_path, monkeypatch, sigterm_after=SIGTERM_AFTER)
    assert record.steps == STOPS_AT <= SIGTERM_AFTER + CHECK_EVERY
    latest = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    assert latest == STOPS_AT
    _train(config, tmp_path, monkeypatch)
    want, got = _rows(straight[0]), _rows(tmp_path)
    assert sorted(got) == sorted(want)
    for step in want:
        for key in ("bad_steps", "data_skipped", "loss"):
            assert got[step][key] == pytest.approx(want[step][key], rel=1e-5), key
