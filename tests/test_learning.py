"""Learning measures: checked with fake models whose answers are known."""

import types

import jax
import numpy as np
import pytest

from siammae_jax.data import synthetic
from siammae_jax.eval import learning, pictures

PATCH, SIZE = 8, 32  # 4x4 patch grid


@pytest.fixture(scope="module")
def held():
    return learning.heldout_pairs(seed=3, videos=4, size=SIZE, frames=12, gap=4)


def test_heldout_pairs_are_frames_of_the_videos(held):
    assert held.frames.shape == (4, 2, SIZE, SIZE, 3)
    video = synthetic.make_video(3, 2, 12, (SIZE, SIZE))
    np.testing.assert_array_equal(held.frames[2, 0], video.frames[held.t1])
    np.testing.assert_array_equal(held.frames[2, 1], video.frames[held.t2])
    assert held.t2 - held.t1 == 4
    head = held.first(2)
    assert head.frames.shape[0] == len(head.motions) == 2 and head.t1 == held.t1
    with pytest.raises(ValueError, match="gap=12 frames"):
        learning.heldout_pairs(seed=3, videos=1, size=SIZE, frames=12, gap=12)


def _copy_model(f1, f2, key, attention):
    """A 'model' whose loss is how far f1 is from f2: copying from f1 helps."""
    loss = np.mean((np.asarray(f1) - np.asarray(f2)) ** 2)
    return types.SimpleNamespace(loss=loss)


def test_past_frame_use_sees_the_gap(held):
    past = learning.past_frame_use(_copy_model, held, jax.random.key(0), PATCH)
    assert past.true < past.other
    assert past.true < past.shuffled  # copying needs the layout, not only colours


def _palette_model(f1, f2, key, attention):
    """A 'model' that reads only f1's mean colour: blind to the layout."""
    colour = lambda f: np.asarray(f).mean((1, 2))  # noqa: E731
    return types.SimpleNamespace(loss=np.mean((colour(f1) - colour(f2)) ** 2))


def test_shuffled_past_frame_keeps_colours_and_moves_every_patch(held):
    past = learning.past_frame_use(_palette_model, held, jax.random.key(0), PATCH)
    assert past.shuffled == pytest.approx(past.true, rel=1e-5)
    assert past.other > past.true
    frames = held.frames[:, 0]
    shuffled = learning.shuffle_patches(frames, PATCH, seed=1)
    tiles = lambda f: f.reshape(-1, 4, PATCH, 4, PATCH, 3).swapaxes(2, 3)  # noqa: E731
    a = tiles(frames).reshape(len(frames), 16, -1)
    b = tiles(shuffled).reshape(len(frames), 16, -1)
    for i in range(len(frames)):  # the same tiles, none left in its place
        assert sorted(map(bytes, a[i])) == sorted(map(bytes, b[i]))
        assert not any(np.array_equal(a[i, k], b[i, k]) for k in range(16))
    with pytest.raises(ValueError, match="tiles"):
        learning.shuffle_patches(frames[:, :30], PATCH)


def _attention_model(*guess_fns):
    """A 'model' whose decoder block k attends (all heads) to ``guess_fns[k](i, q)``.

    Even f2 patches are masked, odd ones visible.
    """
    n = (SIZE // PATCH) ** 2

    def apply(f1, f2, key, attention):
        b = f1.shape[0]
        attn = np.full((b, len(guess_fns), 2, n, 1 + n), 1e-3, np.float32)
        for k, guess_fn in enumerate(guess_fns):
            for i in range(b):
                for q in range(n):
                    attn[i, k, :, q, 1 + guess_fn(i, q)] = 1.0
        mask = np.tile(np.arange(n) % 2 == 0, (b, 1)).astype(np.float32)
        return types.SimpleNamespace(attention=attn, mask=mask)

    return apply


# Hand-made held-out pairs: the whole frame pans by a known number of pixels
# (f1 -> f2), so every f2 patch's true f1 patch is known without the code under
# test: f2 patch (r, c) shows what f1 patch (r - dy / 8, c - dx / 8) showed.
PAN = ((8, 8), (0, -16))  # (dy, dx) between f1 and f2, one pair each
PAN_T1, PAN_T2 = 1, 3


@pytest.fixture(scope="module")
def pan():
    """``HeldOut`` of pure pans: background only (labels 0), its affine the
    translation texture -> frame by ``offset(t) = -32 + t * d / 2`` pixels, and
    frames rendered from a random texture so that f_t[y, x] = tex[(y, x) - offset(t)].
    """
    rng = np.random.default_rng(0)
    frames, motions = [], []
    for d in PAN:
        texture = rng.integers(0, 256, (SIZE + 64, SIZE + 64, 3), np.uint8)
        offsets = [np.array(d) * t / (PAN_T2 - PAN_T1) - 32 for t in range(4)]
        affine = np.zeros((4, 1, 2, 3))
        affine[:, 0, 0, 0] = affine[:, 0, 1, 1] = 1.0
        affine[:, 0, :, 2] = offsets
        labels = np.zeros((4, SIZE, SIZE), np.uint8)
        video = [
            texture[-oy : -oy + SIZE, -ox : -ox + SIZE]
            for oy, ox in (o.astype(int) for o in offsets)
        ]
        frames.append(np.stack([video[PAN_T1], video[PAN_T2]]))
        motions.append({"affine": affine, "labels": labels})
    return learning.HeldOut(np.stack(frames), tuple(motions), PAN_T1, PAN_T2)


def _pan_truth():
    """[B, 16, 2] true f1 patch of each f2 patch, [B, 16] whether it is in f1."""
    own = np.stack(np.divmod(np.arange(16), 4), -1)
    truth = np.stack([own - np.array(d) // PATCH for d in PAN])
    return truth, np.all((truth >= 0) & (truth < 4), -1)


def _tiles(frame):
    return frame.reshape(4, PATCH, 4, PATCH, 3).swapaxes(1, 2)


def test_pan_truth_is_what_the_pixels_show(pan):
    """The hand truth agrees with the rendered frames (f2's tile is f1's tile at
    the true patch) and ``true_patches`` finds it, f2 -> f1 (not f1 -> f2)."""
    truth, inside = _pan_truth()
    for i in range(len(PAN)):
        f1, f2 = _tiles(pan.frames[i, 0]), _tiles(pan.frames[i, 1])
        for q in np.flatnonzero(inside[i]):
            np.testing.assert_array_equal(f2[divmod(q, 4)], f1[tuple(truth[i, q])])
        assert 4 <= inside[i].sum() < 16
    where, seen = learning.true_patches(pan, PATCH, (4, 4))
    np.testing.assert_array_equal(where, truth)
    np.testing.assert_array_equal(seen, inside)


def _within_one(a, b):
    return max(abs(a[0] - b[0]), abs(a[1] - b[1])) <= 1


def _far_from(cell):
    """The grid corner farthest from ``cell`` (>= 2 patches away on a 4x4 grid)."""
    corners = [(0, 0), (0, 3), (3, 0), (3, 3)]
    return max(corners, key=lambda rc: max(abs(rc[0] - cell[0]), abs(rc[1] - cell[1])))


def test_correspondence_perfect_and_wrong(pan):
    """Against the hand truth of the pans: attending to it scores 1.0, attending
    where f2's content goes instead of where it came from (f1 -> f2) scores 0."""
    truth, inside = _pan_truth()
    flat = np.where(inside, truth[..., 0] * 4 + truth[..., 1], 0)
    perfect = lambda i, q: int(flat[i, q])  # noqa: E731
    own = np.stack(np.divmod(np.arange(16), 4), -1)

    def backwards(i, q):  # the f1 -> f2 direction: 2 x the pan away from the truth
        r, c = own[q] + np.array(PAN[i]) // PATCH
        if 0 <= r < 4 and 0 <= c < 4:
            return int(r * 4 + c)
        r, c = _far_from(truth[i, q])
        return r * 4 + c

    # Block 0 attends to the truth, block 1 (the last, the headline) backwards.
    corr = learning.decoder_correspondence(
        _attention_model(perfect, backwards), pan, None, PATCH, draws=2
    )
    assert corr.masked[0] == corr.visible[0] == pytest.approx(1.0)
    assert corr.masked[1] == corr.visible[1] == 0.0
    scalars = corr.scalars()
    assert scalars["correspondence"] == corr.last == corr.visible[1]
    assert scalars["correspondence_masked_block0"] == corr.masked[0]
    # Chance and the same-position guess, independently, over the valid patches.
    cells = [(r, c) for r in range(4) for c in range(4)]
    share = [sum(_within_one(t, rc) for rc in cells) / 16 for t in truth[inside]]
    assert corr.chance == pytest.approx(np.mean(share))
    same = [
        _within_one(truth[i, q], divmod(q, 4))
        for i, q in zip(*np.nonzero(inside), strict=True)
    ]
    assert corr.same_position == pytest.approx(np.mean(same))
    assert corr.same_position == pytest.approx(9 / (9 + 8))  # pan 1 patch, 2 patches
    # A model that copies the same position scores that baseline on each set.
    copy = learning.decoder_correspondence(
        _attention_model(lambda i, q: q), pan, None, PATCH
    )
    odd = inside & (np.arange(16) % 2 == 1)
    same_odd = [
        _within_one(truth[i, q], divmod(q, 4))
        for i, q in zip(*np.nonzero(odd), strict=True)
    ]
    assert copy.last == pytest.approx(np.mean(same_odd))


def test_correspondence_picture_boxes_the_peak_and_the_truth(pan):
    truth, inside = _pan_truth()
    flat = np.where(inside, truth[..., 0] * 4 + truth[..., 1], 0)
    perfect = lambda i, q: int(flat[i, q])  # noqa: E731
    corner = lambda i, q: 0 if flat[i, q] > 5 else 15  # noqa: E731  far from truth
    rows = int(inside[:, ::2].any(1).sum())  # pairs with a masked query
    scale = 2
    height = rows * (SIZE * scale + 2) - 2
    colours = {}
    for name, fn in (("perfect", perfect), ("corner", corner)):
        image = pictures.correspondence_picture(
            _attention_model(fn), pan, None, PATCH, scale=scale
        )
        assert image.shape == (height, 2 * SIZE * scale + 2, 3)
        half = SIZE * scale + 2
        colours[name] = [
            int(np.all(image[:, half:] == c, -1).sum())
            for c in ((255, 220, 0), (0, 220, 0))
        ]
        assert np.all(image[:, :half] == (255, 0, 0), -1).sum() > 0  # the query
    # The peak's yellow box is hidden under the truth's green one only when the
    # attention peaks at the truth.
    assert colours["perfect"][0] == 0 and colours["perfect"][1] > 0
    assert colours["corner"][0] > 0 and colours["corner"][1] > 0
    grid = pictures.correspondence_picture(
        _attention_model(perfect), pan, None, PATCH, scale=scale, per_row=2
    )
    assert grid.shape == (
        -(-rows // 2) * (SIZE * scale + 2) - 2,
        2 * (2 * SIZE * scale + 2) + 8,
        3,
    )
