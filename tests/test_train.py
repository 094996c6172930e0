"""End to end: train.py as a user runs it, through Hydra, in a subprocess."""

import pytest
import torch
import yaml

from cvae_lightning import CVAE, VAE
from tests.conftest import read_events, run_train

SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
]


def train_short(tmp_path, *overrides):
    result = run_train(*SHORT, *overrides, f"hydra.run.dir={tmp_path}", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path


def test_cvae_run_writes_config_checkpoints_and_tensorboard_images(tmp_path, data_dir):
    run_dir = train_short(tmp_path)
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert cfg["model"]["_target_"] == "cvae_lightning.models.CVAE"

    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["epoch_000.ckpt", "last.ckpt"]
    model = CVAE.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    assert model.hparams.latent_dim == 20 and model.hparams.hidden_dims == [512, 256]
    assert model.sample(torch.arange(10)).shape == (10, 1, 28, 28)

    scalars, images = read_events(run_dir / "tensorboard")
    for stage in ("val", "test"):
        for part in ("elbo", "recon", "kl"):
            assert f"{stage}/{part}" in scalars
    val_elbo = scalars["val/elbo"][-1].value
    assert 100 < val_elbo < 800  # finite and plausible for 5 steps of training
    # one row per digit 0-9, 10 columns, 2px padding: (10*28 + 11*2) square
    generated = images["samples/generated"][-1]
    assert (generated.height, generated.width) == (302, 302)
    # 16 originals above their 16 reconstructions
    recon = images["samples/reconstructions"][-1]
    assert (recon.height, recon.width) == (2 * 28 + 3 * 2, 16 * 28 + 17 * 2)


def test_vae_run_and_overrides(tmp_path, data_dir):
    run_dir = train_short(tmp_path, "model=vae", "model.latent_dim=8", "data.batch_size=256")
    model = VAE.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    assert model.hparams.latent_dim == 8 and model.sample(3).shape == (3, 1, 28, 28)
    _, images = read_events(run_dir / "tensorboard")
    assert {"samples/generated", "samples/reconstructions"} <= set(images)


@pytest.mark.slow
def test_two_real_epochs_learn(tmp_path, data_dir):
    """A short real run on the full training set: val -ELBO below 120 nats per image."""
    result = run_train(
        "trainer.max_epochs=2", f"hydra.run.dir={tmp_path}", timeout=900, env={"OMP_NUM_THREADS": "2"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scalars, _ = read_events(tmp_path / "tensorboard")
    val = [e.value for e in scalars["val/elbo"]]
    assert len(val) == 2 and val[1] < val[0]
    assert val[-1] < 120, val
    assert scalars["test/elbo"][-1].value < 120
