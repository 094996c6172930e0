"""Checkpoints, in one place: read any checkpoint the project writes, tell its kind, load it as a model, and
refuse anything else in one line. The models stamp their class into every checkpoint they save."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from cvae_lightning.errors import CheckpointError

# what a checkpoint can hold, by the `model_class` the models stamp into it
KINDS = {"CVAE": "cvae", "VAE": "vae", "Classifier": "classifier"}
WRITTEN_BY = {
    "cvae": "`python train.py` (model=cvae), e.g. logs/train/runs/<run>/checkpoints/last.ckpt",
    "vae": "`python train.py model=vae`, e.g. logs/train/runs/<run>/checkpoints/last.ckpt",
    "classifier": "`make classifier` (checkpoints/classifier.ckpt)",
}


def read(
    path: str | Path, key: str = "ckpt_path", kinds: tuple[str, ...] = ("cvae", "vae")
) -> dict[str, Any]:
    """The checkpoint at `path` (tensors on CPU, nothing unpickled but tensors and plain data); a one-line
    CheckpointError naming `key` when there is no file or it is not a Lightning checkpoint."""
    path = Path(path)
    expected = f"expected a checkpoint written by {WRITTEN_BY.get(kinds[0], WRITTEN_BY['cvae'])}"
    if not path.is_file():
        raise CheckpointError(f"{key}={path} is not allowed: no file there; {expected}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(
            f"{key}={path} is not allowed: not a readable checkpoint ({reason}); {expected}"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{key}={path} is not allowed: not a Lightning checkpoint (no state_dict); {expected}"
        )
    return checkpoint


def kind(checkpoint: dict[str, Any]) -> str:
    """ "cvae", "vae", "classifier" or "unknown"; checkpoints without a stamp are told by their weights."""
    name = checkpoint.get("model_class")
    state, hparams = checkpoint.get("state_dict", {}), checkpoint.get("hyper_parameters", {})
    if name is None and any(k.startswith("head.") for k in state):
        name = "Classifier"
    if name is None and "latent_dim" in hparams:
        decoder_in = next(
            (v for k, v in state.items() if k.startswith("decoder.") and k.endswith("weight")), None
        )
        if decoder_in is not None:
            name = "CVAE" if decoder_in.shape[1] > hparams["latent_dim"] else "VAE"
    return KINDS.get(name, "unknown")


def expect(
    checkpoint: dict[str, Any], path: str | Path, kinds: tuple[str, ...], key: str = "ckpt_path"
) -> str:
    """The checkpoint's kind, which must be one of `kinds`; else a one-line error saying what to pass."""
    found = kind(checkpoint)
    if found not in kinds:
        raise CheckpointError(
            f"{key}={path} is not allowed: it is a {found} checkpoint, not a {' or '.join(kinds)}; "
            f"expected one written by {WRITTEN_BY[kinds[0]]}"
        )
    return found


def load(
    path: str | Path, kinds: tuple[str, ...] = ("cvae", "vae"), key: str = "ckpt_path", map_location="cpu"
):
    """The model in the checkpoint at `path`, in eval mode, if it is one of `kinds`."""
    from cvae_lightning.classifier import Classifier
    from cvae_lightning.models import CVAE, VAE

    found = expect(read(path, key, kinds), path, kinds, key)
    model_class = {"cvae": CVAE, "vae": VAE, "classifier": Classifier}[found]
    # building a model draws initial weights from torch's global RNG: fork it, so that loading (as
    # SampleAccuracy does when training starts) leaves a training run's random draws as they would be
    with torch.random.fork_rng(devices=[]):
        return model_class.load_from_checkpoint(path, map_location=map_location).eval()


def binary_pixels(checkpoint: dict[str, Any]) -> bool:
    """Whether the model was trained on dynamically binarized pixels (then it is tested on binary pixels)."""
    return checkpoint.get("datamodule_hyper_parameters", {}).get("binarize", "none") in ("dynamic", True)


class Stamped(L.LightningModule):
    """A LightningModule whose checkpoints name its class, and that refuses, in one line, a checkpoint of
    another class or of other sizes, or a file that is not a checkpoint."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["model_class"] = type(self).__name__

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("model_class")
        if saved is not None and saved != type(self).__name__:
            raise CheckpointError(
                f"the checkpoint holds a {saved}, not a {type(self).__name__}: "
                f"load it with {saved}.load_from_checkpoint (or train.py model={saved.lower()})"
            )
        own = self.state_dict()
        for name, tensor in checkpoint["state_dict"].items():
            if name in own and own[name].shape != tensor.shape:
                built = ", ".join(
                    f"{k}={v}" for k, v in self.hparams.items() if k in ("latent_dim", "hidden_dims")
                )
                raise CheckpointError(
                    f"the checkpoint's {name} has shape {tuple(tensor.shape)}, this model's "
                    f"{tuple(own[name].shape)}: the checkpoint was trained with other sizes than {built}"
                )

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's loader, with one-line errors for a missing or unreadable file or other weights."""
        read(checkpoint_path, key="checkpoint_path", kinds=(cls.__name__.lower(),))
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except (RuntimeError, KeyError, TypeError) as error:
            lines = str(error).strip().splitlines()
            reason = lines[0] if lines else type(error).__name__
            raise CheckpointError(
                f"checkpoint_path={checkpoint_path} is not allowed: "
                f"it does not load as a {cls.__name__} ({reason})"
            ) from None
