"""Checkpointer: relative paths, save + restore of state, data iterator, config."""

import json

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from siammae_jax.train import checkpoint


def test_relative_directory_save_and_restore(tmp_path, monkeypatch):
    """An asynchronous save holds the state and the iterator position of the
    moment ``save()`` was called: the caller moving the iterator on and
    replacing the state's entries before the write ends changes nothing."""
    monkeypatch.chdir(tmp_path)  # `make demo` passes a relative workdir
    ckpt = checkpoint.Checkpointer("run/checkpoints", every=1)
    assert str(ckpt.directory).startswith(str(tmp_path))
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
    from siammae_jax.train import loop  # imports TensorFlow (clu): only here

    saved = {"encoder": "demo/8", "decoder_depth": 2, "dtype": "float32"}
    now = {"encoder": "demo/8", "decoder_depth": 1, "dtype": "bfloat16"}
    assert loop.model_changes(saved, now) == ["decoder_depth: 2 -> 1"]
    assert loop.model_changes(saved, {**saved, "dtype": "bfloat16"}) == []
    # JSON turned the saved tuples into lists: not a change.
    assert loop.model_changes({"size": [64, 64]}, {"size": (64, 64)}) == []
    assert loop.model_changes({}, {"mask_ratio": 0.9}) == ["mask_ratio: None -> 0.9"]
