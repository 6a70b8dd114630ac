"""The training entry point in real subprocesses: resume, signals, other meshes.

Each run is a ``python -m siammae_jax.main`` process on 8 fake CPU devices with
a test-size model; the synthetic videos are written once for all of them.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import TFDS_VIDEOS

from siammae_jax.train import checkpoint
from siammae_jax.weights import params as weight_params

STEPS = 16
FLAGS = [
    "--config=configs/siammae.py:tiny",
    "--config.model.encoder=test/8",
    "--config.model.image_size=32",
    "--config.model.decoder_dim=32",
    "--config.model.decoder_depth=2",
    "--config.model.decoder_heads=2",
    "--config.model.mask_ratio=0.75",
    "--config.batch_size=8",
    "--config.data.min_gap=2",
    "--config.data.max_gap=4",
    "--config.data.num_workers=1",
    "--config.train.log_every=1",
    "--config.train.image_every=4",
    "--config.checkpoint.every=4",
    "--config.train.measure_every=8",
    "--config.train.measure_videos=4",
    f"--config.train.steps={STEPS}",
]
ROOT = Path(__file__).resolve().parents[1]
EVAL_EVERY = 4
# Functions only the online evaluation compiles (JAX_LOG_COMPILES names them).
EVAL_COMPILES = ("jit(eval_features)", "jit(random_init_encoder)", "jit(_resize)")
JF = "eval/davis/J&F"


def _eval_flags(data_dir):
    """Online J&F every 4 steps on the training set's 8 DAVIS-layout videos
    (held-out data is not the point here: the mechanics are)."""
    return [
        f"--config.eval.every={EVAL_EVERY}",
        f"--config.eval.data={data_dir / 'DAVIS'}",
        "--config.eval.max_videos=8",
        "--config.eval.davis.short_side=32",
    ]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    from siammae_jax.data import synthetic

    synthetic.write_dataset(out, videos=8, frames=12, size=(32, 32), progress=False)
    return out


def _command(workdir, data_dir, *extra):
    return [
        sys.executable,
        "-m",
        "siammae_jax.main",
        f"--workdir={workdir}",
        *FLAGS,
        f"--config.data.path={data_dir}",
        *extra,
    ]


def _env(devices=8, log_compiles=False, compile_cache=True):
    """The runs share conftest's compilation cache unless ``compile_cache`` is
    False (a cache hit compiles nothing, so XLA would dump nothing)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    if log_compiles:
        env["JAX_LOG_COMPILES"] = "1"
    if not compile_cache:
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    return env


def _run(workdir, data_dir, *extra, devices=8, log_compiles=False, **env):
    proc = subprocess.run(
        _command(workdir, data_dir, *extra),
        cwd=ROOT,
        env=_env(devices, log_compiles, **env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _rows(workdir) -> list[dict]:
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), "duplicate or unordered steps in metrics.jsonl"
    return rows


def _losses(workdir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _rows(workdir) if "loss" in r}


def _online_jf(workdir) -> dict[int, float]:
    """Step -> online J&F (step 0: the random-init twin)."""
    out = {}
    for r in _rows(workdir):
        if JF in r:
            out[r["step"]] = r[JF]
        if JF + "_random_init" in r:
            out[r["step"]] = r[JF + "_random_init"]
    return out


def _params(workdir, step):
    """The parameters of a checkpoint, restored onto this process' first device."""
    import jax

    path = Path(workdir) / "checkpoints" / str(step) / "state"
    checkpointer = ocp.StandardCheckpointer()
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
        checkpointer.metadata(path).item_metadata,
    )
    return checkpointer.restore(path, target)["params"]


def _children(pid: int) -> list[int]:
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if f"PPid:\t{pid}\n" in status.read_text():
                out.append(int(status.parent.name))
        except OSError:
            continue
    return out


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (dead, not yet reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _interrupted(workdir, data_dir, sig, *extra):
    """Starts a run, sends ``sig`` once checkpoint 4 exists; returns the process.

    SIGINT goes to the whole process group, as a terminal's Ctrl-C does.
    """
    proc = subprocess.Popen(
        _command(workdir, data_dir, *extra),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (Path(workdir) / "checkpoints" / "4").exists():
        assert proc.poll() is None, proc.stderr.read()[-4000:]
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    workers = _children(proc.pid)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    proc.stderr_text = proc.communicate(timeout=120)[1]
    return proc, workers


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("straight")
    proc = _run(workdir, data_dir, *_eval_flags(data_dir), log_compiles=True)
    (workdir / "train.stderr").write_text(proc.stderr)
    return workdir


def test_straight_run_logs_and_checkpoints(straight):
    losses = _losses(straight)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(np.isfinite(list(losses.values())))
    row = json.loads((straight / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("step", "loss", "lr", "grad_norm", "pairs_per_sec", "data_skipped"):
        assert key in row
    for key in ("past_frame_loss_true", "past_frame_loss_other", "correspondence"):
        assert key in row  # learning measures on held-out videos
    # Online J&F: the random-init twin at step 0, then every 4 steps.
    jf = _online_jf(straight)
    assert sorted(jf) == [0, 4, 8, 12, 16]
    assert all(0.0 < v < 1.0 for v in jf.values())
    assert row["eval/davis/videos"] == 8 and row["eval/davis/failures"] == 0
    best = max((s for s in jf if s), key=jf.get)
    kept = sorted(int(p.name) for p in (straight / "checkpoints").iterdir())
    assert kept == sorted({best, 8, 12, 16})  # keep=3 latest, plus the best
    assert (
        f"best online davis/J&F {jf[best]:.4f} at step {best}"
        in (straight / "train.stderr").read_text()
    )


@pytest.mark.slow  # one more run (~30 s); `make test-slow`, in CI
def test_online_eval_compiles_only_when_asked(straight, tmp_path, data_dir):
    """The straight run compiles the evaluation's functions; a run with
    eval.every=0 (the default) compiles none of them."""
    log = (straight / "train.stderr").read_text()
    assert all(f"Compiling {name}" in log for name in EVAL_COMPILES)
    dump = tmp_path / "hlo"
    proc = _run(
        tmp_path,
        data_dir,
        "--config.train.steps=1",
        f"--config.xla_flags=--xla_dump_to={dump} --xla_dump_hlo_module_re=jit_step",
        log_compiles=True,
        compile_cache=False,
    )
    assert "Compiling jit(" in proc.stderr  # compiles are logged
    for name in EVAL_COMPILES:
        assert f"Compiling {name}" not in proc.stderr
    # config.xla_flags reached XLA before the backend started: it dumped the step.
    assert any(
        p.name.endswith("jit_step.cpu_after_optimizations.txt") for p in dump.iterdir()
    )


def test_tensorboard_has_scalars_and_an_image(straight):
    import tensorflow as tf

    tags, images = set(), 0
    for path in straight.glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                tags.add(value.tag)
                images += value.tag == "reconstruction"
    assert {"loss", "lr", "grad_norm", "pairs_per_sec", "data_skipped"} <= tags
    assert images >= 1
    # Online J&F under the metrics.jsonl names, and propagation overlays.
    assert {JF, JF + "_random_init", "eval/davis/J", "eval/davis/F"} <= tags
    assert {"eval/davis/synth_0000", "eval/davis/synth_0000_random_init"} <= tags


@pytest.mark.parametrize(
    "sig",
    [
        signal.SIGKILL,  # a crash: the default suite's resume
        # Clean stops (a stop checkpoint, workers reaped) are also checked in
        # process by test_host_runs_ahead; here, in `make test-slow` (in CI).
        pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
        pytest.param(signal.SIGINT, marks=pytest.mark.slow),
    ],
    ids=["kill", "term", "int"],
)
def test_exact_resume_after_signal(tmp_path, data_dir, straight, sig):
    proc, workers = _interrupted(tmp_path, data_dir, sig)
    assert workers, "expected a data-loader worker process"
    deadline = time.time() + 10
    while (alive := [w for w in workers if _running(w)]) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive, f"data-loader workers {alive} outlived the trainer"
    stopped_at = checkpoint.Checkpointer(
        tmp_path / "checkpoints", every=4
    ).latest_step()
    if sig != signal.SIGKILL:  # A clean stop, not a traceback.
        assert proc.returncode == 0, proc.stderr_text[-3000:]
        assert f"stopped by {signal.Signals(sig).name} after step" in proc.stderr_text
        assert "Traceback" not in proc.stderr_text
        # A checkpoint at the step where it stopped (not only at multiples of 4).
        assert stopped_at == max(_losses(tmp_path))
    assert stopped_at < STEPS, "the run finished before the signal: not a resume test"
    _run(tmp_path, data_dir)
    want, got = _losses(straight), _losses(tmp_path)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(stopped_at + 1, STEPS + 1):
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), step
    a, b = _params(straight, STEPS), _params(tmp_path, STEPS)
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # three training processes (~70-90 s): `make test-slow`, in CI
def test_tfds_source_trains_and_resumes_exactly(tmp_path, tfds_videos):
    """data.format=tfds (the video_folder build of conftest): a run killed
    after checkpoint 4 and resumed equals a straight run."""
    tfds_dir, manual = tfds_videos
    flags = [
        "--config.data.format=tfds",
        f"--config.data.tfds_name={TFDS_VIDEOS}",
        f"--config.data.tfds_data_dir={tfds_dir}",
        "--config.train.steps=8",
        "--config.train.measure_every=0",
    ]
    _run(tmp_path / "straight", manual, *flags)
    proc, _ = _interrupted(tmp_path / "killed", manual, signal.SIGKILL, *flags)
    stopped_at = checkpoint.Checkpointer(
        tmp_path / "killed" / "checkpoints", every=4
    ).latest_step()
    assert stopped_at < 8, "the run finished before the signal: not a resume test"
    log = _run(tmp_path / "killed", manual, *flags).stderr
    assert f"videos: 8 examples of tfds:{TFDS_VIDEOS}[train]" in log
    want, got = _losses(tmp_path / "straight"), _losses(tmp_path / "killed")
    assert sorted(got) == sorted(want) == list(range(1, 9))
    for step in range(stopped_at + 1, 9):
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), step
    a, b = _params(tmp_path / "straight", 8), _params(tmp_path / "killed", 8)
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


@pytest.mark.slow  # two more runs (~60 s); `make test-slow`, in CI
def test_restore_on_other_device_counts(tmp_path, data_dir, straight):
    losses = {}
    for devices in (1, 4):
        workdir = tmp_path / f"on{devices}"
        shutil.copytree(straight, workdir)
        _run(workdir, data_dir, f"--config.train.steps={STEPS + 2}", devices=devices)
        losses[devices] = _losses(workdir)
        assert sorted(losses[devices])[-2:] == [STEPS + 1, STEPS + 2]
    for step in (STEPS + 1, STEPS + 2):
        assert losses[1][step] == pytest.approx(losses[4][step], rel=1e-4)


def test_half_written_checkpoint_is_ignored(tmp_path, straight):
    ckpt_dir = tmp_path / "checkpoints"
    shutil.copytree(straight / "checkpoints", ckpt_dir)
    partial = ckpt_dir / f"{STEPS + 4}.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 100)
    assert checkpoint.Checkpointer(ckpt_dir, every=4).latest_step() == STEPS


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes (~60 s); `make test-slow`, in CI
def test_two_processes_agree_with_one(tmp_path, data_dir, straight):
    port = _free_port()
    procs = [
        subprocess.Popen(
            _command(
                tmp_path,
                data_dir,
                *_eval_flags(data_dir),
                f"--coordinator=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            cwd=ROOT,
            env=_env(devices=4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    for p, err in zip(procs, errors, strict=True):
        assert p.returncode == 0, err[-4000:]
    want, got = _losses(straight), _losses(tmp_path)  # process 0 writes the metrics
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-4), step
    a, b = _params(straight, STEPS), _params(tmp_path, STEPS)
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        # Adam turns float noise in near-zero gradients into ~lr-sized steps.
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4)
    # Online J&F at the same steps; the random-init twin exactly, the trained
    # encoders up to what ~1e-4 parameter differences move in the masks.
    want, got = _online_jf(straight), _online_jf(tmp_path)
    assert sorted(got) == sorted(want)
    assert got[0] == pytest.approx(want[0], abs=1e-6)
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=0.01), step


@pytest.mark.slow  # ~30 s; in process: test_host_runs_ahead
def test_divergence_stops_with_the_last_good_checkpoint(tmp_path, data_dir):
    proc = subprocess.run(
        _command(
            tmp_path,
            data_dir,
            "--config.optim.base_lr=1e30",
            "--config.train.max_bad_steps=3",
            "--config.checkpoint.every=2",
        ),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if "training diverged" in x]
    assert lines, proc.stderr[-3000:]
    message = lines[-1]
    assert "training diverged: 3 non-finite" in message
    rows = [
        json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    first_bad = min(r["step"] for r in rows if not r["finite"])
    assert f"at step {first_bad + 2}" in message
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    assert saved and max(saved) < first_bad  # nothing saved once steps went bad
    assert f"last good checkpoint is step {max(saved)}" in message


def test_evaluate_a_training_checkpoint(tmp_path, data_dir, straight):
    """The kept best checkpoint, scored by the evaluation CLI, gets the J&F
    that the online evaluation logged for it."""
    jf = _online_jf(straight)
    best = max((s for s in jf if s), key=jf.get)
    out = tmp_path / "davis"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "siammae_jax.eval",
            "davis",
            f"--checkpoint={straight / 'checkpoints' / str(best)}",
            f"--data={data_dir / 'DAVIS'}",
            f"--out={out}",
            "--config.davis.short_side=32",
        ],
        cwd=ROOT,
        env=_env(devices=1),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["weights"]["kind"], summary["weights"]["variant"]) == (
        "checkpoint",
        "test/8",
    )
    assert summary["scores"]["J&F-Mean"] == pytest.approx(jf[best], abs=1e-6)
    assert "J&F-Mean" in proc.stdout
    header = (out / "global_results-val.csv").read_text().splitlines()[0]
    assert header == "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"


def test_export_a_training_checkpoint_and_load_it_elsewhere(tmp_path, straight):
    out = tmp_path / "encoder"
    export = [sys.executable, "-m", "siammae_jax.export"]
    args = [f"--checkpoint={straight}", f"--out={out}"]
    proc = subprocess.run(
        export + args, cwd=ROOT, env=_env(1), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    script = (
        "import sys, numpy as np, siammae_jax\n"
        "from siammae_jax.eval.encoder import FeatureExtractor\n"
        f"model = siammae_jax.load_encoder({str(out)!r})\n"
        f"frames = np.load({str(tmp_path / 'frames.npy')!r})\n"
        f"np.save({str(tmp_path / 'feats.npy')!r}, FeatureExtractor(model)(frames))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=_env(1), capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    from siammae_jax.eval import encoder

    model = weight_params.encoder_from(
        {"encoder": "test/8", "image_size": 32},
        _params(straight, STEPS)["encoder"],
        "training state",
    )
    want = encoder.FeatureExtractor(model)(frames)
    np.testing.assert_allclose(np.load(tmp_path / "feats.npy"), want, atol=1e-5)


@pytest.mark.slow  # ~40 s; `make test-slow`
def test_a_folder_of_real_containers_trains_two_epochs_without_skips(tmp_path):
    """Issue 15: mp4/avi/mpg/ts/webm/mkv in one folder, every one of them used."""
    import video_kinds

    videos = tmp_path / "videos"
    kinds = video_kinds.write_kinds(videos)
    (videos / "notes.txt").write_text("shot on two cameras\n")
    workdir = tmp_path / "run"
    # 8 videos, 4 per step (batch 8, 2 pairs per video): 4 steps = 2 epochs.
    proc = _run(workdir, videos, "--config.train.steps=4")
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["data_skipped"] == 0
    listing = workdir / "skipped_videos.txt"
    line = f"videos: {len(kinds) + 1} files, {len(kinds)} usable, 1 skipped"
    assert f"{line} (see {listing})" in proc.stderr
    assert listing.read_text().splitlines()[1:] == [
        f"{videos / 'notes.txt'}\tnot a video (.txt file)"
    ]


def test_first_ctrl_c_requests_a_stop_and_a_second_aborts():
    from siammae_jax.train import preemption

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup, say
    flag = preemption.Preemption()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.requested and flag.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt, match="second Ctrl-C"):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGINT) == before


@pytest.mark.slow  # ~35 s; in process: test_weights
def test_pre_training_continues_from_a_whole_model_export(tmp_path, data_dir, straight):
    """Issue 16: export --what model, then --config.init_from on a new workdir."""
    from siammae_jax import export

    shared = tmp_path / "shared"
    export.export_checkpoint(straight, shared, "orbax", what="model", progress=False)
    workdir = tmp_path / "continued"
    missing = tmp_path / "no_such_davis"
    proc = _run(
        workdir,
        data_dir,
        f"--config.init_from={shared}",
        "--config.train.steps=2",
        # Issue 17: an evaluation root that does not exist never stops training.
        "--config.eval.every=1",
        f"--config.eval.data={missing}",
    )
    assert f"warm start from {shared}: the whole model" in proc.stderr
    first = _losses(workdir)[1]
    assert first < _losses(straight)[1] - 1e-3  # starts where the export left off
    assert f"online eval: no davis videos: DAVIS set file {missing}" in (proc.stderr)
    rows = _rows(workdir)
    assert [r["eval/davis/failures"] for r in rows] == [1, 2, 3]  # steps 0, 1, 2
    assert not any(JF in r or JF + "_random_init" in r for r in rows)
