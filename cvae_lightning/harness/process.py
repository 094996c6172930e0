"""Process-wide settings a run trains with, and DDP ranks launched inside a multirun."""

from __future__ import annotations

import ctypes
import os
import sys
from contextlib import contextmanager

import torch

from cvae_lightning.errors import check_bool, check_choice

DDP_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def float32_matmul_precision(precision: str):
    """torch's float32 matmul precision in the block, restored after it."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def nvml_available() -> bool:
    try:
        return bool(ctypes.CDLL("libnvidia-ml.so.1"))
    except OSError:
        return False


@contextmanager
def process_settings(flush_denormal: bool, matmul_precision: str):
    """conf/train.yaml's `flush_denormal` and `matmul_precision` while training."""
    check_bool("flush_denormal", flush_denormal)
    check_choice("matmul_precision", matmul_precision, ("highest", "high", "medium"))
    # before any parallel op: OpenMP's threads copy it from this one as they start
    torch.set_flush_denormal(flush_denormal)
    # Lightning switches torch's CUDA check to NVML; without it torch would dlopen it in vain every step
    if not nvml_available():
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    with float32_matmul_precision(matmul_precision):
        yield


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (a sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def one_job_per_ddp_launch():
    """Each multirun job can train with `ddp`: ranks > 0 rerun `sys.argv`, so they get this job's overrides
    and folder, not the sweep; its DDP environment and process group are cleared after it."""
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
