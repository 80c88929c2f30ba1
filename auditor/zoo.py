"""Populations ("zoos") of small MLPs trained on one task: what learned editors are trained on.

A population is a deterministic list of members: member `i` of task `adult` always has the same
architecture (depth 1-3, widths 16-64), seed, training subsample, length, learning rate and weight
decay, so any subset can be built on its own and gives bit-identical weights (training runs
single-threaded). Members are split by index into train / val / test (`split_of`): editors are
trained on `train`, tuned on `val`, and benchmarked on `test`, which editor training never reads.

Built members are cached compactly in one safetensors file per (task, split) under
`zoo_dir()` (`$AUDITOR_ZOO_DIR`, default `~/.cache/auditor/zoo`); missing members are built on
demand, in parallel across worker processes, or across ranks under `torchrun`.

    >>> from auditor.zoo import load_population
    >>> models = load_population("adult", "test", limit=4)   # builds and caches them if missing
    >>> models[0].spec.arch["hidden"], models[0].spec.provenance["val_accuracy"]

Public names (used by `benchmarks/learned.py`, the CLI and the metanet editors):
`TASKS`, `DEFAULT_SIZE`, `MemberConfig`, `member_configs(task, n_models)`, `split_of(index)`,
`split_indices(task, split, n_models)`, `load_population(task, split, n_models, limit, ...)`
-> list[ModelBundle], `build_population(task, n_models, workers, ...)`, `population_summary`,
`task_data(task)` (the AuditData the population was trained on, cached per process).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import replacing
from .backend import Callback
from .data.base import AuditData
from .errors import AuditorError
from .models import ModelBundle, ModelSpec, build_architecture
from .training import TrainConfig, train_classifier

ZOO_VERSION = 1
DEFAULT_SIZE = 320  # 256 train / 32 val / 32 test members
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class TaskFamily:
    """How members of one task's population vary."""

    data: str
    depths: tuple[int, ...] = (1, 2, 2, 3)  # sampled uniformly (so depth 2 is twice as likely)
    widths: tuple[int, ...] = (16, 32, 64)
    rows: tuple[int, ...] = (3000, 6000, 12000)  # training subsample sizes
    epochs: tuple[int, ...] = (2, 3, 5)
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    weight_decays: tuple[float, ...] = (0.0, 1e-4)
    batch_size: int = 128


TASKS: dict[str, TaskFamily] = {
    "adult": TaskFamily("adult"),
    "compas": TaskFamily("compas", widths=(8, 16, 32), rows=(1500, 2500, 3703), epochs=(10, 20, 40)),
}


@dataclass(frozen=True)
class MemberConfig:
    """Everything that determines one member's weights."""

    task: str
    index: int
    hidden: tuple[int, ...]
    seed: int
    rows: int
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int

    @property
    def split(self) -> str:
        return split_of(self.index)

    @property
    def name(self) -> str:
        return f"{self.task}-zoo-{self.index:04d}"


def split_of(index: int) -> str:
    """Members 0, 10, 20, ... are test; 5, 15, 25, ... are val; the rest train (80/10/10)."""
    r = index % 10
    return "test" if r == 0 else "val" if r == 5 else "train"


def _family(task: str) -> TaskFamily:
    if task not in TASKS:
        raise AuditorError(f"no population for task {task!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[task]


def member_config(task: str, index: int, base_seed: int = 0) -> MemberConfig:
    """Member `index` of `task`'s population (independent of the population size)."""
    fam = _family(task)
    rng = np.random.default_rng([base_seed, ZOO_VERSION, index, sum(map(ord, task))])
    depth = int(rng.choice(fam.depths))
    hidden = tuple(sorted((int(rng.choice(fam.widths)) for _ in range(depth)), reverse=True))
    return MemberConfig(task=task, index=index, hidden=hidden, seed=int(rng.integers(0, 2**31 - 1)),
                        rows=int(rng.choice(fam.rows)), epochs=int(rng.choice(fam.epochs)),
                        lr=float(rng.choice(fam.lrs)), weight_decay=float(rng.choice(fam.weight_decays)),
                        batch_size=fam.batch_size)


def member_configs(task: str, n_models: int = DEFAULT_SIZE, base_seed: int = 0) -> list[MemberConfig]:
    return [member_config(task, i, base_seed) for i in range(n_models)]


def split_indices(task: str, split: str, n_models: int = DEFAULT_SIZE) -> list[int]:
    if split not in SPLIT_NAMES and split != "all":
        raise AuditorError(f"unknown population split {split!r}; choose one of {', '.join(SPLIT_NAMES)} or all")
    _family(task)
    return [i for i in range(n_models) if split == "all" or split_of(i) == split]


# ------------------------------------------------------------------------------------------------
# data and training of one member

_DATA: dict[str, AuditData] = {}


def task_data(task: str) -> AuditData:
    """The task's data set (loaded once per process)."""
    fam = _family(task)
    if fam.data not in _DATA:
        from .data import load_data
        _DATA[fam.data] = load_data(fam.data)
    return _DATA[fam.data]


def member_spec(cfg: MemberConfig, data: AuditData, extra: dict | None = None) -> ModelSpec:
    return ModelSpec(
        arch={"name": "mlp", "in_features": data.n_inputs, "hidden": list(cfg.hidden),
              "num_classes": len(data.class_names)},
        input={"kind": "tabular", "features": data.feature_names, "feature_groups": data.feature_groups,
               "shape": [data.n_inputs], "raw_features": list(data.feature_groups)},
        class_names=data.class_names, preprocessing=data.preprocessing, data=data.name,
        provenance={"name": cfg.name, "trained_by": "auditor.zoo", "data": data.name,
                    "population": {"task": cfg.task, "version": ZOO_VERSION, "index": cfg.index,
                                   "split": cfg.split},
                    "training": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                    "protected_attributes_seen": False, **(extra or {})})


@contextlib.contextmanager
def _single_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_member(cfg: MemberConfig, data: AuditData | None = None) -> tuple[dict[str, torch.Tensor], float]:
    """Train one member deterministically; returns (state dict, validation accuracy)."""
    data = data or task_data(cfg.task)
    X, y = data.train.X, data.train.y
    g = torch.Generator().manual_seed(cfg.seed)
    rows = torch.randperm(len(X), generator=g)[:min(cfg.rows, len(X))].sort().values
    with _single_thread():
        torch.manual_seed(cfg.seed)
        model = build_architecture({"name": "mlp", "in_features": data.n_inputs, "hidden": list(cfg.hidden),
                                    "num_classes": len(data.class_names)})
        train_classifier(model, X[rows], y[rows], TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size,
                                                              lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                              seed=cfg.seed))
        with torch.no_grad():
            acc = float((model(data.val.X).argmax(1) == data.val.y).float().mean())
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, acc


def _train_indices(task: str, indices: list[int], base_seed: int) -> list[tuple[int, dict, float]]:
    """Worker entry point (top level so that spawned processes can import it)."""
    data = task_data(task)
    out = []
    for i in indices:
        state, acc = train_member(member_config(task, i, base_seed), data)
        out.append((i, state, acc))
    return out


# ------------------------------------------------------------------------------------------------
# cache

def zoo_dir() -> Path:
    return Path(os.environ.get("AUDITOR_ZOO_DIR") or Path.home() / ".cache" / "auditor" / "zoo")


def cache_path(task: str, split: str, base_seed: int = 0) -> Path:
    return zoo_dir() / f"{task}-v{ZOO_VERSION}-s{base_seed}-{split}.safetensors"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_cache(path: Path) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, float]]:
    if not path.exists():
        return {}, {}
    members: dict[int, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        for key in f.keys():
            idx, name = key.split(".", 1)
            members.setdefault(int(idx[1:]), {})[name] = f.get_tensor(key)
    accs = {int(k): float(v) for k, v in json.loads(meta.get("val_accuracy", "{}")).items()}
    return members, accs


def _write_cache(path: Path, task: str, split: str, members: dict[int, dict], accs: dict[int, float]) -> None:
    tensors = {f"m{i}.{name}": t.contiguous() for i, state in members.items() for name, t in state.items()}
    meta = {"task": task, "split": split, "version": str(ZOO_VERSION),
            "val_accuracy": json.dumps({str(i): accs[i] for i in sorted(accs)})}
    with replacing(path) as tmp:  # an unpredictable O_EXCL name beside it, never a followed link
        save_file(tensors, str(tmp), metadata=meta)


def _build_missing(task: str, indices: list[int], workers: int, base_seed: int,
                   callback: Callback) -> dict[int, tuple[dict, float]]:
    if not indices:
        return {}
    out: dict[int, tuple[dict, float]] = {}
    if workers <= 1:
        data = task_data(task)
        for n, i in enumerate(indices):
            out[i] = train_member(member_config(task, i, base_seed), data)
            callback((n + 1) / len(indices), f"trained member {i} ({n + 1}/{len(indices)})")
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    chunks = [indices[w::workers] for w in range(workers)]
    # small jobs keep the progress moving; every job trains a handful of members
    jobs = [c[j:j + 8] for c in chunks for j in range(0, len(c), 8)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_train_indices, task, job, base_seed) for job in jobs]
        for f in futures:
            for i, state, acc in f.result():
                out[i] = (state, acc)
            callback(len(out) / len(indices), f"trained {len(out)}/{len(indices)} members")
    return out


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_population(task: str, n_models: int = DEFAULT_SIZE, workers: int = 1, base_seed: int = 0,
                     splits=SPLIT_NAMES, callback: Callback | None = None,
                     limit: int | None = None) -> dict[str, int]:
    """Train every missing member of the first `n_models` (of only the first `limit` members of each
    split, when given) and cache them; returns members per split.

    Parallel over `workers` processes; under `torchrun` (an initialised process group) every rank
    trains its share and rank 0 writes the cache."""
    callback = callback or (lambda f, m: None)
    rank, world = _dist_info()
    counts = {}
    for split in splits:
        want = split_indices(task, split, n_models)[:limit]
        path = cache_path(task, split, base_seed)
        have, _ = _read_cache(path)
        missing = [i for i in want if i not in have]
        mine = missing[rank::world]
        built = _build_missing(task, mine, workers, base_seed,
                               lambda f, m, s=split: callback(f, f"{task}/{s}: {m}"))
        if world > 1:
            import torch.distributed as dist
            gathered = [None] * world
            dist.all_gather_object(gathered, built)
            built = {k: v for part in gathered for k, v in part.items()}
        if rank == 0 and built:
            with _locked(path):
                members, accs = _read_cache(path)
                for i, (state, acc) in built.items():
                    members[i], accs[i] = state, acc
                _write_cache(path, task, split, members, accs)
        if world > 1:
            import torch.distributed as dist
            dist.barrier()
        counts[split] = len(want)
    return counts


def load_population(task: str = "adult", split: str = "test", n_models: int = DEFAULT_SIZE,
                    limit: int | None = None, build: bool = True, workers: int = 1, base_seed: int = 0,
                    callback: Callback | None = None) -> list[ModelBundle]:
    """The members of one split as `ModelBundle`s (in index order), building missing ones.

    `split`: "train", "val" or "test" (test members are never read by editor training);
    `limit`: only the first `limit` members of the split. Each bundle's spec carries its
    `provenance["population"]` (index, split) and `provenance["val_accuracy"]`."""
    if split == "all":
        return [b for s in SPLIT_NAMES for b in load_population(task, s, n_models, limit, build, workers,
                                                                base_seed, callback)]
    want = split_indices(task, split, n_models)[:limit]
    path = cache_path(task, split, base_seed)
    members, accs = _read_cache(path)
    missing = [i for i in want if i not in members]
    if missing:
        if not build:
            raise AuditorError(f"population {task}/{split} is not built ({len(missing)} members missing); "
                               f"run `auditor zoo build --task {task}`")
        built = _build_missing(task, missing, workers, base_seed, callback or (lambda f, m: None))
        with _locked(path):
            members, accs = _read_cache(path)
            for i, (state, acc) in built.items():
                members[i], accs[i] = state, acc
            _write_cache(path, task, split, members, accs)
    data = task_data(task)
    out = []
    for i in want:
        cfg = member_config(task, i, base_seed)
        spec = member_spec(cfg, data, {"val_accuracy": accs.get(i)})
        model = build_architecture(spec.arch)
        model.load_state_dict(members[i])
        out.append(ModelBundle(model.eval(), spec, source=f"zoo:{cfg.name}", format="population"))
    return out


def population_summary(task: str, n_models: int = DEFAULT_SIZE, base_seed: int = 0) -> dict:
    """Per split: members wanted, members cached, mean/min/max validation accuracy, architectures."""
    out = {}
    for split in SPLIT_NAMES:
        want = split_indices(task, split, n_models)
        members, accs = _read_cache(cache_path(task, split, base_seed))
        got = [accs[i] for i in want if i in members]
        archs: dict[str, int] = {}
        for i in want:
            key = "-".join(map(str, member_config(task, i, base_seed).hidden))
            archs[key] = archs.get(key, 0) + 1
        out[split] = {"members": len(want), "cached": len(got), "path": str(cache_path(task, split, base_seed)),
                      "val_accuracy": {"mean": float(np.mean(got)), "min": float(np.min(got)),
                                       "max": float(np.max(got))} if got else None,
                      "architectures": dict(sorted(archs.items()))}
    return out


__all__ = ["DEFAULT_SIZE", "MemberConfig", "TASKS", "TaskFamily", "build_population", "cache_path",
           "load_population", "member_config", "member_configs", "population_summary", "split_indices",
           "split_of", "task_data", "train_member", "zoo_dir"]
