"""The maths module `cvae_lightning.model.cvae.CVAE` (n_labels=0: the VAE) with its networks: shapes, one API
for both, labels, the KL and the -ELBO; and a network of one's own, from a class anywhere on the path."""

import math

import pytest
import torch
from torch import nn

import cvae_lightning
from cvae_lightning import CVAE, MNISTDataModule
from cvae_lightning.model.cvae import bernoulli_nll, gaussian_kl
from cvae_lightning.model.priors import StandardPrior
from tests.helpers import mlp_cvae, tiny_module, tiny_trainer


def test_shapes_of_encoder_decoder_and_samples():
    model = mlp_cvae(latent_dim=3, hidden_dims=(16, 8))
    x, labels = torch.rand(5, 1, 28, 28), torch.tensor([0, 1, 2, 3, 9])
    mu, logvar = model.encode(x, labels)
    assert mu.shape == logvar.shape == (5, 3)
    assert model.decode(mu, labels).shape == (5, 1, 28, 28)
    samples = model.sample(labels=labels)
    assert samples.shape == (5, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1
    assert model.reconstruct(x, labels).shape == (5, 1, 28, 28)
    # the encoder sees 784 pixels + 10 label entries; the decoder z + 10
    assert model.encoder[0].in_features == 794 and model.decoder[0].in_features == 13


def test_vae_has_no_label_input():
    model = mlp_cvae(latent_dim=4, hidden_dims=(16,), n_labels=0)
    assert model.encoder[0].in_features == 784 and model.decoder[0].in_features == 4
    samples = model.sample(6)
    assert samples.shape == (6, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1
    assert model.reconstruct(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("n_labels", [0, 10], ids=["vae", "cvae"])
def test_both_models_take_the_same_calls(n_labels):
    """One API: integer labels everywhere (the VAE ignores them), the count from n, labels or noise."""
    torch.manual_seed(0)
    model = mlp_cvae(latent_dim=3, hidden_dims=(16,), n_labels=n_labels)
    x, labels, noise = torch.rand(4, 1, 28, 28), torch.tensor([1, 2, 3, 4]), torch.randn(4, 3)
    assert model.sample(labels=labels).shape == (4, 1, 28, 28)
    assert model.sample(4).shape == model.sample(noise=noise).shape == (4, 1, 28, 28)
    assert torch.equal(model.sample(labels=labels, noise=noise), model.sample(labels=labels, noise=noise))
    assert model.reconstruct(x, labels).shape == (4, 1, 28, 28)
    assert model.elbo(x, labels)["nelbo"].shape == ()
    assert model.log_likelihood(x, labels, k=3).shape == (4,)
    # the fixed noise of the grids: the same draw for the same seed, from one place
    assert torch.equal(model.noise(5, seed=3), model.noise(5, seed=3))
    a, b = model.noise(2, 2, seed=3)
    assert a.shape == b.shape == (2, 3) and not torch.equal(a, b)


def test_label_changes_the_sample():
    torch.manual_seed(0)
    model = mlp_cvae(latent_dim=2, hidden_dims=(8,))
    a, b = model.images(torch.zeros(2, 2), torch.tensor([1, 7]))
    assert not torch.allclose(a, b)


def test_cvae_without_labels_draws_digits_uniformly():
    model = mlp_cvae(latent_dim=2, hidden_dims=(8,))
    torch.manual_seed(0)
    drawn = model.sample(5)
    torch.manual_seed(0)
    labels = torch.randint(10, (5,))
    assert torch.equal(drawn, model.sample(labels=labels))


def test_one_hot_labels_and_mixed_labels_are_the_same_condition():
    model = mlp_cvae(latent_dim=2, hidden_dims=(8,))
    labels = torch.tensor([0, 3, 9])
    y = model.condition(labels)
    assert y.tolist() == [[1.0 if j == i else 0.0 for j in range(10)] for i in (0, 3, 9)]
    assert torch.equal(model.condition(y), y)  # (N, 10) label weights pass as given
    mixed = torch.full((2, 10), 0.1)
    assert torch.equal(model.condition(mixed), mixed)
    with pytest.raises(ValueError, match="a CVAE needs labels"):
        model.encode(torch.rand(3, 1, 28, 28))


def test_kl_is_zero_at_the_prior_and_matches_closed_form():
    assert torch.equal(gaussian_kl(torch.zeros(4, 6), torch.zeros(4, 6)), torch.zeros(4, 6))
    # KL(N(1, e^1) || N(0, 1)) per dimension = 0.5 * (1 + e - 1 - 1)
    kl = gaussian_kl(torch.ones(1, 2), torch.ones(1, 2)).sum()
    assert kl.item() == pytest.approx(2 * 0.5 * (1 + math.e - 1 - 1), rel=1e-6)


def test_negative_elbo_equals_a_hand_computation():
    torch.manual_seed(0)
    model = mlp_cvae(latent_dim=2, hidden_dims=(8,))
    x, labels = torch.rand(3, 1, 28, 28), torch.tensor([4, 5, 6])
    torch.manual_seed(1)
    terms = model.elbo(x, labels)

    torch.manual_seed(1)
    mu, logvar = model.encode(x, labels)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    p = torch.sigmoid(model.decode(z, labels)).flatten(1).double()
    xf = x.flatten(1).double()
    recon = -(xf * torch.log(p) + (1 - xf) * torch.log(1 - p)).sum(1).mean()
    var = torch.exp(logvar.double())
    kl_per_dim = (0.5 * (mu.double() ** 2 + var - 1 - torch.log(var))).mean(0)
    assert terms["recon"].item() == pytest.approx(recon.item(), rel=1e-4)
    assert terms["kl"].item() == pytest.approx(kl_per_dim.sum().item(), rel=1e-4)
    assert torch.allclose(terms["kl_per_dim"].double(), kl_per_dim, rtol=1e-4)
    assert terms["nelbo"].item() == pytest.approx((recon + kl_per_dim.sum()).item(), rel=1e-4)


def test_bernoulli_nll_of_a_confident_correct_decoder_is_small():
    x = (torch.rand(2, 1, 28, 28) > 0.5).float()
    logits = (x * 2 - 1) * 20
    assert bernoulli_nll(logits, x).max() < 1e-4
    assert bernoulli_nll(-logits, x).min() > 784 * 19


class MyEncoder(nn.Module):
    """An encoder of one's own: not in the project, with a constructor argument the project's nets lack."""

    def __init__(self, latent_dim: int, n_labels: int, width: int = 8):
        super().__init__()
        self.width = width
        self.net = nn.Sequential(
            nn.Linear(784 + n_labels, width), nn.Tanh(), nn.Linear(width, 2 * latent_dim)
        )

    def forward(self, x, y=None):
        h = x.flatten(1)
        return self.net(h if y is None else torch.cat([h, y.to(h.dtype)], dim=1))


def test_a_new_encoder_is_a_class_on_the_path_and_one_override(data_dir, tmp_path):
    """No edit to the project's files: the class trains, checkpoints and loads back (weights-only)."""
    module = tiny_module(
        "model.encoder._target_=tests.test_model.MyEncoder",
        "~model.encoder.hidden_dims",
        "~model.encoder.activation",
        "++model.encoder.width=12",
    )
    assert isinstance(module.model.encoder, MyEncoder) and module.model.encoder.width == 12
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = tiny_trainer(max_steps=2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=64))
    assert trainer.global_step == 2
    path = tmp_path / "mine.ckpt"
    trainer.save_checkpoint(path)

    torch.manual_seed(123)  # a fresh module's initial weights differ from the trained ones
    loaded = cvae_lightning.load_checkpoint(path)
    assert isinstance(loaded, CVAE) and loaded is not module.model
    assert isinstance(loaded.encoder, MyEncoder) and loaded.encoder.width == 12
    trained = module.model.state_dict()
    assert loaded.state_dict().keys() == trained.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert not torch.equal(trained["encoder.net.0.weight"], before["encoder.net.0.weight"])  # it trained


class MyPrior(StandardPrior):
    """A prior of one's own: N(0, s^2 I) with one learned scale s (from `scale`), whatever the label."""

    def __init__(self, latent_dim: int, n_labels: int, scale: float = 1.0):
        super().__init__(latent_dim)
        self.logvar = nn.Parameter(torch.tensor(2 * math.log(scale)))

    def forward(self, y):  # from_noise, noise_and_log_det and log_prob follow from it
        return self.zeros, self.zeros + self.logvar


def test_a_new_prior_is_a_class_on_the_path_and_one_override(data_dir, tmp_path):
    """The CVAE's maths asks the prior object: samples, density and KL follow it, it trains and loads back."""
    module = tiny_module(
        "model.prior._target_=tests.test_model.MyPrior", "~model.prior.layers", "++model.prior.scale=2.0"
    )
    model = module.model
    assert isinstance(model.prior_net, MyPrior) and model.prior_net.logvar.item() == pytest.approx(
        math.log(4)
    )
    noise, labels = torch.randn(3, 2), torch.tensor([1, 2, 3])
    assert torch.allclose(model.from_noise(noise, model.condition(labels)), 2 * noise)
    z = torch.randn(3, 2)
    assert torch.allclose(
        model.prior_log_prob(z, None), torch.distributions.Normal(0.0, 2.0).log_prob(z).sum(-1)
    )
    x = torch.rand(3, 1, 28, 28)
    mu, logvar = model.encode(x, labels)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 2.0)
    )
    assert model.elbo(x, labels)["kl"].item() == pytest.approx(kl.sum(1).mean().item(), rel=1e-5)
    trainer = tiny_trainer(max_steps=2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=64))
    trainer.save_checkpoint(tmp_path / "mine.ckpt")
    loaded = cvae_lightning.load_checkpoint(tmp_path / "mine.ckpt")
    assert isinstance(loaded.prior_net, MyPrior)
    assert loaded.prior_net.logvar.item() == model.prior_net.logvar.item() != pytest.approx(math.log(4))
