"""JHMDB pose propagation: data reading, joint heatmaps, decoding, PCK and outputs.

Layout read (``root`` is the ``JHMDB`` folder)::

    Rename_Images/<class>/<video>/00001.png ...         RGB frames, 1-based names
    joint_positions/<class>/<video>/joint_positions.mat  pos_img [2, 15, T], 1-based (x, y)
    splits/<class>_test_split<k>.txt                     "<video>.avi 1|2" (2 = test)

Conventions:
  * Joints are (x, y) 0-based pixel coordinates with pixel centres at integers
    (``pos_img - 1``); an image of width W spans x in [-0.5, W - 0.5].
  * Label maps have ``NUM_CHANNELS`` = 16 channels: channel ``BACKGROUND`` = 0
    is the background, channel ``1 + j`` is joint j (0..14).
  * By default (``coords="centre"``) pixel <-> grid mapping uses half-pixel
    centres (like bilinear resizing with ``align_corners=False``): ``grid_x
    = (x + 0.5) * w / W - 0.5`` and back ``x = (grid_x + 0.5) * W / w -
    0.5``. ``coords="corner"`` is videowalk's ``grid_x = x * w / W`` and
    back ``x = grid_x / w * W``.
  * By default (``style="gaussian"``) a joint's heatmap is a Gaussian of
    ``sigma`` grid cells around its grid position, sampled at the cell
    centres and scaled so that its largest cell is exactly 1 (max
    normalisation). ``decode_joints`` only uses the relative values of a
    channel, so any positive scale decodes to the same position.

Protocols (keyword arguments; the defaults are ``siammae``):

=================  ==============  =========================  =====================
argument           siammae         crw (ajabri/videowalk)     CropMAE / T-CoRe
=================  ==============  =========================  =====================
joint_heatmaps     style gaussian  style crw, coords corner   style crw, coords corner
decode_joints      topk 3, centre  topk 3, coords corner      topk 5, coords corner
pck                invalid miss    invalid skip               invalid skip
grid (input)       any             40 x 40 (320 x 320, /8)    20 x 20 (320 x 320, /16)
=================  ==============  =========================  =====================

videowalk sources (commit 0834ff99 for data/, 2e410980 for utils/ and eval/):
code/data/jhmdb.py:233-239 (pos_img - 1, ``x * neww / wd / mapScale``),
:287-319 (``draw_labelmap_np``), :266 (background = joint sum == 0);
code/utils/test_utils.py:55-66 (``process_pose``, top-3); code/eval/eval_pck.py
:53-56 (visibility), :62-63 (``pred / feat_res * width``), :76-91 (box),
:116 (frame 0 skipped), :130-142 (per-joint PCK, mean over joints). CropMAE
(alexandre-eymael/CropMAE @ffafcf47, downstreams/propagation/): the same code
at src/data/jhmdb.py:185-189, 236-268, 216; src/utils/test_utils.py:55-66
with ``topk=5``; src/eval/eval_pck.py:59-62, 68-69, 82-97, 122, 136-148.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from siammae_jax.datasets import summary

NUM_JOINTS = 15
NUM_CHANNELS = NUM_JOINTS + 1
BACKGROUND = 0  # channel of the background; joint j is channel 1 + j
TEST_LABEL = "2"  # split files mark test videos with 2 (train: 1)
MAT_NAME = "joint_positions.mat"


@dataclasses.dataclass(frozen=True)
class JhmdbVideo:
    """One JHMDB video with its ground-truth joints.

    Attributes:
      name: video name (folder name, without ``.avi``).
      frames: uint8 [T, H, W, 3] RGB frames in file order (00001.png first).
      joints: float64 [T, 15, 2] (x, y), 0-based pixel coordinates.
      cls: action class (the parent folder).
    """

    name: str
    frames: np.ndarray
    joints: np.ndarray
    cls: str = ""


# ------------------------------------------------------------------ reading


def _split_file_class(path: Path, split: int) -> str:
    return path.name[: -len(f"_test_split{split}.txt")]


def read_split(root: str | Path, split: int = 1) -> list[tuple[str, str]]:
    """Test videos of one official split.

    Args:
      root: the ``JHMDB`` folder.
      split: split number (1, 2 or 3).

    Returns:
      Sorted ``(class, video)`` pairs of the lines marked ``2`` in
      ``splits/<class>_test_split<split>.txt``.

    Raises:
      FileNotFoundError: no ``splits`` folder or no split file for ``split``.
      ValueError: a malformed line (file and line number in the message).
    """
    splits = Path(root) / "splits"
    if not splits.is_dir():
        raise FileNotFoundError(f"JHMDB split folder not found: {splits}")
    files = sorted(splits.glob(f"*_test_split{split}.txt"))
    if not files:
        raise FileNotFoundError(
            f"no JHMDB split files {splits}/<class>_test_split{split}.txt"
        )
    videos = []
    for path in files:
        cls = _split_file_class(path, split)
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", TEST_LABEL):
                raise ValueError(
                    f"{path}:{number}: expected '<video>.avi <1|2>', got {line!r}"
                )
            if fields[1] == TEST_LABEL:
                videos.append((cls, fields[0].removesuffix(".avi")))
    return sorted(videos)


def _frame_paths(folder: Path) -> list[Path]:
    """The PNG frames 00001.png..0000T.png of ``folder``; errors name a gap."""
    if not folder.is_dir():
        raise FileNotFoundError(f"JHMDB frame folder not found: {folder}")
    numbers = sorted(
        int(p.stem) for p in folder.glob("*.png") if re.fullmatch(r"\d+", p.stem)
    )
    if not numbers:
        raise FileNotFoundError(f"no PNG frames (00001.png...) in {folder}")
    for expected in range(1, numbers[-1] + 1):
        path = folder / f"{expected:05d}.png"
        if not path.is_file():
            raise FileNotFoundError(f"missing JHMDB frame {path}")
    return [folder / f"{n:05d}.png" for n in range(1, numbers[-1] + 1)]


def _read_frames(paths: Sequence[Path]) -> np.ndarray:
    """uint8 [T, H, W, 3]; errors name a frame whose size differs from the first."""
    frames = []
    for path in paths:
        with Image.open(path) as image:
            frame = np.asarray(image.convert("RGB"))
        if frames and frame.shape != frames[0].shape:
            raise ValueError(
                f"{path}: frame size {frame.shape[:2]} differs from "
                f"{paths[0].name}'s {frames[0].shape[:2]}"
            )
        frames.append(frame)
    return np.stack(frames)


def _read_pos_img(path: Path, num_frames: int) -> np.ndarray:
    """float64 [T, 15, 2] 0-based joints from ``pos_img`` [2, 15, T] (1-based)."""
    if not path.is_file():
        raise FileNotFoundError(f"JHMDB joint file not found: {path}")
    mat = scipy.io.loadmat(path)
    if "pos_img" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise KeyError(f"{path}: no 'pos_img' variable (has {keys})")
    pos_img = np.asarray(mat["pos_img"], np.float64)
    if pos_img.ndim != 3 or pos_img.shape[:2] != (2, NUM_JOINTS):
        raise ValueError(
            f"{path}: pos_img must be [2, {NUM_JOINTS}, T], got {pos_img.shape}"
        )
    if pos_img.shape[2] != num_frames:
        raise ValueError(
            f"{path}: pos_img has {pos_img.shape[2]} frames but the video folder "
            f"has {num_frames} frames"
        )
    return pos_img.transpose(2, 1, 0) - 1.0


def load_video(root: str | Path, cls: str, video: str) -> JhmdbVideo:
    """Reads one video's frames and ground-truth joints.

    Args:
      root: the ``JHMDB`` folder.
      cls: action class.
      video: video name (without ``.avi``).

    Returns:
      The video; joints are 0-based (x, y).

    Raises:
      FileNotFoundError: a missing frame folder, frame or .mat file.
      KeyError: the .mat file has no ``pos_img``.
      ValueError: frames of different sizes or a ``pos_img`` whose number of
        frames differs from the folder's.
    """
    root = Path(root)
    paths = _frame_paths(root / "Rename_Images" / cls / video)
    frames = _read_frames(paths)
    joints = _read_pos_img(
        root / "joint_positions" / cls / video / MAT_NAME, len(paths)
    )
    return JhmdbVideo(name=video, frames=frames, joints=joints, cls=cls)


# ------------------------------------------------------ encoding / decoding

STYLES = ("gaussian", "crw")  # joint_heatmaps(style=...)
COORDS = ("centre", "corner")  # joint_heatmaps / decode_joints(coords=...)
INVALID = ("miss", "skip")  # pck(invalid=...)


def _check_choice(name: str, value, choices: Sequence[str]) -> None:
    """Raises a ValueError naming ``name`` unless ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        options = " or ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be {options}, got {value!r}")


def to_grid(
    xy: np.ndarray, image_hw: Sequence[int], grid_hw: Sequence[int]
) -> np.ndarray:
    """Maps (x, y) image pixels to (x, y) grid cells (half-pixel centres)."""
    scale = np.array([grid_hw[1] / image_hw[1], grid_hw[0] / image_hw[0]])
    return (np.asarray(xy, np.float64) + 0.5) * scale - 0.5


def from_grid(
    xy: np.ndarray, image_hw: Sequence[int], grid_hw: Sequence[int]
) -> np.ndarray:
    """Maps (x, y) grid cells to (x, y) image pixels; inverse of ``to_grid``."""
    scale = np.array([image_hw[1] / grid_hw[1], image_hw[0] / grid_hw[0]])
    return (np.asarray(xy, np.float64) + 0.5) * scale - 0.5


def _pixels_to_cells(
    xy: np.ndarray, image_hw: Sequence[int], grid_hw: Sequence[int], coords: str
) -> np.ndarray:
    """(x, y) pixels -> (x, y) grid cells in the ``coords`` convention.

    ``corner`` multiplies before dividing, ``x * w / W``: for grids whose
    stride is a power of two this is bit-for-bit videowalk's
    ``x * neww / wd / mapScale`` (data/jhmdb.py:238-239), so the truncations
    of the ``crw`` heatmaps fall on the same cells.
    """
    if coords == "centre":
        return to_grid(xy, image_hw, grid_hw)
    xy = np.asarray(xy, np.float64)
    cells = np.array([grid_hw[1], grid_hw[0]], np.float64)
    pixels = np.array([image_hw[1], image_hw[0]], np.float64)
    return xy * cells / pixels


def _cells_to_pixels(
    xy: np.ndarray, image_hw: Sequence[int], grid_hw: Sequence[int], coords: str
) -> np.ndarray:
    """(x, y) grid cells -> (x, y) pixels; ``corner`` is eval_pck's
    ``pred / feat_res * width`` (eval/eval_pck.py:62-63), in that order."""
    if coords == "centre":
        return from_grid(xy, image_hw, grid_hw)
    xy = np.asarray(xy, np.float64)
    cells = np.array([grid_hw[1], grid_hw[0]], np.float64)
    pixels = np.array([image_hw[1], image_hw[0]], np.float64)
    return xy / cells * pixels


def _check_sigma(sigma, style: str) -> float:
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma must be a number, got {sigma!r}") from None
    if not np.isfinite(value) or (style == "gaussian" and value <= 0):
        need = "> 0" if style == "gaussian" else "finite"
        raise ValueError(f"sigma must be {need} for style {style!r}, got {sigma!r}")
    return value


def _crw_channels(
    cells: np.ndarray, finite: np.ndarray, grid_hw: Sequence[int], sigma: float
) -> np.ndarray:
    """videowalk's per-joint label maps (data/jhmdb.py:244-254, 287-319).

    For sigma > 0, joint (px, py) (grid cells) gets a (6 sigma + 1)-wide patch
    with origin ``ul = (trunc(px - 3 sigma), trunc(py - 3 sigma))`` and
    exclusive end ``br = (trunc(px + 3 sigma + 1), trunc(py + 3 sigma + 1))``
    (Python ``int()``: truncation towards zero). Cell (r, c) with ``c`` in
    ``[max(0, ul_x), min(br_x, w))`` and ``r`` in ``[max(0, ul_y),
    min(br_y, h))`` is ``exp(-((c - ul_x - k)^2 + (r - ul_y - k)^2) /
    (2 sigma^2))`` with ``k = (6 sigma + 1) // 2``; nothing is drawn when
    ``ul_x >= w``, ``ul_y >= h``, ``br_x < 0`` or ``br_y < 0``. For sigma
    <= 0 the cell ``(trunc(py), trunc(px))`` is 1 when inside the grid.
    Joints with a non-finite coordinate (``finite`` False) stay all-zero.
    """
    h, w = grid_hw
    channels = np.zeros((h, w, NUM_JOINTS))
    for j in np.flatnonzero(finite):
        px, py = (float(v) for v in cells[j])
        if sigma <= 0:
            col, row = int(px), int(py)
            if 0 <= col < w and 0 <= row < h:
                channels[row, col, j] = 1.0
            continue
        left, top = int(px - 3 * sigma), int(py - 3 * sigma)
        right, bottom = int(px + 3 * sigma + 1), int(py + 3 * sigma + 1)
        if left >= w or top >= h or right < 0 or bottom < 0:
            continue
        peak = (6 * sigma + 1) // 2  # patch offset of the peak (2 for 0.5)
        cols = np.arange(max(0, left), min(right, w))
        rows = np.arange(max(0, top), min(bottom, h))
        dx2 = ((cols - left).astype(np.float64) - peak) ** 2
        dy2 = ((rows - top).astype(np.float64) - peak) ** 2
        patch = np.exp(-(dy2[:, None] + dx2[None, :]) / (2 * sigma**2))
        channels[rows[:, None], cols[None, :], j] = patch
    return channels


def joint_heatmaps(
    joints_xy: np.ndarray,
    image_hw: Sequence[int],
    grid_hw: Sequence[int],
    sigma: float = 0.5,
    style: str = "gaussian",
    coords: str = "centre",
) -> np.ndarray:
    """Encodes one frame's joints as heatmaps plus a background channel.

    Styles:
      * ``"gaussian"`` (ours, default): a continuous Gaussian of ``sigma``
        grid cells around the joint's grid position, sampled at every cell
        and max-normalised to 1; background = 1 - max over joints (clipped
        at 0). A joint outside the image (x outside [-0.5, W - 0.5] or y
        outside [-0.5, H - 0.5], whatever ``coords``) or not finite gets an
        all-zero channel.
      * ``"crw"``: videowalk's ``draw_labelmap_np`` (ajabri/videowalk
        code/data/jhmdb.py:287-319 @0834ff99; CropMAE
        downstreams/propagation/src/data/jhmdb.py:236-268 @ffafcf47 is the
        same): an un-normalised Gaussian patch of 6 sigma + 1 cells (4 x 4
        for sigma 0.5) whose origin is the TRUNCATED ``position - 3 sigma``,
        so the peak (exactly 1) lands on cell ``trunc(p - 1.5) + 2`` and the
        sub-cell position is lost; the patch is clipped to the grid, and a
        joint whose patch misses the grid is skipped (see ``_crw_channels``
        for the exact rule). As in videowalk there is no image test: a joint
        slightly outside the image still draws its clipped patch. Background
        = 1 where the joint channels sum to 0, else 0 (data/jhmdb.py:266).
        ``sigma <= 0`` is videowalk's one-hot branch (data/jhmdb.py:250-254).
        A non-finite joint gets an all-zero channel (videowalk's ``int()``
        would raise on it).

    Args:
      joints_xy: [15, 2] (x, y) 0-based image pixels.
      image_hw: (H, W) of the image the joints refer to.
      grid_hw: (h, w) of the feature grid.
      sigma: Gaussian standard deviation in grid cells.
      style: ``"gaussian"`` or ``"crw"``.
      coords: pixel -> grid mapping: ``"centre"`` (half-pixel centres,
        ``(x + 0.5) * w / W - 0.5``) or ``"corner"`` (``x * w / W``,
        videowalk's ``x * neww / wd / mapScale``, data/jhmdb.py:238-239).

    Returns:
      float32 [h, w, 16]: channel 0 is the background, channel 1 + j joint j.

    Raises:
      ValueError: wrong ``joints_xy`` shape, unknown ``style`` or
        ``coords``, or a ``sigma`` that is not finite (or not > 0 for
        ``"gaussian"``).
    """
    joints = np.asarray(joints_xy, np.float64)
    if joints.shape != (NUM_JOINTS, 2):
        raise ValueError(f"joints_xy must be [{NUM_JOINTS}, 2], got {joints.shape}")
    _check_choice("style", style, STYLES)
    _check_choice("coords", coords, COORDS)
    sigma = _check_sigma(sigma, style)
    h, w = grid_hw
    grid = _pixels_to_cells(
        np.where(np.isfinite(joints), joints, 0.0), image_hw, grid_hw, coords
    )
    if style == "crw":
        finite = np.all(np.isfinite(joints), 1)
        heat = _crw_channels(grid, finite, grid_hw, sigma)
        background = (heat.sum(-1) == 0).astype(np.float64)
        return np.concatenate([background[..., None], heat], -1).astype(np.float32)
    limits = np.array([image_hw[1], image_hw[0]]) - 0.5
    with np.errstate(invalid="ignore"):
        inside = np.all(np.isfinite(joints) & (joints >= -0.5) & (joints <= limits), 1)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    d2 = (xs[..., None] - grid[:, 0]) ** 2 + (ys[..., None] - grid[:, 1]) ** 2
    heat = np.exp(-d2 / (2.0 * sigma**2))  # [h, w, 15]
    peak = heat.reshape(-1, NUM_JOINTS).max(0)
    heat = np.where(inside & (peak > 0), heat / np.maximum(peak, 1e-300), 0.0)
    background = np.clip(1.0 - heat.max(-1), 0.0, None)
    return np.concatenate([background[..., None], heat], -1).astype(np.float32)


def decode_joints(
    soft: np.ndarray,
    image_hw: Sequence[int],
    topk: int = 3,
    coords: str = "centre",
) -> np.ndarray:
    """Decodes joint positions from (propagated) soft label maps.

    For each joint channel, the ``topk`` grid cells with the largest values
    (ties: lowest row-major index first) are averaged, weighted by their
    values (negative values count as 0), and mapped back to image pixels.
    This is videowalk's ``process_pose`` (code/utils/test_utils.py:55-66
    @2e410980, ``topk=3``; CropMAE's src/utils/test_utils.py:55-66 @ffafcf47
    is the same with ``topk=5``, called with its default at src/test.py:154)
    except that: torch.topk's tie order is unspecified; process_pose does not
    clip negative values (propagated maps are convex combinations of
    non-negative labels, so they have none); and where process_pose writes
    -1 for a joint whose whole map sums to 0, this returns NaN (the same
    joints for non-negative maps).

    Args:
      soft: [..., h, w, 16] label maps, background in channel 0.
      image_hw: (H, W) of the image to report positions in.
      topk: number of cells averaged per joint (at most h * w are used).
      coords: grid -> pixel mapping: ``"centre"`` (half-pixel centres,
        ``(x + 0.5) * W / w - 0.5``) or ``"corner"`` (``x / w * W``,
        eval_pck's ``pred / feat_res * width``, eval/eval_pck.py:62-63).

    Returns:
      float64 [..., 15, 2] (x, y) 0-based pixels; NaN for a joint whose
      top-k values are all <= 0 (e.g. a joint that was outside frame 0).

    Raises:
      ValueError: wrong ``soft`` shape, ``topk`` not a positive integer, or
        unknown ``coords``.
    """
    soft = np.asarray(soft, np.float64)
    if soft.ndim < 3 or soft.shape[-1] != NUM_CHANNELS:
        raise ValueError(f"soft must be [..., h, w, {NUM_CHANNELS}], got {soft.shape}")
    if isinstance(topk, bool) or not isinstance(topk, int | np.integer) or topk < 1:
        raise ValueError(f"topk must be a positive integer, got {topk!r}")
    _check_choice("coords", coords, COORDS)
    h, w = soft.shape[-3:-1]
    k = min(int(topk), h * w)
    flat = soft[..., 1:].reshape(*soft.shape[:-3], h * w, NUM_JOINTS)
    order = np.argsort(-flat, axis=-2, kind="stable")[..., :k, :]  # [..., k, 15]
    weights = np.clip(np.take_along_axis(flat, order, axis=-2), 0.0, None)
    cells = np.stack([order % w, order // w], -1).astype(np.float64)  # [..., k, 15, 2]
    total = weights.sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        grid = (cells * weights[..., None]).sum(-3) / total[..., None]
    grid = np.where(total[..., None] > 0, grid, np.nan)
    return _cells_to_pixels(grid, image_hw, (h, w), coords)


# ------------------------------------------------------------------- metric


def _as_videos(arrays, name: str) -> list[np.ndarray]:
    videos = [np.asarray(a, np.float64) for a in arrays]
    for i, video in enumerate(videos):
        if video.ndim != 3 or video.shape[1:] != (NUM_JOINTS, 2):
            raise ValueError(
                f"{name}[{i}] must be [T, {NUM_JOINTS}, 2], got {video.shape}"
            )
    return videos


def pck(
    pred: np.ndarray | Sequence[np.ndarray],
    gt: np.ndarray | Sequence[np.ndarray],
    thresholds: Sequence[float] = (0.1, 0.2),
    invalid: str = "miss",
) -> dict:
    """Percentage of correct keypoints, pooled over all videos and frames.

    A joint is correct when its distance to the ground truth is <= a x 0.6 x
    the diagonal of the bounding box of that frame's ground-truth joints
    (inclusive, with a 1e-9 relative tolerance for float rounding). Frame 0
    (given) is excluded. Per-joint accuracy is the mean over the (video,
    frame) pairs scored for that joint; PCK is the mean over the joints.

    A prediction is invalid when a coordinate is not finite: ``decode_joints``
    gives NaN where videowalk's process_pose writes -1. ``invalid``:
      * ``"miss"`` (default): an invalid prediction is scored as wrong.
      * ``"skip"``: eval_pck's rule (ajabri/videowalk code/eval/eval_pck.py
        @2e410980; CropMAE downstreams/propagation/src/eval/eval_pck.py
        @ffafcf47 is the same), where a joint whose predicted grid x is < 0
        (the -1) is "not visible" (:53-56; CropMAE :59-62): an invalid
        prediction is left out both of its frame's box (the box spans the GT
        joints of the valid predictions only, :76-91; CropMAE :82-97) and of
        its joint's denominator (:113-114; CropMAE :119-120). A joint with
        nothing left to score has per-joint accuracy NaN (eval_pck would
        divide by zero, :137) and PCK is the mean over the other joints (NaN
        when none is left). The result also has ``"skipped"``: the number of
        (frame, joint) predictions left out (frame 0 not counted).

    Known differences from eval_pck, whatever ``invalid``: it compares ``d /
    box <= a`` (:124, :136), so a frame whose box is 0 scores every joint
    wrong, where this scores exact predictions right; its box starts from
    ``min = 1e6, max = -1`` (:77-80), which matters only if every visible
    GT joint of a frame has x or y < -1; and it reports percentages
    (x 100).

    Args:
      pred: [N, T, 15, 2] or a list of [T_i, 15, 2] predicted (x, y).
      gt: ground truth with the same shapes.
      thresholds: the values of a.
      invalid: ``"miss"`` or ``"skip"``.

    Returns:
      ``{"PCK@0.1": float, "per_joint@0.1": [15 floats], ..., "frames": F,
      "videos": N}`` with F the number of frames scored, plus ``"skipped"``
      for ``invalid="skip"``.

    Raises:
      ValueError: shapes that differ or are not [T, 15, 2], no frame after
        frame 0, or an unknown ``invalid``.
    """
    _check_choice("invalid", invalid, INVALID)
    preds, gts = _as_videos(pred, "pred"), _as_videos(gt, "gt")
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted videos but {len(gts)} ground truths")
    for i, (p, g) in enumerate(zip(preds, gts, strict=True)):
        if p.shape != g.shape:
            raise ValueError(f"video {i}: pred {p.shape} but gt {g.shape}")
    p = np.concatenate([v[1:] for v in preds]) if preds else np.zeros((0, 15, 2))
    g = np.concatenate([v[1:] for v in gts]) if gts else np.zeros((0, 15, 2))
    if len(g) == 0:
        raise ValueError("no frames to score (every video has only frame 0)")
    if invalid == "skip":
        return _pck_skip(p, g, thresholds, videos=len(gts))
    diagonal = np.hypot(*(g.max(1) - g.min(1)).T)  # [F]
    distance = np.hypot(*(p - g).transpose(2, 0, 1))  # [F, 15]
    results: dict = {}
    for a in thresholds:
        limit = a * 0.6 * diagonal[:, None] * (1 + 1e-9)
        with np.errstate(invalid="ignore"):
            per_joint = (distance <= limit).mean(0)
        results[f"PCK@{a:g}"] = float(per_joint.mean())
        results[f"per_joint@{a:g}"] = [float(v) for v in per_joint]
    results.update(frames=int(len(g)), videos=len(gts))
    return results


def _pck_skip(
    p: np.ndarray, g: np.ndarray, thresholds: Sequence[float], videos: int
) -> dict:
    """``pck(..., invalid="skip")`` on pooled frames p, g [F, 15, 2]."""
    valid = np.all(np.isfinite(p), -1)  # [F, 15]
    with np.errstate(invalid="ignore"):
        low = np.where(valid[..., None], g, np.inf).min(1)  # [F, 2]
        high = np.where(valid[..., None], g, -np.inf).max(1)
        diagonal = np.hypot(*(high - low).T)  # inf for a frame with no valid joint
        distance = np.hypot(*(p - g).transpose(2, 0, 1))  # [F, 15]
    counts = valid.sum(0)  # [15]
    results: dict = {}
    for a in thresholds:
        limit = a * 0.6 * diagonal[:, None] * (1 + 1e-9)
        with np.errstate(invalid="ignore"):
            correct = (valid & (distance <= limit)).sum(0)
        per_joint = np.full(NUM_JOINTS, np.nan)
        np.divide(correct, counts, out=per_joint, where=counts > 0)
        scored = per_joint[counts > 0]
        results[f"PCK@{a:g}"] = float(scored.mean()) if scored.size else float("nan")
        results[f"per_joint@{a:g}"] = [float(v) for v in per_joint]
    results.update(
        frames=int(len(g)), videos=videos, skipped=int(valid.size - counts.sum())
    )
    return results


# ------------------------------------------------------------------ writing


def write_predictions(
    out_dir: str | Path, cls: str, video: str, pred: np.ndarray
) -> tuple[Path, Path]:
    """Writes one video's predicted joints like the input annotations.

    Files: ``<out_dir>/<cls>/<video>/joint_positions.mat`` with ``pos_img``
    [2, 15, T] 1-based (x, y) (readable by ``load_video``'s .mat reader), and
    ``joint_positions.json`` with ``class``, ``video`` and ``joints`` [T][15][2]
    0-based (x, y) (NaN -> null).

    Args:
      out_dir: output root.
      cls: action class.
      video: video name.
      pred: [T, 15, 2] (x, y) 0-based.

    Returns:
      The (.mat, .json) paths.
    """
    pred = np.asarray(pred, np.float64)
    if pred.ndim != 3 or pred.shape[1:] != (NUM_JOINTS, 2):
        raise ValueError(f"pred must be [T, {NUM_JOINTS}, 2], got {pred.shape}")
    folder = Path(out_dir) / cls / video
    folder.mkdir(parents=True, exist_ok=True)
    mat_path, json_path = folder / MAT_NAME, folder / "joint_positions.json"
    write_mat(mat_path, pred)
    record = {"class": cls, "video": video, "joints": summary.json_safe(pred)}
    json_path.write_text(json.dumps(record) + "\n")
    return mat_path, json_path


def write_mat(path: str | Path, joints: np.ndarray) -> Path:
    """``joint_positions.mat`` as JHMDB's: ``pos_img`` [2, 15, T], 1-based
    (x, y), from 0-based joints [T, 15, 2]."""
    pos_img = (np.asarray(joints, np.float64) + 1.0).transpose(2, 1, 0)
    scipy.io.savemat(path, {"pos_img": pos_img})
    return Path(path)


def write_video(
    root: str | Path,
    cls: str,
    video: str,
    frames: np.ndarray,
    joints: np.ndarray,
    compress_level: int = 6,
) -> None:
    """One ground-truth video in the official layout: ``Rename_Images``
    (RGB PNGs ``00001.png``, ...) and ``joint_positions`` (:func:`write_mat`)."""
    images = Path(root) / "Rename_Images" / cls / video
    images.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(
            images / f"{t + 1:05d}.png", compress_level=compress_level
        )
    mats = Path(root) / "joint_positions" / cls / video
    mats.mkdir(parents=True, exist_ok=True)
    write_mat(mats / MAT_NAME, joints)


def write_split(
    root: str | Path, classes: Mapping[str, Sequence[str]], split: int = 1
) -> None:
    """``splits/<class>_test_split<split>.txt`` marking every video as test."""
    folder = Path(root) / "splits"
    folder.mkdir(parents=True, exist_ok=True)
    for cls, videos in classes.items():
        lines = "".join(f"{v}.avi {TEST_LABEL}\n" for v in videos)
        (folder / f"{cls}_test_split{split}.txt").write_text(lines)


def write_summary(out_dir: str | Path, results: Mapping) -> tuple[Path, Path]:
    """Writes ``jhmdb_summary.json`` (all of ``results``) and ``jhmdb_summary.csv``.

    The CSV has columns ``joint`` and one ``PCK@a`` per threshold found in
    ``results`` (``per_joint@a`` lists): rows 0..14, then ``mean``.

    Args:
      out_dir: output folder (created).
      results: ``pck``'s output, optionally with extra JSON-able entries.

    Returns:
      The (.json, .csv) paths.
    """
    json_path, csv_path = summary.summary_paths(out_dir, "jhmdb")
    summary.write_json(json_path, dict(results))
    keys = [k for k in results if k.startswith("PCK@")]
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["joint", *keys])
        for j in range(NUM_JOINTS):
            row = [results["per_joint@" + k[4:]][j] for k in keys]
            writer.writerow([j, *row])
        writer.writerow(["mean", *[results[k] for k in keys]])
    return json_path, csv_path
