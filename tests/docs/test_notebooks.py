"""The notebooks run top to bottom (nbclient, in a scratch working directory) and are stored without outputs."""

import csv
import os

import nbformat
import pytest
from nbclient import NotebookClient

from helpers.tiny import ROOT

NOTEBOOKS = ROOT / "notebooks"


def execute(name, cwd):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    os.environ.pop("MPLBACKEND", None)  # the kernel inherits it; Agg (set by CI) disables inline figures
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def outputs(notebook, output_type=None):
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
            if output_type is None or output.output_type == output_type]  # fmt: skip


def text(notebook):
    return "".join(output.get("text", "") for output in outputs(notebook, "stream"))


def test_notebooks_are_stored_without_outputs():
    names = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["01_swap_pooling.ipynb", "02_train_and_watch_alpha.ipynb"]
    for name in names:
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(notebook)
        assert outputs(notebook) == [], name
        assert all(cell.get("execution_count") is None for cell in notebook.cells if cell.cell_type == "code"), name


@pytest.mark.slow
def test_swap_pooling_notebook_runs(tmp_path):
    notebook = execute("01_swap_pooling.ipynb", tmp_path)
    printed = text(notebook)
    assert "swapped 5 pooling module(s)" in printed
    assert "encoder.features.2   MaxPool2d -> PPool2d" in printed
    assert "alpha/encoder_features_20" in printed and "alpha shape (512,)" in printed
    assert "alpha=   0.0 -> 3.0000" in printed  # average of the window
    assert "alpha= 100.0 -> 6.0000" in printed  # its maximum


@pytest.mark.slow
def test_train_and_watch_alpha_notebook_runs(tmp_path):
    notebook = execute("02_train_and_watch_alpha.ipynb", tmp_path)
    log_dir = tmp_path / "lightning_logs" / "notebook" / "version_0"
    assert (log_dir / "alpha.png").is_file()  # written in the working directory, not the repository
    with open(log_dir / "metrics.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("alpha/encoder_features_2")]
    assert len(rows) == 13  # the initial alpha and one per step
    layers = {key for key in rows[0] if key.startswith("alpha/")}
    assert len(layers) == 5
    assert any(float(rows[-1][key]) != float(rows[0][key]) for key in layers)  # alpha moved
    images = [output for output in outputs(notebook) if "image/png" in output.get("data", {})]
    assert len(images) == 2  # the alpha plot and the masks
