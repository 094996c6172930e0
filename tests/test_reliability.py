"""Faults refused with a clear message: bad devices, bad checkpoints, a NaN loss; same seed, same result."""

import json
import os
import subprocess
import threading

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cvae_lightning import CVAE, VAE
from cvae_lightning.config import ConfigError, validate
from cvae_lightning.models import CheckpointError
from tests.conftest import composed, read_events, run_train

SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=5", "trainer.limit_val_batches=2", "test=false"]


def test_more_devices_than_cores_is_refused():
    with pytest.raises(
        ConfigError, match=rf"trainer.devices={os.cpu_count() + 1} is not allowed: expected 1\.\."
    ):
        validate(composed(f"trainer.devices={os.cpu_count() + 1}"))
    with pytest.raises(ConfigError, match="trainer.devices=0 is not allowed"):
        validate(composed("trainer.devices=0"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_trainer_without_gpu_is_refused():
    with pytest.raises(ConfigError, match="trainer.accelerator=gpu is not allowed: no GPU is visible"):
        validate(composed("trainer=gpu"))


def save_checkpoint(model: L.LightningModule, path) -> None:
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    x = torch.rand(8, 1, 28, 28)
    y = torch.nn.functional.one_hot(torch.arange(8) % 10, 10).float()
    trainer.fit(model, train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=8))
    trainer.save_checkpoint(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    save_checkpoint(VAE(latent_dim=4, hidden_dims=[16]), root / "vae.ckpt")
    save_checkpoint(CVAE(latent_dim=4, hidden_dims=[16]), root / "cvae.ckpt")
    (root / "notes.ckpt").write_text("not a checkpoint\n")
    return root


def test_checkpoint_round_trip(checkpoints):
    model = CVAE.load_from_checkpoint(checkpoints / "cvae.ckpt", map_location="cpu")
    assert model.hparams.latent_dim == 4


def test_vae_checkpoint_loaded_as_cvae_is_refused(checkpoints):
    with pytest.raises(CheckpointError, match="the checkpoint holds a VAE, not a CVAE: load it with VAE"):
        CVAE.load_from_checkpoint(checkpoints / "vae.ckpt", map_location="cpu")


def test_checkpoint_of_another_latent_size_is_refused(checkpoints):
    with pytest.raises(
        CheckpointError,
        match=r"has shape \(\d+, 16\), this model's \(\d+, 16\): .* other sizes than latent_dim=8",
    ):
        CVAE.load_from_checkpoint(checkpoints / "cvae.ckpt", map_location="cpu", latent_dim=8)


def test_file_that_is_not_a_checkpoint_is_refused(checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match="notes.ckpt is not a readable checkpoint"):
        CVAE.load_from_checkpoint(checkpoints / "notes.ckpt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        CVAE.load_from_checkpoint(tmp_path / "missing.ckpt")


def test_resuming_from_a_vae_checkpoint_is_refused_in_one_line(checkpoints, tmp_path, data_dir):
    result = run_train(
        *SHORT, f"ckpt_path={checkpoints / 'vae.ckpt'}", f"hydra.run.dir={tmp_path}", timeout=120
    )
    assert result.returncode != 0
    assert "error: the checkpoint holds a VAE, not a CVAE" in result.stderr
    assert "Traceback" not in result.stderr


def test_nan_loss_stops_at_that_step_and_keeps_the_last_good_state(tmp_path, data_dir):
    result = run_train(*SHORT, "model.lr=1e4", f"hydra.run.dir={tmp_path}", timeout=120)
    assert result.returncode != 0
    line = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert line.startswith("error: non-finite loss at step ") and "recon=" in line and "kl=" in line
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    step = int(line.split("step ")[1].split()[0])
    assert state["global_step"] == step  # the state before the step whose loss was not finite
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values())


def test_same_seed_same_result_other_seed_differs(tmp_path, data_dir):
    def metrics(seed, name):
        result = run_train(*SHORT, f"seed={seed}", f"hydra.run.dir={tmp_path / name}", timeout=180)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads((tmp_path / name / "results.json").read_text())["metrics"]

    first, again, other = metrics(1, "a"), metrics(1, "b"), metrics(2, "c")
    assert first == again
    assert first["val/elbo"] != other["val/elbo"]


@pytest.mark.slow
def test_ten_runs_in_a_row_all_complete_and_leave_nothing_behind(tmp_path, data_dir):
    seeds = ",".join(str(i) for i in range(10))
    result = run_train("-m", f"seed={seeds}", *SHORT, f"hydra.sweep.dir={tmp_path}", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in range(10):
        run = tmp_path / str(job)
        assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert json.loads((run / "results.json").read_text())["steps"] == 5
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    sizes = [sum(f.stat().st_size for f in (tmp_path / str(j)).rglob("*") if f.is_file()) for j in range(10)]
    print(f"disk use per run: {max(sizes) / 2**20:.1f} MiB (two checkpoints of the default CVAE)")
    # no process of the sweep is left running
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert leftover.strip() == ""


@pytest.mark.slow
def test_in_process_runs_close_their_files(tmp_path, data_dir):
    from cvae_lightning.training import train

    def run(name):
        cfg = composed(*SHORT, f"paths.output_dir={tmp_path / name}", "~callbacks.progress_bar")
        train(cfg)

    run("warmup")  # imports and caches open their files once
    before = len(os.listdir("/proc/self/fd")), threading.active_count()
    for name in ("a", "b", "c"):
        run(name)
    # no open files, and no TensorBoard writer still running (with its events not yet on disk)
    assert len(os.listdir("/proc/self/fd")) <= before[0]
    assert threading.active_count() <= before[1]
    # what they wrote is on disk when train() returns: the HPARAMS tab's metrics come last
    metrics = json.loads((tmp_path / "c" / "results.json").read_text())["metrics"]
    scalars, _ = read_events(tmp_path / "c" / "tensorboard")
    assert scalars["hparams/val/elbo"][-1].value == pytest.approx(metrics["val/elbo"], rel=1e-5)
