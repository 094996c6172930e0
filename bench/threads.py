"""Training-step time by torch thread count (issue #17's threads lever), in-process, alternated.

    python bench/threads.py                     # batch 256, 1 and 2 threads, 3 rounds
    python bench/threads.py --batch-size 128 --threads 1 2 4 --rounds 5

Each measurement is a fresh process (the thread count is set before torch starts its pool), built with
throughput.py's pieces: the default CVAE as train.py builds it, its fused Adam, the project's process
settings; forward, ELBO, backward and step on one batch already in memory, 30 warm-up steps then the mean
of 200. Prints one line per process; no file written.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from throughput import make_model, project_settings, start_process, train_step


def step_ms(batch_size: int, steps: int = 200) -> float:
    """Milliseconds a training step of the default model and its fused Adam, one in-memory batch."""
    model, optimizer = make_model()
    x, y = torch.rand(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    for _ in range(30):
        train_step(model, optimizer, x, y)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, x, y)
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"batch {args.batch_size}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    spawn = multiprocessing.get_context("spawn")
    for r in range(args.rounds):
        for threads in args.threads:
            setup = (project_settings(), threads)
            with ProcessPoolExecutor(
                1, mp_context=spawn, initializer=start_process, initargs=setup
            ) as process:
                ms = process.submit(step_ms, args.batch_size).result()
            rate = args.batch_size / ms * 1e3
            print(f"round {r + 1}, {threads} thread(s): {ms:.2f} ms a step, {rate:,.0f} images/s")


if __name__ == "__main__":
    main()
