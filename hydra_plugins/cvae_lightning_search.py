"""`hparams_search=optuna`'s sweeper: Hydra's Optuna sweeper, continuing the study in its storage
(harness/search.py says how). It lives here because Hydra instantiates sweepers only from the
hydra_plugins package, and imports nothing heavy at the top because Hydra imports this package whole at every
start, a plain `python train.py` included."""

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


class ResumableOptunaSweeper(OptunaSweeper):
    """`hydra.sweeper.n_trials` is the study's total of complete trials: a rerun of the same command launches
    only the ones still missing (none once the study has them all), numbered on from the study's trials."""

    def setup(self, *, hydra_context, task_function, config) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.config = config

    def sweep(self, arguments):
        from cvae_lightning.errors import one_line_errors
        from cvae_lightning.harness.search import continue_study

        if one_line_errors(continue_study)(self, self.config, arguments):
            return super().sweep(arguments)
