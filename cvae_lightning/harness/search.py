"""A search survives an interrupt (hydra_plugins/cvae_lightning_search.py): the study in hydra.sweeper.storage
goes on, `n_trials` counting its complete trials; Hydra would restart budget, job numbers, sampler seed."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cvae_lightning.errors import ConfigError, check_int, first_line
from cvae_lightning.harness.runs import can_create

log = logging.getLogger(__name__)

STORAGES = (
    "a database URL optuna can open, e.g. sqlite:///logs/optuna.db, or null (a study in memory, not kept)"
)
NEW_STUDY = "or another hydra.sweeper.study_name for a new study"


def open_storage(url):
    """optuna's storage at `url`, a SQLite file's folder made first; else one line."""
    import optuna
    from sqlalchemy.engine import make_url

    def refused(why: str) -> ConfigError:
        return ConfigError(f"hydra.sweeper.storage={url} is not allowed: {why}; expected {STORAGES}")

    try:
        parsed = make_url(url)
    except Exception as error:
        raise refused(first_line(error)) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).parent
        if why := can_create(folder):
            raise refused(why)
        folder.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.get_storage(url)
    except Exception as error:  # an unknown scheme, a file that is not a database, a server not there
        raise refused(first_line(error)) from None


def stored_study(storage, swept: DictConfig):
    """The study `hydra.sweeper.study_name` in `storage`, or None; one line if made for other directions."""
    import optuna

    try:
        study = optuna.load_study(study_name=swept.study_name, storage=storage)
    except KeyError:
        return None
    asked = swept.direction if OmegaConf.is_list(swept.direction) else [swept.direction]
    # the schema's default is a Direction enum, a value from yaml or the command line a string
    asked = [str(getattr(direction, "name", direction)).lower() for direction in asked]
    stored = [direction.name.lower() for direction in study.directions]
    if asked != stored:
        raise ConfigError(
            f"hydra.sweeper.direction={' '.join(asked)} is not allowed: study '{study.study_name}' in "
            f"{swept.storage} was created to {' '.join(stored)}; expected {' '.join(stored)}, {NEW_STUDY}"
        )
    return study


def check_search_space(study, swept: DictConfig, arguments: list[str]) -> None:
    """One line if the search space samples a stored parameter from a distribution optuna would refuse."""
    from optuna.distributions import check_distribution_compatibility

    from cvae_lightning.harness import compat

    overrides = [f"{name}={value}" for name, value in (swept.params or {}).items()] + list(arguments)
    written = {name: value for name, _, value in (override.partition("=") for override in overrides)}
    asked = compat.optuna_search_space(overrides)
    stored = {
        name: d for trial in study.get_trials(deepcopy=False) for name, d in trial.distributions.items()
    }
    for name in asked.keys() & stored.keys():
        try:
            check_distribution_compatibility(stored[name], asked[name])
        except ValueError as error:
            raise ConfigError(
                f"{name}={written.get(name, asked[name])} is not allowed: study '{study.study_name}' in "
                f"{swept.storage} sampled it from {stored[name]} ({first_line(error).rstrip('.')}); expected "
                f"that, {NEW_STUDY}"
            ) from None


def continue_study(sweeper, config: DictConfig, arguments: list[str]) -> bool:
    """Readies Hydra's Optuna `sweeper` to continue its stored study: trials left running marked failed, only
    the missing ones launched, numbered on, with a seed of their own. False when there are none to run."""
    from hydra.utils import instantiate
    from optuna.trial import TrialState

    from cvae_lightning.harness import compat

    swept = config.hydra.sweeper
    check_int("hydra.sweeper.n_trials", swept.n_trials, low=1)  # 0: no best trial, and a traceback
    named = swept.storage is not None and swept.study_name is not None  # not in memory, nor a fresh name
    if not named or (study := stored_study(open_storage(swept.storage), swept)) is None:
        return True  # nothing earlier to continue
    check_search_space(study, swept, arguments)
    where = f"study '{study.study_name}' in {swept.storage}"
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # one sweep per study at a time: no sweep runs it any more
        study.tell(trial.number, state=TrialState.FAIL)
        log.warning(
            f"trial {trial.number} of {where} was left running by a sweep that stopped: marked failed"
        )
    trials = study.get_trials(deepcopy=False)
    complete = sum(trial.state == TrialState.COMPLETE for trial in trials)
    if (left := swept.n_trials - complete) <= 0:
        log.info(
            f"{where} has {complete} complete trials, hydra.sweeper.n_trials={swept.n_trials}: nothing to "
            "run (raise hydra.sweeper.n_trials to run more, or set another hydra.sweeper.study_name)"
        )
        return False
    seed, sampler = swept.sampler.get("seed"), None
    if trials and seed is not None:  # the first run's seed would draw its start-up params again
        seed += len(trials)
        sampler = instantiate(swept.sampler, seed=seed)
    if trials:
        log.info(
            f"{where} continues: {complete} of {swept.n_trials} trials complete, {left} to run as trials "
            f"{len(trials)}..{len(trials) + left - 1}" + (f", sampled with seed {seed}" if sampler else "")
        )
    compat.continue_optuna_sweep(sweeper, n_trials=left, first_job_idx=len(trials), sampler=sampler)
    return True
