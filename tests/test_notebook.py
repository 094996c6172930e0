"""notebooks/explore.ipynb: ships with its outputs cleared and runs top to bottom (nbmake, tiny model)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"


def test_notebook_ships_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code and all(not cell["outputs"] and cell["execution_count"] is None for cell in code)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_with_a_tiny_model(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NOTEBOOK_TRAIN_STEPS": "5", "MPLBACKEND": "Agg"}
    env.pop("CVAE_CKPT", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbmake", str(NOTEBOOK)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 passed" in result.stdout
