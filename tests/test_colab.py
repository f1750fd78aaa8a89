"""The Colab notebooks run top to bottom (tiny sizes, through the real package)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

COLAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "colab")


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(COLAB) if f.endswith(".ipynb")))
def test_notebook_executes(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MAMI_NOTEBOOK_WORKDIR", str(tmp_path))
    monkeypatch.setenv("MAMI_NOTEBOOK_TINY", "1")
    nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "rank1" in outputs and "parameters" in outputs
