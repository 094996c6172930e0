"""Checkpoints, in one place: what each kind holds and what writes it, reading one (refusing anything else in
one line), loading it as a model without Hydra, its data settings, and which one a run resumes from. The
callbacks that write them are in callbacks/resume.py."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class

from cvae_lightning.errors import CheckpointError, first_line

log = logging.getLogger(__name__)

# kind -> (the LightningModule it holds, what writes it)
KINDS = {
    "cvae": (
        "cvae_lightning.module.CVAEModule",
        "`python train.py` (model=cvae), e.g. logs/train/runs/<run>/checkpoints/last.ckpt",
    ),
    "vae": (
        "cvae_lightning.module.CVAEModule",
        "`python train.py model=vae`, e.g. logs/train/runs/<run>/checkpoints/last.ckpt",
    ),
    "classifier": ("cvae_lightning.classifier.Classifier", "`make classifier` (checkpoints/classifier.ckpt)"),
}
RETRAIN = "it was written before the model's networks became configs; retrain it with `python train.py`"


def read(
    path: str | Path, key: str = "ckpt_path", kinds: tuple[str, ...] = ("cvae", "vae")
) -> dict[str, Any]:
    """The checkpoint at `path` (tensors on CPU, nothing unpickled but tensors and plain data); a one-line
    CheckpointError naming `key` when there is no file or it is not a Lightning checkpoint."""
    path = Path(path)
    expected = f"expected a checkpoint written by {KINDS[kinds[0]][1]}"
    if not path.is_file():
        raise CheckpointError(f"{key}={path} is not allowed: no file there; {expected}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        reason = first_line(error)
        raise CheckpointError(
            f"{key}={path} is not allowed: not a readable checkpoint ({reason}); {expected}"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{key}={path} is not allowed: not a Lightning checkpoint (no state_dict); {expected}"
        )
    return checkpoint


def kind(checkpoint: dict[str, Any]) -> str:
    """ "cvae", "vae", "classifier", "old" (a (C)VAE of the earlier format) or "unknown", by its
    hyperparameters."""
    hparams = checkpoint.get("hyper_parameters", {})
    if "encoder" in hparams and "n_labels" in hparams:
        return "cvae" if hparams["n_labels"] else "vae"
    if "feature_dim" in hparams:
        return "classifier"
    return "old" if "latent_dim" in hparams else "unknown"


def expect(
    checkpoint: dict[str, Any], path: str | Path, kinds: tuple[str, ...], key: str = "ckpt_path"
) -> str:
    """The checkpoint's kind, which must be one of `kinds`; else a one-line error saying what to pass."""
    found = kind(checkpoint)
    if found == "old" and "classifier" not in kinds:
        raise CheckpointError(f"{key}={path} is not allowed: {RETRAIN}")
    if found not in kinds:
        raise CheckpointError(
            f"{key}={path} is not allowed: it is a {found} checkpoint, not a {' or '.join(kinds)}; "
            f"expected one written by {KINDS[kinds[0]][1]}"
        )
    return found


def load_module(
    path: str | Path, kinds: tuple[str, ...] = ("cvae", "vae"), key: str = "ckpt_path", map_location="cpu"
):
    """The LightningModule in the checkpoint at `path`, in eval mode, if it is one of `kinds`."""
    found = expect(read(path, key, kinds), path, kinds, key)
    # building a model draws initial weights from torch's global RNG: fork it, so that loading (as
    # SampleAccuracy does when training starts) leaves a training run's random draws as they would be
    with torch.random.fork_rng(devices=[]):
        try:
            module = get_class(KINDS[found][0]).load_from_checkpoint(path, map_location=map_location)
        except (RuntimeError, KeyError, TypeError) as error:
            reason = first_line(error)
            raise CheckpointError(
                f"{key}={path} is not allowed: it does not load as a {found} ({reason})"
            ) from None
    if found == "classifier":  # channels-last weights: oneDNN's faster convolution layout on CPU
        module = module.to(memory_format=torch.channels_last)
    return module.eval()


def load_checkpoint(
    path: str | Path, kinds: tuple[str, ...] = ("cvae", "vae"), key="ckpt_path", map_location="cpu"
):
    """The trained model (`cvae_lightning.model.CVAE`: a CVAE, or a VAE) in the checkpoint at `path`, in eval
    mode: `model.sample(labels=torch.tensor([2, 0, 2, 6]))`."""
    return load_module(path, kinds, key, map_location).model


def load_classifier(path: str | Path, map_location="cpu"):
    """The project's MNIST classifier (`make classifier` writes it), in eval mode."""
    return load_module(path, kinds=("classifier",), key="classifier_path", map_location=map_location)


def data_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The data module's settings the model was trained with (its binarization among them)."""
    return dict(checkpoint.get("datamodule_hyper_parameters", {}))


def resume_point(
    ckpt_path: str | None, output_dir: str | Path, kind_: str, restarts: int
) -> tuple[Path | None, int]:
    """The checkpoint a run starts from and its step: `ckpt_path` (`last`: the run dir's
    checkpoints/last.ckpt); a job that SLURM requeued (`restarts` > 0) continues from its last.ckpt
    unasked."""
    last = Path(output_dir) / "checkpoints" / "last.ckpt"
    if ckpt_path is None and restarts and last.is_file():
        log.info(f"requeued by SLURM (restart {restarts}): resuming from {last}")
        return last, read(last)["global_step"]
    if ckpt_path is None:
        return None, 0
    path = last if ckpt_path == "last" else Path(ckpt_path)
    if ckpt_path == "last" and not path.is_file():
        raise CheckpointError(
            f"ckpt_path=last is not allowed: no checkpoint at {path}; "
            "to resume a run pass its folder and `last`: hydra.run.dir=<run dir> ckpt_path=last"
        )
    checkpoint = read(path, kinds=(kind_,))
    expect(checkpoint, path, (kind_,))
    return path, checkpoint["global_step"]


def model_kind(module) -> str:
    """The kind of checkpoint `module` writes."""
    return kind({"hyper_parameters": dict(module.hparams)})
