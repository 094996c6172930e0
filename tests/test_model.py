import math

import pytest
import torch

from cvae_lightning import CVAE, VAE
from cvae_lightning.models import bernoulli_nll, gaussian_kl_per_dim


def test_shapes_of_encoder_decoder_and_samples():
    model = CVAE(latent_dim=3, hidden_dims=[16, 8])
    x, labels = torch.rand(5, 1, 28, 28), torch.tensor([0, 1, 2, 3, 9])
    y = CVAE.one_hot(labels)
    mu, logvar = model.encode(x, y)
    assert mu.shape == logvar.shape == (5, 3)
    assert model.decode(mu, y).shape == (5, 1, 28, 28)
    samples = model.sample(labels)
    assert samples.shape == (5, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1
    assert model.reconstruct(x, labels).shape == (5, 1, 28, 28)
    # the encoder sees 784 pixels + 10 label entries; the decoder z + 10
    assert model.encoder[0].in_features == 794 and model.decoder[0].in_features == 13


def test_vae_has_no_label_input():
    model = VAE(latent_dim=4, hidden_dims=[16])
    assert model.encoder[0].in_features == 784 and model.decoder[0].in_features == 4
    samples = model.sample(6)
    assert samples.shape == (6, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1
    assert model.reconstruct(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)


def test_label_changes_the_sample():
    torch.manual_seed(0)
    model = CVAE(latent_dim=2, hidden_dims=[8])
    z = torch.zeros(2, 2)
    a, b = model.sample(torch.tensor([1, 7]), z=z)
    assert not torch.allclose(a, b)


def test_one_hot():
    y = CVAE.one_hot(torch.tensor([0, 3, 9]))
    assert y.tolist() == [[1.0 if j == i else 0.0 for j in range(10)] for i in (0, 3, 9)]


def test_kl_is_zero_at_the_prior_and_matches_closed_form():
    assert torch.equal(gaussian_kl_per_dim(torch.zeros(4, 6), torch.zeros(4, 6)), torch.zeros(4, 6))
    # KL(N(1, e^1) || N(0, 1)) per dimension = 0.5 * (1 + e - 1 - 1)
    kl = gaussian_kl_per_dim(torch.ones(1, 2), torch.ones(1, 2)).sum()
    assert kl.item() == pytest.approx(2 * 0.5 * (1 + math.e - 1 - 1), rel=1e-6)


def test_elbo_equals_a_hand_computation():
    torch.manual_seed(0)
    model = CVAE(latent_dim=2, hidden_dims=[8])
    x, labels = torch.rand(3, 1, 28, 28), torch.tensor([4, 5, 6])
    y = CVAE.one_hot(labels)
    torch.manual_seed(1)
    terms = model.elbo_terms(x, y)

    torch.manual_seed(1)
    mu, logvar = model.encode(x, y)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    p = torch.sigmoid(model.decode(z, y)).flatten(1).double()
    xf = x.flatten(1).double()
    recon = -(xf * torch.log(p) + (1 - xf) * torch.log(1 - p)).sum(1).mean()
    var = torch.exp(logvar.double())
    kl = (0.5 * (mu.double() ** 2 + var - 1 - torch.log(var))).sum(1).mean()
    assert terms["recon"].item() == pytest.approx(recon.item(), rel=1e-4)
    assert terms["kl"].item() == pytest.approx(kl.item(), rel=1e-4)
    assert terms["elbo"].item() == pytest.approx((recon + kl).item(), rel=1e-4)


def test_bernoulli_nll_of_a_confident_correct_decoder_is_small():
    x = (torch.rand(2, 1, 28, 28) > 0.5).float()
    logits = (x * 2 - 1) * 20
    assert bernoulli_nll(logits, x).max() < 1e-4
    assert bernoulli_nll(-logits, x).min() > 784 * 19
