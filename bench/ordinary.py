"""The ordinary way to train the same CVAE, as a script of its own: what `bench/outside.py` times beside
`python train.py`.

    python bench/ordinary.py                       # 20 epochs of all 60k training images, then test -ELBO
    python bench/ordinary.py --epochs 3 --test-every-epoch
    python bench/ordinary.py --epochs 1 --limit-batches 3      # a few steps: a quick check

torchvision's MNIST + ToTensor + DataLoader, a plain PyTorch loop, Adam(lr=1e-3) and torch's defaults, as
the seed notebook did, on the network and loss train.py trains by default, so only the way of training
differs. Prints a JSON line: epoch times, test -ELBO, with --test-every-epoch the seconds until --target.
"""

from __future__ import annotations

import time

STARTED = time.time()  # as near the process start as Python allows: outside.py also times the process

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

from cvae_lightning.model.cvae import CVAE  # noqa: E402
from cvae_lightning.model.nets import MLPDecoder, MLPEncoder  # noqa: E402
from cvae_lightning.model.priors import FlowPrior  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
LATENT_DIM, N_LABELS = 20, 10


def default_model() -> CVAE:
    """The model `python train.py` trains by default (conf/model/cvae.yaml), as a plain nn.Module."""
    encoder = MLPEncoder(LATENT_DIM, N_LABELS, [512, 256])
    decoder = MLPDecoder(LATENT_DIM, N_LABELS, [256, 512], label_every_layer=True)
    return CVAE(encoder, decoder, LATENT_DIM, N_LABELS, FlowPrior(LATENT_DIM, N_LABELS))


def test_nelbo(model: CVAE, loader: DataLoader) -> float:
    model.eval()
    with torch.no_grad():
        total = sum(model.elbo(x, y)["nelbo"].item() * len(x) for x, y in loader)
    model.train()
    return total / len(loader.dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-every-epoch", action="store_true", help="test -ELBO after every epoch")
    parser.add_argument("--target", type=float, default=98.0, help="test -ELBO that counts as reached")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit-batches", type=int, default=None, help="train batches per epoch (tests)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train = datasets.MNIST(DATA, train=True, download=False, transform=transforms.ToTensor())
    test = datasets.MNIST(DATA, train=False, download=False, transform=transforms.ToTensor())
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test, batch_size=1000)
    model = default_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    epoch_seconds, test_seconds, curve, reached = [], 0.0, [], None
    for _ in range(args.epochs):
        start = time.perf_counter()
        for i, (x, y) in enumerate(train_loader):
            if i == args.limit_batches:
                break
            terms = model.elbo(x, y)
            loss = terms["recon"] + terms["kl"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch_seconds.append(round(time.perf_counter() - start, 3))
        if args.test_every_epoch:
            start = time.perf_counter()
            curve.append(round(test_nelbo(model, test_loader), 4))
            test_seconds += time.perf_counter() - start
            if reached is None and curve[-1] <= args.target:
                reached = round(time.time() - STARTED, 2)
    final = curve[-1] if curve else test_nelbo(model, test_loader)
    print(
        json.dumps(
            {
                "epochs": args.epochs,
                "epoch_seconds": epoch_seconds,
                "test_nelbo": final,
                "test_nelbo_per_epoch": curve,
                "seconds_in_per_epoch_tests": round(test_seconds, 2),
                "seconds_to_target": reached,
                "target": args.target,
            }
        )
    )


if __name__ == "__main__":
    main()
