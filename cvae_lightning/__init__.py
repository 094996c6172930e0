"""Conditional VAE (and VAE) on MNIST with PyTorch Lightning, Hydra and TensorBoard."""

from cvae_lightning.checkpoints import load as load_checkpoint
from cvae_lightning.classifier import Classifier
from cvae_lightning.data import MNISTDataModule
from cvae_lightning.errors import Error
from cvae_lightning.models import CVAE, VAE

__all__ = ["CVAE", "VAE", "Classifier", "MNISTDataModule", "Error", "load_checkpoint"]
