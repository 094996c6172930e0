"""Checkpoints: written whole or not at all, read or refused in one line, loaded, resumed from."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from lightning.fabric.plugins import TorchCheckpointIO

from cvae_lightning.errors import CheckpointError, check_choice, first_line
from cvae_lightning.harness import files

log = logging.getLogger(__name__)

MODULE = "cvae_lightning.model.module.CVAEModule"
RUN = "logs/train/runs/<run>/checkpoints/last.ckpt"
# kind -> (the LightningModule it holds, what writes it)
KINDS = {
    "cvae": (MODULE, f"`python train.py` (model=cvae), e.g. {RUN}"),
    "vae": (MODULE, f"`python train.py model=vae`, e.g. {RUN}"),
    "classifier": (
        "cvae_lightning.evaluation.classifier.Classifier",
        "`make classifier` (checkpoints/classifier.ckpt)",
    ),
}
# `ckpt_path=pretrained`: the shipped weights of `make pretrained` (docs/pretrained.md), kind -> file
SHIPPED = Path(__file__).resolve().parents[1] / "pretrained"
# what a shipped file keeps of a checkpoint: the weights (the average) and what rebuilds the model
SHIPPED_KEYS = (
    "state_dict",
    "hyper_parameters",
    "datamodule_hyper_parameters",
    "epoch",
    "global_step",
    "pytorch-lightning_version",
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """The Trainer's writer: each file whole or not at all (files.write_bytes); a remote put already is."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()  # serialized first: a write error is then an OSError, not torch's zip error
        torch.save(checkpoint, buffer)
        files.write_bytes(path, buffer.getbuffer())


def read(path: str | Path, key: str = "ckpt_path", kinds: tuple[str, ...] | None = None) -> dict:
    """The checkpoint at `path` (on CPU, `weights_only`), of one of `kinds` if given, or a CheckpointError."""
    asked = kinds or ("cvae",)  # no kinds: any, and "pretrained" is the shipped CVAE
    path = shipped(path, asked)
    if not path:
        raise CheckpointError(f"{key} is required, e.g. {key}={RUN}, or {key}=pretrained (the shipped model)")
    path, expected = Path(path), f"expected a checkpoint written by {KINDS[asked[0]][1]}"
    refused = f"{key}={path} is not allowed:"
    if not path.is_file():
        raise CheckpointError(f"{refused} no file there; {expected}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        reason = first_line(error).split(". ")[0]  # torch's first sentence; the rest is advice this replaces
        raise CheckpointError(f"{refused} not a readable checkpoint ({reason}); {expected}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{refused} not a Lightning checkpoint (no state_dict); {expected}")
    if kinds and (found := kind(checkpoint)) not in kinds:
        raise CheckpointError(f"{refused} it is a {found} checkpoint, not a {' or '.join(kinds)}; {expected}")
    return checkpoint


def kind(checkpoint: dict[str, Any]) -> str:
    """ "cvae", "vae", "classifier" or "unknown", by its hyperparameters."""
    hparams = checkpoint.get("hyper_parameters", {})
    if "latent_dim" in hparams:
        return "cvae" if hparams.get("n_labels", 1) else "vae"
    return "classifier" if "feature_dim" in hparams else "unknown"


def load_module(
    path: str | Path, kinds=("cvae", "vae"), key="ckpt_path", map_location="cpu", weights="average"
):
    """The LightningModule at `path` in eval mode, with callbacks.ema's "average" or its "trained" weights."""
    check_choice("weights", weights, ("average", "trained"))
    path = shipped(path, kinds)
    checkpoint = read(path, key, kinds)
    found = kind(checkpoint)
    if weights == "trained" and "current_model_state" not in checkpoint:
        raise CheckpointError(
            f"weights=trained is not allowed for {key}={path}: it holds one set of weights (its run "
            "kept no weights average: ~callbacks.ema or experiment=classic); use weights=average"
        )
    # forked: a model's initial weights would draw from a run's global RNG
    with torch.random.fork_rng(devices=[]):
        try:
            module = get_class(KINDS[found][0]).load_from_checkpoint(path, map_location=map_location)
        except (RuntimeError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"{key}={path} is not allowed: it does not load as a {found} ({first_line(error)})"
            ) from None
    if weights == "trained":
        module.load_state_dict(checkpoint["current_model_state"])
    if found == "classifier":  # channels-last weights: oneDNN's faster convolution layout on CPU
        module = module.to(memory_format=torch.channels_last)
    return module.eval()


def load_checkpoint(path: str | Path, kinds=("cvae", "vae"), key="ckpt_path", map_location="cpu"):
    """The trained CVAE (or VAE) at `path`, in eval mode: `model.sample(labels=torch.tensor([2, 0, 2]))`."""
    return load_module(path, kinds, key, map_location).model


def pretrained(map_location="cpu"):
    """The shipped CVAE (`make pretrained`; docs/pretrained.md), in eval mode."""
    return load_checkpoint("pretrained", map_location=map_location)


def shipped(path, kinds: tuple[str, ...]):
    """`path`, or for "pretrained" the shipped file of kinds[0]."""
    return SHIPPED / f"{kinds[0]}.pt" if str(path) == "pretrained" else path


def ship(path: str | Path, kind_: str) -> Path:
    """`path` as the shipped `kind_` file: its weights (the average) and hyperparameters, no `*_dir` paths."""
    checkpoint = read(path, kinds=(kind_,))
    slim = {key: checkpoint[key] for key in SHIPPED_KEYS if key in checkpoint}
    slim["datamodule_hyper_parameters"] = {
        k: v for k, v in data_config(checkpoint).items() if not k.endswith("_dir")
    }
    AtomicCheckpointIO().save_checkpoint(slim, out := SHIPPED / f"{kind_}.pt")
    return out


def load_classifier(path: str | Path, map_location="cpu"):
    """The project's MNIST classifier (`make classifier`), in eval mode."""
    return load_module(path, kinds=("classifier",), key="classifier_path", map_location=map_location)


def data_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The data module's settings the model was trained with."""
    return dict(checkpoint.get("datamodule_hyper_parameters", {}))


def resume_point(
    ckpt_path: str | None, output_dir: str | Path, kind_: str, restarts: int
) -> tuple[Path | None, int]:
    """The checkpoint a run starts from and its step: `ckpt_path` (`last`: the run dir's); a job SLURM
    requeued (`restarts` > 0) continues from its last.ckpt unasked, or from the newest intact one."""
    if ckpt_path not in (None, "last"):
        return Path(ckpt_path), read(ckpt_path, kinds=(kind_,))["global_step"]
    if ckpt_path is None and not restarts:
        return None, 0
    folder = Path(output_dir) / "checkpoints"
    last = folder / "last.ckpt"
    checkpoint, problem = _checked(last, kind_)
    if checkpoint is not None:
        if ckpt_path is None:
            log.info(f"requeued by SLURM (restart {restarts}): resuming from {last}")
        return last, checkpoint["global_step"]
    # the newest intact one beside it (the most steps)
    intact = [(c["global_step"], p) for p in sorted(folder.glob("*.ckpt")) if (c := _checked(p, kind_)[0])]
    step, other = max(intact, key=lambda found: found[0], default=(0, None))
    if ckpt_path == "last":  # a person asked: say which file to pass, and let them choose
        hint = (
            f"resume from {other.name} beside it (step {step}; the steps since are lost) with "
            f"hydra.run.dir={output_dir} ckpt_path={other}"
            if other
            else "to resume a run pass its folder and `last`: hydra.run.dir=<run dir> ckpt_path=last"
        )
        raise CheckpointError(f"ckpt_path=last is not allowed: {problem}; {hint}")
    if other is None:  # requeued before its first checkpoint: it starts again, as it first did
        if last.exists():
            log.warning(
                f"requeued by SLURM (restart {restarts}): {problem}, and no intact checkpoint beside it"
            )
        return None, 0
    log.warning(
        f"requeued by SLURM (restart {restarts}): {problem}; resuming from {other} (step {step}) instead, "
        "the steps since are trained again"
    )
    return other, step


def _checked(path: Path, kind_: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the checkpoint, None) if `path` reads as a `kind_` one, else (None, what is wrong)."""
    if not path.is_file():
        return None, f"no checkpoint at {path}"
    try:
        return read(path, kinds=(kind_,)), None
    except CheckpointError as error:  # "<key>=<path> is not allowed: <what>; expected ...": keep <what>
        return None, f"{path}: {str(error).split(' is not allowed: ', 1)[1].split('; expected')[0]}"


def model_kind(module) -> str:
    return kind({"hyper_parameters": dict(module.hparams)})
