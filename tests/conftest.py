import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.tiny_models import tiny_checkpoints  # noqa: F401  (fixture: tiny CVAE/VAE/classifier)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The project's own data/ (as `make train` leaves it), prepared once: raw files written and verified."""
    from cvae_lightning import MNISTDataModule

    MNISTDataModule(data_dir=str(ROOT / "data")).prepare_data()
    return ROOT / "data"


def composed(*overrides: str):
    """The `train` config as `python train.py OVERRIDES` composes it (not validated, nothing built)."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def run_train(*overrides: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs `python train.py OVERRIDES` as a user would; one torch thread so parallel runs don't thrash."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def read_events(log_dir: Path):
    """(scalars, images) tag -> events of the one TensorBoard run in log_dir.

    Lightning closes the writer after fit, so `trainer.test` appends a second event file to the same
    folder; TensorBoard reads a folder's files as one run, and so does this.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(log_dir.rglob("events.out.tfevents.*"))
    assert files and {f.parent for f in files} == {log_dir}, files  # no version_N or other sub-runs
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    return (
        {t: acc.Scalars(t) for t in tags["scalars"]},
        {t: acc.Images(t) for t in tags["images"]},
    )
