"""DDP over CPU processes, sweeps with a summary, sweeps with DDP, and the submitit launcher."""

import csv
import json
import re

import pytest
import yaml

from cvae_lightning.harness.runs import run_name
from cvae_lightning.harness.training import KEY_HPARAMS
from tests.helpers import SHORT_RUN, assert_ran, read_events, read_hparams, run_script


def run_dirs(root):
    """Folders holding a run: those with a .hydra config."""
    return sorted(p.parent for p in root.rglob(".hydra"))


@pytest.mark.slow
def test_ddp_two_processes_make_one_run(tmp_path, data_dir):
    result = run_script(
        "train.py", *SHORT_RUN, "trainer.devices=2", "trainer.strategy=ddp", f"hydra.run.dir={tmp_path}"
    )
    assert_ran(result)
    assert "Starting with 2 processes" in result.stderr + result.stdout
    assert len(re.findall(r"^CONFIG$", result.stdout, flags=re.MULTILINE)) == 1  # the config tree: rank 0's
    assert run_dirs(tmp_path) == [tmp_path]  # rank 1 wrote into the same dir and no second config
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert {e.parent for e in events} == {tmp_path}  # one stream (fit + test files)
    assert len({e.name.split(".")[4] for e in events}) == 1  # all written by one process (rank zero)
    scalars, images = read_events(tmp_path)
    val = scalars["val/nelbo"][-1].value
    assert 100 < val < 1000
    assert len(images["samples/generated"]) == 1  # logged by rank zero only
    results = json.loads((tmp_path / "results.json").read_text())
    # the best checkpoint re-validated on both ranks: the same data, fresh reparameterization noise
    assert results["metrics"]["val/nelbo"] == pytest.approx(val, rel=0.03)


@pytest.mark.slow
def test_multirun_summary_matches_each_run(tmp_path, data_dir):
    result = run_script("train.py", "-m", "model.latent_dim=2,4", *SHORT_RUN, f"hydra.sweep.dir={tmp_path}")
    assert_ran(result)
    # each job's folder (its TensorBoard run name) says what it is; the shared overrides are in each too
    shared = ",".join(sorted(SHORT_RUN))
    jobs = [run_name(0, f"model.latent_dim=2,{shared}"), run_name(1, f"model.latent_dim=4,{shared}")]
    assert jobs[0].startswith("0_model.latent_dim=2,trainer.limit_test_batches=2,")
    assert run_dirs(tmp_path) == [tmp_path / job for job in jobs]
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["overrides"] for r in rows) == ["model.latent_dim=2", "model.latent_dim=4"]
    assert float(rows[0]["val/nelbo"]) <= float(rows[1]["val/nelbo"])  # sorted, best first
    for row in rows:
        run = next(p for p in run_dirs(tmp_path) if p.name.split("_")[0] == row["job"])
        own = json.loads((run / "results.json").read_text())["metrics"]
        for name in ("val/nelbo", "test/nelbo", "val/kl", "test/recon"):
            assert float(row[name]) == pytest.approx(own[name], rel=1e-6)
        scalars, _ = read_events(run)
        assert scalars["test/nelbo"][-1].value == pytest.approx(float(row["test/nelbo"]), rel=1e-5)
        assert scalars["hparams/val/nelbo"][-1].value == pytest.approx(float(row["val/nelbo"]), rel=1e-5)
        assert row["best_checkpoint"].startswith(str(run / "checkpoints"))
    assert "| model.latent_dim=2 |" in (tmp_path / "summary.md").read_text()
    # what Hydra writes itself, beside each job's run: its composed config
    for job in jobs:
        cfg = yaml.safe_load((tmp_path / job / ".hydra" / "config.yaml").read_text())
        assert cfg["model"]["_target_"] == "cvae_lightning.model.module.CVAEModule"
        assert cfg["model"]["encoder"]["_target_"] == "cvae_lightning.model.nets.MLPEncoder"
    # each job printed the config tree and kept its own
    assert len(re.findall(r"^CONFIG$", result.stdout, flags=re.MULTILINE)) == 2
    trees = [(tmp_path / job / "config_tree.log").read_text() for job in jobs]
    assert ["latent_dim: 2" in tree for tree in trees] == [True, False]
    assert ["latent_dim: 4" in tree for tree in trees] == [False, True]
    # the HPARAMS tab: what the run was told first, then the key hyperparameters, no plumbing
    hparams = [read_hparams(tmp_path / job) for job in jobs]
    assert [h["model.latent_dim"] for h in hparams] == [2, 4]
    unset = {"model.scheduler._target_"}  # no schedule by default: no column
    assert (
        set(hparams[0]) == {"model.latent_dim", *(o.split("=")[0] for o in SHORT_RUN), *KEY_HPARAMS} - unset
    )
    assert hparams[0]["model.encoder.hidden_dims"] == "[512, 256]" and hparams[0]["seed"] == 42
    assert hparams[0]["model.optimizer._target_"] == "torch.optim.Adam"  # which object, not plumbing
    assert not [
        key for key in hparams[0] if "dir" in key or key.startswith(("paths", "callbacks", "trainer._"))
    ]


@pytest.mark.slow
def test_multirun_with_ddp_runs_each_job_once(tmp_path, data_dir):
    result = run_script(
        "train.py",
        "-m",
        "model.latent_dim=2,8",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        *SHORT_RUN,
        f"hydra.sweep.dir={tmp_path}",
        timeout=600,
    )
    assert_ran(result)
    output = result.stdout + result.stderr
    assert output.count("Launching 2 jobs") == 1  # the children did not re-run the sweep
    runs = run_dirs(tmp_path)
    assert [run.name.split("_")[0] for run in runs] == ["0", "1"]  # no stray dirs
    with open(tmp_path / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    for run in runs:
        assert (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep_job(tmp_path, data_dir):
    result = run_script(
        "train.py", "-m", "hydra/launcher=submitit_local", *SHORT_RUN, f"hydra.sweep.dir={tmp_path}"
    )
    assert_ran(result)
    assert (tmp_path / ".submitit").is_dir()
    (run,) = run_dirs(tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 5 and results["metrics"]["val/nelbo"] > 0
    assert (tmp_path / "summary.csv").is_file()
