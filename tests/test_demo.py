"""The demo's closing summary keeps the interface lines; its summary picture;
a stopped demo says where training stopped and stops measuring on a signal.

``siammae_jax.demo`` is imported inside the tests: it pulls in TensorFlow (clu's
writers), and TensorFlow loaded before torch/triton at collection time crashes
the interpreter when the ``torch`` extra is installed (``make test-interop``).
"""

import os
import re
import signal
import time

import numpy as np
import pytest
from etils import epath
from PIL import Image

from siammae_jax.eval import pictures

SCORES = {
    "pre-trained": {"J&F-Mean": 0.4, "J-Mean": 0.45, "F-Mean": 0.35},
    "random-init": {"J&F-Mean": 0.3, "J-Mean": 0.32, "F-Mean": 0.28},
}
MEASURES = {
    "past_frame": {"true": 0.6061, "other": 1.5949, "shuffled": 0.7},
    "motion": {
        "gap": 12,
        "correspondence": 0.327,
        "correspondence_chance": 0.12,
        "correspondence_same_position": 0.341,
    },
    "correspondence": {
        "correspondence": 0.2,
        "correspondence_chance": 0.118,
        "correspondence_same_position": 0.21,
        "correspondence_visible_block0": 0.31,
        "correspondence_visible_block1": 0.2,
        "correspondence_masked_block0": 0.25,
        "correspondence_masked_block1": 0.13,
    },
}


def test_summary_has_the_interface_lines(tmp_path):
    from siammae_jax import demo

    text = demo.summary(epath.Path(tmp_path), MEASURES, SCORES).splitlines()
    assert text[0] == "past-frame use: loss with true f1 0.606 vs other-video f1 1.595"
    assert text[1].startswith(
        "  layout use: loss with true f1's patches shuffled 0.700"
    )
    assert text[2] == (
        "decoder correspondence: 0.200 within 1 patch (chance 0.118); "
        "same-position guess 0.210"
    )
    assert "visible f2 patches 0.310, 0.200; masked 0.250, 0.130" in text[3]
    assert "pre-trained encoder: J&F 0.400 (J 0.450, F 0.350)" in text
    assert "random-init encoder: J&F 0.300 (J 0.320, F 0.280)" in text
    assert "encoder gain: J&F +0.100 over random init" in text
    colour = {**SCORES, "mean colour": {"J&F-Mean": 0.35}}
    lines = demo.summary(epath.Path(tmp_path), MEASURES, colour).splitlines()
    gain = lines.index("encoder gain: J&F +0.100 over random init")
    assert lines[gain + 1].startswith(
        "  no learning: mean-colour patch features J&F 0.350 (+0.050 over random init"
    )
    assert text[4].startswith(
        "motion: correspondence 0.327 at a gap of 12 frames (same-position guess "
        "0.341, chance 0.120"
    )
    assert any(re.match(r"pictures: .*summary\.png", line) for line in text)


def test_summary_picture_stacks_reconstruction_and_overlays(tmp_path):
    from siammae_jax import demo

    root = epath.Path(tmp_path)
    (root / "pictures").mkdir()
    Image.new("RGB", (256, 128), (10, 20, 30)).save(
        root / "pictures/reconstruction.png"
    )
    Image.new("RGB", (512, 128), (0, 90, 0)).save(root / "pictures/correspondence.png")
    for name in SCORES:
        (root / demo.OVERLAYS[name]).mkdir(parents=True)
        Image.new("RGB", (200, 50), (200, 0, 0)).save(
            root / demo.OVERLAYS[name] / "synth_0000.png"
        )
    path = demo.summary_picture(root, SCORES)
    image = np.asarray(Image.open(path))
    # Four panels scaled to 768 px wide (384 + 192 + 192 + 192 high) under 16-px
    # captions: reconstructions, decoder attention, then the two overlays.
    assert image.shape == (4 * 16 + 384 + 3 * 192, 768, 3)
    assert (image[16 + 10, 10] == (10, 20, 30)).all()
    assert (image[16 + 384 + 16 + 10, 10] == (0, 90, 0)).all()
    assert (image[16 + 384 + 16 + 192 + 16 + 10, 10] == (200, 0, 0)).all()


def test_scores_come_from_the_online_evaluation(tmp_path):
    """The J&F lines read the run's metrics.jsonl: the last evaluation and the
    random-init twin's (step 0), each with its step; no evaluation is an error,
    not a made-up score, unless the run stopped before its first one."""
    import json

    from siammae_jax import demo

    rows = [
        {"step": 0, "eval/davis/J&F_random_init": 0.3, "eval/davis/J_random_init": 0.32,
         "eval/davis/F_random_init": 0.28},
        {"step": 5, "loss": 1.0, "eval/davis/J&F": 0.35, "eval/davis/J": 0.4,
         "eval/davis/F": 0.3},
        {"step": 10, "loss": 0.9, "eval/davis/J&F": 0.4, "eval/davis/J": 0.45,
         "eval/davis/F": 0.35},
        {"step": 11, "loss": 0.9},
    ]  # fmt: skip
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert demo.online_scores(epath.Path(tmp_path)) == {
        "pre-trained": {**SCORES["pre-trained"], "step": 10},
        "random-init": {**SCORES["random-init"], "step": 0},
    }
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[-1]) + "\n")
    with pytest.raises(RuntimeError, match="no eval/davis/J&F in"):
        demo.online_scores(epath.Path(tmp_path))
    stopped = demo.online_scores(epath.Path(tmp_path), required=False)
    assert stopped == {"random-init": {**SCORES["random-init"], "step": 0}}


def test_stopped_demo_says_where_training_stopped(tmp_path):
    """Stopped by SIGTERM at step 1556 of 3000, the summary says so (not "3000
    steps"), names that step's checkpoint, gives the measures of that model and
    dates the J&F to the evaluation it comes from; a complete run keeps its title."""
    from siammae_jax import demo

    root = epath.Path(tmp_path)
    (root / "checkpoints" / "1556").mkdir(parents=True)
    scores = {
        "pre-trained": {**SCORES["pre-trained"], "step": 1500},
        "random-init": {**SCORES["random-init"], "step": 0},
    }
    found = demo.Findings(measures=MEASURES, scores=scores)
    found.skipped["mean-colour baseline"] = "not of the model; skipped on a stop"
    stop = demo.Stop(at=1556, of=3000, signals=("SIGTERM",))
    lines = demo.report(root, stop, found, 812.4).splitlines()
    assert (
        lines[0] == "=== SiamMAE demo stopped at step 1556 of 3000 (SIGTERM), 812 s ==="
    )
    assert lines[1] == (
        f"measured: the model at step 1556 (its checkpoint: {root}/checkpoints/1556)"
    )
    assert lines[2].startswith("past-frame use: loss with true f1 0.606")
    assert "pre-trained encoder: J&F 0.400 (J 0.450, F 0.350) at step 1500 (the " \
        "run's last online evaluation)" in lines  # fmt: skip
    assert lines[-1] == (
        "not measured: mean-colour baseline (not of the model; skipped on a stop)"
    )
    assert not any("3000 steps" in line for line in lines)

    (root / "checkpoints" / "1556").rmdir()
    (root / "checkpoints" / "1550").mkdir()
    lines = demo.report(root, stop, found, 812).splitlines()
    assert lines[1] == (
        "measured: the model at step 1556 (no checkpoint of that step; the last "
        "is step 1550)"
    )

    done = {
        n: {**s, "step": 3000 if n == "pre-trained" else 0} for n, s in SCORES.items()
    }
    full = demo.report(root, demo.Stop(3000, 3000), demo.Findings(MEASURES, done), 9)
    assert full.splitlines()[0] == "=== SiamMAE demo summary (3000 steps, 9 s) ==="
    assert "pre-trained encoder: J&F 0.400 (J 0.450, F 0.350)" in full.splitlines()
    assert "not measured" not in full


def test_a_stop_skips_the_colour_baseline_and_a_missing_evaluation(tmp_path):
    """After a stop the demo measures the model, not the mean-colour baseline;
    a stop before the first online evaluation is said, not an error."""
    import json

    from siammae_jax import demo

    row = {"step": 0, "eval/davis/J&F_random_init": 0.3,
           "eval/davis/J_random_init": 0.32, "eval/davis/F_random_init": 0.28}  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    root, found = epath.Path(tmp_path), demo.Findings()
    stop = demo.Stop(at=20, of=3000, signals=("SIGINT",))
    todo = dict(demo.stages(None, None, root, root, 16, stop, found))
    assert "mean-colour baseline" not in todo
    assert "past-frame use and decoder correspondence" in todo
    todo["online J&F (from metrics.jsonl)"]()
    assert list(found.scores) == ["random-init"]
    assert found.skipped == {
        "mean-colour baseline": "not of the model; skipped on a stop",
        "pre-trained J&F": "no online evaluation before the stop",
    }
    complete = dict(
        demo.stages(None, None, root, root, 16, demo.Stop(9, 9), demo.Findings())
    )
    assert "mean-colour baseline" in complete


def _main_thread_only():
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers live in the main thread")


def test_signal_log_sees_what_stopped_training():
    """The loop's own handler (train.preemption) only sets its flag; the demo
    still learns which signals arrived, in order."""
    from siammae_jax import demo
    from siammae_jax.train import preemption

    _main_thread_only()
    with demo.SignalLog() as log:
        with preemption.Preemption() as flag:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the Python handler runs at the next instruction
    assert flag.requested
    assert log.signals == ("SIGTERM", "SIGTERM")


def test_a_second_signal_ends_the_measuring_promptly():
    """After a SIGTERM stopped training, another ends the stage that is running
    within a second (not after its 30 s) and skips the rest; the handlers go
    back to the defaults at once (a third signal would end the process) and to
    the previous ones after."""
    from siammae_jax import demo

    _main_thread_only()
    calls = []

    def slow():
        calls.append("slow")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

    stages = [("slow", slow), ("next", lambda: calls.append("next"))]
    stop = demo.Stop(at=1556, of=3000, signals=("SIGTERM",))

    def fallback(*args):  # what was there before; never called
        calls.append("fallback")

    previous = signal.signal(signal.SIGTERM, fallback)
    try:
        start = time.perf_counter()
        found = demo.run_stages(stages, stop, demo.Findings())
        assert time.perf_counter() - start < 5
        assert calls == ["slow"]
        assert found.interrupted == "SIGTERM"
        assert found.skipped == {
            "slow": "stopped by a second SIGTERM",
            "next": "stopped by a second SIGTERM",
        }
        with demo.interruptible():
            with pytest.raises(demo.Interrupted):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
            assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is fallback
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_second_signal_during_training_skips_the_measuring():
    from siammae_jax import demo

    def never():
        raise AssertionError("measured after a second signal")

    stop = demo.Stop(at=1560, of=3000, signals=("SIGTERM", "SIGINT"))
    found = demo.run_stages([("a", never), ("b", never)], stop, demo.Findings())
    assert found.interrupted == "SIGINT"
    assert found.skipped == {
        "a": "stopped by a second SIGINT",
        "b": "stopped by a second SIGINT",
    }
    text = demo.report(epath.Path("/nowhere"), stop, found, 3)
    assert text.startswith("=== SiamMAE demo stopped at step 1560 of 3000 (SIGTERM)")
    assert "the model at the stop: step 1560 (no checkpoint of that step; none " \
        "saved)" in text  # fmt: skip
    assert "not measured: a (stopped by a second SIGINT); b (" in text


def test_captioned_column_keeps_aspect():
    out = pictures.captioned_column([("a", np.zeros((10, 20, 3), np.uint8))], 40, 8)
    assert out.shape == (8 + 20, 40, 3)
    assert (out[:8] == 255).mean() > 0.9  # a white caption bar with some text
