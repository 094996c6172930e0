"""Out of the box: the shipped weights (docs/pretrained.md), make's choice of checkpoint, errors that come
first."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvae_lightning.harness import checkpoints
from tests.helpers import ROOT, SHORT_RUN, composed, run_entry

SHIPPED = {kind: checkpoints.SHIPPED / f"{kind}.pt" for kind in ("cvae", "classifier")}


@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_the_shipped_weights_are_weights_only_small_and_name_no_path_of_this_machine(kind):
    path = SHIPPED[kind]
    assert path.stat().st_size <= 5e6
    shipped = torch.load(path, weights_only=True)  # torch's weights-only reader: no arbitrary pickle
    assert set(shipped) <= set(checkpoints.SHIPPED_KEYS) and "optimizer_states" not in shipped
    assert checkpoints.kind(shipped) == kind
    assert "/" not in json.dumps({k: v for k, v in shipped.items() if k != "state_dict"}, default=str)


def test_the_shipped_cvae_loads_in_a_plain_python_session():
    code = (
        "import torch, cvae_lightning; model = cvae_lightning.pretrained(); "
        "print(tuple(model.sample(labels=torch.tensor([2, 0, 2, 6])).shape))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,  # as a user in the clone
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(4, 1, 28, 28)"


def test_the_shipped_cvae_draws_the_asked_digits_as_the_shipped_classifier_reads_them():
    from cvae_lightning.evaluation.generation import draw, repeat_digits
    from cvae_lightning.evaluation.scores import conditional_accuracy, read_digits

    torch.manual_seed(0)
    labels = repeat_digits(100)  # 1,000 samples at T=1
    images = draw(checkpoints.load_checkpoint("pretrained"), labels, temperature=1.0)
    read = read_digits(checkpoints.load_classifier("pretrained"), images)
    assert conditional_accuracy(read, labels)["overall"] >= 0.98


def test_a_short_run_twice_gives_the_same_weights(tmp_path, data_dir):
    """What makes `make pretrained` re-make the shipped weights: a run is a function of its seed (one thread,
    the same CPU and torch). The whole 20 epochs: the test below."""
    torch.set_num_threads(1)
    weights = []
    for name in ("a", "b"):
        run_entry(
            "train.py", *SHORT_RUN, "logger=csv", f"paths.data_dir={data_dir}", output_dir=tmp_path / name
        )
        weights.append(
            torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        )
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("CVAE_REMAKE_PRETRAINED"), reason="20 epochs: CVAE_REMAKE_PRETRAINED=1"
)
def test_make_pretrained_s_command_gives_the_shipped_cvae(tmp_path, data_dir):
    """`make pretrained`'s CVAE run (`python train.py`, one thread), whole: the shipped weights, equal where
    the CPU and torch are those that made them, else within float32 rounding grown over 8,600 steps."""
    torch.set_num_threads(1)
    run_entry("train.py", f"paths.data_dir={data_dir}", output_dir=tmp_path)
    trained = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    shipped = torch.load(SHIPPED["cvae"], weights_only=True)["state_dict"]
    assert trained.keys() == shipped.keys()
    assert max((trained[k] - shipped[k]).abs().max().item() for k in shipped) <= 1e-3


def make(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`make ARGS` with the project's Makefile in `cwd`, this Python as the venv's (nothing installed)."""
    venv = cwd / "venv"
    venv.mkdir(exist_ok=True)
    (venv / ".installed").touch()  # newer than pyproject.toml: `install` has nothing to do
    command = ["make", "-s", "-f", str(ROOT / "Makefile"), f"VENV={venv}", f"PY={sys.executable}", *args]
    # PROJECT_ROOT: `cwd`'s, not the one conftest.py sets (the scripts keep one already set)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", "PROJECT_ROOT": str(cwd)}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_make_picks_the_newest_cvae_run_never_the_classifier_and_else_the_shipped_model(tmp_path):
    shutil.copyfile(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    told = make("-n", "evaluate", cwd=tmp_path)
    assert "ckpt_path=pretrained" in told.stdout, told.stdout + told.stderr
    for run in ("2026-01-01_00-00-00", "2026-01-02_00-00-00"):
        (tmp_path / "logs" / "train" / "runs" / run / "checkpoints").mkdir(parents=True)
        (tmp_path / "logs" / "train" / "runs" / run / "checkpoints" / "last.ckpt").touch()
    told = make("-n", "evaluate", cwd=tmp_path)
    assert "ckpt_path=logs/train/runs/2026-01-02_00-00-00/checkpoints/last.ckpt" in told.stdout
    # the classifier's runs lie elsewhere: `make classifier` after `make train` leaves CKPT as it was
    run_dir = composed("experiment=classifier", return_hydra_config=True).hydra.run.dir
    assert "/classifier/runs/" in run_dir and "/train/" not in run_dir


def test_make_demo_checks_ckpt_before_installing_or_building_anything(tmp_path):
    refused = make("demo", "CKPT=nope.ckpt", cwd=tmp_path)
    assert refused.returncode != 0
    assert refused.stdout.strip().splitlines() == [
        "error: CKPT=nope.ckpt is not allowed: no file there; expected a checkpoint written by `make train`, "
        "e.g. logs/train/runs/<run>/checkpoints/last.ckpt, or pretrained"
    ]
    assert "pip" not in refused.stderr and "npm" not in refused.stderr and not (tmp_path / "web").exists()
    said = make("ckpt", cwd=tmp_path)
    assert said.stdout.startswith("CKPT=pretrained: the shipped CVAE (docs/pretrained.md)")


def test_train_checks_values_before_hydra_writes_anything():
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from cvae_lightning.harness.runs import ChecksFirst

    # Hydra callbacks end as the scripts do: SystemExit("error: <one line>")
    with pytest.raises(SystemExit, match="^error: model.latent_dim=0 is not allowed"):
        ChecksFirst().on_run_start(config=composed("model.latent_dim=0"))
    sweep = composed(return_hydra_config=True)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):  # as Hydra's, while it runs
        OmegaConf.update(sweep, "hydra.overrides.task", ["trainer.max_epochs=0", "seed=1,2"])
        with pytest.raises(SystemExit, match="^error: trainer.max_epochs=0 is not allowed"):
            ChecksFirst().on_multirun_start(config=sweep)
        # each value a sweep takes, here the second of the first sweep, before any job starts
        OmegaConf.update(sweep, "hydra.overrides.task", ["model.latent_dim=2,0", "seed=1,2", "+extras.x=1,2"])
        with pytest.raises(SystemExit, match="^error: model.latent_dim=0 is not allowed"):
            ChecksFirst().on_multirun_start(config=sweep)
        # `++`: once the check's own overrides doubled it into `++++`, Hydra's to refuse, and it passed
        OmegaConf.update(sweep, "hydra.overrides.task", ["++model.latent_dim=2,0"])
        with pytest.raises(SystemExit, match="^error: model.latent_dim=0 is not allowed"):
            ChecksFirst().on_multirun_start(config=sweep)
        OmegaConf.update(sweep, "hydra.overrides.task", ["model.latent_dim=2,4", "seed=1,2"])
        ChecksFirst().on_multirun_start(config=sweep)  # nothing refused


@pytest.mark.slow  # two processes
@pytest.mark.parametrize("args", [["model.latent_dim=0"], ["-m", "model.latent_dim=2,0", "seed=1,2"]])
def test_a_refused_run_or_sweep_prints_one_line_no_config_tree_and_leaves_nothing_in_logs(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    command = [sys.executable, str(ROOT / "train.py"), *args, f"paths.log_dir={tmp_path / 'logs'}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 1
    shown = (result.stdout + result.stderr).strip().splitlines()
    assert shown == ["error: model.latent_dim=0 is not allowed: expected an integer >= 1"], shown
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow  # four processes: what a user types on a fresh clone
def test_make_train_classifier_then_evaluate_and_export_use_the_cvae_run(tmp_path, data_dir):
    for name in ("train.py", "evaluate.py", "export.py", "generate.py", "pyproject.toml"):
        shutil.copyfile(ROOT / name, tmp_path / name)  # copies: the scripts' folder is the project root
    for name in ("conf", "cvae_lightning", "data"):
        (tmp_path / name).symlink_to(ROOT / name)
    short = " ".join(f"'{o}'" for o in (*SHORT_RUN, "~callbacks.sample_accuracy", "logger=csv"))
    for target, args in (
        ("train", short),
        (
            "classifier",
            "trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=1 test=false",
        ),
    ):
        result = make(target, f"ARGS={args}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    fast = (
        "'~callbacks.log_likelihood' trainer.limit_test_batches=1 eval.n_per_digit=5 eval.temperatures=[1.0]"
    )
    result = make("evaluate", f"ARGS={fast}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert json.loads((run / "checkpoints" / "metrics.json").read_text())["model"] == "CVAE"
    result = make("export", f"ARGS=out={tmp_path / 'export'}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (
        json.loads((tmp_path / "export" / "model" / "model.json").read_text())["checkpoint"]["file"]
        == "last.ckpt"
    )


def test_ship_keeps_the_weights_average_and_hyperparameters_and_no_path(
    tiny_checkpoints, tmp_path, monkeypatch
):
    """`make pretrained`'s step from a run's last.ckpt to the shipped file: the optimizer, the trained
    weights and the data folder stay behind; what is left loads as `ckpt_path=pretrained` does."""
    monkeypatch.setattr(checkpoints, "SHIPPED", tmp_path)
    run = torch.load(tiny_checkpoints["cvae"], weights_only=True)
    out = checkpoints.ship(tiny_checkpoints["cvae"], "cvae")
    shipped = torch.load(out, weights_only=True)
    assert out == tmp_path / "cvae.pt" and set(shipped) <= set(checkpoints.SHIPPED_KEYS)
    assert "optimizer_states" in run and "optimizer_states" not in shipped
    assert all(torch.equal(shipped["state_dict"][k], v) for k, v in run["state_dict"].items())
    assert not any(k.endswith("_dir") for k in shipped["datamodule_hyper_parameters"])
    model = checkpoints.load_checkpoint("pretrained")
    assert model.sample(labels=torch.tensor([3, 7])).shape == (2, 1, 28, 28)


def test_the_installed_command_runs_its_script_with_the_current_folder_as_the_project(tmp_path, monkeypatch):
    """What `cvae-generate ...` runs (cli.py), in this process: the script beside conf/, its output under
    the current folder."""
    from cvae_lightning import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROJECT_ROOT")
    monkeypatch.setattr(
        sys, "argv", ["cvae-generate", "ckpt_path=pretrained", "digits=[4]", "n=2", "out=g.png"]
    )
    cli.generate()
    assert (tmp_path / "g.png").is_file() and os.environ["PROJECT_ROOT"] == str(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cvae-train", "model=gan"])
    with pytest.raises(
        SystemExit, match="error: model=gan is not allowed: expected one of classifier, cvae, vae"
    ):
        cli.train()  # the group check train.py makes first, against the installed conf/
    assert not (tmp_path / "logs").exists()
