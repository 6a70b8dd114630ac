"""The demo's closing summary keeps the interface lines; its summary picture.

``siammae_jax.demo`` is imported inside the tests: it pulls in TensorFlow (clu's
writers), and TensorFlow loaded before torch/triton at collection time crashes
the interpreter when the ``torch`` extra is installed (``make test-interop``).
"""

import re

import numpy as np
from etils import epath
from PIL import Image

from siammae_jax.eval import pictures

SCORES = {
    "pre-trained": {"J&F-Mean": 0.4, "J-Mean": 0.45, "F-Mean": 0.35},
    "random-init": {"J&F-Mean": 0.3, "J-Mean": 0.32, "F-Mean": 0.28},
}
MEASURES = {
    "past_frame": {"true": 0.6061, "other": 1.5949, "shuffled": 0.7},
    "motion": {
        "gap": 12,
        "correspondence": 0.327,
        "correspondence_chance": 0.12,
        "correspondence_same_position": 0.341,
    },
    "correspondence": {
        "correspondence": 0.2,
        "correspondence_chance": 0.118,
        "correspondence_same_position": 0.21,
        "correspondence_visible_block0": 0.31,
        "correspondence_visible_block1": 0.2,
        "correspondence_masked_block0": 0.25,
        "correspondence_masked_block1": 0.13,
    },
}


def test_summary_has_the_interface_lines(tmp_path):
    from siammae_jax import demo

    text = demo.summary(epath.Path(tmp_path), MEASURES, SCORES).splitlines()
    assert text[0] == "past-frame use: loss with true f1 0.606 vs other-video f1 1.595"
    assert text[1].startswith(
        "  layout use: loss with true f1's patches shuffled 0.700"
    )
    assert text[2] == (
        "decoder correspondence: 0.200 within 1 patch (chance 0.118); "
        "same-position guess 0.210"
    )
    assert "visible f2 patches 0.310, 0.200; masked 0.250, 0.130" in text[3]
    assert "pre-trained encoder: J&F 0.400 (J 0.450, F 0.350)" in text
    assert "random-init encoder: J&F 0.300 (J 0.320, F 0.280)" in text
    assert "encoder gain: J&F +0.100 over random init" in text
    colour = {**SCORES, "mean colour": {"J&F-Mean": 0.35}}
    lines = demo.summary(epath.Path(tmp_path), MEASURES, colour).splitlines()
    gain = lines.index("encoder gain: J&F +0.100 over random init")
    assert lines[gain + 1].startswith(
        "  no learning: mean-colour patch features J&F 0.350 (+0.050 over random init"
    )
    assert text[4].startswith(
        "motion: correspondence 0.327 at a gap of 12 frames (same-position guess "
        "0.341, chance 0.120"
    )
    assert any(re.match(r"pictures: .*summary\.png", line) for line in text)


def test_summary_picture_stacks_reconstruction_and_overlays(tmp_path):
    from siammae_jax import demo

    root = epath.Path(tmp_path)
    (root / "pictures").mkdir()
    Image.new("RGB", (256, 128), (10, 20, 30)).save(
        root / "pictures/reconstruction.png"
    )
    Image.new("RGB", (512, 128), (0, 90, 0)).save(root / "pictures/correspondence.png")
    for name in SCORES:
        (root / demo.OVERLAYS[name]).mkdir(parents=True)
        Image.new("RGB", (200, 50), (200, 0, 0)).save(
            root / demo.OVERLAYS[name] / "synth_0000.png"
        )
    path = demo.summary_picture(root, SCORES)
    image = np.asarray(Image.open(path))
    # Four panels scaled to 768 px wide (384 + 192 + 192 + 192 high) under 16-px
    # captions: reconstructions, decoder attention, then the two overlays.
    assert image.shape == (4 * 16 + 384 + 3 * 192, 768, 3)
    assert (image[16 + 10, 10] == (10, 20, 30)).all()
    assert (image[16 + 384 + 16 + 10, 10] == (0, 90, 0)).all()
    assert (image[16 + 384 + 16 + 192 + 16 + 10, 10] == (200, 0, 0)).all()


def test_scores_come_from_the_online_evaluation(tmp_path):
    """The J&F lines read the run's metrics.jsonl: the last evaluation and the
    random-init twin's (step 0); no evaluation is an error, not a made-up score."""
    import json

    import pytest

    from siammae_jax import demo

    rows = [
        {"step": 0, "eval/davis/J&F_random_init": 0.3, "eval/davis/J_random_init": 0.32,
         "eval/davis/F_random_init": 0.28},
        {"step": 5, "loss": 1.0, "eval/davis/J&F": 0.35, "eval/davis/J": 0.4,
         "eval/davis/F": 0.3},
        {"step": 10, "loss": 0.9, "eval/davis/J&F": 0.4, "eval/davis/J": 0.45,
         "eval/davis/F": 0.35},
        {"step": 11, "loss": 0.9},
    ]  # fmt: skip
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert demo.online_scores(epath.Path(tmp_path)) == SCORES
    path.write_text(json.dumps(rows[-1]) + "\n")
    with pytest.raises(RuntimeError, match="no eval/davis/J&F in"):
        demo.online_scores(epath.Path(tmp_path))


def test_captioned_column_keeps_aspect():
    out = pictures.captioned_column([("a", np.zeros((10, 20, 3), np.uint8))], 40, 8)
    assert out.shape == (8 + 20, 40, 3)
    assert (out[:8] == 255).mean() > 0.9  # a white caption bar with some text
