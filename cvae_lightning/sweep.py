"""The end of a Hydra multirun: one table of every job's results, in the sweep dir."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

METRICS = ("val/nelbo", "test/nelbo", "val/recon", "val/kl", "test/recon", "test/kl")


def collect(sweep_dir: Path) -> list[dict]:
    """One row per job that ended (wrote results.json): the completed ones by val/nelbo (best first), then
    the failed ones with their reason."""
    runs = [(p.parent, json.loads(p.read_text())) for p in sorted(sweep_dir.glob("*/results.json"))]
    # show what differs between the jobs, not the overrides they all share
    shared = set.intersection(*(set(r["overrides"]) for _, r in runs)) if runs else set()
    rows = [
        {
            "job": job_dir.name.split("_", 1)[0],
            "overrides": " ".join(o for o in r["overrides"] if o not in shared),
            "status": r.get("status", "completed"),
            **{name: r.get("metrics", {}).get(name) for name in METRICS},
            "epochs": r.get("epochs"),
            "fit_seconds": r.get("fit_seconds"),
            "best_checkpoint": r.get("best_checkpoint"),
            "error": r.get("error", ""),
        }
        for job_dir, r in runs
    ]
    return sorted(rows, key=lambda row: float("inf") if row["val/nelbo"] is None else row["val/nelbo"])


def to_markdown(rows: list[dict]) -> str:
    cell = lambda v: f"{v:.2f}" if isinstance(v, float) else "–" if v is None else str(v)  # noqa: E731
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell(v) for v in row.values()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Writes summary.csv and summary.md (one row per job, sorted by val/nelbo) when a multirun ends, and
    exits non-zero in one line if a job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir)
        if not rows:
            log.warning(f"no finished runs under {sweep_dir}: no summary written")
            return
        with open(sweep_dir / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        table = to_markdown(rows)
        (sweep_dir / "summary.md").write_text(table)
        log.info(f"sweep summary ({sweep_dir / 'summary.md'}):\n{table}")
        failed = [row for row in rows if row["status"] != "completed"]
        if failed:
            first = failed[0]
            raise SystemExit(
                f"error: {len(failed)} of {len(rows)} jobs failed, e.g. job {first['job']}: {first['error']} "
                f"(summary: {sweep_dir / 'summary.md'})"
            )
