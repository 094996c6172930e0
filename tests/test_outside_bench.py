"""bench/outside.py (`make bench`), bench/ordinary.py and the machine line every bench result records: what
they run and what they report (no timings asserted)."""

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from bench import machine, outside
from tests.helpers import composed


def test_the_ordinary_script_trains_the_model_train_py_trains_by_default():
    from bench.ordinary import default_model
    from cvae_lightning.model.cvae import CVAE

    cfg = composed().model
    sizes = {"latent_dim": cfg.latent_dim, "n_labels": cfg.get("n_labels", 10)}
    torch.manual_seed(0)
    encoder, decoder = instantiate(cfg.encoder, **sizes), instantiate(cfg.decoder, **sizes)
    configured = CVAE(encoder, decoder, prior=instantiate(cfg.prior, **sizes), **sizes)
    torch.manual_seed(0)
    ordinary = default_model()
    assert repr(ordinary) == repr(configured)  # the same layers, sizes and activations
    assert type(ordinary.prior_net) is type(configured.prior_net)
    weights = configured.state_dict()
    assert ordinary.state_dict().keys() == weights.keys()
    for name, weight in ordinary.state_dict().items():  # built in the same order from the same seed
        assert torch.equal(weight, weights[name]), name


def test_ordinary_pipeline_trains_and_reports_its_test_nelbo(monkeypatch, capsys):
    from bench import ordinary

    argv = ["bench/ordinary.py", "--epochs", "2", "--limit-batches", "3", "--test-every-epoch"]
    monkeypatch.setattr("sys.argv", argv)
    ordinary.main()
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(report["epoch_seconds"]) == 2 and len(report["test_nelbo_per_epoch"]) == 2
    assert 100 < report["test_nelbo"] < 800  # a few steps in: far from the target
    assert report["seconds_to_target"] is None


def test_per_epoch_is_the_difference_of_the_medians_of_whole_processes(monkeypatch, tmp_path):
    fake = {("train.py", 1): [10.0, 11.0, 30.0], ("train.py", 3): [16.0, 17.0, 18.0]}
    fake |= {("bench/ordinary.py", 1): [12.0, 12.0, 12.0], ("bench/ordinary.py", 3): [28.0, 29.0, 27.0]}
    calls = []

    def run(command):
        script = command[1]
        if script == "train.py":
            epochs = int(next(a for a in command if a.startswith("trainer.max_epochs=")).split("=")[1])
        else:
            epochs = int(command[command.index("--epochs") + 1])
        calls.append((script, epochs))
        return fake[(script, epochs)][calls.count((script, epochs)) - 1], ""

    monkeypatch.setattr(outside, "run", run)
    result = outside.per_epoch(3, tmp_path)
    assert result["project"]["epoch_seconds"] == pytest.approx((17.0 - 11.0) / 2)
    assert result["ordinary"]["epoch_seconds"] == pytest.approx((28.0 - 12.0) / 2)
    assert result["project"]["images_per_second"] == pytest.approx(55_000 / 3.0)
    assert len(calls) == 12  # 3 repeats x (1 and 3 epochs) x (project and ordinary)


def test_the_report_names_its_command_date_commit_and_ratios():
    report = {
        "command": "python bench/outside.py",
        "date": "2026-12-02",
        "commit": "abc1234",
        "machine": "2 cores",
        "load_before": "0.1/0.1/0.1",
        "load_after": "0.2/0.2/0.2",
        "per_epoch": {
            "project": {
                "seconds": {"1": [10], "3": [16]},
                "epoch_seconds": 3.0,
                "images_per_second": 55000 / 3,
            },
            "ordinary": {
                "seconds": {"1": [12], "3": [28]},
                "epoch_seconds": 8.0,
                "images_per_second": 60000 / 8,
            },
        },
        "end_to_end": {
            "project": {
                "command": "python train.py ",
                "seconds": 80.0,
                "test_nelbo": 97.9,
                "seconds_to_target": 80.0,
                "accuracy_T1": 0.9814,
            },
            "fast": {
                "command": "python train.py experiment=fast",
                "seconds": 50.0,
                "test_nelbo": 97.6,
                "seconds_to_target": 50.0,
                "accuracy_T1": 0.9607,
            },
            "ordinary": {
                "command": "python bench/ordinary.py --epochs 20 --test-every-epoch",
                "seconds": 200.0,
                "test_nelbo": 99.5,
                "seconds_to_target": None,
                "seconds_in_per_epoch_tests": 9.0,
            },
        },
    }
    text = outside.markdown(report)
    assert (
        "`python bench/outside.py`, 2026-12-02, commit abc1234; 2 cores; load average before 0.1/0.1/0.1"
        in text
    )
    assert "**2.44×**" in text  # (55000 / 3) / (60000 / 8)
    assert "| `python train.py ` | 80.0 | 97.90 | 80.0 | 98.14% | yes | 2.50 |" in text
    assert "| `python train.py experiment=fast` | 50.0 | 97.60 | 50.0 | 96.07% | no | 4.00 |" in text
    assert "| 99.50 | not reached | – | – | 1.00 |" in text  # the ordinary script has no judge


def test_end_to_end_judges_each_train_py_run_at_t1_and_not_the_ordinary_script(monkeypatch, tmp_path):
    nelbo = {"e2e_project": 97.9, "e2e_fast": 98.4}
    accuracy = {"e2e_project": 0.981, "e2e_fast": 0.975}

    def run(command):
        args = dict(a.split("=", 1) for a in command[2:] if "=" in a)
        if command[1] == "train.py":
            run_dir = Path(args["hydra.run.dir"])
            run_dir.mkdir(parents=True)
            results = {
                "metrics": {"test/nelbo": nelbo[run_dir.name]},
                "best_checkpoint": str(run_dir / "b.ckpt"),
            }
            (run_dir / "results.json").write_text(json.dumps(results))
            return 50.0, ""
        if command[1] == "evaluate.py":
            assert "~callbacks.log_likelihood" in command and args["eval.temperatures"] == "[1.0]"
            out = Path(args["out_dir"])
            out.mkdir()
            run_name = Path(args["ckpt_path"]).parent.name
            metrics = {"accuracy": {"T=1": {"overall": accuracy[run_name]}}}
            (out / "metrics.json").write_text(json.dumps(metrics))
            return 30.0, ""
        line = {"test_nelbo": 95.8, "seconds_to_target": 90.0, "seconds_in_per_epoch_tests": 10.0}
        return 160.0, json.dumps(line | {"test_nelbo_per_epoch": [99.0, 95.8]})

    monkeypatch.setattr(outside, "run", run)
    result = outside.end_to_end(tmp_path, {"fast": ["experiment=fast"]})
    assert result["project"]["accuracy_T1"] == 0.981 and result["fast"]["accuracy_T1"] == 0.975
    assert result["project"]["seconds_to_target"] == 50.0 and result["fast"]["seconds_to_target"] is None
    assert "accuracy_T1" not in result["ordinary"]
    skipped = outside.end_to_end(tmp_path / "again", {}, accuracy=False)
    assert skipped["project"]["accuracy_T1"] is None


def test_the_machine_line_names_the_cores_versions_and_threads_the_timed_processes_get(monkeypatch):
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 7)
    monkeypatch.setattr(machine, "cpu", lambda: "Test CPU")
    line = machine.machine({"OMP_NUM_THREADS": "1"})
    assert line.startswith("7 cores, Test CPU, ")
    assert f"torch {machine.version('torch')}" in line and machine.version("torch")[0].isdigit()
    assert line.endswith("; 1 torch thread(s) (OMP_NUM_THREADS)")
    assert machine.machine({}).endswith("; torch's default threads (one a core)")
    # outside.py's processes run without the thread limits of the shell that started it
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert "OMP_NUM_THREADS" not in outside.child_env()
    assert len(machine.load().split("/")) == 3 and machine.commit()
