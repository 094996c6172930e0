"""Encoder and decoder networks: `mlp` (the default) and `conv`. Both take the condition y (or None)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cvae_lightning.data import IMAGE_SHAPE
from cvae_lightning.errors import refuse

PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]


# model.activation: between hidden layers (tanh: the published IWAE benchmark's networks)
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(sizes: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers with `activation` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def with_condition(h: Tensor, y: Tensor | None) -> Tensor:
    return h if y is None else torch.cat([h, y.to(h.dtype)], dim=1)


class MLPEncoder(nn.Sequential):
    """(x, y) -> 2 * latent_dim: flattened pixels and one-hot label through an MLP."""

    def __init__(self, n_classes: int, hidden_dims: Sequence[int], latent_dim: int, activation="relu", **_):
        super().__init__(*mlp([PIXELS + n_classes, *hidden_dims, 2 * latent_dim], activation))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return super().forward(with_condition(x.flatten(1), y))


class MLPDecoder(nn.Sequential):
    """(z, y) -> Bernoulli logits shaped like images."""

    def __init__(self, n_classes: int, hidden_dims: Sequence[int], latent_dim: int, activation="relu", **_):
        super().__init__(*mlp([latent_dim + n_classes, *reversed(hidden_dims), PIXELS], activation))

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return super().forward(with_condition(z, y)).view(-1, *IMAGE_SHAPE)


def _conv_stack(channels: Sequence[int], transpose: bool = False, activation="relu") -> nn.Sequential:
    """Stride-2 4x4 convolutions (28 -> 14 -> 7) or their transposes, `activation` between them."""
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(itertools.pairwise(channels)):
        layers.append(conv(c_in, c_out, kernel_size=4, stride=2, padding=1))
        if i < len(channels) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (28 -> 7), then the label joins an MLP head to (mu, logvar)."""

    def __init__(self, n_classes, hidden_dims, latent_dim, channels=(32, 64), activation="relu"):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.features = nn.Sequential(
            _conv_stack([IMAGE_SHAPE[0], *channels], False, activation), act(), nn.Flatten()
        )
        self.head = mlp([channels[-1] * 7 * 7 + n_classes, *hidden_dims, 2 * latent_dim], activation)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.head(with_condition(self.features(x.view(-1, *IMAGE_SHAPE)), y))


class ConvDecoder(nn.Module):
    """(z, y) through an MLP to a 7x7 feature map, then two transposed convolutions up to 28x28 logits."""

    def __init__(self, n_classes, hidden_dims, latent_dim, channels=(32, 64), activation="relu"):
        super().__init__()
        self.head = nn.Sequential(
            mlp([latent_dim + n_classes, *reversed(hidden_dims), channels[-1] * 7 * 7], activation),
            ACTIVATIONS[activation](),
            nn.Unflatten(1, (channels[-1], 7, 7)),
        )
        self.upsample = _conv_stack([*reversed(channels), IMAGE_SHAPE[0]], True, activation)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.upsample(self.head(with_condition(z, y)))


# model.net -> (encoder, decoder): a new network is a pair of classes here and conf/model/net/<name>.yaml
NETS = {"mlp": (MLPEncoder, MLPDecoder), "conv": (ConvEncoder, ConvDecoder)}


def build(net: str, **sizes) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) of the named kind."""
    if not isinstance(net, str) or net not in NETS:
        raise refuse("model.net", net, "one of " + ", ".join(NETS))
    encoder, decoder = NETS[net]
    return encoder(**sizes), decoder(**sizes)
