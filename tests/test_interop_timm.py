"""Round trips against real PyTorch + timm (``make test-interop``).

Our encoder -> timm state dict -> ``timm.create_model(...)`` forward equals
ours, and timm's random weights -> import -> our forward equals timm's, within
1e-4 in float32, for S/16 and B/16, at 224 and at another input size (the
position embeddings interpolated by both sides).
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from siammae_jax.models import vit
from siammae_jax.weights import exports
from siammae_jax.weights import timm as interop

pytestmark = pytest.mark.interop
torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
torch.set_num_threads(2)

TIMM = {"S/16": "vit_small_patch16_224", "B/16": "vit_base_patch16_224"}


def _timm_model(variant: str):
    return timm.create_model(
        TIMM[variant], pretrained=False, num_classes=0, dynamic_img_size=True
    ).eval()


def _timm_tokens(model, images: np.ndarray) -> np.ndarray:
    """Patch tokens after the final norm ([CLS] dropped), from NHWC images."""
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        return model.forward_features(x)[:, 1:].numpy()


def _our_tokens(model: vit.ViT, images: np.ndarray) -> np.ndarray:
    return np.asarray(model(jnp.asarray(images))[0][:, 1:])


def _images(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, size, size, 3)).astype("f4")


def _perturbed(variant: str) -> vit.ViT:
    model = vit.ViT(variant, image_size=224, rngs=nnx.Rngs(0))
    leaves, treedef = jax.tree.flatten(nnx.state(model, nnx.Param))
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [
        x + 0.05 * jax.random.normal(k, x.shape)
        for x, k in zip(leaves, keys, strict=True)
    ]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))
    return model


def _randomize(model) -> None:
    """Random values everywhere (timm initialises biases to 0, norms to 1)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.05
            p.copy_((1.0 + noise) if "norm" in name and "weight" in name else noise)


@pytest.mark.parametrize("variant", ["S/16", "B/16"])
def test_our_encoder_runs_in_timm(variant):
    ours = _perturbed(variant)
    state = {
        k: torch.from_numpy(v) for k, v in interop.to_timm_state_dict(ours).items()
    }
    model = _timm_model(variant)
    model.load_state_dict(state, strict=True)
    for size in (224, 160):
        images = _images(size)
        np.testing.assert_allclose(
            _timm_tokens(model, images), _our_tokens(ours, images), atol=1e-4
        )


@pytest.mark.parametrize("variant", ["S/16", "B/16"])
def test_timm_weights_run_in_our_encoder(variant):
    model = _timm_model(variant)
    _randomize(model)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    ours = interop.from_timm_state_dict(state)
    assert (ours.variant, ours.grid) == (variant, (14, 14))
    for size in (224, 256):
        images = _images(size, seed=1)
        np.testing.assert_allclose(
            _our_tokens(ours, images), _timm_tokens(model, images), atol=1e-4
        )


@pytest.mark.parametrize(("old", "new"), [(14, 10), (14, 16), ((14, 14), (12, 20))])
def test_resample_pos_embed_matches_timm(old, new):
    from timm.layers import resample_abs_pos_embed

    old = (old, old) if isinstance(old, int) else old
    new = (new, new) if isinstance(new, int) else new
    pos = np.random.default_rng(0).normal(size=(1, 1 + old[0] * old[1], 64))
    pos = pos.astype(np.float32)
    want = resample_abs_pos_embed(torch.from_numpy(pos), list(new), list(old), 1)
    got = vit.resample_pos_embed(jnp.asarray(pos), old, new)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_torch_files_load_with_weights_only(tmp_path):
    model = _timm_model("S/16")
    _randomize(model)
    state = model.state_dict()
    torch.save(state, tmp_path / "plain.pth")
    torch.save({"model": state, "epoch": 3}, tmp_path / "mae.pth")
    teacher = {f"backbone.{k}": v for k, v in state.items()}
    torch.save({"teacher": teacher}, tmp_path / "dino.pth")
    for name in ("plain.pth", "mae.pth", "dino.pth"):
        loaded = interop.load_weights(tmp_path / name)
        assert set(loaded) == set(state)
        np.testing.assert_array_equal(loaded["pos_embed"], state["pos_embed"].numpy())
    # A full training checkpoint with pickled objects (DINO/MAE keep args).
    torch.save({"model": state, "args": argparse.Namespace(lr=1)}, tmp_path / "f.pth")
    with pytest.raises(ValueError, match="refused.*Namespace.*arbitrary code"):
        interop.load_weights(tmp_path / "f.pth")


def test_timm_export_folder_builds_in_timm(tmp_path):
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    ours = vit.ViT("test/8", image_size=32, rngs=nnx.Rngs(0))
    exports.save(tmp_path, ours, {"encoder": "test/8", "image_size": 32}, format="timm")
    args = json.loads((tmp_path / "config.json").read_text())["model_args"]
    model = VisionTransformer(**args).eval()
    model.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    images = _images(32)
    np.testing.assert_allclose(
        _timm_tokens(model, images), _our_tokens(ours, images), atol=1e-4
    )


def test_load_reads_a_torch_state_dict_to_the_same_features(trained, tmp_path):
    """Issue 16: the torch format of ``siammae_jax.load`` (the others are in
    test_weights.py), for the same weights as the training checkpoint."""
    from conftest import TEST_MODEL

    import siammae_jax
    from siammae_jax.weights import params as weight_params

    _, params = trained
    ours = weight_params.encoder_from(TEST_MODEL, params, "reference")
    state = {
        k: torch.from_numpy(v) for k, v in interop.to_timm_state_dict(ours).items()
    }
    torch.save(state, tmp_path / "encoder.pth")
    model, config = siammae_jax.load(tmp_path / "encoder.pth", "test/8")
    assert config["encoder"] == "test/8"
    images = _images(32)
    np.testing.assert_allclose(
        np.asarray(model.features(jnp.asarray(images))),
        np.asarray(ours.features(jnp.asarray(images))),
        atol=1e-5,
    )
