"""Start-of-run checks no single object makes, and `build`, which turns a library's refusal into one line."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cvae_lightning.errors import ConfigError, Error, check, check_bool, check_int, first_line, refuse

ACCELERATORS = ("cpu", "gpu", "cuda", "auto", "mps")
# the modules whose callbacks draw or judge samples: a (C)VAE's, not the classifier's
GENERATIVE_CALLBACKS = ("cvae_lightning.callbacks.images.", "cvae_lightning.callbacks.metrics.")
TIMEDELTA_KEYS = {"days", "seconds", "microseconds", "milliseconds", "minutes", "hours", "weeks"}


def _select(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def validate(cfg: DictConfig) -> None:
    """Raises ConfigError on the first value that cannot work."""
    check_int("seed", cfg.get("seed"), 0)
    check_bool("test", cfg.get("test"))
    check_bool("compile", cfg.get("compile", False))
    check("ckpt_path", p := cfg.get("ckpt_path"), isinstance(p, str | None), "null, last or a file path")
    # Lightning accepts these (max_epochs=0, log_every_n_steps=0, min_epochs=-1) and fails later, or never
    for key, low in (("max_epochs", 1), ("min_epochs", 0), ("log_every_n_steps", 1)):
        if _select(cfg, f"trainer.{key}") is not None:
            check_int(f"trainer.{key}", _select(cfg, f"trainer.{key}"), low)
    max_time = _select(cfg, "trainer.max_time")  # a string Lightning checks; not a dict, nor a number
    if max_time is not None and not isinstance(max_time, str):
        ok = isinstance(max_time, dict) and bool(max_time) and set(max_time) <= TIMEDELTA_KEYS
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in max_time.values())
        check("trainer.max_time", max_time, ok, "null, DD:HH:MM:SS (e.g. 00:02:00:00) or {hours: 2}")
    _check_devices(cfg)
    callbacks = {name: callback for name, callback in (cfg.get("callbacks") or {}).items() if callback}
    if str(_select(cfg, "model._target_") or "").endswith(".Classifier") and any(
        str(callback.get("_target_", "")).startswith(GENERATIVE_CALLBACKS) for callback in callbacks.values()
    ):
        raise ConfigError(
            "model=classifier is not allowed alone: train it with `python train.py experiment=classifier`"
            " (or `make classifier`), which also sets its checkpoint and callbacks"
        )
    # EarlyStopping on a val/ metric with no validation fails after the first epoch, in many lines
    validates = _select(cfg, "data.val_size") != 0 and _select(cfg, "trainer.limit_val_batches") != 0
    for name, callback in callbacks.items():
        monitor = str(callback.get("monitor"))
        early_stopping = str(callback.get("_target_")).endswith(".EarlyStopping")
        if not validates and early_stopping and monitor.startswith("val/"):
            raise ConfigError(
                f"callbacks.{name} is not allowed without validation (data.val_size=0 or "
                f"trainer.limit_val_batches=0): it monitors {monitor}; expected a validation set or no {name}"
            )


def _check_devices(cfg: DictConfig) -> None:
    """No more devices than this machine has: GPUs for gpu/cuda, cores for cpu."""
    import torch

    accelerator, devices = _select(cfg, "trainer.accelerator") or "cpu", _select(cfg, "trainer.devices")
    # Lightning's refusal of tpu names no fix, and of gpu without one says "No supported gpu backend found!"
    check("trainer.accelerator", accelerator, accelerator in ACCELERATORS, "one of cpu, gpu, auto")
    gpu = accelerator in ("gpu", "cuda")
    if gpu and not torch.cuda.is_available():
        why = "no GPU is visible; expected cpu or auto"
        raise ConfigError(f"trainer.accelerator={accelerator} is not allowed: {why}")
    available = torch.cuda.device_count() if gpu else os.cpu_count()
    ok = devices == "auto" or (gpu and isinstance(devices, list))  # a list: GPU indices
    if not (ok or (type(devices) is int and devices in (-1, *range(1, available + 1)))):
        allowed = f"1..{available} ({'GPUs' if gpu else 'CPU cores'} here), -1 or auto"
        raise refuse("trainer.devices", devices, allowed)


def build(node, key: str, **kwargs):
    """`instantiate(node, **kwargs)` (a `_partial_` called at once), its refusal as one line naming `key`."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    refused = (TypeError, ValueError, MisconfigurationException)
    try:
        built = instantiate(node, **kwargs)
        return built() if isinstance(built, functools.partial) else built
    except Error:  # a partial's own (a ConfigError is a ValueError too)
        raise
    except (InstantiationException, *refused) as error:  # Hydra's wraps the object's, a partial's is bare
        cause = error.__cause__ if isinstance(error, InstantiationException) else error
        if isinstance(cause, Error):
            raise cause from None
        if isinstance(cause, refused):
            raise ConfigError(f"{key}: {first_line(cause)}") from None
        if cause is None or isinstance(cause, ImportError | AttributeError):  # no such `_target_`
            raise ConfigError(f"{key}: {first_line(error).split(', set env var')[0]}") from None
        raise


def check_group_choices(argv: list[str], conf_dir: Path) -> None:
    """Refuses, in one line, `group=name` overrides (sweeps and lists too) naming no config in `conf_dir`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from cvae_lightning.harness.compat import hydra_args_parser

    try:  # Hydra's own parser separates its flags (-m) from the overrides
        parsed = OverridesParser.create().parse_overrides(hydra_args_parser().parse_args(argv).overrides)
    except (HydraException, SystemExit):
        return  # not ours to report: Hydra will
    for override in parsed:
        group = conf_dir / override.key_or_group
        # hydra/* groups also come from plugins: Hydra checks those itself
        if override.is_delete() or not group.is_dir() or override.key_or_group.startswith("hydra"):
            continue
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        choices = sorted(p.stem for p in group.glob("*.yaml"))
        for value in values:
            names = value if isinstance(value, list) else [value]
            bad = next((str(name) for name in names if name is not None and str(name) not in choices), None)
            if bad is None:
                continue
            shown = f"[{','.join(map(str, value))}]" if isinstance(value, list) else bad
            raise ConfigError(
                f"{override.key_or_group}={shown} is not allowed: "
                + (f"{bad} is not one of " if isinstance(value, list) else "expected one of ")
                + ", ".join(choices)
            )
