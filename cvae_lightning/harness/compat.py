"""Every private library API the project uses, each with a test in tests/test_compat.py."""

from __future__ import annotations

import csv
from contextlib import contextmanager
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging


def stop_at_end_of_step(trainer: L.Trainer) -> None:
    """As Lightning's SIGTERM handler: training stops at the end of this step, raising SIGTERMException."""
    trainer._signal_connector.received_sigterm = True


def logs_this_step(trainer: L.Trainer) -> bool:
    """Whether the loggers write at this training step (`trainer.log_every_n_steps`)."""
    return trainer._logger_connector.should_update_logs


def save_last_checkpoint(callback: ModelCheckpoint, trainer: L.Trainer) -> None:
    """`callback`'s last.ckpt now, unless Lightning would skip saving here (sanity check, a step saved)."""
    if not callback._should_skip_saving_checkpoint(trainer):
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def set_averaging_fn(callback: WeightAveraging, avg_fn) -> None:
    """`callback` averages with `avg_fn(averaged, current, num_averaged)` (for torch's AveragedModel)."""
    callback._kwargs["avg_fn"] = avg_fn


def swap_averaged_weights(callback: WeightAveraging, pl_module: L.LightningModule) -> None:
    """The average into `pl_module` and its weights into the average's place, as around validation."""
    callback._swap_models(pl_module)


def tensorboard_file_writer(writer: Any):
    """The event-file writer behind a torch SummaryWriter, reopened if the writer was closed."""
    return writer._get_file_writer()


def logger_experiment(logger) -> Any:
    """A Lightning logger's experiment object if it has made one, else None (without making one)."""
    return logger._experiment


def hydra_args_parser():
    """Hydra's own command-line parser (it separates flags such as -m from the overrides)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


def log_hparams_session(logger, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
    """HPARAMS row without log_hyperparams' experiment summary: TensorBoard lists differing columns first."""
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    logger.log_metrics(metrics)
    writer = tensorboard_file_writer(logger.experiment)
    for summary in hparams_summaries(hparams, metrics)[1:]:  # session start and end
        writer.add_summary(summary)


def continue_optuna_sweep(sweeper, n_trials: int, first_job_idx: int, sampler=None) -> None:
    """The Optuna sweeper's next `sweep()` launches `n_trials` trials from `first_job_idx`, with `sampler`."""
    impl = sweeper.sweeper  # OptunaSweeper.sweeper: the OptunaSweeperImpl that does the work
    impl.n_trials, impl.job_idx = n_trials, first_job_idx
    if sampler is not None:
        impl.sampler = sampler


def optuna_search_space(overrides: list[str]) -> dict[str, Any]:
    """Parameter name -> the optuna distribution the Optuna sweeper samples it from for these overrides."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    return create_params_from_overrides(overrides)[0]


class SlicedLoader:
    """Base of a loader that slices its batches itself: Lightning reads `batch_sampler` of any loader with a
    `sampler` (to warn of a shuffled evaluation loader)."""

    batch_sampler = None


@contextmanager
def without_loggers(trainer: L.Trainer):
    """`trainer` logs nothing in the block (its validate and test take no such switch), its loggers after."""
    loggers, trainer.loggers = trainer.loggers, []
    try:
        yield
    finally:
        trainer.loggers = loggers


def continue_csv_metrics(writer, header: list[str], rows: list[dict]) -> None:
    """Lightning's CSV writer (which removes metrics.csv when made) goes on from `rows` and `header`."""
    with open(writer.metrics_file_path, "w", newline="") as file:
        table = csv.DictWriter(file, fieldnames=header)
        table.writeheader()
        table.writerows(rows)
    writer.metrics_keys = list(header)
