"""In-memory videos for pipeline tests (importable by grain worker processes)."""

from __future__ import annotations

import numpy as np

from siammae_jax.data.video import BadVideoError, Video


class ShiftVideo(Video):
    """Frame t is a fixed random texture moved ``t * speed`` pixels to the right."""

    def __init__(self, seed: int, num_frames=60, size=(48, 64), speed=1, fps=30.0):
        self.path = f"shift_{seed}"
        self.num_frames = num_frames
        self.fps = fps
        self.size = size
        self.speed = speed
        rng = np.random.default_rng(seed)
        width = size[1] + 2 * num_frames * speed + 4
        coarse = rng.integers(0, 256, (size[0] // 4 + 1, width // 4 + 1, 3))
        self.texture = np.kron(coarse, np.ones((4, 4, 1))).astype(np.uint8)

    def read(self, indices):
        h, w = self.size
        out = []
        for t in indices:
            if not 0 <= t < self.num_frames:
                raise BadVideoError(self.path, f"frame {t} out of range")
            start = (
                2 * self.num_frames * self.speed - t * self.speed
            )  # content moves right
            out.append(self.texture[:h, start : start + w])
        return np.stack(out)


class BrokenVideo(Video):
    """A video whose decoding fails."""

    def __init__(self, path: str):
        self.path = path
        self.num_frames = 100
        self.fps = 30.0

    def read(self, indices):
        raise BadVideoError(self.path, "corrupt data")


class ListSource:
    """A grain random-access source over videos made on demand."""

    def __init__(self, count: int, broken: tuple[int, ...] = (), short: tuple = ()):
        self.count, self.broken, self.short = count, tuple(broken), tuple(short)

    def __len__(self):
        return self.count

    def __repr__(self):
        return f"ListSource({self.count}, {self.broken}, {self.short})"

    def __getitem__(self, i):
        if i in self.broken:
            return BrokenVideo(f"broken_{i}")
        return ShiftVideo(i, num_frames=2 if i in self.short else 60, size=(32, 40))
