"""NFNEncoder (FMS-NFN) against GMNEncoder (FMS-GMN) on a batch of zoo-hub CNNs, side by side.

Each network is ``DigitsConvNet(c1=4, c2=8)`` (the zoo hub's architecture, 1 626 parameters),
with its own random initialisation. Both encoders have their library defaults (the
optimizer's ``_default_encoder`` for fms-gmn; ``NFNEncoder(reference)`` for fms-nfn). Timed,
interleaved in one process, median over ``--repeats``:

- ``prepare``: the per-snapshot input (``parameter_graph`` / ``NFNEncoder.inputs``), all networks;
- ``embed``: one ``no_grad`` forward over the ``Batch`` of all networks (the frozen featurizer's flush);
- ``train step``: forward + backward over the batch (a step of ``gmn_training="full"``).

Usage::

    OMP_NUM_THREADS=1 python scripts/bench_nfn.py [--batch 32] [--repeats 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch_geometric.data import Batch

from fms_lightning.examples.hub_models import DigitsConvNet
from fms_lightning.weightspace import GMNEncoder, NFNEncoder, parameter_graph


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = []
    for seed in range(args.batch):
        torch.manual_seed(seed)
        models.append(DigitsConvNet(c1=4, c2=8))
    sds = [m.state_dict() for m in models]
    torch.manual_seed(0)
    gmn, nfn = GMNEncoder(), NFNEncoder(models[0])
    graphs = [parameter_graph(m, sd) for m, sd in zip(models, sds)]
    inputs = [nfn.inputs(sd) for sd in sds]
    g_batch, n_batch = Batch.from_data_list(graphs), Batch.from_data_list(inputs)

    def step(enc: torch.nn.Module, batch: Batch) -> None:
        enc.zero_grad()
        enc(batch).square().sum().backward()

    rows = {}
    for label, gfn, nfn_fn in (
        ("prepare", lambda: [parameter_graph(m, sd) for m, sd in zip(models, sds)],
         lambda: [nfn.inputs(sd) for sd in sds]),
        ("embed", lambda: gmn(g_batch), lambda: nfn(n_batch)),
        ("train step", lambda: step(gmn, g_batch), lambda: step(nfn, n_batch)),
    ):
        with torch.no_grad() if label == "embed" else torch.enable_grad():
            gfn(), nfn_fn()  # warm-up (CSR structure cache of the GMN, allocator)
            g_t, n_t = [], []
            for _ in range(args.repeats):  # interleaved, so both see the same machine load
                g_t.append(_median_seconds(gfn, 1))
                n_t.append(_median_seconds(nfn_fn, 1))
        rows[label] = statistics.median(g_t), statistics.median(n_t)
    n_params = [sum(p.numel() for p in e.parameters()) for e in (gmn, nfn)]
    print(f"{args.batch} x DigitsConvNet(4, 8); threads={args.threads}; repeats={args.repeats}")
    print(f"encoder parameters: GMN {n_params[0]}, NFN {n_params[1]}; graph nodes {graphs[0].num_nodes}, "
          f"edges {graphs[0].edge_index.shape[1]}; NFN input width {nfn.spec.numel}")
    print(f"{'':12} {'GMN ms':>10} {'NFN ms':>10} {'NFN/GMN':>8}")
    for label, (g, n) in rows.items():
        print(f"{label:12} {1e3 * g:10.2f} {1e3 * n:10.2f} {n / g:8.3f}")


if __name__ == "__main__":
    main()
