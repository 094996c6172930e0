"""A run's loggers: refused in one line without their package, continued on resume, given the image grids."""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
import re
from pathlib import Path

import torch
from hydra.utils import get_class
from lightning.pytorch import loggers as pl_loggers
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from cvae_lightning.errors import ConfigError
from cvae_lightning.harness import compat
from cvae_lightning.harness.config import build

log = logging.getLogger(__name__)

EXTRAS = {"WandbLogger": "wandb", "MLFlowLogger": "mlflow"}  # the package (and pyproject extra) each needs
IF_INSTALLED = "_if_installed_"  # an entry marked so (conf/logger/many.yaml) is left out without its package
RUN_DIR_TAG = "run_dir"  # the MLflow tag that finds a run's MLflow run again when it resumes


class CSVLogger(pl_loggers.CSVLogger):
    """Lightning's CSVLogger plus the image grids as PNG files; a resumed run's metrics.csv goes on without
    the rows from `purge_step` on, where Lightning's starts over."""

    def __init__(self, *args, purge_step: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.purge_step = purge_step

    @property
    @rank_zero_experiment
    def experiment(self):
        if compat.logger_experiment(self) is not None or self.purge_step is None:
            return super().experiment
        path, header, rows = Path(self.log_dir, "metrics.csv"), [], []
        if path.is_file():
            with open(path, newline="") as file:
                reader = csv.DictReader(file)
                header, rows = list(reader.fieldnames or []), list(reader)
        writer = super().experiment  # removes metrics.csv
        if kept := [row for row in rows if int(float(row["step"])) < self.purge_step]:
            compat.continue_csv_metrics(writer, header, kept)
        return writer


def build_loggers(group: DictConfig | None, output_dir: str, resume_step: int | None) -> list:
    """The `logger` group's loggers; with `resume_step` each continues its run from the checkpoint."""
    built = []
    for name, entry in (group or {}).items():
        if not entry or "_target_" not in entry:
            continue
        entry = OmegaConf.to_container(entry, resolve=True)
        optional, package = entry.pop(IF_INSTALLED, False), EXTRAS.get(entry["_target_"].rsplit(".", 1)[-1])
        if package and importlib.util.find_spec(package) is None:
            if optional:
                log.info(f"logger.{name} left out: the {package} package is not installed")
                continue
            raise ConfigError(
                f"logger.{name} is not allowed here: the {package} package is not installed; "
                f'pip install -e ".[{package}]", or choose another logger (tensorboard, csv)'
            )
        kwargs = _continuing(get_class(entry["_target_"]), entry, output_dir, resume_step)
        built.append(build(entry, f"logger.{name}", **kwargs))
    return built


def _continuing(cls: type, entry: dict, output_dir: str, step: int | None) -> dict:
    """The arguments that make a `cls` logger continue the run it logged before the checkpoint."""
    if issubclass(cls, pl_loggers.TensorBoardLogger | CSVLogger):
        return {"purge_step": step} if step is not None else {}
    if issubclass(cls, pl_loggers.WandbLogger):  # same id, same W&B run: its files say which
        previous = _wandb_run_id(entry.get("save_dir") or output_dir) if step is not None else None
        resume = {"id": previous, "resume": "allow"} if previous else {}
        return {"name": entry.get("name") or Path(output_dir).name} | resume
    if issubclass(cls, pl_loggers.MLFlowLogger):
        uri = entry.get("tracking_uri") or ""
        if uri.startswith("sqlite:///"):  # SQLite makes the file, not its folder
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        tags = {**(entry.get("tags") or {}), RUN_DIR_TAG: str(output_dir)}
        previous = _mlflow_run_id(entry, str(output_dir)) if step is not None else None
        run_name = entry.get("run_name") or Path(output_dir).name
        return {"run_name": run_name, "tags": tags} | ({"run_id": previous} if previous else {})
    return {}


def _wandb_run_id(save_dir: str) -> str | None:
    """The id of the newest W&B run in save_dir/wandb (`[offline-]run-<time>-<id>`)."""
    pattern = re.compile(r"(?:offline-)?run-(\d{8}_\d{6})-(\w+)")
    runs = sorted(m.groups() for p in Path(save_dir, "wandb").glob("*") if (m := pattern.fullmatch(p.name)))
    return runs[-1][1] if runs else None


def _mlflow_run_id(entry: dict, output_dir: str) -> str | None:
    """The MLflow run tagged with this run folder."""
    from mlflow import MlflowClient

    client = MlflowClient(entry.get("tracking_uri"))
    experiment = client.get_experiment_by_name(entry.get("experiment_name") or "lightning_logs")
    if experiment is None:
        return None
    where = f"tags.{RUN_DIR_TAG} = '{output_dir}'"
    runs = client.search_runs(
        [experiment.experiment_id], where, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0].info.run_id if runs else None


IMAGE_LOGGERS = (pl_loggers.TensorBoardLogger, pl_loggers.WandbLogger, pl_loggers.MLFlowLogger, CSVLogger)


def holds_images(loggers: list) -> bool:
    return any(isinstance(logger, IMAGE_LOGGERS) for logger in loggers)


def log_image(loggers: list, tag: str, image: torch.Tensor, step: int) -> None:
    """A one-channel image in [0, 1] (1, H, W) to every logger that holds images."""
    picture = Image.fromarray(image[0].mul(255).round().clamp(0, 255).to(torch.uint8).cpu().numpy())
    for logger in loggers:
        if isinstance(logger, pl_loggers.TensorBoardLogger):
            add_grayscale_image(logger.experiment, tag, picture, step)
        elif isinstance(logger, pl_loggers.WandbLogger):
            logger.log_image(key=tag, images=[picture], step=step)
        elif isinstance(logger, pl_loggers.MLFlowLogger):
            logger.experiment.log_image(logger.run_id, picture, key=tag, step=step)
        elif isinstance(logger, CSVLogger):
            path = Path(logger.log_dir, "images", tag, f"step_{step:06d}.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            picture.save(path, compress_level=1)


def add_grayscale_image(writer, tag: str, picture: Image.Image, global_step: int) -> None:
    """`writer.add_image` without its RGB conversion, resize and slow PNG level."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    png = io.BytesIO()
    picture.save(png, format="PNG", compress_level=1)
    size = dict(height=picture.height, width=picture.width)
    encoded = Summary.Image(**size, colorspace=1, encoded_image_string=png.getvalue())
    summary = Summary(value=[Summary.Value(tag=tag, image=encoded)])
    compat.tensorboard_file_writer(writer).add_summary(summary, global_step)


def log_hyperparameters(loggers: list, hparams: dict, metrics: dict[str, float], step: int) -> None:
    """The run's key hyperparameters with its final metrics, to every logger."""
    for logger in loggers:
        if isinstance(logger, pl_loggers.TensorBoardLogger):
            compat.log_hparams_session(logger, hparams, metrics)
            continue
        given = hparams
        if isinstance(logger, pl_loggers.MLFlowLogger):  # MLflow refuses to change a logged param
            logged = logger.experiment.get_run(logger.run_id).data.params
            if kept := {k for k, v in hparams.items() if k in logged and logged[k] != str(v)}:
                log.warning(f"MLflow keeps the first value of a param: {', '.join(sorted(kept))} not changed")
            given = {k: v for k, v in hparams.items() if k not in kept}
        logger.log_hyperparams(given)
        logger.log_metrics(metrics, step=step)


def close(loggers: list, status: str = "success") -> None:
    """Everything on disk now (TensorBoard holds events back, which exiting drops) and the W&B run ended."""
    for logger in loggers:
        logger.finalize(status)
        if isinstance(logger, pl_loggers.WandbLogger) and compat.logger_experiment(logger) is not None:
            logger.experiment.finish()
