"""A zoo of tiny architectures with their function-preserving neuron permutations.

Reusable by other tests: ``ZOO`` lists :class:`ZooEntry` items; each builds a model,
an input batch, and a copy of the model whose hidden neurons/channels are permuted
consistently (so it computes the same function).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ZooEntry", "ZOO", "ZOO_BY_NAME"]


def _perm_out(mod: nn.Module, p: Tensor) -> None:
    """Permute the output units of a Linear/Conv/BatchNorm/LayerNorm in place."""
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(mod, name, None)
            if t is not None:
                t.copy_(t[p])


def _perm_in(mod: nn.Module, p: Tensor) -> None:
    """Permute the input units of a (non-grouped) Linear/Conv in place."""
    with torch.no_grad():
        mod.weight.copy_(mod.weight[:, p])


def _rand_perm(n: int, seed: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- MLP
def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 3))


def permute_mlp(m: nn.Module) -> None:
    p1, p2 = _rand_perm(8, 1), _rand_perm(7, 2)
    _perm_out(m[0], p1)
    _perm_in(m[2], p1)
    _perm_out(m[2], p2)
    _perm_in(m[4], p2)


# --------------------------------------------------------------------------- CNN
def make_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, groups=2),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=6),  # depthwise
        nn.GroupNorm(2, 6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 4, 5),
    )


def permute_cnn(m: nn.Module) -> None:
    p1 = torch.tensor([1, 0, 3, 2])  # within the two input groups of the grouped conv
    _perm_out(m[0], p1)
    with torch.no_grad():
        m[3].weight.copy_(m[3].weight[:, torch.tensor([1, 0])])
    p2 = torch.tensor([2, 0, 1, 4, 5, 3])  # within the output groups (and the GroupNorm groups)
    for idx in (3, 4, 6, 7):
        _perm_out(m[idx], p2)
    with torch.no_grad():
        w = m[11].weight.view(5, 6, 4)
        m[11].weight.copy_(w[:, p2].reshape(5, 24))


# ------------------------------------------------------------------------ ResNet
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_resnet() -> nn.Module:
    m = TinyResNet()
    with torch.no_grad():  # non-trivial running statistics
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m


def permute_resnet(m: nn.Module) -> None:
    ps = _rand_perm(4, 3)  # residual stream of layer1
    _perm_out(m.stem[0], ps)
    _perm_out(m.stem[1], ps)
    _perm_in(m.layer1.conv1, ps)
    _perm_out(m.layer1.conv2, ps)
    _perm_out(m.layer1.bn2, ps)
    _perm_in(m.layer2.conv1, ps)
    _perm_in(m.layer2.shortcut[0], ps)
    ph = _rand_perm(4, 4)  # hidden channels of layer1
    _perm_out(m.layer1.conv1, ph)
    _perm_out(m.layer1.bn1, ph)
    _perm_in(m.layer1.conv2, ph)
    po = _rand_perm(8, 5)  # residual stream of layer2
    for mod in (m.layer2.conv2, m.layer2.bn2, m.layer2.shortcut[0], m.layer2.shortcut[1]):
        _perm_out(mod, po)
    _perm_in(m.fc, po)


# ---------------------------------------------------------------------- DeepSets
class DeepSets(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 6))
        self.rho = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))

    def forward(self, x: Tensor) -> Tensor:  # x: (batch, set, 3)
        return self.rho(self.phi(x).sum(dim=1))


def permute_deepsets(m: nn.Module) -> None:
    p1, p2, p3 = _rand_perm(8, 6), _rand_perm(6, 7), _rand_perm(5, 8)
    _perm_out(m.phi[0], p1)
    _perm_in(m.phi[2], p1)
    _perm_out(m.phi[2], p2)
    _perm_in(m.rho[0], p2)
    _perm_out(m.rho[0], p3)
    _perm_in(m.rho[2], p3)


# --------------------------------------------------------------------------- ViT
class TinyViT(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 3, stride=3)  # 6x6 image -> 2x2 patches
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, 5, dim) * 0.5)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 12), nn.GELU(), nn.Linear(12, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, img: Tensor) -> Tensor:
        x = self.patch(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        return self.head(self.norm(x)[:, 0])


def make_vit() -> nn.Module:
    m = TinyViT()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
        m.attn.in_proj_bias.uniform_(-0.5, 0.5)
        m.attn.out_proj.bias.uniform_(-0.5, 0.5)
    return m


def permute_vit(m: nn.Module) -> None:
    p = _rand_perm(12, 9)  # MLP hidden units
    _perm_out(m.mlp[0], p)
    _perm_in(m.mlp[2], p)
    dim, hd = 8, 4
    heads = torch.tensor([1, 0])  # swap the heads, and permute q/k dims within each head
    within = torch.tensor([2, 0, 3, 1])
    pqk = (heads.repeat_interleave(hd) * hd) + within.repeat(2)
    pv = heads.repeat_interleave(hd) * hd + torch.arange(hd).repeat(2)
    with torch.no_grad():
        w = m.attn.in_proj_weight
        b = m.attn.in_proj_bias
        full = torch.cat([pqk, pqk + dim, pv + 2 * dim])
        w.copy_(w[full])
        b.copy_(b[full])
        m.attn.out_proj.weight.copy_(m.attn.out_proj.weight[:, pv])


# ------------------------------------------------------------- hand-written forward
class HandWritten(nn.Module):
    """Channel concat, layer scale (a parameter used directly), residual, and ``x @ W``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 6)
        self.b = nn.Linear(5, 4)
        self.c = nn.Linear(10, 6)
        self.d = nn.Linear(6, 6)
        self.scale = nn.Parameter(torch.rand(6) + 0.5)
        self.w_out = nn.Parameter(torch.randn(6, 3))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.cat([F.relu(self.a(x)), torch.tanh(self.b(x))], dim=-1)
        z = F.relu(self.c(h)) * self.scale
        z = z + F.relu(self.d(z))
        return z @ self.w_out


def permute_handwritten(m: nn.Module) -> None:
    pa, pb, pz = _rand_perm(6, 10), _rand_perm(4, 11), _rand_perm(6, 12)
    _perm_out(m.a, pa)
    _perm_out(m.b, pb)
    _perm_in(m.c, torch.cat([pa, pb + 6]))
    _perm_out(m.c, pz)
    with torch.no_grad():
        m.scale.copy_(m.scale[pz])
        m.w_out.copy_(m.w_out[pz])
    _perm_in(m.d, pz)
    _perm_out(m.d, pz)


@dataclass(frozen=True)
class ZooEntry:
    """One architecture of the zoo.

    Attributes:
        name: id used in test parametrization.
        make: builds a model (uses the global torch RNG for its init).
        make_input: `(generator) -> input batch`.
        permute: permutes hidden units of a model in place, preserving its function.
        needs_example: whether ``parameter_graph`` needs ``example_input`` for this model.
    """

    name: str
    make: Callable[[], nn.Module]
    make_input: Callable[[torch.Generator], Tensor]
    permute: Callable[[nn.Module], None]
    needs_example: bool = False

    def build(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.make().eval()

    def permuted(self, model: nn.Module) -> nn.Module:
        out = copy.deepcopy(model)
        self.permute(out)
        return out

    def example(self, seed: int = 0) -> Tensor:
        return self.make_input(torch.Generator().manual_seed(seed))


ZOO: tuple[ZooEntry, ...] = (
    ZooEntry("mlp", make_mlp, lambda g: torch.randn(4, 6, generator=g), permute_mlp),
    ZooEntry("cnn", make_cnn, lambda g: torch.randn(2, 3, 8, 8, generator=g), permute_cnn),
    ZooEntry("resnet", make_resnet, lambda g: torch.randn(2, 3, 8, 8, generator=g), permute_resnet),
    ZooEntry("deepsets", DeepSets, lambda g: torch.randn(3, 5, 3, generator=g), permute_deepsets, needs_example=True),
    ZooEntry("vit", make_vit, lambda g: torch.randn(2, 3, 6, 6, generator=g), permute_vit),
    ZooEntry("handwritten", HandWritten, lambda g: torch.randn(4, 5, generator=g), permute_handwritten),
)
ZOO_BY_NAME = {e.name: e for e in ZOO}
