"""The project's own MNIST classifier: it judges generated digits (conditional accuracy, classifier-FID)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from cvae_lightning.errors import check, check_int, check_int_list, check_number
from cvae_lightning.harness.config import build
from cvae_lightning.model.data import IMAGE_SHAPE, NUM_CLASSES
from cvae_lightning.model.module import plain


class Classifier(L.LightningModule):
    """A small CNN: `feature_dim` penultimate features (for classifier-FID), then a linear head."""

    def __init__(self, channels=(32, 64), feature_dim: int = 128, dropout: float = 0.3, optimizer=None):
        super().__init__()
        optimizer = plain(optimizer) or {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
        channels = check_int_list("model.channels", channels, example="[32,64]")
        check("model.channels", channels, len(channels) == 2, "two integers >= 1, e.g. [32,64]")
        check_int("model.feature_dim", feature_dim, 1)
        dropout_ok = isinstance(dropout, int | float) and 0 <= dropout < 1
        check("model.dropout", dropout, dropout_ok, "a number in [0, 1)")
        check_number("model.optimizer.lr", optimizer.get("lr", 1.0), 0, above=True)
        self.save_hyperparameters()
        c1, c2 = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * 7 * 7, feature_dim), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, NUM_CLASSES))
        self.val_acc = MulticlassAccuracy(NUM_CLASSES, average="micro")
        self.test_acc = MulticlassAccuracy(NUM_CLASSES, average="micro")

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer activations (B, feature_dim) of images in [0, 1]."""
        return self.body(x.view(-1, *IMAGE_SHAPE).to(self.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self(x.to(self.device)).argmax(dim=1)

    def _step(self, batch, stage: str, accuracy: MulticlassAccuracy | None = None) -> Tensor:
        x, labels = batch
        logits = self(x)
        loss = F.cross_entropy(logits, labels)
        shown, per_step = {"prog_bar": True, "batch_size": len(x)}, stage == "train"
        self.log(f"{stage}/loss", loss, on_step=per_step, on_epoch=not per_step, **shown)
        if accuracy is not None:
            accuracy(logits, labels)
            self.log(f"{stage}/acc", accuracy, on_epoch=True, **shown)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx):
        self._step(batch, "test", self.test_acc)

    def configure_optimizers(self):
        return build(self.hparams.optimizer, "model.optimizer", params=self.parameters())


class ClassifierFeatures(nn.Module):
    """The classifier's penultimate layer as a torchmetrics FID feature extractor (no Inception weights)."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.hparams.feature_dim  # what torchmetrics' FID reads

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x)
