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

Tasks: `adult` and `compas` (depth 1-3, widths 8-64), `adult-wide` (depth 2-4, widths 128-512, for
size benchmarks), and a user's own population, `user-<hash12>`: built from the user's data file and
model (`register_user_population(bundle, data)`, `auditor zoo build --data my.csv --target ... --like
MODEL`), spanning the model's family (its inputs and preprocessing, depths and widths around its own,
seeds, data subsets, training lengths). A user population lives in `zoo_dir()/user-<hash12>/`: a
manifest plus a copy of the data files, keyed by the data's sha256 and the model family.

Public names (used by `benchmarks/learned.py`, the CLI and the metanet editors):
`TASKS`, `DEFAULT_SIZE`, `MemberConfig`, `member_configs(task, n_models)`, `split_of(index)`,
`split_indices(task, split, n_models)`, `load_population(task, split, n_models, limit, ...)`
-> list[ModelBundle], `build_population(task, n_models, workers, ...)`, `population_summary`,
`task_data(task)` (the AuditData the population was trained on, cached per process),
`register_user_population`, `user_populations`, `find_family_editor`, `train_hint_for`.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import replacing
from .backend import Callback, seeded_global_rng
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
    # bigger MLPs on Adult (speed-up against model size): depth 2-4, widths up to 512
    "adult-wide": TaskFamily("adult", depths=(2, 3, 4, 4), widths=(128, 256, 512), rows=(6000, 12000),
                             epochs=(2, 3)),
}
USER_PREFIX = "user-"
USER_DEFAULT_SIZE = 160  # 128 train / 16 val / 16 test members


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
    if task in TASKS:
        return TASKS[task]
    if is_user_task(task):
        fam = user_manifest(task)["family"]
        return TaskFamily(**{k: tuple(v) if isinstance(v, list) else v for k, v in fam.items()})
    raise AuditorError(f"no population for task {task!r}; known tasks: {', '.join(TASKS)}, or a population of "
                       "models like yours built from your data (`auditor zoo build --data my.csv --target COL "
                       "--like MODEL`, which prints its task name user-...)")


def default_size(task: str) -> int:
    """The population size a task is built with unless told: 320, or what its user manifest says."""
    return int(user_manifest(task)["n_models"]) if is_user_task(task) else DEFAULT_SIZE


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


def member_configs(task: str, n_models: int | None = None, base_seed: int = 0) -> list[MemberConfig]:
    return [member_config(task, i, base_seed) for i in range(n_models or default_size(task))]


def split_indices(task: str, split: str, n_models: int | None = None) -> list[int]:
    if split not in SPLIT_NAMES and split != "all":
        raise AuditorError(f"unknown population split {split!r}; choose one of {', '.join(SPLIT_NAMES)} or all")
    _family(task)
    n_models = n_models or default_size(task)
    return [i for i in range(n_models) if split == "all" or split_of(i) == split]


# ------------------------------------------------------------------------------------------------
# data and training of one member

_DATA: dict[str, AuditData] = {}


def task_data(task: str) -> AuditData:
    """The task's data set (loaded once per process)."""
    fam = _family(task)
    if fam.data not in _DATA:
        if is_user_task(task):
            _DATA[fam.data] = _load_user_data(user_manifest(task))
        else:
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
def single_thread():
    """Torch on one thread inside the block (workers share the cores)."""
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
    with single_thread():
        with seeded_global_rng(cfg.seed):
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


def build_population(task: str, n_models: int | None = None, workers: int = 1, base_seed: int = 0,
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


def load_population(task: str = "adult", split: str = "test", n_models: int | None = None,
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


def population_summary(task: str, n_models: int | None = None, base_seed: int = 0) -> dict:
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


# ------------------------------------------------------------------------------------------------
# a user's own population: models like the user's, trained on the user's data

USER_FORMAT = "auditor-user-population/1"
_MANIFESTS: dict[str, tuple[int, dict]] = {}


def is_user_task(task: str) -> bool:
    return isinstance(task, str) and task.startswith(USER_PREFIX)


def manifest_path(task: str) -> Path:
    return zoo_dir() / task / "manifest.json"


def user_manifest(task: str) -> dict:
    """The manifest of user population `task` (read once per change of the file)."""
    path = manifest_path(task)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        known = ", ".join(m["task"] for m in user_populations()) or "none yet"
        raise AuditorError(f"no user population {task!r} in {zoo_dir()} (known: {known}); build one with "
                           "`auditor zoo build --data my.csv --target COL --protected COL --like MODEL`") from None
    key = str(path)
    if key not in _MANIFESTS or _MANIFESTS[key][0] != stamp:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != USER_FORMAT:
            raise AuditorError(f"{path} is not a user population manifest ({USER_FORMAT})")
        _MANIFESTS[key] = (stamp, manifest)
    return _MANIFESTS[key][1]


def user_populations() -> list[dict]:
    """The manifests of every user population under `zoo_dir()`, newest first."""
    out = []
    for path in zoo_dir().glob(f"{USER_PREFIX}*/manifest.json"):
        with contextlib.suppress(OSError, ValueError, AuditorError):
            out.append(user_manifest(path.parent.name))
    return sorted(out, key=lambda m: m.get("created", 0), reverse=True)


def hidden_widths(model: torch.nn.Module) -> list[int]:
    """The hidden widths of an MLP (Linear and ReLU layers), or an error that says what is read."""
    from .editors.metanet.graph import mlp_layers

    try:
        layers = mlp_layers(model)
    except AuditorError as exc:
        raise AuditorError(f"a population is built of MLPs like yours, and learned editors read MLPs: {exc}") from None
    return [m.out_features for _, m in layers[:-1]]


def family_like(bundle: ModelBundle, data: AuditData, depths: tuple[int, ...] | None = None,
                widths: tuple[int, ...] | None = None) -> TaskFamily:
    """How a population of models like `bundle` on `data` varies: depths one less to one more than the
    model's (its own twice as likely, at most 4), widths half, equal and twice its widest (8 to 512, its
    own widths included), half to all of the training rows, and training lengths of about 150, 300 and
    600 optimiser steps. `depths`/`widths` override (e.g. widths up to 512 and depth 4)."""
    hidden = hidden_widths(bundle.model)
    d = len(hidden)
    if depths is None:
        depths = tuple(sorted([max(0, d - 1), d, d, min(4, d + 1)]))  # 0: a logistic regression's own depth
    if widths is None:
        w = max(hidden, default=16)
        widths = tuple(sorted({min(512, max(8, v)) for v in (w // 2, w, 2 * w, *hidden)}))
    if not depths or min(depths) < 0 or max(depths) > 8 or not widths or min(widths) < 1 or max(widths) > 4096:
        raise AuditorError(f"depths must be 0-8 hidden layers and widths 1-4096 units; got {depths}, {widths}")
    n = len(data.train)
    if n < 50:
        raise AuditorError(f"{data.name!r} has {n} training rows; a population needs at least 50")
    rows = tuple(sorted({max(32, n // 2), max(32, (3 * n) // 4), n}))
    batch = 128 if n >= 2000 else 64 if n >= 500 else 32
    mid = rows[len(rows) // 2]
    epochs = tuple(sorted({int(min(400, max(1, round(t * batch / mid)))) for t in (150, 300, 600)}))
    return TaskFamily(data="", depths=tuple(int(x) for x in depths), widths=tuple(int(x) for x in widths),
                      rows=rows, epochs=epochs, batch_size=batch)


def _data_files(data: AuditData) -> dict[str, str]:
    """role -> path of the user's files behind `data` (`source`, or `test`/`train`/`val` when given)."""
    from .data import TABULAR_BUILTIN

    part = data.partition or {}
    if part.get("arguments"):  # --train-csv (and --val-csv) given
        files = {"test": part["files"]["test"], "train": part["files"]["train"]}
        if "--val-csv" in part["arguments"]:
            files["val"] = part["files"]["val"]
        return files
    if data.source and Path(data.source).is_file():
        return {"source": data.source}
    if data.name in TABULAR_BUILTIN:
        return {}
    raise AuditorError(f"the rows of {data.name!r} come from no file that can be copied into a population; "
                       "load the data from a CSV or Parquet file")


def _load_user_data(manifest: dict) -> AuditData:
    from .data import TabularSchema, load_data
    from .models import ModelSpec

    d = manifest["data"]
    spec = ModelSpec.from_json(manifest["model"]["spec"])
    folder = zoo_dir() / manifest["task"]
    if d.get("builtin"):
        return load_data(d["builtin"], spec=spec)
    files = {role: folder / rel for role, rel in d["files"].items()}
    schema = TabularSchema(**d["schema"])
    if "source" in files:
        return load_data(files["source"], schema, spec=spec)
    return load_data(files["test"], schema, spec=spec, train=files["train"], val=files.get("val"))


def register_user_population(bundle: ModelBundle, data: AuditData, n_models: int | None = None,
                             depths: tuple[int, ...] | None = None,
                             widths: tuple[int, ...] | None = None) -> str:
    """Register (once) a population of models like `bundle` on the user's `data` and return its task name,
    `user-<hash12>` of the data's sha256 and the model family (inputs, features, hidden widths, depths
    and widths of the members). The data files are copied beside the manifest, so the population keeps
    working when the originals move; the copy is checked to load to the same rows (same sha256)."""
    import hashlib
    import shutil
    import time

    from .editors.metanet.runtime import features_digest

    if data.kind != "tabular" or len(data.class_names) != 2:
        raise AuditorError("populations for learned editors are of binary classifiers on tabular data; "
                           f"{data.name!r} is {data.kind} data with {len(data.class_names)} classes")
    fam = family_like(bundle, data, depths, widths)
    from .editors.metanet.graph import mlp_layers

    n_in = mlp_layers(bundle.model)[0][1].in_features
    if n_in != data.n_inputs:
        raise AuditorError(f"the model reads {n_in} inputs, the data has {data.n_inputs}; load the data with the "
                           "model's spec (its preprocessing) first")
    key = {"version": ZOO_VERSION, "data": data.sha256,
           "model": {"inputs": data.n_inputs, "features": features_digest(data),
                     "hidden": hidden_widths(bundle.model)},
           "family": {k: v for k, v in asdict(fam).items() if k != "data"}}
    task = USER_PREFIX + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = manifest_path(task)
    with _locked(path):
        if path.exists():
            manifest = user_manifest(task)
            if n_models and n_models > manifest["n_models"]:
                manifest["n_models"] = int(n_models)
                _write_json(path, manifest)
            return task
        files = _data_files(data)
        copied = {}
        for role, src in files.items():
            rel = Path("data") / role / Path(src).name
            (path.parent / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, path.parent / rel)
            copied[role] = str(rel)
        spec = bundle.spec
        manifest = {
            "format": USER_FORMAT, "task": task, "version": ZOO_VERSION, "created": time.time(),
            "n_models": int(n_models or USER_DEFAULT_SIZE),
            "data": {"name": data.name, "sha256": data.sha256, "features_sha": features_digest(data),
                     "n_inputs": data.n_inputs, "protected": list(data.protected), "schema": data.schema,
                     "rows": {s: len(data.split(s)) for s in SPLIT_NAMES},
                     **({"files": copied, "originals": files} if files else {"builtin": data.name})},
            "model": {"spec": spec.to_json(), "hidden": hidden_widths(bundle.model), "source": bundle.source,
                      "sha256": bundle.sha256, "name": (spec.provenance or {}).get("name")},
            "family": {**{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(fam).items()}, "data": task},
        }
        reloaded = _load_user_data(manifest)
        if reloaded.sha256 != data.sha256:
            shutil.rmtree(path.parent / "data", ignore_errors=True)
            raise AuditorError(f"the copy of {data.name!r} does not load to the same rows as the original (was the "
                               "file changed while it was read?); try again")
        _DATA[task] = reloaded
        _write_json(path, manifest)
    return task


def _write_json(path: Path, payload: dict) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))


def user_task_for(data: AuditData) -> str | None:
    """The newest user population built on exactly these rows (same sha256), or None."""
    sha = data.sha256
    return next((m["task"] for m in user_populations() if m["data"]["sha256"] == sha), None)


# ------------------------------------------------------------------------------------------------
# finding the editor trained for a family, and saying how to get one

_EDITOR_INFO: dict[str, tuple[int, dict | None]] = {}


def _editor_info(path: Path) -> dict | None:
    from .editors.metanet.runtime import FORMAT, INFO_KEY

    stamp = path.stat().st_mtime_ns
    key = str(path)
    if key not in _EDITOR_INFO or _EDITOR_INFO[key][0] != stamp:
        info = None
        with contextlib.suppress(Exception):  # a foreign or broken file is simply not a match
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("format") == FORMAT:
                info = json.loads(meta[INFO_KEY])
        _EDITOR_INFO[key] = (stamp, info)
    return _EDITOR_INFO[key][1]


def find_family_editor(data: AuditData, requirement: str) -> Path | None:
    """The first editor file on the editor search path (`auditor.editors.weights`) trained for
    `requirement` on models of `data`'s family: the same input features and the same rows (sha256 of
    the data), whatever its task is called. None when there is none."""
    from .editors.metanet.runtime import features_digest, requirement_kind
    from .editors.weights import editor_search_path

    if data.kind != "tabular":
        return None
    stem = requirement_kind(requirement).stem
    digest, sha = features_digest(data), data.sha256
    for folder in editor_search_path():
        for path in sorted(folder.glob(f"metanet_*_{stem}.safetensors")):
            info = _editor_info(path) or {}
            fam = info.get("family") or {}
            if info.get("requirement") == requirement_kind(requirement).metric and \
                    fam.get("features_sha") == digest and fam.get("data_sha") == sha:
                return path
    return None


def train_hint_for(data: AuditData, requirement: str) -> str:
    """How to get a learned editor for a user's model on `data`, as commands that work: train one on the
    population already built from these rows, or build one first (the flags filled in from the data)."""
    task = user_task_for(data)
    train = f"`auditor editor train --zoo {task or 'user-...'} --requirement {requirement}`"
    found = ("the editor it writes (to $AUDITOR_EDITOR_DIR, else ~/.auditor/editors) is then found for models "
             "of this family")
    if task:
        return f"a population of models like yours is built from these rows ({task}): train one with {train}; {found}"
    schema = data.schema or {}
    source = Path(data.source).name if data.source and Path(data.source).suffix else "your.csv"
    q = shlex.quote  # values go into a shell command (">50K" must not become a redirection)
    flags = [f"--data {q(source)}", f"--target {q(str(schema.get('target', 'COL')))}"]
    if schema.get("positive") is not None:
        flags.append(f"--positive {q(str(schema['positive']))}")
    if data.protected:
        flags.append(f"--protected {q(','.join(data.protected))}")
    for key in ("categorical", "inputs"):
        if schema.get(key):
            flags.append(f"--{key} {q(','.join(schema[key]))}")
    if schema.get("split_column"):
        flags.append(f"--split-column {q(schema['split_column'])}")
    part = data.partition or {}
    if part.get("arguments"):  # --train-csv (and --val-csv): the population trains on the training file
        flags += [q(str(a)) for a in part["arguments"]]
    return (f"build a population of models like yours from your data with `auditor zoo build {' '.join(flags)} "
            f"--like YOUR_MODEL` (with --spec for a state dict; it prints the task name), then {train}; {found} "
            "(in the dashboard: the page \"Train for this model\" does both in the background)")


__all__ = ["DEFAULT_SIZE", "USER_DEFAULT_SIZE", "MemberConfig", "TASKS", "TaskFamily", "build_population",
           "cache_path", "default_size", "family_like", "find_family_editor", "is_user_task", "load_population",
           "member_config", "member_configs", "population_summary", "register_user_population", "split_indices",
           "split_of", "task_data", "train_hint_for", "train_member", "user_manifest", "user_populations",
           "user_task_for", "zoo_dir"]
