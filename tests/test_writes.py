"""Files are written whole or not at all: the checkpoint writer never opens its target, a kill mid-write
leaves the old checkpoint, a full disk ends in one line with nothing partial left and the run resumes
bit-identically once there is space, under DDP every rank stops, in a sweep the job is recorded as failed,
and an unreadable last.ckpt points to (or, requeued, resumes from) the newest intact checkpoint."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch

from cvae_lightning.errors import CheckpointError, WriteError
from cvae_lightning.harness import checkpoints, files
from cvae_lightning.harness.checkpoints import AtomicCheckpointIO
from tests.helpers import (
    ROOT,
    assert_one_line_error,
    assert_same_state,
    composed,
    entry_error,
    read_events,
    run_entry,
    run_script,
    sweep_summary,
)

# 3 epochs of 20 steps: an epoch's end writes epoch_NNN.ckpt (when val/nelbo improved) and last.ckpt
RUN = [
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=20",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.batch_size=64",
]


@contextmanager
def tmpfs(folder, size_bytes: int):
    """A tmpfs of `size_bytes` mounted at `folder` (root only: CI runs as root), unmounted after."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def resize(folder, size_bytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(folder)], check=True)


def checkpoint(n: int = 1000, value: float = 1.0) -> dict:
    return {"state_dict": {"w": torch.full((n,), value)}, "global_step": int(value)}


# -- the writer -------------------------------------------------------------------------------------------
def test_the_writer_never_opens_the_target_only_a_same_folder_file_then_renames_it(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint(value=1.0), target)
    opened, renamed = [], []
    real_open, real_builtin_open, real_replace = os.open, open, os.replace

    def spy_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR):
            opened.append(os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    def spy_builtin_open(path, mode="r", *args, **kwargs):
        if any(m in mode for m in "wax+"):
            opened.append(os.fspath(path))
        return real_builtin_open(path, mode, *args, **kwargs)

    def spy_replace(src, dst):
        renamed.append((os.fspath(src), os.fspath(dst)))
        assert torch.load(target, weights_only=True)["global_step"] == 1  # the old file, whole, until now
        return real_replace(src, dst)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr("builtins.open", spy_builtin_open)
    monkeypatch.setattr(os, "replace", spy_replace)
    AtomicCheckpointIO().save_checkpoint(checkpoint(value=2.0), target)

    (written,) = opened
    assert written != str(target) and os.path.dirname(written) == str(tmp_path)
    assert os.path.basename(written).startswith(".last.ckpt.") and written.endswith(".tmp")
    assert renamed == [(written, str(target))]
    assert torch.load(target, weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # nothing else left
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())  # as a plain open() makes


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_trainer_writes_through_it(tmp_path):
    """conf/trainer/default.yaml gives the Trainer the plugin, so every checkpoint goes through it."""
    from cvae_lightning.harness.config import build

    cfg = composed(f"paths.output_dir={tmp_path}")
    trainer = build(cfg.trainer, "trainer", logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    off = composed("trainer.plugins=[]", f"paths.output_dir={tmp_path}")
    assert not isinstance(
        build(off.trainer, "trainer", logger=False).strategy.checkpoint_io, AtomicCheckpointIO
    )


KILLED_WRITER = """
import sys, torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from cvae_lightning.harness.checkpoints import AtomicCheckpointIO
io, target = (AtomicCheckpointIO if sys.argv[1] == "atomic" else TorchCheckpointIO)(), sys.argv[2]
for value in range(1, 10_000):  # 64 MB each, until killed
    weights = {"w": torch.full((16_000_000,), float(value))}
    io.save_checkpoint({"state_dict": weights, "global_step": value}, target)
    if value == 1:
        print("written", flush=True)
"""


@pytest.mark.parametrize("writer", ["atomic", "lightning"])
def test_a_kill_mid_write_leaves_the_previous_checkpoint_whole(tmp_path, writer):
    """The run folder on another filesystem than the system temp folder (a tmpfs here): a writer killed while
    it replaces the checkpoint. Negative control: Lightning's own writer, killed as it copies its temporary
    file over the target, leaves it unreadable, so the test can fail."""
    with tmpfs(tmp_path / "disk", 300_000_000) as disk:
        target = disk / "last.ckpt"
        system_temp = tmp_path / "system-temp"  # fsspec's temporary file, which a kill leaves behind
        system_temp.mkdir()
        process = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, writer, str(target)],
            cwd=ROOT,
            env={**os.environ, "TMPDIR": str(system_temp)},
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout.readline() == "written\n"
            whole = target.stat().st_size
            end = time.time() + 120
            # mid-write: the atomic writer's temporary file exists; Lightning's copy has cut the target short
            while time.time() < end and not (files.leftovers(target) or target.stat().st_size < whole):
                pass
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        if writer == "lightning":
            assert target.stat().st_size < whole
            # a cut zip, nothing at all, or (cut where torch seeks) an OSError
            with pytest.raises((RuntimeError, EOFError, OSError)):
                torch.load(target, weights_only=True)
            return
        assert files.leftovers(target), "the writer was never caught mid-write"
        saved = torch.load(target, weights_only=True)  # whole: the first file or a later one
        weights = saved["state_dict"]["w"]
        assert torch.equal(weights, torch.full_like(weights, saved["global_step"]))
        # the next write clears what the killed one left; no reader takes a leftover for a checkpoint
        AtomicCheckpointIO().save_checkpoint(checkpoint(value=3.0), target)
        assert not files.leftovers(target) and [p.name for p in disk.glob("*.ckpt")] == ["last.ckpt"]


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path):
    with tmpfs(tmp_path / "small", 1_000_000) as small:
        target = small / "last.ckpt"
        AtomicCheckpointIO().save_checkpoint(checkpoint(n=100_000, value=1.0), target)  # 0.4 MB
        with pytest.raises(WriteError) as raised:
            AtomicCheckpointIO().save_checkpoint(checkpoint(n=200_000, value=2.0), target)  # 0.8 MB
        message = str(raised.value)
        assert "\n" not in message
        assert message.startswith(f"could not write {target}: No space left on device (ENOSPC); ")
        assert (
            f"MB free in {small}, 0.8 MB needed" in message or f"kB free in {small}, 0.8 MB needed" in message
        )
        assert [p.name for p in small.iterdir()] == ["last.ckpt"]
        assert torch.load(target, weights_only=True)["global_step"] == 1


def test_any_os_error_is_one_line_naming_the_file(tmp_path, monkeypatch):
    def fail(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(
        WriteError, match=rf"could not write {tmp_path}/results.json: Input/output error \(EIO\)"
    ):
        files.write_text(tmp_path / "results.json", "{}")
    assert list(tmp_path.iterdir()) == []


# -- which checkpoint a run resumes from ------------------------------------------------------------------
@pytest.fixture
def run_with_truncated_last(tmp_path, tiny_checkpoints):
    """A run folder: epoch_000.ckpt (a real CVAE checkpoint) and last.ckpt cut in half."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    whole = tiny_checkpoints["cvae"].read_bytes()
    (folder / "epoch_000.ckpt").write_bytes(whole)
    (folder / "last.ckpt").write_bytes(whole[: len(whole) // 2])
    return tmp_path


def test_an_unreadable_last_ckpt_names_the_intact_one_beside_it(run_with_truncated_last):
    run = run_with_truncated_last
    with pytest.raises(CheckpointError) as raised:
        checkpoints.resume_point("last", run, "cvae", restarts=0)
    message = str(raised.value)
    assert message.startswith(f"ckpt_path=last is not allowed: {run}/checkpoints/last.ckpt: not a readable")
    assert message.endswith(
        f"resume from epoch_000.ckpt beside it (step 3; the steps since are lost) with "
        f"hydra.run.dir={run} ckpt_path={run}/checkpoints/epoch_000.ckpt"
    )
    (run / "checkpoints" / "epoch_000.ckpt").unlink()
    with pytest.raises(
        CheckpointError, match="last.ckpt: not a readable checkpoint .*; to resume a run pass"
    ):
        checkpoints.resume_point("last", run, "cvae", restarts=0)


def test_a_requeued_job_resumes_from_the_newest_intact_checkpoint(run_with_truncated_last, caplog):
    run = run_with_truncated_last
    with caplog.at_level(logging.INFO, logger="cvae_lightning.harness.checkpoints"):
        assert checkpoints.resume_point(None, run, "cvae", restarts=1) == (
            run / "checkpoints" / "epoch_000.ckpt",
            3,
        )
    assert f"{run}/checkpoints/last.ckpt: not a readable checkpoint" in caplog.text
    assert f"resuming from {run}/checkpoints/epoch_000.ckpt (step 3) instead" in caplog.text
    assert checkpoints.resume_point(None, run, "vae", restarts=1) == (
        None,
        0,
    )  # none of its kind: starts over
    assert checkpoints.resume_point(None, run, "cvae", restarts=0) == (None, 0)  # not requeued: a new run


# -- for real: a run on a small tmpfs ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("uninterrupted")
    run_entry("train.py", *RUN, output_dir=run)
    return run


@pytest.mark.slow
def test_a_run_that_fills_its_disk_stops_in_one_line_and_resumes_exactly_once_freed(tmp_path, uninterrupted):
    size = (uninterrupted / "checkpoints" / "last.ckpt").stat().st_size
    # room for two checkpoints and the logs: epoch 0 writes epoch_000.ckpt and last.ckpt, epoch 1's
    # epoch_001.ckpt cannot fit beside them
    with tmpfs(tmp_path / "disk", int(2.5 * size)) as disk:
        run = disk / "run"
        line = entry_error("train.py", *RUN, output_dir=run)
        assert line.startswith(
            f"error: could not write {run}/checkpoints/epoch_001.ckpt: No space left on device"
        )
        assert "needed; the checkpoints before it are whole: free space, then resume with the same " in line
        names = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert names == ["epoch_000.ckpt", "last.ckpt"]  # no partial file, no temporary one
        for name in names:  # whole: full size (give or take the run folder's name inside) and loadable
            assert abs((run / "checkpoints" / name).stat().st_size - size) < 4096
            assert torch.load(run / "checkpoints" / name, weights_only=True)["global_step"] == 20
        assert not (run / "results.json").exists()

        resize(disk, 10 * size)
        run_entry("train.py", *RUN, "ckpt_path=last", output_dir=run)
        final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert_same_state(final, torch.load(uninterrupted / "checkpoints" / "last.ckpt", weights_only=True))
        scalars, _ = read_events(run)
        expected, _ = read_events(uninterrupted)
        assert [(e.step, e.value) for e in scalars["val/nelbo"]] == [
            (e.step, e.value) for e in expected["val/nelbo"]
        ]
        assert json.loads((run / "results.json").read_text())["steps"] == 60


@pytest.mark.slow
def test_under_ddp_every_rank_stops_when_a_checkpoint_does_not_fit(tmp_path, uninterrupted):
    size = (uninterrupted / "checkpoints" / "last.ckpt").stat().st_size
    with tmpfs(tmp_path / "disk", int(2.5 * size)) as disk:
        run = disk / "run"
        result = run_script("train.py", *RUN, "trainer.devices=2", f"hydra.run.dir={run}", timeout=300)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 2, result.stderr[-3000:]
        assert any(
            f"could not write {run}/checkpoints/epoch_001.ckpt: No space left" in line for line in lines
        )
        assert "error: rank 1 stopped: another process of this run ended first (its error says why)" in lines
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    leftover = subprocess.run(["pgrep", "-f", str(run)], capture_output=True, text=True).stdout
    assert leftover.strip() == ""


@pytest.mark.slow
def test_in_a_sweep_the_job_that_does_not_fit_is_recorded_as_failed_and_the_others_run(tmp_path, data_dir):
    """Job 0's decoder (256-512 units) makes a 6.6 MB checkpoint, job 1's (16 units) 0.3 MB; 4 MB hold only
    job 1's."""
    with tmpfs(tmp_path / "disk", 4_000_000) as disk:
        result = run_script(
            "train.py", "-m", *RUN, "trainer.max_epochs=1", "model.encoder.hidden_dims=[16]",
            "model.decoder.hidden_dims=[256,512],[16]", f"hydra.sweep.dir={disk}", timeout=300,
        )  # fmt: skip
        assert_one_line_error(result, "1 of 2 jobs failed, e.g. job 0: could not write")
        rows = {row["overrides"]: row for row in sweep_summary(disk)}
        failed = rows["model.decoder.hidden_dims=[256,512]"]
        assert failed["status"] == "failed" and "No space left on device (ENOSPC)" in failed["error"]
        assert rows["model.decoder.hidden_dims=[16]"]["status"] == "completed"
        assert not list(disk.rglob("*.tmp"))


@pytest.mark.slow
def test_train_py_names_the_intact_checkpoint_and_resumes_from_it(tmp_path, uninterrupted):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("epoch_002.ckpt", "last.ckpt"):
        (run / "checkpoints" / name).write_bytes((uninterrupted / "checkpoints" / "last.ckpt").read_bytes())
    last = run / "checkpoints" / "last.ckpt"
    os.truncate(last, last.stat().st_size // 3)  # what a copy killed midway leaves
    refused = entry_error("train.py", *RUN, "trainer.max_epochs=4", "ckpt_path=last", output_dir=run)
    suggested = f"hydra.run.dir={run} ckpt_path={run}/checkpoints/epoch_002.ckpt"
    assert refused.startswith(f"error: ckpt_path=last is not allowed: {last}: not a readable checkpoint")
    assert refused.endswith(suggested)
    run_entry("train.py", *RUN, "trainer.max_epochs=4", *suggested.split())
    assert json.loads((run / "results.json").read_text())["steps"] == 80
    assert torch.load(last, weights_only=True)["global_step"] == 80  # last.ckpt whole again


def test_make_install_on_a_disk_too_small_is_one_line_before_anything_is_written(tmp_path):
    with tmpfs(tmp_path / "small", 1_000_000) as small:
        made = subprocess.run(
            ["make", "-s", "install", f"VENV={small}/.venv"], cwd=ROOT, capture_output=True, text=True
        )
        assert made.returncode != 0
        assert made.stdout.startswith(f"error: VENV={small}/.venv is not allowed: 0 GB free on its disk;")
        assert made.stdout.count("\n") == 1
        assert list(small.iterdir()) == []
