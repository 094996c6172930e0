"""Conditional VAE (and VAE) on MNIST with PyTorch Lightning, Hydra and TensorBoard."""

from cvae_lightning.checkpoints import load_checkpoint
from cvae_lightning.classifier import Classifier
from cvae_lightning.data import MNISTDataModule
from cvae_lightning.errors import Error
from cvae_lightning.model import CVAE
from cvae_lightning.module import CVAEModule

__all__ = ["CVAE", "CVAEModule", "Classifier", "MNISTDataModule", "Error", "load_checkpoint"]
