"""Callbacks that report on the process `train.py` runs in, for tests that run it as a subprocess."""

import json
import os
from pathlib import Path

import lightning as L
import torch


def denormals_flushed_per_thread(n: int = 1 << 20) -> list[float]:
    """The fraction of denormal products flushed to zero in each half of one parallel op: with two threads,
    one half is the calling thread's, the other its OpenMP worker's (the setting is per thread)."""
    tiny = torch.full((n,), 713, dtype=torch.int32).view(torch.float32)  # a denormal, made without arithmetic
    flushed = (tiny * 1.0).view(torch.int32) == 0
    return [half.float().mean().item() for half in flushed.chunk(2)]


class DenormalProbe(L.Callback):
    """Writes `denormals_flushed_per_thread()` to `path` as JSON when fitting starts."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_fit_start(self, trainer, pl_module):
        self.path.write_text(json.dumps(denormals_flushed_per_thread()))


class SettingsProbe(L.Callback):
    """Writes the process-wide torch settings that `train()` makes to `path` as JSON when fitting starts."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_fit_start(self, trainer, pl_module):
        settings = {
            "matmul_precision": torch.get_float32_matmul_precision(),
            "nvml_cuda_check": os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"),
            "cuda_available": torch.cuda.is_available(),
        }
        self.path.write_text(json.dumps(settings))
