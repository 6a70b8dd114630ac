"""The README's PyTorch example: a timm model scored as a plain function.

Runs the README code block as written (only the data root and the output
folder replaced), then checks that the same weights loaded by
``siammae_jax.load`` score the same under the protocol whose image statistics
and position-embedding rule the function uses (``siammae``: ImageNet std
0.229, timm's antialiased bicubic resampling).
"""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.interop

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    start = text.index("Any backbone can be scored")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    return block.group(1)


def test_readme_torch_example_scores_like_our_loader(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from siammae_jax.data import synthetic
    from siammae_jax.eval import evaluate

    synthetic.write_dataset(tmp_path, videos=2, frames=5, size=(64, 96), progress=False)
    root = tmp_path / "DAVIS"
    code = _readme_example()
    code = code.replace('"DAVIS2017_ROOT"', repr(str(root)))
    code = code.replace('"out/timm"', repr(str(tmp_path / "timm")))
    code = code.replace(
        'protocol="dino"', 'protocol="dino", overrides={"short_side": 64}'
    )
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, "README example", "exec"), scope)
    result = scope["result"]
    assert result["protocol"]["name"] == "dino"
    assert result["weights"]["kind"] == "callable"
    assert result["inputs"]["sizes"] == {"synth_0000": [64, 64], "synth_0001": [64, 64]}

    # The same weights through siammae_jax.load, under siammae (the function's
    # statistics and resampling): the scores agree.
    weights = tmp_path / "vit_s16.safetensors"
    state = {k: v.contiguous() for k, v in scope["model"].state_dict().items()}
    save_file(state, str(weights))
    fn = evaluate(
        "davis", scope["features"], root, "siammae", tmp_path / "fn",
        overrides={"short_side": 64}, progress=False,
    )  # fmt: skip
    ours = evaluate(
        "davis", weights, root, "siammae", tmp_path / "ours",
        overrides={"short_side": 64}, progress=False,
    )  # fmt: skip
    assert fn["inputs"] == ours["inputs"]
    for key, value in fn["scores"].items():
        assert ours["scores"][key] == pytest.approx(value, abs=5e-3), key
