from unittest import mock

import torch

from cvae_lightning import CVAE, VAE
from cvae_lightning.callbacks import LatentManifold


def test_latent_manifold_decodes_a_grid_of_the_plane_for_one_digit():
    callback = LatentManifold(n=5, digit=3)
    model = CVAE(latent_dim=2, hidden_dims=[16])
    images = callback.images(None, model)
    assert images.shape == (25, 1, 28, 28)
    # the corners of the grid differ: z changes across the plane
    assert not torch.allclose(images[0], images[-1])
    assert VAE(latent_dim=2, hidden_dims=[16]).sample(1).shape == (1, 1, 28, 28)
    assert callback.images(None, VAE(latent_dim=2, hidden_dims=[16])).shape == (25, 1, 28, 28)


def test_latent_manifold_is_skipped_for_other_latent_sizes():
    callback = LatentManifold()
    with mock.patch.object(LatentManifold, "images") as images:
        callback.on_validation_epoch_end(mock.MagicMock(), CVAE(latent_dim=3, hidden_dims=[16]))
    images.assert_not_called()


def test_grayscale_images_read_back_as_add_image_shows_them(tmp_path):
    """TensorBoard reads the grayscale PNG summary as it reads add_image's: the same tag, step and size,
    and the same pixels (to within add_image's truncation of x * 255)."""
    import io

    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.utils import make_grid

    from cvae_lightning.callbacks import add_grayscale_image
    from tests.conftest import read_events

    grid = make_grid(torch.rand(12, 1, 28, 28), nrow=4, pad_value=1.0)
    writer = SummaryWriter(tmp_path)
    add_grayscale_image(writer, "ours", grid[:1], global_step=7)
    writer.add_image("add_image", grid, global_step=7)
    writer.close()
    _, images = read_events(tmp_path)
    ours, reference = images["ours"][-1], images["add_image"][-1]
    assert ours.step == reference.step == 7
    assert (ours.height, ours.width) == (reference.height, reference.width) == tuple(grid.shape[1:])
    decoded = np.asarray(Image.open(io.BytesIO(ours.encoded_image_string)))
    rgb = np.asarray(Image.open(io.BytesIO(reference.encoded_image_string)))
    assert decoded.ndim == 2 and rgb.shape == (*decoded.shape, 3)
    expected = grid[0].mul(255).round().to(torch.uint8).numpy()
    assert np.array_equal(decoded, expected)
    assert np.abs(decoded.astype(int) - rgb[..., 0]).max() <= 1
