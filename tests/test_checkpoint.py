"""Checkpointer: relative paths, save + restore of state, data iterator, config."""

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from siammae_jax.train import checkpoint


def test_relative_directory_save_and_restore(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `make demo` passes a relative workdir
    ckpt = checkpoint.Checkpointer("run/checkpoints", every=1)
    assert str(ckpt.directory).startswith(str(tmp_path))
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(3)}
    data = iter(grain.MapDataset.range(10).to_iter_dataset())
    next(data), next(data)
    config = ml_collections.ConfigDict({"model": {"encoder": "test/8"}})
    assert ckpt.save(3, state, data, config)
    next(data)  # moves on after the save: the snapshot must not
    ckpt.wait()
    assert ckpt.latest_step() == 3
    fresh = iter(grain.MapDataset.range(10).to_iter_dataset())
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    restored = ckpt.restore(3, target, fresh)
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert next(fresh) == 2
    assert ckpt.saved_config(3)["model"]["encoder"] == "test/8"
    ckpt.close()


def test_model_changes_name_what_blocks_a_resume():
    from siammae_jax.train import loop  # imports TensorFlow (clu): only here

    saved = {"encoder": "demo/8", "decoder_depth": 2, "dtype": "float32"}
    now = {"encoder": "demo/8", "decoder_depth": 1, "dtype": "bfloat16"}
    assert loop.model_changes(saved, now) == ["decoder_depth: 2 -> 1"]
    assert loop.model_changes(saved, {**saved, "dtype": "bfloat16"}) == []
    # JSON turned the saved tuples into lists: not a change.
    assert loop.model_changes({"size": [64, 64]}, {"size": (64, 64)}) == []
    assert loop.model_changes({}, {"mask_ratio": 0.9}) == ["mask_ratio: None -> 0.9"]
