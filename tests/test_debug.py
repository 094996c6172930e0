"""The debug presets (conf/debug/), the config tree printed at the start of a run, early stopping as an
opt-in callback and gradient clipping: each composed, then run as train.py runs it (in this process) and
read back."""

import contextlib
import io
import json
import math
import re
from pathlib import Path

import lightning as L
import pytest
import rich
import torch
from omegaconf import OmegaConf

from cvae_lightning.errors import ConfigError
from cvae_lightning.harness.config import build, validate
from tests.helpers import composed, entry_error, read_events, run_entry, tiny_trainer

ANSI = re.compile(r"\x1b\[")
GROUPS_FIRST = ["data", "model", "callbacks", "logger", "trainer", "paths", "extras"]


class NanInBackward(L.Callback):
    """Adds 0 * sqrt(z) for a zero leaf z to the decoder's output: nothing going forward, but SqrtBackward0
    returns 0/0 for z's gradient. The model's own gradients stay finite, so only autograd's anomaly
    detection can stop the run."""

    def on_fit_start(self, trainer, pl_module):
        leaf = torch.zeros((), requires_grad=True)
        pl_module.model.decoder.register_forward_hook(lambda module, args, out: out + 0 * leaf.sqrt())


class GradientNorms(L.Callback):
    """Writes to `path` each step's gradient norm as backward made it (`on_before_optimizer_step`, which
    Lightning calls before clipping) and as the optimizer used it (after the step: Adam leaves it as is)."""

    def __init__(self, path: str):
        self.path, self.made, self.used = Path(path), [], []

    @staticmethod
    def norm(module) -> float:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()

    def on_train_start(self, trainer, pl_module):
        trainer.optimizers[0].register_step_post_hook(lambda *_: self.used.append(self.norm(pl_module)))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.made.append(self.norm(pl_module))

    def on_train_end(self, trainer, pl_module):
        self.path.write_text(json.dumps({"made": self.made, "used": self.used}))


def the_run(log_dir: Path) -> Path:
    """The one run folder a run with `paths.log_dir=log_dir` made (the debug presets' task is `debug`)."""
    runs = list(log_dir.glob("*/runs/*"))
    assert [run.parent.parent.name for run in runs] == ["debug"], runs
    return runs[0]


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


# -- the presets, composed -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "preset, expected",
    [
        (
            "default",
            {"max_epochs": 1, "limit_train_batches": 5, "limit_val_batches": 2, "log_every_n_steps": 1},
        ),
        ("overfit", {"overfit_batches": 1, "max_epochs": 150, "limit_train_batches": None}),
        ("profiler", {"max_epochs": 1, "limit_train_batches": 5}),
        ("anomaly", {"detect_anomaly": True, "limit_train_batches": 5}),
        ("limit", {"max_epochs": 3, "limit_train_batches": 0.01, "limit_test_batches": 0.2}),
    ],
)
def test_each_preset_is_one_cpu_process_in_logs_debug_and_lightning_accepts_it(preset, expected, tmp_path):
    # over an experiment and a DDP trainer: the preset comes last in the defaults list, so it wins
    cfg = composed(f"debug={preset}", "experiment=fast", "trainer=ddp", f"paths.output_dir={tmp_path}")
    trainer = OmegaConf.to_container(cfg.trainer)
    assert cfg.task_name == "debug"
    assert (trainer["accelerator"], trainer["devices"], trainer["strategy"]) == ("cpu", 1, "auto")
    assert {key: trainer.get(key) for key in expected} == expected
    assert cfg.data.batch_size == 256  # the experiment's other values stay
    validate(cfg)
    built = build(cfg.trainer, "trainer")
    assert (built.world_size, built.num_devices) == (1, 1)


def test_overfit_batches_serves_the_same_training_batch_every_epoch(data_dir):
    """Lightning cannot turn off the shuffle of the project's in-memory loader: the DataModule does."""
    from cvae_lightning import MNISTDataModule

    datamodule = MNISTDataModule(data_dir=str(data_dir), batch_size=64)
    datamodule.trainer = tiny_trainer(overfit_batches=1)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    first = [next(iter(loader))[0] for _ in range(2)]
    loader.sampler.set_epoch(1)  # as Lightning does each epoch
    assert torch.equal(first[0], first[1]) and torch.equal(first[0], next(iter(loader))[0])
    datamodule.trainer = tiny_trainer()
    shuffled = datamodule.train_dataloader()
    shuffled.sampler.set_epoch(1)
    assert not torch.equal(first[0], next(iter(shuffled))[0])  # the control: an ordinary run reshuffles


def test_a_preset_name_that_does_not_exist_is_one_line(tmp_path):
    assert entry_error("train.py", "debug=fast", output_dir=tmp_path).startswith(
        "error: debug=fast is not allowed: expected one of anomaly, default, limit, overfit, profiler"
    )


# -- the presets, run --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_debug_default_runs_everything_once_into_logs_debug_and_prints_the_config_tree(
    tmp_path, data_dir, capsys
):
    # a terminal with colours, so the file's having none is the file's own doing
    rich.reconfigure(force_terminal=True)
    try:
        run_entry("train.py", "debug=default", f"paths.log_dir={tmp_path}")
    finally:
        rich.reconfigure()
    stdout = capsys.readouterr().out
    run_dir = the_run(tmp_path)
    assert not (tmp_path / "train").exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    done = results(run_dir)
    assert done["steps"] == 5 and done["epochs"] == 1
    assert {"val/nelbo", "test/nelbo"} <= set(done["metrics"])  # validated and tested
    scalars, images = read_events(run_dir)
    assert [e.step for e in scalars["train/nelbo"]] == [0, 1, 2, 3, 4]  # every step
    assert {"samples/generated", "samples/reconstructions", "samples/style_transfer"} <= set(images)

    # the tree: in the terminal with colours, in the run folder without, groups first in the given order
    assert "CONFIG" in stdout and ANSI.search(stdout)
    tree = (run_dir / "config_tree.log").read_text()
    assert not ANSI.search(tree)
    labels = re.findall(r"^[├└]── (\S+?):?(?: |$)", tree, flags=re.MULTILINE)
    assert labels[: len(GROUPS_FIRST)] == GROUPS_FIRST and "task_name" in labels, labels
    assert f"output_dir: {run_dir}" in tree  # interpolations resolved
    assert "model_checkpoint:" in tree and "limit_train_batches: 5" in tree


@pytest.mark.slow
def test_debug_overfit_memorizes_one_batch_and_validates_every_25_steps(tmp_path, data_dir):
    run_entry("train.py", "debug=overfit", output_dir=tmp_path)
    scalars, _ = read_events(tmp_path)
    train = [e.value for e in scalars["train/nelbo"]]
    val = scalars["val/nelbo"]
    assert len(train) == 150  # logged every step
    assert train[-1] < 0.7 * train[0], train[::25]
    # memorized, not learnt: a run on a fresh batch every step ends with train/nelbo close to val/nelbo
    assert train[-1] < 0.85 * val[-1].value, (train[-1], val[-1].value)
    assert [e.step for e in val] == [24, 49, 74, 99, 124, 149]  # the callbacks monitoring it had it
    # the best by val/nelbo (memorizing, the held-out batch may get worse again: the weights average follows)
    best = tmp_path / "checkpoints" / f"epoch_{min(val, key=lambda e: e.value).step:03d}.ckpt"
    assert results(tmp_path)["best_checkpoint"] == str(best) and best.is_file()


@pytest.mark.slow
def test_debug_profiler_writes_its_report_into_the_run_folder(tmp_path, data_dir):
    run_entry("train.py", "debug=profiler", output_dir=tmp_path)
    report = (tmp_path / "fit-profile.txt").read_text()
    assert report.startswith("FIT Profiler Report")
    calls = {
        row[0]: int(row[2])
        for row in (re.split(r"\s*\|\s*", line.strip("| \t")) for line in report.splitlines())
        if len(row) == 5 and row[2].isdigit()
    }
    assert calls["run_training_epoch"] == 1 and calls["run_training_batch"] == 5, calls
    assert calls["[Strategy]SingleDeviceStrategy.training_step"] == 5
    assert (tmp_path / "test-profile.txt").is_file()


@pytest.mark.slow
def test_debug_anomaly_stops_at_the_backward_op_that_made_a_nan(tmp_path, data_dir):
    # autograd's own words, which only anomaly detection says: the op, then where its forward was built
    with (
        pytest.raises(RuntimeError, match="Function 'SqrtBackward0' returned nan values"),
        pytest.warns(UserWarning, match="Traceback of forward call that caused the error"),
    ):
        run_entry(
            "train.py",
            "debug=anomaly",
            f"+callbacks.nan_in_backward._target_={__name__}.NanInBackward",
            output_dir=tmp_path,
        )


@pytest.fixture(scope="module")
def limit_run(tmp_path_factory, data_dir) -> tuple[Path, str]:
    """A `debug=limit` run with the config tree turned off: (its run folder, its stdout)."""
    log_dir = tmp_path_factory.mktemp("limit")
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        run_entry("train.py", "debug=limit", "extras.print_config=false", f"paths.log_dir={log_dir}")
    return the_run(log_dir), stdout.getvalue()


@pytest.mark.slow
def test_debug_limit_trains_the_limited_batches_for_each_epoch(limit_run):
    run_dir, _ = limit_run
    cfg = composed("debug=limit")
    batches = math.ceil((60000 - cfg.data.val_size) / cfg.data.batch_size)
    per_epoch = int(batches * cfg.trainer.limit_train_batches)
    assert per_epoch == 4
    assert results(run_dir)["steps"] == cfg.trainer.max_epochs * per_epoch
    assert results(run_dir)["epochs"] == cfg.trainer.max_epochs


@pytest.mark.slow
def test_print_config_false_prints_and_writes_no_tree(limit_run):
    run_dir, stdout = limit_run
    assert "CONFIG" not in stdout and "model_checkpoint" not in stdout
    assert not (run_dir / "config_tree.log").exists()
    assert (run_dir / "results.json").is_file()  # the run itself did happen


# -- the config tree, in-process ---------------------------------------------------------------------------
def test_the_tree_shows_an_interpolation_that_cannot_resolve_as_written():
    from cvae_lightning.harness.runs import config_tree, plain_text

    # outside a Hydra run nothing sets ${hydra:runtime.output_dir}
    tree = plain_text(config_tree(composed("paths.log_dir=/somewhere", "+extras.note=${oc.env:NO_SUCH_VAR}")))
    assert "output_dir: ${hydra:runtime.output_dir}" in tree and "note: ${oc.env:NO_SUCH_VAR}" in tree
    assert "log_dir: /somewhere" in tree and "shuffle_seed: 42" in tree  # the rest resolved


@pytest.mark.parametrize("variable", ["LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"])
def test_the_tree_is_printed_by_rank_zero_only(variable, monkeypatch, tmp_path, capsys):
    from cvae_lightning.harness.runs import ConfigTree

    cfg = composed(f"paths.output_dir={tmp_path}", return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(tmp_path)
    monkeypatch.setenv(variable, "1")
    ConfigTree().on_job_start(config=cfg)
    assert capsys.readouterr().out == "" and not (tmp_path / "config_tree.log").exists()
    monkeypatch.setenv(variable, "0")
    ConfigTree().on_job_start(config=cfg)
    assert "CONFIG" in capsys.readouterr().out and (tmp_path / "config_tree.log").is_file()


# -- early stopping, gradient clipping ----------------------------------------------------------------------
def test_early_stopping_is_added_to_the_default_callbacks_by_a_list():
    cfg = composed("callbacks=[default,early_stopping]")
    assert set(composed().callbacks) | {"early_stopping"} == set(cfg.callbacks)
    assert (cfg.callbacks.early_stopping.monitor, cfg.callbacks.early_stopping.mode) == ("val/nelbo", "min")


@pytest.mark.parametrize("no_validation", ["data.val_size=0", "trainer.limit_val_batches=0"])
def test_early_stopping_without_validation_is_refused_in_one_line(no_validation):
    with pytest.raises(ConfigError) as error:
        validate(composed("callbacks=[default,early_stopping]", no_validation))
    assert str(error.value).startswith("callbacks.early_stopping is not allowed without validation")
    validate(composed(no_validation))  # the default callbacks only warn: nothing of theirs needs it


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "callbacks=[default,nope]",
            "error: callbacks=[default,nope] is not allowed: nope is not one of benchmark, checkpointing",
        ),
        ("callbacks=nope", "error: callbacks=nope is not allowed: expected one of benchmark, checkpointing"),
        (
            "extras.print_config=maybe",
            "error: extras.print_config='maybe' is not allowed: expected true or false",
        ),
    ],
)
def test_a_bad_choice_is_one_line_for_a_list_of_configs_and_for_the_tree(override, expected, tmp_path):
    assert entry_error("train.py", override, output_dir=tmp_path).startswith(expected)


@pytest.mark.slow
def test_early_stopping_stops_before_max_epochs(limit_run, tmp_path):
    # no val/nelbo improves by 1e9 nats: the second validation ends the run; without it, all 3 epochs run
    run_entry(
        "train.py",
        "debug=limit",
        "callbacks=[default,early_stopping]",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=1e9",
        output_dir=tmp_path,
    )
    assert results(tmp_path)["epochs"] == 2
    assert results(limit_run[0])["epochs"] == 3


@pytest.mark.slow
def test_gradient_clip_val_clips_the_gradients_the_optimizer_uses(tmp_path, data_dir):
    norms = tmp_path / "norms.json"
    run_entry(
        "train.py",
        "debug=default",
        "trainer.gradient_clip_val=0.5",
        f"+callbacks.gradient_norms._target_={__name__}.GradientNorms",
        f"+callbacks.gradient_norms.path={norms}",
        output_dir=tmp_path,
    )
    made, used = json.loads(norms.read_text()).values()
    assert len(made) == len(used) == 5
    assert min(made) > 0.5  # the loss's gradients are larger: else clipping would show nothing
    assert max(used) <= 0.5 * (1 + 1e-4), used
