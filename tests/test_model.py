import math

import pytest
import torch

from cvae_lightning import CVAE, VAE
from cvae_lightning.models import bernoulli_nll, gaussian_kl_per_dim


def test_shapes_of_encoder_decoder_and_samples():
    model = CVAE(latent_dim=3, hidden_dims=[16, 8])
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
    model = VAE(latent_dim=4, hidden_dims=[16])
    assert model.encoder[0].in_features == 784 and model.decoder[0].in_features == 4
    samples = model.sample(6)
    assert samples.shape == (6, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1
    assert model.reconstruct(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("model_class", [VAE, CVAE])
def test_both_models_take_the_same_calls(model_class):
    """One API: integer labels everywhere (the VAE ignores them), the count from n, labels or noise."""
    torch.manual_seed(0)
    model = model_class(latent_dim=3, hidden_dims=[16])
    x, labels, noise = torch.rand(4, 1, 28, 28), torch.tensor([1, 2, 3, 4]), torch.randn(4, 3)
    assert model.sample(labels=labels).shape == (4, 1, 28, 28)
    assert model.sample(4).shape == model.sample(noise=noise).shape == (4, 1, 28, 28)
    assert torch.equal(model.sample(labels=labels, noise=noise), model.sample(labels=labels, noise=noise))
    assert model.reconstruct(x, labels).shape == (4, 1, 28, 28)
    assert model.elbo_terms(x, labels)["nelbo"].shape == ()
    assert model.log_likelihood(x, labels, k=3).shape == (4,)
    # the fixed noise of the grids: the same draw for the same seed, from one place
    assert torch.equal(model.noise(5, seed=3), model.noise(5, seed=3))
    a, b = model.noise(2, 2, seed=3)
    assert a.shape == b.shape == (2, 3) and not torch.equal(a, b)


def test_label_changes_the_sample():
    torch.manual_seed(0)
    model = CVAE(latent_dim=2, hidden_dims=[8])
    z = torch.zeros(2, 2)
    a, b = model.images(z, torch.tensor([1, 7]))
    assert not torch.allclose(a, b)


def test_cvae_without_labels_draws_digits_uniformly():
    model = CVAE(latent_dim=2, hidden_dims=[8])
    torch.manual_seed(0)
    drawn = model.sample(5)
    torch.manual_seed(0)
    labels = torch.randint(10, (5,))
    assert torch.equal(drawn, model.sample(labels=labels))


def test_one_hot_labels_and_mixed_labels_are_the_same_condition():
    model = CVAE(latent_dim=2, hidden_dims=[8])
    labels = torch.tensor([0, 3, 9])
    y = model.condition(labels)
    assert y.tolist() == [[1.0 if j == i else 0.0 for j in range(10)] for i in (0, 3, 9)]
    assert torch.equal(model.condition(y), y)  # (N, 10) label weights pass as given
    with pytest.raises(ValueError, match="a CVAE needs labels"):
        model.encode(torch.rand(3, 1, 28, 28))


def test_kl_is_zero_at_the_prior_and_matches_closed_form():
    assert torch.equal(gaussian_kl_per_dim(torch.zeros(4, 6), torch.zeros(4, 6)), torch.zeros(4, 6))
    # KL(N(1, e^1) || N(0, 1)) per dimension = 0.5 * (1 + e - 1 - 1)
    kl = gaussian_kl_per_dim(torch.ones(1, 2), torch.ones(1, 2)).sum()
    assert kl.item() == pytest.approx(2 * 0.5 * (1 + math.e - 1 - 1), rel=1e-6)


def test_negative_elbo_equals_a_hand_computation():
    torch.manual_seed(0)
    model = CVAE(latent_dim=2, hidden_dims=[8])
    x, labels = torch.rand(3, 1, 28, 28), torch.tensor([4, 5, 6])
    torch.manual_seed(1)
    terms = model.elbo_terms(x, labels)

    torch.manual_seed(1)
    mu, logvar = model.encode(x, labels)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    p = torch.sigmoid(model.decode(z, labels)).flatten(1).double()
    xf = x.flatten(1).double()
    recon = -(xf * torch.log(p) + (1 - xf) * torch.log(1 - p)).sum(1).mean()
    var = torch.exp(logvar.double())
    kl = (0.5 * (mu.double() ** 2 + var - 1 - torch.log(var))).sum(1).mean()
    assert terms["recon"].item() == pytest.approx(recon.item(), rel=1e-4)
    assert terms["kl"].item() == pytest.approx(kl.item(), rel=1e-4)
    assert terms["nelbo"].item() == pytest.approx((recon + kl).item(), rel=1e-4)


def test_bernoulli_nll_of_a_confident_correct_decoder_is_small():
    x = (torch.rand(2, 1, 28, 28) > 0.5).float()
    logits = (x * 2 - 1) * 20
    assert bernoulli_nll(logits, x).max() < 1e-4
    assert bernoulli_nll(-logits, x).min() > 784 * 19
