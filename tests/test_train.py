"""End to end: train.py as a user runs it, through Hydra (in this process; what Hydra writes itself, .hydra/,
is read in test_scale's sweep)."""

import pytest
import torch

from cvae_lightning import load_checkpoint
from tests.helpers import SHORT_RUN, read_events, run_entry


def test_cvae_run_writes_checkpoints_and_tensorboard_images(short_run):
    run_dir = short_run
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["epoch_000.ckpt", "last.ckpt"]
    model = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert model.latent_dim == 20 and model.n_labels == 10
    assert [m.out_features for m in model.encoder if isinstance(m, torch.nn.Linear)] == [512, 256, 40]
    assert model.sample(labels=torch.arange(10)).shape == (10, 1, 28, 28)

    scalars, images = read_events(run_dir)  # the run dir is the TensorBoard run: no subfolder
    for stage in ("val", "test"):
        for part in ("nelbo", "recon", "kl"):
            assert f"{stage}/{part}" in scalars
    assert not any("elbo" in tag and "nelbo" not in tag for tag in scalars)  # one name per thing
    val_nelbo = scalars["val/nelbo"][-1].value
    assert 100 < val_nelbo < 800  # finite and plausible for 5 steps of training
    # one row per digit 0-9, 10 columns, 2px padding: (10*28 + 11*2) square
    generated = images["samples/generated"][-1]
    assert (generated.height, generated.width) == (302, 302)
    # 16 originals above their 16 reconstructions
    recon = images["samples/reconstructions"][-1]
    assert (recon.height, recon.width) == (2 * 28 + 3 * 2, 16 * 28 + 17 * 2)


@pytest.mark.slow
def test_vae_run_and_overrides(tmp_path, data_dir):
    overrides = ("model=vae", "model.latent_dim=8", "data.batch_size=256")
    run_entry("train.py", *SHORT_RUN, *overrides, output_dir=tmp_path)
    run_dir = tmp_path
    model = load_checkpoint(run_dir / "checkpoints" / "last.ckpt", kinds=("vae",))
    assert model.latent_dim == 8 and model.n_labels == 0 and model.sample(3).shape == (3, 1, 28, 28)
    assert model.encoder[0].in_features == 784 and type(model.prior_net).__name__ == "StandardPrior"
    _, images = read_events(run_dir)
    assert {"samples/generated", "samples/reconstructions"} <= set(images)
    assert "samples/style_transfer" not in images  # CVAE only


@pytest.mark.slow
def test_one_real_epoch_of_the_default_learns(tmp_path, data_dir):
    """A newcomer's first quick run, `python train.py trainer.max_epochs=1`, on the full training set: val
    -ELBO at most 135 nats per image (121-122 over 3 seeds, docs/results.md) with the weights average
    on, which a lagging average (148-150) fails."""
    run_entry("train.py", "trainer.max_epochs=1", output_dir=tmp_path)
    scalars, _ = read_events(tmp_path)
    (val,) = [e.value for e in scalars["val/nelbo"]]
    assert val <= 135, val
    assert scalars["test/nelbo"][-1].value <= 135
