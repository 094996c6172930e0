"""Training-step time by torch thread count (issue #17's threads lever), in-process, alternated.

    python bench/threads.py                     # batch 256, 1 and 2 threads, 3 rounds
    python bench/threads.py --batch-size 128 --threads 1 2 4 --rounds 5

Each measurement is a fresh process (`OMP_NUM_THREADS` must be set before torch starts its pool): the
default CVAE's forward, ELBO, backward and fused Adam on one batch already in memory, with the project's
process settings, 30 warm-up steps then the mean of 200. Prints one line per process; no file written.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def step_ms(batch_size: int, steps: int = 200) -> float:
    import torch

    from cvae_lightning.models import CVAE

    torch.set_flush_denormal(True)
    torch.set_float32_matmul_precision("medium")
    torch.manual_seed(0)
    model = CVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, fused=True)
    x, y = torch.rand(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))

    def step():
        loss = model.elbo_terms(x, y)["nelbo"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(30):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the measured child
    args = parser.parse_args()
    if args.one:
        print(f"{step_ms(args.batch_size):.2f}")
        return
    print(f"batch {args.batch_size}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    for r in range(args.rounds):
        for threads in args.threads:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
            command = [sys.executable, __file__, "--one", "--batch-size", str(args.batch_size)]
            ms = float(subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout)
            rate = args.batch_size / ms * 1e3
            print(f"round {r + 1}, {threads} thread(s): {ms:.2f} ms a step, {rate:,.0f} images/s")


if __name__ == "__main__":
    main()
