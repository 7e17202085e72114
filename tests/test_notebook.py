"""experiments/quickstart.ipynb runs top to bottom (at smoke size) and leaves its results."""
import json
import os

import nbclient
import nbformat

from conftest import ONE_THREAD_PER_OP

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "experiments", "quickstart.ipynb")


def test_quickstart_notebook_runs_at_smoke_size(tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  monkeypatch.setenv("SSL_JAX_NOTEBOOK_SIZE", "smoke")
  monkeypatch.setenv("SSL_JAX_NOTEBOOK_WORKDIR", str(workdir))
  monkeypatch.setenv("XLA_FLAGS", ONE_THREAD_PER_OP)   # one device, as in Colab
  # The kernel runs in tmp_path: make this checkout importable there, installed or not (the
  # notebook would otherwise try to clone the repository).
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [os.path.abspath(os.path.join(os.path.dirname(__file__), "..")),
       os.environ.get("PYTHONPATH", "")]))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = "".join(out.get("text", "") for cell in notebook.cells
                    for out in cell.get("outputs", []))
  assert "kNN top-1" in outputs and "ETA" in outputs    # the run's table and progress
  results = json.loads((workdir / "eval.json").read_text())
  assert {"knn", "linear"} <= set(results)
  assert (workdir / "plots" / "curves.png").exists()
  images = [out for cell in notebook.cells for out in cell.get("outputs", [])
            if "image/png" in out.get("data", {})]
  assert len(images) == 2
