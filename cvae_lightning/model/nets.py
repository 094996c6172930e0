"""Encoders (x, y) -> (B, 2 * latent_dim) and decoders (z, y) -> logits (B, 1, 28, 28); y one-hot or None."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cvae_lightning.errors import check_bool, check_choice, check_int_list
from cvae_lightning.model.data import IMAGE_SHAPE

PIXELS = math.prod(IMAGE_SHAPE)
# between hidden layers (tanh: the published IWAE benchmark's networks)
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def stack(key: str, layer, sizes: Sequence[int], activation: str, extra_in: int = 0) -> nn.Sequential:
    """`layer(n_in, n_out)` for each pair of `sizes`, `activation` between; later ones take `extra_in`."""
    check_choice(f"{key}.activation", activation, ACTIVATIONS)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(layer(n_in + (extra_in if i else 0), n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def with_condition(h: Tensor, y: Tensor | None) -> Tensor:
    return h if y is None else torch.cat([h, y.to(h.dtype)], dim=1)


class MLP(nn.Sequential):
    """`n_in` inputs and the label through `hidden_dims` to `out_shape` (`label_every_layer`: at each)."""

    def __init__(self, key, n_in, out_shape, n_labels, hidden, activation="relu", label_every_layer=False):
        sizes = [n_in + n_labels, *check_int_list(f"{key}.hidden_dims", hidden), math.prod(out_shape)]
        extra = n_labels if check_bool(f"{key}.label_every_layer", label_every_layer) else 0
        super().__init__(*stack(key, nn.Linear, sizes, activation, extra))
        self.label_every_layer, self.out_shape = label_every_layer, tuple(out_shape)

    def forward(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        h = h.flatten(1)
        for i, layer in enumerate(self):
            if isinstance(layer, nn.Linear) and (i == 0 or self.label_every_layer):
                h = with_condition(h, y)
            h = layer(h)
        return h.view(-1, *self.out_shape)


class MLPEncoder(MLP):
    """(x, y) -> (mu, logvar): flattened pixels and the one-hot label through an MLP."""

    def __init__(self, latent_dim: int, n_labels: int, hidden_dims=(512, 256), **options):
        super().__init__("model.encoder", PIXELS, [2 * latent_dim], n_labels, hidden_dims, **options)


class MLPDecoder(MLP):
    """(z, y) -> Bernoulli logits shaped like images; `hidden_dims` in the order the data flows."""

    def __init__(self, latent_dim: int, n_labels: int, hidden_dims=(256, 512), **options):
        super().__init__("model.decoder", latent_dim, IMAGE_SHAPE, n_labels, hidden_dims, **options)


# stride-2 4x4 convolutions (28 -> 14 -> 7), and their transposes, as `stack`'s layers
CONV = functools.partial(nn.Conv2d, kernel_size=4, stride=2, padding=1)
UPCONV = functools.partial(nn.ConvTranspose2d, kernel_size=4, stride=2, padding=1)


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (28 -> 7), then the label joins an MLP head to (mu, logvar)."""

    def __init__(self, latent_dim, n_labels, channels=(32, 64), hidden_dims=(512, 256), activation="relu"):
        super().__init__()
        key = "model.encoder"
        channels = check_int_list(f"{key}.channels", channels, example="[32,64]")
        convs = stack(key, CONV, [IMAGE_SHAPE[0], *channels], activation)
        self.features = nn.Sequential(convs, ACTIVATIONS[activation](), nn.Flatten())
        self.head = MLP(key, channels[-1] * 49, [2 * latent_dim], n_labels, hidden_dims, activation)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.head(self.features(x.view(-1, *IMAGE_SHAPE)), y)


class ConvDecoder(nn.Module):
    """(z, y) through an MLP to a 7x7 map of `channels[0]`, then transposed convolutions to 28x28 logits."""

    def __init__(self, latent_dim, n_labels, channels=(64, 32), hidden_dims=(256, 512), activation="relu"):
        super().__init__()
        channels = check_int_list("model.decoder.channels", channels, example="[32,64]")
        mlp = MLP("model.decoder", latent_dim, [channels[0], 7, 7], n_labels, hidden_dims, activation)
        self.head = nn.Sequential(mlp, ACTIVATIONS[activation]())
        self.upsample = stack("model.decoder", UPCONV, [*channels, IMAGE_SHAPE[0]], activation)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.upsample(self.head(with_condition(z, y)))  # the label joined before head's MLP
