"""Learning measures: checked with fake models whose answers are known."""

import types

import jax
import numpy as np
import pytest

from siammae_jax.data import synthetic
from siammae_jax.eval import learning

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


def _within_one(a, b):
    return max(abs(a[0] - b[0]), abs(a[1] - b[1])) <= 1


def test_correspondence_perfect_and_wrong(held):
    truth, visible = learning._true_patches(held, PATCH, (4, 4))
    inside = np.all((truth >= 0) & (truth < 4), -1)
    flat = np.where(inside, truth[..., 0] * 4 + truth[..., 1], 0)
    perfect = lambda i, q: int(flat[i, q])  # noqa: E731
    far = lambda i, q: int(15 - flat[i, q]) if flat[i, q] in (0, 15) else 0  # noqa: E731
    # Block 0 attends to the truth, block 1 (the last, the headline) far from it.
    corr = learning.decoder_correspondence(
        _attention_model(perfect, far), held, None, PATCH, draws=2
    )
    assert corr.masked[0] == corr.visible[0] == pytest.approx(1.0)
    assert corr.masked[1] < 0.5 and corr.visible[1] < 0.5
    scalars = corr.scalars()
    assert scalars["correspondence"] == corr.last == corr.visible[1]
    assert scalars["correspondence_masked_block0"] == corr.masked[0]
    # Chance and the same-position guess, independently, over the valid patches.
    valid = visible & inside
    cells = [(r, c) for r in range(4) for c in range(4)]
    share = [sum(_within_one(t, rc) for rc in cells) / 16 for t in truth[valid]]
    assert corr.chance == pytest.approx(np.mean(share))
    own = [
        _within_one(truth[i, q], divmod(q, 4))
        for i, q in zip(*np.nonzero(valid), strict=True)
    ]
    assert corr.same_position == pytest.approx(np.mean(own))
    # A model that copies the same position scores that baseline on each set.
    copy = learning.decoder_correspondence(
        _attention_model(lambda i, q: q), held, None, PATCH
    )
    odd = valid & (np.arange(16) % 2 == 1)
    own_odd = [
        _within_one(truth[i, q], divmod(q, 4))
        for i, q in zip(*np.nonzero(odd), strict=True)
    ]
    assert copy.last == pytest.approx(np.mean(own_odd))


def test_correspondence_picture_boxes_the_peak_and_the_truth(held):
    truth, visible = learning._true_patches(held, PATCH, (4, 4))
    inside = np.all((truth >= 0) & (truth < 4), -1)
    flat = np.where(inside, truth[..., 0] * 4 + truth[..., 1], 0)
    perfect = lambda i, q: int(flat[i, q])  # noqa: E731
    corner = lambda i, q: 0 if flat[i, q] > 5 else 15  # noqa: E731  far from truth
    rows = int((visible & inside)[:, ::2].any(1).sum())  # pairs with a masked query
    scale = 2
    height = rows * (SIZE * scale + 2) - 2
    colours = {}
    for name, fn in (("perfect", perfect), ("corner", corner)):
        image = learning.correspondence_picture(
            _attention_model(fn), held, None, PATCH, scale=scale
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
    grid = learning.correspondence_picture(
        _attention_model(perfect), held, None, PATCH, scale=scale, per_row=2
    )
    assert grid.shape == (
        -(-rows // 2) * (SIZE * scale + 2) - 2,
        2 * (2 * SIZE * scale + 2) + 8,
        3,
    )
