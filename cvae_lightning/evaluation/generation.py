"""What a trained CVAE draws (images in [0, 1]): digits on request, style transfer, interpolations."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvae_lightning.model.data import NUM_CLASSES

# samples decoded at once in evaluation (evaluate.py, export.py)
BATCH = 1000


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in eval mode without autograd for the block, then back in the mode it was in."""
    was_training = module.training
    try:
        with torch.no_grad():
            yield module.eval()
    finally:
        module.train(was_training)


def lerp(a: Tensor, b: Tensor, steps: int) -> Tensor:
    """(len(a) * steps, dim): for each row pair, `steps` points from a to b inclusive."""
    t = torch.linspace(0, 1, steps, device=a.device).view(1, steps, 1)
    return (a.unsqueeze(1) * (1 - t) + b.unsqueeze(1) * t).flatten(0, 1)


def repeat_digits(n: int | Sequence[int], digits: Sequence[int] = range(NUM_CLASSES)) -> Tensor:
    """Integer labels, each digit n times in turn (n: one count, or one per digit): a grid row per digit."""
    return torch.tensor(list(digits)).repeat_interleave(torch.as_tensor(n))


@torch.no_grad()
def draw(model, labels: Tensor, temperature: float = 1.0, batch_size: int | None = BATCH) -> Tensor:
    """One sample per label, on the CPU, `batch_size` at a time (None: at once); the batches partition the
    random draws: a seed gives the same images only under the same batch_size."""
    chunks = labels.split(batch_size) if batch_size else [labels]
    return torch.cat([model.sample(labels=chunk, temperature=temperature).cpu() for chunk in chunks])


def digit_grid(model, digits: Sequence[int], n: int, temperature: float = 1.0) -> Tensor:
    """n samples of each requested digit, digit-major, in one batch (generate.py's grid)."""
    return draw(model, repeat_digits(n, digits), temperature, batch_size=None)


@torch.no_grad()
def style_transfer(model, x: Tensor, labels: Tensor) -> Tensor:
    """[original, decoded as 0, ..., 9] per image: z = mu of Q(z|x,y) as noise of its prior (the style),
    decoded through each target digit's prior (a learned p(z|y)'s digits sit apart)."""
    x = x.to(model.device)
    style = model.to_noise(model.encode(x, labels)[0], model.condition(labels))
    noise = style.repeat_interleave(NUM_CLASSES, dim=0)
    digits = model.sample(labels=torch.arange(NUM_CLASSES).repeat(len(x)), noise=noise)
    digits = digits.view(len(x), NUM_CLASSES, *x.shape[1:])
    return torch.cat([x.unsqueeze(1), digits], dim=1).flatten(0, 1)


@torch.no_grad()
def latent_interpolation(model, digits: Sequence[int], steps: int, temperature: float = 1.0) -> Tensor:
    """For each digit, `steps` images along the line between two prior draws of z (same digit throughout)."""
    a, b = model.noise(len(digits), len(digits))
    noise = lerp(a, b, steps)
    return model.sample(labels=repeat_digits(steps, digits), temperature=temperature, noise=noise)


@torch.no_grad()
def label_interpolation(model, digits: Sequence[int], steps: int, rows: int = 1, temperature: float = 1.0):
    """For each of `rows` fixed z, `steps` images from digits[0] to digits[1] to ... (mixing one-hot y)."""
    one_hot = F.one_hot(torch.tensor(list(digits)), NUM_CLASSES).float()
    mixed = lerp(one_hot[:-1], one_hot[1:], steps)
    rows = [
        model.sample(labels=mixed, temperature=temperature, noise=model.noise(1).expand(len(mixed), -1))
        for _ in range(rows)
    ]
    return torch.cat(rows)
