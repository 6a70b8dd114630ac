"""Shared test setup: 8 fake CPU devices, tiny models built once per session."""

import atexit
import os
import shutil
import tempfile

# Must happen before jax is imported anywhere (multi-device tests use it).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# One persistent compilation cache for the session, shared by this process and
# every `python -m siammae_jax...` a test starts (they inherit the environment):
# a program compiled once is read back by the next test or process that
# compiles the same program (same shapes, shardings and flags), not compiled
# again. Compiles dominate this suite's time on CPU; results are unchanged
# (the cached executable is the one XLA built). Emptied at the session's end.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="siammae-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from siammae_jax.models import SiamMAE  # noqa: E402

# The size every model test compiles: 32x32 frames, 4x4 patches of 8 px.
# The test models keep this library's earlier visible count and variance:
# with MAE's int rule, 16 patches at the default 95% masking keep none.
OLD_RULES = dict(visible_rule="round", norm_pix_ddof=0)
TINY = dict(
    encoder="test/8",
    image_size=32,
    decoder_dim=32,
    decoder_depth=2,
    decoder_heads=2,
    **OLD_RULES,
)


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny SiamMAE: cross_self decoder, 50% masking (8 of the 16 f2 patches visible)."""
    return SiamMAE(**TINY, mask_ratio=0.5, rngs=nnx.Rngs(0))


@pytest.fixture(scope="session")
def tiny_apply(tiny_model):
    """Jitted ``(f1, f2, key) -> Output`` of ``tiny_model`` (compiled once per shape)."""
    graphdef, state = nnx.split(tiny_model)

    @jax.jit
    def apply(f1, f2, key):
        return nnx.merge(graphdef, state)(f1, f2, key, return_attention=True)

    return apply


# A test-size SiamMAE config (``model`` section) for checkpoint and export tests.
TEST_MODEL = {
    "encoder": "test/8",
    "image_size": 32,
    "decoder_dim": 32,
    "decoder_depth": 2,
    "decoder_heads": 2,
    **OLD_RULES,
}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(workdir, encoder params) of a step-5 checkpoint written by the training
    code (``TEST_MODEL``, parameters moved off their init so nothing is default)."""
    import grain
    import jax.numpy as jnp

    from siammae_jax.configs import siammae as siammae_config
    from siammae_jax.models.definition import ModelDef
    from siammae_jax.train import checkpoint, optim
    from siammae_jax.train import mesh as mesh_lib
    from siammae_jax.train import state as state_lib

    workdir = tmp_path_factory.mktemp("run")
    config = siammae_config.get_config("tiny")
    config.model.update(TEST_MODEL)
    model_def = ModelDef.from_config(config.model)
    mesh = mesh_lib.make_mesh(config.mesh.to_dict(), jax.devices()[:1])
    tx = optim.make_optimizer(1e-3)
    state = state_lib.create_state(model_def, tx, mesh, seed=3)
    noisy = jax.tree.map(
        lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size)).reshape(x.shape), state.params
    )
    state = state.replace(params=noisy)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", every=1, async_save=False)
    data = iter(grain.MapDataset.range(4).to_iter_dataset())
    ckpt.save(5, state, data, config, force=True)
    ckpt.close()
    return workdir, jax.device_get(state.params["encoder"])


# The test build of the package's `video_folder` TFDS builder (frames at 32 px).
TFDS_VIDEOS = "video_folder/s32"


@pytest.fixture(scope="session")
def tfds_videos(tmp_path_factory):
    """``(data_dir, manual_dir)`` of ``video_folder/s32`` built by the ``tfds
    build`` command line (Beam DirectRunner, 2 worker processes) from 8
    synthetic videos (12 frames, 32x32) plus a corrupt video, an empty one and
    a text file, which the build must skip and list."""
    import subprocess
    import sys
    from pathlib import Path

    from siammae_jax.data import synthetic

    root = tmp_path_factory.mktemp("tfds")
    synthetic.write_dataset(
        root / "synthetic", videos=8, frames=12, size=(32, 32), progress=False
    )
    manual = root / "manual"
    (root / "synthetic" / "videos").rename(manual)
    good = sorted(manual.iterdir())
    (manual / "broken.mp4").write_bytes(good[0].read_bytes()[:300])
    (manual / "empty.mp4").write_bytes(b"")
    (manual / "notes.txt").write_text("not a video\n")
    command = [
        str(Path(sys.executable).parent / "tfds"),
        "build",
        "video_folder",
        "--config",
        '{"name": "s32", "short_side": 32}',
        "--imports",
        "siammae_jax.data.tfds",
        f"--manual_dir={manual}",
        f"--data_dir={root / 'data'}",
        "--file_format=array_record",
        "--beam_pipeline_options=runner=DirectRunner,direct_num_workers=2,"
        "direct_running_mode=multi_processing",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root / "data", manual
