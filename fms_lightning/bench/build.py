"""Build a cached benchmark: train every config of the grid for E epochs, once.

Layout of a benchmark folder (``<root>/<spec.name>/``)::

    meta.json                     the spec, member kwargs (and zoo recipes), build time (written last)
    hub/<member>.safetensors      starting weights W_{i,0} of each hub member
    configs/<k>/snapshots.safetensors   W_{i,e} after every epoch e = 1..E (fp16 floats), keys "<e:03d>/<name>"
    configs/<k>/metrics.json      per-epoch val_acc, val_loss, train_loss, epoch_seconds, eval_seconds (written last)

The pretrained members of the ``zoo`` hub are the same for every task, so they are also
kept in ``<root>/_zoo_members/<recipe hash>.safetensors`` and pretrained once per root.

Caches built before the snapshots were packed hold ``configs/<k>/epoch_<e:03d>.safetensors``
instead; :func:`read_snapshot` reads both.

``epoch_seconds`` is the wall time of the training loop of each epoch alone (forward,
backward and optimizer steps over the training set, 1 torch thread); ``eval_seconds`` is
the validation pass after it. Neither includes saving. Both are measured on whatever
machine built the cache, so they are only comparable within one build.

Every file is written atomically, and a config counts as done only when its
``metrics.json`` exists, so a killed build continues where it stopped. Training is a
plain seeded torch loop (SGD, as in the paper's A.4 space).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from fms_lightning.bench.spec import BenchSpec
from fms_lightning.errors import ConfigurationError
from fms_lightning.study import atomic_write

__all__ = ["build_benchmark", "task_data", "member_kwargs", "config_dir", "read_snapshot"]

_CNN_KWARGS = {"arch": "cnn", "c1": 8, "c2": 16}
_PACKED = "snapshots.safetensors"


def member_kwargs(spec: BenchSpec, member: str) -> dict[str, Any]:
    """Keyword arguments of :func:`fms_lightning.examples.hub_models.make` for a member."""
    if spec.hub == "cnn":
        return dict(_CNN_KWARGS)
    if spec.hub == "zoo":
        from fms_lightning.bench.zoo import ZOO_ARCH

        return dict(ZOO_ARCH)
    from fms_lightning.examples.digits_hub import HUB_SPEC

    return dict(HUB_SPEC[member][0])


def _pretrain_epochs(spec: BenchSpec, member: str) -> int:
    if spec.hub == "cnn":
        return int(member.rsplit("-p", 1)[1])
    from fms_lightning.examples.digits_hub import HUB_SPEC

    return int(HUB_SPEC[member][1])


def task_data(spec: BenchSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_val, y_val)`` of the target task; images `(n, 1, 8, 8)`.

    ``mirror`` and ``rotate``: a seeded split of the target half into ``n_train`` training
    images and the rest. ``fewshot``: ``shots`` mirrored images of each class for training
    (seeded), every other image of the half for validation.
    """
    from fms_lightning.examples.digits_hub import digits_split

    x, y = digits_split("target")  # mirrored left-right
    if spec.task == "rotate":
        x = np.ascontiguousarray(np.rot90(x[..., ::-1], k=1, axes=(2, 3)))  # un-mirror, then rotate 90 degrees
    if spec.task == "fewshot":
        rng = np.random.default_rng([spec.seed, 8])
        tr = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[: spec.shots] for c in range(10)]))
        va = np.setdiff1d(np.arange(len(y)), tr)
    else:
        order = np.random.default_rng([spec.seed, 7]).permutation(len(y))
        tr, va = order[: spec.n_train], order[spec.n_train :]
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
    return xt[tr], yt[tr], xt[va], yt[va]


def config_dir(root: Path, k: int) -> Path:
    """Folder of config ``k`` inside a benchmark folder."""
    return root / "configs" / f"{k:05d}"


def read_snapshot(cdir: Path, epoch: int) -> dict[str, torch.Tensor]:
    """W after ``epoch`` (>= 1) of the config in ``cdir``, as stored (fp16 floats).

    Reads the packed ``snapshots.safetensors`` (only that epoch's tensors), or the
    ``epoch_<e>.safetensors`` file of caches built before snapshots were packed.
    """
    packed = cdir / _PACKED
    if packed.is_file():
        from safetensors import safe_open

        prefix = f"{epoch:03d}/"
        with safe_open(str(packed), framework="pt") as fh:
            out = {key[len(prefix):]: fh.get_tensor(key) for key in fh.keys() if key.startswith(prefix)}
        if not out:
            raise ConfigurationError(f"{str(packed)!r} holds no snapshot of epoch {epoch}.")
        return out
    from fms_lightning.weightspace import load_state_dict_file

    return load_state_dict_file(cdir / f"epoch_{epoch:03d}.safetensors")


def _half(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + name: (t.detach().cpu().half() if t.is_floating_point() else t.detach().cpu()).contiguous()
            for name, t in state.items()}


def _save(path: Path, state: dict[str, torch.Tensor], *, half: bool) -> None:
    from safetensors.torch import save_file

    out = _half(state) if half else {n: t.detach().cpu().contiguous() for n, t in state.items()}
    atomic_write(path, lambda tmp: save_file(out, str(tmp)))


def _pretrain_member(spec: BenchSpec, member: str, index: int) -> nn.Module:
    from fms_lightning.examples.digits_hub import digits_split
    from fms_lightning.examples.hub_models import make

    seed = int(member.split("-s")[1].split("-")[0]) if spec.hub == "cnn" else index
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1000 * spec.seed + seed)
        model = make(**member_kwargs(spec, member))
    x_np, y_np = digits_split("pretrain")
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    gen = torch.Generator().manual_seed(1000 * spec.seed + seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    model.train()
    for _ in range(_pretrain_epochs(spec, member)):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def _zoo_member_state(spec: BenchSpec, index: int, root: Path) -> dict[str, torch.Tensor]:
    """A zoo member's pretrained weights, from the root's shared member cache or pretrained now."""
    import hashlib

    from fms_lightning.bench.zoo import ZOO_ARCH, pretrain_zoo_member, zoo_pretrain_data, zoo_recipe
    from fms_lightning.weightspace import load_state_dict_file

    recipe = zoo_recipe(index, seed=spec.seed)
    key = hashlib.sha1(json.dumps([recipe.to_dict(), ZOO_ARCH, spec.seed], sort_keys=True).encode()).hexdigest()
    path = root / "_zoo_members" / f"{key[:20]}.safetensors"
    if path.is_file():
        return load_state_dict_file(path)
    x_pool, y_pool, _, _ = zoo_pretrain_data(spec.seed)
    state = pretrain_zoo_member(recipe, x_pool, y_pool).state_dict()
    _save(path, state, half=False)
    return state


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.inference_mode():
        logits = model(x)
        return float((logits.argmax(-1) == y).float().mean()), float(nn.functional.cross_entropy(logits, y))


def _finetune(spec: BenchSpec, root: Path, k: int, config: dict[str, Any], data: tuple[torch.Tensor, ...]) -> None:
    from fms_lightning.examples.hub_models import make
    from fms_lightning.optim.module import set_dropout
    from fms_lightning.weightspace import load_state_dict_file

    model = make(**member_kwargs(spec, config["hub"]))
    model.load_state_dict(load_state_dict_file(root / "hub" / f"{config['hub']}.safetensors"))
    set_dropout(model, float(config["dropout"]))
    opt = torch.optim.SGD(model.parameters(), lr=float(config["lr"]), momentum=float(config["momentum"]),
                          weight_decay=float(config["weight_decay"]))
    gen = torch.Generator().manual_seed(10_007 * spec.seed + k)
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global RNG: seed it, and restore it after
        torch.manual_seed(10_007 * spec.seed + k)
        _train_epochs(spec, model, opt, gen, int(config["batch_size"]), data, config_dir(root, k), config)


def _train_epochs(spec: BenchSpec, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                  batch_size: int, data: tuple[torch.Tensor, ...], cdir: Path, config: dict[str, Any]) -> None:
    x_tr, y_tr, x_va, y_va = data
    out: dict[str, list[float]] = {"val_acc": [], "val_loss": [], "train_loss": [], "epoch_seconds": [],
                                   "eval_seconds": []}
    snapshots: dict[str, torch.Tensor] = {}
    for epoch in range(1, spec.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        for idx in torch.randperm(len(y_tr), generator=gen).split(batch_size):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        t1 = time.perf_counter()
        acc, vloss = _evaluate(model, x_va, y_va)
        out["epoch_seconds"].append(round(t1 - t0, 6))
        out["eval_seconds"].append(round(time.perf_counter() - t1, 6))
        if not np.isfinite(vloss):  # a diverged run: chance accuracy, recorded as such
            acc, vloss = 0.1, float("inf")
        out["val_acc"].append(acc)
        out["val_loss"].append(vloss if np.isfinite(vloss) else 1e9)
        out["train_loss"].append(total / max(count, 1) if np.isfinite(total) else 1e9)
        # copies: integer buffers (BatchNorm's num_batches_tracked) are live tensors that later epochs change
        state = {n: torch.nan_to_num(t) if t.is_floating_point() else t.clone() for n, t in model.state_dict().items()}
        snapshots.update(_half(state, prefix=f"{epoch:03d}/"))
    from safetensors.torch import save_file

    atomic_write(cdir / _PACKED, lambda tmp: save_file(snapshots, str(tmp)))
    payload = json.dumps({"config": config, **out})
    atomic_write(cdir / "metrics.json", lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"))


def _zoo_recipes(spec: BenchSpec, folder: Path) -> dict[str, dict[str, Any]]:
    """Each zoo member's recipe plus its accuracy on the held-out part of the pretraining half."""
    from fms_lightning.bench.zoo import zoo_pretrain_acc, zoo_pretrain_data, zoo_recipe
    from fms_lightning.examples.hub_models import make
    from fms_lightning.weightspace import load_state_dict_file

    _, _, x_held, y_held = zoo_pretrain_data(spec.seed)
    out = {}
    for i, member in enumerate(spec.members):
        model = make(**member_kwargs(spec, member))
        model.load_state_dict(load_state_dict_file(folder / "hub" / f"{member}.safetensors"))
        out[member] = {**zoo_recipe(i, seed=spec.seed).to_dict(),
                       "pretrain_val_acc": round(zoo_pretrain_acc(model, x_held, y_held), 4)}
    return out


def build_benchmark(spec: BenchSpec, root: str | Path, *, threads: int | None = 1, progress: bool = True,
                    stream: TextIO = sys.stderr) -> Path:
    """Train every config of ``spec`` and cache it under ``root/spec.name`` (resumable).

    Args:
        spec: The benchmark to build.
        root: Folder holding benchmarks.
        threads: ``torch.set_num_threads`` during the build (None: leave it unchanged).
        progress: Show a progress bar over configs.
        stream: Where progress goes.

    Returns:
        The benchmark folder.

    >>> from fms_lightning.bench.spec import bench_spec
    >>> build_benchmark(bench_spec("cnn", "mirror", "tiny"), root, progress=False)  # doctest: +SKIP
    """
    folder = Path(root) / spec.name
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        return folder
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        missing = [(i, m) for i, m in enumerate(spec.members) if not (folder / "hub" / f"{m}.safetensors").is_file()]
        members = missing
        if progress and len(missing) > 10:
            from tqdm.auto import tqdm

            members = tqdm(missing, unit="member", desc=f"pretrain {spec.name}", file=stream, dynamic_ncols=True)
        for i, member in members:
            state = (_zoo_member_state(spec, i, Path(root)) if spec.hub == "zoo"
                     else _pretrain_member(spec, member, i).state_dict())
            _save(folder / "hub" / f"{member}.safetensors", state, half=False)
        data = task_data(spec)
        configs = spec.configs()
        todo = [k for k in range(len(configs)) if not (config_dir(folder, k) / "metrics.json").is_file()]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(configs), initial=len(configs) - len(todo), unit="config",
                       desc=f"build {spec.name}", file=stream, dynamic_ncols=True)
        for k in todo:
            _finetune(spec, folder, k, configs[k], data)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    finally:
        torch.set_num_threads(old_threads)
    meta = {"spec": spec.to_dict(), "name": spec.name, "n_configs": len(spec.configs()),
            "members": {m: member_kwargs(spec, m) for m in spec.members},
            "build_seconds_last_session": round(time.perf_counter() - start, 1)}
    if spec.hub == "zoo":
        meta["recipes"] = _zoo_recipes(spec, folder)
    atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1), encoding="utf-8"))
    return folder
