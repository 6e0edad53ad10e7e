"""Benchmark weight-space featurization on a ResNet-18-sized model (~11.7M parameters).

Prints the parameter-graph build time, the GMNEncoder forward time and the peak
memory of the process, using 2 CPU threads. Targets (issue 3): build <= 2 s,
forward <= 1 s, peak memory <= 2 GB.

Usage::

    OMP_NUM_THREADS=2 python scripts/bench_weightspace.py [--repeats 3] [--max-kernel-size 9] [--msg-dim 32]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (self.down(x) if self.down is not None else x))


class ResNet18(nn.Module):
    """ImageNet ResNet-18 layout: 7x7 stem, four stages of two BasicBlocks, 1000 classes."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def _timed(fn, repeats: int):  # noqa: ANN001, ANN202
    """Run ``fn`` ``repeats`` times; returns (result, first wall, best wall, best CPU) seconds."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return out, walls[0], min(walls), min(cpus)


def main() -> None:
    from torch_geometric.data import Batch

    from fms_lightning.weightspace import GMNEncoder, GraphCache, parameter_graph

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-kernel-size", type=int, default=9)
    parser.add_argument("--msg-dim", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = ResNet18().eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: ResNet18, {n_params / 1e6:.2f}M parameters, {args.threads} threads")
    print(f"peak RSS after model: {_peak_rss_mb():.0f} MB")

    print(f"load average at start: {os.getloadavg()[0]:.2f} (figures are wall time; CPU time in brackets)")
    g, first, best, cpu = _timed(lambda: parameter_graph(model, max_kernel_size=args.max_kernel_size), args.repeats)
    print(f"graph: {g.num_nodes} nodes, {g.edge_index.shape[1]} edges, {g.num_param_elements} params placed")
    print(f"graph build: best {best:.3f} s [cpu {cpu:.3f} s], first {first:.3f} s (target <= 2 s)")
    print(f"peak RSS after build: {_peak_rss_mb():.0f} MB")

    cache = GraphCache(max_kernel_size=args.max_kernel_size)
    cache.get(model)
    _, first, best, cpu = _timed(lambda: cache.get(model), 1)
    print(f"GraphCache hit (hashes all 11.7M weights): {best:.3f} s")

    enc = GMNEncoder(msg_dim=args.msg_dim, max_kernel_size=args.max_kernel_size, out_dim=10)
    with torch.no_grad():
        out, first, best, cpu = _timed(lambda: enc(g), args.repeats)
    print(f"GMNEncoder forward (no grad, hidden 64/128/256, msg {args.msg_dim}, rank {enc.rank}): best {best:.3f} s "
          f"[cpu {cpu:.3f} s], first {first:.3f} s incl. CSR structure (target <= 1 s); out {tuple(out.shape)}")
    print(f"peak RSS after forward: {_peak_rss_mb():.0f} MB (target <= 2048 MB)")

    small, first, best, cpu = _timed(
        lambda: parameter_graph(model, max_kernel_size=args.max_kernel_size, summarize=("blocks.6", "blocks.7")), 1
    )
    with torch.no_grad():
        _, f2, b2, c2 = _timed(lambda: enc(small), args.repeats)
    print(f"bounded graph (summarize=layer4): {small.num_nodes} nodes, {small.edge_index.shape[1]} edges; "
          f"build {best:.3f} s, forward best {b2:.3f} s")

    _, first, best, cpu = _timed(lambda: enc(Batch.from_data_list([g, g])).sum().backward(), 1)
    print(f"GMNEncoder forward+backward on a batch of 2 full graphs (training): {best:.3f} s [cpu {cpu:.3f} s]")
    print(f"peak RSS overall: {_peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
