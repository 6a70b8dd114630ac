"""One home for weights (issue 16): load any format, share the whole model,
warm-start pre-training, model cards that say what the weights are.

The reference for every feature comparison is the encoder built directly from
the parameters the training code saved (``trained`` in conftest.py).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TEST_MODEL
from flax import nnx

import siammae_jax
from siammae_jax import export, weights
from siammae_jax.configs import siammae as siammae_config
from siammae_jax.models import SiamMAE, ViT
from siammae_jax.models.definition import ModelDef
from siammae_jax.train import mesh as mesh_lib
from siammae_jax.train import optim
from siammae_jax.train import state as state_lib
from siammae_jax.train.restore import warm_start
from siammae_jax.weights import exports
from siammae_jax.weights import params as weight_params


def _features(model: ViT, images) -> np.ndarray:
    return np.asarray(model.features(jnp.asarray(images)))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """name -> path of every export of the trained checkpoint."""
    workdir, _ = trained
    out = tmp_path_factory.mktemp("exports")
    paths = {}
    for fmt in exports.FORMATS:
        for what in exports.WHAT if fmt != "timm" else ("encoder",):
            folder = out / f"{fmt}_{what}"
            export.export_checkpoint(workdir, folder, fmt, what=what, progress=False)
            paths[f"{fmt}_{what}"] = folder
    return paths


def test_load_reads_every_format_to_the_same_features(trained, exported, images):
    workdir, params = trained
    want = _features(weight_params.encoder_from(TEST_MODEL, params, "ref"), images)
    sources = {
        "workdir": (workdir, "checkpoint", SiamMAE),
        "step folder": (workdir / "checkpoints" / "5", "checkpoint", SiamMAE),
        "orbax encoder": (exported["orbax_encoder"], "orbax", ViT),
        "orbax model": (exported["orbax_model"], "orbax", SiamMAE),
        "safetensors encoder": (
            exported["safetensors_encoder"] / "encoder.safetensors", "safetensors", ViT,
        ),
        "safetensors model": (exported["safetensors_model"], "safetensors", SiamMAE),
        "timm folder": (exported["timm_encoder"], "timm", ViT),
        "timm file": (exported["timm_encoder"] / "model.safetensors", "timm", ViT),
    }  # fmt: skip
    for name, (path, kind, cls) in sources.items():
        assert weights.detect(path)[0] == kind, name
        model, model_config = siammae_jax.load(path)
        assert isinstance(model, cls), name
        assert model_config["encoder"] == "test/8", name
        got = _features(siammae_jax.load_encoder(path), images)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=name)


def test_whole_model_exports_hold_every_parameter(trained, exported):
    workdir, _ = trained
    source, _ = weights.load(workdir)
    want = nnx.to_pure_dict(nnx.state(source, nnx.Param))
    for name in ("orbax_model", "safetensors_model"):
        model, _ = weights.load(exported[name])
        got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        assert jax.tree.structure(got) == jax.tree.structure(want), name
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_model_card_says_what_the_weights_are(trained, exported):
    workdir, _ = trained
    card = json.loads((exported["orbax_model"] / exports.MODEL_CARD).read_text())
    assert card["what"] == "model" and card["export_format"] == "orbax"
    assert card["model"]["encoder"] == "test/8" and card["model"]["decoder_dim"] == 32
    assert card["training"]["step"] == 5
    assert card["training"]["checkpoint"] == str(workdir / "checkpoints" / "5")
    assert card["package"]["version"] == siammae_jax.__version__
    assert any(name.startswith("params/") for name in card["files"])
    st = exported["safetensors_encoder"]
    entry = json.loads((st / exports.MODEL_CARD).read_text())["files"]
    assert entry["encoder.safetensors"]["sha256"] == exports.sha256(
        st / "encoder.safetensors"
    )


def test_a_tampered_weight_file_is_refused_naming_it(exported, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(exported["safetensors_encoder"], folder)
    path = folder / "encoder.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    for given in (folder, path):
        with pytest.raises(ValueError, match=f"{path}: its sha256 does not match"):
            weights.load(given)


def _fresh_state(model_config: dict, seed: int = 7):
    model_def = ModelDef.from_config(model_config)
    mesh = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
    tx = optim.make_optimizer(1e-3)
    return model_def, state_lib.create_state(model_def, tx, mesh, seed=seed)


def _loss(model_def, params, seed=0) -> float:
    frames = jax.random.normal(jax.random.key(seed), (4, 2, 32, 32, 3))
    out = model_def.apply(
        params, model_def.buffers, frames[:, 0], frames[:, 1], jax.random.key(1)
    )
    return float(out.loss)


def test_warm_start_from_a_whole_model_export_continues_its_loss(trained, exported):
    workdir, _ = trained
    source, _ = weights.load(workdir)
    source_params = nnx.to_pure_dict(nnx.state(source, nnx.Param))
    model_def, state = _fresh_state(TEST_MODEL)
    fresh = _loss(model_def, state.params)
    warm = warm_start(state, str(exported["orbax_model"]))
    want = _loss(model_def, source_params)
    assert _loss(model_def, warm.params) == pytest.approx(want, rel=1e-6)
    assert abs(want - fresh) > 1e-3  # the weights changed the loss
    assert int(warm.step) == 0
    for m in jax.tree.leaves(warm.opt_state):
        if hasattr(m, "shape") and m.ndim:
            assert not np.any(np.asarray(m))  # fresh optimizer moments


def test_warm_start_from_an_encoder_keeps_the_fresh_decoder(trained, exported):
    _, params = trained
    _, state = _fresh_state(TEST_MODEL)
    warm = warm_start(state, str(exported["safetensors_encoder"]))
    for a, b in zip(
        jax.tree.leaves(warm.params["encoder"]), jax.tree.leaves(params), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        jax.tree.leaves(warm.params["decoder_embed"]),
        jax.tree.leaves(state.params["decoder_embed"]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_warm_start_names_the_parameters_that_do_not_fit(exported):
    _, state = _fresh_state({**TEST_MODEL, "decoder_dim": 48})
    shape = r"wrong shapes \(\d+\): .*'decoder_blocks/0/attn/key/kernel: \(32, 2, 16\) != \(48, 2, 24\)'"
    with pytest.raises(ValueError, match=f"do not fit this run's model.*{shape}"):
        warm_start(state, str(exported["orbax_model"]))


def test_export_refuses_what_it_cannot_hold(exported, tmp_path):
    with pytest.raises(ValueError, match="holds an encoder only"):
        export.export_checkpoint(
            exported["orbax_encoder"], tmp_path / "x", "orbax", what="model"
        )
    with pytest.raises(ValueError, match="timm layout holds an encoder only"):
        export.export_checkpoint(
            exported["orbax_model"], tmp_path / "y", "timm", what="model"
        )
    config = siammae_config.get_config("tiny")
    assert config.init_from == ""
