"""The synthetic video generator: textured layers in exact affine motion.

Each video shows 2-4 textured objects (blob, polygon or ellipse shapes) moving
with smooth affine motion (translation, rotation, scale) over a textured
background that pans. Objects occlude each other by a fixed depth order and may
partly leave the frame. Textures come from scikit-image's bundled photographs;
one object of every video is cut from another region of the background's own
photograph, so colour alone does not tell object from background. Video
``index`` of ``seed`` is the same whatever the number of videos, and a video of
T frames is the first T frames of a longer one.

Conventions:
  * Frame pixels are (y, x), 0-based, pixel centres at integers.
  * Layer 0 is the background, layer k (1..K) the object with id k.
  * ``affine[t, k]`` (2x3) maps canonical texture coordinates (y, x, 1) of
    layer k (pixel coordinates in that layer's texture image) to frame pixel
    coordinates (y, x) of frame t. The background's affine is a pure
    translation (the camera pan).
  * ``keypoints`` are (x, y), 0-based; JHMDB's ``pos_img`` stores them + 1.

The layouts on disk are written by :mod:`siammae_jax.data.synthetic`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import skimage.data
from PIL import Image
from scipy import ndimage

KINDS = ("blob", "polygon", "ellipse")
COLOUR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
GRAY_PHOTOS = ("camera", "coins", "brick", "grass", "gravel", "moon")
PHOTOS = COLOUR_PHOTOS + GRAY_PHOTOS
RING = 7  # keypoints per ring: the centre plus two rings make JHMDB's 15 joints
NUM_SECTORS = 6  # VIP parts per object: 6 angular sectors plus a core
CORE_CLASS = 19  # VIP class of every object's core; sectors use 1..18
# Motion per frame as a fraction of the frame size. At 64 px with 8-px patches,
# a gap of 8 frames moves a median point by about 1.5 patches, so copying the
# same position from f1 is not enough to predict f2 (see BENCHMARKS.md).
OBJECT_SPEED = (0.02, 0.045)  # peak speed of an object's Lissajous path
CAMERA_SPEED = (0.012, 0.03)  # steady background pan
TEXTURE_SCALE = 2.0  # photo short side / frame side: room for the pan
PAN_CENTRE = 12  # frame at which the pan passes the photo's centre
# Photographs the default style never shows (all bundled with scikit-image).
UNSEEN_PHOTOS = ("cat", "hubble_deep_field", "retina", "clock", "cell", "page", "text")


@dataclasses.dataclass(frozen=True)
class Style:
    """What a synthetic set looks like and how it moves.

    Attributes:
      photos: texture photographs (scikit-image names).
      object_speed: range of an object's peak speed, fraction of the frame
        side per frame.
      camera_speed: range of the background pan's speed (same unit).
      spin: range of an object's rotation, radians per frame.
      texture_scale: photo short side / frame side (room for the pan).
    """

    photos: tuple[str, ...]
    object_speed: tuple[float, float]
    camera_speed: tuple[float, float]
    spin: tuple[float, float]
    texture_scale: float


STYLES = {
    # Training and the first held-out set.
    "default": Style(PHOTOS, OBJECT_SPEED, CAMERA_SPEED, (0.005, 0.03), TEXTURE_SCALE),
    # The second held-out set: other photographs, and objects, pan and spin
    # faster than anything the default style draws.
    "unseen": Style(UNSEEN_PHOTOS, (0.05, 0.075), (0.03, 0.045), (0.03, 0.06), 3.0),
}
_ANGLES = np.linspace(0.0, 2 * np.pi, 1024, endpoint=False)


@dataclasses.dataclass(frozen=True)
class SyntheticVideo:
    """One rendered video with its ground truth.

    Attributes:
      name: video name, ``synth_<index:04d>``.
      frames: uint8 [T, H, W, 3] RGB frames.
      labels: uint8 [T, H, W] object ids (0 background, 1..K objects).
      parts: uint8 [T, H, W] VIP part classes (0 background, 1..19).
      keypoints: float32 [T, 15, 2] (x, y), 0-based, of the ``person`` object.
      affine: float64 [T, K + 1, 2, 3]; layer k's canonical texture (y, x, 1)
        -> frame (y, x); layer 0 is the background.
      depth_order: int32 [T, K] object ids from back to front.
      person: id of the object that carries the keypoints (the frontmost).
      kinds: shape kind of each object (``KINDS``), objects 1..K.
      sources: photograph of each layer, background first.
    """

    name: str
    frames: np.ndarray
    labels: np.ndarray
    parts: np.ndarray
    keypoints: np.ndarray
    affine: np.ndarray
    depth_order: np.ndarray
    person: int
    kinds: tuple[str, ...]
    sources: tuple[str, ...]

    def motion(self) -> dict[str, np.ndarray]:
        """The arrays stored in ``motion/<name>.npz`` (input of ``true_position``).

        Keys: ``affine``, ``depth_order``, ``labels``, ``parts``, ``keypoints``
        (as the attributes), ``person`` (scalar), ``kinds`` [K] and ``sources``
        [K + 1] (strings).
        """
        return {
            "affine": self.affine,
            "depth_order": self.depth_order,
            "labels": self.labels,
            "parts": self.parts,
            "keypoints": self.keypoints,
            "person": np.array(self.person),
            "kinds": np.array(self.kinds),
            "sources": np.array(self.sources),
        }


@dataclasses.dataclass(frozen=True)
class _Layer:
    """A texture and, for objects, a star-shaped outline around its centre."""

    texture: np.ndarray  # float32 [h, w, 3], values 0..255
    source: str
    kind: str  # "background" or one of KINDS
    profile: np.ndarray | None = None  # boundary radius at each of _ANGLES

    @property
    def centre(self) -> np.ndarray:
        h, w = self.texture.shape[:2]
        return np.array([(h - 1) / 2, (w - 1) / 2])


# ----------------------------------------------------------------- textures


@functools.lru_cache(maxsize=64)
def _photo(name: str, short_side: int) -> np.ndarray:
    """A scikit-image photograph, resized to ``short_side``, uint8 [h, w] or [h, w, 3]."""
    image = Image.fromarray(getattr(skimage.data, name)())
    scale = short_side / min(image.size)
    new = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return np.asarray(image.resize(new, Image.Resampling.LANCZOS))


def _texture(rng: np.random.Generator, name: str, short_side: int) -> np.ndarray:
    """Photo ``name`` as float32 RGB; gray photos get a random colour tint."""
    photo = _photo(name, short_side).astype(np.float32)
    if photo.ndim == 2:
        tint = rng.uniform(0.35, 1.0, 3).astype(np.float32)
        photo = photo[..., None] * (tint / tint.max())
    return photo


def _crop(rng: np.random.Generator, texture: np.ndarray, side: int) -> np.ndarray:
    """A random ``side`` x ``side`` crop (mirror-padded when the texture is smaller)."""
    pad = max(0, side - min(texture.shape[:2]))
    if pad:
        texture = np.pad(texture, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    y = rng.integers(0, texture.shape[0] - side + 1)
    x = rng.integers(0, texture.shape[1] - side + 1)
    return np.ascontiguousarray(texture[y : y + side, x : x + side])


# ------------------------------------------------------------------- shapes


def _polygon_profile(angles: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boundary radius at ``_ANGLES`` of the star-shaped polygon with these vertices."""
    order = np.argsort(angles)
    angles, radii = angles[order], radii[order]
    px, py = radii * np.cos(angles), radii * np.sin(angles)
    i = (np.searchsorted(angles, _ANGLES, side="right") - 1) % len(angles)
    j = (i + 1) % len(angles)
    dx, dy = px[j] - px[i], py[j] - py[i]
    ux, uy = np.cos(_ANGLES), np.sin(_ANGLES)
    return (px[i] * py[j] - py[i] * px[j]) / (ux * dy - uy * dx)


def _shape_profile(rng: np.random.Generator, kind: str, radius: float) -> np.ndarray:
    """Boundary radius at each of ``_ANGLES`` for a random shape of ``kind``."""
    if kind == "blob":
        k = np.arange(2, 5)[:, None]
        amp = rng.uniform(0.0, 0.12, (3, 1))
        phase = rng.uniform(0, 2 * np.pi, (3, 1))
        return radius * (1 + (amp * np.cos(k * _ANGLES + phase)).sum(0))
    if kind == "polygon":
        n = int(rng.integers(4, 8))
        jitter = rng.uniform(-0.25, 0.25, n)
        angles = (
            (np.arange(n) + jitter) * 2 * np.pi / n + rng.uniform(0, 2 * np.pi)
        ) % (2 * np.pi)
        return _polygon_profile(angles, radius * rng.uniform(0.75, 1.3, n))
    a, b = radius * rng.uniform(1.0, 1.4), radius * rng.uniform(0.55, 0.95)
    phi = _ANGLES - rng.uniform(0, np.pi)
    return a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)


def _draw_layers(
    rng: np.random.Generator, size: tuple[int, int], style: Style
) -> list[_Layer]:
    """Background plus 2-4 objects; one object is cut from the background's photo."""
    photos = style.photos
    short_side = round(style.texture_scale * max(size))
    bg_name = photos[rng.integers(len(photos))]
    background = _texture(rng, bg_name, short_side)
    layers = [_Layer(background, bg_name, "background")]
    num_objects = int(rng.integers(2, 5))
    own = int(rng.integers(num_objects))  # the object cut from the background photo
    for k in range(num_objects):
        kind = KINDS[rng.integers(len(KINDS))]
        profile = _shape_profile(rng, kind, rng.uniform(0.12, 0.2) * min(size))
        side = 2 * math.ceil(profile.max()) + 4
        name = bg_name if k == own else photos[rng.integers(len(photos))]
        source = background if k == own else _texture(rng, name, short_side)
        layers.append(_Layer(_crop(rng, source, side), name, kind, profile))
    return layers


# ------------------------------------------------------------------- motion


def _object_affines(
    rng: np.random.Generator, layer: _Layer, size, frames, style: Style
) -> np.ndarray:
    """[T, 2, 3] smooth similarity motion: Lissajous path, spin, breathing scale."""
    hw = np.array(size, np.float64)
    t = np.arange(frames, dtype=np.float64)[:, None]
    mean = rng.uniform(0.3, 0.7, 2) * hw
    amp = rng.uniform(0.2, 0.4, 2) * hw
    omega = rng.uniform(*style.object_speed, 2) * hw / amp  # peak speed / size
    centre = mean + amp * np.sin(omega * t + rng.uniform(0, 2 * np.pi, 2))
    angle = (
        rng.uniform(0, 2 * np.pi) + rng.choice([-1, 1]) * rng.uniform(*style.spin) * t
    )
    scale = rng.uniform(0.85, 1.15) * (
        1 + 0.12 * np.sin(rng.uniform(0.02, 0.06) * t + rng.uniform(0, 2 * np.pi))
    )
    cos, sin = np.cos(angle[:, 0]), np.sin(angle[:, 0])
    linear = scale[:, :, None] * np.stack(
        [np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], 1
    )
    offset = centre - linear @ layer.centre
    return np.concatenate([linear, offset[:, :, None]], axis=2)


def _camera_affines(
    rng: np.random.Generator, layer: _Layer, size, frames, style: Style
) -> np.ndarray:
    """[T, 2, 3] background translation: a steady pan plus a small wobble."""
    hw = np.array(size, np.float64)
    t = np.arange(frames, dtype=np.float64)[:, None]
    direction = rng.uniform(0, 2 * np.pi)
    velocity = (
        rng.uniform(*style.camera_speed)
        * min(size)
        * np.array([np.sin(direction), np.cos(direction)])
    )
    # Centred on frame PAN_CENTRE (a constant: a video's prefix does not depend
    # on its length), a 24-frame pan stays inside the photo (no mirrored edge).
    start = (np.array(layer.texture.shape[:2]) - hw) / 2 - velocity * PAN_CENTRE
    wobble = (
        0.03
        * hw
        * np.sin(rng.uniform(0.05, 0.15, 2) * t + rng.uniform(0, 2 * np.pi, 2))
    )
    origin = start + velocity * t + wobble  # texture position of frame pixel (0, 0)
    affine = np.zeros((frames, 2, 3))
    affine[:, 0, 0] = affine[:, 1, 1] = 1.0
    affine[:, :, 2] = -origin
    return affine


def _draw_motion(rng, layers, depth, size, frames, style: Style) -> np.ndarray:
    """[T, K + 1, 2, 3] affines; redrawn until every object is visible in frame 0."""
    camera = _camera_affines(rng, layers[0], size, frames, style)
    for _ in range(100):
        objects = [
            _object_affines(rng, layer, size, frames, style) for layer in layers[1:]
        ]
        affine = np.stack([camera, *objects], axis=1)
        _, labels, _ = _render_frame(layers, affine[0], depth, size, colour=False)
        areas = [np.pi * np.mean(layer.profile**2) for layer in layers[1:]]
        scales = [
            abs(np.linalg.det(affine[0, k, :, :2])) for k in range(1, len(layers))
        ]
        counts = np.bincount(labels.ravel(), minlength=len(layers))[1:]
        if np.all(counts >= 0.3 * np.array(areas) * np.array(scales)):
            return affine
    raise RuntimeError(f"could not place {len(layers) - 1} visible objects in {size}")


# ---------------------------------------------------------------- rendering


def _invert(affine: np.ndarray) -> np.ndarray:
    """Inverse of a (batch of) 2x3 affine map(s)."""
    inv = np.linalg.inv(affine[..., :2])
    return np.concatenate([inv, -inv @ affine[..., 2:]], axis=-1)


def _apply(affine: np.ndarray, yx: np.ndarray) -> np.ndarray:
    """Applies [..., 2, 3] affines to [..., 2] points."""
    return (affine[..., :2] @ yx[..., None])[..., 0] + affine[..., 2]


def _sample(texture: np.ndarray, yx: np.ndarray, mode: str) -> np.ndarray:
    """Bilinear samples [N, 3] of ``texture`` at points ``yx`` [2, N]."""
    return np.stack(
        [
            ndimage.map_coordinates(texture[..., c], yx, order=1, mode=mode)
            for c in range(3)
        ],
        axis=-1,
    )


def _cover(layer: _Layer, affine: np.ndarray, size):
    """Frame pixels covered by an object: (ys, xs), canonical yx [2, N], angle, radius/edge."""
    r = layer.profile.max() + 1
    corners = layer.centre + np.array([[-r, -r], [-r, r], [r, -r], [r, r]])
    box = _apply(affine, corners)
    lo = np.maximum(np.floor(box.min(0)).astype(int), 0)
    hi = np.minimum(np.ceil(box.max(0)).astype(int) + 1, size)
    if np.any(hi <= lo):
        return None
    ys, xs = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]].reshape(2, -1)
    canonical = _apply(_invert(affine), np.stack([ys, xs], -1).astype(np.float64))
    rel = canonical - layer.centre
    angle = np.arctan2(rel[:, 0], rel[:, 1])
    frac = np.hypot(rel[:, 0], rel[:, 1]) / np.interp(
        angle, _ANGLES, layer.profile, period=2 * np.pi
    )
    inside = frac <= 1.0
    return (ys[inside], xs[inside]), canonical[inside].T, angle[inside], frac[inside]


def _part_class(kind: str, angle: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """VIP class: ``kind`` x angular sector in 1..18, the core (inner 35%) is 19."""
    sector = (
        np.floor((angle + np.pi) / (2 * np.pi) * NUM_SECTORS).astype(int) % NUM_SECTORS
    )
    classes = 1 + KINDS.index(kind) * NUM_SECTORS + sector
    return np.where(frac < 0.35, CORE_CLASS, classes).astype(np.uint8)


def _render_frame(layers, affine, depth, size, colour=True):
    """Composites one frame back to front: (frame float [H, W, 3] | None, labels, parts)."""
    h, w = size
    labels = np.zeros(size, np.uint8)
    parts = np.zeros(size, np.uint8)
    frame = None
    if colour:
        grid = np.mgrid[0:h, 0:w].reshape(2, -1).T.astype(np.float64)
        canonical = _apply(_invert(affine[0]), grid).T
        frame = _sample(layers[0].texture, canonical, "mirror").reshape(h, w, 3)
    for k in depth:
        covered = _cover(layers[k], affine[k], size)
        if covered is None:
            continue
        (ys, xs), canonical, angle, frac = covered
        labels[ys, xs] = k
        parts[ys, xs] = _part_class(layers[k].kind, angle, frac)
        if colour:
            frame[ys, xs] = _sample(layers[k].texture, canonical, "nearest")
    return frame, labels, parts


def _keypoint_offsets(profile: np.ndarray) -> np.ndarray:
    """15 canonical (y, x) offsets from the centre: the centre and two rings inside."""
    angles = np.concatenate(
        [
            [0.0],
            np.arange(RING) * 2 * np.pi / RING,
            (np.arange(RING) + 0.5) * 2 * np.pi / RING,
        ]
    )
    fracs = np.concatenate([[0.0], np.full(RING, 0.4), np.full(RING, 0.8)])
    radius = fracs * np.interp(angles, _ANGLES, profile, period=2 * np.pi)
    return np.stack([radius * np.sin(angles), radius * np.cos(angles)], axis=-1)


# ------------------------------------------------------------------ public


def _check_size(
    size: Sequence[int], name: str = "size", even: bool = False
) -> tuple[int, int]:
    """Validates a (height, width) pair; ``even`` for H.264's yuv420p."""
    if len(size) != 2 or any(int(s) != s or s < 16 for s in size):
        raise ValueError(
            f"{name} must be two integers >= 16 (height, width), got {size!r}"
        )
    if even and any(s % 2 for s in size):
        raise ValueError(
            f"{name} must have even height and width (H.264 yuv420p), got {size!r}"
        )
    return int(size[0]), int(size[1])


def _check_count(value: int, name: str, minimum: int = 1) -> int:
    if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def make_video(
    seed: int,
    index: int,
    frames: int = 24,
    size: tuple[int, int] = (64, 64),
    style: str = "default",
) -> SyntheticVideo:
    """Renders video ``index`` of the synthetic set ``seed`` in memory.

    Args:
      seed: data set seed (>= 0).
      index: video index (>= 0); the video does not depend on how many there are.
      frames: number of frames T.
      size: (height, width) in pixels, each >= 16.
      style: a name of ``STYLES``: textures and motion statistics.

    Returns:
      The frames, their ground truth and the motion.

    Raises:
      ValueError: a bad count, size or style name.
    """
    seed, index = _check_count(seed, "seed", 0), _check_count(index, "index", 0)
    frames, size = _check_count(frames, "frames"), _check_size(size)
    if style not in STYLES:
        raise ValueError(f"style {style!r} is not one of {sorted(STYLES)}")
    # (The default style keeps its original stream: its sets never change.)
    style_id = list(STYLES).index(style)
    entropy = [seed, index] if style_id == 0 else [seed, index, style_id]
    rng = np.random.default_rng(entropy)
    layers = _draw_layers(rng, size, STYLES[style])
    depth = tuple(int(k) for k in rng.permutation(len(layers) - 1) + 1)
    affine = _draw_motion(rng, layers, depth, size, frames, STYLES[style])
    rendered = [_render_frame(layers, affine[t], depth, size) for t in range(frames)]
    person = depth[-1]
    offsets = _keypoint_offsets(layers[person].profile) + layers[person].centre
    keypoints = _apply(affine[:, person, None], offsets[None])[..., ::-1]
    return SyntheticVideo(
        name=f"synth_{index:04d}",
        frames=np.stack(
            [np.clip(np.rint(f), 0, 255).astype(np.uint8) for f, _, _ in rendered]
        ),
        labels=np.stack([lab for _, lab, _ in rendered]),
        parts=np.stack([p for _, _, p in rendered]),
        keypoints=keypoints.astype(np.float32),
        affine=affine,
        depth_order=np.tile(np.array(depth, np.int32), (frames, 1)),
        person=person,
        kinds=tuple(layer.kind for layer in layers[1:]),
        sources=tuple(layer.source for layer in layers),
    )


def true_position(
    motion: SyntheticVideo | Mapping[str, np.ndarray],
    t_from: int,
    t_to: int,
    yx: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Where pixels of frame ``t_from`` are in frame ``t_to``.

    The layer that owns each pixel in ``t_from`` (its label) is followed with
    that layer's affine motion.

    Args:
      motion: a ``SyntheticVideo`` or its ``motion()`` arrays (e.g. a loaded
        ``motion/<name>.npz``); needs ``affine`` and ``labels``.
      t_from: source frame index.
      t_to: target frame index.
      yx: float [..., 2] (y, x) 0-based pixel positions inside frame ``t_from``.

    Returns:
      ``(yx_to, visible)``: float64 [..., 2] positions in ``t_to`` and bool
      [...], False where the point is out of frame or occluded in ``t_to``.
    """
    if isinstance(motion, SyntheticVideo):
        motion = motion.motion()
    affine, labels = np.asarray(motion["affine"]), np.asarray(motion["labels"])
    size = np.array(labels.shape[1:])
    yx = np.asarray(yx, np.float64)
    pixel = np.rint(yx).astype(int)
    if np.any(pixel < 0) or np.any(pixel >= size):
        raise ValueError(
            f"yx must lie inside the {tuple(size)} frame, got {yx.min()}..{yx.max()}"
        )
    layer = labels[t_from][pixel[..., 0], pixel[..., 1]].astype(int)
    canonical = _apply(_invert(affine[t_from][layer]), yx)
    yx_to = _apply(affine[t_to][layer], canonical)
    target = np.rint(yx_to).astype(int)
    inside = np.all((target >= 0) & (target < size), axis=-1)
    target = np.clip(target, 0, size - 1)
    visible = inside & (labels[t_to][target[..., 0], target[..., 1]] == layer)
    return yx_to, visible
