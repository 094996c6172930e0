"""SLURM: the launcher's GPU request, checked against the cluster before submitting, and requeue."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

from omegaconf import DictConfig, OmegaConf

from cvae_lightning.errors import ConfigError
from cvae_lightning.harness.runs import Callback

GPU_ACCELERATORS = ("gpu", "cuda")
_received: dict[str, str] = {}  # the requeue signal's name once it came; process-wide, as handlers are


def gpus_per_node(accelerator: str, devices) -> int | None:
    """hydra.launcher.gpus_per_node: the trainer's devices when it asks for GPUs, else none."""
    return devices if accelerator in GPU_ACCELERATORS and isinstance(devices, int) else None


def job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID")


def restarts() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0"))


def catch_requeue_signal(name: str = "SIGUSR2") -> None:
    """Under SLURM, the time-limit signal is only recorded, for CheckpointOnInterrupt to act on at the end of
    a step, in place of submitit's handler, which requeues and exits on the spot."""
    if job_id():
        signal.signal(getattr(signal, name), lambda n, _: _received.update(name=signal.Signals(n).name))


def requeue_signal() -> str | None:
    return _received.get("name")


def requeue() -> None:
    """SLURM ends this run (SIGTERM) and starts it again, same job id."""
    subprocess.run(["scontrol", "requeue", job_id()], check=True, capture_output=True, text=True)


def _cluster_nodes(partition: str | None) -> list[dict[str, str]]:
    """One dict per node of the partition (or the default one): cpus, memory (MB), gres."""
    command = ["sinfo", "-h", "-N", "-o", "%N|%c|%m|%G|%P"] + (["-p", partition] if partition else [])
    lines = subprocess.run(command, check=True, capture_output=True, text=True, timeout=30).stdout.split("\n")
    rows = [line.split("|") for line in lines if line]
    return [dict(name=n, cpus=c, memory=m, gres=g) for n, c, m, g, p in rows if partition or p.endswith("*")]


def request_problem(config: DictConfig, nodes: list[dict[str, str]]) -> str | None:
    """Why the cluster cannot run a job of this request, in one line, or None."""
    for key in ("devices", "num_nodes"):  # the launcher's tasks and nodes
        value = config.trainer.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return (
                f"trainer.{key}={value!r} is not allowed with hydra/launcher=slurm: expected an integer >= 1"
            )
    launcher = config.hydra.launcher
    if not nodes:
        return f"hydra.launcher.partition={launcher.get('partition')} is not allowed: SLURM has no such one"
    not_allowed = f"is not allowed: the nodes of {launcher.get('partition') or 'the default partition'}"
    tasks, cpus, gpus = launcher.tasks_per_node, launcher.cpus_per_task, launcher.get("gpus_per_node")
    if not (fit := [n for n in nodes if int(n["cpus"]) >= tasks * cpus]):
        return (
            f"hydra.launcher.cpus_per_task={cpus} x tasks_per_node={tasks} (trainer.devices) {not_allowed} "
            f"have at most {max(int(n['cpus']) for n in nodes)} CPUs"
        )
    if not (fit := [n for n in fit if int(n["memory"]) >= (launcher.get("mem_gb") or 0) * 1024]):
        most = max(int(n["memory"]) for n in nodes) // 1024
        return f"hydra.launcher.mem_gb={launcher.mem_gb} {not_allowed} have at most {most} GB"
    if not (fit := [n for n in fit if not gpus or "gpu" in n["gres"]]):
        return f"hydra.launcher.gpus_per_node={gpus} {not_allowed} have no GPUs (gres)"
    if launcher.nodes > len(fit):
        return f"trainer.num_nodes={launcher.nodes} {not_allowed} that fit the request are {len(fit)}"
    return None


class SlurmPreflight(Callback):
    """Refuses, in one line before submitting, a sweep the cluster cannot run."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        launcher = config.hydra.launcher
        if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
            return
        if shutil.which("sinfo") is None:
            raise ConfigError("hydra/launcher=slurm is not allowed here: no SLURM (sinfo) on this machine")
        try:
            nodes = _cluster_nodes(launcher.get("partition"))
        except (subprocess.SubprocessError, OSError) as error:
            reason = (getattr(error, "stderr", None) or str(error)).strip()
            raise ConfigError(f"hydra/launcher=slurm is not allowed: sinfo failed ({reason})") from None
        if problem := request_problem(config, nodes):
            raise ConfigError(problem)


# on import: submitit's job processes import this module before resolving conf/hydra/launcher/slurm.yaml
OmegaConf.register_new_resolver("slurm_gpus", gpus_per_node, replace=True)
