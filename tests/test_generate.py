"""generate.py and the generation helpers: grids, style transfer, interpolations."""

import pytest
import torch
from PIL import Image

from cvae_lightning.evaluation import generation as gen
from tests.helpers import entry_error, mlp_cvae, run_entry


@pytest.fixture
def model():
    torch.manual_seed(0)
    return mlp_cvae(latent_dim=3).eval()


def test_style_transfer_keeps_the_original_then_decodes_every_digit_from_its_z(model):
    x, labels = torch.rand(2, 1, 28, 28), torch.tensor([3, 8])
    images = gen.style_transfer(model, x, labels)
    assert images.shape == (22, 1, 28, 28)
    assert torch.equal(images[0], x[0]) and torch.equal(images[11], x[1])
    z = model.encode(x, labels)[0]
    assert torch.allclose(images[1 + 5], model.images(z[:1], torch.tensor([5]))[0])
    assert torch.allclose(images[11 + 1 + 9], model.images(z[1:], torch.tensor([9]))[0])


def test_style_transfer_under_a_flow_prior_decodes_the_same_z_as_its_own_digit():
    torch.manual_seed(0)
    model = mlp_cvae(latent_dim=3, prior="flow").eval()
    with torch.no_grad():
        for p in model.parameters():  # a learned prior and couplings, not the identity they start as
            p.add_(0.2 * torch.randn_like(p))
    x, labels = torch.rand(2, 1, 28, 28), torch.tensor([3, 8])
    images = gen.style_transfer(model, x, labels)
    z = model.encode(x, labels)[0]
    assert torch.allclose(images[1 + 3], model.images(z[:1], torch.tensor([3]))[0], atol=1e-5)
    assert torch.allclose(images[11 + 1 + 8], model.images(z[1:], torch.tensor([8]))[0], atol=1e-5)
    assert not torch.allclose(images[1 + 5], model.images(z[:1], torch.tensor([5]))[0], atol=1e-3)


def test_latent_interpolation_moves_z_and_keeps_the_digit(model):
    images = gen.latent_interpolation(model, [4, 6], steps=5)
    assert images.shape == (10, 1, 28, 28)
    assert not torch.allclose(images[0], images[4])


def test_label_interpolation_ends_at_each_digit_for_a_fixed_z(model):
    torch.manual_seed(3)
    images = gen.label_interpolation(model, [1, 7], steps=6, rows=1, temperature=0.0)
    assert images.shape == (6, 1, 28, 28)
    assert torch.allclose(images[0], model.sample(labels=torch.tensor([1]), temperature=0.0)[0], atol=1e-6)
    assert torch.allclose(images[-1], model.sample(labels=torch.tensor([7]), temperature=0.0)[0], atol=1e-6)


def test_lerp_includes_both_ends():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    line = gen.lerp(a, b, 5)
    assert line.shape == (10, 3) and line[0].sum() == 0 and line[4].sum() == 3
    assert torch.allclose(line[2], torch.full((3,), 0.5))


def test_generate_script_grids_and_errors(tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints["cvae"]
    run_entry("generate.py", f"ckpt_path={ckpt}", "digits=[2,0,2,6]", "n=8", f"out={tmp_path}/d.png")
    # 4 rows of 8 digits, 2px padding
    assert Image.open(tmp_path / "d.png").size == (8 * 28 + 9 * 2, 4 * 28 + 5 * 2)
    for args, expected in [
        (["digits=[2,12]"], "digits=[2, 12] is not allowed: expected integers in 0..9, e.g. [2,0,2,6]"),
        (["n=0"], "n=0 is not allowed: expected an integer >= 1"),
        (["temperature=hot"], "temperature='hot' is not allowed: expected a number >= 0"),
        (["interpolate=x"], "interpolate='x' is not allowed: expected one of null, z, digits"),
        (["interpolate=digits", "digits=[3]"], "expected 2 or more digits with interpolate=digits"),
        ([f"out={tmp_path}/d.txt"], f"out='{tmp_path}/d.txt' is not allowed: expected a .png or .jpg"),
        (["out=/proc/no/d.png"], "out=/proc/no/d.png is not allowed: it cannot be written"),
    ]:
        assert expected in entry_error("generate.py", f"ckpt_path={ckpt}", *args)


def test_a_vae_draws_the_same_grid_unconditionally(tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints["vae"]
    run_entry("generate.py", f"ckpt_path={ckpt}", "digits=[1,2]", "n=3", f"out={tmp_path}/v.png")
    assert Image.open(tmp_path / "v.png").size == (3 * 28 + 4 * 2, 2 * 28 + 3 * 2)
    line = entry_error("generate.py", f"ckpt_path={ckpt}", "style_from=[0]")
    assert "is a VAE: style_from and interpolate=digits need a CVAE" in line
    vae = mlp_cvae(latent_dim=2, hidden_dims=(8,), n_labels=0)
    assert gen.digit_grid(vae, [0, 1], n=2).shape == (4, 1, 28, 28)


def test_style_transfer_to_the_source_digit_is_the_reconstruction_under_a_learned_prior():
    """The style, standardized by the source digit's prior, maps back onto that digit's own z."""
    torch.manual_seed(0)
    model = mlp_cvae(latent_dim=3, prior="conditional").eval()
    with torch.no_grad():  # a prior that differs between digits, as after training
        for p in model.prior_net.parameters():
            p.add_(torch.randn_like(p))
    x, labels = torch.rand(2, 1, 28, 28), torch.tensor([3, 7])
    grid = gen.style_transfer(model, x, labels).view(2, 11, 1, 28, 28)
    recon = model.reconstruct(x, labels)
    for i, digit in enumerate(labels.tolist()):
        assert torch.allclose(grid[i, 1 + digit], recon[i], atol=1e-5)
    # another digit: the same standardized place in that digit's prior, not the raw z of the source digit
    mu = model.encode(x, labels)[0]
    prior_mu, prior_logvar = model.prior(labels)
    style = (mu - prior_mu) / (0.5 * prior_logvar).exp()
    zeros = torch.zeros(2, dtype=torch.long)
    assert torch.allclose(grid[:, 1], model.sample(labels=zeros, noise=style), atol=1e-5)
    assert not torch.allclose(grid[:, 1], model.images(mu, zeros), atol=1e-3)


def test_digits_on_request_are_drawn_digit_major_in_batches_on_the_cpu():
    assert gen.repeat_digits(2, [3, 5]).tolist() == [3, 3, 5, 5]
    assert gen.repeat_digits([1, 0, 2], [3, 5, 7]).tolist() == [3, 7, 7]  # a count per digit
    assert gen.repeat_digits(1).tolist() == list(range(10))
    asked = []

    class Recorder:
        def sample(self, labels, temperature):
            asked.append((labels.tolist(), temperature))
            return labels.float().view(-1, 1, 1, 1)

    images = gen.draw(Recorder(), gen.repeat_digits(2, [4, 6]), temperature=0.5, batch_size=3)
    assert asked == [([4, 4, 6], 0.5), ([6], 0.5)] and images.flatten().tolist() == [4, 4, 6, 6]
    assert gen.digit_grid(Recorder(), [1], n=5).shape == (5, 1, 1, 1) and asked[-1] == ([1] * 5, 1.0)


def test_evaluating_is_eval_mode_without_autograd_and_restores_the_mode_on_error(model):
    model.train()
    with pytest.raises(RuntimeError), gen.evaluating(model):
        assert not model.training and not torch.is_grad_enabled()
        raise RuntimeError
    assert model.training and torch.is_grad_enabled()
    with gen.evaluating(model.eval()):
        pass
    assert not model.training
