"""``make demo``: pre-train the cpu_learn config on CPU and show what it learned.

1. writes the embedded synthetic training videos and held-out videos (another
   seed) with DAVIS-layout ground truth and known motion;
2. pre-trains the ``cpu_learn`` config (``siammae_jax.train.loop.run``) under one
   progress line, which logs loss, learning measures, online J&F on the
   held-out videos and reconstructions to TensorBoard and metrics.jsonl;
3. measures on the held-out videos: past-frame use (with another video's and
   a patch-shuffled f1), decoder correspondence at the training gaps and at a
   gap where the same-position guess fails (motion); the J&F lines are the
   training run's online evaluation: the last one, and the random-init
   twin's at step 0;
4. writes pictures (reconstructions, where the decoder looks in f1,
   propagation overlays, [CLS] attention) and prints a one-screen summary.

``--quick`` is the ~3-minute version (``make demo QUICK=1``, 500 steps).

Stopping it: SIGTERM or Ctrl-C during training stops training at its next
check (``train.check_every`` steps) with a checkpoint (``train.preemption``);
the demo then measures that step's model (skipping the mean-colour baseline,
which does not depend on it) and its summary opens with "demo stopped at step
S of N (SIGTERM)". A second signal ends the measuring at once: the summary
says what was measured and what was not, and the process exits with status
128 + the signal's number. A signal while the demo measures after a complete
run does the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from etils import epath

from siammae_jax.configs import siammae as configs
from siammae_jax.data import pairs, synthetic
from siammae_jax.eval import attention, baselines, learning, pictures, protocols, tasks
from siammae_jax.models import vit
from siammae_jax.train import evaluation, logs, loop
from siammae_jax.weights import layout
from siammae_jax.weights import params as weight_params

_WORKDIR = flags.DEFINE_string("workdir", "demo_out", "Where everything is written.")
_QUICK = flags.DEFINE_bool("quick", False, "The ~3-minute version.")
_STEPS = flags.DEFINE_integer(
    "steps", None, "Training steps (default: cpu_learn's 3000; 500 quick)."
)
_HELDOUT = flags.DEFINE_integer(
    "heldout_videos", None, "Held-out videos (40; 16 quick)."
)


MOTION_GAP = 12  # frames between f1 and f2 for the demo's motion line
DAVIS = "davis"  # the demo's one online evaluation (config.eval.tasks)
PREFIX = f"eval/{DAVIS}/"  # its scalars in metrics.jsonl
EVAL_DIR = f"eval/{DAVIS}"  # its outputs in the workdir
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def train(
    workdir: epath.Path, steps: int, davis_root: epath.Path, videos: int
) -> tuple[ml_collections.ConfigDict, Any]:
    """Pre-trains the cpu_learn config under one progress line, with online J&F
    on the held-out videos at the start (random init), half-way and at the end."""
    config = configs.get_config("cpu_learn")
    config.train.steps = steps
    config.train.progress_bar = True
    config.data.format = "synthetic"  # written there on the first run
    config.data.path = str(workdir / "synthetic")
    config.eval.tasks = DAVIS
    config.eval.every = max(1, steps // 2)
    config.eval.data = str(davis_root)
    config.eval.max_videos = videos
    _say(f"pre-training the cpu_learn config for {steps} steps in {workdir} ...")
    state = loop.run(config, str(workdir))
    return config, state


def heldout(workdir: epath.Path, videos: int, size: int) -> epath.Path:
    root = workdir / "heldout"
    if not (root / "synthetic.json").exists():
        _say(f"writing {videos} held-out synthetic videos (seed 1) ...")
        synthetic.write_dataset(
            root, videos=videos, frames=24, size=(size, size), seed=1
        )
    return root


def measures(
    config: ml_collections.ConfigDict, state: Any, workdir: epath.Path, videos: int
) -> dict:
    """(a) past-frame use and (b) decoder correspondence, with a picture."""
    from siammae_jax.models.definition import ModelDef

    model_def = ModelDef.from_config(config.model)
    params = jax.device_get(state.params)

    apply = functools.partial(learning.model_apply(model_def), params)

    held = learning.heldout_pairs(
        1, videos, config.model.image_size, gap=config.train.measure_gap
    )
    key = jax.random.key(123)
    scalars = learning.measures(apply, held, key, model_def.patch)
    prefix = "past_frame_loss_"
    out = {
        "past_frame": {
            k[len(prefix) :]: v for k, v in scalars.items() if k.startswith(prefix)
        },
        "correspondence": {
            k: v for k, v in scalars.items() if k.startswith("correspondence")
        },
    }
    x = pairs.normalize(held.frames[:4])
    pred = apply(x[:, 0], x[:, 1], key, False)
    grid = pictures.reconstruction_grid(
        np.asarray(x[:, 0]), np.asarray(x[:, 1]), pred.mask, pred.pred, pred.target,
        patch=model_def.patch, norm_pix=config.model.norm_pix_loss,
        ddof=config.model.norm_pix_ddof,
    )  # fmt: skip
    (workdir / "pictures").mkdir(exist_ok=True)
    pictures.save(workdir / "pictures" / "reconstruction.png", grid)
    # Motion: a gap at which the same-position guess is wrong for most patches
    # (about 2/3 of them on 64-px synthetic videos at 12 frames).
    far = learning.heldout_pairs(1, videos, config.model.image_size, gap=MOTION_GAP)
    moving = learning.decoder_correspondence(apply, far, key, model_def.patch)
    out["motion"] = {"gap": MOTION_GAP, **moving.scalars()}
    picture = pictures.correspondence_picture(
        apply, held.first(4), key, model_def.patch, scale=3, per_row=2
    )
    pictures.save(workdir / "pictures" / "correspondence.png", picture)
    return out


def online_scores(workdir: epath.Path, required: bool = True) -> dict:
    """(c) J&F of the pre-trained encoder (the run's last online evaluation)
    and of its random-init twin (step 0), from ``metrics.jsonl``, each with
    the step it was scored at. A missing one raises unless not ``required``
    (a stopped run may end before its first evaluation): then it is left out."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]

    def last(suffix: str) -> dict | None:
        key = f"{PREFIX}J&F{suffix}"
        found = [r for r in rows if key in r]
        if not found:
            if not required:
                return None
            raise RuntimeError(
                f"no {key} in {workdir / 'metrics.jsonl'}: the online evaluation "
                "failed (see the warnings above)"
            )
        row = found[-1]
        scores = {f"{n}-Mean": row[f"{PREFIX}{n}{suffix}"] for n in ("J&F", "J", "F")}
        return {**scores, "step": row.get("step")}

    out = {"pre-trained": last(""), "random-init": last(evaluation.RANDOM_INIT)}
    return {name: s for name, s in out.items() if s is not None}


def attention_maps(
    config: ml_collections.ConfigDict, state: Any, davis_root: epath.Path, out
) -> None:
    """[CLS] attention maps of the pre-trained encoder on a held-out video."""
    trained = weight_params.encoder_from(
        config.model, jax.device_get(state.params["encoder"]), "train state"
    )
    first = sorted((davis_root / "JPEGImages" / "480p").iterdir())[0]
    size = config.model.image_size
    attention.run(trained, str(first), str(out), 4 * size, 24)


def colour_baseline(
    config: ml_collections.ConfigDict, davis_root: epath.Path, workdir: epath.Path
) -> dict:
    """J&F of mean-colour patch features (no learning) on the held-out set,
    with the online evaluation's settings: what the encoder gain is read beside."""
    _, patch = vit.parse_variant(config.model.encoder)
    protocol = config.eval.get("protocol", "siammae")
    section, _ = protocols.resolve(protocol, DAVIS, config.eval.davis)
    return tasks.run_davis(
        lambda frames: baselines.patch_features(frames, patch, mean_only=True),
        patch, davis_root, workdir / "eval" / "mean_colour", section, 0, False,
    )  # fmt: skip


# Where the online evaluation leaves each encoder's overlay pictures.
OVERLAYS = {
    "pre-trained": f"{EVAL_DIR}/overlays",
    "random-init": f"{EVAL_DIR}/{evaluation.TWIN_DIR}/overlays",
}


def summary_picture(workdir: epath.Path, scores: dict) -> epath.Path:
    """``pictures/summary.png``: reconstructions above the propagation overlays
    (of the encoders ``scores`` has)."""
    from PIL import Image

    def load(path):
        return np.asarray(Image.open(path).convert("RGB"))

    pics = workdir / "pictures"
    panels = [
        (
            "reconstructions (rows: f1 | f2 masked | reconstruction | f2)",
            load(pics / "reconstruction.png"),
        ),
        (
            "decoder cross-attention of a masked f2 patch (red) over f1: bright = "
            "attended, yellow = peak, green = true source",
            load(pics / "correspondence.png"),
        ),
    ]
    for name in ("pre-trained", "random-init"):
        if name not in scores:
            continue
        first = sorted((workdir / OVERLAYS[name]).glob("*.png"))[0]
        jf = scores[name]["J&F-Mean"]
        caption = f"{name} encoder, label propagation ({first.stem}, J&F {jf:.3f})"
        panels.append((caption, load(first)))
    path = pics / "summary.png"
    pictures.save(path, pictures.captioned_column(panels, width=768))
    return path


def summary(
    workdir: epath.Path, m: dict, scores: dict, model_step: int | None = None
) -> str:
    """The measures ``m`` and online ``scores`` in a few lines (each part only
    when measured). A J&F scored at another step than ``model_step`` (the
    model the measures are of) names its step."""
    lines = []
    if "past_frame" in m:
        past = m["past_frame"]
        true, other, shuffled = past["true"], past["other"], past["shuffled"]
        lines += [
            f"past-frame use: loss with true f1 {true:.3f} vs other-video f1 "
            f"{other:.3f}",
            f"  layout use: loss with true f1's patches shuffled {shuffled:.3f} "
            "(same colours, no layout; a model that copies from the right place "
            "loses here)",
        ]
    if "correspondence" in m:
        lines += _correspondence_lines(m["correspondence"])
    if "motion" in m:
        move = m["motion"]
        lines.append(
            f"motion: correspondence {move['correspondence']:.3f} at a gap of "
            f"{move['gap']} frames (same-position guess "
            f"{move['correspondence_same_position']:.3f}, chance "
            f"{move['correspondence_chance']:.3f}; following motion means beating "
            "the guess)"
        )
    lines += _score_lines(scores, model_step)
    lines += [
        f"pictures: {workdir / 'pictures'} (summary.png, reconstruction.png, "
        "correspondence.png, attention.png/.mp4), "
        f"{workdir / OVERLAYS['pre-trained']}",
        f"logs: tensorboard --logdir {workdir}  (scalars also in "
        f"{workdir / 'metrics.jsonl'}); checkpoints: {workdir / 'checkpoints'}",
    ]
    return "\n".join(lines)


def _correspondence_lines(corr: dict) -> list[str]:
    def by_block(name):
        keys = sorted(k for k in corr if k.startswith(f"correspondence_{name}_block"))
        return ", ".join(f"{corr[k]:.3f}" for k in keys)

    guess = corr["correspondence_same_position"]
    return [
        f"decoder correspondence: {corr['correspondence']:.3f} within 1 patch "
        f"(chance {corr['correspondence_chance']:.3f}); same-position guess "
        f"{guess:.3f}",
        f"  per decoder block: visible f2 patches {by_block('visible')}; masked "
        f"{by_block('masked')}; same-position guess {guess:.3f}",
    ]


def _score_lines(scores: dict, model_step: int | None) -> list[str]:
    lines = []
    for name in ("pre-trained", "random-init"):
        if name not in scores:
            continue
        s, step = scores[name], scores[name].get("step")
        when = ""
        if (
            name == "pre-trained"
            and None not in (step, model_step)
            and step != model_step
        ):
            when = f" at step {step} (the run's last online evaluation)"
        lines.append(
            f"{name} encoder: J&F {s['J&F-Mean']:.3f} "
            f"(J {s['J-Mean']:.3f}, F {s['F-Mean']:.3f}){when}"
        )
    if "pre-trained" not in scores or "random-init" not in scores:
        return lines
    gain = scores["pre-trained"]["J&F-Mean"] - scores["random-init"]["J&F-Mean"]
    lines.append(f"encoder gain: J&F {gain:+.3f} over random init")
    if "mean colour" in scores:
        colour = scores["mean colour"]["J&F-Mean"]
        lines.append(
            f"  no learning: mean-colour patch features J&F {colour:.3f} "
            f"({colour - scores['random-init']['J&F-Mean']:+.3f} over random init; "
            "the encoder's gain means little below it)"
        )
    return lines


# --- Stopping: where training ended, and the measuring a signal ends. --------


@dataclasses.dataclass(frozen=True)
class Stop:
    """Where training ended: step ``at`` of ``of``, and the stop signals that
    arrived while it ran, in order (the first one stopped it)."""

    at: int
    of: int
    signals: tuple[str, ...] = ()

    @property
    def early(self) -> bool:
        return self.at < self.of

    @property
    def asked(self) -> bool:
        """Whether the user asked the demo to stop (a signal, or an early end)."""
        return self.early or bool(self.signals)

    def where(self) -> str:
        why = self.signals[0] if self.signals else "stopped early"
        return f"step {self.at} of {self.of} ({why})"


class SignalLog:
    """Records the stop signals (SIGTERM, SIGINT) that arrive in its block.

    The training loop's handler (``train.preemption``) only sets its own flag.
    :func:`signal.set_wakeup_fd` is written to for every signal that has a
    Python handler, whatever the handler is, so the demo learns which signal
    stopped training, and whether a second one came, without touching the
    loop. ``signals`` holds the names once the block has ended.
    """

    def __init__(self):
        self.signals: tuple[str, ...] = ()

    def __enter__(self) -> SignalLog:
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
        self._previous = signal.set_wakeup_fd(self._write)
        return self

    def __exit__(self, *exc_info) -> None:
        signal.set_wakeup_fd(self._previous)
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._read, 1024):
                data += chunk
        os.close(self._read)
        os.close(self._write)
        stops = {int(s) for s in STOP_SIGNALS}
        self.signals = tuple(signal.Signals(b).name for b in data if b in stops)


class Interrupted(BaseException):
    """A stop signal while the demo measures. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.name = signal.Signals(signum).name


@contextlib.contextmanager
def interruptible():
    """In the block, SIGTERM and Ctrl-C raise :class:`Interrupted` (in the
    main thread, at its next Python instruction). The handler first puts the
    default handlers back, so a further signal ends the process at once, even
    while the main thread is in a long native call (a compilation)."""

    def handle(signum, frame):
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handle) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


@dataclasses.dataclass
class Findings:
    """What the demo measured after training, filled stage by stage; the
    stages not run, each with why; the signal that ended the measuring."""

    measures: dict = dataclasses.field(default_factory=dict)
    scores: dict = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    interrupted: str | None = None


Stage = tuple[str, Callable[[], None]]


def run_stages(stages: list[Stage], stop: Stop, found: Findings) -> Findings:
    """Runs the measuring ``stages`` in order. A stop signal ends them at once
    (:func:`interruptible`), as does a second signal that came during training
    (``stop.signals``); the stages not run go to ``found.skipped``."""
    done = 0
    if len(stop.signals) > 1:
        found.interrupted = stop.signals[1]
    else:
        try:
            with interruptible():
                for name, fn in stages:
                    _say(f"{name} ...")
                    fn()
                    done += 1
        except Interrupted as e:
            found.interrupted = e.name
            _say(f"{e.name}: measuring stopped")
    if found.interrupted:
        again = "a second " if stop.signals else ""
        for name, _ in stages[done:]:
            found.skipped[name] = f"stopped by {again}{found.interrupted}"
    return found


def stages(
    config: ml_collections.ConfigDict, state: Any, workdir: epath.Path,
    davis_root: epath.Path, videos: int, stop: Stop, found: Findings,
) -> list[Stage]:  # fmt: skip
    """The measuring after training, each stage filling ``found``. After a
    stop the mean-colour baseline (minutes, and not of the model) is skipped."""

    def measured():
        found.measures.update(measures(config, state, workdir, videos))

    def scored():
        found.scores.update(online_scores(workdir, required=not stop.early))
        if "pre-trained" not in found.scores:
            found.skipped["pre-trained J&F"] = "no online evaluation before the stop"

    def colour():
        found.scores["mean colour"] = colour_baseline(config, davis_root, workdir)

    out = [
        ("online J&F (from metrics.jsonl)", scored),
        ("past-frame use and decoder correspondence", measured),
        ("mean-colour baseline", colour),
        ("[CLS] attention maps", lambda: attention_maps(
            config, state, davis_root, workdir / "pictures")),
        ("summary picture", lambda: summary_picture(workdir, found.scores)),
    ]  # fmt: skip
    if stop.asked:
        found.skipped["mean-colour baseline"] = "not of the model; skipped on a stop"
        out = [s for s in out if s[0] != "mean-colour baseline"]
    return out


def report(workdir: epath.Path, stop: Stop, found: Findings, seconds: float) -> str:
    """The closing text: a title that says where training ended, what was
    measured of that step's model, and what was not measured."""
    if stop.early:
        title = f"=== SiamMAE demo stopped at {stop.where()}, {seconds:.0f} s ==="
    else:
        title = f"=== SiamMAE demo summary ({stop.at} steps, {seconds:.0f} s) ==="
    lines = [title]
    if stop.early:
        note = _checkpoint_note(workdir, stop.at)
        said = "measured: the model at" if found.measures else "the model at the stop:"
        lines.append(f"{said} step {stop.at} ({note})")
    lines.append(summary(workdir, found.measures, found.scores, model_step=stop.at))
    if found.skipped:
        lines.append(
            "not measured: "
            + "; ".join(f"{name} ({why})" for name, why in found.skipped.items())
        )
    return "\n".join(lines)


def _checkpoint_note(workdir: epath.Path, step: int) -> str:
    folder = workdir / layout.CHECKPOINTS
    if (folder / str(step)).exists():
        return f"its checkpoint: {folder / str(step)}"
    steps = [int(p.name) for p in folder.glob("*") if p.name.isdigit()]
    last = f"the last is step {max(steps)}" if steps else "none saved"
    return f"no checkpoint of that step; {last}"


def main(argv: list[str]) -> None:
    del argv
    logs.quiet_library_logs()
    workdir = epath.Path(_WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    full = configs.get_config("cpu_learn").train.steps
    steps = _STEPS.value or (500 if _QUICK.value else full)
    videos = _HELDOUT.value or (16 if _QUICK.value else 40)
    start = time.time()
    size = configs.get_config("cpu_learn").model.image_size
    davis_root = heldout(workdir, videos, size) / "DAVIS"
    with SignalLog() as log:
        config, state = train(workdir, steps, davis_root, videos)
    stop, found = Stop(int(state.step), steps, log.signals), Findings()
    if stop.asked and len(stop.signals) < 2:
        _say(
            f"training stopped at {stop.where()}: measuring that model (a second "
            "SIGTERM or Ctrl-C ends the demo now)"
        )
    todo = stages(config, state, workdir, davis_root, videos, stop, found)
    run_stages(todo, stop, found)
    seconds = time.time() - start
    record = {
        "steps": stop.at, "planned_steps": stop.of, "signals": list(stop.signals),
        "seconds": round(seconds), **found.measures, **found.scores,
        "not_measured": found.skipped,
    }  # fmt: skip
    (workdir / "summary.json").write_text(json.dumps(record, indent=2))
    print("\n" + report(workdir, stop, found, seconds), flush=True)
    if found.interrupted:
        sys.exit(128 + signal.Signals[found.interrupted].value)


if __name__ == "__main__":
    app.run(main)
