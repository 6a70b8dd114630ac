"""The tpu/ scripts: printed commands (--dry-run), shellcheck, local rehearsal.

Every script runs with ``--dry-run`` for a v4-32 slice; a fake ``gcloud`` that
fails first on PATH makes sure nothing is really run. The slow test runs the
multi-host rehearsal (tpu/rehearse_local.sh): 2 local processes train the
test-size config with jax.distributed, one is killed, all are relaunched and
the run resumes and completes.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "tpu"
SLICE = ["--name", "siammae-v4", "--zone", "us-central2-b", "--accelerator", "v4-32"]
WORKDIR = "gs://bucket/runs/vits16"
CONFIG = "configs/siammae.py:vits16"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """PATH with a gcloud that fails, so a missing --dry-run cannot go out."""
    bin_dir = tmp_path_factory.mktemp("bin")
    fake = bin_dir / "gcloud"
    fake.write_text("#!/bin/sh\necho 'gcloud must not run in tests' >&2\nexit 99\n")
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def dry_run(env, script, *args):
    proc = subprocess.run(
        ["bash", str(TPU / script), "--dry-run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def launch_args(*extra):
    return [*SLICE, "--workdir", WORKDIR, "--config", CONFIG, *extra]


def test_create_and_delete(env):
    out = dry_run(env, "create.sh", *SLICE)
    assert out.startswith("gcloud compute tpus tpu-vm create siammae-v4 ")
    for part in ("--zone=us-central2-b", "--accelerator-type=v4-32",
                 "--version=tpu-ubuntu2204-base"):  # fmt: skip
        assert part in out
    assert "--spot" not in out
    out = dry_run(env, "create.sh", *SLICE, "--spot", "--queued", "--project", "p")
    assert out.startswith("gcloud compute tpus queued-resources create siammae-v4 ")
    for part in ("--node-id=siammae-v4", "--accelerator-type=v4-32", "--spot",
                 "--runtime-version=tpu-ubuntu2204-base", "--project=p"):  # fmt: skip
        assert part in out
    out = dry_run(env, "delete.sh", *SLICE[:4])
    assert out.strip() == (
        "gcloud compute tpus tpu-vm delete siammae-v4 --zone=us-central2-b --quiet"
    )
    out = dry_run(env, "delete.sh", *SLICE[:4], "--queued")
    assert out.startswith("gcloud compute tpus queued-resources delete siammae-v4 ")


def test_setup_installs_the_commit_with_jax_tpu_on_all_workers(env):
    out = dry_run(env, "setup.sh", *SLICE, "--repo", "https://x/siammae_jax",
                  "--commit", "abc123")  # fmt: skip
    assert out.startswith("gcloud compute tpus tpu-vm ssh siammae-v4 ")
    assert "--zone=us-central2-b" in out and "--worker=all" in out
    assert "git clone --quiet https://x/siammae_jax" in out
    assert "git checkout --quiet --detach abc123" in out
    assert "-e . '\\''jax[tpu]'\\''" in out  # pip install -e . 'jax[tpu]'


def test_prepare_data_runs_one_slice_per_worker(env):
    out = dry_run(env, "prepare_data.sh", *SLICE, "--videos", "gs://b/videos",
                  "--out", "gs://b/shards", "--short_side", "256")  # fmt: skip
    lines = out.strip().splitlines()
    assert len(lines) == 4  # v4-32: 4 hosts
    for i, line in enumerate(lines):
        assert f"--worker={i} " in line and "--zone=us-central2-b" in line
        assert (
            f"bash tpu/prepare_worker.sh {i} 4 gs://b/videos gs://b/shards "
            "--short_side=256" in line
        )


def _train_line(out: str) -> str:
    (line,) = [x for x in out.splitlines() if "siammae_jax.main" in x]
    return line


def test_launch_carries_config_workdir_and_slice(env):
    out = dry_run(env, "launch.sh", *launch_args("--", "--config.data.path=gs://b/s"))
    assert out.startswith("gcloud compute tpus tpu-vm ssh siammae-v4 ")
    assert "--worker=all" in out and "--zone=us-central2-b" in out
    line = _train_line(out)
    assert line.startswith("nohup $HOME/venv/bin/python -m siammae_jax.main ")
    args = line.split()
    for want in (f"--config={CONFIG}", f"--workdir={WORKDIR}", "--multihost",
                 "--config.batch_size=2048", "--config.mesh.data=16",
                 "--config.mesh.fsdp=1", "--config.data.path=gs://b/s"):  # fmt: skip
        assert want in args, want
    assert args.index("--config.data.path=gs://b/s") > args.index("--multihost")
    assert ">>$HOME/siammae_logs/train.log 2>&1" in line  # a log per worker
    assert line.rstrip().endswith("&")  # detached


def test_resume_is_the_launch_command(env):
    args = launch_args("--", "--config.data.path=gs://b/s")
    assert dry_run(env, "resume.sh", *args) == dry_run(env, "launch.sh", *args)


def test_single_host_slice_has_no_multihost_flag(env):
    out = dry_run(env, "launch.sh", "--name", "n", "--zone", "z",
                  "--accelerator", "v6e-8", "--workdir", WORKDIR)  # fmt: skip
    args = _train_line(out).split()
    assert "--multihost" not in args
    assert {"--config.batch_size=512", "--config.mesh.data=8"} <= set(args)


def test_stop_logs_and_eval(env):
    out = dry_run(env, "stop.sh", *SLICE[:4])
    assert "--worker=all" in out and "kill -TERM" in out
    out = dry_run(env, "logs.sh", *SLICE[:4], "--follow")
    assert "--worker=all" in out and "tail -n 20 -F $HOME/siammae_logs/train.log" in out
    out = dry_run(env, "eval.sh", *SLICE, "--task", "davis", "--checkpoint",
                  WORKDIR, "--data", "gs://b/DAVIS", "--", "--config.davis.topk=7")  # fmt: skip
    assert "--worker=0" in out and "--zone=us-central2-b" in out
    for part in ("-m siammae_jax.eval davis", f"--checkpoint={WORKDIR}",
                 "--data=gs://b/DAVIS", f"--out={WORKDIR}/eval/davis",
                 "--config.davis.topk=7", "TPU_PROCESS_BOUNDS=1,1,1"):  # fmt: skip
        assert part in out


def test_rehearsal_runs_the_launch_arguments(env):
    extra = ["--", "--config.train.steps=16"]
    out = dry_run(env, "rehearse_local.sh", "--workdir", "/tmp/w", "--port", "1234",
                  "--config", CONFIG, "--kill_at_step", "4", *extra)  # fmt: skip
    lines = [x for x in out.splitlines() if "siammae_jax.main" in x]
    assert len(lines) == 4  # 2 hosts, then 2 again after the kill
    assert lines[:2] == lines[2:]  # relaunch = the same commands
    common = f"-m siammae_jax.main --config={CONFIG} --workdir=/tmp/w --config.train.steps=16"
    for i, line in enumerate(lines[:2]):
        assert common in line
        assert line.endswith(
            f"--coordinator=127.0.0.1:1234 --num_processes=2 --process_id={i} "
            f">>/tmp/w/logs/host-{i}.log 2>&1 &"
        )
    launch = _train_line(dry_run(env, "launch.sh", *launch_args(*extra)))
    assert f"-m siammae_jax.main --config={CONFIG} --workdir={WORKDIR}" in launch


def test_unknown_slice_and_missing_options_fail(env):
    bad = subprocess.run(
        ["bash", str(TPU / "create.sh"), "--name", "n", "--zone", "z",
         "--accelerator", "v9-1", "--dry-run"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "unknown slice" in bad.stderr
    bad = subprocess.run(
        ["bash", str(TPU / "launch.sh"), *SLICE, "--workdir", "/local", "--dry-run"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "gs://" in bad.stderr


def test_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    scripts = sorted(str(p) for p in TPU.glob("*.sh"))
    assert len(scripts) >= 10
    proc = subprocess.run(
        ["shellcheck", *scripts], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_rehearsal_two_hosts_killed_and_resumed(tmp_path):
    from siammae_jax.data import synthetic
    from tests.test_train_e2e import FLAGS, STEPS

    data = tmp_path / "data"
    synthetic.write_dataset(data, videos=8, frames=12, size=(32, 32), progress=False)
    workdir = tmp_path / "run"
    flags = [f for f in FLAGS if not f.startswith("--config=")]
    proc = subprocess.run(
        ["bash", str(TPU / "rehearse_local.sh"), "--workdir", str(workdir),
         "--hosts", "2", "--devices_per_host", "4", "--kill_at_step", "4",
         "--", *flags, f"--config.data.path={data}"],
        cwd=ROOT, env={**os.environ, "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    logs = "".join(p.read_text()[-3000:] for p in (workdir / "logs").glob("*.log"))
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    assert "killed host 1" in proc.stdout and "relaunching all 2 hosts" in proc.stdout
    for i in range(2):  # each host was started twice
        assert (workdir / "logs" / f"host-{i}.log").read_text().count("=== ") == 2
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == list(range(1, STEPS + 1))  # resumed: no step twice, none missing
    kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    assert kept[-1] == STEPS
