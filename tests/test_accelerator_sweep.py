"""benchmarks/accelerator_step.py --sweep: the profile's top ops and the table,
from hand-made traces and rows (the sweep itself needs a GPU)."""

import gzip
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import accelerator_step  # noqa: E402


def _trace(folder: Path, events: list[dict]) -> Path:
    run = folder / "plugins" / "profile" / "2026_11_30_00_00_00"
    run.mkdir(parents=True)
    with gzip.open(run / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"displayTimeUnit": "ns", "traceEvents": events}, f)
    return folder


def _meta(pid, name, tid=None):
    if tid is None:
        return {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}
    return {
        "ph": "M",
        "name": "thread_name",
        "pid": pid,
        "tid": tid,
        "args": {"name": name},
    }


def _op(pid, tid, name, dur):
    return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": 0, "dur": dur}


def test_top_ops_sum_device_time_per_op_and_ignore_the_host(tmp_path):
    events = [
        _meta(1, "/host:CPU"),
        _meta(2, "/device:GPU:0"),
        _meta(2, "Stream #1", tid=7),
        _op(1, 3, "jit(step) dispatch", 9000.0),  # host: never counted
        _op(2, 7, "fusion.3", 300.0),
        _op(2, 7, "gemm.1", 500.0),
        _op(2, 7, "fusion.3", 300.0),
        _op(2, 7, "cudnn_attention", 100.0),
    ]
    ops = accelerator_step.top_ops(_trace(tmp_path, events), n=2)
    assert [o["op"] for o in ops] == ["fusion.3", "gemm.1"]
    assert ops[0]["ms"] == pytest.approx(0.6) and ops[0]["calls"] == 2
    assert ops[0]["share"] == pytest.approx(600 / 1200)


def test_top_ops_on_a_cpu_read_the_xla_threads(tmp_path):
    events = [
        _meta(1, "/host:CPU"),
        _meta(1, "python", tid=1),
        _meta(1, "tf_XLAEigen/5", tid=2),
        _op(1, 1, "jit(step) dispatch", 9000.0),
        _op(1, 2, "dot_fusion", 40.0),
        _op(1, 2, "ThunkExecutor::Execute (wait for completion)", 400.0),
        _op(1, 2, "end: dot_fusion", 1.0),
    ]
    ops = accelerator_step.top_ops(_trace(tmp_path, events))
    assert [(o["op"], o["share"]) for o in ops] == [("dot_fusion", 1.0)]


def test_no_trace_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="perfetto_trace"):
        accelerator_step.top_ops(tmp_path)


def test_the_table_shows_measured_refused_and_skipped_cases(tmp_path):
    rows = [
        {"case": "vits16 b128 base", "compile_s": 48.9, "step_s": 0.067,
         "pairs_per_s": 1910.0, "tflops": 139.8, "mfu_vs_measured_matmul": 0.174,
         "mfu_vs_datasheet": 0.141, "temp_gib": 21.1, "peak_gib": 30.0},
        {"case": "vits16 b128 cudnn", "error": "RuntimeError: cuDNN is not detected."},
        {"case": "vitb16 b256 all", "skipped": "budget: 20 s left"},
    ]  # fmt: skip
    (tmp_path / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ops = [{"op": "gemm.1", "ms": 12.5, "share": 0.25, "calls": 5}]
    (tmp_path / "profile_top_ops.json").write_text(json.dumps(ops))
    table = accelerator_step.sweep_table(tmp_path, "NVIDIA H200", 540)
    assert "| vits16 b128 base | 48.9 | 67.0 | 1910 | 139.8 | 0.174 | 0.141 |" in table
    assert "| vits16 b128 cudnn |" in table and "cuDNN is not detected" in table
    assert "budget: 20 s left" in table
    assert "| `gemm.1` | 12.50 | 25.0% | 5 |" in table
    assert "989.4 TFLOP/s" in table


def test_every_planned_case_names_known_levers_and_flags():
    for plan in (accelerator_step.PLAN, accelerator_step.SMOKE):
        for flags, variant, batch, levers in plan:
            assert flags in accelerator_step.FLAGS and levers in accelerator_step.LEVERS
            config = accelerator_step.checkout_configs.config_with_overrides(
                ",".join(x for x in (variant, accelerator_step.LEVERS[levers]) if x)
            )
            assert batch > 0 and config.model.encoder
    assert accelerator_step.PROFILED in accelerator_step.PLAN
    assert accelerator_step.SMOKE_PROFILED in accelerator_step.SMOKE
