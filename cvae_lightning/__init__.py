"""Conditional VAE (and VAE) on MNIST with PyTorch Lightning, Hydra and TensorBoard."""

from cvae_lightning.data import MNISTDataModule
from cvae_lightning.models import CVAE, VAE

__all__ = ["CVAE", "VAE", "MNISTDataModule"]
