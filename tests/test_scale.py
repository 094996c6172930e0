"""DDP over CPU processes, sweeps with a summary, sweeps with DDP, and the submitit launcher."""

import csv
import json

import pytest

from tests.conftest import read_events, run_train

SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
]


def run_dirs(root):
    """Folders holding a run: those with a .hydra config."""
    return sorted(p.parent for p in root.rglob(".hydra"))


@pytest.mark.slow
def test_ddp_two_processes_make_one_run(tmp_path, data_dir):
    result = run_train(*SHORT, "trainer.devices=2", "trainer.strategy=ddp", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stderr + result.stdout
    assert run_dirs(tmp_path) == [tmp_path]  # rank 1 wrote into the same dir and no second config
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert {e.parent for e in events} == {tmp_path / "tensorboard"}  # one stream (fit + test files)
    assert len({e.name.split(".")[4] for e in events}) == 1  # all written by one process (rank zero)
    scalars, images = read_events(tmp_path / "tensorboard")
    val = scalars["val/elbo"][-1].value
    assert 100 < val < 1000
    assert len(images["samples/generated"]) == 1  # logged by rank zero only
    results = json.loads((tmp_path / "results.json").read_text())
    # the best checkpoint re-validated on both ranks: the same data, fresh reparameterization noise
    assert results["metrics"]["val/elbo"] == pytest.approx(val, rel=0.03)


def test_multirun_summary_matches_each_run(tmp_path, data_dir):
    result = run_train("-m", "model.latent_dim=2,4", *SHORT, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_dirs(tmp_path) == [tmp_path / "0", tmp_path / "1"]
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["overrides"] for r in rows) == ["model.latent_dim=2", "model.latent_dim=4"]
    assert float(rows[0]["val/elbo"]) <= float(rows[1]["val/elbo"])  # sorted, best first
    for row in rows:
        run = tmp_path / row["job"]
        own = json.loads((run / "results.json").read_text())["metrics"]
        for name in ("val/elbo", "test/elbo", "val/kl", "test/recon"):
            assert float(row[name]) == pytest.approx(own[name], rel=1e-6)
        scalars, _ = read_events(run / "tensorboard")
        assert scalars["test/elbo"][-1].value == pytest.approx(float(row["test/elbo"]), rel=1e-5)
        assert scalars["hparams/val/elbo"][-1].value == pytest.approx(float(row["val/elbo"]), rel=1e-5)
        assert row["best_checkpoint"].startswith(str(run / "checkpoints"))
    assert "| model.latent_dim=2 |" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
def test_multirun_with_ddp_runs_each_job_once(tmp_path, data_dir):
    result = run_train(
        "-m",
        "model.latent_dim=2,8",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        *SHORT,
        f"hydra.sweep.dir={tmp_path}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert output.count("Launching 2 jobs") == 1  # the children did not re-run the sweep
    assert run_dirs(tmp_path) == [tmp_path / "0", tmp_path / "1"]  # no stray dirs
    with open(tmp_path / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    for job in ("0", "1"):
        assert (tmp_path / job / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep_job(tmp_path, data_dir):
    result = run_train("-m", "hydra/launcher=submitit_local", *SHORT, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / ".submitit").is_dir()
    results = json.loads((tmp_path / "0" / "results.json").read_text())
    assert results["steps"] == 6 and results["metrics"]["val/elbo"] > 0
    assert (tmp_path / "summary.csv").is_file()


@pytest.mark.slow
def test_optuna_search_runs_its_trials(tmp_path, data_dir):
    result = run_train(
        "hparams_search=optuna", "hydra.sweeper.n_trials=2", *SHORT, f"hydra.sweep.dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    best = (tmp_path / "optimization_results.yaml").read_text()
    assert "model.latent_dim" in best and "model.lr" in best
    assert len(run_dirs(tmp_path)) == 2
