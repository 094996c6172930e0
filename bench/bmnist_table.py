"""The binarized-MNIST table and NLL curves of docs/results.md, from the runs of `bench/bmnist_cpu.sh`.

    python bench/bmnist_table.py [--runs logs/bmnist]
    python bench/bmnist_table.py --cpu [--runs logs/bmnist_cpu]    # the CPU-recipe rows (`*_cpu`)

Reads each row's results.json, test_nll.json and metrics.json; writes docs/bmnist_nll.png (with --cpu
docs/bmnist_cpu_nll.png) and the table between the `bmnist table` markers in docs/results.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/bmnist_table.py` puts bench/ on the path, not the project root
    sys.path.insert(0, str(ROOT))

from bench import machine  # noqa: E402

RESULTS_MD = ROOT / "docs" / "results.md"
# row: (what it trains, published test NLL at k=5000 in nats, source)
PUBLISHED = {
    "vae_k1": ("VAE, ELBO, k=1", 86.76, "Burda et al. 2015"),
    "vae_k5": ("VAE, ELBO, k=5", 86.47, "Burda et al. 2015"),
    "vae_k50": ("VAE, ELBO, k=50", 86.35, "Burda et al. 2015"),
    "iwae_k5": ("VAE, IWAE bound, k=5", 85.54, "Burda et al. 2015"),
    "iwae_k50": ("VAE, IWAE bound, k=50", 84.78, "Burda et al. 2015"),
    "cvae_iwae_k1": ("CVAE, IWAE bound, k=1", 82.32, "nbip/IWAE, conditional prior"),
    "cvae_iwae_k5": ("CVAE, IWAE bound, k=5", 81.41, "nbip/IWAE, conditional prior"),
    "cvae_iwae_k50": ("CVAE, IWAE bound, k=50", 80.78, "nbip/IWAE, conditional prior"),
    "vae_k1_cpu": ("VAE, ELBO, k=1, CPU recipe", 86.76, "Burda et al. 2015"),
    "cvae_iwae_k1_cpu": ("CVAE, IWAE bound, k=1, CPU recipe", 82.32, "nbip/IWAE, conditional prior"),
}


def read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def rows(runs: Path, cpu: bool) -> list[dict]:
    out = []
    for name, (what, published, source) in PUBLISHED.items():
        if name.endswith("_cpu") != cpu:
            continue
        run = runs / name
        results, curve, metrics = (read(run / f"{f}.json") for f in ("results", "test_nll", "metrics"))
        if results is None:
            continue
        last = (curve or [{}])[-1]
        # /usr/bin/time's "<seconds> s", once written: the file can be missing, or empty while the eval runs
        timed = runs / f"{name}.eval.seconds"
        seconds = timed.read_text().split() if metrics and timed.is_file() else []
        out.append(
            {
                "name": name,
                "what": what,
                "published": published,
                "source": source,
                "ours": metrics["test"]["nll"] if metrics else None,
                "nelbo": metrics["test"]["nelbo"] if metrics else None,
                "k": metrics["k"] if metrics else None,
                "epochs": results["epochs"],
                "cpu_minutes": last["cpu_seconds"] / 60 if "cpu_seconds" in last else None,
                "wall_minutes": results["fit_seconds"] / 60,
                "eval_seconds": float(seconds[0]) if seconds else None,
                "curve": curve or [],
            }
        )
    return out


def fmt(value, spec: str = ".2f", missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def table(rows: list[dict], cpu: bool) -> str:
    how = (
        f"`bash bench/bmnist_cpu.sh{' cpu' if cpu else ''}` then `python bench/bmnist_table.py"
        f"{' --cpu' if cpu else ''}` ({datetime.date.today()}, table "
        f"written at commit {machine.commit()}). Test NLL: −log p(x) (VAE) or −log p(x|y) (CVAE), the "
        "IWAE bound with k = 5000 on all 10,000 test images binarized once (seed 0), float32, nats. Each "
        "row is `python train.py experiment=bmnist_<row>`."
    )
    lines = [
        markers(cpu)[0],
        how,
        "",
        "| row | trains | published | ours | gap | test −ELBO | CVAE: −log p(x) ≤ | epochs (of 3,280) | "
        "training time | k=5000 eval |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        gap = None if r["ours"] is None else r["ours"] - r["published"]
        # the CPU recipe's limit is wall time
        cpu_time = not cpu and r["cpu_minutes"]
        time = f"{r['cpu_minutes']:.0f} CPU min" if cpu_time else f"{r['wall_minutes']:.0f} min wall"
        # p(x) >= p(x|y) p(y): a CVAE's -log p(x|y) + log 10 bounds its -log p(x)
        bound = fmt(r["ours"] + math.log(10)) if r["ours"] is not None and "CVAE" in r["what"] else ""
        evaluated = "–" if r["eval_seconds"] is None else f"{r['eval_seconds']:.0f} s"
        lines.append(
            f"| `bmnist_{r['name']}` | {r['what']} | {r['published']:.2f} | {fmt(r['ours'])} | "
            f"{fmt(gap, '+.2f')} | {fmt(r['nelbo'])} | {bound} | {r['epochs']} | {time} | {evaluated} |"
        )
    lines += ["", markers(cpu)[1]]
    return "\n".join(lines)


def markers(cpu: bool) -> tuple[str, str]:
    name = "bmnist cpu table" if cpu else "bmnist table"
    return f"<!-- {name} -->", f"<!-- /{name} -->"


def plot(rows: list[dict], cpu: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        if not r["curve"]:
            continue
        x = [p["seconds"] / 60 if cpu else p["epoch"] for p in r["curve"]]
        (line,) = ax.plot(x, [p["nll"] for p in r["curve"]], marker=".", label=r["name"])
        if r["ours"] is not None:
            ax.plot([x[-1]], [r["ours"]], marker="*", markersize=12, color=line.get_color())
        ax.axhline(r["published"], color=line.get_color(), linestyle=":", label=f"published {r['published']}")
    ax.set_xlabel("minutes of training (wall, one core)" if cpu else "epoch")
    ax.set_ylabel("test NLL, nats (IWAE k=100; star: k=5000)")
    ax.set_title(
        "Binarized MNIST, the CPU recipe: test NLL against wall time (2-hour limit)"
        if cpu
        else "Binarized MNIST: test NLL against epochs trained (published runs: 3,280 epochs)"
    )
    ax.set_ylim(top=min(100 if cpu else 130, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = ROOT / "docs" / ("bmnist_cpu_nll.png" if cpu else "bmnist_nll.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="the CPU-recipe rows (bmnist_*_cpu)")
    parser.add_argument("--runs", help="default: logs/bmnist, with --cpu logs/bmnist_cpu")
    args = parser.parse_args()
    runs = Path(args.runs or ROOT / "logs" / ("bmnist_cpu" if args.cpu else "bmnist"))
    found = rows(runs, args.cpu)
    text = table(found, args.cpu)
    plot(found, args.cpu)
    md = RESULTS_MD.read_text()
    begin, end = markers(args.cpu)
    if begin in md:
        md = md[: md.index(begin)] + text + md[md.index(end) + len(end) :]
    else:
        md += "\n" + text + "\n"
    RESULTS_MD.write_text(md)
    print(text)


if __name__ == "__main__":
    main()
