"""DAVIS-2017 semi-supervised: the official layout, read and written.

Layout (the official one):
  <root>/ImageSets/2017/<split>.txt           one sequence name a line
  <root>/JPEGImages/480p/<seq>/00000.jpg      RGB frames
  <root>/Annotations/480p/<seq>/00000.png     "P" PNGs, object ids (255 void)
  <results>/<seq>/00000.png                   predictions, ids as in frame 0

J&F is scored by :mod:`siammae_jax.datasets.davis_score`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

VOID = 255
RESOLUTION = "480p"


@dataclasses.dataclass(frozen=True)
class DavisSequence:
    """One DAVIS sequence: frames and first-frame ground truth.

    Attributes:
      name: sequence name, e.g. ``bike-packing``.
      frame_names: frame file stems in order, e.g. ``("00000", "00001", ...)``.
      frames: uint8 [T, H, W, 3] RGB frames.
      first_mask: uint8 [H, W] object ids of the first frame (void -> 0).
      object_ids: sorted object ids (> 0) present in the first frame.
    """

    name: str
    frame_names: tuple[str, ...]
    frames: np.ndarray
    first_mask: np.ndarray
    object_ids: tuple[int, ...]


# ------------------------------------------------------------------ reading


def _image_dir(root: Path, seq: str) -> Path:
    return root / "JPEGImages" / RESOLUTION / seq


def _annotation_dir(root: Path, seq: str) -> Path:
    return root / "Annotations" / RESOLUTION / seq


def read_set(root: str | Path, split: str = "val") -> list[str]:
    """Sequence names of ``ImageSets/2017/<split>.txt``.

    Args:
      root: DAVIS-2017 root folder.
      split: set file name without ``.txt`` (``val``, ``train``, ``test-dev``...).

    Returns:
      The names in file order (blank lines skipped, repeats dropped).

    Raises:
      FileNotFoundError: the set file does not exist.
      ValueError: a listed sequence has no frame or annotation folder.
    """
    root = Path(root)
    path = root / "ImageSets" / "2017" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"DAVIS set file {path} not found (split {split!r})")
    names = list(dict.fromkeys(s.strip() for s in path.read_text().splitlines()))
    names = [name for name in names if name]
    for name in names:
        for folder in (_image_dir(root, name), _annotation_dir(root, name)):
            if not folder.is_dir():
                raise ValueError(
                    f"sequence {name!r} listed in {path} has no folder {folder}"
                )
    return names


def _frame_names(root: Path, seq: str) -> list[str]:
    """JPEG stems of ``seq``; an annotation without its JPEG is an error."""
    folder = _image_dir(root, seq)
    if not folder.is_dir():
        raise FileNotFoundError(f"DAVIS frame folder {folder} not found")
    names = sorted(p.stem for p in folder.glob("*.jpg"))
    if not names:
        raise ValueError(f"DAVIS sequence {seq!r} has no .jpg frames in {folder}")
    orphans = sorted(
        {p.stem for p in _annotation_dir(root, seq).glob("*.png")} - set(names)
    )
    if orphans:
        missing = folder / f"{orphans[0]}.jpg"
        raise FileNotFoundError(
            f"DAVIS frame {missing} not found, but its annotation exists "
            f"({len(orphans)} annotated frame(s) of {seq!r} have no JPEG)"
        )
    return names


def _read_labels(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Raw ids of an indexed ("P") or gray ("L") PNG, uint8 [H, W].

    Args:
      path: the PNG.
      size: expected (height, width); None accepts any.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not decodable, not a "P"/"L" image, or not of ``size``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"mask {path} not found")
    try:
        with Image.open(path) as image:
            mode = image.mode
            labels = np.array(image) if mode in ("P", "L") else None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot decode mask {path}: {error}") from error
    if labels is None:
        raise ValueError(
            f"mask {path} must be an indexed ('P') or 8-bit gray ('L') PNG of "
            f"object ids, got mode {mode!r}"
        )
    if size is not None and labels.shape != tuple(size):
        raise ValueError(
            f"mask {path} is {labels.shape[0]}x{labels.shape[1]} (HxW), "
            f"expected {size[0]}x{size[1]}"
        )
    return labels.astype(np.uint8)


def _read_frame(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB frame; a file that cannot be decoded is a ValueError."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot decode frame {path}: {error}") from error


def _frame_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image from its header."""
    try:
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot decode frame {path}: {error}") from error


def load_sequence(root: str | Path, seq: str) -> DavisSequence:
    """Frames and first-frame ground truth of one sequence.

    Args:
      root: DAVIS-2017 root folder.
      seq: sequence name.

    Returns:
      The sequence; see ``DavisSequence``.

    Raises:
      FileNotFoundError: no frames, the first annotation is missing, or an
        annotation has no JPEG frame.
      ValueError: a frame cannot be decoded, the frames differ in size, or the
        first annotation's size differs from its frame.
    """
    root = Path(root)
    names = _frame_names(root, seq)
    paths = [_image_dir(root, seq) / f"{name}.jpg" for name in names]
    frames = [_read_frame(path) for path in paths]
    for path, frame in zip(paths, frames, strict=True):
        if frame.shape != frames[0].shape:
            raise ValueError(
                f"frame {path} is {frame.shape[0]}x{frame.shape[1]} (HxW), but "
                f"{paths[0].name} is {frames[0].shape[0]}x{frames[0].shape[1]}"
            )
    first = _annotation_dir(root, seq) / f"{names[0]}.png"
    if not first.is_file():
        raise FileNotFoundError(f"first-frame annotation {first} not found")
    mask = _read_labels(first, frames[0].shape[:2])
    mask = np.where(mask == VOID, 0, mask).astype(np.uint8)
    return DavisSequence(
        name=seq,
        frame_names=tuple(names),
        frames=np.stack(frames),
        first_mask=mask,
        object_ids=tuple(int(i) for i in np.unique(mask) if i > 0),
    )


def _read_ground_truth(root: Path, seq: str) -> tuple[list[str], np.ndarray]:
    """(frame names, uint8 [T, H, W] ids with void -> 0) of one sequence."""
    names = _frame_names(root, seq)
    masks = []
    for name in names:
        path = _annotation_dir(root, seq) / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(
                f"annotation {path} not found, but frame {name}.jpg of {seq!r} "
                "exists (scoring needs every frame's ground truth)"
            )
        size = _frame_size(_image_dir(root, seq) / f"{name}.jpg")
        masks.append(_read_labels(path, size))
        if masks[-1].shape != masks[0].shape:
            raise ValueError(
                f"annotation {path} is {size[0]}x{size[1]} (HxW), but the first "
                f"annotation of {seq!r} is {masks[0].shape[0]}x{masks[0].shape[1]}"
            )
    labels = np.stack(masks)
    labels[labels == VOID] = 0
    return names, labels


def read_annotations(root: str | Path, seq: str) -> np.ndarray:
    """All ground-truth masks of one sequence (for scoring).

    Args:
      root: DAVIS-2017 root folder.
      seq: sequence name.

    Returns:
      uint8 [T, H, W] object ids, void (255) mapped to 0.

    Raises:
      FileNotFoundError: a frame with a JPEG has no annotation, or the reverse.
      ValueError: an annotation's size differs from its frame's.
    """
    return _read_ground_truth(Path(root), seq)[1]


# ------------------------------------------------------------------ writing


@functools.cache
def palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map, uint8 [256, 3]."""
    colours = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = (r, g, b)
    colours.flags.writeable = False
    return colours


def write_masks(
    out_dir: str | Path,
    seq: str,
    frame_names: Sequence[str],
    masks: np.ndarray | Sequence[np.ndarray],
    compress_level: int = 6,
) -> Path:
    """Writes ``<out_dir>/<seq>/<frame>.png``: indexed PNGs, DAVIS palette.

    Predictions and ground truth (``<root>/Annotations/480p``) alike.

    Args:
      out_dir: results folder.
      seq: sequence name.
      frame_names: one file stem per mask, e.g. ``00000``.
      masks: [T, H, W] integer object ids in 0..255, written as given.
      compress_level: zlib level of the PNGs (1: fast, for large frames).

    Returns:
      The sequence folder.

    Raises:
      ValueError: the counts differ, or a mask is not 2-D ids in 0..255.
    """
    if len(frame_names) != len(masks):
        raise ValueError(
            f"{len(frame_names)} frame names but {len(masks)} masks for {seq!r}"
        )
    folder = Path(out_dir) / seq
    folder.mkdir(parents=True, exist_ok=True)
    colours = palette().ravel().tolist()
    for name, mask in zip(frame_names, masks, strict=True):
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.dtype.kind not in "iub":
            raise ValueError(
                f"mask {name} of {seq!r} must be 2-D integer ids, got "
                f"{mask.dtype} {mask.shape}"
            )
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(f"mask {name} of {seq!r} has ids outside 0..255")
        image = Image.fromarray(mask.astype(np.uint8))
        image.putpalette(colours)  # "L" -> "P", the ids stay the pixel values
        image.save(folder / f"{name}.png", compress_level=compress_level)
    return folder


def write_sequence(
    root: str | Path,
    seq: str,
    jpegs: Sequence[bytes],
    masks: np.ndarray,
    compress_level: int = 6,
) -> None:
    """One ground-truth sequence in the official layout: ``JPEGImages``
    (the given JPEG files) and ``Annotations`` (see :func:`write_masks`),
    frames named ``00000``, ``00001``, ..."""
    names = [f"{t:05d}" for t in range(len(jpegs))]
    frames = Path(root) / "JPEGImages" / RESOLUTION / seq
    frames.mkdir(parents=True, exist_ok=True)
    for name, jpeg in zip(names, jpegs, strict=True):
        (frames / f"{name}.jpg").write_bytes(jpeg)
    write_masks(
        Path(root) / "Annotations" / RESOLUTION, seq, names, masks, compress_level
    )


def write_set(root: str | Path, names: Sequence[str], split: str = "val") -> Path:
    """``ImageSets/2017/<split>.txt`` listing ``names`` (and an empty train
    list when none exists)."""
    folder = Path(root) / "ImageSets" / "2017"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.txt"
    path.write_text("".join(f"{n}\n" for n in names))
    if not (folder / "train.txt").exists():
        (folder / "train.txt").write_text("")
    return path


def resized_copy(
    root: str | Path, dest: str | Path, split: str, size: tuple[int, int]
) -> Path:
    """The ``split`` of a DAVIS root with every frame and annotation resized
    to ``size`` (height, width) with PIL's nearest filter, as RSP's
    ``davis_preprocessing.py`` makes the ``DAVIS_480_880`` set that the
    480x880 protocol scores against: frames re-saved as JPEG with PIL's
    default quality, annotations as indexed PNGs. Written once; reused while
    ``dest/source.json`` matches.
    """
    root, dest = Path(root), Path(dest)
    source = {"root": str(root.resolve()), "split": split, "size": list(size)}
    marker = dest / "source.json"
    if marker.is_file() and json.loads(marker.read_text()) == source:
        return dest
    names = read_set(root, split)
    target = tuple(size)[::-1]
    for seq in names:
        for kind, suffix in (("JPEGImages", ".jpg"), ("Annotations", ".png")):
            folder = dest / kind / RESOLUTION / seq
            folder.mkdir(parents=True, exist_ok=True)
            for path in sorted((root / kind / RESOLUTION / seq).glob(f"*{suffix}")):
                with Image.open(path) as image:
                    image.resize(target, Image.Resampling.NEAREST).save(
                        folder / path.name
                    )
    write_set(dest, names, split)
    marker.write_text(json.dumps(source))
    return dest
