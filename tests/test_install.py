"""The installed commands (pyproject.toml's [project.scripts]) work from any folder, after `pip install -e .`
and after a non-editable `pip install .`: conf/ and the shipped weights travel with the package."""

import json
import os
import site
import subprocess
import sys

import pytest

from tests.helpers import ROOT, SHORT_RUN


def pip_install(*args: str, python: tuple[str, ...] = ()) -> None:
    """pip into another environment, offline: no dependencies, this environment's setuptools."""
    command = [
        sys.executable,
        "-m",
        "pip",
        *python,
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow  # an install and four commands, each a process
@pytest.mark.parametrize("editable", [True, False], ids=["pip install -e .", "pip install ."])
def test_the_commands_work_from_any_folder_after_an_install(editable, tmp_path, data_dir):
    env = {k: v for k, v in os.environ.items() if k != "PROJECT_ROOT"} | {"OMP_NUM_THREADS": "1"}
    if editable:  # a throwaway venv that sees this one's packages (torch...) and holds only the project
        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        (
            venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        ).joinpath("this_venv.pth").write_text(site.getsitepackages()[0] + "\n")
        pip_install("-e", ".", python=("--python", str(venv / "bin" / "python")))
        bin_dir = venv / "bin"
    else:  # the wheel's files in a folder of their own, ahead of this venv's editable install
        pip_install("--target", str(tmp_path / "site"), ".")
        bin_dir, env["PYTHONPATH"] = tmp_path / "site" / "bin", str(tmp_path / "site")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data").symlink_to(data_dir)  # MNIST as the first run would have unpacked it

    def command(name: str, *args: str) -> str:
        result = subprocess.run(
            [str(bin_dir / name), *args], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return result.stdout

    assert "wrote digits.png" in command("cvae-generate", "ckpt_path=pretrained", "out=digits.png")
    command("cvae-train", *SHORT_RUN, "~callbacks.sample_accuracy", "logger=csv")
    (run,) = (elsewhere / "logs" / "train" / "runs").iterdir()  # the runs land in the current folder
    ckpt = run / "checkpoints" / "last.ckpt"
    fast = ("~callbacks.log_likelihood", "trainer.limit_test_batches=1", "eval.n_per_digit=5")
    command("cvae-evaluate", f"ckpt_path={ckpt}", *fast, "eval.temperatures=[1.0]")
    assert json.loads((ckpt.parent / "metrics.json").read_text())["model"] == "CVAE"
    assert "classifier_path: pretrained" in command("cvae-export", "--cfg", "job")
