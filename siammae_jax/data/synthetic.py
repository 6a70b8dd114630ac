"""The synthetic data set: deterministic videos with exact motion, written in
every layout the project reads (the project's default data set).

The videos come from :mod:`siammae_jax.data.synthetic_videos` (2-4 textured
objects in smooth affine motion over a panning textured background; see there
for their conventions); the benchmark layouts are written by the evaluators'
own format modules (:mod:`siammae_jax.datasets.davis`, ``jhmdb``, ``vip``), so
what is written is what they read.

On-disk layout written by ``write_dataset`` (``<name>`` = ``synth_0000``...):
  videos/<name>.mp4                            H.264, yuv420p, 30 fps, GOP 12
  frames/<name>/00000.jpg                      JPEG quality 95
  DAVIS/JPEGImages/480p/<name>/00000.jpg       (generated size, not 480p)
  DAVIS/Annotations/480p/<name>/00000.png      "P" PNG, DAVIS palette, ids 1..K
  DAVIS/ImageSets/2017/val.txt                 every video; train.txt is empty
  JHMDB/Rename_Images/<kind>/<name>/00001.png  1-based names, RGB PNG
  JHMDB/joint_positions/<kind>/<name>/joint_positions.mat   pos_img [2, 15, T]
  JHMDB/splits/<kind>_test_split1.txt          "<name>.avi 2": every video is test
  VIP/Images/<name>/00000.jpg
  VIP/Category_ids/<name>/00000.png            uint8 "L" PNG, classes 0..19
  VIP/lists/val_videos.txt                     every video
  motion/<name>.npz                            see ``SyntheticVideo.motion``
  synthetic.json                               generator arguments and names
JHMDB's class ``<kind>`` is the shape of the keypoint-carrying object (the
frontmost one); its 15 joints are the object's centre and two rings of 7 points
at 40% and 80% of its radius. VIP classes: an object's core (inside 35% of its
radius) is 19; the rest is cut into 6 angular sectors of its own frame, class
1 + 6 x kind index (blob, polygon, ellipse) + sector, so parts move with it.

Usage:
  python -m siammae_jax.data.synthetic --out DIR [--videos 8] [--frames 24]
      [--size 64x64] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from siammae_jax.data import video as video_lib
from siammae_jax.data.synthetic_videos import (  # noqa: F401 (the public API)
    KINDS,
    STYLES,
    SyntheticVideo,
    _check_count,
    _check_size,
    make_video,
    true_position,
)
from siammae_jax.datasets import davis, jhmdb, vip

FPS = 30
GOP = 12
JPEG_QUALITY = 95
PNG_LEVEL = 1  # fast zlib level: large frames are written in seconds
MARKER = "synthetic.json"
OUTPUT_DIRS = ("videos", "frames", "DAVIS", "JHMDB", "VIP", "motion")


# ------------------------------------------------------------------ writing


def _jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _write_video(out: Path, video: SyntheticVideo) -> None:
    """Every file of one video, the benchmark layouts by their eval modules."""
    name, kind = video.name, video.kinds[video.person - 1]
    video_lib.write_mp4(out / "videos" / f"{name}.mp4", video.frames, fps=FPS, gop=GOP)
    jpegs = [_jpeg(frame) for frame in video.frames]
    frames = out / "frames" / name
    frames.mkdir(parents=True, exist_ok=True)
    for t, jpeg in enumerate(jpegs):
        (frames / f"{t:05d}.jpg").write_bytes(jpeg)
    davis.write_sequence(out / "DAVIS", name, jpegs, video.labels, PNG_LEVEL)
    jhmdb.write_video(
        out / "JHMDB", kind, name, video.frames, video.keypoints, PNG_LEVEL
    )
    vip.write_video(out / "VIP", name, jpegs, video.parts, PNG_LEVEL)
    np.savez_compressed(out / "motion" / f"{name}.npz", **video.motion())


def _write_lists(out: Path, names: list[str], classes: dict[str, list[str]]) -> None:
    """DAVIS ImageSets, JHMDB split files and the VIP video list."""
    davis.write_set(out / "DAVIS", names)
    jhmdb.write_split(out / "JHMDB", classes)
    vip.write_list(out / "VIP", names)


def _prepare_output(out: Path) -> None:
    """Refuses a non-empty folder that is not a synthetic set; clears an old set."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(
                f"--out {out} is not empty and is not a synthetic data set (no {MARKER}); "
                "choose an empty or new directory"
            )
        for name in OUTPUT_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
        (out / MARKER).unlink()
    for name in ("videos", "motion"):
        (out / name).mkdir(parents=True, exist_ok=True)


def write_dataset(
    out: str | Path,
    videos: int = 8,
    frames: int = 24,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    progress: bool = True,
    style: str = "default",
) -> dict:
    """Renders ``videos`` videos and writes every layout (see the module docstring).

    Args:
      out: output directory; must be new, empty, or a previous synthetic set
        (which is replaced).
      videos: number of videos N.
      frames: frames per video T.
      size: (height, width), even, each >= 16.
      seed: data set seed (>= 0).
      progress: show a tqdm bar over videos.
      style: textures and motion statistics (``synthetic_videos.STYLES``).

    Returns:
      A summary: ``out``, ``names``, ``frames``, ``size``, ``seed``,
      ``style`` and the JHMDB ``classes`` (kind -> video names).
    """
    videos, frames = _check_count(videos, "--videos"), _check_count(frames, "--frames")
    size, seed = _check_size(size, "--size", even=True), _check_count(seed, "--seed", 0)
    out = Path(out)
    _prepare_output(out)
    names, classes = [], {}
    for index in tqdm(range(videos), desc="synthetic videos", disable=not progress):
        video = make_video(seed, index, frames, size, style)
        _write_video(out, video)
        names.append(video.name)
        classes.setdefault(video.kinds[video.person - 1], []).append(video.name)
    _write_lists(out, names, classes)
    summary = {"out": str(out), "names": names, "frames": frames, "size": list(size)}
    summary.update(seed=seed, style=style, classes=classes, generator=__name__)
    (out / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---------------------------------------------------------------------- CLI


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"must be HxW, e.g. 64x64 or 480x880, got {text!r}"
        )
    size = (int(parts[0]), int(parts[1]))
    try:
        return _check_size(size, "HxW", even=True)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point; returns ``write_dataset``'s summary."""
    parser = argparse.ArgumentParser(
        prog="python -m siammae_jax.data.synthetic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--videos", type=_positive, default=8, help="number of videos")
    parser.add_argument("--frames", type=_positive, default=24, help="frames per video")
    parser.add_argument("--size", type=_size, default=(64, 64), help="HxW, e.g. 64x64")
    parser.add_argument("--seed", type=_non_negative, default=0, help="data set seed")
    parser.add_argument(
        "--style",
        choices=sorted(STYLES),
        default="default",
        help="textures and motion (unseen: what the default style never shows)",
    )
    args = parser.parse_args(argv)
    try:
        summary = write_dataset(
            args.out, args.videos, args.frames, args.size, args.seed, style=args.style
        )
    except FileExistsError as error:
        parser.error(str(error))
    height, width = args.size
    print(
        f"Wrote {len(summary['names'])} synthetic videos ({args.frames} frames, "
        f"{height}x{width}, seed {args.seed}, style {args.style}) to {args.out}: "
        f"{', '.join(d + '/' for d in OUTPUT_DIRS)}"
    )
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
