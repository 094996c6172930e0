"""What Lightning's loop costs per training step, measured inside the run itself (issue #5).

    python bench/step_overhead.py              # the project as configured and a bare Trainer, 3 runs each
    python bench/step_overhead.py --runs 1

`StepPair` times windows of `--window` consecutive training steps of a run, and after each window runs as
many compute-only steps (forward + backward + the same fused Adam, on a copy of the run's model) on the
very same batches, in the same process: the two are measured seconds apart, on the same data, so the
ratio holds when this shared machine's speed drifts. The windows hold training steps only (no validation
or per-epoch callbacks: `bench/throughput.py` times whole epochs).

- project: `train.py` as a user runs it, `StepPair` added through a Hydra override;
- bare Trainer: a `L.Trainer` with no logger, callbacks, progress bar, checkpoints or validation, fitting
  the configured model on the configured DataModule with train.py's process settings.

Writes `bench/step_overhead.md`.
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

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import cpu_name, load, make_model, train_step  # noqa: E402


class StepPair(L.Callback):
    """Seconds per step of each `window`-step stretch of training, and of compute-only steps on its batches
    right after it; written to `path` as JSON when training ends."""

    def __init__(self, path: str, window: int = 40):
        self.path, self.window = Path(path), window
        self.project, self.compute, self.batches, self.start = [], [], [], None

    def on_train_start(self, trainer, pl_module):
        self.copy = make_model(like=pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx % self.window == 0 and batch_idx + self.window <= trainer.num_training_batches:
            self.batches, self.start = [], time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.start is None:
            return
        self.batches.append(batch)
        if len(self.batches) == self.window:
            self.project.append((time.perf_counter() - self.start) / self.window)
            first_window = not self.compute
            for x, y in self.batches[:5] if first_window else []:  # warm-up, untimed
                train_step(*self.copy, x, y)
            start = time.perf_counter()
            for x, y in self.batches:
                train_step(*self.copy, x, y)
            self.compute.append((time.perf_counter() - start) / self.window)
            self.start = None

    def on_train_end(self, trainer, pl_module):
        self.path.write_text(json.dumps({"project": self.project, "compute": self.compute}))


def bare_trainer(path: str, epochs: int) -> None:
    """Fits the configured model and data with a bare Trainer and StepPair, with train.py's settings."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from cvae_lightning.process import process_settings

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train")
    with process_settings(cfg.flush_denormal, cfg.matmul_precision):
        L.seed_everything(cfg.seed)
        trainer = L.Trainer(
            max_epochs=epochs, limit_val_batches=0, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[StepPair(path)],
        )  # fmt: skip
        trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))


def measure(kind: str, epochs: int, threads: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-") as run_dir:
        out = Path(run_dir) / "pairs.json"
        if kind.startswith("project"):
            pair = "+callbacks.step_pair"
            cmd = [str(ROOT / "train.py"), f"trainer.max_epochs={epochs}", "test=false"]
            cmd += [f"hydra.run.dir={run_dir}", f"{pair}._target_=bench.step_overhead.StepPair"]
            cmd += [f"{pair}.path={out}", *overrides]
        else:
            cmd = [__file__, "--bare-child", str(out), "--epochs", str(epochs)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        result = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
        if result.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{kind} run failed:\n{result.stderr[-3000:]}")
        pairs = json.loads(out.read_text())
    project, compute = pairs["project"][1:], pairs["compute"][1:]  # the first window warms up
    return {
        "kind": kind,
        "project_ms": statistics.median(project) * 1e3,
        "compute_ms": statistics.median(compute) * 1e3,
        "ratio": statistics.median(c / p for c, p in zip(compute, project, strict=True)),
        "windows": len(project),
        "load": load(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind, alternated")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overrides", nargs="*", default=[], help="train.py overrides for the project runs")
    parser.add_argument("--bare-child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "step_overhead.md")
    args = parser.parse_args()
    if args.bare_child:
        return bare_trainer(args.bare_child, args.epochs)
    started, rows = datetime.datetime.now().astimezone(), []
    for _ in range(args.runs):
        for kind in ("bare Trainer", " ".join(["project", *args.overrides])):
            rows.append(measure(kind, args.epochs, args.threads, args.overrides))
            row = rows[-1]
            print(
                f"  {kind:<13} {row['project_ms']:6.2f} ms/step, "
                f"compute only {row['compute_ms']:6.2f} ms/step, ratio {row['ratio']:.3f} "
                f"({row['windows']} windows)  load {row['load']}",
                flush=True,
            )
    lines = [
        "# Lightning's cost per training step (`python bench/step_overhead.py`)",
        "",
        f"- date: {started:%Y-%m-%d %H:%M %Z}; "
        f"command: `{' '.join(['python bench/step_overhead.py', *sys.argv[1:]])}`",
        f"- machine: {cpu_name()}; torch threads {args.threads}; batch 128; {args.epochs} epochs a run",
        "- per run: the median over 40-step windows (the first one skipped) of the run's seconds per step,",
        "  and of compute-only steps on the same batches right after each window; ratio = compute only / run",
        "",
        "| run | ms per training step | compute only, ms per step | ÷ compute only | windows | load 1/5/15 |",
        "|---|---:|---:|---:|---:|---|",
        *(
            f"| {r['kind']} | {r['project_ms']:.2f} | {r['compute_ms']:.2f} | {r['ratio']:.3f} "
            f"| {r['windows']} | {r['load']} |"
            for r in rows
        ),
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
