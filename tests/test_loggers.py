"""Every logger of conf/logger/ gets the scalars, the hyperparameters and the image grids, read back with its
own reader; a resumed run continues the same run in each; a missing package is one line naming the extra."""

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from PIL import Image

from tests.helpers import (
    SHORT_RUN,
    assert_ran,
    composed,
    entry_error,
    free_port,
    get_json,
    read_events,
    read_hparams,
    run_entry,
    run_script,
    sweep_summary,
    wait_for_checkpoint,
    wandb_history,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

# 2 epochs of 6 batches, every grid after each validation, train/* every 2 steps
RUN = [*SHORT_RUN, "trainer.max_epochs=2", "trainer.limit_train_batches=6", "trainer.log_every_n_steps=2"]


def csv_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv of the CSV logger: key -> [(step, value)] in file order."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    series = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and value != "":
                series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def wandb_runs(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def wandb_metrics(run_file: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of an offline W&B run: key -> [(trainer/global_step, value)] in logged order."""
    series = {}
    for row in wandb_history(run_file):
        for key, value in row.items():
            if "/" in key and isinstance(value, int | float) and not key.startswith("trainer/"):
                series.setdefault(key, []).append((row["trainer/global_step"], value))
    return series


def mlflow_run(log_dir: Path, run_dir: Path | None = None):
    """(client, runs) of the MLflow store under log_dir, newest first, only run_dir's if given."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{log_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("train")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    return client, [r for r in runs if run_dir is None or r.data.tags["run_dir"] == str(run_dir)]


def mlflow_metrics(client, run) -> dict[str, list[tuple[int, float]]]:
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in run.data.metrics
    }


def assert_one_grayscale_png(path: Path) -> None:
    image = Image.open(path)
    assert image.mode == "L" and image.width > 28 and image.height > 28, (path, image.mode, image.size)


@pytest.mark.slow
def test_each_logger_holds_scalars_hyperparameters_and_images(tmp_path, data_dir):
    """logger=many: TensorBoard, CSV, W&B (offline) and MLflow (local store) in one run, each read back."""
    run_dir, log_dir = tmp_path / "run", tmp_path / "logs"
    run_entry("train.py", *RUN, "logger=many", f"paths.log_dir={log_dir}", output_dir=run_dir)
    scalars, images = read_events(run_dir)
    assert {"val/nelbo", "train/nelbo", "test/nelbo"} <= set(scalars) and "samples/generated" in images
    assert read_hparams(run_dir)["model.latent_dim"] == 20

    # CSV: the curves, hparams.yaml, and each grid as a PNG per validation epoch (steps 6 and 12)
    series = csv_metrics(run_dir)
    assert [step for step, _ in series["val/nelbo"]] == [e.step for e in scalars["val/nelbo"]]
    assert series["test/nelbo"][0][1] == pytest.approx(scalars["test/nelbo"][0].value)
    assert "model.latent_dim: 20" in (run_dir / "csv" / "hparams.yaml").read_text()
    pngs = sorted((run_dir / "csv" / "images" / "samples" / "generated").glob("*.png"))
    assert [p.name for p in pngs] == ["step_000006.png", "step_000012.png"]
    assert_one_grayscale_png(pngs[-1])

    # W&B: one offline run named as the run folder, its history, config and image files
    (run_file,) = wandb_runs(run_dir)
    history = wandb_history(run_file)
    assert [v for _, v in wandb_metrics(run_file)["val/nelbo"]] == [e.value for e in scalars["val/nelbo"]]
    grids = [row for row in history if row.get("samples/generated/_type") == "images/separated"]
    assert [row["trainer/global_step"] for row in grids] == [6, 12]
    assert_one_grayscale_png(run_file.parent / "files" / grids[-1]["samples/generated/filenames"][0])
    assert "model.latent_dim" in run_file.read_bytes().decode("latin-1")  # in the config record

    # MLflow: one finished run, tagged with the run folder, with params, metrics and image artifacts
    client, (run,) = mlflow_run(log_dir)
    assert (
        run.info.status == "FINISHED"
        and run.info.run_name == "run"
        and run.data.params["model.latent_dim"] == "20"
    )
    assert [v for _, v in mlflow_metrics(client, run)["val/nelbo"]] == [e.value for e in scalars["val/nelbo"]]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    # images/<key><sep>step<sep><step><sep>timestamp...: the separators differ between MLflow versions
    generated = [a for a in artifacts if re.match(r"images/samples\Wgenerated\Wstep\W12\W.*\.png$", a)]
    assert len(generated) == 1
    assert_one_grayscale_png(Path(run.info.artifact_uri.removeprefix("file://"), generated[0]))

    # ... and `mlflow ui` serves them: the metric's history and the image files
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{log_dir}/mlflow.db",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its gunicorn workers in its own group, which the end stops whole
    )  # fmt: skip
    try:
        api = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow"
        history = get_json(f"{api}/metrics/get-history?run_id={run.info.run_id}&metric_key=val/nelbo", server)
        assert [m["value"] for m in history["metrics"]] == [e.value for e in scalars["val/nelbo"]]
        listed = get_json(f"{api}/artifacts/list?run_id={run.info.run_id}&path=images", server)
        assert generated[0] in [f["path"] for f in listed["files"]]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_sweep_summary_reads_its_numbers_whatever_the_logger(tmp_path, data_dir):
    """A sweep with CSV and W&B only: the summary has each job's numbers, and each job has its own W&B run
    (the previous job's run was ended, not reused) and its own metrics.csv."""
    result = run_script(
        "train.py", "-m", *RUN, "model.latent_dim=2,3", "logger=many", "~logger.tensorboard",
        "~logger.mlflow", f"paths.log_dir={tmp_path}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )  # fmt: skip
    assert_ran(result)
    rows = sweep_summary(tmp_path / "sweep")
    assert sorted(row["overrides"] for row in rows) == ["model.latent_dim=2", "model.latent_dim=3"]
    for row in rows:
        job = next((tmp_path / "sweep").glob(f"{row['job']}_*"))
        assert 0 < float(row["val/nelbo"]) < 1000
        assert float(row["test/nelbo"]) == pytest.approx(csv_metrics(job)["test/nelbo"][0][1], rel=1e-6)
        assert not list(job.glob("events.out.tfevents.*"))
    ids = {run_file.name for job in (tmp_path / "sweep").glob("*_*") for run_file in wandb_runs(job)}
    assert len(ids) == 2


# 3 epochs of 60 batches, logged every step (the checkpoint's own too), last.ckpt every 20, one MLflow store
RESUMED = [
    *SHORT_RUN, "trainer.max_epochs=3", "trainer.limit_train_batches=60", "trainer.log_every_n_steps=1",
    "logger=many", "callbacks.last_checkpoint.train_time_interval=null",
    "callbacks.last_checkpoint.every_n_train_steps=20",
]  # fmt: skip
STEPS = 3 * 60


def logged_points(run_dir: Path, log_dir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """logger -> key -> [(step, value)] as each logger's own files hold them (W&B: all offline folders)."""
    events, _ = read_events(run_dir)
    client, (run,) = mlflow_run(log_dir, run_dir)
    wandb = {}
    for run_file in wandb_runs(run_dir):
        for key, points in wandb_metrics(run_file).items():
            wandb.setdefault(key, []).extend(points)
    return {
        "tensorboard": {key: [(e.step, e.value) for e in points] for key, points in events.items()},
        "csv": csv_metrics(run_dir),
        "wandb": wandb,
        "mlflow": {k: v for k, v in mlflow_metrics(client, run).items() if not k.startswith("hparams/")},
    }


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, data_dir):
    log_dir = tmp_path_factory.mktemp("loggers")
    assert_ran(
        run_script("train.py", *RESUMED, f"paths.log_dir={log_dir}", f"hydra.run.dir={log_dir / 'whole'}")
    )
    return log_dir, logged_points(log_dir / "whole", log_dir)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["terminated", "killed"])
def test_a_resumed_run_continues_the_same_run_in_each_logger(whole_run, sig):
    """Stopped after a checkpoint, then resumed with ckpt_path=last. SIGTERM (what a cluster sends) while
    training: every logger holds exactly the uninterrupted run's points, W&B in one run (two offline folders,
    one id), MLflow in one run. SIGKILL: TensorBoard and CSV still do (the points from the checkpoint on are
    dropped, none twice); MLflow holds every point, those between the checkpoint and the kill twice with the
    same value (the resume is bit-exact); W&B holds every point from the checkpoint on, and loses what the
    killed process had not written; a kill in the instant between a checkpoint and its step's scalars loses
    those (docs/usage.md)."""
    log_dir, expected = whole_run
    run_dir = log_dir / f"resumed_{sig.name}"
    overrides = [*RESUMED, f"paths.log_dir={log_dir}", f"hydra.run.dir={run_dir}"]
    process = run_script("train.py", *overrides, background=True)
    wait_for_checkpoint(run_dir, "checkpoints/last.ckpt", 20, process, timeout=240)
    if sig == signal.SIGKILL:  # some steps on, most likely past a checkpoint and its step's scalars
        time.sleep(0.3)
    process.send_signal(sig)
    process.wait(timeout=60)
    checkpoint_step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert checkpoint_step < STEPS, "stopped after training had ended: nothing left to resume"
    assert_ran(run_script("train.py", *overrides, "ckpt_path=last"))

    logged = logged_points(run_dir, log_dir)
    assert len({run_file.name for run_file in wandb_runs(run_dir)}) == 1 < len(wandb_runs(run_dir))
    assert mlflow_run(log_dir, run_dir)[1][0].info.status == "FINISHED"
    if sig == signal.SIGTERM:
        for logger in ("tensorboard", "csv", "wandb", "mlflow"):
            assert logged[logger] == expected[logger], logger
        return
    # a checkpoint is written before its step's scalars: a kill between the two loses that step's points
    unlogged = checkpoint_step - 1
    for logger in ("tensorboard", "csv"):
        assert logged[logger].keys() == expected[logger].keys(), logger
        for key, points in expected[logger].items():
            assert logged[logger][key] in (points, [p for p in points if p[0] != unlogged]), (logger, key)
    for key, points in expected["mlflow"].items():
        assert set(points) - {p for p in points if p[0] == unlogged} <= set(logged["mlflow"][key]), key
        assert set(logged["mlflow"][key]) <= set(points), key
        again = {point for point in points if logged["mlflow"][key].count(point) > points.count(point)}
        assert all(step >= checkpoint_step for step, _ in again), (key, checkpoint_step, again)
    for key, points in expected["wandb"].items():
        assert {p for p in points if p[0] >= checkpoint_step} <= set(logged["wandb"][key]) <= set(points), key


def test_a_missing_logger_package_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    """As where wandb is not installed: `logger=wandb` is refused before anything runs."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` finds where it is not installed
    refused = entry_error("train.py", "logger=wandb", output_dir=tmp_path / "refused")
    expected = (
        'logger.wandb is not allowed here: the wandb package is not installed; pip install -e ".[wandb]"'
    )
    assert expected in refused
    assert not (tmp_path / "refused" / "checkpoints").exists()


def test_many_leaves_out_a_logger_whose_package_is_missing(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    from cvae_lightning.harness import loggers

    find_spec = loggers.importlib.util.find_spec
    monkeypatch.setattr(
        loggers.importlib.util, "find_spec", lambda name: None if name == "wandb" else find_spec(name)
    )
    cfg = composed("logger=many", f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}")
    with mock.patch.object(loggers.log, "info") as info:
        built = loggers.build_loggers(cfg.logger, str(tmp_path), None)
    assert [type(logger) for logger in built] == [TensorBoardLogger, loggers.CSVLogger, MLFlowLogger]
    info.assert_called_once_with("logger.wandb left out: the wandb package is not installed")


def test_mlflow_keeps_a_params_first_value_where_a_resumed_run_changed_it(tmp_path):
    """A run resumed with, say, more epochs: MLflow would refuse the new trainer.max_epochs (and lose the
    final metrics with it); the param keeps its first value, with a warning, and the rest is logged. A logger
    after it in the list still gets the new value."""
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger

    from cvae_lightning.harness import loggers

    logger = MLFlowLogger(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    logger.log_hyperparams({"trainer.max_epochs": 20})
    after = CSVLogger(tmp_path / "csv")
    with mock.patch.object(loggers.log, "warning") as warning:
        hparams = {"trainer.max_epochs": 30, "seed": 42}
        loggers.log_hyperparameters([logger, after], hparams, {"hparams/test/nelbo": 97.0}, 9)
    run = logger.experiment.get_run(logger.run_id)
    assert run.data.params == {"trainer.max_epochs": "20", "seed": "42"}
    assert run.data.metrics == {"hparams/test/nelbo": 97.0}
    warning.assert_called_once_with("MLflow keeps the first value of a param: trainer.max_epochs not changed")
    assert after.experiment.hparams == hparams


def test_logger_choices_compose():
    for name, targets in {
        "csv": ["cvae_lightning.harness.loggers.CSVLogger"],
        "wandb": ["lightning.pytorch.loggers.WandbLogger"],
        "mlflow": ["lightning.pytorch.loggers.MLFlowLogger"],
        "many": [
            "lightning.pytorch.loggers.TensorBoardLogger",
            "cvae_lightning.harness.loggers.CSVLogger",
            "lightning.pytorch.loggers.WandbLogger",
            "lightning.pytorch.loggers.MLFlowLogger",
        ],
    }.items():
        cfg = composed(f"logger={name}")
        assert [entry._target_ for entry in cfg.logger.values()] == targets
    assert composed("logger=wandb").logger.wandb.offline is True
