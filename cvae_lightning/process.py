"""Process-wide settings training runs with, and the plumbing that launches DDP ranks inside a multirun."""

from __future__ import annotations

import ctypes
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import OmegaConf

from cvae_lightning.errors import check_bool, check_choice

MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's


@contextmanager
def float32_matmul_precision(precision: str):
    """torch's float32 matmul precision while training; process-wide, so restored afterwards."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def nvml_available() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def skip_failing_nvml_check() -> None:
    """Lightning switches torch's CUDA check to NVML (fork-safe on GPU machines); without NVML torch would
    dlopen it in vain on every optimizer step before asking the CUDA runtime, which gives the same answer."""
    if not nvml_available():
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


@contextmanager
def process_settings(flush_denormal: bool, matmul_precision: str):
    """conf/train.yaml's `flush_denormal` and `matmul_precision`, applied while training (the matmul precision
    is restored afterwards)."""
    check_bool("flush_denormal", flush_denormal)
    check_choice("matmul_precision", matmul_precision, MATMUL_PRECISIONS)
    # first, before any parallel op: OpenMP's worker threads copy the setting from this thread as they start
    torch.set_flush_denormal(flush_denormal)
    skip_failing_nvml_check()
    with float32_matmul_precision(matmul_precision):
        yield


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (a sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


DDP_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def one_job_per_ddp_launch():
    """Lets each job of a Hydra multirun train on several processes with Lightning's `ddp` strategy.

    Lightning re-runs `sys.argv` (plus `hydra.run.dir=<HydraConfig run.dir>`) for ranks > 0: inside a
    multirun job that would re-run the whole sweep. The children get this job's own overrides and output dir
    instead, and the launcher's environment and process group are cleared after the job, so that the next
    job launches its own children rather than waiting for them.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    argv, env = list(sys.argv), {k: os.environ.get(k) for k in DDP_LAUNCH_ENV}
    if in_multirun():
        hydra_cfg = HydraConfig.get()
        sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        if env["LOCAL_RANK"] is None:  # the launching process: forget this job's DDP world
            for key, value in env.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()


def _can_create(folder: Path) -> str | None:
    """None if `folder` exists or can be made; else why not. Leaves nothing behind: Hydra makes the folder
    itself moments later (from a fresh `${now:}`), so the folders made here to find out are removed."""
    made = []
    try:
        for path in reversed([folder, *folder.parents]):
            if not path.exists():
                path.mkdir()
                made.append(path)
            elif not path.is_dir():
                return f"{path} is not a folder"
    except OSError as error:
        return f"{path} cannot be created ({error.strerror or error})"
    finally:
        for path in reversed(made):
            path.rmdir()
    return None


class WritableOutputDir(HydraCallback):
    """Refuses, in one line, a run or sweep folder that cannot be created, before Hydra tries and fails with
    a traceback (e.g. paths.log_dir=/proc/x)."""

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, key: str) -> None:
        why = _can_create(Path(folder).absolute())
        if why:
            raise SystemExit(
                f"error: {key}={folder} is not allowed: {why}; expected a folder this user can write "
                "(set paths.log_dir, or the folder itself)"
            )


def run_name(num, overrides: str) -> str:
    """A sweep job's folder name, which is also its run name in TensorBoard: its number, then its overrides
    (hydra.job.override_dirname), without '/' and cut short (a folder name holds at most 255 bytes)."""
    name = f"{num}_{overrides}".replace("/", "_") if overrides else str(num)
    return name if len(name) <= 120 else name[:117] + "..."


# Registered on import: Hydra instantiates the callbacks of conf/hydra/default.yaml (this module's
# WritableOutputDir) in every process that resolves a job's folder, a submitit job's too, before it does.
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
