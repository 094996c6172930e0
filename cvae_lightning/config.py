"""Checks every user-facing config value before any work starts, with a one-line message per failure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cvae_lightning.data import BINARIZE
from cvae_lightning.models import LR_SCHEDULES, PRIORS


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and what is allowed."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _positive_number() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v > 0), "a number > 0"


def _int_list_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    ok = lambda v: isinstance(v, list | tuple) and all(_is_int(h) and h >= low for h in v)  # noqa: E731
    return ok, f"a list of integers >= {low}, e.g. [512,256]"


def _non_negative_number() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v >= 0), "a number >= 0"


def _bool() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, bool)), "true or false"


def _one_of(*choices: Any) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), "one of " + ", ".join(str(c) for c in choices)


MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's

# key -> (check, what is allowed); keys that are absent from the config are skipped
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.latent_dim": _int_at_least(1),
    "model.hidden_dims": _int_list_at_least(1),
    "model.lr": _positive_number(),
    "model.prior": _one_of(*PRIORS),
    "model.beta": _non_negative_number(),
    "model.kl_warmup_epochs": _int_at_least(0),
    "model.lr_schedule": _one_of(*LR_SCHEDULES),
    "data.batch_size": _int_at_least(1),
    "data.eval_batch_size": _int_at_least(1),
    "data.binarize": _one_of(*BINARIZE),
    "data.val_size": _int_at_least(1),
    "trainer.max_epochs": _int_at_least(1),
    "trainer.num_nodes": _int_at_least(1),
    "flush_denormal": _bool(),
    "matmul_precision": _one_of(*MATMUL_PRECISIONS),
}

TRAIN_IMAGES = 60_000


def validate(cfg: DictConfig) -> None:
    """Raises ConfigError on the first value that cannot work."""
    for key, (ok, allowed) in RULES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        if not ok(value):
            raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")
    _check_devices(cfg)
    val_size = OmegaConf.select(cfg, "data.val_size", default=None)
    if val_size is not None and val_size >= TRAIN_IMAGES:
        raise ConfigError(
            f"data.val_size={val_size} is not allowed: expected fewer than the {TRAIN_IMAGES} training images"
        )


def check_group_choices(argv: list[str], conf_dir: Path) -> None:
    """Refuses `group=name` overrides (sweeps too) naming no config in `conf_dir/group/`.

    Hydra would also refuse them, but with a multi-line composition report; this says it in one line.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:  # Hydra's own command-line parser separates its flags (--cfg job, -m) from the overrides
        parsed = OverridesParser.create().parse_overrides(get_args_parser().parse_args(argv).overrides)
    except (HydraException, SystemExit):
        return  # not ours to report: Hydra will
    for override in parsed:
        group = conf_dir / override.key_or_group
        # hydra/* groups also come from plugins (hydra/launcher=submitit_local): Hydra checks those itself
        if override.is_delete() or not group.is_dir() or override.key_or_group.startswith("hydra"):
            continue
        values = (
            list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        )
        choices = sorted(p.stem for p in group.glob("*.yaml"))
        for value in values:
            if value is not None and str(value) not in choices:
                raise ConfigError(
                    f"{override.key_or_group}={value} is not allowed: expected one of {', '.join(choices)}"
                )


def _check_devices(cfg: DictConfig) -> None:
    """No more devices than this machine has: GPUs for gpu/cuda, cores for cpu (one process each)."""
    import os

    import torch

    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="cpu")
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    wants_gpu = accelerator in ("gpu", "cuda")
    if wants_gpu and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} is not allowed: no GPU is visible; expected cpu or auto"
        )
    if accelerator not in ("cpu", "gpu", "cuda", "auto", "mps"):
        raise ConfigError(f"trainer.accelerator={accelerator} is not allowed: expected one of cpu, gpu, auto")
    available = torch.cuda.device_count() if wants_gpu else os.cpu_count()
    if _is_int(devices) and not (devices == -1 or 1 <= devices <= available):
        raise ConfigError(
            f"trainer.devices={devices} is not allowed: expected 1..{available} "
            f"({'GPUs' if wants_gpu else 'CPU cores'} here), -1 or auto"
        )
