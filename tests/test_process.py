"""The process-wide settings train.py runs with reach every thread, and are restored afterwards."""

import json

import pytest
import torch

from cvae_lightning.harness.process import float32_matmul_precision, nvml_available
from tests.helpers import assert_ran, run_script


@pytest.mark.slow  # a fresh process: its OpenMP workers start with the settings
@pytest.mark.parametrize("flush, precision", [(True, "medium"), (False, "highest")])
def test_train_applies_its_process_settings_on_every_thread(tmp_path, data_dir, flush, precision):
    """`flush_denormal` must reach the OpenMP workers too, which copy it only as they start;
    `matmul_precision` holds while training; without NVML on the machine torch asks the CUDA runtime
    directly, with the same answer as through Lightning's NVML-based check."""
    out = tmp_path / "settings.json"
    result = run_script(
        "train.py",
        "+trainer.fast_dev_run=true",
        "test=false",
        f"flush_denormal={str(flush).lower()}",
        f"matmul_precision={precision}",
        f"hydra.run.dir={tmp_path}",
        "+callbacks.probe._target_=tests.helpers.SettingsProbe",
        f"+callbacks.probe.path={out}",
        env={"OMP_NUM_THREADS": "2"},
    )
    assert_ran(result)
    settings = json.loads(out.read_text())
    assert settings["denormals_flushed"] == ([1.0, 1.0] if flush else [0.0, 0.0])
    assert settings["matmul_precision"] == precision
    assert settings["nvml_cuda_check"] == ("1" if nvml_available() else None)
    assert settings["cuda_available"] == torch.cuda.is_available()


def test_the_matmul_precision_is_restored():
    assert torch.get_float32_matmul_precision() == "highest"
    with pytest.raises(RuntimeError), float32_matmul_precision("medium"):
        assert torch.get_float32_matmul_precision() == "medium"
        raise RuntimeError("training failed")
    assert torch.get_float32_matmul_precision() == "highest"
