"""Encoder exports and timm-layout interop without torch (numpy only).

A training checkpoint is written in-process with the library's Checkpointer;
its encoder is exported by the CLI and loaded back in a fresh process. The
timm layout is checked against the convolution / fused-qkv arithmetic it
stands for; the PyTorch side itself is in test_interop_timm.py.
"""

import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import TEST_MODEL
from flax import nnx

from siammae_jax import export, weights
from siammae_jax.eval import learning
from siammae_jax.models import vit
from siammae_jax.models.definition import ModelDef
from siammae_jax.weights import checkpoints, exports
from siammae_jax.weights import params as weight_params
from siammae_jax.weights import timm as interop

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _images(size=32, n=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, size, size, 3)).astype(np.float32)


def _perturbed(variant="test/8", image_size=32, seed=0) -> vit.ViT:
    """A random encoder with no zero biases or unit norms left."""
    model = vit.ViT(variant, image_size=image_size, rngs=nnx.Rngs(seed))
    leaves, treedef = jax.tree.flatten(nnx.state(model, nnx.Param))
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [
        x + 0.1 * jax.random.normal(k, x.shape)
        for x, k in zip(leaves, keys, strict=True)
    ]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))
    return model


def _reference_features(params, images):
    model = weight_params.encoder_from(TEST_MODEL, params, "state")
    return np.asarray(model.features(jnp.asarray(images)))


def _python(*args: str) -> subprocess.CompletedProcess:
    """Runs this interpreter with ``args`` in the checkout; it must succeed."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_exports_load_in_a_fresh_process(trained, tmp_path):
    workdir, params = trained
    proc = _python("-m", "siammae_jax.export", f"--checkpoint={workdir}",
                   f"--out={tmp_path / 'orbax'}")  # fmt: skip
    assert "tensors: 100%" in proc.stderr  # the progress bar
    export.export_checkpoint(workdir, tmp_path / "st", "safetensors", progress=False)
    export.export_checkpoint(workdir, tmp_path / "timm", "timm", progress=False)
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["model_args"]["embed_dim"] == 32 and config["architecture"] is None
    images = _images()
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys, numpy as np, jax.numpy as jnp, siammae_jax\n"
        "d = sys.argv[1]; x = jnp.asarray(np.load(d + '/images.npy'))\n"
        "paths = [d + '/orbax', d + '/st/encoder.safetensors', d + '/timm']\n"
        "feats = [np.asarray(siammae_jax.load_encoder(p).features(x)) for p in paths]\n"
        "np.save(d + '/features.npy', np.stack(feats))\n"
    )
    _python("-c", script, str(tmp_path))
    want = _reference_features(params, images)
    for got in np.load(tmp_path / "features.npy"):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_checkpoint_params_from_a_relative_path_and_the_probe(trained, monkeypatch):
    """The whole model restores from a path relative to the working directory
    (orbax itself wants absolute ones), and benchmarks/learning_probe.py reads
    it: its per-gap row repeats the learning measures computed here."""
    workdir, params = trained
    monkeypatch.chdir(workdir.parent)
    restored, config, step_dir = checkpoints.load_params(workdir.name)
    model_cfg = config["model"]
    assert step_dir == workdir / "checkpoints" / "5"
    assert model_cfg["encoder"] == "test/8" and set(restored) >= {"encoder"}
    for got, want in zip(
        jax.tree.leaves(restored["encoder"]), jax.tree.leaves(params), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import learning_probe

    table = learning_probe.probe([workdir.name], [2], videos=2, seed=4).splitlines()
    cells = [c.strip() for c in table[-1].strip("|").split("|")]
    assert cells[0] == "2" and len(cells) == 9
    model_def = ModelDef.from_config(model_cfg)

    def apply(f1, f2, key, attention):
        return model_def.apply(
            restored, model_def.buffers, f1, f2, key, return_attention=attention
        )

    held = learning.heldout_pairs(4, 2, 32, gap=2)
    past = learning.past_frame_use(apply, held, jax.random.key(0), 8)
    assert cells[1:4] == [f"{v:.3f}" for v in past]


def test_reading_checkpoints_and_exports_makes_no_deprecated_orbax_call(
    trained, tmp_path, monkeypatch
):
    """orbax reports a legacy call (e.g. a restore without ``args``) as a
    ``/jax/orbax/deprecation/...`` monitoring event, not as a warning."""
    events = []
    record = jax.monitoring.record_event

    def spy(event, **kwargs):
        events.append(event)
        return record(event, **kwargs)

    monkeypatch.setattr(jax.monitoring, "record_event", spy)
    workdir, _ = trained
    model, model_config = weights.load(workdir)
    out = exports.save(tmp_path / "x", model, model_config, what="model")
    weights.load(out)
    assert [e for e in events if "deprecation" in e] == []
    # The spy sees orbax's events: the legacy form of the same read is one.
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
        checkpointer.restore(out / "config")
    assert "/jax/orbax/deprecation/checkpointer_legacy_args" in events


def test_save_encoder_from_params_and_model(trained, tmp_path):
    _, params = trained
    cfg = dict(TEST_MODEL)
    exports.save(tmp_path / "a", params, cfg)
    images = jnp.asarray(_images())
    want = _reference_features(params, images)
    np.testing.assert_allclose(
        weights.load_encoder(tmp_path / "a").features(images), want, atol=1e-6
    )
    # A model with a learned (imported) position embedding keeps it.
    model = _perturbed()
    model.pos_embed.set_value(model.pos_embed[...] + 0.3)
    exports.save(tmp_path / "b", model, cfg)
    again = weights.load_encoder(tmp_path / "b")
    np.testing.assert_array_equal(again.pos_embed[...], model.pos_embed[...])
    with pytest.raises(FileNotFoundError, match="no weights found"):
        weights.load_encoder(tmp_path)


def test_timm_layout_is_the_conv_and_fused_qkv():
    """timm's arithmetic, written out in numpy, gives our layers' outputs: the
    [D, 3, p, p] patch convolution; the fused qkv rows q, k, v, each indexed
    head-major (h * head_dim + d); and ``attn.proj`` applied to the heads
    concatenated head-major. Probed with distinct values, so a swapped
    (heads, head_dim) order cannot hide (it would survive a round trip)."""
    model = _perturbed()
    state = interop.to_timm_state_dict(model)
    assert state["patch_embed.proj.weight"].shape == (32, 3, 8, 8)
    assert state["blocks.1.attn.qkv.weight"].shape == (96, 32)
    assert state["pos_embed"].shape == (1, 17, 32)
    assert not any(k.startswith("head") for k in state)
    x = _images()
    # Patch (row 1, col 2) through the [D, 3, p, p] convolution weight.
    w, b = state["patch_embed.proj.weight"], state["patch_embed.proj.bias"]
    conv = np.einsum("dcij,ijc->d", w, x[0, 8:16, 16:24]) + b
    ours = model.patch_embed(vit.patchify(jnp.asarray(x), 8))[0, 1 * 4 + 2]
    np.testing.assert_allclose(conv, ours, atol=1e-5)
    rng = np.random.default_rng(1)
    for i, block in enumerate(model.blocks):
        attn = block.attn
        heads, hd = attn.num_heads, attn.head_dim
        assert (heads, hd) == (2, 16)
        # Fused qkv rows: q, k, v, each (heads, head_dim) flattened.
        t = rng.normal(size=(1, 32)).astype(np.float32)
        qkv = t @ state[f"blocks.{i}.attn.qkv.weight"].T
        qkv = (qkv + state[f"blocks.{i}.attn.qkv.bias"]).reshape(3, heads, hd)
        for j, layer in enumerate((attn.query, attn.key, attn.value)):
            got = np.asarray(layer(jnp.asarray(t)))[0]  # [heads, head_dim]
            np.testing.assert_allclose(got, qkv[j], atol=1e-5)
        # Output projection: timm's x.transpose(1, 2).reshape(B, N, C) puts head
        # h's feature d at h * head_dim + d, then y = x @ proj.weight.T + bias.
        o = rng.normal(size=(1, heads, hd)).astype(np.float32)
        flat = o.reshape(1, heads * hd)
        want = flat @ state[f"blocks.{i}.attn.proj.weight"].T
        want = want + state[f"blocks.{i}.attn.proj.bias"]
        np.testing.assert_allclose(attn.out(jnp.asarray(o)), want, atol=1e-5)


def test_timm_round_trip_and_safetensors(tmp_path):
    model = _perturbed()
    state = interop.to_timm_state_dict(model)
    back = interop.from_timm_state_dict(state)  # variant and size from shapes
    assert (back.variant, back.grid) == ("test/8", (4, 4))
    x = jnp.asarray(_images(size=48))  # other input size: resampled the same
    np.testing.assert_array_equal(back.features(x), model.features(x))
    interop.save_safetensors(tmp_path / "w.safetensors", state)
    loaded = interop.load_weights(tmp_path / "w.safetensors")
    assert set(loaded) == set(state)
    np.testing.assert_array_equal(
        interop.load_timm_encoder(tmp_path / "w.safetensors").features(x),
        model.features(x),
    )


def test_imported_pos_embed_replaces_ours_and_is_resampled():
    state = interop.to_timm_state_dict(_perturbed())
    rng = np.random.default_rng(0)
    state["pos_embed"] = rng.normal(size=(1, 17, 32)).astype(np.float32)
    model = interop.from_timm_state_dict(state)
    np.testing.assert_array_equal(model.pos_embed[...], state["pos_embed"])
    wide = interop.from_timm_state_dict(state, "test/8", image_size=(32, 48))
    assert wide.pos_embed[...].shape == (1, 1 + 4 * 6, 32)
    np.testing.assert_array_equal(wide.pos_embed[0, 0], state["pos_embed"][0, 0])
    want = vit.resample_pos_embed(jnp.asarray(state["pos_embed"]), (4, 4), (4, 6))
    np.testing.assert_allclose(wide.pos_embed[...], want, atol=1e-6)


def test_wrappers_and_prefixes_of_released_checkpoints():
    state = interop.to_timm_state_dict(_perturbed())
    dino = {"teacher": {f"backbone.{k}": v for k, v in state.items()}}
    dino["teacher"]["head.mlp.0.weight"] = np.zeros((4, 32), np.float32)
    mae = {"model": {f"module.{k}": v for k, v in state.items()}}
    mae["model"]["mask_token"] = np.zeros((1, 1, 32), np.float32)
    for wrapped in (dino, mae, {"state_dict": state}):
        assert set(interop.clean_state_dict(wrapped)) == set(state)
    with pytest.raises(ValueError, match="no state dict of tensors.*'epoch'"):
        interop.clean_state_dict({"epoch": 3, "weights": [1, 2]})


def test_infer_variant_from_shapes():
    def shapes(width, depth, patch):
        zeros = np.zeros((), np.float32)
        state = {
            "patch_embed.proj.weight": np.broadcast_to(zeros, (width, 3, patch, patch))
        }
        for i in range(depth):
            state[f"blocks.{i}.mlp.fc1.weight"] = np.broadcast_to(
                zeros, (4 * width, width)
            )
        return state

    assert interop.infer_variant(shapes(384, 12, 16)) == "S/16"
    assert interop.infer_variant(shapes(768, 12, 16)) == "B/16"
    assert interop.infer_variant(shapes(384, 12, 8)) == "S/8"
    with pytest.raises(ValueError, match="no named ViT size.*--weights_variant"):
        interop.infer_variant(shapes(256, 6, 16))


def test_mismatched_architecture_lists_the_keys():
    state = interop.to_timm_state_dict(_perturbed())
    mismatch = r"look like 'test/8'.*wrong shapes \['blocks.0.attn.proj.bias: \(32,\) != \(192,\)'"
    with pytest.raises(ValueError, match=mismatch):
        interop.from_timm_state_dict(state, "demo/8")
    broken = dict(state)
    del broken["blocks.1.norm1.weight"]
    broken["blocks.0.ls1.gamma"] = np.ones(32, np.float32)
    broken["patch_embed.proj.bias"] = np.ones(31, np.float32)
    with pytest.raises(ValueError) as err:
        interop.from_timm_state_dict(broken, "test/8", source="mine.safetensors")
    message = str(err.value)
    assert "mine.safetensors" in message
    assert "missing keys ['blocks.1.norm1.weight']" in message
    assert "unexpected keys ['blocks.0.ls1.gamma']" in message
    assert "patch_embed.proj.bias: (31,) != (32,)" in message


class _Payload:
    """Unpickling this writes a marker file: proves nothing was unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def test_corrupt_files_are_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(ValueError, match="bad.safetensors: not a valid safetensors"):
        interop.load_weights(bad)
    with pytest.raises(ValueError, match="unknown weights format '.npz'"):
        (tmp_path / "w.npz").write_bytes(b"")
        interop.load_weights(tmp_path / "w.npz")


def _evil_pickle(tmp_path) -> tuple[Path, Path]:
    """(a .pt file whose unpickling touches a marker file, the marker)."""
    marker = tmp_path / "unpickled"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"cls_token": _Payload(str(marker))}))
    return evil, marker


def _fake_torch(calls: list) -> types.ModuleType:
    """A stand-in for torch's loader: ``load(..., weights_only=True)`` refuses
    every pickled global, as torch's WeightsUnpickler refuses all but tensors;
    ``weights_only=False`` unpickles (and so runs the payload)."""

    class _WeightsOnly(pickle.Unpickler):
        def find_class(self, module, name):
            raise pickle.UnpicklingError(
                "Weights only load failed.\n WeightsUnpickler error: "
                f"Unsupported global: GLOBAL {module}.{name}"
            )

    def load(f, map_location=None, weights_only=None):
        calls.append(weights_only)
        if weights_only:
            return _WeightsOnly(f).load()
        return pickle.load(f)

    torch = types.ModuleType("torch")
    torch.load = load
    torch.Tensor = type("Tensor", (), {})
    return torch


def test_pickle_files_are_refused_without_running_them(tmp_path, monkeypatch):
    """A torch file holding pickled code is read only with weights_only=True and
    refused, and the payload never runs (checked without torch: a stand-in
    loader unpickles unless weights_only=True); without torch the file is not
    read at all."""
    evil, marker = _evil_pickle(tmp_path)
    calls = []
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(calls))
    with pytest.raises(ValueError, match="refused.*Unsupported global.*arbitrary code"):
        interop.load_weights(evil)
    assert calls == [True]
    assert not marker.exists()
    monkeypatch.setitem(sys.modules, "torch", None)  # as without the extra
    with pytest.raises(ImportError, match="needs torch.*weights_only=True"):
        interop.load_weights(evil)
    assert not marker.exists()


def test_pickle_files_are_refused_by_real_torch(tmp_path):
    pytest.importorskip(
        "torch",
        reason="torch not installed (the torch extra); the refusal is "
        "also checked with a stand-in loader",
    )
    evil, marker = _evil_pickle(tmp_path)
    with pytest.raises(ValueError, match="refused.*arbitrary code"):
        interop.load_weights(evil)
    assert not marker.exists()


def test_davis_eval_from_timm_weights(tmp_path):
    from siammae_jax.data import synthetic

    synthetic.write_dataset(tmp_path, videos=2, frames=6, size=(32, 32), progress=False)
    timm_file = tmp_path / "vit_test8.safetensors"
    interop.save_safetensors(timm_file, interop.to_timm_state_dict(_perturbed()))
    out = tmp_path / "out"
    proc = _python("-m", "siammae_jax.eval", "davis", f"--weights={timm_file}",
                   f"--data={tmp_path / 'DAVIS'}", f"--out={out}", "--protocol=crw",
                   "--config.davis.topk=5")  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    weights = summary["weights"]
    assert (weights["kind"], weights["path"]) == ("timm", str(timm_file))
    assert weights["variant"] == "test/8" and len(weights["file_sha256"]) == 64
    assert summary["protocol"]["name"] == "crw"
    assert summary["protocol"]["departures"] == {"topk": {"protocol": 10, "used": 5}}
    assert summary["inputs"]["sizes"] == {
        "synth_0000": [32, 32],
        "synth_0001": [32, 32],
    }
    # Each printed score names its protocol on its own line.
    jf = summary["scores"]["J&F-Mean"]
    assert f"J&F-Mean     {jf:.3f} [crw]" in proc.stdout, proc.stdout
    assert "davis [protocol crw + departures: topk]" in proc.stdout
    assert 0.0 <= jf <= 1.0
    assert (out / "global_results-val.csv").exists()
