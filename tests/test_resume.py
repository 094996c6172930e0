"""Interrupted runs lose nothing: SIGKILL + resume == uninterrupted, SIGTERM saves and fails loudly."""

import signal
import subprocess

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cvae_lightning.harness.training import build_group
from tests.helpers import (
    assert_ran,
    assert_same_state,
    composed,
    entry_error,
    read_events,
    run_script,
    tiny_trainer,
    wait_for_checkpoint,
)

# 3 epochs of 12 batches; validation on 4 batches; last.ckpt every 6 steps (mid-epoch) as well as per epoch
RUN = [
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=12",
    "trainer.limit_val_batches=4",
    "trainer.limit_test_batches=2",
    "callbacks.last_checkpoint.train_time_interval=null",
    "callbacks.last_checkpoint.every_n_train_steps=6",
    "data.batch_size=64",
    "trainer.log_every_n_steps=5",
]


def kill_after_checkpoint(run_dir, overrides, min_step: int, sig=signal.SIGKILL) -> subprocess.Popen:
    """Starts a run and sends `sig` as soon as last.ckpt holds a step >= min_step."""
    process = run_script("train.py", *overrides, f"hydra.run.dir={run_dir}", background=True)
    wait_for_checkpoint(run_dir, "checkpoints/last.ckpt", min_step, process, timeout=240)
    process.send_signal(sig)
    process.wait(timeout=120)
    return process


def final_state(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    scalars, _ = read_events(run_dir)
    val = [(e.step, e.value) for e in scalars["val/nelbo"]]
    return ckpt, val, scalars


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    assert_ran(run_script("train.py", *RUN, f"hydra.run.dir={run_dir}"))
    return final_state(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize(
    "min_step, sig",
    [(12, signal.SIGKILL), (6, signal.SIGKILL), (6, signal.SIGTERM)],
    ids=["killed-after-first-epoch", "killed-mid-epoch", "terminated-mid-epoch"],
)
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, uninterrupted, min_step, sig):
    """SIGKILL: resumes from the last periodic last.ckpt; SIGTERM (what a cluster sends to preempt or requeue
    a job): from the last.ckpt written as the run stops, at the end of the step it was in, saying how to
    resume. The default callbacks' weights average (a checkpoint's state_dict) and the trained weights beside
    it both continue as if never stopped."""
    overrides = RUN
    killed = kill_after_checkpoint(tmp_path, overrides, min_step, sig=sig)
    assert killed.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 1)
    if sig == signal.SIGTERM:
        stderr = killed.stderr.read()
        assert f"hydra.run.dir={tmp_path} ckpt_path=last" in stderr and "stopped by SIGTERM at step" in stderr
    resumed_from = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < resumed_from < 36

    assert_ran(run_script("train.py", *overrides, f"hydra.run.dir={tmp_path}", "ckpt_path=last"))
    ckpt, val, scalars = final_state(tmp_path)
    expected_ckpt, expected_val, expected_scalars = uninterrupted
    assert_same_state(ckpt, expected_ckpt)
    for key, value in expected_ckpt["current_model_state"].items():
        assert torch.equal(ckpt["current_model_state"][key], value), key
        if not key.endswith(".mask"):  # the flow's masks are constants; every weight differs from its average
            assert not torch.equal(expected_ckpt["state_dict"][key], value), key
    assert val == expected_val  # same steps, same values: no duplicated or missing points
    assert [e.step for e in scalars["train/nelbo"]] == [e.step for e in expected_scalars["train/nelbo"]]
    assert not (tmp_path / "version_1").exists()


@pytest.mark.slow
def test_negative_control_without_rng_restore_differs(tmp_path, uninterrupted):
    """Proves the comparison above can fail: drop the RNG-state callback and the resumed run diverges."""
    overrides = [*RUN, "~callbacks.rng_state"]
    kill_after_checkpoint(tmp_path, overrides, 6)
    assert_ran(run_script("train.py", *overrides, f"hydra.run.dir={tmp_path}", "ckpt_path=last"))
    ckpt, _, _ = final_state(tmp_path)
    expected_ckpt = uninterrupted[0]
    assert ckpt["global_step"] == expected_ckpt["global_step"]
    assert any(
        not torch.equal(ckpt["state_dict"][k], expected_ckpt["state_dict"][k]) for k in ckpt["state_dict"]
    )


def test_resume_without_checkpoint_is_refused(tmp_path, data_dir):
    line = entry_error("train.py", "ckpt_path=last", output_dir=tmp_path)
    assert f"ckpt_path=last is not allowed: no checkpoint at {tmp_path}/checkpoints/last.ckpt" in line


class WorseEveryEpoch(L.LightningModule):
    """Trains (one weight) while its val/nelbo gets worse every epoch: only the first epoch is the best."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        return (self.weight * batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/nelbo", 100.0 + self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=2)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(2, 1)), batch_size=2)


class LastCheckpointSteps(L.Callback):
    """The global step held by last.ckpt as each epoch starts (the checkpoint callbacks write at the end of
    the one before, after the other callbacks' epoch-end hooks) and after training."""

    def __init__(self, path):
        self.path, self.steps = path, []

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch:
            self.steps.append(torch.load(self.path, weights_only=True)["global_step"])

    def on_fit_end(self, trainer, pl_module):
        self.steps.append(torch.load(self.path, weights_only=True)["global_step"])


def test_last_checkpoint_is_the_last_epoch_even_when_validation_got_worse(tmp_path):
    """last.ckpt is the resume point: written after every epoch's validation, not only after the best ones."""
    cfg = composed(f"paths.output_dir={tmp_path}")
    checkpoints = {name: cfg.callbacks[name] for name in ("model_checkpoint", "last_checkpoint")}
    probe = LastCheckpointSteps(tmp_path / "checkpoints" / "last.ckpt")
    trainer = tiny_trainer(
        max_epochs=3, callbacks=[*build_group(checkpoints, "callbacks"), probe], enable_checkpointing=True
    )
    trainer.fit(WorseEveryEpoch())
    assert probe.steps == [2, 4, 6]  # two steps an epoch
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]


@pytest.mark.parametrize(
    "stage, saved_step, writes",
    [("train", None, True), ("validate", None, False), ("sanity_check", None, False), ("train", 5, False)],
    ids=["end-of-step", "inside-validation", "sanity-check", "epoch-end-already-saved"],
)
def test_an_interrupt_writes_last_ckpt_only_where_a_resume_is_exact(tmp_path, stage, saved_step, writes):
    """Stopped at the end of a training step: written. Inside a validation: the older periodic last.ckpt
    stays (a state from there would resume without the rest of the validation). At an epoch's end the
    epoch's own last.ckpt already holds the state."""
    from types import SimpleNamespace
    from unittest import mock

    from lightning.pytorch.trainer.states import RunningStage

    from cvae_lightning.callbacks.resume import CheckpointOnInterrupt

    if saved_step is not None:
        torch.save({"global_step": saved_step, "state_dict": {}}, tmp_path / "last.ckpt")
    callback = CheckpointOnInterrupt(str(tmp_path))
    trainer = SimpleNamespace(
        state=SimpleNamespace(fn="fit", stage=RunningStage(stage)),
        global_step=5,
        world_size=1,
        is_global_zero=True,
        save_checkpoint=mock.Mock(),
    )
    callback.on_exception(trainer, torch.nn.Linear(1, 1), RuntimeError())
    assert trainer.save_checkpoint.called == writes
