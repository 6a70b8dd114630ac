"""Label propagation with frozen features (SiamMAE Table 4b, CRW conventions).

Frame 0's labels are carried through a video by feature affinity: each target
position of frame ``t`` takes the softmax-weighted labels of its top-k most
similar source positions among a context of frame 0 (with its ground-truth
labels) and a queue of previous frames (with their soft predicted labels).
Queue-frame sources outside a neighbourhood of the target are ignored: a
circle (Euclidean distance < ``radius`` feature cells, CRW's rule) or a square
(Chebyshev distance <= ``radius``, DINO's rule); frame 0 is restricted only
when ``restrict_first`` is set (DINO). The settings of each named evaluation
protocol are in :mod:`siammae_jax.eval.protocols` and ``docs/protocols.md``.

``propagate`` runs one jit-compiled step per frame (compiled once per grid
size, feature width, label count and config; reused for every frame and
every video of that size). The step keeps frame 0 and a ring buffer of the
last ``queue`` frames on the device and computes affinities in chunks of
``chunk`` target positions, so its working memory is
``[chunk, (queue + 1) * h * w]`` and does not grow with the video's length.
``propagate_reference`` is a dense numpy version for tests and benchmarks.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

QUEUE_MODES = ("videowalk", "dino")
NEIGHBOURHOODS = ("circle", "square")

# (features [S, hw, D], labels [S, hw, C], valid [S]); slot 0 is frame 0 and
# slots 1..queue are the ring buffer of previous frames.
State = tuple[jax.Array, jax.Array, jax.Array]


@dataclasses.dataclass(frozen=True)
class PropagationConfig:
    """How labels are propagated.

    Attributes:
      topk: sources per target position (top-k over all context frames and
        positions jointly).
      queue: number of previous frames in the context besides frame 0.
      radius: neighbourhood radius in feature cells (see ``neighbourhood``).
      temperature: softmax temperature of the cosine affinities.
      queue_mode: "videowalk" (the video is front-padded with ``queue`` copies
        of frame 0, so early queues hold copies of frame 0 with its
        ground-truth labels) or "dino" (the queue holds only the predicted
        frames max(1, t - queue)..t-1).
      neighbourhood: "circle" (a source is kept if its Euclidean distance to
        the target cell is < radius: videowalk's ``MaskedAttention``) or
        "square" (row and column distances both <= radius: DINO's
        ``restrict_neighborhood``).
      restrict_first: also restrict frame 0's sources to the neighbourhood
        (DINO masks every context frame; videowalk leaves frame 0 whole).
      chunk: most target positions per affinity chunk (bounds peak memory:
        the chunk's affinities are [chunk, (queue + 1) * h * w] float32). The
        h * w targets are split into ceil(h * w / chunk) equal chunks, the
        last one padded.
    """

    topk: int = 7
    queue: int = 20
    radius: float = 20.0
    temperature: float = 0.7
    queue_mode: str = "videowalk"
    chunk: int = 1024
    neighbourhood: str = "circle"
    restrict_first: bool = False

    def __post_init__(self) -> None:
        """Raises ValueError naming the first invalid field."""
        for name, low in (("topk", 1), ("queue", 0), ("chunk", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an int, got {value!r}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        for name in ("radius", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(
                value, (int, float, np.integer, np.floating)
            ):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not value > 0 or not np.isfinite(value):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if self.neighbourhood not in NEIGHBOURHOODS:
            raise ValueError(
                f"neighbourhood must be one of {NEIGHBOURHOODS}, "
                f"got {self.neighbourhood!r}"
            )
        if not isinstance(self.restrict_first, (bool, np.bool_)):
            raise ValueError(
                f"restrict_first must be a bool, got {self.restrict_first!r}"
            )
        if self.queue_mode not in QUEUE_MODES:
            raise ValueError(
                f"queue_mode must be one of {QUEUE_MODES}, got {self.queue_mode!r}"
            )


# Paper defaults (Table 4b): top-k, queue length, radius.
DAVIS = PropagationConfig(7, 20, 20)
VIP = PropagationConfig(10, 20, 8)
JHMDB = PropagationConfig(7, 20, 20)


def _check_inputs(
    features: np.ndarray, first_labels: np.ndarray, config: PropagationConfig
) -> None:
    """Raises ValueError on inconsistent shapes or too few positions for top-k."""
    if features.ndim != 4 or features.shape[0] < 1:
        raise ValueError(f"features must be [T>=1, h, w, D], got {features.shape}")
    if first_labels.ndim != 3 or first_labels.shape[:2] != features.shape[1:3]:
        raise ValueError(
            f"first_labels must be [h, w, C] with (h, w) = {features.shape[1:3]}, "
            f"got {first_labels.shape}"
        )
    if config.topk > features.shape[1] * features.shape[2]:
        raise ValueError(
            f"topk = {config.topk} exceeds the {features.shape[1] * features.shape[2]}"
            " positions of frame 0"
        )


def _near(h: int, w: int, radius: float, neighbourhood: str) -> np.ndarray:
    """Keep-mask [h*w, h*w] (target, source) of an h x w grid's neighbourhoods."""
    rows, cols = np.divmod(np.arange(h * w), w)
    dr = np.abs(rows[:, None] - rows[None, :])
    dc = np.abs(cols[:, None] - cols[None, :])
    if neighbourhood == "square":
        return np.maximum(dr, dc) <= radius
    return np.hypot(dr, dc) < radius


def _context_frames(t: int, config: PropagationConfig) -> list[int]:
    """Queue frame indices (oldest first) for target frame ``t``."""
    if config.queue_mode == "videowalk":
        return [max(j, 0) for j in range(t - config.queue, t)]
    return list(range(max(1, t - config.queue), t))


def propagate_reference(
    features: np.ndarray, first_labels: np.ndarray, config: PropagationConfig
) -> np.ndarray:
    """Dense numpy label propagation (full affinity matrices, argsort top-k).

    Args:
      features: [T, h, w, D] L2-normalised features.
      first_labels: [h, w, C] soft or one-hot labels of frame 0.
      config: propagation settings.

    Returns:
      [T, h, w, C] float32 soft labels; frame 0 is ``first_labels``.
    """
    features, first_labels = np.asarray(features), np.asarray(first_labels)
    _check_inputs(features, first_labels, config)
    t_len, h, w, d = features.shape
    feats = features.reshape(t_len, h * w, d).astype(np.float32)
    labels = np.empty((t_len, h * w, first_labels.shape[-1]), np.float32)
    labels[0] = first_labels.reshape(h * w, -1)
    near = _near(h, w, config.radius, config.neighbourhood)
    first = near if config.restrict_first else np.ones_like(near)
    rows = np.arange(h * w)[:, None]
    for t in range(1, t_len):
        queue = _context_frames(t, config)
        src_feats = np.concatenate([feats[0]] + [feats[j] for j in queue])
        src_labels = np.concatenate([labels[0]] + [labels[j] for j in queue])
        keep = np.concatenate([first] + [near] * len(queue), axis=1)
        aff = (feats[t] @ src_feats.T) / np.float32(config.temperature)
        aff[~keep] = -np.inf
        idx = np.argsort(-aff, axis=1, kind="stable")[:, : config.topk]
        top = aff[rows, idx]
        weights = np.exp(top - top[:, :1])
        weights /= weights.sum(axis=1, keepdims=True)
        labels[t] = np.einsum("nk,nkc->nc", weights, src_labels[idx])
    return labels.reshape(t_len, h, w, -1)


def _chunk_layout(hw: int, chunk: int) -> tuple[int, int]:
    """(chunk size, number of chunks) for ``hw`` targets, chunks <= ``chunk``.

    The chunks are balanced (1650 positions in chunks of <= 1024 -> 2 x 825),
    so at most ``n_chunks - 1`` padding targets are computed and discarded.
    """
    n_chunks = -(-hw // chunk)
    return -(-hw // n_chunks), n_chunks


@functools.lru_cache(maxsize=32)
def _neighbourhood(
    h: int, w: int, radius: float, chunk: int, neighbourhood: str = "circle"
) -> jax.Array:
    """Static keep-mask [n_chunks, chunk, h*w] of queue sources per target.

    Rows of padding targets (beyond h*w) keep everything; they are discarded.
    """
    size, n_chunks = _chunk_layout(h * w, chunk)
    mask = np.ones((n_chunks * size, h * w), bool)
    mask[: h * w] = _near(h, w, radius, neighbourhood)
    return jnp.asarray(mask.reshape(n_chunks, size, h * w))


def _predict(
    state: State, feat: jax.Array, mask: jax.Array, config: PropagationConfig
) -> jax.Array:
    """Soft labels [hw, C] of one frame's features ``feat`` [hw, D] from ``state``."""
    src_feats, src_labels, valid = state
    n_src, hw, d = src_feats.shape
    n_chunks, size, _ = mask.shape
    flat_labels = src_labels.reshape(n_src * hw, -1)
    targets = jnp.pad(feat, ((0, n_chunks * size - hw), (0, 0)))

    def one_chunk(args: tuple[jax.Array, jax.Array]) -> jax.Array:
        queries, near = args  # [size, D], [size, hw]
        aff = jnp.einsum(
            "cd,snd->csn", queries, src_feats, precision=jax.lax.Precision.HIGHEST
        )
        aff = aff / jnp.float32(config.temperature)
        whole = jnp.arange(n_src)[None, :, None] == 0
        if config.restrict_first:
            whole = jnp.zeros_like(whole)
        keep = jnp.where(whole, True, near[:, None])
        keep = keep & valid[None, :, None]
        aff = jnp.where(keep, aff, -jnp.inf).reshape(size, n_src * hw)
        top, idx = jax.lax.top_k(aff, config.topk)
        weights = jax.nn.softmax(top, axis=-1)
        return jnp.einsum("ck,ckl->cl", weights, flat_labels[idx])

    preds = jax.lax.map(one_chunk, (targets.reshape(n_chunks, size, d), mask))
    return preds.reshape(n_chunks * size, -1)[:hw]


@functools.lru_cache(maxsize=32)
def _step_fn(
    h: int, w: int, d: int, c: int, config: PropagationConfig
) -> Callable[..., tuple[State, jax.Array]]:
    """The jitted ``(state, feat, slot, mask) -> (state, labels)`` for one size.

    ``slot`` (traced int32) is where the new frame goes in the ring buffer;
    the state is donated and updated in place.
    """
    del h, w, d, c  # Part of the cache key only: one compiled function per size.

    def step(
        state: State, feat: jax.Array, slot: jax.Array, mask: jax.Array
    ) -> tuple[State, jax.Array]:
        pred = _predict(state, feat, mask, config)
        if config.queue > 0:
            src_feats, src_labels, valid = state
            state = (
                src_feats.at[slot].set(feat),
                src_labels.at[slot].set(pred),
                valid.at[slot].set(True),
            )
        return state, pred

    return jax.jit(step, donate_argnums=0)


def _initial_state(
    first_feats: np.ndarray, first_labels: np.ndarray, config: PropagationConfig
) -> State:
    """Frame 0 in slot 0 and in every ring slot (valid only for videowalk)."""
    n_src = config.queue + 1
    feats = np.broadcast_to(first_feats, (n_src, *first_feats.shape))
    labels = np.broadcast_to(first_labels, (n_src, *first_labels.shape))
    valid = np.full(n_src, config.queue_mode == "videowalk")
    valid[0] = True
    return (
        jnp.array(feats, jnp.float32),
        jnp.array(labels, jnp.float32),
        jnp.array(valid),
    )


def propagate(
    features: np.ndarray, first_labels: np.ndarray, config: PropagationConfig
) -> np.ndarray:
    """Propagates frame 0's labels through a video (chunked, jit-compiled).

    Args:
      features: [T, h, w, D] features, L2-normalised per position (numpy or
        jax; moved to the device one frame at a time).
      first_labels: [h, w, C] soft or one-hot labels of frame 0 at feature
        resolution (see ``labels_to_grid``).
      config: propagation settings.

    Returns:
      [T, h, w, C] float32 soft labels; frame 0 is ``first_labels``.
    """
    first_labels = np.asarray(first_labels, np.float32)
    _check_inputs(features, first_labels, config)
    t_len, h, w, d = features.shape
    c = first_labels.shape[-1]
    out = np.empty((t_len, h, w, c), np.float32)
    out[0] = first_labels
    if t_len == 1:
        return out
    step = _step_fn(h, w, d, c, config)
    mask = _neighbourhood(
        h, w, float(config.radius), config.chunk, config.neighbourhood
    )
    first = np.asarray(features[0], np.float32).reshape(h * w, d)
    state = _initial_state(first, first_labels.reshape(h * w, c), config)
    for t in range(1, t_len):
        feat = jnp.asarray(features[t], jnp.float32).reshape(h * w, d)
        slot = np.int32(1 + t % config.queue) if config.queue else np.int32(0)
        state, pred = step(state, feat, slot, mask)
        out[t] = np.asarray(pred).reshape(h, w, c)
    return out


def labels_to_grid(onehot: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of [H, W, C] labels to the feature grid (h, w).

    Half-pixel centres without antialiasing, like cv2.INTER_LINEAR: output
    cell i samples the input at (i + 0.5) * H / h - 0.5, clamped to the edges.

    Args:
      onehot: [H, W, C] one-hot (or soft) labels at image resolution.
      grid: (h, w) of the feature grid.

    Returns:
      [h, w, C] float32 soft labels.
    """
    onehot = jnp.asarray(onehot, jnp.float32)
    shape = (*grid, onehot.shape[-1])
    return np.asarray(jax.image.resize(onehot, shape, "linear", antialias=False))


def grid_to_labels(soft: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling (half-pixel centres) of [h, w, C] labels to (H, W).

    Args:
      soft: [h, w, C] soft labels on the feature grid.
      size: (H, W) image size.

    Returns:
      [H, W, C] float32 soft labels; take the argmax over C for a mask.
    """
    soft = jnp.asarray(soft, jnp.float32)
    shape = (*size, soft.shape[-1])
    return np.asarray(jax.image.resize(soft, shape, "linear", antialias=False))
