import os
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from tests.helpers import ROOT, SHORT_RUN, run_entry, tiny_module, tiny_trainer

# as the scripts set it: in-process runs find data/ and the classifier under the project, from any cwd
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
# pytest -n (make test): each worker one thread, its scripts too, as processes side by side must be
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """SLURM jobs are end-to-end runs: `make test-fast` (-m "not slow") leaves them out too."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The project's own data/ (as `make train` leaves it), prepared once: raw files written and verified."""
    from cvae_lightning import MNISTDataModule

    (ROOT / "data").mkdir(exist_ok=True)
    with FileLock(ROOT / "data" / ".prepare.lock"):  # pytest -n: one worker writes, the others wait
        MNISTDataModule(data_dir=str(ROOT / "data")).prepare_data()
    return ROOT / "data"


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, data_dir) -> dict[str, Path]:
    """{"cvae", "vae", "classifier"}: checkpoints after 3 training steps on real MNIST (seconds on CPU)."""
    from cvae_lightning import Classifier, MNISTDataModule

    out = tmp_path_factory.mktemp("tiny")
    models = {
        "cvae": (lambda: tiny_module(), out / "cvae" / "last.ckpt"),
        "vae": (lambda: tiny_module("model=vae"), out / "vae" / "last.ckpt"),
        "classifier": (lambda: Classifier(channels=[4, 8], feature_dim=16), out / "classifier.ckpt"),
    }
    for build, path in models.values():
        model = build()
        torch.manual_seed(0)
        trainer = tiny_trainer(max_steps=3, limit_val_batches=0)
        trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=64))
        trainer.save_checkpoint(path)
    return {name: path for name, (_, path) in models.items()}


@pytest.fixture(scope="session")
def short_run(tmp_path_factory, tiny_checkpoints) -> Path:
    """The run folder of `python train.py` (the default CVAE) over SHORT_RUN, run in this process and judged
    by the tiny classifier: checkpoints, TensorBoard events, results.json, config_tree.log. Read it, don't
    write to it."""
    run_dir = tmp_path_factory.mktemp("short_run")
    classifier = f"callbacks.sample_accuracy.classifier_path={tiny_checkpoints['classifier']}"
    run_entry("train.py", *SHORT_RUN, classifier, output_dir=run_dir)
    return run_dir


@pytest.fixture(scope="session")
def classifier_run(tmp_path_factory, data_dir) -> Path:
    """The run folder of `python train.py experiment=classifier trainer.max_epochs=2`, run in this process,
    its checkpoint in it (checkpoints/classifier.ckpt, not the project's): a judge for generated digits."""
    run_dir = tmp_path_factory.mktemp("classifier_run")
    checkpoints = f"callbacks.model_checkpoint.dirpath={run_dir / 'checkpoints'}"
    run_entry("train.py", "experiment=classifier", "trainer.max_epochs=2", checkpoints, output_dir=run_dir)
    return run_dir
