"""The SLURM path against a real cluster (`bash cluster/local_slurm.sh start`: two nodes on this machine):
sweeps, DDP over tasks and nodes, a failing job, and jobs requeued by preemption or their time limit that
finish with the weights they would have had. Without a reachable SLURM these skip; CI starts one."""

import json
import os
import re
import shutil
import subprocess
import threading
import time

import pytest
import torch
from omegaconf import OmegaConf

from cvae_lightning.harness.slurm import request_problem
from tests.helpers import (
    SHORT_RUN,
    assert_one_line_error,
    assert_ran,
    assert_same_state,
    composed,
    read_events,
    run_script,
    sweep_summary,
    wait_for_checkpoint,
)


def slurm_reachable() -> bool:
    if shutil.which("sinfo") is None:
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0


needs_slurm = pytest.mark.skipif(
    not slurm_reachable(), reason="no SLURM reachable: start one with `bash cluster/local_slurm.sh start`"
)
# 3 epochs of 40 steps, last.ckpt every 10 steps: long enough to interrupt mid-epoch
LONG_RUN = (
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=40",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.batch_size=64",
    "callbacks.last_checkpoint.train_time_interval=null",
    "callbacks.last_checkpoint.every_n_train_steps=10",
)


def slurm_sweep(sweep_dir, *overrides, background=False, timeout=600):
    return run_script(
        "train.py", "-m", "hydra/launcher=slurm", *overrides, f"hydra.sweep.dir={sweep_dir}",
        timeout=timeout, background=background,
    )  # fmt: skip


def job_dirs(sweep_dir):
    return sorted((p.parent for p in sweep_dir.glob("*/.hydra")), key=lambda p: int(p.name.split("_")[0]))


def sacct(job_id: str, fields="JobID,State,NodeList,NTasks") -> dict[str, str]:
    """The job's allocation row (-X) as SLURM's accounting has it once the job has ended (submitit sees the
    result a moment before SLURM has the job COMPLETED)."""
    for _ in range(60):
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", fields],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        row = dict(zip(fields.split(","), out.splitlines()[0].split("|"), strict=True))
        if row["State"] not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED"):
            return row
        time.sleep(0.5)
    return row


def submitted_jobs(sweep_dir) -> list[str]:
    """The SLURM job of each job of the sweep (array tasks as <array>_<task>), from submitit's folder."""
    return sorted(p.parent.name for p in (sweep_dir / ".submitit").rglob("*_submitted.pkl"))


def logs(sweep_dir) -> str:
    return "".join(p.read_text() for p in sorted((sweep_dir / ".submitit").rglob("*_log.*")))


class ReleaseRequeued(threading.Thread):
    """SLURM holds a requeued job for about two minutes (BeginTime); this releases it after `settle_s`, so
    the tests need not wait. It does nothing else. Not at once: a job started again while its previous
    run's step was still being torn down ended FAILED on the spot (2026-12-02, job 157)."""

    def __init__(self, settle_s: float = 5.0):
        super().__init__(daemon=True)
        self.done = threading.Event()
        self.settle_s = settle_s

    def run(self):
        held_since: dict[str, float] = {}
        while not self.done.wait(1.0):
            pending = subprocess.run(
                ["squeue", "-h", "-t", "PD", "-o", "%i %r"], capture_output=True, text=True
            )
            held = [
                line.split(maxsplit=1)[0]
                for line in pending.stdout.splitlines()
                if line.endswith(" BeginTime")
            ]
            held_since = {job: held_since.get(job, time.monotonic()) for job in held}
            for job, since in held_since.items():
                if time.monotonic() - since >= self.settle_s:
                    subprocess.run(
                        ["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True
                    )


def final_weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


# -- without a cluster: what is asked of SLURM ----------------------------------------------------------
def launcher(*overrides):
    return composed("hydra/launcher=slurm", *overrides, return_hydra_config=True).hydra.launcher


def test_the_launcher_asks_for_gpus_only_when_the_trainer_does():
    cpu = OmegaConf.to_container(launcher("trainer.devices=2"), resolve=True)
    assert cpu["gpus_per_node"] is None and cpu["tasks_per_node"] == 2 and cpu["nodes"] == 1
    gpu = OmegaConf.to_container(
        launcher("trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"), resolve=True
    )
    assert (gpu["gpus_per_node"], gpu["tasks_per_node"], gpu["nodes"]) == (4, 4, 2)


def test_the_sbatch_script_of_a_gpu_multi_node_run(tmp_path):
    """What sbatch gets for `trainer=ddp trainer.devices=4 trainer.num_nodes=2`, as the launcher makes it."""
    import submitit

    params = OmegaConf.to_container(
        launcher("trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "hydra.launcher.partition=gpu"),
        resolve=True,
    )
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    base = ("timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name")
    skip = ("_target_", "submitit_folder", "max_num_timeout", "stderr_to_stdout")
    executor.update_parameters(
        **{k if k in base else f"slurm_{k}": v for k, v in params.items() if k not in skip and v is not None}
    )
    script = executor._executor._make_submission_file_text("python train.py", "uid")
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --partition=gpu",
        "#SBATCH --signal=USR2@90",
        "#SBATCH --time=60",
        "export OMP_NUM_THREADS=1",
    ):
        assert line in script, line


NODE = {"name": "n1", "cpus": "2", "memory": "12000", "gres": "(null)"}


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ((), None),
        (("trainer.devices=2",), None),
        (("trainer.devices=3",), "cpus_per_task=1 x tasks_per_node=3 (trainer.devices) is not allowed"),
        (("hydra.launcher.mem_gb=64",), "hydra.launcher.mem_gb=64 is not allowed: the nodes of"),
        (("trainer=ddp",), "hydra.launcher.gpus_per_node=2 is not allowed: the nodes of"),
        (("trainer.num_nodes=3",), "trainer.num_nodes=3 is not allowed"),
        (("trainer.devices=auto",), "trainer.devices='auto' is not allowed with hydra/launcher=slurm"),
    ],
)
def test_a_request_the_cluster_cannot_meet_is_refused_before_submission(overrides, expected):
    config = composed("hydra/launcher=slurm", *overrides, return_hydra_config=True)
    problem = request_problem(config, [NODE, {**NODE, "name": "n2"}])
    assert problem == expected if expected is None else expected in problem


# -- on the cluster --------------------------------------------------------------------------------
@pytest.mark.slurm
@needs_slurm
def test_a_sweep_runs_as_slurm_jobs(tmp_path):
    assert_ran(slurm_sweep(tmp_path, "model.latent_dim=2,4", *SHORT_RUN))
    runs = job_dirs(tmp_path)
    assert [run.name.split(",")[0] for run in runs] == ["0_model.latent_dim=2", "1_model.latent_dim=4"]
    rows = sweep_summary(tmp_path)
    assert sorted(row["overrides"] for row in rows) == ["model.latent_dim=2", "model.latent_dim=4"]
    assert {row["status"] for row in rows} == {"completed"}
    for run in runs:
        scalars, _ = read_events(run)
        assert "test/nelbo" in scalars
    jobs = submitted_jobs(tmp_path)
    assert len(jobs) == 2 and [sacct(job)["State"] for job in jobs] == ["COMPLETED", "COMPLETED"]


@pytest.mark.slurm
@needs_slurm
@pytest.mark.parametrize("layout", ["2 tasks on a node", "2 nodes"])
def test_ddp_under_slurm_is_one_job_whose_tasks_are_the_ranks(tmp_path, layout):
    devices = (
        ["trainer.devices=2"]
        if layout == "2 tasks on a node"
        else ["trainer.num_nodes=2", "trainer.devices=1"]
    )
    assert_ran(slurm_sweep(tmp_path, *devices, *SHORT_RUN))
    (run,) = job_dirs(tmp_path)  # one run dir
    events = list(run.glob("events.out.tfevents.*"))
    assert len({e.name.split(".")[4] for e in events}) == 1  # one TensorBoard stream, from rank zero
    text = logs(tmp_path)
    # Lightning took the ranks from SLURM's tasks: each task says which rank it is, none was launched by it
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in text and "GLOBAL_RANK: 1, MEMBER: 2/2" in text
    assert "SLURM auto-requeueing enabled" not in text  # the project's requeue, not Lightning's
    (job,) = submitted_jobs(tmp_path)
    row = sacct(job)
    assert row["State"] == "COMPLETED" and row["NTasks"] in ("", "2")
    assert row["NodeList"] == ("n1" if layout == "2 tasks on a node" else "n[1-2]")
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 5 and results["metrics"]["val/nelbo"] > 0


@pytest.mark.slurm
@needs_slurm
def test_a_failing_job_is_reported_and_the_others_complete(tmp_path):
    # a failure only the job meets (a refused value stops the whole sweep before it starts): no such file
    missing = tmp_path / "missing.ckpt"
    result = slurm_sweep(tmp_path, f"ckpt_path={missing},null", *SHORT_RUN)
    why = f"ckpt_path={missing} is not allowed: no file there"
    assert_one_line_error(result, f"1 of 2 jobs failed, e.g. job 0: {why}")
    rows = {row["overrides"]: row for row in sweep_summary(tmp_path)}
    assert rows["ckpt_path=null"]["status"] == "completed" and float(rows["ckpt_path=null"]["val/nelbo"]) > 0
    failed = rows[f"ckpt_path={missing}"]
    assert failed["status"] == "failed" and failed["error"].startswith(why)


def wait_until_held(job: str, timeout: float = 120) -> None:
    """Returns once the requeued `job` waits to start again (its first run has ended)."""
    end = time.time() + timeout
    while time.time() < end:
        pending = subprocess.run(["squeue", "-h", "-j", job, "-o", "%t %r"], capture_output=True, text=True)
        if pending.stdout.strip() == "PD BeginTime":
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job} was not requeued within {timeout} s")


@pytest.mark.slurm
@needs_slurm
@pytest.mark.parametrize("how", ["preempted", "time limit", "preempted, last.ckpt unreadable"])
def test_a_requeued_job_resumes_and_ends_with_the_uninterrupted_weights(tmp_path, how):
    """Preempted: `scontrol requeue` mid-epoch 2 (SIGTERM, then the job runs again). Time limit: the
    SIGUSR2 that SLURM sends `signal_delay_s` before it (the sbatch line is tested above), sent with
    `scancel --signal` rather than by waiting out a real limit; the job saves and requeues itself. Either
    way the job continues in its own folder from last.ckpt and ends bit-identical to the same job never
    interrupted. With last.ckpt cut short while the job waited (a copy killed midway), it continues from
    the newest intact epoch_NNN.ckpt instead, trains the steps since again, and still ends bit-identical."""
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    release = ReleaseRequeued()
    release.start()
    try:
        first = slurm_sweep(reference, *LONG_RUN, background=True)
        second = slurm_sweep(interrupted, *LONG_RUN, background=True)
        wait_for_checkpoint(interrupted, "0_*/checkpoints/last.ckpt", 50, second)  # within epoch 2
        (job,) = submitted_jobs(interrupted)
        if how == "time limit":
            subprocess.run(["scancel", "--signal=USR2", job], check=True)
        else:
            subprocess.run(["scontrol", "requeue", job], check=True)
        if how == "preempted, last.ckpt unreadable":
            wait_until_held(job)  # ReleaseRequeued starts it again 5 s later
            (last,) = interrupted.glob("0_*/checkpoints/last.ckpt")
            os.truncate(last, last.stat().st_size // 3)
        for process in (first, second):
            assert process.wait(timeout=900) == 0, process.stderr.read()[-3000:]
    finally:
        release.done.set()
    (ref_run,), (run,) = job_dirs(reference), job_dirs(interrupted)
    log = (run / "train.log").read_text()
    if how == "preempted, last.ckpt unreadable":
        assert re.search(
            r"requeued by SLURM \(restart 1\): \S+/last.ckpt: not a readable checkpoint .*; resuming from "
            r"\S+/checkpoints/epoch_\d{3}.ckpt \(step \d+\) instead, the steps since are trained again",
            log,
        ), log[-3000:]
    else:
        assert "requeued by SLURM (restart 1): resuming from" in log
    stop = "stopped by SIGUSR2" if how == "time limit" else "stopped by SIGTERM"
    assert stop in logs(interrupted) or stop in log
    assert_same_state(final_weights(run), final_weights(ref_run))
    # one TensorBoard stream: every validation once, at the same steps and values as the reference's
    (scalars, _), (ref_scalars, _) = read_events(run), read_events(ref_run)
    assert [(e.step, e.value) for e in scalars["val/nelbo"]] == [
        (e.step, e.value) for e in ref_scalars["val/nelbo"]
    ]
    assert len(sweep_summary(interrupted)) == 1  # counted once


@pytest.mark.slurm
@needs_slurm
def test_the_cli_refuses_what_the_cluster_cannot_run_before_submitting(tmp_path):
    result = slurm_sweep(tmp_path, "hydra.launcher.mem_gb=100000", timeout=120)
    assert_one_line_error(result, "hydra.launcher.mem_gb=100000 is not allowed: the nodes of the default")
    assert not (tmp_path / ".submitit").exists()  # nothing was submitted


def test_a_job_requeues_itself_at_most_max_requeues_times(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from cvae_lightning.callbacks import resume

    requeued = []
    monkeypatch.setattr(resume.slurm, "requeue", lambda: requeued.append(resume.slurm.restarts()))
    callback = resume.CheckpointOnInterrupt(str(tmp_path), max_requeues=2)
    monkeypatch.setattr(resume.slurm, "requeue_signal", lambda: "SIGUSR2")  # as the handler records it
    # nothing to save
    trainer = SimpleNamespace(state=SimpleNamespace(fn="validate"), is_global_zero=True, world_size=1)
    for restarts in range(4):
        monkeypatch.setenv("SLURM_RESTART_COUNT", str(restarts))
        callback.requeued = False
        callback.on_exception(trainer, None, RuntimeError())
        assert callback.requeued == (restarts < 2)
    assert requeued == [0, 1]
