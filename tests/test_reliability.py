"""Faults refused in one line: bad checkpoints in every script, a NaN loss; same seed, same result."""

import json
import os
import shutil
import subprocess
import threading

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cvae_lightning import load_checkpoint
from cvae_lightning.callbacks.loss import StopOnNonFiniteLoss
from cvae_lightning.errors import CheckpointError, NonFiniteLossError
from tests.helpers import (
    SHORT_RUN,
    assert_ran,
    composed,
    entry_error,
    read_events,
    run_entry,
    run_script,
    tiny_module,
    tiny_trainer,
)

QUICK = [*SHORT_RUN, "test=false"]


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoints, tmp_path_factory):
    """The shared tiny checkpoints, beside a text file posing as one."""
    root = tmp_path_factory.mktemp("ckpts")
    for name in ("cvae", "vae"):
        shutil.copy(tiny_checkpoints[name], root / f"{name}.ckpt")
    (root / "notes.ckpt").write_text("not a checkpoint\n")
    return root


def test_checkpoint_round_trip_without_hydra(checkpoints):
    model = load_checkpoint(checkpoints / "cvae.ckpt")
    assert (model.latent_dim, model.n_labels, model.training) == (2, 10, False)
    saved = torch.load(checkpoints / "cvae.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[f"model.{k}"], v) for k, v in model.state_dict().items())


def test_file_that_is_not_a_checkpoint_is_refused(checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match="notes.ckpt is not allowed: not a readable checkpoint"):
        load_checkpoint(checkpoints / "notes.ckpt")
    with pytest.raises(CheckpointError, match="missing.ckpt is not allowed: no file there"):
        load_checkpoint(tmp_path / "missing.ckpt")


@pytest.mark.parametrize(
    "script, args",
    [
        ("train.py", QUICK),
        ("evaluate.py", ["classifier_path={classifier}"]),
        ("generate.py", ["out={tmp}/digits.png"]),
    ],
)
@pytest.mark.parametrize(
    "ckpt, expected",
    [
        ("{root}/notes.ckpt", "ckpt_path={root}/notes.ckpt is not allowed: not a readable checkpoint"),
        ("{root}/missing.ckpt", "ckpt_path={root}/missing.ckpt is not allowed: no file there"),
        ("{classifier}", "ckpt_path={classifier} is not allowed: it is a classifier checkpoint, not a cvae"),
    ],
    ids=["text-file", "missing", "wrong-kind"],
)
def test_every_script_refuses_a_bad_checkpoint_in_one_line(
    script, args, ckpt, expected, checkpoints, tiny_checkpoints, tmp_path
):
    names = {"root": checkpoints, "tmp": tmp_path, "classifier": tiny_checkpoints["classifier"]}
    args = [arg.format(**names) for arg in args]
    line = entry_error(script, f"ckpt_path={ckpt.format(**names)}", *args, output_dir=tmp_path / "run")
    assert expected.format(**names) in line


def test_the_trained_weights_of_a_checkpoint_without_an_average_are_refused_in_one_line(
    checkpoints, tiny_checkpoints
):
    ckpt = checkpoints / "cvae.ckpt"
    line = entry_error(
        "evaluate.py",
        f"ckpt_path={ckpt}",
        f"classifier_path={tiny_checkpoints['classifier']}",
        "weights=trained",
    )
    assert f"weights=trained is not allowed for ckpt_path={ckpt}: it holds one set" in line
    line = entry_error("evaluate.py", f"ckpt_path={ckpt}", "weights=best")
    assert "weights='best' is not allowed: expected one of average, trained" in line


def test_resuming_from_a_vae_checkpoint_is_refused_in_one_line(checkpoints, tmp_path, data_dir):
    line = entry_error("train.py", *QUICK, f"ckpt_path={checkpoints / 'vae.ckpt'}", output_dir=tmp_path)
    assert f"ckpt_path={checkpoints / 'vae.ckpt'} is not allowed: it is a vae checkpoint" in line


def test_nan_loss_stops_at_that_step_and_keeps_the_last_good_state(tmp_path, data_dir):
    line = entry_error("train.py", *QUICK, "model.optimizer.lr=1e4", output_dir=tmp_path)
    assert line.startswith("error: non-finite loss at step ")
    assert "(loss=" in line and "model.optimizer.lr" in line
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    step = int(line.split("step ")[1].split()[0])
    assert state["global_step"] == step  # the state before the step whose loss was not finite
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values())


@pytest.mark.slow
def test_same_seed_same_result_other_seed_differs(tmp_path, data_dir):
    def metrics(seed, name):
        run_entry("train.py", *QUICK, f"seed={seed}", output_dir=tmp_path / name)
        return json.loads((tmp_path / name / "results.json").read_text())["metrics"]

    first, again, other = metrics(1, "a"), metrics(1, "b"), metrics(2, "c")
    assert first == again
    assert first["val/nelbo"] != other["val/nelbo"]


def fit_until_nan(nan_at_step: int | None, defer_on=("cpu",), batches: int = 6):
    """A short fit whose loss turns NaN at `nan_at_step` (None: never), with the check deferred on CPU as it
    is on a GPU: read on the steps the loggers write (every 4) and at the epoch's last step."""
    module = tiny_module()
    elbo = module.model.elbo

    def poisoned(*args, **kwargs):
        terms = elbo(*args, **kwargs)
        if module.global_step == nan_at_step:
            terms["recon"] = terms["recon"] * float("nan")
        return terms

    module.model.elbo = poisoned
    x, labels = torch.rand(8 * batches, 1, 28, 28), torch.arange(8 * batches) % 10
    trainer = tiny_trainer(max_epochs=1, log_every_n_steps=4, callbacks=[StopOnNonFiniteLoss(defer_on)])
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(x, labels), batch_size=8))
    return trainer


def test_a_deferred_check_is_read_when_the_loggers_write_and_names_the_steps_since():
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at a step from 0 to 3 \(loss=nan\)"):
        fit_until_nan(1)  # read at step 3, the first the loggers write
    with pytest.raises(NonFiniteLossError, match="non-finite loss at a step from 4 to 5"):
        fit_until_nan(5)  # read at the epoch's last step
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 1 "):
        fit_until_nan(1, defer_on=())  # read at once: that step, before its backward


def test_a_finite_run_passes_the_deferred_check():
    assert fit_until_nan(None).global_step == 6


@pytest.mark.slow
def test_ten_runs_in_a_row_all_complete_and_leave_nothing_behind(tmp_path, data_dir):
    seeds = ",".join(str(i) for i in range(10))
    result = run_script("train.py", "-m", f"seed={seeds}", *QUICK, f"hydra.sweep.dir={tmp_path}", timeout=900)
    assert_ran(result)
    runs = sorted(tmp_path.glob("*_seed=*"), key=lambda p: int(p.name.split("_")[0]))
    assert [run.name.split(",")[0] for run in runs] == [f"{job}_seed={job}" for job in range(10)]
    for run in runs:
        assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert json.loads((run / "results.json").read_text())["steps"] == 5
        assert list(run.glob("events.out.tfevents.*"))
    sizes = [sum(f.stat().st_size for f in run.rglob("*") if f.is_file()) for run in runs]
    print(f"disk use per run: {max(sizes) / 2**20:.1f} MiB (two checkpoints of the default CVAE)")
    # no process of the sweep is left running
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert leftover.strip() == ""


@pytest.mark.slow
def test_in_process_runs_close_their_files(tmp_path, data_dir):
    from cvae_lightning.harness.training import train

    def run(name):
        cfg = composed(*QUICK, f"paths.output_dir={tmp_path / name}", "~callbacks.progress_bar")
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
    scalars, _ = read_events(tmp_path / "c")
    assert scalars["hparams/val/nelbo"][-1].value == pytest.approx(metrics["val/nelbo"], rel=1e-5)
