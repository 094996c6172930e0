"""The evaluation callbacks: style transfer and interpolation grids, sample accuracy, active units."""

import pytest
import torch

from cvae_lightning import CVAE
from cvae_lightning.eval_callbacks import ActiveUnits
from cvae_lightning.models import gaussian_kl
from tests.conftest import read_events, run_train


def test_a_short_run_logs_the_grids_and_curves(tmp_path, tiny_checkpoints):
    result = run_train(
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "model.prior=conditional",
        f"callbacks.sample_accuracy.classifier_path={tiny_checkpoints['classifier']}",
        f"hydra.run.dir={tmp_path}",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scalars, images = read_events(tmp_path / "tensorboard")
    for name in ("T1", "T0.5", "mu"):
        assert 0 <= scalars[f"samples/accuracy_{name}"][-1].value <= 1
    assert 0 <= scalars["val/active_units"][-1].value <= 20
    # 8 validation digits, each followed by its decoding as 0-9: 8 rows of 11
    style = images["samples/style_transfer"][-1]
    assert (style.height, style.width) == (8 * 28 + 9 * 2, 11 * 28 + 12 * 2)
    interpolation = images["samples/interpolation"][-1]
    assert (interpolation.height, interpolation.width) == (10 * 28 + 11 * 2, 10 * 28 + 11 * 2)


class _Module:
    """Just what ActiveUnits reads: kl_per_dim and log."""

    def __init__(self, kl):
        self.kl, self.logged = kl, {}

    def kl_per_dim(self, x, y):
        return self.kl

    def log(self, name, value, **kwargs):
        self.logged[name] = value


def test_active_units_counts_dimensions_above_the_threshold():
    module, callback = _Module(torch.tensor([0.0, 0.005, 0.02, 3.0])), ActiveUnits(threshold=0.01)
    callback.on_validation_epoch_start(None, module)
    for _ in range(3):
        callback.on_validation_batch_end(None, module, None, (torch.zeros(4, 1), None), 0)
    callback.on_validation_epoch_end(None, module)
    assert module.logged["val/active_units"].item() == 2


def test_kl_per_dim_is_zero_for_dimensions_the_encoder_ignores():
    torch.manual_seed(0)
    model = CVAE(latent_dim=4, hidden_dims=[16])
    with torch.no_grad():  # mu = 0 and logvar = 0 (the prior) for latent dimensions 2 and 3
        model.encoder[-1].weight[[2, 3, 6, 7]] = 0
        model.encoder[-1].bias[[2, 3, 6, 7]] = 0
    x, y = torch.rand(8, 1, 28, 28), CVAE.one_hot(torch.arange(8))
    kl = model.kl_per_dim(x, y)
    assert kl[2:].abs().max() < 1e-6 and (kl[:2] > 0).all()
    assert kl.sum().item() == pytest.approx(gaussian_kl(*model.encode(x, y)).mean().item(), rel=1e-5)
