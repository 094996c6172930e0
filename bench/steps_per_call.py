"""What Lightning's fixed cost per training step takes from the project, and what running K optimizer steps
per Lightning step (Keras's `steps_per_execution`) would win back (issue #5).

    python bench/steps_per_call.py       # K = 1, 4, 8 at batch 128, eager and compiled; 3 paired epochs each
    python bench/steps_per_call.py --steps 1 8 --no-compile

The evidence for a decision, not a project feature. K = 1 is `train.py` as it is. For K > 1, `train.py`
runs with `SeveralSteps`, the configured CVAE with manual optimization looping over K consecutive batches
of `SeveralBatches`, the configured DataModule handing them over together. The weights trained are the same
as for K = 1 (tests/test_bench.py), but what Lightning counts as a step changes: the progress bar,
`log_every_n_steps`, `limit_*_batches`, `val_check_interval` and the logged metrics' x-axis count groups of
K batches; `max_steps` and `every_n_train_steps` are checked only between groups; Lightning refuses
`gradient_clip_val` and `accumulate_grad_batches` under manual optimization. Ratios are paired as in
`bench/throughput.py` (a compute-only and a baseline epoch around each of the run's epochs, in its process).
Writes `bench/steps_per_call.md`.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import add_row, cpu_name, load, paired, project, speed_table  # noqa: E402
from cvae_lightning.data import MNISTDataModule  # noqa: E402
from cvae_lightning.models import CVAE  # noqa: E402


class SeveralSteps(CVAE):
    """The CVAE, taking `steps` optimizer steps per Lightning step: one per batch of the group it gets."""

    def __init__(self, steps: int = 1, **hparams):  # steps: kept in hparams, so copies group alike
        super().__init__(**hparams)
        self.automatic_optimization = False

    def training_step(self, batches, batch_idx):
        optimizer = self.optimizers()
        for batch in batches:
            loss = super().training_step(batch, batch_idx)
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()


class Groups:
    """The training loader's batches, `steps` at a time (the last group may be shorter)."""

    def __init__(self, loader, steps: int):
        # the sampler: Lightning calls its set_epoch for each epoch's shuffle
        self.loader, self.steps, self.sampler = loader, steps, loader.sampler

    def __len__(self) -> int:
        return -(-len(self.loader) // self.steps)

    def __iter__(self):
        batches = iter(self.loader)
        while group := list(itertools.islice(batches, self.steps)):
            yield group


class SeveralBatches(MNISTDataModule):
    """The DataModule, handing `steps` training batches to each training step."""

    def __init__(self, steps: int = 1, **hparams):
        super().__init__(**hparams)

    def train_dataloader(self) -> Groups:
        return Groups(super().train_dataloader(), self.hparams.steps)


def overrides(steps: int) -> list[str]:
    """train.py overrides that run K = `steps` optimizer steps per Lightning step."""
    if steps == 1:
        return []
    return [
        "model._target_=bench.steps_per_call.SeveralSteps",
        f"+model.steps={steps}",
        "+model._convert_=all",  # plain lists in the saved hyperparameters, as CVAE itself makes them
        "data._target_=bench.steps_per_call.SeveralBatches",
        f"+data.steps={steps}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4, 8], help="optimizer steps per call")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per K; the median is reported")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-compile", action="store_true", help="skip the model.compile=true rows")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "steps_per_call.md")
    args = parser.parse_args()
    started, load_before = datetime.datetime.now().astimezone(), load()
    rows: list[dict] = []
    for compile in [False] if args.no_compile else [False, True]:
        mode = f"model.compile={str(compile).lower()}"
        for steps in args.steps:
            run = project(
                args.batch_size, args.repeats + 1, args.threads, mode, *overrides(steps), interleave=True
            )
            for key, part in (("epochs", ""), ("steps", ", training steps only")):
                ratios = {side: paired(run, key, side) for side in ("baseline", "compute")}
                add_row(rows, f"K={steps}, {mode}{part}", args.batch_size, run[key][1:], ratios)
    header = [
        "# K optimizer steps per Lightning step (`python bench/steps_per_call.py`)",
        "",
        f"- date: {started:%Y-%m-%d %H:%M %Z}; command: `{' '.join(['python', *sys.argv])}`",
        f"- machine: {cpu_name()}; torch threads {args.threads}; batch {args.batch_size}; "
        f"load before {load_before}",
        f"- {args.repeats} timed epochs per row after a warm-up epoch, medians; ratios paired "
        "with the compute-only (eager or compiled, as the row) and baseline epochs run around each epoch "
        "in the same process",
        "- epoch: training steps, validation and per-epoch callbacks; training steps: up to validation",
        "- K = 1 is `train.py` as it is; ratios in bold by wall time, then by CPU time",
        "",
    ]
    args.out.write_text("\n".join(header + speed_table(rows)) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
