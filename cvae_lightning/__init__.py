"""Conditional VAE (and VAE) on MNIST with PyTorch Lightning, Hydra and TensorBoard.

The names below import on first use, so `import cvae_lightning` costs nothing (train.py catches SLURM's
signal before torch loads)."""

from importlib import import_module

_PUBLIC = {
    "CVAE": "cvae_lightning.model.cvae",
    "CVAEModule": "cvae_lightning.model.module",
    "MNISTDataModule": "cvae_lightning.model.data",
    "Classifier": "cvae_lightning.evaluation.classifier",
    "Error": "cvae_lightning.errors",
    "load_checkpoint": "cvae_lightning.harness.checkpoints",
    "pretrained": "cvae_lightning.harness.checkpoints",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'cvae_lightning' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return __all__
