"""generate.py and the generation helpers: grids, style transfer, interpolations."""

import pytest
import torch
from PIL import Image

from cvae_lightning import CVAE
from cvae_lightning import generation as gen
from tests.test_eval import run_script


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CVAE(latent_dim=3, hidden_dims=[16]).eval()


def test_style_transfer_keeps_the_original_then_decodes_every_digit_from_its_z(model):
    x, labels = torch.rand(2, 1, 28, 28), torch.tensor([3, 8])
    images = gen.style_transfer(model, x, model.one_hot(labels))
    assert images.shape == (22, 1, 28, 28)
    assert torch.equal(images[0], x[0]) and torch.equal(images[11], x[1])
    z = model.encode(x, model.one_hot(labels))[0]
    assert torch.allclose(images[1 + 5], model.sample(torch.tensor([5]), z=z[:1])[0])
    assert torch.allclose(images[11 + 1 + 9], model.sample(torch.tensor([9]), z=z[1:])[0])


def test_latent_interpolation_moves_z_and_keeps_the_digit(model):
    images = gen.latent_interpolation(model, [4, 6], steps=5)
    assert images.shape == (10, 1, 28, 28)
    assert not torch.allclose(images[0], images[4])


def test_label_interpolation_ends_at_each_digit_for_a_fixed_z(model):
    torch.manual_seed(3)
    images = gen.label_interpolation(model, [1, 7], steps=6, rows=1, temperature=0.0)
    assert images.shape == (6, 1, 28, 28)
    assert torch.allclose(images[0], model.sample(torch.tensor([1]), temperature=0.0)[0], atol=1e-6)
    assert torch.allclose(images[-1], model.sample(torch.tensor([7]), temperature=0.0)[0], atol=1e-6)


def test_lerp_includes_both_ends():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    line = gen.lerp(a, b, 5)
    assert line.shape == (10, 3) and line[0].sum() == 0 and line[4].sum() == 3
    assert torch.allclose(line[2], torch.full((3,), 0.5))


def test_generate_script_grids_and_errors(tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints["cvae"]
    grid = run_script("generate.py", f"ckpt_path={ckpt}", "digits=[2,0,2,6]", "n=8", f"out={tmp_path}/d.png")
    assert grid.returncode == 0, grid.stderr[-2000:]
    # 4 rows of 8 digits, 2px padding
    assert Image.open(tmp_path / "d.png").size == (8 * 28 + 9 * 2, 4 * 28 + 5 * 2)
    bad = run_script("generate.py", f"ckpt_path={ckpt}", "digits=[2,12]")
    assert bad.returncode != 0
    assert (
        bad.stderr.strip()
        == "error: digits=[2, 12] is not allowed: expected integers in 0..9, e.g. [2,0,2,6]"
    )


def test_style_transfer_to_the_source_digit_is_the_reconstruction_under_a_learned_prior():
    """The style, standardized by the source digit's prior, maps back onto that digit's own z."""
    import torch

    from cvae_lightning import CVAE
    from cvae_lightning.generation import style_transfer

    torch.manual_seed(0)
    model = CVAE(latent_dim=3, hidden_dims=[16], prior="conditional").eval()
    with torch.no_grad():  # a prior that differs between digits, as after training
        for p in model.prior_net.parameters():
            p.add_(torch.randn_like(p))
    x, labels = torch.rand(2, 1, 28, 28), torch.tensor([3, 7])
    grid = style_transfer(model, x, model.one_hot(labels)).view(2, 11, 1, 28, 28)
    recon = model.reconstruct(x, labels)
    for i, digit in enumerate(labels.tolist()):
        assert torch.allclose(grid[i, 1 + digit], recon[i], atol=1e-5)
    # another digit: the same standardized place in that digit's prior, not the raw z of the source digit
    mu = model.encode(x, model.one_hot(labels))[0]
    prior_mu, prior_logvar = model.prior(model.one_hot(labels))
    style = (mu - prior_mu) / (0.5 * prior_logvar).exp()
    as_zero = model.sample(torch.zeros(2, dtype=torch.long), noise=style)
    assert torch.allclose(grid[:, 1], as_zero, atol=1e-5)
    assert not torch.allclose(grid[:, 1], model.sample(torch.zeros(2, dtype=torch.long), z=mu), atol=1e-3)
