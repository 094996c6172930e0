"""The project's own MNIST classifier: it judges generated digits (conditional accuracy, classifier-FID)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from cvae_lightning.config import ConfigError
from cvae_lightning.data import IMAGE_SHAPE, NUM_CLASSES


class Classifier(L.LightningModule):
    """A small CNN: two conv-conv-pool blocks, then `features` (the penultimate layer) and a linear head.

    The penultimate features are what classifier-FID compares; the logits give conditional accuracy.
    """

    def __init__(
        self, channels: tuple[int, int] = (32, 64), features: int = 128, dropout: float = 0.3, lr=1e-3
    ):
        super().__init__()
        channels = [int(c) for c in channels]
        self.save_hyperparameters()
        c1, c2 = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * 7 * 7, features), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, NUM_CLASSES))
        self.num_features = features  # read by torchmetrics' FID for a custom feature extractor
        self.val_acc = MulticlassAccuracy(NUM_CLASSES, average="micro")
        self.test_acc = MulticlassAccuracy(NUM_CLASSES, average="micro")

    def setup(self, stage: str) -> None:
        """Refuses the (C)VAE's callbacks (they monitor val/elbo), which `model=classifier` alone keeps."""
        monitors = {getattr(callback, "monitor", None) for callback in self.trainer.checkpoint_callbacks}
        if monitors - {None, "val/loss", "val/acc"}:
            raise ConfigError(
                "model=classifier is not allowed alone: train it with `python train.py experiment=classifier`"
                " (or `make classifier`), which also sets its checkpoint and callbacks"
            )

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer activations (B, features) of images in [0, 1]."""
        return self.body(x.view(-1, *IMAGE_SHAPE).to(self.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self(x.to(self.device)).argmax(dim=1)

    def _step(self, batch, stage: str, accuracy: MulticlassAccuracy | None = None) -> Tensor:
        x, y = batch
        labels = y.argmax(dim=1)
        logits = self(x)
        loss = F.cross_entropy(logits, labels)
        per_step = stage == "train"
        self.log(
            f"{stage}/loss", loss, on_step=per_step, on_epoch=not per_step, prog_bar=True, batch_size=len(x)
        )
        if accuracy is not None:
            accuracy(logits, labels)
            self.log(f"{stage}/acc", accuracy, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx):
        self._step(batch, "test", self.test_acc)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["model_class"] = type(self).__name__


class ClassifierFeatures(nn.Module):
    """The classifier's penultimate layer as a torchmetrics FID feature extractor (no Inception weights)."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.hparams.features

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x)


class MissingClassifierError(FileNotFoundError):
    """No classifier checkpoint where one is expected: the message says what to run."""


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> Classifier:
    """The trained classifier at `path`, in eval mode; a one-line error saying how to train it if missing."""
    path = Path(path)
    if not path.is_file():
        raise MissingClassifierError(f"no MNIST classifier at {path}; train it first with `make classifier`")
    state = torch.load(path, map_location="cpu", weights_only=True).get("state_dict", {})
    if not any(k.startswith("head.") for k in state):
        raise MissingClassifierError(
            f"{path} is not a classifier checkpoint; train one with `make classifier`"
        )
    # building it draws initial weights from torch's global RNG: fork it, so that loading the judge (as
    # SampleAccuracy does when training starts) leaves the training run's random draws as they would be
    with torch.random.fork_rng(devices=[]):
        classifier = Classifier.load_from_checkpoint(path, map_location=map_location).eval()
    # channels-last weights: oneDNN's faster convolution layout on CPU (~1.7x on 1000 digits here)
    return classifier.to(memory_format=torch.channels_last)
