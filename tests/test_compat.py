"""Each private library API the project uses (harness/compat.py) still exists and still does what the
project relies on: an upgrade that removes or changes one fails here, by name, not deep in a training run."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from cvae_lightning.harness import compat
from tests.helpers import read_events, read_hparams, tiny_trainer


class OneWeight(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.logged_steps = []

    def training_step(self, batch, batch_idx):
        return (self.weight * batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(12, 1)), batch_size=2)


class LoggedSteps(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if compat.logs_this_step(trainer):  # where callbacks.loss reads it: after the step, before it counts
            pl_module.logged_steps.append(batch_idx)


def test_lightnings_logging_rule_is_readable():
    """Trainer._logger_connector.should_update_logs: true on the steps the loggers write."""
    model = OneWeight()
    trainer = tiny_trainer(
        max_epochs=1,
        log_every_n_steps=2,
        logger=True,
        default_root_dir="/tmp/cvae-compat",
        callbacks=[LoggedSteps()],
    )
    trainer.fit(model)
    assert model.logged_steps == [1, 3, 5]


def test_a_model_checkpoint_writes_last_on_request(tmp_path):
    """ModelCheckpoint._should_skip_saving_checkpoint, _save_last_checkpoint, _monitor_candidates."""

    class SaveLastAtEpochEnd(ModelCheckpoint):
        def on_train_epoch_end(self, trainer, pl_module):
            compat.save_last_checkpoint(self, trainer)

    callback = SaveLastAtEpochEnd(dirpath=tmp_path, save_top_k=0, save_last=True)
    tiny_trainer(max_epochs=2, callbacks=[callback], enable_checkpointing=True).fit(OneWeight())
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 12


def test_tensorboards_file_writer_and_hparams_session(tmp_path):
    """SummaryWriter._get_file_writer, reopened after close; an HPARAMS row without an experiment summary."""
    logger = TensorBoardLogger(tmp_path, name="", version="")
    compat.log_hparams_session(
        logger, {"model.latent_dim": 2, "model.hidden_dims": "[8]"}, {"hparams/x": 1.5}
    )
    logger.finalize("success")
    assert compat.tensorboard_file_writer(logger.experiment) is not None
    logger.finalize("success")
    scalars, _ = read_events(tmp_path)
    assert scalars["hparams/x"][-1].value == 1.5
    assert read_hparams(tmp_path) == {"model.latent_dim": 2, "model.hidden_dims": "[8]"}


def test_hydras_command_line_parser_separates_flags_from_overrides():
    args = compat.hydra_args_parser().parse_args(["-m", "model.latent_dim=2,4", "seed=1"])
    assert args.multirun and args.overrides == ["model.latent_dim=2,4", "seed=1"]


def test_lightning_stops_at_the_end_of_the_step_as_for_sigterm():
    """Trainer._signal_connector.received_sigterm: set during step 4, training ends after it."""
    import pytest
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    class StopInStep4(OneWeight):
        def training_step(self, batch, batch_idx):
            if self.global_step == 3:
                compat.stop_at_end_of_step(self.trainer)
            return super().training_step(batch, batch_idx)

    trainer = tiny_trainer(max_epochs=1)
    with pytest.raises(SIGTERMException):
        trainer.fit(StopInStep4())
    assert trainer.global_step == 4  # the step it was in, finished


def test_the_optuna_sweeper_launches_the_trials_jobs_and_sampler_it_is_given(
    hydra_sweep_runner, hydra_restore_singletons, tmp_path, monkeypatch
):
    """OptunaSweeper.sweeper (its OptunaSweeperImpl) and that object's n_trials, job_idx and sampler, read by
    sweep() after setup() has run: set to 2 trials from job 7 with a seeded RandomSampler, a real sweep
    launches jobs 7 and 8 (not its config's 5 from 0) with that sampler's params."""
    import optuna
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins

    Plugins.instance()  # scans (re-executes) the plugin modules: patched after it, the class is Hydra's
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

    plain_sweep = OptunaSweeper.sweep

    def continued(self, arguments):
        sampler = optuna.samplers.RandomSampler(seed=0)
        compat.continue_optuna_sweep(self, n_trials=2, first_job_idx=7, sampler=sampler)
        return plain_sweep(self, arguments)

    monkeypatch.setattr(OptunaSweeper, "sweep", continued)
    launched = []

    def job(cfg):
        launched.append((HydraConfig.get().job.num, cfg.x))
        return cfg.x

    overrides = [
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=5",
        "hydra.job.chdir=false",
        "+x=interval(0, 1)",
    ]
    with hydra_sweep_runner(__file__, None, job, None, None, overrides, tmp_path):
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["7", "8"]
    expected = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    draws = [
        expected.ask({"x": optuna.distributions.UniformDistribution(0, 1)}).params["x"] for _ in range(2)
    ]
    assert launched == [(7, draws[0]), (8, draws[1])], (
        "OptunaSweeperImpl.n_trials/job_idx/sampler not honoured"
    )


def test_the_optuna_sweepers_search_space_parser():
    """hydra_plugins.hydra_optuna_sweeper._impl.create_params_from_overrides: sweeps as distributions."""
    from optuna.distributions import CategoricalDistribution, LogUniformDistribution

    space = compat.optuna_search_space(["a=choice(2, 4)", "b=tag(log, interval(1e-4, 1e-2))", "c=3"])
    assert space == {"a": CategoricalDistribution([2, 4]), "b": LogUniformDistribution(1e-4, 1e-2)}


def test_a_loggers_experiment_is_read_without_making_one(tmp_path):
    """Logger._experiment: None until the experiment is made (the CSV logger's writer, W&B's run), then it."""
    from cvae_lightning.harness.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="csv", version="")
    assert compat.logger_experiment(logger) is None and not (tmp_path / "csv").exists()
    writer = logger.experiment
    assert writer is not None and compat.logger_experiment(logger) is writer


def test_weight_averaging_takes_an_averaging_fn_and_swaps_the_average_in():
    """WeightAveraging._kwargs (handed to torch's AveragedModel) and WeightAveraging._swap_models."""

    def keep_first(averaged, current, num_averaged):  # an average that never moves from its first weights
        return averaged

    class SwapAtEpochEnd(WeightAveraging):
        def on_train_epoch_end(self, trainer, pl_module):
            self.seen = [pl_module.weight.item()]
            for _ in range(2):
                compat.swap_averaged_weights(self, pl_module)
                self.seen.append(pl_module.weight.item())

    callback = SwapAtEpochEnd()
    compat.set_averaging_fn(callback, keep_first)
    tiny_trainer(max_epochs=1, callbacks=[callback]).fit(OneWeight())
    # six SGD steps of lr 0.1 on a gradient of 2; the average kept the weights after the first
    assert callback.seen == pytest.approx([1 - 0.2 * 6, 1 - 0.2, 1 - 0.2 * 6])


def test_lightnings_shuffle_check_reads_a_sliced_loaders_sampler():
    """utilities.data._is_dataloader_shuffled reads `batch_sampler` beside `sampler` (else AttributeError)."""
    from lightning.pytorch.utilities.data import _is_dataloader_shuffled
    from torch.utils.data import RandomSampler, SequentialSampler

    class Loader(compat.SlicedLoader):
        def __init__(self, sampler):
            self.sampler = sampler

    assert _is_dataloader_shuffled(Loader(RandomSampler(range(4))))
    assert not _is_dataloader_shuffled(Loader(SequentialSampler(range(4))))


def test_a_validation_without_loggers_logs_nothing_and_gives_them_back(tmp_path):
    class Validated(OneWeight):
        def validation_step(self, batch, batch_idx):
            self.log("val/x", 1.0)

        val_dataloader = OneWeight.train_dataloader

    logger = TensorBoardLogger(tmp_path, name="", version="")
    trainer = tiny_trainer(logger=logger)
    with compat.without_loggers(trainer):
        trainer.validate(Validated(), verbose=False)
    assert trainer.loggers == [logger] and not list(tmp_path.glob("events.*"))


def test_lightnings_csv_writer_appends_to_the_rows_it_is_given(tmp_path):
    """fabric's _ExperimentWriter: metrics_file_path, and metrics_keys, the columns its next save writes."""
    from cvae_lightning.harness.loggers import CSVLogger

    writer = CSVLogger(tmp_path, name="", version="").experiment
    compat.continue_csv_metrics(writer, ["a", "step"], [{"a": "1.0", "step": "0"}])
    writer.log_metrics({"a": 2.0}, step=1)
    writer.save()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["a,step", "1.0,0", "2.0,1"]
