"""`hparams_search=optuna` keeps its study in SQLite (harness/search.py): a search killed midway goes
on with the same command, a finished one launches nothing, optuna-dashboard serves the study, and a sweeper
value or a stored study that cannot work is refused in one line."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, LogUniformDistribution
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

from tests.helpers import (
    SHORT_RUN,
    assert_one_line_error,
    assert_ran,
    composed,
    free_port,
    get_json,
    run_script,
    sweep_summary,
)

STUDY = "cvae_latent_lr"  # conf/hparams_search/optuna.yaml's study_name
SPACE = {
    "model.latent_dim": CategoricalDistribution([2, 4, 8, 16, 32, 64]),
    "model.optimizer.lr": LogUniformDistribution(1e-4, 1e-2),
}
COMPLETE, FAIL, RUNNING = TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING
# stored_study's create_trial and add_trial, which optuna 2 marks experimental
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def search(log_dir: Path, *overrides: str) -> tuple[str, ...]:
    """`train.py hparams_search=optuna` with short trials; its study (the default storage) and runs in
    log_dir."""
    return ("hparams_search=optuna", *SHORT_RUN, f"paths.log_dir={log_dir}", *overrides)


def storage(log_dir: Path) -> str:
    return f"sqlite:///{log_dir}/optuna.db"


def trials(log_dir: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=storage(log_dir)).trials


def stored_study(log_dir: Path, complete: int, running: int = 0, direction: str = "minimize") -> optuna.Study:
    """The study a search leaves: `complete` finished trials over the search space, then `running` that a
    killed sweep left running."""
    study = optuna.create_study(study_name=STUDY, storage=storage(log_dir), direction=direction)
    for i in range(complete):
        params = {"model.latent_dim": 2 ** (i % 6 + 1), "model.optimizer.lr": 1e-3}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=SPACE, value=500.0 - i))
    for _ in range(running):
        study.ask(SPACE)
    return study


def sweeper_start(*overrides: str) -> bool:
    """What the search's sweeper does first with `python train.py OVERRIDES` (harness/search.continue_study,
    given the task's overrides as Hydra gives them): whether any trial is to be launched."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cvae_lightning.errors import one_line_errors
    from cvae_lightning.harness.search import continue_study

    # a multirun composes without the sweeps, which go to the sweeper with the task's other overrides
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    cfg = composed(*(o.input_line for o in parsed if not o.is_sweep_override()), return_hydra_config=True)
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    return one_line_errors(continue_study)(None, cfg, [*cfg.hydra.overrides.task, *sweeps])  # as the sweeper


def job_numbers(sweep_dir: Path) -> list[int]:
    return sorted(int(job.name.split("_", 1)[0]) for job in sweep_dir.iterdir() if job.is_dir())


@pytest.mark.slow
def test_a_killed_search_goes_on_with_the_same_command(tmp_path, data_dir):
    """SIGKILL once two of four trials are complete and the third runs; the same command again runs the two
    missing trials only, numbered on, with params of their own; the first two stay as they were."""
    command = search(tmp_path, "hydra.sweeper.n_trials=4")
    first = run_script("train.py", *command, background=True)
    end = time.time() + 300
    states = []
    while first.poll() is None and time.time() < end and states[:3] != [COMPLETE, COMPLETE, RUNNING]:
        time.sleep(0.05)
        # read once the sweep has made the study and launched a job: reading first would create the database
        if not list(tmp_path.glob("train/multiruns/*/0_*")):
            continue
        try:
            states = [trial.state for trial in trials(tmp_path)]
        except OperationalError:  # locked: the sweep is writing
            pass
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = trials(tmp_path)
    assert [trial.state for trial in before] == [COMPLETE, COMPLETE, RUNNING], first.stderr.read()[-3000:]

    rerun = run_script("train.py", *command)
    assert_ran(rerun)
    after = trials(tmp_path)
    assert [trial.state for trial in after] == [COMPLETE, COMPLETE, FAIL, COMPLETE, COMPLETE]
    assert [(t.params, t.value) for t in after[:2]] == [(t.params, t.value) for t in before[:2]]
    # reseeded: the first run's seed would have drawn trial 0's and 1's start-up params again
    assert not [new.params for new in after[3:] for old in before if new.params == old.params]
    assert "trial 2 of study 'cvae_latent_lr'" in rerun.stdout and "marked failed" in rerun.stdout
    first_sweep, second_sweep = sorted((tmp_path / "train" / "multiruns").iterdir())
    assert set(job_numbers(first_sweep)) <= {0, 1, 2}
    assert job_numbers(second_sweep) == [3, 4]  # two launched (a fresh search: four), numbered on
    best = (second_sweep / "optimization_results.yaml").read_text()  # the sweeper's report of the best
    assert "model.latent_dim" in best and "model.optimizer.lr" in best
    assert sorted(int(row["job"]) for row in sweep_summary(second_sweep)) == [3, 4]


def test_a_finished_search_launches_nothing(tmp_path, caplog):
    """Two complete trials of n_trials=2, and one a killed sweep left running: that one is marked failed, no
    job is launched (the sweeper launches only on True; a launch: the killed search above), and the log says
    so."""
    stored_study(tmp_path, complete=2, running=1)
    with caplog.at_level("INFO"):
        assert sweeper_start(*search(tmp_path, "hydra.sweeper.n_trials=2")) is False
    assert [trial.state for trial in trials(tmp_path)] == [COMPLETE, COMPLETE, FAIL]
    (said,) = [line for line in caplog.messages if "nothing to run" in line]
    assert f"study '{STUDY}' in {storage(tmp_path)} has 2 complete trials, hydra.sweeper.n_trials=2" in said
    assert any("trial 2 of study 'cvae_latent_lr'" in m and "marked failed" in m for m in caplog.messages)


@pytest.mark.slow
def test_optuna_dashboard_serves_the_study(tmp_path):
    """`optuna-dashboard sqlite:///.../optuna.db`, as docs/usage.md says: its JSON API lists the study and
    its trials."""
    stored_study(tmp_path, complete=3)
    port = free_port()
    dashboard = subprocess.Popen(
        [Path(sys.executable).parent / "optuna-dashboard", storage(tmp_path), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        api = f"http://127.0.0.1:{port}/api/studies"
        (summary,) = get_json(api, dashboard, timeout=60, request_timeout=5)["study_summaries"]
        assert summary["study_name"] == STUDY and summary["directions"] == ["minimize"]
        study = get_json(f"{api}/{summary['study_id']}", dashboard, timeout=60, request_timeout=5)
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
    assert [(trial["number"], trial["state"]) for trial in study["trials"]] == [
        (0, "Complete"),
        (1, "Complete"),
        (2, "Complete"),
    ]
    assert [trial["values"] for trial in study["trials"]] == [[500.0], [499.0], [498.0]]


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "hydra.sweeper.storage=sqlite:////proc/nope/optuna.db",
            "hydra.sweeper.storage=sqlite:////proc/nope/optuna.db is not allowed: /proc/nope cannot be "
            "created (No such file or directory); expected a database URL optuna can open",
        ),
        (
            "hydra.sweeper.storage=foo://x",
            "hydra.sweeper.storage=foo://x is not allowed: Can't load plugin: sqlalchemy.dialects:foo; "
            "expected a database URL optuna can open",
        ),
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0 is not allowed: expected an integer >= 1"),
    ],
)
def test_a_sweeper_value_that_cannot_work_is_refused_in_one_line(tmp_path, override, expected):
    with pytest.raises(SystemExit) as refused:
        sweeper_start(*search(tmp_path, override))
    assert str(refused.value.code).startswith(f"error: {expected}")
    assert not list(tmp_path.iterdir())  # no study made


@pytest.mark.slow
def test_the_sweepers_refusal_is_train_pys_last_line(tmp_path):
    """Raised inside Hydra's multirun, not the task: still the one line a user sees, and nothing launched."""
    result = run_script("train.py", *search(tmp_path, "hydra.sweeper.n_trials=0"))
    assert_one_line_error(result, "error: hydra.sweeper.n_trials=0 is not allowed: expected an integer >= 1")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "stored_direction, overrides, expected",
    [
        (
            "maximize",
            (),
            "hydra.sweeper.direction=minimize is not allowed: study '{study}' in {storage} was "
            "created to maximize; expected maximize, or another hydra.sweeper.study_name",
        ),
        (
            "minimize",
            ("model.latent_dim=choice(2,4)",),
            "model.latent_dim=choice(2,4) is not allowed: study "
            "'{study}' in {storage} sampled it from CategoricalDistribution(choices=(2, 4, 8, 16, 32, 64)) "
            "(CategoricalDistribution does not support dynamic value space); expected that, or another "
            "hydra.sweeper.study_name",
        ),
    ],
)
def test_a_stored_study_the_search_does_not_fit_is_refused_in_one_line(
    tmp_path, stored_direction, overrides, expected
):
    """The other direction, or other choices for a stored parameter: optuna refuses both with a traceback, the
    choices only once a new trial is running (which is then left running)."""
    stored_study(tmp_path, complete=1, direction=stored_direction)
    with pytest.raises(SystemExit) as refused:
        sweeper_start(*search(tmp_path, "hydra.sweeper.n_trials=2", *overrides))
    line = str(refused.value.code)
    assert line.startswith("error: ") and "\n" not in line
    assert expected.format(study=STUDY, storage=storage(tmp_path)) in line
    assert [trial.state for trial in trials(tmp_path)] == [COMPLETE]
