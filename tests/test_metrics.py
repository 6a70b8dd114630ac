"""Tests of the metrics module: jsonl + TensorBoard output, pictures, MFU."""

import glob
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from clu import periodic_actions
from PIL import Image

from siammae_jax.eval import pictures
from siammae_jax.models import flops
from siammae_jax.train import metrics

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def _read_jsonl(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _read_events(workdir):
    """Every summary value in the event files, as (step, tag, value proto)."""
    import tensorflow as tf

    files = glob.glob(
        os.path.join(workdir, "**", "events.out.tfevents*"), recursive=True
    )
    assert files, f"no event files under {workdir}"
    out = []
    for path in files:
        for raw in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            out.extend((event.step, v.tag, v) for v in event.summary.value)
    return out


def test_jsonl_holds_steps_and_converted_values(tmp_path):
    with metrics.MetricsLogger(str(tmp_path), total_steps=10) as logger:
        logger.write_scalars(
            1,
            {
                "loss": jnp.asarray(0.25),
                "lr": np.float32(1.5e-4),
                "count": jnp.asarray([7], jnp.int32),
                "plain": 2.0,
            },
        )
        logger.write_scalars(2, {"loss": jnp.asarray(0.125, jnp.bfloat16)})
    lines = _read_jsonl(tmp_path)
    assert lines[0] == {
        "step": 1,
        "loss": 0.25,
        "lr": pytest.approx(1.5e-4),
        "count": 7,
        "plain": 2.0,
    }
    assert isinstance(lines[0]["count"], int)
    assert lines[1] == {"step": 2, "loss": 0.125}


def test_write_scalars_rejects_arrays_and_reserved_name(tmp_path):
    with metrics.MetricsLogger(str(tmp_path)) as logger:
        with pytest.raises(ValueError, match="'loss' has shape"):
            logger.write_scalars(1, {"loss": np.zeros(3)})
        with pytest.raises(ValueError, match="reserved"):
            logger.write_scalars(1, {"step": 1.0})
    with pytest.raises(RuntimeError, match="closed"):
        logger.write_scalars(2, {"loss": 1.0})
    logger.close()  # Idempotent.


def test_resume_appends_and_truncate_drops_stale_steps(tmp_path):
    with metrics.MetricsLogger(str(tmp_path)) as logger:
        for step in range(1, 6):
            logger.write_scalars(step, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # A write cut short by a crash.
    # Resume from a checkpoint at step 3: steps 3, 4, 5 and the torn line go.
    with metrics.MetricsLogger(str(tmp_path)) as logger:
        assert logger.truncate_after(3) == 3
        logger.write_scalars(3, {"loss": 30.0})
    assert [(x["step"], x["loss"]) for x in _read_jsonl(tmp_path)] == [
        (1, 1.0),
        (2, 2.0),
        (3, 30.0),
    ]
    # Nothing stale: the file is left as it is.
    with metrics.MetricsLogger(str(tmp_path)) as logger:
        assert logger.truncate_after(10) == 0
    assert len(_read_jsonl(tmp_path)) == 3


def test_non_main_logger_writes_nothing_to_disk(tmp_path):
    workdir = tmp_path / "run"
    with metrics.MetricsLogger(str(workdir), is_main=False) as logger:
        logger.write_scalars(1, {"loss": jnp.asarray(1.0)})
        logger.write_images(1, {"pic": np.zeros((4, 4, 3), np.uint8)})
        assert logger.truncate_after(0) == 0
        assert logger.hooks() == []
    assert not workdir.exists()
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_holds_scalars_and_images(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    with metrics.MetricsLogger(str(tmp_path)) as logger:
        logger.write_scalars(5, {"train/loss": jnp.asarray(0.75)})
        logger.write_images(5, {"recon": picture, "float": np.full((2, 4, 4, 3), 0.5)})
    values = _read_events(tmp_path)
    scalars = {
        (s, t): float(tf.make_ndarray(v.tensor))
        for s, t, v in values
        if v.metadata.plugin_data.plugin_name == "scalars"
    }
    assert scalars == {(5, "train/loss"): 0.75}
    images = {
        t: v for s, t, v in values if v.metadata.plugin_data.plugin_name == "images"
    }
    assert set(images) == {"recon", "float"}
    width, height, png = images["recon"].tensor.string_val
    assert (int(width), int(height)) == (10, 6)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), picture)
    assert len(images["float"].tensor.string_val) == 2 + 2  # Two pictures.
    first = np.asarray(Image.open(io.BytesIO(images["float"].tensor.string_val[2])))
    np.testing.assert_array_equal(first, np.full((4, 4, 3), 128, np.uint8))


def _frames(rng, b, h, w):
    pixels = rng.integers(0, 256, (b, h, w, 3)).astype(np.float32)
    return ((pixels / 255.0 - MEAN) / STD).astype(np.float32)


def _patches(f, p):
    """[B, H, W, 3] -> [B, N, p*p*3], written out with loops."""
    b, h, w, _ = f.shape
    out = []
    for i in range(h // p):
        for j in range(w // p):
            out.append(f[:, i * p : (i + 1) * p, j * p : (j + 1) * p].reshape(b, -1))
    return np.stack(out, axis=1)


def _to_uint8(x):
    return np.clip(np.round((x * STD + MEAN) * 255), 0, 255).astype(np.uint8)


def _expected_grid(f1, f2, mask, pred, p, norm_pix, rows):
    """An independent reconstruction grid, patch by patch."""
    h, w = f2.shape[1:3]
    picture = np.zeros((rows * h, 4 * w, 3), np.uint8)
    for r in range(rows):
        masked_f2, recon = _to_uint8(f2[r]), f2[r].copy()
        for i in range(h // p):
            for j in range(w // p):
                n, ys, xs = (
                    i * (w // p) + j,
                    slice(i * p, (i + 1) * p),
                    slice(j * p, (j + 1) * p),
                )
                if not mask[r, n]:
                    continue
                block = pred[r, n].reshape(p, p, 3)
                if norm_pix:
                    truth = f2[r, ys, xs]
                    block = block * np.sqrt(truth.var() + 1e-6) + truth.mean()
                recon[ys, xs] = block
                masked_f2[ys, xs] = 128
        row = [_to_uint8(f1[r]), masked_f2, _to_uint8(recon), _to_uint8(f2[r])]
        picture[r * h : (r + 1) * h] = np.concatenate(row, axis=1)
    return picture


@pytest.mark.parametrize("norm_pix", [True, False])
def test_reconstruction_grid_matches_patchwise_computation(norm_pix):
    rng = np.random.default_rng(1)
    b, h, w, p = 5, 16, 24, 8
    n = (h // p) * (w // p)
    f1, f2 = _frames(rng, b, h, w), _frames(rng, b, h, w)
    mask = (rng.random((b, n)) < 0.5).astype(np.float32)
    pred = rng.normal(size=(b, n, p * p * 3)).astype(np.float32)
    grid = pictures.reconstruction_grid(
        f1, jnp.asarray(f2), mask, pred, pred, p, norm_pix, max_pairs=4
    )
    assert grid.shape == (4 * h, 4 * w, 3) and grid.dtype == np.uint8
    expected = _expected_grid(f1, f2, mask, pred, p, norm_pix, rows=4)
    assert np.abs(grid.astype(int) - expected).max() <= 1


def _cell(grid, size, sep, row, col):
    """The cell at (row, col) of a grid of size x size cells with separators."""
    y, x = row * (size + sep), col * (size + sep)
    return grid[y : y + size, x : x + size]


def test_reconstruction_of_true_target_is_f2_and_mask_is_grey():
    rng = np.random.default_rng(2)
    b, s, p = 2, 32, 8
    f2 = _frames(rng, b, s, s)
    truth = _patches(f2, p)
    target = (truth - truth.mean(-1, keepdims=True)) / np.sqrt(
        truth.var(-1, keepdims=True) + 1e-6
    )
    mask = np.zeros((b, 16), np.float32)
    mask[:, ::3] = 1
    grid = pictures.reconstruction_grid(
        _frames(rng, b, s, s), f2, mask, target, target, p, True, separator=2
    )
    assert grid.shape == (2 * s + 2, 4 * s + 3 * 2, 3)
    assert (grid[s : s + 2] == 255).all() and (grid[:, s : s + 2] == 255).all()
    for r in range(b):
        f2_u8 = _cell(grid, s, 2, r, 3).astype(int)
        np.testing.assert_array_equal(f2_u8, _to_uint8(f2[r]))
        assert np.abs(_cell(grid, s, 2, r, 2).astype(int) - f2_u8).max() <= 2
        masked = _patches(_cell(grid, s, 2, r, 1)[None].astype(int), p)[0]
        np.testing.assert_array_equal(masked[mask[r] == 1], 128)
        np.testing.assert_array_equal(
            masked[mask[r] == 0], _patches(f2_u8[None], p)[0][mask[r] == 0]
        )


def test_reconstruction_grid_rejects_bad_shapes():
    f = np.zeros((2, 16, 16, 3), np.float32)
    pred = np.zeros((2, 4, 192), np.float32)
    with pytest.raises(ValueError, match="mask has shape"):
        pictures.reconstruction_grid(f, f, np.zeros((2, 5)), pred, pred, 8, True)
    with pytest.raises(ValueError, match="target has shape"):
        pictures.reconstruction_grid(f, f, np.zeros((2, 4)), pred, pred[:, :3], 8, True)


def test_device_peak_flops():
    assert jax.devices()[0].platform == "cpu"
    assert flops.device_peak_flops() is None
    assert flops.device_peak_flops(override=1e12) == 1e12
    lookup = flops._lookup_peak
    assert lookup("TPU v4") == 275e12
    assert lookup("TPU v4 lite") == 138e12
    assert lookup("TPU v5 lite") == 197e12
    assert lookup("TPU v5") == 459e12
    assert lookup("tpu v6 lite") == 918e12
    assert lookup("NVIDIA H100 80GB HBM3") == 989e12
    assert lookup("NVIDIA H100 PCIe") == 756e12
    assert lookup("NVIDIA H200") == 989e12
    assert lookup("NVIDIA A100-SXM4-80GB") == 312e12
    assert lookup("Quantum Abacus") is None


def test_throughput_scalars():
    out = metrics.throughput_scalars(
        steps=10,
        seconds=4.0,
        pairs_per_step=64,
        flops_per_pair=1e12,
        num_devices=8,
        peak_per_device=100e12,
    )
    assert out == pytest.approx(
        {
            "pairs_per_sec": 160.0,
            "pairs_per_sec_per_device": 20.0,
            "steps_per_sec": 2.5,
            "tflops_per_sec_per_device": 20.0,
            "mfu": 0.2,
        }
    )
    unknown = metrics.throughput_scalars(10, 4.0, 64, 1e12, 8, None)
    assert "mfu" not in unknown and unknown["pairs_per_sec"] == 160.0
    with pytest.raises(ValueError, match="seconds=0"):
        metrics.throughput_scalars(10, 0.0, 64, 1e12, 8, None)


def test_progress_hooks(tmp_path):
    assert metrics.progress_hooks(str(tmp_path), 100, is_main=False) == []
    (report,) = metrics.progress_hooks(str(tmp_path), 100, is_main=True)
    assert isinstance(report, periodic_actions.ReportProgress)
    hooks = metrics.progress_hooks(str(tmp_path), 100, True, profile_steps=3)
    assert [type(h) for h in hooks] == [
        periodic_actions.ReportProgress,
        periodic_actions.Profile,
    ]
    assert hooks[1]._num_profile_steps == 3
    with metrics.MetricsLogger(str(tmp_path), total_steps=100) as logger:
        (report,) = logger.hooks()
        for step in range(1, 4):
            report(step, t=float(step) * 120)  # Fake clock: reports every call.
    steps_per_sec = [v for _, t, v in _read_events(tmp_path) if t == "steps_per_sec"]
    assert len(steps_per_sec) == 2


def test_quiet_console_still_writes_tensorboard_and_jsonl(tmp_path, caplog):
    """``console=False`` (under a progress bar): no scalar lines in the log,
    everything in TensorBoard and metrics.jsonl; no ReportProgress hook."""
    caplog.set_level("INFO")
    with metrics.MetricsLogger(str(tmp_path), console=False) as logger:
        logger.write_scalars(3, {"loss": 0.5, "eval/davis/J&F": 0.25})
        assert logger.hooks() == []
    assert "loss" not in caplog.text
    assert _read_jsonl(tmp_path) == [{"step": 3, "loss": 0.5, "eval/davis/J&F": 0.25}]
    tags = {t for _, t, _ in _read_events(tmp_path)}
    assert "loss" in tags and any(t.startswith("eval/davis/J") for t in tags)
    caplog.clear()
    with metrics.MetricsLogger(str(tmp_path / "loud")) as logger:
        logger.write_scalars(3, {"loss": 0.5})
    assert "loss" in caplog.text  # the default logs them


def test_training_bar_shows_the_latest_values():
    out = io.StringIO()
    bar = metrics.TrainingBar(10, 0, enabled=True, file=out)
    bar.update(0, {"eval/davis/J&F_random_init": 0.25})
    bar.update(5, {"loss": np.float32(1.23456), "pairs_per_sec": 99.6})
    bar.update(7, {})  # no new values: the last ones stay
    bar.update(10, {"eval/davis/J&F": 0.3071, "lr": 1e-3})
    bar.close()
    last = out.getvalue().split("\r")[-1]
    assert "10/10" in last
    for text in ("loss 1.2346", "pairs/s 100", "J&F at init 0.250", "J&F 0.307"):
        assert text in last, (text, last)
    assert "lr" not in last
    silent = io.StringIO()
    off = metrics.TrainingBar(10, 0, enabled=False, file=silent)
    off.update(4, {"loss": 1.0})
    off.close()
    assert silent.getvalue() == ""
