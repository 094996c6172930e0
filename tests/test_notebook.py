"""notebooks/explore.ipynb: ships with its outputs cleared and runs top to bottom (nbmake, tiny model)."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"


def test_notebook_ships_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code and all(not cell["outputs"] and cell["execution_count"] is None for cell in code)


@pytest.mark.slow
@pytest.mark.parametrize("ckpt", ["latent2", None], ids=["a tiny latent-2 model", "the shipped model"])
def test_notebook_runs_top_to_bottom(ckpt, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NOTEBOOK_TRAIN_STEPS": "5", "MPLBACKEND": "Agg"}
    env.pop("CVAE_CKPT", None)
    env |= {"CVAE_CKPT": ckpt} if ckpt else {}
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


def test_the_notebook_shows_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    from cvae_lightning.errors import one_line_errors_in_notebook

    shell = InteractiveShell.instance()
    try:
        one_line_errors_in_notebook()
        (tmp_path / "notes.ckpt").write_text("not a checkpoint")
        code = "from cvae_lightning import load_checkpoint\n"
        code += f"load_checkpoint('{tmp_path}/notes.ckpt', key='CVAE_CKPT')"
        result = shell.run_cell(code)
    finally:
        InteractiveShell.clear_instance()
    out = capsys.readouterr()
    assert not result.success  # the cell fails, so "run all" stops there
    lines = out.out.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"error: CVAE_CKPT={tmp_path}/notes.ckpt is not allowed: not a readable checkpoint"
    )
    assert "Traceback" not in out.out + out.err
