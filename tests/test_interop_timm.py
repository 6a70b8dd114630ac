"""Round trips against real PyTorch + timm (``make test-interop``).

Our encoder -> timm state dict -> ``timm.create_model(...)`` forward equals
ours, and timm's random weights -> import -> our forward equals timm's, within
1e-4 in float32, for S/16 and B/16, at 224 and at another input size (the
position embeddings interpolated by both sides). Issue 26: ``.pth`` files in
the released layouts of DINO, MAE, CropMAE, RSP and T-CoRe load to the
features of the timm model they were written from (within 1e-5), and DINO's
position-embedding interpolation equals torch's.
"""

import argparse
import json
import math

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
    # A training checkpoint's argparse args (DINO, MAE keep them) are read...
    torch.save({"model": state, "args": argparse.Namespace(lr=1)}, tmp_path / "a.pth")
    assert set(interop.load_weights(tmp_path / "a.pth")) == set(state)
    # ...any other pickled object is refused.
    torch.save({"model": state, "sched": _Pickled()}, tmp_path / "f.pth")
    with pytest.raises(ValueError, match="refused.*_Pickled.*arbitrary code"):
        interop.load_weights(tmp_path / "f.pth")


class _Pickled:
    """A plain object of this module: torch.load(weights_only=True) refuses it."""


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


# ------------------------------------------ peers' released layouts (issue 26)


def _tiny_timm(seed: int = 0, **kwargs):
    """A timm ViT of our test/8 size at 32 px, with random weights."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=kwargs.pop("img_size", 32), patch_size=8, embed_dim=32, depth=2,
        num_heads=2, num_classes=0, **kwargs,
    ).eval()  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.05
            p.copy_((1.0 + noise) if "norm" in name and "weight" in name else noise)
    return model


def _randn(*shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(7))


def _training_extras() -> dict:
    """What MAE-style save_model writes besides the weights."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    return {
        "optimizer": opt.state_dict(),
        "epoch": 399,
        "scaler": torch.amp.GradScaler("cpu").state_dict(),
        "args": argparse.Namespace(model="vit_small", lr=1.5e-4, input_size=224),
    }


def _mae_decoder() -> dict:
    return {
        "mask_token": _randn(1, 1, 16),
        "decoder_embed.weight": _randn(16, 32),
        "decoder_pos_embed": _randn(1, 17, 16),
        "decoder_norm.weight": _randn(16),
        "decoder_pred.weight": _randn(192, 16),
    }


def _checkpoint(layout: str, sd: dict, student: dict) -> dict:
    """A checkpoint as each project saves it (see siammae_jax.weights.peers)."""
    if layout == "dino":  # main_dino.py save_dict
        head = {"head.mlp.0.weight": _randn(64, 32), "head.last_layer.weight_g": _randn(16, 1)}  # fmt: skip
        return {
            "student": {
                **{f"module.backbone.{k}": v for k, v in student.items()},
                **{f"module.{k}": v for k, v in head.items()},
            },
            "teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, **head},
            "optimizer": _training_extras()["optimizer"],
            "epoch": 100,
            "args": argparse.Namespace(arch="vit_small", patch_size=8, out_dim=16),
            "dino_loss": {"center": torch.zeros(1, 16)},
            "fp16_scaler": {"scale": 65536.0, "_growth_tracker": 0},
        }
    if layout == "mae":
        return {"model": {**sd, **_mae_decoder()}, **_training_extras()}
    if layout == "cropmae":  # MAE's model, cross-attention decoder blocks
        blocks = {
            "decoder_blocks.0.self_attn.in_proj_weight": _randn(48, 16),
            "decoder_blocks.0.multihead_attn.in_proj_weight": _randn(48, 16),
            "decoder_blocks.0.linear1.weight": _randn(64, 16),
        }
        return {"model": {**sd, **_mae_decoder(), **blocks}, **_training_extras()}
    if layout == "rsp":
        rsp = {
            "to_posterior.0.weight": _randn(64, 64),
            "to_prior.2.weight": _randn(1024, 64),
            "decoder_embed_deter.weight": _randn(16, 32),
            "decoder_embed_stoch.weight": _randn(16, 1024),
        }
        return {"model": {**sd, **_mae_decoder(), **rsp}, **_training_extras()}
    assert layout == "tcore"  # train.py do_test
    teacher = {f"backbone.{k}": v for k, v in sd.items()}
    teacher["backbone.mask_token"] = torch.zeros(1, 32)
    teacher["dino_head.mlp.0.weight"] = _randn(64, 32)
    return {"teacher": teacher}


@pytest.mark.parametrize("layout", ["dino", "mae", "cropmae", "rsp", "tcore"])
def test_peer_checkpoints_load_to_timm_features(layout, tmp_path):
    import siammae_jax.weights

    kwargs = {"init_values": 0.5} if layout == "tcore" else {}  # LayerScale
    teacher, student = _tiny_timm(0, **kwargs), _tiny_timm(1, **kwargs)
    path = tmp_path / f"{layout}.pth"
    torch.save(_checkpoint(layout, teacher.state_dict(), student.state_dict()), path)
    assert siammae_jax.weights.detect_layout(path) == ("torch", layout)
    images = _images(32, seed=2)
    model, config = siammae_jax.weights.load(path)
    assert config["encoder"] == "test/8" and config["layout"] == layout
    np.testing.assert_allclose(
        _our_tokens(model, images), _timm_tokens(teacher, images), atol=1e-5
    )
    if layout == "dino":
        assert config["branch"] == "teacher"
        model, config = siammae_jax.weights.load(path, branch="student")
        assert config["branch"] == "student"
        np.testing.assert_allclose(
            _our_tokens(model, images), _timm_tokens(student, images), atol=1e-5
        )


def _dino_interpolate(pos: np.ndarray, old: tuple, new: tuple) -> np.ndarray:
    """DINO's interpolate_pos_encoding (facebookresearch/dino
    vision_transformer.py): bicubic by scale factor (n + 0.1) / sqrt(N)."""
    n = old[0] * old[1]
    grid = torch.from_numpy(pos[:, 1:]).reshape(1, *old, -1).permute(0, 3, 1, 2)
    scale = ((new[0] + 0.1) / math.sqrt(n), (new[1] + 0.1) / math.sqrt(n))
    out = torch.nn.functional.interpolate(grid, scale_factor=scale, mode="bicubic")
    assert tuple(out.shape[-2:]) == tuple(new)
    out = out.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1]).numpy()
    return np.concatenate([pos[:, :1], out], axis=1)


@pytest.mark.parametrize("new", [(30, 53), (60, 110), (10, 12)])
def test_dino_pos_interp_matches_torch(new):
    pos = np.random.default_rng(0).normal(size=(1, 1 + 14 * 14, 64)).astype("f4")
    got = vit.resample_pos_embed(jnp.asarray(pos), (14, 14), new, "dino")
    np.testing.assert_allclose(got, _dino_interpolate(pos, (14, 14), new), atol=1e-5)


def test_dino_interpolating_encoder_runs_as_dino_evaluates(tmp_path):
    """DINO's released backbone at another input size with
    ``load(..., pos_interp="dino")`` gives the features of the same timm
    model fed DINO's interpolated position embeddings."""
    import siammae_jax.weights

    dino = _tiny_timm(3)
    torch.save(dino.state_dict(), tmp_path / "dino_backbone.pth")
    model, config = siammae_jax.weights.load(
        tmp_path / "dino_backbone.pth", layout="dino", pos_interp="dino"
    )
    assert config["layout"] == "dino" and model.pos_interp == "dino"
    sd = dino.state_dict()
    pos = _dino_interpolate(sd["pos_embed"].numpy(), (4, 4), (5, 7))
    wide = _tiny_timm(3, img_size=(40, 56))
    wide.load_state_dict({**sd, "pos_embed": torch.from_numpy(pos)}, strict=True)
    images = np.random.default_rng(4).normal(size=(1, 40, 56, 3)).astype("f4")
    np.testing.assert_allclose(
        _our_tokens(model, images), _timm_tokens(wide, images), atol=1e-5
    )
