"""Small architectures for 8×8 digits: the members of the embedded "digits hub".

All take images `(batch, 1, 8, 8)` and return logits `(batch, 10)`, and are built
from keyword arguments only, so a hub manifest can name them as
``fms_lightning.examples.hub_models:make`` with ``kwargs: {arch: cnn, ...}``.

- ``mlp``: flatten → Linear/ReLU stack.
- ``cnn``: two 3×3 conv layers, max-pool, linear head.
- ``resnet``: a stem conv and BasicBlocks (BatchNorm, 1×1 projection shortcut).
- ``deepsets``: each image row is a set element; φ-MLP, mean pool, ρ-MLP.
  Invariant to the order of the rows.
- ``vit``: 2×2 patch-embedding conv, class token, learned positional embedding,
  Transformer blocks (``nn.MultiheadAttention``, LayerNorm, MLP).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fms_lightning.errors import ConfigurationError

__all__ = ["DigitsMLP", "DigitsConvNet", "DigitsResNet", "DigitsDeepSets", "DigitsViT", "make", "ARCHITECTURES"]


class DigitsMLP(nn.Module):
    """Flatten then ``depth`` hidden Linear+ReLU layers of ``width`` units."""

    def __init__(self, width: int = 64, depth: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = 64
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.ReLU(), nn.Dropout(0.0)]
            fan_in = width
        layers.append(nn.Linear(fan_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.net(x)


class DigitsConvNet(nn.Module):
    """Two 3×3 convs (``c1``, ``c2`` channels), 2×2 max-pool, dropout, linear head."""

    def __init__(self, c1: int = 16, c2: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.0), nn.Linear(c2 * 16, num_classes))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """Two 3×3 conv+BN layers with a residual; a 1×1 conv+BN shortcut when shapes change."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    """Stem conv+BN, a BasicBlock at ``width`` and one at ``2·width`` (stride 2), pool, head."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class DigitsDeepSets(nn.Module):
    """Each image row is a set element (8 pixel values); ``ρ(mean_rows φ(row))``.

    Invariant to the order of the rows, so it must recognise digits from the bag
    of their row patterns: a deliberately different inductive bias in the hub.
    """

    def __init__(self, width: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.rho = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        rows = torch.flatten(x, 1, 2)  # (batch, 8 rows, 8 pixels): the set elements
        return self.rho(self.phi(rows).mean(dim=1))


class ViTBlock(nn.Module):
    """Pre-norm Transformer block: LayerNorm → multi-head self-attention → residual; LayerNorm → MLP → residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class DigitsViT(nn.Module):
    """A tiny ViT: 2×2 patches (16 tokens), class token, positional embedding, ``depth`` blocks."""

    def __init__(self, dim: int = 32, depth: int = 1, heads: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigurationError(f"DigitsViT: dim ({dim}) must be divisible by heads ({heads}).")
        self.patch = nn.Conv2d(1, dim, kernel_size=2, stride=2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (batch, 16, dim)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        h = self.blocks(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        return self.head(self.norm(h[:, 0]))


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "mlp": DigitsMLP,
    "cnn": DigitsConvNet,
    "resnet": DigitsResNet,
    "deepsets": DigitsDeepSets,
    "vit": DigitsViT,
}


def make(arch: str, **kwargs: Any) -> nn.Module:
    """Build a digits architecture by name.

    Raises:
        UnknownPresetError: For an unknown ``arch`` (the message lists the valid ones).
    """
    from fms_lightning.errors import UnknownPresetError

    if arch not in ARCHITECTURES:
        raise UnknownPresetError(f"Unknown digits architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}.")
    return ARCHITECTURES[arch](**kwargs)
