"""The grain pipeline: determinism, workers, checkpoints, host shards, bad videos."""

import logging

import numpy as np
import pytest
from absl import flags
from fake_videos import ListSource

from siammae_jax.data import pairs, pipeline

SAMPLER = pairs.PairSampler(size=16, min_gap=2, max_gap=8, repeats=2)


@pytest.fixture(autouse=True, scope="module")
def _parsed_flags():
    # grain worker processes read absl flags; outside absl.app.run mark them parsed.
    flags.FLAGS.mark_as_parsed()


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def _pipe(source=None, **kw):
    kw = {"batch_size": 4, "sampler": SAMPLER, "seed": 0, **kw}
    return pipeline.make_pipeline(source or ListSource(10), **kw)


def test_batch_layout():
    batch = next(iter(_pipe(normalize=True)))
    assert batch["frames"].shape == (4, 2, 16, 16, 3)
    assert batch["frames"].dtype == np.float32
    assert batch["indices"].shape == (4, 2) and batch["video"].shape == (4,)
    assert batch["video"][0] == batch["video"][1]  # repeated sampling: 2 per video
    assert int(batch["skipped"]) == 0


def test_same_seed_same_batches_any_workers():
    plain = _take(iter(_pipe()), 4)
    _assert_same(plain, _take(iter(_pipe()), 4))
    _assert_same(plain, _take(iter(_pipe(num_workers=2)), 4))
    other = _take(iter(_pipe(seed=1)), 4)
    assert not np.array_equal(plain[0]["frames"], other[0]["frames"])


def test_iterator_state_restores_exactly():
    it = iter(_pipe())
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 4)
    fresh = iter(_pipe())
    fresh.set_state(state)
    _assert_same(expected, _take(fresh, 4))


def test_epochs_reshuffle_and_cover_all_videos():
    batches = list(_pipe(num_epochs=2))
    assert len(batches) == 10  # 2 epochs x 10 videos x 2 pairs / 4
    videos = np.concatenate([b["video"][::2] for b in batches])
    assert sorted(videos[:10]) == list(range(10)) == sorted(videos[10:])
    assert not np.array_equal(videos[:10], videos[10:])


def _draw(batch, pair):
    """(frame indices, crop box, flip) of one pair of a batch, as a tuple."""
    return (
        tuple(batch["indices"][pair]),
        tuple(batch["crop"][pair]),
        bool(batch["flip"][pair]),
    )


def test_each_record_draws_its_own_gap_crop_and_flip():
    """The random stream is keyed by the record's global position, not by its
    video: over 2 epochs every video is drawn twice, with other frames, crops
    or flips each time; each record's draws are those of the sampler given
    ``default_rng([seed, position])`` (the module's contract), so the same
    position gives the same draw."""
    source = ListSource(10)
    batches = list(_pipe(source, num_epochs=2))
    draws = {}  # video -> the draws of its records, in order
    for position, (batch, pair) in enumerate(
        (b, p) for b in batches for p in range(0, 4, SAMPLER.repeats)
    ):
        video = int(batch["video"][pair])
        record = [_draw(batch, pair + r) for r in range(SAMPLER.repeats)]
        draws.setdefault(video, []).append(record)
        want = SAMPLER(source[video], np.random.default_rng([0, position]))
        for r in range(SAMPLER.repeats):
            np.testing.assert_array_equal(batch["frames"][pair + r], want["frames"][r])
            assert record[r] == _draw(want, r)
    assert sorted(draws) == list(range(10))
    for video, (first, second) in draws.items():
        assert first != second, video

    seen = []
    for shard in range(2):
        batches = list(
            _pipe(shard_index=shard, shard_count=2, num_epochs=1, batch_size=2)
        )
        seen.append({int(v) for b in batches for v in b["video"]})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(10))


def test_bad_videos_are_replaced_counted_and_logged(caplog):
    source = ListSource(8, broken=(2, 5), short=(6,))
    with caplog.at_level(logging.WARNING):
        batches = list(_pipe(source, num_epochs=1))
    assert sum(int(b["skipped"]) for b in batches) == 3
    used = {int(v) for b in batches for v in b["video"]}
    assert used.isdisjoint({2, 5, 6})
    assert len(batches) == 4  # every record still yields pairs
    logged = [
        r.getMessage() for r in caplog.records if "skipping video" in r.getMessage()
    ]
    assert sorted(m.split()[2].rstrip(":") for m in logged) == [
        "broken_2",
        "broken_5",
        "shift_6",
    ]
    assert any("too short" in m for m in logged)


def test_all_bad_fails_clearly():
    with pytest.raises(RuntimeError, match="no readable video"):
        next(iter(_pipe(ListSource(4, broken=(0, 1, 2, 3)), max_retries=3)))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(batch_size=3), "batch_size"),
        (dict(shard_index=2, shard_count=2), "shard_index"),
        (dict(shard_count=11), "hosts"),
    ],
)
def test_bad_pipeline_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        _pipe(**kwargs)


def test_global_batch_independent_of_host_count():
    single = _take(iter(_pipe(batch_size=8)), 3)
    hosts = [
        _take(iter(_pipe(batch_size=4, shard_index=h, shard_count=2)), 3)
        for h in (0, 1)
    ]
    for k in range(3):
        for key in ("frames", "indices", "crop", "flip", "video"):
            joined = np.concatenate([hosts[0][k][key], hosts[1][k][key]])
            np.testing.assert_array_equal(joined, single[k][key])
