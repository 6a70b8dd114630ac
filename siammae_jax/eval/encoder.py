"""Frozen encoders for evaluation: from a training checkpoint or random init.

``load_checkpoint_encoder`` accepts a training workdir (its newest complete
step is used), a ``<workdir>/checkpoints`` folder or one step folder; the
model is rebuilt from the config saved with that step, so nothing else is
needed. ``random_encoder`` gives the random-init baseline of a named size.
``FeatureExtractor`` turns frames into L2-normalised patch features with one
jit-compiled function per input size, batched over frames.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from siammae_jax.data import pairs
from siammae_jax.models import vit

# Short names accepted by ``--random`` (and the training configs' names).
NAMED = {"vits16": "S/16", "vits8": "S/8", "vitb16": "B/16", "vitl16": "L/16"}


def resolve_step_dir(path: str | epath.Path) -> epath.Path:
    """The step folder of a workdir, a checkpoints folder or a step folder.

    Raises:
      FileNotFoundError: nothing usable at ``path`` (named in the message).
    """
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {path} does not exist.")
    if (path / "state").exists():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").exists() else path
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
    steps = [s for s in steps if (folder / str(s) / "state").exists()]
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint step under {folder}.")
    return folder / str(max(steps))


def saved_model_config(step_dir: epath.Path) -> dict:
    """The ``model`` section of the config saved with a training step."""
    config_dir = step_dir / "config"
    files = list(config_dir.glob("*")) if config_dir.exists() else []
    if not files:
        raise FileNotFoundError(f"{config_dir}: no saved config in this checkpoint.")
    return json.loads(files[0].read_text())["model"]


def build_encoder(encoder: str, image_size) -> vit.ViT:
    """A float32 ViT of a named variant (abstract until parameters are set)."""
    return vit.ViT(encoder, image_size=image_size, rngs=nnx.Rngs(0))


def set_params(model: vit.ViT, params: dict, source: str) -> vit.ViT:
    """Loads a pure-dict parameter tree into ``model``, checking every shape.

    Raises:
      ValueError: listing missing, unexpected and mis-shaped keys, naming
        ``source`` (the file the parameters came from).
    """
    want = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    flat_want = dict(flatten(want))
    flat_got = dict(flatten(params))
    missing = sorted(set(flat_want) - set(flat_got))
    extra = sorted(set(flat_got) - set(flat_want))
    shapes = sorted(
        f"{k}: {np.shape(flat_got[k])} != {np.shape(v)}"
        for k, v in flat_want.items()
        if k in flat_got and np.shape(flat_got[k]) != np.shape(v)
    )
    if missing or extra or shapes:
        raise ValueError(
            f"{source}: parameters do not fit encoder {model.variant!r}: "
            f"missing {missing[:10]}, unexpected {extra[:10]}, wrong shapes {shapes[:10]}"
        )
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, _like(params, want))
    nnx.update(model, state)
    return model


def _like(tree, template):
    """``tree`` with the key types of ``template`` (orbax stores list indices
    as strings) and arrays as jax arrays."""
    if isinstance(template, dict):
        return {
            k: _like(tree[k] if k in tree else tree[str(k)], v)
            for k, v in template.items()
        }
    return jnp.asarray(tree)


def flatten(tree, sep: str = "/", prefix: str = ""):
    """Yields ``(path, leaf)`` of a nested dict, keys joined with ``sep``."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from flatten(v, sep, f"{prefix}{k}{sep}")
    else:
        yield prefix[: -len(sep)], tree


def load_checkpoint_params(path: str | epath.Path) -> tuple[dict, dict, epath.Path]:
    """(all model parameters, saved model config, state folder) of a training
    checkpoint (a workdir, its checkpoints folder or a step folder), restored
    onto this process's first device."""
    path = epath.Path(path)
    if "://" not in str(path):  # orbax wants absolute local paths
        path = path.resolve()
    step_dir = resolve_step_dir(path)
    model_cfg = saved_model_config(step_dir)
    checkpointer = ocp.StandardCheckpointer()
    state_dir = step_dir / "state"
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
        checkpointer.metadata(state_dir).item_metadata,
    )
    return checkpointer.restore(state_dir, target)["params"], model_cfg, state_dir


def load_checkpoint_encoder(path: str | epath.Path) -> tuple[vit.ViT, dict]:
    """The encoder of a training checkpoint, and the model config saved with it."""
    params, model_cfg, state_dir = load_checkpoint_params(path)
    model = build_encoder(model_cfg["encoder"], model_cfg["image_size"])
    return set_params(model, params["encoder"], str(state_dir)), model_cfg


def random_encoder(size: str, image_size: int = 224, seed: int = 0) -> vit.ViT:
    """A randomly initialised encoder (``vits16`` or ``S/16``): the baseline."""
    variant = NAMED.get(size, size)
    return vit.ViT(variant, image_size=image_size, rngs=nnx.Rngs(seed))


class FeatureExtractor:
    """uint8 frames [N, H, W, 3] -> L2-normalised patch features [N, h, w, D].

    Frames are ImageNet-normalised, encoded in batches of ``batch_size`` (the
    last batch padded, so each input size compiles once) in float32.
    """

    def __init__(self, model: vit.ViT, batch_size: int = 8):
        self.patch = model.patch
        self.batch_size = batch_size
        graphdef, state = nnx.split(model)

        @jax.jit
        def features(state, frames):
            x = (frames.astype(jnp.float32) / 255.0 - pairs.MEAN) / pairs.STD
            return nnx.merge(graphdef, state).features(x)

        self._state = state
        self._features: Callable = features

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        h, w = frames.shape[1:3]
        if h % self.patch or w % self.patch:
            raise ValueError(
                f"input size {h}x{w} is not a multiple of the patch size {self.patch}."
            )
        out = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start : start + self.batch_size]
            pad = self.batch_size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
            feats = np.asarray(self._features(self._state, chunk))
            out.append(feats[: self.batch_size - pad])
        return np.concatenate(out)
