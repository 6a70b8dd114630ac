"""Released checkpoint layouts of DINO, MAE, CropMAE, RSP and T-CoRe (issue 26)
and DINO's position-embedding interpolation, without torch.

Each layout is built in memory around the timm state dict of a tiny encoder,
with the wrappers, prefixes, heads and decoders its project saves
(``siammae_jax.weights.peers`` cites where); the encoder found in it must be
that state dict exactly. The ``.pth`` round trips through real torch and timm
are in test_interop_timm.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from siammae_jax import weights
from siammae_jax.models import vit
from siammae_jax.weights import peers
from siammae_jax.weights import timm as interop

D = 32  # the width of "test/8"


@pytest.fixture(scope="module")
def encoder() -> vit.ViT:
    """A test/8 encoder at 32 px whose parameters are all off their init."""
    model = vit.ViT("test/8", image_size=32, rngs=nnx.Rngs(0))
    leaves, treedef = jax.tree.flatten(nnx.state(model, nnx.Param))
    keys = jax.random.split(jax.random.key(1), len(leaves))
    noisy = [
        x + 0.05 * jax.random.normal(k, x.shape)
        for x, k in zip(leaves, keys, strict=True)
    ]
    nnx.update(model, jax.tree.unflatten(treedef, noisy))
    return model


@pytest.fixture(scope="module")
def state(encoder) -> dict:
    return interop.to_timm_state_dict(encoder)


def _arrays(*shapes, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in shapes]


def _prefixed(prefix: str, state: dict) -> dict:
    return {f"{prefix}{k}": v for k, v in state.items()}


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _dino_head(prefix: str) -> dict:
    w, b, g, v = _arrays((64, D), (64,), (1, 1), (16, 64))
    return {
        f"{prefix}head.mlp.0.weight": w,
        f"{prefix}head.mlp.0.bias": b,
        f"{prefix}head.last_layer.weight_g": g,
        f"{prefix}head.last_layer.weight_v": v,
    }


def _mae_decoder(seed: int = 1) -> dict:
    """MAE's decoder entries (facebookresearch/mae models_mae.py)."""
    e, eb, m, p, n, nb, q, qb = _arrays(
        (16, D), (16,), (1, 1, 16), (1, 17, 16), (16,), (16,), (192, 16), (192,),
        seed=seed,
    )  # fmt: skip
    return {
        "decoder_embed.weight": e,
        "decoder_embed.bias": eb,
        "mask_token": m,
        "decoder_pos_embed": p,
        "decoder_blocks.0.attn.qkv.weight": np.zeros((48, 16), np.float32),
        "decoder_norm.weight": n,
        "decoder_norm.bias": nb,
        "decoder_pred.weight": q,
        "decoder_pred.bias": qb,
    }


def test_dino_bare_backbone_is_the_timm_layout(state):
    got, found = peers.encoder_state(dict(state))
    assert found == peers.Found("timm")
    _assert_same(got, state)
    got, found = peers.encoder_state(dict(state), layout="dino")
    assert found == peers.Found("dino")
    _assert_same(got, state)


def test_dino_full_checkpoint_teacher_by_default_student_on_request(state):
    """main_dino.py's save_dict: student (DDP: module.backbone.*, module.head.*)
    and teacher (backbone.*, head.*) with optimizer, loss and args entries."""
    student = {k: v * 2.0 for k, v in state.items()}
    checkpoint = {
        "student": {**_prefixed("module.backbone.", student), **_dino_head("module.")},
        "teacher": {**_prefixed("backbone.", state), **_dino_head("")},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
        "epoch": 100,
        "args": object(),  # argparse.Namespace in the real file
        "dino_loss": {"center": np.zeros((1, 16), np.float32)},
    }
    got, found = peers.encoder_state(checkpoint)
    assert found == peers.Found("dino", "teacher")
    _assert_same(got, state)
    got, found = peers.encoder_state(checkpoint, branch="student")
    assert found == peers.Found("dino", "student")
    _assert_same(got, student)
    with pytest.raises(ValueError, match="branch='ema' is not one of"):
        peers.encoder_state(checkpoint, branch="ema")
    with pytest.raises(ValueError, match="bare state dict with no"):
        peers.encoder_state(dict(state), branch="student")


def test_mae_pretrain_checkpoint(state):
    checkpoint = {"model": {**state, **_mae_decoder()}, "epoch": 799, "args": None}
    got, found = peers.encoder_state(checkpoint)
    assert found == peers.Found("mae")
    _assert_same(got, state)
    # The released mae_pretrain_vit_*.pth: the encoder alone under "model".
    _assert_same(peers.encoder_state({"model": dict(state)})[0], state)


def test_mae_finetuned_global_pool_is_refused(state):
    """models_vit.py with global_pool deletes norm for fc_norm (applied to
    the pooled feature): no token norm to import."""
    tuned = {k: v for k, v in state.items() if not k.startswith("norm.")}
    tuned["fc_norm.weight"], tuned["fc_norm.bias"] = _arrays((D,), (D,))
    tuned["head.weight"], tuned["head.bias"] = _arrays((10, D), (10,))
    with pytest.raises(ValueError, match=r"ft.pth \(mae layout\): .*global pooling"):
        peers.encoder_state({"model": tuned}, source="ft.pth")


def test_cropmae_checkpoint(state):
    """CropMAE's SiamMAE: MAE's model with cross-attention decoder blocks."""
    decoder = _mae_decoder()
    del decoder["decoder_blocks.0.attn.qkv.weight"]
    for name in ("self_attn", "multihead_attn"):
        decoder[f"decoder_blocks.0.{name}.in_proj_weight"] = _arrays((48, 16))[0]
        decoder[f"decoder_blocks.0.{name}.out_proj.weight"] = _arrays((16, 16))[0]
    decoder["decoder_blocks.0.linear1.weight"] = _arrays((64, 16))[0]
    checkpoint = {"model": {**state, **decoder}, "optimizer": {}, "epoch": 399}
    got, found = peers.encoder_state(checkpoint)
    assert found == peers.Found("cropmae")
    _assert_same(got, state)


def test_rsp_checkpoint(state):
    """RSP's models_rsp.py: MAE decoder plus posterior/prior networks."""
    extra = _mae_decoder()
    extra.update(zip(("decoder_embed_mae.weight", "decoder_embed_deter.weight"),
                     _arrays((16, D), (16, D)), strict=True))  # fmt: skip
    extra["decoder_embed_stoch.weight"] = _arrays((16, 1024))[0]
    extra["to_posterior.0.weight"] = _arrays((2 * D, 2 * D))[0]
    extra["to_posterior.2.weight"] = _arrays((1024, 2 * D))[0]
    extra["to_prior.0.weight"] = _arrays((2 * D, D))[0]
    extra["to_prior.2.bias"] = _arrays((1024,))[0]
    checkpoint = {"model": {**state, **extra}, "scaler": {"scale": 1.0}, "epoch": 3}
    got, found = peers.encoder_state(checkpoint)
    assert found == peers.Found("rsp")
    _assert_same(got, state)


def _tcore_backbone(state: dict, chunks: bool = False) -> dict:
    """``state`` as T-CoRe's DINOv2 ViT would hold it: LayerScale gammas
    (powers of two, so folding them back is exact) divided out of attn.proj
    and mlp.fc2, a mask token, and optionally chunked blocks."""
    rng = np.random.default_rng(2)
    out = dict(state)
    for i in range(2):
        for ls, layer in (("ls1", "attn.proj"), ("ls2", "mlp.fc2")):
            gamma = 2.0 ** rng.integers(-3, 3, size=D).astype(np.float32)
            out[f"blocks.{i}.{ls}.gamma"] = gamma
            out[f"blocks.{i}.{layer}.weight"] = (
                state[f"blocks.{i}.{layer}.weight"] / gamma[:, None]
            )
            out[f"blocks.{i}.{layer}.bias"] = state[f"blocks.{i}.{layer}.bias"] / gamma  # fmt: skip
    out["mask_token"] = np.zeros((1, D), np.float32)
    if chunks:  # DINOv2 block_chunks=2: chunk c holds block i as blocks.c.i
        out = {k.replace(f"blocks.{k[7]}.", f"blocks.{k[7]}.{k[7]}.", 1)
               if k.startswith("blocks.") else k: v for k, v in out.items()}  # fmt: skip
    return out


@pytest.mark.parametrize("chunks", [False, True])
def test_tcore_teacher_checkpoint_folds_layer_scale(state, encoder, chunks):
    """train.py do_test: {"teacher": {backbone.*, dino_head.*}}."""
    heads = {
        "dino_head.mlp.0.weight": _arrays((64, D))[0],
        "dino_head.last_layer.weight_v": _arrays((16, 64))[0],
        "ibot_head.mlp.0.weight": _arrays((64, D))[0],
    }
    backbone = _tcore_backbone(state, chunks)
    checkpoint = {"teacher": {**_prefixed("backbone.", backbone), **heads}}
    got, found = peers.encoder_state(checkpoint)
    assert found == peers.Found("tcore", "teacher")
    _assert_same(got, state)
    model = interop.from_timm_state_dict(got)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 32, 32, 3)), jnp.float32)
    np.testing.assert_array_equal(model.features(x), encoder.features(x))


def test_bare_dinov2_backbone_needs_the_layout_named(state):
    """LayerScale alone does not make a bare state dict T-CoRe's (a timm
    state dict with stray ls keys must stay refused): it is named."""
    backbone = _tcore_backbone(state)
    del backbone["mask_token"]
    with pytest.raises(
        ValueError, match=r"unexpected keys \['blocks.0.ls1.gamma'.*layout='tcore'"
    ):
        interop.from_timm_state_dict(backbone)
    got, found = peers.encoder_state(backbone, layout="tcore")
    assert found == peers.Found("tcore")
    _assert_same(got, state)


def test_tcore_register_tokens_are_refused(state):
    backbone = {**_tcore_backbone(state), "register_tokens": np.zeros((1, 4, D), "f4")}
    checkpoint = {"teacher": {**_prefixed("backbone.", backbone)}}
    with pytest.raises(ValueError, match="4 register tokens.*Not supported"):
        peers.encoder_state(checkpoint)


def test_unknown_keys_are_named_never_dropped(state):
    mae = {"model": {**state, **_mae_decoder(), "blocks.0.attn.rel_pos_h": np.zeros(3)}}
    dino = {"teacher": {**_prefixed("backbone.", state), "backbone.extra_token": np.zeros(3)}}  # fmt: skip
    for checkpoint, key in ((mae, "blocks.0.attn.rel_pos_h"), (dino, "extra_token")):
        with pytest.raises(ValueError, match=rf"unexpected keys \['{key}'\]"):
            interop.from_timm_state_dict(checkpoint, source="peer.pth")


def test_unknown_checkpoints_and_layouts_are_refused(state):
    with pytest.raises(ValueError, match=r"x.pth: no state dict of tensors.*'epoch'"):
        peers.encoder_state({"epoch": 3, "weights": [1, 2]}, source="x.pth")
    with pytest.raises(ValueError, match="layout='moco' is not one of"):
        peers.encoder_state(dict(state), layout="moco")
    with pytest.raises(
        ValueError, match=r"layout 'mae'.*top-level keys \['student', 'teacher'\]"
    ):
        peers.encoder_state({"teacher": dict(state), "student": dict(state)}, layout="mae")  # fmt: skip


def test_load_records_the_layout_and_pos_interp(state, encoder, tmp_path):
    """``weights.load`` on torch-free files: a bare timm-layout file, named as
    DINO's backbone, and a flat T-CoRe backbone (its heads mark it)."""
    interop.save_safetensors(tmp_path / "bare.safetensors", state)
    tcore = {**_prefixed("backbone.", _tcore_backbone(state)), "dino_head.mlp.0.bias": np.zeros(4, "f4")}  # fmt: skip
    interop.save_safetensors(tmp_path / "tcore.safetensors", tcore)
    assert weights.detect_layout(tmp_path / "bare.safetensors") == ("timm", "timm")
    assert weights.detect_layout(tmp_path / "tcore.safetensors") == ("timm", "tcore")
    model, config = weights.load(tmp_path / "bare.safetensors")
    assert config == {"encoder": "test/8", "image_size": [32, 32], "layout": "timm"}
    assert model.pos_interp == "bicubic_aa"
    model, config = weights.load(
        tmp_path / "bare.safetensors", layout="dino", pos_interp="dino"
    )
    assert config == {"encoder": "test/8", "image_size": [32, 32], "layout": "dino"}
    assert model.pos_interp == "dino"
    x = jnp.asarray(np.random.default_rng(4).normal(size=(1, 40, 56, 3)), jnp.float32)
    want = encoder.features(x)  # another grid: the resampling rule matters
    assert not np.allclose(model.features(x), want, atol=1e-4)
    encoder.pos_interp = "dino"
    try:
        np.testing.assert_array_equal(model.features(x), encoder.features(x))
    finally:
        encoder.pos_interp = "bicubic_aa"
    model, config = weights.load(tmp_path / "tcore.safetensors")
    assert config["layout"] == "tcore"
    np.testing.assert_array_equal(model.features(x), want)
    with pytest.raises(ValueError, match="pos_interp='nearest' is not one of"):
        weights.load(tmp_path / "bare.safetensors", pos_interp="nearest")


# ------------------------------------------------------- DINO's interpolation


def _torch_cubic(x: float) -> float:
    """torch's cubic convolution kernel (A = -0.75) at distance ``x``."""
    a, x = -0.75, abs(x)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


def _torch_bicubic_by_scale(grid: np.ndarray, scale: tuple[float, float], out):
    """[h, w, d] -> [out_h, out_w, d] as torch's ``F.interpolate(mode="bicubic",
    scale_factor=scale)`` computes it (align_corners=False): output index i
    reads source coordinate (i + 0.5) / scale - 0.5 (float32, as torch's CPU
    kernel), 4x4 taps around it clamped to the border."""
    h, w, _ = grid.shape

    def source(i, s):
        c = np.float32(1.0 / s) * np.float32(i + 0.5) - np.float32(0.5)
        first = math.floor(c)
        return first, float(c) - first

    result = np.zeros((*out, grid.shape[-1]))
    for i in range(out[0]):
        y, ty = source(i, scale[0])
        for j in range(out[1]):
            x, tx = source(j, scale[1])
            for m in range(-1, 3):
                for n in range(-1, 3):
                    weight = _torch_cubic(ty - m) * _torch_cubic(tx - n)
                    yy, xx = min(max(y + m, 0), h - 1), min(max(x + n, 0), w - 1)
                    result[i, j] += weight * grid[yy, xx]
    return result


@pytest.mark.parametrize("new", [(30, 53), (60, 110), (10, 12)])
def test_dino_pos_interp_matches_torch_bicubic_by_scale_factor(new):
    """DINO's interpolate_pos_encoding: scale factor (n + 0.1) / sqrt(N) per
    axis. 30x53 and 60x110 are the grids of 240x424 and 480x880 frames at
    patch 8; 10x12 downsamples."""
    old = (14, 14)
    pos = np.random.default_rng(5).normal(size=(1, 1 + 14 * 14, 8)).astype("f4")
    got = np.asarray(vit.resample_pos_embed(jnp.asarray(pos), old, new, "dino"))
    scale = ((new[0] + 0.1) / math.sqrt(196), (new[1] + 0.1) / math.sqrt(196))
    want = _torch_bicubic_by_scale(
        pos[0, 1:].reshape(14, 14, 8).astype(float), scale, new
    )
    assert got.shape == (1, 1 + new[0] * new[1], 8)
    np.testing.assert_array_equal(got[0, 0], pos[0, 0])  # [CLS] untouched
    np.testing.assert_allclose(got[0, 1:], want.reshape(-1, 8), atol=1e-5)


def test_pos_interp_is_a_vit_option():
    model = vit.ViT("test/8", image_size=32, pos_interp="dino", rngs=nnx.Rngs(0))
    pos = model.pos_embed[...]
    np.testing.assert_array_equal(
        model.pos_for_grid((5, 7)), vit.resample_pos_embed(pos, (4, 4), (5, 7), "dino")
    )
    other = vit.resample_pos_embed(pos, (4, 4), (5, 7))
    assert not np.allclose(model.pos_for_grid((5, 7)), other, atol=1e-4)
    np.testing.assert_array_equal(model.pos_for_grid((4, 4)), pos)
    with pytest.raises(ValueError, match="pos_interp='area' is not one of"):
        vit.ViT("test/8", image_size=32, pos_interp="area", rngs=nnx.Rngs(0))
