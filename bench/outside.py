"""Training speed as a user measures it: whole processes timed from outside, side by side (bench/README.md).

    python bench/outside.py                 # `make bench`: per epoch (3 repeats), end to end, time to quality
    python bench/outside.py --repeats 1 --skip-end-to-end      # a quicker per-epoch check
    python bench/outside.py --variant fast=experiment=fast     # another train.py configuration beside them

Per epoch: train.py and bench/ordinary.py for 1 and 3 epochs, alternated; half the medians' difference is one
epoch. End to end: both as they are, each train.py run then judged at T=1 by evaluate.py. Writes
bench/outside.md and .json. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/outside.py` puts bench/ on the path, not the project root
    sys.path.insert(0, str(ROOT))

from bench import machine  # noqa: E402

TARGET = 98.0
ACCURACY_TARGET = 0.98
CLASSIFIER = ROOT / "checkpoints" / "classifier.ckpt"
IMAGES = {"project": 55_000, "ordinary": 60_000}


def child_env() -> dict[str, str]:
    """The environment each timed process gets: this one without thread limits (torch's default threads)."""
    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def run(command: list[str]) -> tuple[float, str]:
    """Wall seconds of one process, from before its start to after its exit, and its stdout."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"error: `{' '.join(command)}` failed ({tail})")
    return seconds, done.stdout


def project(epochs: int | None, run_dir: Path, *overrides: str) -> list[str]:
    limit = [f"trainer.max_epochs={epochs}"] if epochs else []
    return [sys.executable, "train.py", *overrides, *limit, f"hydra.run.dir={run_dir}"]


def ordinary(epochs: int, *flags: str) -> list[str]:
    return [sys.executable, "bench/ordinary.py", "--epochs", str(epochs), *flags]


def per_epoch(repeats: int, tmp: Path) -> dict:
    times: dict[str, dict[int, list[float]]] = {"project": {1: [], 3: []}, "ordinary": {1: [], 3: []}}
    for r in range(repeats):
        for epochs in (1, 3):
            times["project"][epochs].append(run(project(epochs, tmp / f"p{epochs}_{r}"))[0])
            times["ordinary"][epochs].append(run(ordinary(epochs))[0])
            print(
                f"repeat {r + 1}, {epochs} epoch(s): "
                + ", ".join(f"{k} {v[epochs][-1]:.1f} s" for k, v in times.items())
            )
    result = {}
    for name, by_epochs in times.items():
        epoch = (statistics.median(by_epochs[3]) - statistics.median(by_epochs[1])) / 2
        result[name] = {
            "seconds": by_epochs,
            "epoch_seconds": epoch,
            "images_per_second": IMAGES[name] / epoch,
        }
    return result


def accuracy_t1(run_dir: Path, best: str) -> float:
    """How often the classifier reads the requested digit in 10,000 T=1 samples of a run's best checkpoint."""
    # the samples only: ~callbacks.log_likelihood drops the test NLL
    command = [sys.executable, "evaluate.py", f"ckpt_path={best}", "~callbacks.log_likelihood"]
    run([*command, "eval.temperatures=[1.0]", f"out_dir={run_dir / 'eval'}"])
    return json.loads((run_dir / "eval" / "metrics.json").read_text())["accuracy"]["T=1"]["overall"]


def end_to_end(tmp: Path, variants: dict[str, list[str]], accuracy: bool = True) -> dict:
    result = {}
    for name, overrides in {"project": [], **variants}.items():
        run_dir = tmp / f"e2e_{name}"
        seconds, _ = run(project(None, run_dir, *overrides))
        results = json.loads((run_dir / "results.json").read_text())
        metrics = results["metrics"]
        nelbo = metrics.get("test/nelbo")
        acc = accuracy_t1(run_dir, results["best_checkpoint"]) if accuracy else None
        result[name] = {
            "command": "python train.py " + " ".join(overrides),
            "seconds": seconds,
            "test_nelbo": nelbo,
            "seconds_to_target": seconds if nelbo is not None and nelbo <= TARGET else None,
            "accuracy_T1_fixed_noise": metrics.get("samples/accuracy_T1"),
            "accuracy_T1": acc,
        }
        print(f"end to end, {name}: {seconds:.1f} s, test -ELBO {nelbo}, T=1 accuracy {acc}")
    seconds, out = run(ordinary(20, "--test-every-epoch"))
    report = json.loads(out.strip().splitlines()[-1])
    result["ordinary"] = {
        "command": "python bench/ordinary.py --epochs 20 --test-every-epoch",
        "seconds": seconds,
        "test_nelbo": report["test_nelbo"],
        "seconds_to_target": report["seconds_to_target"],
        "seconds_in_per_epoch_tests": report["seconds_in_per_epoch_tests"],
        "test_nelbo_per_epoch": report["test_nelbo_per_epoch"],
    }
    print(f"end to end, ordinary: {seconds:.1f} s, test -ELBO {report['test_nelbo']}")
    return result


def markdown(report: dict) -> str:
    lines = [
        "# Training speed measured from outside",
        "",
        f"`{report['command']}`, {report['date']}, commit {report['commit']}; {report['machine']}; "
        f"load average before {report['load_before']}, after {report['load_after']}. Wall seconds of whole "
        "processes.",
        "",
    ]
    if "per_epoch" in report:
        p, o = report["per_epoch"]["project"], report["per_epoch"]["ordinary"]
        lines += [
            "## One epoch (3-epoch minus 1-epoch process, medians, / 2)",
            "",
            "| | 1 epoch (s) | 3 epochs (s) | one epoch (s) | training images/s |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, row in (("`python train.py`", p), ("ordinary pipeline", o)):
            s = row["seconds"]
            lines.append(
                f"| {name} | {statistics.median(s['1']):.1f} | {statistics.median(s['3']):.1f} | "
                f"{row['epoch_seconds']:.2f} | {row['images_per_second']:,.0f} |"
            )
        lines += [
            "",
            f"Per training image the project is **{p['images_per_second'] / o['images_per_second']:.2f}×** "
            "the ordinary pipeline.",
            "",
        ]
    if "end_to_end" in report:
        e = report["end_to_end"]
        lines += [
            "## End to end and time to quality (test −ELBO ≤ 98; T=1 accuracy ≥ 98%)",
            "",
            "| command | wall (s) | test −ELBO | until ≤ 98 (s) | T=1 accuracy | both bars | × ordinary |",
            "|---|---:|---:|---:|---:|:---:|---:|",
        ]
        for row in e.values():
            reached = f"{row['seconds_to_target']:.1f}" if row["seconds_to_target"] else "not reached"
            acc = row.get("accuracy_T1")
            shown = "–" if acc is None else f"{acc:.2%}"
            met = bool(row["seconds_to_target"]) and acc is not None and acc >= ACCURACY_TARGET
            both = "–" if acc is None else "yes" if met else "no"
            ratio = e["ordinary"]["seconds"] / row["seconds"]
            lines.append(
                f"| `{row['command']}` | {row['seconds']:.1f} | {row['test_nelbo']:.2f} | {reached} | "
                f"{shown} | {both} | {ratio:.2f} |"
            )
        lines += [
            "",
            f"The ordinary run's wall time includes {e['ordinary']['seconds_in_per_epoch_tests']} s of "
            "per-epoch tests; T=1 accuracy is measured after each train.py run, outside its time.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-per-epoch", action="store_true")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true", help="no T=1 accuracy of the end-to-end runs")
    parser.add_argument(
        "--variant", action="append", default=[], help="NAME=OVERRIDE[ OVERRIDE...] for train.py"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "outside"), help="path without suffix")
    args = parser.parse_args()
    variants = {v.split("=", 1)[0]: v.split("=", 1)[1].split() for v in args.variant}

    report = {
        "command": "python bench/outside.py " + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "commit": machine.commit(),
        "machine": machine.machine(child_env()),
        "load_before": machine.load(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_per_epoch:
            report["per_epoch"] = per_epoch(args.repeats, Path(tmp))
        if not args.skip_end_to_end:
            accuracy = not args.skip_accuracy and CLASSIFIER.is_file()
            if not args.skip_accuracy and not accuracy:
                print(f"note: no {CLASSIFIER.relative_to(ROOT)} (make classifier): T=1 accuracy not measured")
            report["end_to_end"] = end_to_end(Path(tmp), variants, accuracy)
    report["load_after"] = machine.load()
    report = json.loads(json.dumps(report))  # the same str keys in the .md as in the .json
    Path(args.out + ".json").write_text(json.dumps(report, indent=2) + "\n")
    Path(args.out + ".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
