"""Coverage reports: an annotation list against a folder of videos (issue 28).

One folder holds, for a hand-written Kinetics-style list of 7 clips, a
present video (plus a damaged copy under another suffix), a missing one, an
empty file, a garbage file, a truncated file, a 1-frame video and a present
one in a subfolder under another suffix; a video and a text file no row
names. Every count and list of ``coverage.json`` is checked against that
truth, as ``prepare`` writes it (function and command line), as the
``video_folder`` TFDS builder writes it, and as the model card carries it.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import video_kinds

from siammae_jax.data import coverage, prepare, spec
from siammae_jax.data.video import write_mp4
from siammae_jax.data.video_file import VideoFile

ROOT = Path(__file__).resolve().parents[1]
LIST = """\
label,youtube_id,time_start,time_end,split
abseiling,aaa,0,10,train
abseiling,bbb,5,15,train
bowling,ccc,14,24,train
bowling,ddd,3,13,validation
abseiling,eee,20,30,validation
bowling,fff,0,10,validation
bowling,ggg,1,11,train
"""
# Row -> (status, the file it takes or the name it wants, CSV line).
ROWS = {
    "aaa": ("present", "aaa_000000_000010.mp4", 2, "abseiling", "train"),
    "bbb": ("missing", "bbb_000005_000015", 3, "abseiling", "train"),
    "ccc": ("unreadable", "ccc_000014_000024.mp4", 4, "bowling", "train"),
    "ddd": ("unreadable", "ddd_000003_000013.avi", 5, "bowling", "validation"),
    "eee": ("too_short", "eee_000020_000030.mp4", 6, "abseiling", "validation"),
    "fff": ("present", "sub/fff_000000_000010.avi", 7, "bowling", "validation"),
    "ggg": ("unreadable", "ggg_000001_000011.mp4", 8, "bowling", "train"),
}
FRAMES = {"aaa_000000_000010.mp4": 6, "sub/fff_000000_000010.avi": 5}
UNLISTED = {"notes.txt": "unreadable", "zzz_000000_000010.mp4": "present"}


def _write_avi(path, frames):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.height, stream.width, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """(videos folder, annotation list) of the module docstring."""
    root = tmp_path_factory.mktemp("cov")
    videos = root / "videos"
    (videos / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_mp4(videos / "aaa_000000_000010.mp4", video_kinds.frames(6, (32, 32)))
    (videos / "aaa_000000_000010.webm").write_bytes(rng.bytes(3000))  # duplicate
    (videos / "ccc_000014_000024.mp4").write_bytes(b"")
    (videos / "ddd_000003_000013.avi").write_bytes(rng.bytes(4000))
    write_mp4(videos / "eee_000020_000030.mp4", video_kinds.frames(1, (32, 32)))
    _write_avi(videos / "sub/fff_000000_000010.avi", video_kinds.frames(5, (32, 32)))
    write_mp4(root / "whole.mp4", video_kinds.frames(8, (32, 32)))
    data = (root / "whole.mp4").read_bytes()
    (videos / "ggg_000001_000011.mp4").write_bytes(data[: len(data) // 2])
    write_mp4(videos / "zzz_000000_000010.mp4", video_kinds.frames(3, (32, 32)))
    (videos / "notes.txt").write_text("not a video\n")
    (root / "list.csv").write_text(LIST)
    return videos, root / "list.csv"


@pytest.fixture(scope="module")
def prepared(folder, tmp_path_factory):
    """(out folder, summary) of ``prepare`` with the list (2 shards)."""
    videos, annotations = folder
    out = tmp_path_factory.mktemp("packed")
    summary = prepare.prepare(
        videos, out, short_side=0, shard_size=4, progress=False,
        annotations=annotations,
    )  # fmt: skip
    return out, summary


def _truth(keep=lambda row: True) -> dict:
    """The group of the rows ``keep`` selects, from ``ROWS``."""
    group = {"expected": 0, **dict.fromkeys(coverage.STATUSES, 0)}
    lists = {s: set() for s in coverage.STATUSES[1:]}
    for status, file, line, label, split in ROWS.values():
        if keep((label, split)):
            group["expected"] += 1
            group[status] += 1
            if status != "present":
                lists[status].add((file, line))
    return group | {"files": lists}


def _got(group: dict) -> dict:
    """A report group with its lists as sets of (file or name, line)."""
    lists = {
        status: {(e.get("file", e.get("name")), e["line"]) for e in entries}
        for status, entries in group["files"].items()
    }
    return {k: v for k, v in group.items() if k != "files"} | {"files": lists}


def test_counts_and_lists_per_split_and_class(prepared):
    out, summary = prepared
    report = json.loads((out / coverage.COVERAGE).read_text())
    assert report == summary["coverage"]
    assert _got(report["total"]) == _truth()
    assert set(report["splits"]) == {"train", "validation"}
    for split, group in report["splits"].items():
        assert _got(group) == _truth(lambda row, s=split: row[1] == s), split
    assert set(report["classes"]) == {"abseiling", "bowling"}
    for label, group in report["classes"].items():
        assert _got(group) == _truth(lambda row, c=label: row[0] == c), label
    t = report["total"]
    assert t["expected"] == sum(t[s] for s in coverage.STATUSES) == 7


def test_reasons_are_the_packing_reasons_and_frames_the_decoded_count(prepared, folder):
    out, summary = prepared
    report = json.loads((out / coverage.COVERAGE).read_text())
    skipped = {s["path"]: s["reason"] for s in summary["skipped"]}
    unreadable = report["total"]["files"]["unreadable"]
    assert len(unreadable) == 3
    for entry in unreadable:
        assert entry["reason"] == skipped[entry["file"]] and entry["reason"]
    (short,) = report["total"]["files"]["too_short"]
    assert short["frames"] == VideoFile(folder[0] / short["file"]).num_frames == 1
    outcomes = coverage.prepared_outcomes(
        json.loads((out / "manifest.json").read_text()), out
    )
    for name, count in {**FRAMES, "zzz_000000_000010.mp4": 3}.items():
        assert outcomes[name] == VideoFile(folder[0] / name).num_frames == count


def test_unlisted_files_and_duplicate_matches(prepared):
    out, _ = prepared
    report = json.loads((out / coverage.COVERAGE).read_text())
    assert {u["file"]: u["status"] for u in report["unlisted"]} == UNLISTED
    notes = next(u for u in report["unlisted"] if u["file"] == "notes.txt")
    assert notes["reason"] == "not a video (.txt file)"
    assert report["duplicates"] == [
        {"file": "aaa_000000_000010.webm", "line": 2, "used": "aaa_000000_000010.mp4"}
    ]


def test_min_frames_decides_too_short(prepared):
    out, summary = prepared
    outcomes = coverage.prepared_outcomes(
        json.loads((out / "manifest.json").read_text()), out
    )
    rows = coverage.read_annotations(summary["coverage"]["annotations"])
    total = coverage.tally(rows, outcomes, min_frames=6)["total"]
    # fff has 5 frames: now too short; aaa (6) stays present.
    assert (total["present"], total["too_short"]) == (1, 2)
    assert {e["file"] for e in total["files"]["too_short"]} == {
        "eee_000020_000030.mp4",
        "sub/fff_000000_000010.avi",
    }
    with pytest.raises(ValueError, match="min_frames=0"):
        coverage.tally(rows, outcomes, min_frames=0)


def test_manifest_without_frame_counts_reads_the_shards(prepared):
    out, _ = prepared
    manifest = json.loads((out / "manifest.json").read_text())
    want = coverage.prepared_outcomes(manifest, out)
    for shard in manifest["shards"].values():
        del shard["num_frames"]  # as written before the counts were recorded
    assert coverage.prepared_outcomes(manifest, out) == want
    assert sorted(v for v in want.values() if isinstance(v, int)) == [1, 3, 5, 6]


def test_the_command_line_writes_coverage_and_prints_one_line(
    folder, prepared, tmp_path
):
    videos, annotations = folder
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "siammae_jax.data.prepare", "--videos", str(videos),
         "--out", str(out), "--annotations", str(annotations), "--workers", "1",
         "--short_side", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("coverage:")]
    assert lines == [
        "coverage: 7 expected, 2 present, 3 unreadable, 1 too short, 1 missing "
        f"(28.6%); 2 unlisted -> {out / 'coverage.json'}"
    ]
    got = json.loads((out / coverage.COVERAGE).read_text())
    assert got == json.loads((prepared[0] / coverage.COVERAGE).read_text())


def test_nested_pattern_matches_paths():
    rows = [
        coverage.Row(2, "abseiling", "aaa", 0, 10, "train", "train/abseiling/aaa"),
        coverage.Row(3, "bowling", "bbb", 0, 10, "val", "val/bowling/bbb"),
    ]
    outcomes = {
        "train/abseiling/aaa.mp4": 12,
        "val/abseiling/bbb.mp4": 12,  # in the wrong class folder
        "val/bowling/bbb.mkv": "cannot open: damaged",
    }
    report = coverage.tally(rows, outcomes, match="{split}/{label}/{youtube_id}")
    assert report["splits"]["train"]["present"] == 1
    val = report["splits"]["val"]
    assert (val["unreadable"], val["files"]["unreadable"]) == (
        1,
        [{"file": "val/bowling/bbb.mkv", "reason": "cannot open: damaged", "line": 3}],
    )
    assert [u["file"] for u in report["unlisted"]] == ["val/abseiling/bbb.mp4"]
    # The same files, matched by name only: both bbb files name row 3.
    flat = [coverage.Row(3, "bowling", "bbb", 0, 10, "val", "bbb")]
    report = coverage.tally(flat, outcomes, match="{youtube_id}")
    assert report["total"]["present"] == 1
    assert report["duplicates"] == [
        {"file": "val/bowling/bbb.mkv", "line": 3, "used": "val/abseiling/bbb.mp4"}
    ]


def test_read_annotations_with_a_pattern(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text(
        "\ufeffyoutube_id,label,time_start,time_end,split,is_cc\n"
        '---QUuC4vJs,"testifying, in court",84.0,94,test,0\n\n'
    )
    (row,) = coverage.read_annotations(path, "{label}/{youtube_id}_{time_start}")
    assert row == coverage.Row(
        2, "testifying, in court", "---QUuC4vJs", 84, 94, "test",
        "testifying, in court/---QUuC4vJs_84",
    )  # fmt: skip


HEADER = "label,youtube_id,time_start,time_end,split\n"
GOOD = "a,x,0,10,train\n"
BAD_LISTS = {
    "missing column": ("label,youtube_id,time_start,split\n" + "a,x,0,train\n", 1, "lacks the column(s) time_end"),
    "not a number": (HEADER + GOOD + "a,y,1x,10,train\n", 3, "time_start '1x' is not a whole number"),
    "fraction": (HEADER + "a,y,0,10.5,train\n", 2, "time_end '10.5' is not a whole number"),
    "negative": (HEADER + "a,y,-4,10,train\n", 2, "time_start '-4'"),
    "end before start": (HEADER + "a,y,10,10,train\n", 2, "time_end 10 is not after time_start 10"),
    "duplicate": (HEADER + GOOD + "b,z,0,10,val\n" + GOOD, 4, "names the same file as line 2"),
    "field count": (HEADER + "a,y,0,10\n", 2, "4 fields, the header has 5"),
    "empty field": (HEADER + ",y,0,10,train\n", 2, "empty label"),
    "no rows": (HEADER, None, "no rows"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_LISTS))
def test_bad_lists_name_the_line(case, tmp_path):
    text, line, phrase = BAD_LISTS[case]
    path = tmp_path / "list.csv"
    path.write_text(text)
    where = f"{path}:{line}: " if line else f"{path}: "
    with pytest.raises(coverage.AnnotationError) as error:
        coverage.read_annotations(path)
    assert str(error.value).startswith(where) and phrase in str(error.value)


def test_bad_patterns(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text(HEADER + GOOD)
    with pytest.raises(coverage.AnnotationError, match="unknown field 'id'"):
        coverage.read_annotations(path, "{id}_{time_start}")
    with pytest.raises(coverage.AnnotationError, match="names no column"):
        coverage.read_annotations(path, "clip")
    with pytest.raises(coverage.AnnotationError, match=f"{path}:2: the match pattern"):
        coverage.read_annotations(path, "{label:06d}")


def test_a_bad_list_stops_prepare_before_packing(folder, tmp_path, capsys):
    videos, _ = folder
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + GOOD + GOOD)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as error:
        prepare.main(["--videos", str(videos), "--out", str(out),
                      "--annotations", str(bad), "--workers", "1"])  # fmt: skip
    assert str(error.value) == (
        f"prepare: {bad}:3: names the same file as line 2 ('x_000000_000010' "
        "with the pattern '{youtube_id}_{time_start:06d}_{time_end:06d}')"
    )
    assert not (out / "manifest.json").exists()


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
    """(data_dir, builder) of ``video_folder`` built in-process (DirectRunner)
    from the folder, the list given through the builder config."""
    import apache_beam as beam
    import tensorflow_datasets as tfds

    from siammae_jax.data.tfds import video_folder

    videos, annotations = folder
    data_dir = tmp_path_factory.mktemp("tfds")
    config = {"name": "cov", "short_side": 0, "annotations": str(annotations)}
    config = video_folder.VideoFolder.builder_config_cls(**config)  # as `tfds build`
    builder = video_folder.VideoFolder(config=config, data_dir=str(data_dir))
    options = beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"])
    download = tfds.download.DownloadConfig(
        manual_dir=str(videos), beam_options=options
    )
    builder.download_and_prepare(download_config=download)
    return data_dir, builder, download


def test_the_builder_config_gives_the_same_report(built, prepared, capsys):
    data_dir, builder, download = built
    path = builder.data_path / coverage.COVERAGE
    want = json.loads((prepared[0] / coverage.COVERAGE).read_text())
    assert json.loads(path.read_text()) == want
    split = json.loads((builder.data_path / "skipped-train.json").read_text())
    assert {w["path"]: w["frames"] for w in split["written"]} == {
        **FRAMES, "eee_000020_000030.mp4": 1, "zzz_000000_000010.mp4": 3,
    }  # fmt: skip
    path.unlink()  # Reusing the built dataset writes the report again.
    builder.download_and_prepare(download_config=download)
    assert capsys.readouterr().out.splitlines()[-1] == (
        "coverage: 7 expected, 2 present, 3 unreadable, 1 too short, 1 missing "
        f"(28.6%); 2 unlisted -> {path}"
    )
    assert json.loads(path.read_text()) == want


def test_a_bad_list_stops_the_builder(folder, tmp_path):
    import tensorflow_datasets as tfds

    from siammae_jax.data.tfds import video_folder

    bad = tmp_path / "bad.csv"
    bad.write_text("label,youtube_id,time_start,split\na,x,0,train\n")
    config = {"name": "bad", "annotations": str(bad)}
    config = video_folder.VideoFolder.builder_config_cls(**config)
    builder = video_folder.VideoFolder(config=config, data_dir=str(tmp_path / "d"))
    download = tfds.download.DownloadConfig(manual_dir=str(folder[0]))
    with pytest.raises(coverage.AnnotationError, match=f"{bad}:1: .* lacks"):
        builder.download_and_prepare(download_config=download)
    assert not builder.data_path.exists()  # Refused before building.


def _train_checkpoint(workdir, data: dict):
    """A training checkpoint (step 1) of the test model whose config's
    ``data`` section is ``data``."""
    import grain
    import jax
    from conftest import TEST_MODEL

    from siammae_jax.configs import siammae as siammae_config
    from siammae_jax.models.definition import ModelDef
    from siammae_jax.train import checkpoint, optim
    from siammae_jax.train import mesh as mesh_lib
    from siammae_jax.train import state as state_lib

    config = siammae_config.get_config("tiny")
    config.model.update(TEST_MODEL)
    config.data.update(data)
    mesh = mesh_lib.make_mesh(config.mesh.to_dict(), jax.devices()[:1])
    model_def = ModelDef.from_config(config.model)
    state = state_lib.create_state(model_def, optim.make_optimizer(1e-3), mesh, seed=0)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", every=1, async_save=False)
    ckpt.save(
        1, state, iter(grain.MapDataset.range(2).to_iter_dataset()), config, force=True
    )
    ckpt.close()
    return workdir


def test_the_model_card_carries_the_coverage(prepared, built, tmp_path):
    from siammae_jax import export
    from siammae_jax.weights import checkpoints

    out, _ = prepared
    workdir = _train_checkpoint(
        tmp_path / "run", {"path": str(out), "format": "array_record"}
    )
    export.export_checkpoint(workdir, tmp_path / "export", progress=False)
    card = json.loads((tmp_path / "export" / "model_card.json").read_text())
    got = card["training"]["data"]["coverage"]
    report = out / coverage.COVERAGE
    assert got == {
        "path": str(report),
        "sha256": hashlib.sha256(report.read_bytes()).hexdigest(),
        "annotations": str(prepared[1]["coverage"]["annotations"]),
        "annotations_sha256": hashlib.sha256(
            Path(prepared[1]["coverage"]["annotations"]).read_bytes()
        ).hexdigest(),
        "expected": 7, "present": 2, "unreadable": 3, "too_short": 1, "missing": 1,
        "unlisted": 2,
    }  # fmt: skip
    # The TFDS route finds the builder's report through the dataset's name.
    data_dir, builder, _ = built
    step = checkpoints.resolve_step_dir(workdir)
    tfds_data = {
        "format": "tfds",
        "tfds_name": "video_folder/cov",
        "tfds_data_dir": str(data_dir),
    }
    info = checkpoints.describe(step, {"data": tfds_data})
    assert info["data"]["coverage"]["path"] == str(
        builder.data_path / coverage.COVERAGE
    )
    assert info["data"]["coverage"]["present"] == 2
    # Data without a report: no coverage entry.
    info = checkpoints.describe(step, {"data": {"path": str(tmp_path), "format": ""}})
    assert "coverage" not in info["data"]


def test_a_run_keeps_the_coverage_of_its_start(prepared, tmp_path, caplog):
    """Training copies the data's report into its workdir when it starts; the
    model card reads that copy, so preparing the folder again later does not
    change what the weights say they were trained on."""
    from siammae_jax.weights import checkpoints

    out, _ = prepared
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    report = data_dir / coverage.COVERAGE
    report.write_bytes((out / coverage.COVERAGE).read_bytes())
    data = {"path": str(data_dir), "format": "array_record"}
    workdir = _train_checkpoint(tmp_path / "run", data)
    copy = spec.snapshot_coverage(data, workdir)
    assert copy == workdir / coverage.SNAPSHOT
    assert copy.read_bytes() == report.read_bytes()
    first = checkpoints.describe(checkpoints.resolve_step_dir(workdir), {"data": data})
    # The folder is prepared again: one more clip present.
    later = json.loads(report.read_text())
    later["total"]["present"] += 1
    report.write_text(json.dumps(later))
    with caplog.at_level("WARNING"):
        assert (
            spec.snapshot_coverage(data, workdir) == copy
        )  # a resume keeps the start's
    assert "changed since this run began" in caplog.text
    step = checkpoints.resolve_step_dir(workdir)
    card = checkpoints.describe(step, {"data": data})["data"]["coverage"]
    assert card == first["data"]["coverage"] and card["present"] == 2
    assert card["path"] == str(copy)
    # Without the copy (a run from before snapshots): the data's report now.
    copy.unlink()
    card = checkpoints.describe(step, {"data": data})["data"]["coverage"]
    assert card["present"] == 3 and card["path"] == str(report)
    assert spec.snapshot_coverage({"path": str(tmp_path / "run")}, tmp_path) is None


def test_training_setup_takes_the_snapshot(prepared, tmp_path, monkeypatch):
    """``train.setup`` takes the copy before it builds anything."""
    from conftest import TEST_MODEL

    from siammae_jax.configs import siammae as siammae_config
    from siammae_jax.train import setup as setup_lib

    class Built(Exception):
        pass

    def build(*args, **kwargs):
        raise Built

    monkeypatch.setattr(setup_lib.step_lib, "build", build)
    out, _ = prepared
    config = siammae_config.get_config("tiny")
    config.model.update(TEST_MODEL)
    config.batch_size = 8
    config.data.update(path=str(out), format="array_record", min_gap=1, max_gap=1)
    with pytest.raises(Built):
        setup_lib.setup(config, str(tmp_path / "run"))
    copy = tmp_path / "run" / coverage.SNAPSHOT
    assert copy.read_bytes() == (out / coverage.COVERAGE).read_bytes()
