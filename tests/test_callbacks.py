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
