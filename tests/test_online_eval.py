"""Online J&F (issue 17): the training process's evaluator on 8 fake devices
against the evaluation CLI's own extractor and runner."""

import shutil

import jax
import numpy as np
import pytest
from conftest import TEST_MODEL

from siammae_jax.configs import siammae as siammae_config
from siammae_jax.data import synthetic
from siammae_jax.datasets import davis
from siammae_jax.eval import encoder, tasks
from siammae_jax.models.definition import ModelDef
from siammae_jax.train import evaluation
from siammae_jax.train import mesh as mesh_lib
from siammae_jax.weights import params as weight_params

VIDEOS = 4


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    synthetic.write_dataset(
        root, videos=VIDEOS, frames=8, size=(32, 32), seed=1, progress=False
    )
    return root / "DAVIS"


def _config(root, **eval_fields):
    c = siammae_config.get_config("tiny")
    c.model.update(TEST_MODEL)
    c.eval.update(every=1, data=str(root), max_videos=VIDEOS, batch_size=3)
    c.eval.update(eval_fields)
    c.eval.davis.short_side = 32
    return c


def _online(config, workdir):
    model_def = ModelDef.from_config(config.model, config.sharding_rules)
    mesh = mesh_lib.make_mesh(config.mesh.to_dict())
    return evaluation.Online(config, model_def, mesh, workdir)


@pytest.fixture(scope="module")
def online(heldout, tmp_path_factory):
    """(evaluator on an 8-device mesh, its random-init encoder params, config)."""
    assert jax.device_count() == 8
    config = _config(heldout)
    ev = _online(config, tmp_path_factory.mktemp("run"))
    return ev, ev.random_init_params(), config


def _cli_extractor(config, params):
    """What ``python -m siammae_jax.eval davis --checkpoint`` builds: the
    encoder on the host, one device, float32."""
    model = weight_params.encoder_from(config.model, jax.device_get(params), "test")
    return encoder.FeatureExtractor(model), model.patch


def test_batches_are_split_over_the_devices_and_match_the_cli(online, heldout):
    ev, params, config = online
    # eval.batch_size=3 rounded up to the 8 devices
    assert ev.tasks[0].encode.batch == 8
    frames = davis.load_sequence(heldout, "synth_0000").frames  # 8 frames, 1 batch
    frames = np.concatenate([frames, frames[:3]])  # 11: a padded second batch
    extract, _ = _cli_extractor(config, params)
    got = ev.tasks[0].encode(params)(frames)
    assert got.shape == (11, 4, 4, 32)
    np.testing.assert_allclose(got, extract(frames), atol=1e-5)


def test_scores_equal_the_cli_runner(online, heldout, tmp_path):
    ev, params, config = online
    result = ev(params, 0, random_init=True)
    extract, patch = _cli_extractor(config, params)
    want = tasks.run_davis(
        extract, patch, heldout, tmp_path, config.eval.davis, 0, progress=False
    )
    s = result.scalars
    assert s["eval/davis/J&F_random_init"] == pytest.approx(want["J&F-Mean"], abs=1e-6)
    assert s["eval/davis/J_random_init"] == pytest.approx(want["J-Mean"], abs=1e-6)
    assert s["eval/davis/F_random_init"] == pytest.approx(want["F-Mean"], abs=1e-6)
    assert s["eval/davis/videos_random_init"] == VIDEOS
    assert s["eval/davis/failures"] == 0
    assert result.best == s["eval/davis/J&F_random_init"]
    assert sorted(result.images) == [
        "eval/davis/synth_0000_random_init",
        "eval/davis/synth_0001_random_init",
    ]  # eval.overlays=2
    strip = result.images["eval/davis/synth_0000_random_init"]
    assert strip.dtype == np.uint8 and strip.shape[0] == 32
    # Predictions in the official layout, where the CLI would write them.
    assert (ev.tasks[0].out / "random_init" / "synth_0003" / "00007.png").is_file()
    assert (ev.tasks[0].out / "random_init" / "overlays" / "synth_0001.png").is_file()


def test_a_broken_sequence_is_counted_and_the_rest_scored(online, heldout, tmp_path):
    ev, params, config = online
    broken = tmp_path / "broken"
    shutil.copytree(heldout, broken)
    (broken / "JPEGImages" / "480p" / "synth_0001" / "00003.jpg").write_bytes(b"x")
    result = _online(_config(broken), tmp_path / "run")(params, 5)
    assert result.scalars["eval/davis/failures"] == 1
    assert result.scalars["eval/davis/videos"] == VIDEOS - 1
    # The same score as the CLI on a split without that sequence.
    kept = [n for n in davis.read_set(heldout) if n != "synth_0001"]
    (broken / "ImageSets" / "2017" / "val.txt").write_text("\n".join(kept) + "\n")
    extract, patch = _cli_extractor(config, params)
    want = tasks.run_davis(
        extract, patch, broken, tmp_path / "cli", config.eval.davis, 0, False
    )
    assert result.best == pytest.approx(want["J&F-Mean"], abs=1e-6)


def test_the_first_evaluation_fixes_the_sequences_within_the_time_bound(
    online, heldout, tmp_path
):
    ev, params, _ = online
    bounded = _online(_config(heldout, max_seconds=1e-9), tmp_path)
    first = bounded(params, 0, random_init=True)
    assert first.scalars["eval/davis/videos_random_init"] == 1  # at least one
    assert bounded.tasks[0].names == ["synth_0000"]
    later = bounded(params, 10)
    assert later.scalars["eval/davis/videos"] == 1  # the same one, not a new cut
    assert later.best is not None


def test_a_missing_root_is_reported_not_raised(online, tmp_path):
    ev, params, _ = online
    result = _online(_config(tmp_path / "nothing"), tmp_path / "run")(params, 3)
    assert result.best is None and result.images == {}
    assert result.scalars["eval/davis/failures"] == 1
    assert "eval/davis/J&F" not in result.scalars


def test_synthetic_writes_the_held_out_set_once_into_the_workdir(online, tmp_path):
    """eval.data=synthetic: the frozen held-out set (seed 1) in the workdir,
    written once and reused by a resumed run."""
    import json

    _, params, _ = online
    config = _config("synthetic", max_videos=2, synthetic_frames=4)
    ev = _online(config, tmp_path)
    marker = tmp_path / "eval_synthetic" / synthetic.MARKER
    written = json.loads(marker.read_text())
    assert (written["seed"], written["style"], written["frames"]) == (1, "default", 4)
    assert written["names"] == ["synth_0000", "synth_0001"]
    assert ev(params, 1).scalars["eval/davis/videos"] == 2
    before = marker.stat().st_mtime_ns
    _online(config, tmp_path)  # a resumed run finds it
    assert marker.stat().st_mtime_ns == before


def test_a_changed_held_out_setting_writes_the_synthetic_set_again(online, tmp_path):
    import json

    marker = tmp_path / "eval_synthetic" / synthetic.MARKER
    _online(_config("synthetic", max_videos=2, synthetic_frames=4), tmp_path)
    _online(_config("synthetic", max_videos=3, synthetic_frames=4), tmp_path)
    assert json.loads(marker.read_text())["names"] == [
        f"synth_000{i}" for i in range(3)
    ]
    _online(_config("synthetic", max_videos=3, synthetic_frames=5), tmp_path)
    assert json.loads(marker.read_text())["frames"] == 5
    _online(_config("synthetic", max_videos=3, synthetic_style="unseen"), tmp_path)
    assert json.loads(marker.read_text())["style"] == "unseen"


def test_a_resumed_run_scores_the_sequences_its_first_evaluation_fixed(
    online, heldout, tmp_path
):
    _, params, _ = online
    first = _online(_config(heldout, max_seconds=1e-9), tmp_path)
    first(params, 0, random_init=True)
    assert first.tasks[0].names == ["synth_0000"]
    resumed = _online(_config(heldout, max_seconds=1e-9), tmp_path)
    assert resumed.tasks[0].names == ["synth_0000"]  # before any evaluation of its own
    assert resumed(params, 10).scalars["eval/davis/videos"] == 1
    # Other held-out settings: the saved list no longer applies.
    assert _online(_config(heldout, max_videos=2), tmp_path).tasks[0].names is None


def test_a_named_protocol_online_equals_the_cli_and_is_recorded(
    online, heldout, tmp_path
):
    """eval.protocol=crw: the online J&F is the CLI's under the same protocol
    (and the same departure, short_side), and its summary.json says so."""
    import json

    from siammae_jax.eval import run

    _, params, _ = online
    config = _config(heldout, protocol="crw")
    ev = _online(config, tmp_path / "run")
    result = ev(params, 7)
    model = weight_params.encoder_from(config.model, jax.device_get(params), "test")
    want = run.evaluate(
        "davis", model, heldout, "crw", tmp_path / "cli",
        overrides={"short_side": 32}, overlays=0, progress=False,
    )  # fmt: skip
    assert result.best == pytest.approx(want["scores"]["J&F-Mean"], abs=1e-6)
    written = json.loads((ev.tasks[0].out / "summary.json").read_text())
    assert written["protocol"] == want["protocol"]
    assert written["protocol"]["settings"]["temperature"] == 0.05
    assert written["inputs"] == want["inputs"]
    assert written["weights"]["step"] == 7


def test_every_benchmark_online_equals_the_cli(online, heldout, tmp_path):
    """eval.tasks=davis,jhmdb,vip: one evaluator shape; each benchmark's online
    scores are the CLI's, and eval.best_metric picks what ranks checkpoints."""
    from siammae_jax.eval import config as eval_config
    from siammae_jax.eval import run

    _, params, _ = online
    base = heldout.parent  # DAVIS/, JHMDB/ and VIP/ of the synthetic set
    config = _config(base, tasks="davis,jhmdb,vip", best_metric="vip/mIoU")
    sizes = {"jhmdb": {"size": 32}, "vip": {"long_side": 32}}
    for task, fields in sizes.items():
        config.eval[task] = eval_config.task_section(task)
        config.eval[task].update(fields)
    result = _online(config, tmp_path / "run")(params, 4)
    model = weight_params.encoder_from(config.model, jax.device_get(params), "test")
    want = {"davis": {"short_side": 32}, **sizes}
    logged = {"davis": ("J&F", "J&F-Mean"), "jhmdb": ("PCK@0.2", "PCK@0.2"),
              "vip": ("mIoU", "mIoU")}  # fmt: skip
    for task, overrides in want.items():
        cli = run.evaluate(
            task, model, base / task.upper(), "siammae", tmp_path / task,
            overrides=overrides, overlays=0, progress=False,
        )  # fmt: skip
        name, key = logged[task]
        got = result.scalars[f"eval/{task}/{name}"]
        assert got == pytest.approx(cli["scores"][key], abs=1e-6), task
        assert result.scalars[f"eval/{task}/failures"] == 0
    assert result.best == result.scalars["eval/vip/mIoU"]
    assert "eval/jhmdb/synth_0000" in result.images


def test_unknown_tasks_are_refused():
    from siammae_jax.train import config as train_config

    c = siammae_config.get_config("tiny")
    c.eval.update(every=5, tasks="davis,jhmdb", best_metric="vip/mIoU")
    with pytest.raises(ValueError, match="eval.best_metric='vip/mIoU' must be one"):
        train_config.validate(c, 1, 1)
    c.eval.tasks = "davis,pose"
    with pytest.raises(ValueError, match="eval.tasks='davis,pose'"):
        train_config.validate(c, 1, 1)
    with pytest.raises(ValueError, match="eval.tasks='davis,pose'"):
        tasks.parse("davis,pose")
    assert tasks.parse(" vip, davis,vip") == ["vip", "davis"]
    assert "jhmdb/PCK@0.1" in tasks.metric_names(["davis", "jhmdb"])
