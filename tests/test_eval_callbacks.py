"""The evaluation callbacks: style transfer and interpolation grids, sample accuracy, active units."""

from types import SimpleNamespace

import pytest
import torch

from cvae_lightning import CVAE
from cvae_lightning.eval_callbacks import ActiveUnits, SampleAccuracy
from cvae_lightning.models import gaussian_kl_per_dim
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
    for name in ("T1", "mu"):
        assert 0 <= scalars[f"samples/accuracy_{name}"][-1].value <= 1
    assert "samples/accuracy_T0.5" not in scalars  # evaluate.py's, not logged every epoch by default
    assert 0 <= scalars["val/active_units"][-1].value <= 20
    # 8 validation digits, each followed by its decoding as 0-9: 8 rows of 11
    style = images["samples/style_transfer"][-1]
    assert (style.height, style.width) == (8 * 28 + 9 * 2, 11 * 28 + 12 * 2)
    interpolation = images["samples/interpolation"][-1]
    assert (interpolation.height, interpolation.width) == (10 * 28 + 11 * 2, 10 * 28 + 11 * 2)


class _Module:
    """Just what ActiveUnits reads: log (the KL comes with the validation step's outputs)."""

    def __init__(self):
        self.logged = {}

    def log(self, name, value, **kwargs):
        self.logged[name] = value


def test_active_units_counts_dimensions_above_the_threshold():
    module, callback = _Module(), ActiveUnits(threshold=0.01)
    outputs = {"kl_per_dim": torch.tensor([0.0, 0.005, 0.02, 3.0])}
    callback.on_validation_epoch_start(None, module)
    for _ in range(3):
        callback.on_validation_batch_end(None, module, outputs, (torch.zeros(4, 1), None), 0)
    callback.on_validation_epoch_end(None, module)
    assert module.logged["val/active_units"].item() == 2


def test_kl_per_dim_is_zero_for_dimensions_the_encoder_ignores():
    torch.manual_seed(0)
    model = CVAE(latent_dim=4, hidden_dims=[16])
    with torch.no_grad():  # mu = 0 and logvar = 0 (the prior) for latent dimensions 2 and 3
        model.encoder[-1].weight[[2, 3, 6, 7]] = 0
        model.encoder[-1].bias[[2, 3, 6, 7]] = 0
    x, y = torch.rand(8, 1, 28, 28), CVAE.one_hot(torch.arange(8))
    terms = model.elbo_terms(x, y)
    kl = terms["kl_per_dim"]
    assert kl[2:].abs().max() < 1e-6 and (kl[:2] > 0).all()
    assert kl.sum().item() == pytest.approx(terms["kl"].item(), rel=1e-6)
    per_image = gaussian_kl_per_dim(*model.encode(x, y)).sum(1)
    assert kl.sum().item() == pytest.approx(per_image.mean().item(), rel=1e-5)


class _Sampler:
    """Just what SampleAccuracy reads: a CVAE whose T=1 threes come out as fours (90% right at T=1)."""

    training, device = True, torch.device("cpu")
    hparams = SimpleNamespace(latent_dim=3)

    def __init__(self):
        self.drawn, self.logged = {}, {}

    def sample(self, labels, temperature, noise):
        assert len(noise) == len(labels)
        self.drawn[temperature] = labels.clone()
        drawn = torch.where((labels == 3) & (temperature == 1.0), 4, labels)
        return drawn.float().view(-1, 1, 1, 1).expand(-1, 1, 28, 28)

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def log(self, name, value):
        self.logged[name] = value


class _ReadsTheFill:
    """A perfect 'classifier' for _Sampler's images: the digit is the pixel value."""

    def to(self, device):
        return self

    def predict(self, x):
        return x[:, 0, 0, 0].long()


def test_sample_accuracy_judges_n_per_digit_samples_and_one_image_per_digit_at_the_prior_mean():
    callback = SampleAccuracy("unused.ckpt", n_per_digit=7, temperatures=(1.0, 0.5, 0.0))
    callback.classifier = _ReadsTheFill()
    module = _Sampler()
    callback.on_validation_epoch_end(SimpleNamespace(sanity_checking=False), module)
    assert module.logged == {
        "samples/accuracy_T1": pytest.approx(0.9),
        "samples/accuracy_T0.5": 1.0,
        "samples/accuracy_mu": 1.0,
    }
    assert module.drawn[1.0].tolist() == module.drawn[0.5].tolist() == sorted(list(range(10)) * 7)
    assert module.drawn[0.0].tolist() == list(range(10))  # z = the prior mean: the noise plays no part
    assert module.training
