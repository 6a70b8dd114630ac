"""Checkpointer: relative paths, save + restore of state, data iterator, config."""

import json
import threading

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from siammae_jax.train import checkpoint
from siammae_jax.train.state import Counters, TrainState


def test_relative_directory_save_and_restore(tmp_path, monkeypatch):
    """An asynchronous save holds the state and the iterator position of the
    moment ``save()`` was called: the caller moving the iterator on and
    replacing the state's entries before the write ends changes nothing."""
    monkeypatch.chdir(tmp_path)  # `make demo` passes a relative workdir
    ckpt = checkpoint.Checkpointer("run/checkpoints", every=1)
    assert str(ckpt.directory) == str(tmp_path / "run" / "checkpoints")
    assert ckpt.directory.is_dir()  # made at once, before any save
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(3)}
    data = iter(grain.MapDataset.range(10).to_iter_dataset())
    next(data), next(data)
    config = ml_collections.ConfigDict({"model": {"encoder": "test/8"}})
    assert ckpt.save(3, state, data, config)
    for _ in range(3):  # training goes on while the save is in flight
        next(data)
    state["w"], state["step"] = state["w"] + 100.0, jnp.int32(6)
    ckpt.wait()
    assert ckpt.latest_step() == 3
    fresh = iter(grain.MapDataset.range(10).to_iter_dataset())
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    restored = ckpt.restore(3, target, fresh)
    np.testing.assert_array_equal(restored["w"], np.arange(6.0).reshape(2, 3))
    assert int(restored["step"]) == 3
    assert next(fresh) == 2
    assert ckpt.saved_config(3)["model"]["encoder"] == "test/8"
    ckpt.close()


def test_counters_are_saved_with_a_step_and_absent_ones_are_zero(tmp_path):
    """A step saved with counters gives them back; a step saved without them
    (a checkpoint from before they existed) gives zeros."""
    ckpt = checkpoint.Checkpointer(tmp_path, every=1, async_save=False)
    state = {"w": jnp.ones(3)}
    config = ml_collections.ConfigDict({"model": {}})

    def data():
        return iter(grain.MapDataset.range(4).to_iter_dataset())

    assert ckpt.save(1, state, data(), config)  # no counters
    assert ckpt.save(2, state, data(), config, counters=Counters(5, 2))
    assert ckpt.saved_counters(1) == Counters()
    assert ckpt.saved_counters(2) == Counters(data_skipped=5, bad_steps=2)
    ckpt.close()


def test_iterator_snapshot_is_taken_when_made():
    """The iterator state handed to grain's checkpoint handler is the one at
    save time, whenever the handler reads it. (orbax 0.12 runs grain's
    synchronous handler inside ``save()``, so the test above cannot tell a
    lazy snapshot from a frozen one; a handler run in the background could.)"""
    data = iter(grain.MapDataset.range(10).to_iter_dataset())
    next(data), next(data)
    snapshot = checkpoint._IteratorSnapshot(data)
    for _ in range(3):
        next(data)
    fresh = iter(grain.MapDataset.range(10).to_iter_dataset())
    fresh.set_state(json.loads(snapshot.get_state()))
    assert next(fresh) == 2


def test_model_changes_name_what_blocks_a_resume():
    from siammae_jax.train.restore import model_changes

    saved = {"encoder": "demo/8", "decoder_depth": 2, "dtype": "float32"}
    now = {"encoder": "demo/8", "decoder_depth": 1, "dtype": "bfloat16"}
    assert model_changes(saved, now) == ["decoder_depth: 2 -> 1"]
    assert model_changes(saved, {**saved, "dtype": "bfloat16"}) == []
    # JSON turned the saved tuples into lists: not a change.
    assert model_changes({"size": [64, 64]}, {"size": (64, 64)}) == []
    # A field the checkpoint predates counts as the model's default for it.
    assert model_changes({}, {"mask_ratio": 0.95, "attention": "xla"}) == []
    assert model_changes({}, {"mask_ratio": 0.9}) == [
        "mask_ratio: 0.95 (the default; not saved) -> 0.9"
    ]
    assert model_changes({}, {"nonsense": 1}) == ["nonsense: None -> 1"]


def test_a_checkpoint_predating_maes_conventions_resumes_only_with_the_old_ones():
    """A saved model section without ``norm_pix_ddof`` / ``visible_rule`` was
    trained with the population variance and rounding: it resumes with 0 and
    ``round``, and today's defaults (1, ``int``) are changes that block it."""
    from siammae_jax.train.restore import model_changes

    old = {"encoder": "test/8", "mask_ratio": 0.9}
    assert model_changes(old, {**old, "norm_pix_ddof": 0}) == []
    assert model_changes(old, {**old, "visible_rule": "round"}) == []
    assert model_changes(old, {**old, "norm_pix_ddof": 1, "visible_rule": "int"}) == [
        "norm_pix_ddof: 0 (before the field existed; not saved) -> 1",
        "visible_rule: 'round' (before the field existed; not saved) -> 'int'",
    ]
    new = {**old, "norm_pix_ddof": 1, "visible_rule": "int"}
    assert model_changes(new, new) == []
    assert model_changes(new, {**new, "visible_rule": "round"}) == [
        "visible_rule: 'int' -> 'round'"
    ]


def test_a_checkpoint_predating_maes_conventions_loads_with_the_old_ones(tmp_path):
    """``weights.load`` of a workdir whose saved model section lacks the fields
    builds the model it trained (ddof 0, ``round``: round(16 x 0.1) = 2 visible
    f2 patches); one that has them keeps them (1, ``int``: 1 patch). The model
    of an export's config (``model_from``) follows the same rule."""
    from conftest import TEST_MODEL

    from siammae_jax import weights
    from siammae_jax.models import SiamMAE
    from siammae_jax.models.definition import ModelDef
    from siammae_jax.weights import params as weight_params

    mae = {"norm_pix_ddof": 1, "visible_rule": "int"}
    model = {k: v for k, v in TEST_MODEL.items() if k not in mae}
    model["mask_ratio"] = 0.9
    params = ModelDef.from_config({**model, **mae}).init_params(jax.random.key(0))
    frame = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    for name, saved, want, visible in [
        ("old", model, (0, "round"), 2),
        ("new", {**model, **mae}, (1, "int"), 1),
    ]:
        ckpt = checkpoint.Checkpointer(
            tmp_path / name / "checkpoints", every=1, async_save=False
        )
        data = iter(grain.MapDataset.range(2).to_iter_dataset())
        config = ml_collections.ConfigDict({"model": saved})
        assert ckpt.save(1, {"params": params}, data, config, force=True)
        ckpt.close()
        loaded, model_config = weights.load(tmp_path / name)
        assert isinstance(loaded, SiamMAE)
        assert (loaded.norm_pix_ddof, loaded.visible_rule) == want
        assert (model_config["norm_pix_ddof"], model_config["visible_rule"]) == want
        graphdef, state = nnx.split(loaded)
        z2 = jax.eval_shape(
            lambda s, a, g=graphdef: nnx.merge(g, s).encode_pair(
                a, a, jax.random.key(0)
            )[1],
            state,
            frame,
        )
        assert z2.shape == (1, 1 + visible, 32)
        exported = weight_params.model_from(saved, params, "export")
        assert (exported.norm_pix_ddof, exported.visible_rule) == want


def _save_steps(ckpt, steps, *, force=False):
    """Offers ``steps`` to ``ckpt.save``, each with a state and iterator
    position derived from the step; returns the steps whose save started."""
    data = iter(grain.MapDataset.range(100).to_iter_dataset())
    config = ml_collections.ConfigDict({"step": 0})
    started = []
    for step in steps:
        while data.get_state()["next_index"] < step:
            next(data)
        config.step = step
        state = {"w": jnp.full((2,), step, jnp.float32)}
        if force:  # else the default, not force=False: the default must not force
            saving = ckpt.save(step, state, data, config, force=True)
        else:
            saving = ckpt.save(step, state, data, config)
        if saving:
            started.append(step)
    ckpt.wait()
    return started


def _step_folders(directory):
    return sorted(p.name for p in directory.iterdir())


def test_saves_every_n_steps_and_forced_saves_any_step(tmp_path):
    """``every=3``: steps 3 and 6 of 1..7 are saved, the others are not (no
    folder either); ``force=True`` saves an off-interval step."""
    ckpt = checkpoint.Checkpointer(tmp_path, every=3, keep=10, async_save=False)
    assert _save_steps(ckpt, range(1, 8)) == [3, 6]
    assert _step_folders(tmp_path) == ["3", "6"]
    assert _save_steps(ckpt, [8], force=True) == [8]
    assert ckpt.manager.all_steps() == [3, 6, 8]
    assert ckpt.latest_step() == 8
    ckpt.close()


def test_default_keeps_the_latest_three(tmp_path):
    """Defaults: ``keep=3``, no ``keep_every``; older steps are deleted."""
    ckpt = checkpoint.Checkpointer(tmp_path, every=1)
    assert _save_steps(ckpt, range(1, 7)) == [1, 2, 3, 4, 5, 6]
    ckpt.close()
    assert _step_folders(tmp_path) == ["4", "5", "6"]


def test_keep_and_keep_every_choose_what_survives(tmp_path):
    """``keep`` latest steps plus every ``keep_every``-th step for good."""
    cases = [  # (keep, keep_every, kept of steps 1..7), worked out by hand
        (2, 0, ["6", "7"]),
        (1, 3, ["3", "6", "7"]),
        (2, 4, ["4", "6", "7"]),
        (1, 1, ["1", "2", "3", "4", "5", "6", "7"]),
    ]
    for keep, keep_every, kept in cases:
        directory = tmp_path / f"k{keep}e{keep_every}"
        ckpt = checkpoint.Checkpointer(
            directory, every=1, keep=keep, keep_every=keep_every, async_save=False
        )
        _save_steps(ckpt, range(1, 8))
        ckpt.close()
        assert _step_folders(directory) == kept, (keep, keep_every)


def test_keep_best_keeps_the_highest_jf_besides_the_latest(tmp_path):
    """``keep_best``: the step with the highest ``J&F`` survives however old;
    steps saved without metrics are kept only as the latest ones."""
    ckpt = checkpoint.Checkpointer(tmp_path, every=1, keep=2, keep_best=True)
    jf = {2: 0.41, 4: 0.30, 6: 0.38}  # by hand: step 2 is the best
    data = iter(grain.MapDataset.range(4).to_iter_dataset())
    config = ml_collections.ConfigDict({"step": 0})
    for step in range(1, 9):
        ranked = {"J&F": jf[step]} if step in jf else None
        ckpt.save(step, {"w": jnp.zeros(2)}, data, config, metrics=ranked)
    ckpt.wait()
    assert _step_folders(tmp_path) == ["2", "7", "8"]
    assert ckpt.best_step() == 2
    ckpt.close()
    again = checkpoint.Checkpointer(tmp_path, every=1, keep=2, keep_best=True)
    assert again.best_step() == 2 and again.latest_step() == 8
    plain = checkpoint.Checkpointer(tmp_path, every=1)
    assert plain.best_step() is None  # no ranking asked for


def test_best_step_is_the_highest_jf_of_several_ranked_steps(tmp_path, monkeypatch):
    """Every ranked step kept (``keep=10``): the best step, and the one the
    training log reports, has the highest J&F (step 4; not the lowest, step 6,
    nor the newest ranked, step 8)."""
    from types import SimpleNamespace

    from siammae_jax.train import loop  # imports TensorFlow (clu): only here

    ckpt = checkpoint.Checkpointer(
        tmp_path, every=1, keep=10, keep_best=True, async_save=False
    )
    jf = {2: 0.31, 4: 0.47, 6: 0.22, 8: 0.40}
    data = iter(grain.MapDataset.range(4).to_iter_dataset())
    config = ml_collections.ConfigDict({"step": 0})
    for step in range(1, 9):
        ranked = {"J&F": jf[step]} if step in jf else None
        ckpt.save(step, {"w": jnp.zeros(2)}, data, config, metrics=ranked)
    assert _step_folders(tmp_path) == [str(s) for s in range(1, 9)]
    assert ckpt.best_step() == max(jf, key=jf.get) == 4
    logged = []
    monkeypatch.setattr(
        loop.logging, "info", lambda fmt, *args: logged.append(fmt % args)
    )
    eval_config = ml_collections.ConfigDict({"eval": {"best_metric": "vip/mIoU"}})
    loop._log_best(SimpleNamespace(ckpt=ckpt, config=eval_config))
    assert logged == [f"best online vip/mIoU 0.4700 at step 4: {tmp_path / '4'}"]
    ckpt.close()


def test_the_expected_orbax_warning_is_dropped_and_others_kept():
    """With keep_best, orbax warns at every save without metrics (most steps);
    the console filter drops exactly that warning."""
    import logging

    from siammae_jax.train import logs

    def record(path, level, message):
        return logging.LogRecord("absl", level, path, 1, message, None, None)

    keep = logs._QuietLibraries().filter
    orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
    expected = "Requested `tracked_metric`; did not provide metrics."
    assert not keep(record(orbax, logging.WARNING, expected))
    assert keep(record(orbax, logging.WARNING, "Something else went wrong"))
    assert not keep(record(orbax, logging.INFO, "Finished saving checkpoint"))
    assert keep(record("/siammae_jax/train/loop.py", logging.INFO, expected))


def test_async_saves_commit_in_the_background(tmp_path, monkeypatch):
    """By default the step folder is committed (renamed into place) by a
    background thread; ``async_save=False`` commits it in the caller's thread
    before ``save()`` returns."""
    atomic = ocp.path.atomicity.AtomicRenameTemporaryPath
    finalize = atomic.finalize
    committed = []  # (final folder name, committed in the caller's thread)

    def spy(self, *args, **kwargs):
        committed.append((self.get_final().name, threading.get_ident() == caller))
        return finalize(self, *args, **kwargs)

    monkeypatch.setattr(atomic, "finalize", spy)
    caller = threading.get_ident()
    ckpt = checkpoint.Checkpointer(tmp_path / "async", every=1)
    _save_steps(ckpt, [1])
    ckpt.close()
    assert ("1", False) in committed and ("1", True) not in committed
    committed.clear()
    ckpt = checkpoint.Checkpointer(tmp_path / "sync", every=1, async_save=False)
    data = iter(grain.MapDataset.range(3).to_iter_dataset())
    state = {"w": jnp.zeros((2,))}
    assert ckpt.save(1, state, data, ml_collections.ConfigDict({}))
    assert _step_folders(tmp_path / "sync") == ["1"]  # complete, no wait()
    assert ("1", True) in committed and ("1", False) not in committed
    ckpt.close()


def test_half_written_step_is_removed_and_never_restored(tmp_path):
    """A folder left by a save that crashed (orbax's ``<step>.orbax-checkpoint-
    tmp``) is not a checkpoint and is deleted by the next run's first save."""
    half = tmp_path / "7.orbax-checkpoint-tmp"
    (half / "state").mkdir(parents=True)
    (half / "state" / "junk").write_text("partial")
    ckpt = checkpoint.Checkpointer(tmp_path, every=5)
    assert ckpt.latest_step() is None
    assert _save_steps(ckpt, [5]) == [5]
    ckpt.close()
    assert _step_folders(tmp_path) == ["5"]


def test_remote_directory_is_passed_on_unchanged(monkeypatch):
    """A ``gs://`` URL is not a local path: it must not be made absolute."""
    made = []

    class FakeManager:
        def __init__(self, directory, options):
            made.append((directory, options))

    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", FakeManager)
    ckpt = checkpoint.Checkpointer("gs://bucket/run/checkpoints", every=1)
    assert str(ckpt.directory) == "gs://bucket/run/checkpoints"
    assert [str(d) for d, _ in made] == ["gs://bucket/run/checkpoints"]


def test_resume_in_a_new_process_restores_the_asked_step(tmp_path):
    """A fresh Checkpointer (as after a restart) restores the requested step,
    not the newest, into the target's structure (a TrainState, not a dict),
    sets the iterator to that step's position and reads that step's config."""
    ckpt = checkpoint.Checkpointer(tmp_path, every=1, async_save=False)
    data = iter(grain.MapDataset.range(10).to_iter_dataset())
    config = ml_collections.ConfigDict({"model": {"depth": 0}})
    for step in (1, 2):
        next(data)
        config.model.depth = step
        state = TrainState(
            step=jnp.int32(step),
            params={"w": jnp.full((3,), 10.0 * step)},
            opt_state=(jnp.full((3,), -1.0 * step),),
            bad_in_a_row=jnp.int32(0),
        )
        assert ckpt.save(step, state, data, config)
    ckpt.close()

    resumed = checkpoint.Checkpointer(tmp_path, every=1)
    assert resumed.latest_step() == 2
    assert resumed.saved_config(1) == {"model": {"depth": 1}}
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    fresh = iter(grain.MapDataset.range(10).to_iter_dataset())
    restored = resumed.restore(1, target, fresh)
    assert isinstance(restored, TrainState)
    assert int(restored.step) == 1
    np.testing.assert_array_equal(restored.params["w"], [10.0, 10.0, 10.0])
    np.testing.assert_array_equal(restored.opt_state[0], [-1.0, -1.0, -1.0])
    assert next(fresh) == 1
    assert resumed.saved_config(2) == {"model": {"depth": 2}}
    resumed.close()


def test_a_state_saved_on_8_devices_restores_on_4_and_on_1(tmp_path):
    """Restore reshards: a state split over an 8-device mesh comes back onto
    whatever devices and shardings the target asks (the e2e run on 1 and 4
    devices is in `make test-slow`)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    def on(n, spec):
        mesh = jax.make_mesh((n,), ("data",), devices=jax.devices()[:n])
        return NamedSharding(mesh, spec)

    values = {"w": np.arange(64.0).reshape(16, 4), "b": np.arange(8.0)}
    state = {
        "w": jax.device_put(values["w"], on(8, P("data"))),
        "b": jax.device_put(values["b"], on(8, P())),
    }
    assert len(state["w"].addressable_shards) == 8
    ckpt = checkpoint.Checkpointer(tmp_path, every=1, async_save=False)
    config = ml_collections.ConfigDict({"model": {}})
    ckpt.save(1, state, iter(grain.MapDataset.range(4).to_iter_dataset()), config)
    wanted = {4: {"w": P(None, "data"), "b": P("data")}, 1: {"w": P(), "b": P()}}
    for n, specs in wanted.items():
        target = {
            k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=on(n, specs[k]))
            for k, v in values.items()
        }
        data = iter(grain.MapDataset.range(4).to_iter_dataset())
        restored = ckpt.restore(1, target, data)
        for k in values:
            assert restored[k].sharding == target[k].sharding, (n, k)
            np.testing.assert_array_equal(np.asarray(restored[k]), values[k])
    ckpt.close()
