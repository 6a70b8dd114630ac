"""Online evaluation: DAVIS-style J&F of the encoder while it trains.

Every ``eval.every`` steps and at the end of a run, the train state's own
encoder parameters (on the devices, never copied to the host) encode the
held-out sequences on the training mesh: each batch of frames is split over
the data-parallel axes and the features are gathered. Label propagation,
predicted masks and scores are those of ``python -m siammae_jax.eval davis``
(``eval.tasks.davis_sequence``, ``datasets.davis_score``) under the protocol
``config.eval.protocol`` with the fields of ``config.eval.davis`` that differ
from the ``siammae`` protocol as departures (see ``eval.protocols.resolve``),
so a checkpoint scored there gets the same J&F. Each evaluation writes its
``summary.json`` (protocol, inputs, step, version, commit) beside its
predictions.

Every process encodes and propagates every sequence (they must take part in
each sharded encoder call anyway); process 0 writes the predictions to
``WORKDIR/eval/davis`` (a local temporary folder for remote workdirs), scores
them and sends the scores to the others, so that all of them hand the same
metrics to the checkpoint manager's best-J&F policy. The folder holds the latest
evaluation's predictions, CSVs and ``overlays/``; the random-init twin's are in
its ``random_init/`` sub-folder.

``eval.max_videos`` takes the first sequences of the split; ``eval.max_seconds``
bounds the first evaluation of a run (normally the random-init encoder's, at
step 0), which fixes the sequences that every later evaluation of the run
scores, so the J&F curve compares like with like. The fixed list is kept in
``WORKDIR/eval/davis_sequences.json``, so a resumed run scores the same
sequences (unless the held-out settings changed, which is logged).

``eval.data=synthetic`` writes the held-out set into ``WORKDIR/eval_synthetic``
once, and again only when its settings (videos, frames, size, seed, style) no
longer match what is there.

A failure (no such root, an unreadable sequence, a scoring error) is logged
and counted in ``eval/davis/failures``; it never stops training.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from siammae_jax.data import pairs, synthetic
from siammae_jax.datasets import davis, davis_score
from siammae_jax.datasets import summary as summary_lib
from siammae_jax.eval import encoder, pictures, protocols, provenance, tasks
from siammae_jax.models.definition import ModelDef
from siammae_jax.train import mesh as mesh_lib
from siammae_jax.weights import params as weight_params

PREFIX = "eval/davis/"
RANDOM_INIT = "_random_init"  # suffix of the random-init twin's scores
OUT_DIR = "eval/davis"  # predictions, CSVs and overlays/, in the workdir
SEQUENCES_FILE = "eval/davis_sequences.json"  # the fixed list, in the workdir
TWIN_DIR = "random_init"  # the random-init twin's, under OUT_DIR
# Scores logged, from davis_score's global row.
SCORES = {"J&F": "J&F-Mean", "J": "J-Mean", "F": "F-Mean"}


@dataclasses.dataclass
class Result:
    """One evaluation: scalars for the logger, overlay pictures, and the J&F
    (None when nothing could be scored)."""

    scalars: dict[str, float]
    images: dict[str, np.ndarray]
    jf: float | None


class OnlineDavis:
    """Scores encoder parameters on a held-out DAVIS-layout set.

    Args:
      config: the training config (sections ``eval``, ``model``, ``data``).
      model_def: the run's model (for the random-init twin).
      mesh: the training mesh.
      workdir: the run's workdir.
      progress: show a bar over the sequences (process 0).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        model_def: ModelDef,
        mesh: jax.sharding.Mesh,
        workdir: epath.Path,
        progress: bool = False,
    ):
        self.cfg = config.eval
        self.protocol = config.eval.get("protocol", "siammae")
        self.section, self.departures = protocols.resolve(
            self.protocol, "davis", config.eval.davis
        )
        self.seed = config.seed
        self.model_def = model_def
        self.mesh = mesh
        self.is_main = jax.process_index() == 0
        self.progress = progress and self.is_main
        local = "://" not in str(workdir)
        self.out = (
            workdir / OUT_DIR
            if local and self.is_main
            else epath.Path(tempfile.mkdtemp(prefix="siammae_eval_"))
        )
        self.root = self._data_root(config, workdir, local)
        if any(self.section.pre_resize):  # The protocol scores a resized copy.
            h, w = self.section.pre_resize
            copy = tempfile.mkdtemp(prefix=f"siammae_davis_{h}x{w}_")
            self.root = epath.Path(
                davis.resized_copy(self.root, copy, self.section.split, (h, w))
            )
        self._names_file = workdir / SEQUENCES_FILE
        self._settings = {
            "data": self.cfg.data,
            "split": self.section.split,
            "max_videos": self.cfg.max_videos,
            "max_seconds": self.cfg.max_seconds,
        }
        if self.cfg.data == "synthetic":
            self._settings["synthetic"] = self._synthetic_settings(config)
        # Fixed by the first evaluation of the run (or of the run it resumes).
        self.names: list[str] | None = self._fixed_names()
        self.failures = 0
        vit = weight_params.build_encoder(config.model.encoder, config.model.image_size)
        self.patch = vit.patch
        self.variant = vit.variant
        data_parallel = math.prod(mesh.shape[a] for a in mesh_lib.BATCH_AXES)
        self.batch = math.ceil(self.cfg.batch_size / data_parallel) * data_parallel
        self._frames_sharding = mesh_lib.batch_sharding(mesh)
        self._features = _features_fn(
            vit, NamedSharding(mesh, PartitionSpec()), self.section
        )

    # ---------------------------------------------------------------- data

    def _data_root(
        self, config: ml_collections.ConfigDict, workdir: epath.Path, local: bool
    ) -> epath.Path:
        """The DAVIS root; ``synthetic`` writes the held-out set first."""
        e = self.cfg
        if e.data != "synthetic":
            return epath.Path(e.data)
        # A local workdir is one filesystem for every process: process 0 writes.
        base = (
            workdir / "eval_synthetic"
            if local
            else epath.Path(tempfile.mkdtemp(prefix="siammae_heldout_"))
        )
        want = self._synthetic_settings(config)
        if (self.is_main or not local) and _held_out_settings(base) != want:
            if (base / synthetic.MARKER).exists():
                logging.warning(
                    "online eval: the held-out set in %s was written with other "
                    "settings (%s); writing it again with %s",
                    base,
                    _held_out_settings(base),
                    want,
                )
            logging.info(
                "writing %d held-out synthetic videos (seed %d, style %s) to %s",
                e.max_videos,
                e.synthetic_seed,
                e.synthetic_style,
                base,
            )
            synthetic.write_dataset(
                base,
                videos=want["videos"],
                frames=want["frames"],
                size=tuple(want["size"]),
                seed=want["seed"],
                progress=False,
                style=want["style"],
            )
        if local:
            mesh_lib.barrier("eval_synthetic")
        return base / "DAVIS"

    def _synthetic_settings(self, config: ml_collections.ConfigDict) -> dict:
        e, size = self.cfg, config.model.image_size
        return {
            "videos": e.max_videos,
            "frames": e.synthetic_frames,
            "size": [size, size],
            "seed": e.synthetic_seed,
            "style": e.synthetic_style,
        }

    def _fixed_names(self) -> list[str] | None:
        """The list an earlier part of this run fixed, if the settings agree."""
        try:
            if not self._names_file.exists():
                return None
            saved = json.loads(self._names_file.read_text())
        except (OSError, ValueError) as e:
            logging.warning("online eval: ignoring %s: %s", self._names_file, e)
            return None
        if saved.get("settings") != self._settings:
            logging.warning(
                "online eval: the held-out settings changed since %s was written "
                "(%s, now %s); the next evaluation fixes a new list",
                self._names_file,
                saved.get("settings"),
                self._settings,
            )
            return None
        logging.info(
            "online eval: scoring the %d sequences this run fixed (%s)",
            len(saved["names"]),
            self._names_file,
        )
        return list(saved["names"])

    def _extract(self, params: Any) -> tasks.Extractor:
        """uint8 frames [T, H, W, 3] -> features [T, h, w, D] with ``params``."""

        def encode(chunk: np.ndarray) -> np.ndarray:
            x = jax.make_array_from_callback(
                chunk.shape, self._frames_sharding, chunk.__getitem__
            )
            return np.asarray(self._features(params, x).addressable_data(0))

        def extract(frames: np.ndarray) -> np.ndarray:
            return encoder.in_batches(encode, frames, self.batch)

        return extract

    # ----------------------------------------------------------- evaluation

    def random_init_params(self) -> Any:
        """The encoder parameters a fresh run starts from (the random-init
        twin), placed like the train state's."""
        shardings = jax.tree.map(
            lambda spec: NamedSharding(self.mesh, spec),
            self.model_def.param_specs["encoder"],
        )

        def random_init_encoder(key):
            return self.model_def.init_params(key)["encoder"]

        init = jax.jit(random_init_encoder, out_shardings=shardings)
        return init(jax.random.key(self.seed))

    def __call__(self, params: Any, step: int, *, random_init: bool = False) -> Result:
        """Scores the encoder ``params`` (``state.params["encoder"]``).

        Never raises for bad data: failures are logged and counted.
        """
        suffix = RANDOM_INIT if random_init else ""
        out = self.out / TWIN_DIR if random_init else self.out
        start = time.perf_counter()
        try:
            names = self._sequences()
        except (OSError, ValueError) as e:
            return self._failed(f"no sequences to evaluate: {e}", start)
        done, images = [], {}
        inputs = provenance.Inputs()
        extract = self._extract(params)
        bar = tqdm(
            names,
            desc=f"eval {'random init' if random_init else f'step {step}'}",
            disable=not self.progress,
            leave=False,
        )
        for seq in bar:
            try:
                s, masks = tasks.davis_sequence(
                    extract, self.patch, self.root, seq, self.section, inputs
                )
            except (OSError, ValueError) as e:
                self.failures += 1
                logging.warning("online eval: sequence %s failed: %s", seq, e)
                continue
            if self.is_main:
                davis.write_masks(out, seq, s.frame_names, masks)
                if len(images) < self.cfg.overlays:
                    strip = tasks.overlay_strip(s.frames, masks)
                    images[f"{PREFIX}{seq}{suffix}"] = strip
                    (out / "overlays").mkdir(parents=True, exist_ok=True)
                    pictures.save(out / "overlays" / f"{seq}.png", strip)
            done.append(seq)
            if self.names is None and _agree(
                time.perf_counter() - start > self.cfg.max_seconds
            ):
                break
        bar.close()
        if self.names is None and done:  # (nothing done: the next one tries again)
            self._fix(names, done)
        scores = self._score(out, done)
        seconds = time.perf_counter() - start
        if self.is_main and scores is not None:
            self._write_summary(out, scores, inputs, step, random_init)
        scalars = {
            f"{PREFIX}videos{suffix}": len(done),
            f"{PREFIX}failures": self.failures,
            f"{PREFIX}seconds{suffix}": seconds,
        }
        if scores is None:
            return Result(scalars, images, None)
        scalars.update({f"{PREFIX}{k}{suffix}": v for k, v in scores.items()})
        logging.info(
            "online eval at step %d%s: J&F %.4f (J %.4f, F %.4f) on %d sequences "
            "of %s in %.1f s",
            step,
            " (random-init encoder)" if random_init else "",
            scores["J&F"],
            scores["J"],
            scores["F"],
            len(done),
            self.root,
            seconds,
        )
        return Result(scalars, images, scores["J&F"])

    def _sequences(self) -> list[str]:
        if self.names is not None:
            return self.names
        names = davis.read_set(self.root, self.section.split)
        if not names:
            raise ValueError(f"split {self.section.split!r} of {self.root} is empty")
        return names[: self.cfg.max_videos]

    def _fix(self, names: list[str], done: list[str]) -> None:
        """The first evaluation fixes the sequences of every later one."""
        self.names = done
        if self.is_main:
            self._names_file.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"settings": self._settings, "names": done}, indent=1)
            self._names_file.write_text(text + "\n")
        if len(done) < len(names):
            logging.warning(
                "online eval: %d of %d sequences fit eval.max_seconds=%s; every "
                "evaluation of this run scores those %d",
                len(done),
                len(names),
                self.cfg.max_seconds,
                len(done),
            )

    def _score(self, out: epath.Path, done: list[str]) -> dict[str, float] | None:
        """Process 0 scores its predictions; every process gets the scores."""
        values = np.full(len(SCORES), np.nan)
        if self.is_main and done:
            try:
                split = self.section.split
                row, rows = davis_score.score(
                    self.root, out, split, progress=False, names=done
                )
                davis_score.write_csvs(out, row, rows, split)
                values = np.array([row[c] for c in SCORES.values()])
            except (OSError, ValueError) as e:
                logging.warning("online eval: scoring failed: %s", e)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            # (float32 on the wire unless x64 is on: ~1e-8 on a J&F)
            values = np.asarray(multihost_utils.broadcast_one_to_all(values))
        if np.isnan(values).any():
            self.failures += bool(done)
            return None
        return dict(zip(SCORES, (float(v) for v in values), strict=True))

    def _write_summary(
        self, out: epath.Path, scores: dict, inputs, step: int, random_init: bool
    ) -> None:
        """``out/summary.json``: the offline CLI's record for this evaluation."""
        protocol = provenance.protocol_record(
            self.protocol, self.section.to_dict(), self.departures
        )
        kind = "random-init twin" if random_init else "train state"
        result = provenance.record(
            "davis",
            {SCORES[k]: v for k, v in scores.items()},
            protocol,
            inputs,
            {"kind": kind, "step": step, "variant": self.variant},
            data=str(self.root),
        )
        summary_lib.write_json(out / "summary.json", result)

    def _failed(self, message: str, start: float) -> Result:
        self.failures += 1
        logging.warning("online eval: %s (training goes on)", message)
        scalars = {
            f"{PREFIX}failures": self.failures,
            f"{PREFIX}seconds": time.perf_counter() - start,
        }
        return Result(scalars, {}, None)


def _held_out_settings(base: epath.Path) -> dict | None:
    """The settings a synthetic held-out set in ``base`` was written with."""
    try:
        m = json.loads((base / synthetic.MARKER).read_text())
        return {
            "videos": len(m["names"]),
            "frames": m["frames"],
            "size": list(m["size"]),
            "seed": m["seed"],
            "style": m.get("style", "default"),
        }
    except (OSError, ValueError, KeyError):
        return None


def _features_fn(vit, replicated: NamedSharding, section):
    """Jitted ``(encoder params, uint8 frames) -> features``, gathered on every
    device; float32 like the evaluation CLI's encoder, with the protocol's
    image statistics and position-embedding rule."""
    graphdef, _, rest = nnx.split(vit, nnx.Param, ...)
    rest = nnx.to_pure_dict(rest)
    mean, std = np.asarray(section.mean), np.asarray(section.std)

    @functools.partial(jax.jit, out_shardings=replicated)
    def eval_features(params, frames):
        model = nnx.merge(graphdef, params, rest)
        model.pos_interp = section.pos_interp
        return model.features(pairs.normalize(frames, mean, std))

    return eval_features


def _agree(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (one decision for all)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))
