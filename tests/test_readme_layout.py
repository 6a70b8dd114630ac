"""README "Layout" names every module of the package and every benchmark script.

The rule: the section is the README's ``## Layout`` up to the next ``## ``
heading. A table row names folders in its first cell (backticked, ending in
``/``). A backticked token ending in ``.py`` names the file at that path from
one of the folders its row names (``loop.py`` in the ``siammae_jax/train/``
row), from the package (``train/checkpoint.py``: ``siammae_jax/train/...``) or
from the repository root (``siammae_jax/configs/siammae.py``), whichever exist.
Every ``*.py`` file under ``siammae_jax/`` (``__init__.py`` included) and every
``*.py`` script directly in ``benchmarks/`` must be named, and every such token
must name a file: a module that went away cannot stay in the section.
"""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOKEN = re.compile(r"`([^`]+)`")


def layout_section(text: str) -> str:
    start = text.index("\n## Layout\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def named_paths(section: str, root: pathlib.Path) -> tuple[set[str], list[str]]:
    """``(the files the section names, its .py tokens that name no file)``."""
    named, stale = set(), []
    for line in section.splitlines():
        cells = line.strip().strip("|").split("|") if line.startswith("|") else [""]
        folders = [t for t in TOKEN.findall(cells[0]) if t.endswith("/")]
        for token in TOKEN.findall(line):
            if not token.endswith(".py"):
                continue
            bases = [*folders, "siammae_jax/", ""]
            found = {b + token for b in bases if (root / (b + token)).is_file()}
            named |= found
            if not found:
                stale.append(token)
    return named, stale


def files(root: pathlib.Path) -> set[str]:
    package = root.glob("siammae_jax/**/*.py")
    scripts = root.glob("benchmarks/*.py")
    return {p.relative_to(root).as_posix() for p in [*package, *scripts]}


def test_layout_names_every_module_and_benchmark_script():
    section = layout_section((ROOT / "README.md").read_text())
    named, stale = named_paths(section, ROOT)
    missing = sorted(files(ROOT) - named)
    assert not missing, f"README Layout does not name: {missing}"
    assert not stale, f"README Layout names files that do not exist: {stale}"


def test_the_rule(tmp_path):
    for path in ("siammae_jax/train/loop.py", "siammae_jax/eval/run.py",
                 "siammae_jax/demo.py", "siammae_jax/data/tfds/vip.py",
                 "benchmarks/mutation.py", "benchmarks/extra.py"):  # fmt: skip
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    section = "\n".join(
        [
            "## Layout",
            "| path | what |",
            "|---|---|",
            "| `siammae_jax/train/` | `loop.py` (drives), `eval/run.py`, `gone.py` |",
            "| `siammae_jax/data/` | `tfds/vip.py` |",
            "| `siammae_jax/demo.py`, `benchmarks/` | the demo; `mutation.py` |",
        ]
    )
    named, stale = named_paths(section, tmp_path)
    assert named == {
        "siammae_jax/train/loop.py",  # by its row's folder
        "siammae_jax/eval/run.py",  # from the package
        "siammae_jax/data/tfds/vip.py",
        "siammae_jax/demo.py",  # from the root
        "benchmarks/mutation.py",
    }
    assert stale == ["gone.py"]
    assert files(tmp_path) - named == {"benchmarks/extra.py"}
