"""Online evaluation: DAVIS J&F, JHMDB PCK and VIP mIoU while the encoder trains.

``config.eval.tasks`` (comma-separated: ``davis``, ``jhmdb``, ``vip``) names the
benchmarks. Each is the evaluation CLI's own object
(:data:`siammae_jax.eval.tasks.BENCHMARKS`: the same videos, propagation,
predictions and scores as ``python -m siammae_jax.eval TASK``) under the
protocol ``config.eval.protocol``, the fields of ``config.eval.<task>`` that
differ from the ``siammae`` protocol applied on top as departures; so a
checkpoint scored there gets the same numbers. What differs online is around
the videos: every ``eval.every`` steps and at the end of a run, the train
state's own encoder parameters (on the devices, never copied to the host)
encode the held-out frames on the training mesh, each batch split over the
data-parallel axes and the features gathered; a failing video is logged,
counted in ``eval/<task>/failures`` and skipped (training never stops for
it); and a time bound fixes which videos a run scores.

Every process encodes and propagates every video (they must take part in each
sharded encoder call anyway); process 0 writes the predictions to
``WORKDIR/eval/<task>`` (a local temporary folder for remote workdirs) with
their ``summary.json`` (protocol, inputs, step, version, commit), scores them
and sends the scores to the others, so that all of them hand the same value to
the checkpoint manager's best-checkpoint policy (``eval.best_metric``, e.g.
``davis/J&F`` or ``jhmdb/PCK@0.1``). The random-init twin's outputs are in the
``random_init/`` sub-folder, its scalars suffixed ``_random_init``.

``eval.max_videos`` takes the first videos of each split; ``eval.max_seconds``
bounds each benchmark's first evaluation of a run (normally the random-init
encoder's, at step 0), which fixes the videos that every later evaluation of
the run scores, so each curve compares like with like. The fixed lists are
kept in ``WORKDIR/eval/<task>_sequences.json``, so a resumed run scores the
same videos (unless the held-out settings changed, which is logged).

``eval.data`` is ``synthetic`` (the held-out set written into
``WORKDIR/eval_synthetic`` once, all three layouts, and again only when its
settings change), a folder holding ``DAVIS/``, ``JHMDB/`` and ``VIP/`` roots,
or, with one benchmark, that benchmark's root.
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
from siammae_jax.datasets import davis
from siammae_jax.datasets import summary as summary_lib
from siammae_jax.eval import config as eval_config
from siammae_jax.eval import encoder, pictures, protocols, provenance, tasks
from siammae_jax.models.definition import ModelDef
from siammae_jax.train import mesh as mesh_lib
from siammae_jax.weights import params as weight_params

RANDOM_INIT = "_random_init"  # suffix of the random-init twin's scalars
TWIN_DIR = "random_init"  # the random-init twin's outputs, under eval/<task>


@dataclasses.dataclass
class Result:
    """One evaluation: scalars for the logger, overlay pictures, and the value
    of ``eval.best_metric`` (None when it could not be scored)."""

    scalars: dict[str, float]
    images: dict[str, np.ndarray]
    best: float | None


class _Encoder:
    """The sharded ``params -> (frames -> features)`` of one protocol section."""

    def __init__(self, vit, mesh, section, batch_size: int):
        data_parallel = math.prod(mesh.shape[a] for a in mesh_lib.BATCH_AXES)
        self.batch = math.ceil(batch_size / data_parallel) * data_parallel
        self.sharding = mesh_lib.batch_sharding(mesh)
        self.fn = _features_fn(vit, NamedSharding(mesh, PartitionSpec()), section)

    def __call__(self, params: Any) -> tasks.Extractor:
        def encode(chunk: np.ndarray) -> np.ndarray:
            x = jax.make_array_from_callback(
                chunk.shape, self.sharding, chunk.__getitem__
            )
            return np.asarray(self.fn(params, x).addressable_data(0))

        return lambda frames: encoder.in_batches(encode, frames, self.batch)


class OnlineTask:
    """One benchmark scored online (see the module doc)."""

    def __init__(self, task: str, config, root: epath.Path, owner: Online):
        self.bench = tasks.BENCHMARKS[task]
        self.cfg, self.owner = config.eval, owner
        self.protocol = config.eval.get("protocol", "siammae")
        base = config.eval.get(task) or eval_config.task_section(task)
        self.section, self.departures = protocols.resolve(self.protocol, task, base)
        self.root = _resized(root, self.section) if task == "davis" else root
        workdir = owner.workdir
        self.out = owner.out_root / task
        self._names_file = workdir / "eval" / f"{task}_sequences.json"
        self._settings = {
            "data": self.cfg.data,
            "split": self.section.split,
            "max_videos": self.cfg.max_videos,
            "max_seconds": self.cfg.max_seconds,
            **({"synthetic": owner.synthetic} if owner.synthetic else {}),
        }
        self.names: list[str] | None = self._fixed_names()
        self.failures = 0
        self.encode = _Encoder(owner.vit, owner.mesh, self.section, self.cfg.batch_size)

    def prefix(self) -> str:
        return f"eval/{self.bench.name}/"

    def __call__(self, params: Any, step: int, random_init: bool) -> Result:
        """Scores ``params``; never raises for bad data (logged and counted)."""
        suffix, p = RANDOM_INIT if random_init else "", self.prefix()
        out = self.out / TWIN_DIR if random_init else self.out
        start = time.perf_counter()
        try:
            names = self._videos()
        except (OSError, ValueError) as e:
            return self._failed(f"no {self.bench.name} videos: {e}", start)
        done, images, inputs = self._run(params, names, out, step, random_init)
        if self.names is None and done:  # (nothing done: the next one tries again)
            self._fix(names, [v.name for v in done])
        scores = self._score(out, done)
        seconds = time.perf_counter() - start
        if self.owner.is_main and scores is not None:
            self._write_summary(out, scores, inputs, step, random_init)
        scalars = {
            f"{p}videos{suffix}": len(done),
            f"{p}failures": self.failures,
            f"{p}seconds{suffix}": seconds,
        }
        if scores is not None:
            scalars.update({f"{p}{k}{suffix}": v for k, v in scores.items()})
            logging.info(
                "online eval %s at step %d%s: %s on %d videos of %s in %.1f s",
                self.bench.name, step, " (random init)" if random_init else "",
                ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), len(done),
                self.root, seconds,
            )  # fmt: skip
        return Result(scalars, {f"{p}{k}{suffix}": v for k, v in images.items()}, None)

    def _run(self, params, names, out, step, random_init):
        """Propagates ``names`` (failures skipped, the first run time-bound)."""
        main = self.owner.is_main
        extract, inputs = self.encode(params), provenance.Inputs()
        done, images, start = [], {}, time.perf_counter()
        label = "random init" if random_init else f"step {step}"
        bar = tqdm(names, desc=f"eval {self.bench.name} {label}", leave=False,
                   disable=not self.owner.progress)  # fmt: skip
        for name in bar:
            picture = main and len(images) < self.cfg.overlays
            try:
                video = self.bench.run_video(
                    extract, self.owner.patch, self.root, name, self.section,
                    out if main else None, inputs, picture,
                )  # fmt: skip
            except (OSError, ValueError) as e:
                self.failures += 1
                logging.warning(
                    "online eval: %s %s failed: %s", self.bench.name, name, e
                )
                continue
            if video.picture is not None:
                short = name.split("/")[-1]
                images[short] = video.picture
                (out / "overlays").mkdir(parents=True, exist_ok=True)
                pictures.save(out / "overlays" / f"{short}.png", video.picture)
            done.append(video)
            if self.names is None and _agree(
                time.perf_counter() - start > self.cfg.max_seconds
            ):
                break
        bar.close()
        return done, images, inputs

    def _videos(self) -> list[str]:
        if self.names is not None:
            return self.names
        names = self.bench.videos(self.root, self.section)
        if not names:
            raise ValueError(f"split {self.section.split!r} of {self.root} is empty")
        return names[: self.cfg.max_videos]

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
                self._names_file, saved.get("settings"), self._settings,
            )  # fmt: skip
            return None
        logging.info(
            "online eval: scoring the %d videos this run fixed (%s)",
            len(saved["names"]), self._names_file,
        )  # fmt: skip
        return list(saved["names"])

    def _fix(self, names: list[str], done: list[str]) -> None:
        """The first evaluation fixes the videos of every later one."""
        self.names = done
        if self.owner.is_main:
            self._names_file.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"settings": self._settings, "names": done}, indent=1)
            self._names_file.write_text(text + "\n")
        if len(done) < len(names):
            logging.warning(
                "online eval: %d of %d %s videos fit eval.max_seconds=%s; every "
                "evaluation of this run scores those %d",
                len(done), len(names), self.bench.name, self.cfg.max_seconds,
                len(done),
            )  # fmt: skip

    def _score(self, out: epath.Path, done: list) -> dict[str, float] | None:
        """Process 0 scores its predictions; every process gets the scores."""
        metrics = self.bench.metrics
        values = np.full(len(metrics), np.nan)
        if self.owner.is_main and done:
            try:
                row = self.bench.score(self.root, out, self.section, done)
                values = np.array([row[k] for k in metrics.values()], np.float64)
            except (OSError, ValueError) as e:
                logging.warning(
                    "online eval: %s scoring failed: %s", self.bench.name, e
                )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            # (float32 on the wire unless x64 is on: ~1e-8 on a score)
            values = np.asarray(multihost_utils.broadcast_one_to_all(values))
        if np.isnan(values).any():
            self.failures += bool(done)
            return None
        return dict(zip(metrics, (float(v) for v in values), strict=True))

    def _write_summary(self, out, scores, inputs, step: int, random_init: bool):
        """``out/summary.json``: the offline CLI's record for this evaluation."""
        protocol = provenance.protocol_record(
            self.protocol, self.section.to_dict(), self.departures
        )
        kind = "random-init twin" if random_init else "train state"
        metrics = self.bench.metrics
        result = provenance.record(
            self.bench.name,
            {metrics[k]: v for k, v in scores.items()},
            protocol,
            inputs,
            {"kind": kind, "step": step, "variant": self.owner.vit.variant},
            data=str(self.root),
        )
        summary_lib.write_json(out / "summary.json", result)

    def _failed(self, message: str, start: float) -> Result:
        self.failures += 1
        logging.warning("online eval: %s (training goes on)", message)
        scalars = {
            f"{self.prefix()}failures": self.failures,
            f"{self.prefix()}seconds": time.perf_counter() - start,
        }
        return Result(scalars, {}, None)


class Online:
    """Scores encoder parameters on held-out sets of every ``eval.tasks``.

    Args:
      config: the training config (sections ``eval``, ``model``, ``data``).
      model_def: the run's model (for the random-init twin).
      mesh: the training mesh.
      workdir: the run's workdir.
      progress: show a bar over the videos (process 0).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        model_def: ModelDef,
        mesh: jax.sharding.Mesh,
        workdir: epath.Path,
        progress: bool = False,
    ):
        self.cfg, self.seed = config.eval, config.seed
        self.model_def, self.mesh, self.workdir = model_def, mesh, workdir
        self.is_main = jax.process_index() == 0
        self.progress = progress and self.is_main
        local = "://" not in str(workdir)
        self.out_root = (
            workdir / "eval"
            if local and self.is_main
            else epath.Path(tempfile.mkdtemp(prefix="siammae_eval_"))
        )
        names = tasks.parse(config.eval.get("tasks", "davis"))
        self.best_metric = "eval/" + config.eval.get("best_metric", "davis/J&F")
        self.vit = weight_params.build_encoder(
            config.model.encoder, config.model.image_size
        )
        self.patch = self.vit.patch
        self.synthetic = None
        base = self._data(config, workdir, local)
        roots = {t: _task_root(base, t, len(names)) for t in names}
        self.tasks = [OnlineTask(t, config, roots[t], self) for t in names]

    def _data(self, config, workdir: epath.Path, local: bool) -> epath.Path:
        """The held-out data folder; ``synthetic`` writes it first."""
        if self.cfg.data != "synthetic":
            return epath.Path(self.cfg.data)
        # A local workdir is one filesystem for every process: process 0 writes.
        base = (
            workdir / "eval_synthetic"
            if local
            else epath.Path(tempfile.mkdtemp(prefix="siammae_heldout_"))
        )
        e, size = self.cfg, config.model.image_size
        self.synthetic = want = {
            "videos": e.max_videos,
            "frames": e.synthetic_frames,
            "size": [size, size],
            "seed": e.synthetic_seed,
            "style": e.synthetic_style,
        }
        if (self.is_main or not local) and _held_out_settings(base) != want:
            if (base / synthetic.MARKER).exists():
                logging.warning(
                    "online eval: the held-out set in %s was written with other "
                    "settings (%s); writing it again with %s",
                    base, _held_out_settings(base), want,
                )  # fmt: skip
            logging.info("writing the held-out synthetic set %s to %s", want, base)
            synthetic.write_dataset(
                base, videos=want["videos"], frames=want["frames"],
                size=tuple(want["size"]), seed=want["seed"], progress=False,
                style=want["style"],
            )  # fmt: skip
        if local:
            mesh_lib.barrier("eval_synthetic")
        return base

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
        """Scores the encoder ``params`` (``state.params["encoder"]``) on every
        benchmark; never raises for bad data (failures are logged, counted)."""
        scalars, images = {}, {}
        for task in self.tasks:
            result = task(params, step, random_init)
            scalars.update(result.scalars)
            images.update(result.images)
        best = scalars.get(self.best_metric + (RANDOM_INIT if random_init else ""))
        return Result(scalars, images, best)


def _task_root(base: epath.Path, task: str, count: int) -> epath.Path:
    """``base/<DAVIS|JHMDB|VIP>`` when it exists; else, for one benchmark,
    ``base`` itself (its root)."""
    folder = base / tasks.BENCHMARKS[task].folder
    if folder.exists() or count > 1:
        return folder
    return base


def _resized(root: epath.Path, section) -> epath.Path:
    """A protocol that scores a resized copy of DAVIS (``pre_resize``) gets
    one, written once per process into a temporary folder."""
    if not any(section.pre_resize):
        return root
    h, w = section.pre_resize
    copy = tempfile.mkdtemp(prefix=f"siammae_davis_{h}x{w}_")
    try:
        return epath.Path(davis.resized_copy(root, copy, section.split, (h, w)))
    except (OSError, ValueError) as e:  # Counted at the first evaluation.
        logging.warning("online eval: cannot resize %s to %dx%d: %s", root, h, w, e)
        return root


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
