"""Executes notebooks/siammae_colab.ipynb end to end (``make test-notebook``).

The notebook runs with its smallest settings (``SIAMMAE_NOTEBOOK_CI=1``) in a
fresh kernel; any failing cell fails the test, and its outputs must hold the
pictures (image/png).
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "siammae_colab.ipynb"


@pytest.mark.notebook
def test_notebook_runs_and_shows_pictures(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("SIAMMAE_NOTEBOOK_CI", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("SIAMMAE_ENCODER", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    )
    client.execute()  # raises CellExecutionError when a cell fails
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
        if o.output_type == "error"
    ]  # fmt: skip
    assert not errors, errors
    pngs = [
        i for i, c in enumerate(nb.cells) if c.cell_type == "code"
        for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]  # fmt: skip
    # Loss curve, reconstructions, attention, overlays, the loaded encoder.
    assert len(set(pngs)) >= 5, pngs
    assert os.path.exists(NOTEBOOK)
