"""What the encoder attends to: the last layer's [CLS] attention per head.

``attention_maps`` gives [T, heads, h, w] maps; ``render`` turns them into a
PNG grid (rows: frames; columns: the frame, the head average, each head) and
an mp4 of the head average over the whole video.
"""

from __future__ import annotations

import jax
import numpy as np
from etils import epath

from siammae_jax.data import pairs, video, video_file
from siammae_jax.eval import geometry, pictures, tasks
from siammae_jax.models import vit


def read_frames(path: str, max_frames: int) -> np.ndarray:
    """uint8 frames from a video file, a frame folder or one image.

    Video files go through the training data's reader
    (:class:`~siammae_jax.data.video_file.VideoFile`), so frame ``i`` is the same
    picture here as there.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      BadVideoError: ``path`` cannot be read as a video, frames or an image.
    """
    p = epath.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist.")
    if p.is_dir():
        clip = video.FrameFolder(p)
    elif p.suffix.lower() in video.IMAGE_EXTENSIONS:
        return video.FrameFolder(p.parent, frames=[p.name], fps=1.0).read([0])
    else:
        clip = video_file.VideoFile(p)
    count = min(clip.num_frames, max_frames)
    return clip.read(list(range(count)))


def attention_maps(model: vit.ViT, frames: np.ndarray, batch: int = 4) -> np.ndarray:
    """[T, heads, h, w] attention of [CLS] over the patches (last block)."""
    grid = (frames.shape[1] // model.patch, frames.shape[2] // model.patch)
    apply = jax.jit(lambda x: model(x, return_attention=True)[1][:, :, 0, 1:])
    out = []
    for start in range(0, len(frames), batch):
        x = pairs.normalize(frames[start : start + batch])
        out.append(np.asarray(apply(x)))
    maps = np.concatenate(out)
    return maps.reshape(*maps.shape[:2], *grid)


def render(
    frames: np.ndarray, maps: np.ndarray, out: epath.Path, rows: int = 4
) -> None:
    """Writes ``attention.png`` (grid) and ``attention.mp4`` (head average)."""
    out.mkdir(parents=True, exist_ok=True)
    size = frames.shape[1:3]
    grid_rows = []
    for t in pictures.pick_frames(len(frames), rows):
        cells = [
            frames[t],
            pictures.blend(frames[t], pictures.heat(maps[t].mean(0), size)),
        ]
        cells += [pictures.heat(m, size) for m in maps[t]]
        grid_rows.append(pictures.strip(cells))
    gap = np.full((2, grid_rows[0].shape[1], 3), 255, np.uint8)
    picture = np.concatenate([x for r in grid_rows for x in (r, gap)][:-1])
    pictures.save(out / "attention.png", picture)
    even = (size[0] // 2 * 2, size[1] // 2 * 2)
    movie = [
        pictures.blend(f, pictures.heat(m.mean(0), size))[: even[0], : even[1]]
        for f, m in zip(frames, maps, strict=True)
    ]
    if len(movie) > 1:
        video.write_mp4(out / "attention.mp4", np.stack(movie))


def run(model: vit.ViT, path: str, out: str, short_side: int, max_frames: int) -> dict:
    """Attention pictures of a video (or image) at ``short_side`` resolution."""
    frames = read_frames(path, max_frames)
    size = tasks.input_size(*frames.shape[1:3], model.patch, short_side=short_side)
    frames = geometry.resize_frames(frames, size)
    maps = attention_maps(model, frames)
    render(frames, maps, epath.Path(out))
    return {"frames": len(frames), "heads": maps.shape[1], "grid": maps.shape[2:]}
