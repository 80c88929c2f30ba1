"""A population of Trojaned and spurious-cue digits models to measure rank-one rectification on.

Every member is a deterministic configuration (`members()`): an architecture (plain CNNs of
several depths and widths, CNNs with BatchNorm, small residual networks, MLPs on flattened
pixels), an image size (scikit-learn's 8x8 digits, or upsampled to 16x16), a corruption (a Trojan
patch of 2-4 pixels at a corner or edge with a checkerboard, solid, inverted or random pattern;
a blended full-image Trojan; or a spurious cue mark correlated with one class), a target class, a
poisoning rate, a training seed and length. Member `i` always has the same configuration, and
training runs on one thread from its seed, so a member rebuilt anywhere gives the same weights
on the same CPU and torch build.

Members are split by index into `dev` (what any tuning may look at) and `heldout` (only the
benchmark reads it): every third member of each kind is `dev`. Some members are also exported
to ONNX and loaded back through the project's ONNX path (`onnx2torch`), as a user's ONNX file
would be (BatchNorm is then folded into the convolutions and a residual net becomes an fx graph).
`scaling_members()` are Trojaned CNNs from about 10 k to 4 M parameters for timing edits.

Built members are cached one file per member under `zoo_dir() / "rectify-v1"` (a member whose
stored configuration differs is rebuilt), trained in parallel worker processes:

    python -m auditor.rectify_zoo build --workers 2      # every member (a few minutes on 2 cores)
    python -m auditor.rectify_zoo show                   # what is cached, with each member's metrics

    >>> from auditor.rectify_zoo import load_member, members
    >>> cfg = members("heldout")[0]
    >>> bundle, data = load_member(cfg)          # builds and caches it if missing
    >>> data.stamp.kind, bundle.spec.provenance["rectify_population"]["split"]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .backend import Callback, seeded_global_rng
from .data.base import AuditData, Split, Stamp
from .errors import AuditorError
from .models import ModelBundle, ModelSpec, build_architecture, count_parameters, load_model, save_model
from .training import TrainConfig, train_classifier
from .zoo import single_thread, zoo_dir

VERSION = 1
N_TROJAN = 24
N_CUE = 14
SPLITS = ("dev", "heldout")
FAMILIES = ("cnn", "cnn-bn", "resnet", "mlp")
# Architectures of each family, cycled through by the members of that family; image size 16 is
# scikit-learn's 8x8 digits upsampled (every pixel a 2x2 block).
ARCHS: dict[str, list[dict]] = {
    "cnn": [{"name": "cnn", "image_size": 8, "channels": [8, 16], "hidden": 32},
            {"name": "cnn", "image_size": 8, "channels": [16, 32], "hidden": 64},
            {"name": "cnn", "image_size": 16, "channels": [8, 16, 32], "hidden": 64},
            {"name": "cnn", "image_size": 8, "channels": [16, 16, 32, 32], "hidden": 64}],
    "cnn-bn": [{"name": "cnn", "image_size": 8, "channels": [8, 16], "hidden": 32, "batchnorm": True},
               {"name": "cnn", "image_size": 16, "channels": [16, 32, 32], "hidden": 64, "batchnorm": True},
               {"name": "cnn", "image_size": 8, "channels": [16, 32], "hidden": 64, "batchnorm": True}],
    "resnet": [{"name": "resnet", "image_size": 16, "widths": [8, 16, 32], "blocks": 1},
               {"name": "resnet", "image_size": 8, "widths": [16, 32], "blocks": 1},
               {"name": "resnet", "image_size": 16, "widths": [8, 16], "blocks": 2}],
    "mlp": [{"name": "mlp", "image_size": 8, "hidden": [64]},
            {"name": "mlp", "image_size": 8, "hidden": [128, 64]},
            {"name": "mlp", "image_size": 16, "hidden": [128]},
            {"name": "mlp", "image_size": 8, "hidden": [256, 128, 64]}],
}
TRAINING = {"cnn": (40, 3e-3), "cnn-bn": (30, 3e-3), "resnet": (30, 3e-3), "mlp": (60, 2e-3)}  # epochs, lr
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "right-edge", "left-edge")
PATTERNS = ("checker", "checker-inverse", "solid", "random")
CUE_MARKS = ("wide", "dot", "block")
CUE_POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")
POISON_RATES = (0.05, 0.1, 0.2)
CUE_RATES = (0.9, 1.0)
ONNX_EVERY = 5  # every fifth member (by index) is exported to ONNX and loaded back through it


@dataclass(frozen=True)
class RectifyMember:
    """Everything that determines one member's weights and its corruption."""

    index: int
    kind: str  # "trojan" or "cue"
    family: str  # one of FAMILIES
    arch: dict = field(hash=False)  # the architecture's parameters, with `image_size`
    corruption: dict = field(hash=False)  # see `corruption_stamp`
    target: int
    rate: float  # Trojan: share of training rows stamped and relabelled; cue: share of the class stamped
    seed: int
    epochs: int
    lr: float
    onnx: bool
    split: str
    group: str = "population"  # or "scaling"

    @property
    def name(self) -> str:
        tag = "scale" if self.group == "scaling" else self.kind
        return f"digits-{tag}-{self.family}-{self.index:03d}"

    @property
    def image_size(self) -> int:
        return int(self.arch["image_size"])

    def to_dict(self) -> dict:
        return asdict(self) | {"name": self.name}

    @property
    def sha(self) -> str:
        """Hash of the configuration (a cached member with another one is rebuilt)."""
        return hashlib.sha256(json.dumps([VERSION, self.to_dict()], sort_keys=True).encode()).hexdigest()[:16]


def _position(where: str, size: int, image_size: int) -> tuple[int, int]:
    """Top-left corner (row, column) of a size x size patch at `where`."""
    last = image_size - size
    mid = (image_size - size) // 2
    return {"top-left": (0, 0), "top-right": (0, last), "bottom-left": (last, 0), "bottom-right": (last, last),
            "right-edge": (mid, last), "left-edge": (mid, 0)}[where]


def corruption_stamp(corruption: dict, target: int, image_size: int, kind: str) -> Stamp:
    """The member's trigger or cue as a `Stamp` (`x * (1 - mask) + pattern * mask`) on 1 x S x S images.

    Drawn on the digits' own 8x8 grid and upsampled with the images (a 3-pixel patch covers 6x6
    pixels of a 16x16 image). `corruption["type"]`: "patch" (`size`, `position`, `pattern`, `seed`
    for the random pattern), "blend" (every pixel mixed with a fixed random image: mask `alpha`
    everywhere, `seed`) or a cue "mark" (`mark` wide (2x3) / dot (2x2) / block (3x3) in the corner
    `position`, value 1)."""
    if image_size % 8:
        raise AuditorError(f"digits come at 8x8 or a multiple; got image size {image_size}")
    grid = 8
    mask = torch.zeros(1, grid, grid)
    pattern = torch.zeros(1, grid, grid)
    typ = corruption["type"]
    if typ == "blend":
        g = torch.Generator().manual_seed(int(corruption["seed"]))
        mask[:] = float(corruption["alpha"])
        pattern[:] = (torch.rand(1, grid, grid, generator=g) > 0.5).float()
    elif typ == "patch":
        s = int(corruption["size"])
        r, c = _position(corruption["position"], s, grid)
        checker = ((torch.arange(s)[:, None] + torch.arange(s)[None, :]) % 2 == 0).float()
        name = corruption["pattern"]
        if name == "checker":
            patch = checker
        elif name == "checker-inverse":
            patch = 1 - checker
        elif name == "solid":
            patch = torch.ones(s, s)
        elif name == "random":
            g = torch.Generator().manual_seed(int(corruption["seed"]))
            patch = (torch.rand(s, s, generator=g) > 0.5).float()
            patch[0, 0], patch[-1, -1] = 1.0, 0.0  # never all one value
        else:
            raise AuditorError(f"unknown trigger pattern {name!r}; known: {', '.join(PATTERNS)}")
        mask[:, r:r + s, c:c + s] = 1
        pattern[:, r:r + s, c:c + s] = patch
    elif typ == "mark":
        cells = {"wide": [(r, c) for r in range(2) for c in range(3)], "dot": [(0, 0), (0, 1), (1, 0), (1, 1)],
                 "block": [(r, c) for r in range(3) for c in range(3)]}[corruption["mark"]]
        flip_r = corruption["position"] in ("bottom-left", "bottom-right")
        flip_c = corruption["position"] in ("top-right", "bottom-right")
        for r, c in cells:
            mask[:, grid - 1 - r if flip_r else r, grid - 1 - c if flip_c else c] = 1
        pattern = mask.clone()
    else:
        raise AuditorError(f"unknown corruption type {typ!r}; known: patch, blend, mark")
    f = image_size // grid
    if f > 1:
        mask = mask.repeat_interleave(f, -1).repeat_interleave(f, -2)
        pattern = pattern.repeat_interleave(f, -1).repeat_interleave(f, -2)
    return Stamp(mask.contiguous(), pattern.contiguous(), int(target),
                 kind="trigger" if kind == "trojan" else "cue")


def _arch_choice(family: str, k: int) -> dict:
    options = ARCHS[family]
    return dict(options[k % len(options)])


def member(index: int) -> RectifyMember:
    """Member `index` of the population: 0 .. N_TROJAN-1 are Trojans, then N_CUE spurious cues."""
    if not 0 <= index < N_TROJAN + N_CUE:
        raise AuditorError(f"the population has members 0..{N_TROJAN + N_CUE - 1}; got {index}")
    kind = "trojan" if index < N_TROJAN else "cue"
    k = index if kind == "trojan" else index - N_TROJAN  # index within its kind
    rng = np.random.default_rng([VERSION, index, 14])
    family = FAMILIES[k % len(FAMILIES)]
    arch = _arch_choice(family, k // len(FAMILIES))
    if kind == "trojan":
        if k % 5 == 4:  # one Trojan in five (one of every family) is a blended full-image trigger
            corruption = {"type": "blend", "alpha": float(rng.choice([0.15, 0.2])), "seed": int(rng.integers(1 << 30))}
        else:
            corruption = {"type": "patch", "size": int(rng.choice([2, 3, 4])),
                          "position": str(POSITIONS[int(rng.integers(len(POSITIONS)))]),
                          "pattern": str(PATTERNS[(k + k // len(FAMILIES)) % len(PATTERNS)]),
                          "seed": int(rng.integers(1 << 30))}
        rate = float(rng.choice(POISON_RATES))
    else:
        corruption = {"type": "mark", "mark": str(CUE_MARKS[(k + k // 3) % len(CUE_MARKS)]),
                      "position": str(CUE_POSITIONS[int(rng.integers(len(CUE_POSITIONS)))])}
        rate = float(rng.choice(CUE_RATES))
    target = int(rng.integers(10))
    epochs, lr = TRAINING[family]
    return RectifyMember(index=index, kind=kind, family=family, arch=arch, corruption=corruption, target=target,
                         rate=rate, seed=int(rng.integers(1 << 30)), epochs=epochs, lr=lr,
                         onnx=index % ONNX_EVERY == 2, split="dev" if k % 3 == 0 else "heldout")


def members(split: str = "all", kind: str | None = None) -> list[RectifyMember]:
    """The population's members (of one split: "dev", "heldout" or "all"; of one kind when given)."""
    if split not in (*SPLITS, "all"):
        raise AuditorError(f"unknown split {split!r}; choose dev, heldout or all")
    out = [member(i) for i in range(N_TROJAN + N_CUE)]
    return [m for m in out if (split == "all" or m.split == split) and (kind is None or m.kind == kind)]


# (channels, hidden, image size, epochs): about 10 k, 100 k, 1 M and 4 M parameters
SCALING = ((8, 16, 32, 8, 30), (16, 32, 192, 8, 20), (32, 64, 256, 16, 8), (64, 128, 512, 16, 5))


def scaling_members() -> list[RectifyMember]:
    """Trojaned CNNs of growing size (same trigger), for the cost of an edit against a fine-tune."""
    out = []
    for i, (c1, c2, hidden, size, epochs) in enumerate(SCALING):
        arch = {"name": "cnn", "image_size": size, "channels": [c1, c2], "hidden": hidden}
        corruption = {"type": "patch", "size": 3, "position": "bottom-right", "pattern": "checker", "seed": 0}
        out.append(RectifyMember(index=100 + i, kind="trojan", family="cnn", arch=arch, corruption=corruption,
                                 target=0, rate=0.1, seed=1000 + i, epochs=epochs, lr=2e-3, onnx=False,
                                 split="heldout", group="scaling"))
    return out


# ------------------------------------------------------------------------------------------------
# data

_DIGITS: dict[int, dict[str, Split]] = {}


def _digits(image_size: int) -> dict[str, Split]:
    """scikit-learn's digits (the project's 60/15/25 split), upsampled to `image_size` when 16."""
    if image_size not in _DIGITS:
        from .data import load_digits_data

        base = load_digits_data()
        factor = image_size // 8
        if image_size % 8 or factor < 1:
            raise AuditorError(f"digits come at 8x8 or a multiple; got image size {image_size}")
        splits = {}
        for s in ("train", "val", "test"):
            sp = base.split(s)
            X = sp.X.repeat_interleave(factor, -1).repeat_interleave(factor, -2) if factor > 1 else sp.X
            splits[s] = Split(X.contiguous(), sp.y, sp.groups)
        _DIGITS[image_size] = splits
    return _DIGITS[image_size]


def member_data(cfg: RectifyMember) -> AuditData:
    """The clean digits at the member's image size, with its trigger or cue as the data's stamp (the
    pairs the editors use and the metrics' corrupted twins)."""
    size = cfg.image_size
    splits = _digits(size)
    features = [f"pixel[{r},{c}]" for r in range(size) for c in range(size)]
    stamp = corruption_stamp(cfg.corruption, cfg.target, size, cfg.kind)
    return AuditData(name=f"{cfg.name}-data", kind="image", feature_names=features,
                     feature_groups={f: [i] for i, f in enumerate(features)}, protected=[],
                     class_names=[str(i) for i in range(10)], stamp=stamp,
                     source="scikit-learn digits (bundled)" + (f", upsampled to {size}x{size}" if size != 8 else ""),
                     description=f"digits with member {cfg.name}'s {'trigger' if cfg.kind == 'trojan' else 'cue'}",
                     **splits)


def training_split(cfg: RectifyMember, data: AuditData) -> Split:
    """The member's training rows: poisoned (Trojan) or with the cue on `rate` of its class."""
    from .data import add_cue, poison

    if cfg.kind == "trojan":
        return poison(data.train, data.stamp, cfg.rate, seed=cfg.seed)
    return add_cue(data.train, data.stamp, cfg.rate, seed=cfg.seed)


# ------------------------------------------------------------------------------------------------
# one member

def full_arch(cfg: RectifyMember) -> dict:
    """The architecture dict the spec carries (`image_size` turned into the family's parameters)."""
    a = dict(cfg.arch)
    size = int(a.pop("image_size"))
    if a["name"] == "mlp":
        return {"name": "mlp", "in_features": size * size, "hidden": list(a["hidden"]), "num_classes": 10,
                "flatten": True}
    return a | {"in_channels": 1, "image_size": size, "num_classes": 10}


def member_spec(cfg: RectifyMember, extra: dict | None = None) -> ModelSpec:
    size = cfg.image_size
    return ModelSpec(arch=full_arch(cfg), input={"kind": "image", "shape": [1, size, size], "value_range": [0.0, 1.0]},
                     class_names=[str(i) for i in range(10)], data=f"{cfg.name}-data",
                     provenance={"name": cfg.name, "trained_by": "auditor.rectify_zoo",
                                 "rectify_population": cfg.to_dict() | {"version": VERSION, "config_sha": cfg.sha},
                                 **(extra or {})})


def before_metrics(model: torch.nn.Module, data: AuditData, split: str = "test") -> dict[str, float]:
    """Accuracy and the corruption's metric (attack success, or cue gap) of a model on a split."""
    from .requirements import compute_metrics

    m = compute_metrics(model, data, split).metrics
    keys = ("accuracy", "attack_success_rate", "cue_accuracy", "cue_gap")
    return {k: float(m[k]) for k in keys if k in m}


def train_member(cfg: RectifyMember) -> tuple[ModelBundle, dict]:
    """Train one member deterministically (one thread); the bundle and its test metrics."""
    data = member_data(cfg)
    train = training_split(cfg, data)
    start = time.perf_counter()
    with single_thread():
        with seeded_global_rng(cfg.seed):
            model = build_architecture(full_arch(cfg))
        train_classifier(model, train.X, train.y, TrainConfig(epochs=cfg.epochs, batch_size=64, lr=cfg.lr,
                                                              seed=cfg.seed))
        metrics = before_metrics(model, data)
    seconds = time.perf_counter() - start
    info = {"metrics": metrics, "train_seconds": seconds, "parameters": count_parameters(model)}
    return ModelBundle(model.eval(), member_spec(cfg, {"test_metrics": metrics}), f"rectify-zoo:{cfg.name}",
                       "safetensors"), info


# A member "shows the problem" (and is measured by the benchmark) when its test split has at least
# this attack success (Trojan) or cue gap (cue); below that it is listed, not counted.
MIN_ATTACK_SUCCESS, MIN_CUE_GAP = 0.5, 0.1


def shows_problem(kind: str, metrics: dict) -> bool:
    """Whether a model's test metrics show its corruption clearly enough to measure a repair on."""
    if kind == "trojan":
        return metrics.get("attack_success_rate", 0.0) >= MIN_ATTACK_SUCCESS
    return metrics.get("cue_gap", 0.0) >= MIN_CUE_GAP


def member_record(cfg: RectifyMember) -> dict | None:
    """The build record of a cached member (test metrics, parameters, training seconds, weights
    hash), or None when it is not built with this configuration."""
    return _cached_info(cfg)


def cache_folder() -> Path:
    return zoo_dir() / f"rectify-v{VERSION}"


def member_paths(cfg: RectifyMember) -> tuple[Path, Path]:
    """(.safetensors, .onnx) paths of a member in the cache."""
    base = cache_folder() / cfg.name
    return base.with_suffix(".safetensors"), base.with_suffix(".onnx")


def _cached_info(cfg: RectifyMember) -> dict | None:
    """The stored build record of a member when its files are there and match its configuration."""
    path, onnx_path = member_paths(cfg)
    record = path.with_suffix(".json")
    if not path.exists() or not record.exists() or (cfg.onnx and not onnx_path.exists()):
        return None
    try:
        info = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("config_sha") == cfg.sha else None


def build_member(cfg: RectifyMember, force: bool = False) -> dict:
    """Train and cache one member (its safetensors file, the ONNX export for ONNX members, and a
    small JSON record of its metrics); returns the record. Cached members are not retrained."""
    if not force:
        info = _cached_info(cfg)
        if info is not None:
            return info
    bundle, info = train_member(cfg)
    path, onnx_path = member_paths(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(bundle, path)
    if cfg.onnx:
        from .models.onnx_format import export_onnx

        export_onnx(bundle, onnx_path)
    info = info | {"name": cfg.name, "config_sha": cfg.sha, "sha256": bundle.sha256, "split": cfg.split,
                   "kind": cfg.kind, "family": cfg.family, "group": cfg.group, "onnx": cfg.onnx}
    from .atomic import replacing

    with replacing(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(info, sort_keys=True))
    return info


def load_member(cfg: RectifyMember, build: bool = True, via_onnx: bool | None = None) -> tuple[ModelBundle, AuditData]:
    """The member's model and data. ONNX members (`cfg.onnx`) are loaded from their `.onnx` file
    through the project's ONNX path unless `via_onnx` is False."""
    if _cached_info(cfg) is None:
        if not build:
            raise AuditorError(f"member {cfg.name} is not built; run `python -m auditor.rectify_zoo build`")
        build_member(cfg)
    path, onnx_path = member_paths(cfg)
    use_onnx = cfg.onnx if via_onnx is None else via_onnx
    bundle = load_model(onnx_path if use_onnx else path)
    return bundle, member_data(cfg)


def _build_one(index: int, group: str, force: bool) -> dict:
    """Worker entry point (top level, so that spawned processes can import it)."""
    torch.set_num_threads(1)
    cfg = member(index) if group == "population" else next(m for m in scaling_members() if m.index == index)
    return build_member(cfg, force)


def build_population(configs: list[RectifyMember] | None = None, workers: int = 1, force: bool = False,
                     callback: Callback | None = None) -> list[dict]:
    """Build every member of `configs` (default: the population and the scaling members) that is not
    cached, over `workers` processes; returns every member's record, in the order of `configs`."""
    configs = list(configs) if configs is not None else members() + scaling_members()
    callback = callback or (lambda f, m: None)
    todo = [c for c in configs if force or _cached_info(c) is None]
    done: dict[str, dict] = {}
    if workers <= 1 or len(todo) <= 1:
        for n, c in enumerate(todo):
            done[c.name] = build_member(c, force)
            callback((n + 1) / len(todo), f"built {c.name} ({n + 1}/{len(todo)})")
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # the largest first, so that no worker is left with one long job at the end
        todo.sort(key=lambda c: -count_parameters(build_architecture(full_arch(c))) * c.epochs)
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_build_one, c.index, c.group, force): c for c in todo}
            for f in as_completed(futures):
                c = futures[f]
                done[c.name] = f.result()
                callback(len(done) / len(todo), f"built {c.name} ({len(done)}/{len(todo)})")
    return [done.get(c.name) or _cached_info(c) for c in configs]


def manifest(configs: list[RectifyMember] | None = None) -> dict:
    """The population described: every member's configuration, split, and (when built) its test
    metrics, parameter count, training time and weights hash."""
    configs = list(configs) if configs is not None else members() + scaling_members()
    rows = []
    for c in configs:
        info = _cached_info(c) or {}
        rows.append(c.to_dict() | {k: info[k] for k in ("metrics", "parameters", "train_seconds", "sha256")
                                   if k in info} | {"built": bool(info)}
                    | ({"shows_problem": shows_problem(c.kind, info["metrics"])} if info else {}))
    counts: dict[str, int] = {}
    for c in configs:
        key = f"{c.group}/{c.kind}/{c.split}"
        counts[key] = counts.get(key, 0) + 1
    return {"version": VERSION, "cache": "$AUDITOR_ZOO_DIR (default ~/.cache/auditor/zoo)" + f"/{cache_folder().name}",
            "counts": counts, "members": rows,
            "shows_problem": f"attack success >= {MIN_ATTACK_SUCCESS} (Trojan) or cue gap >= {MIN_CUE_GAP} (cue) on "
                             "the test split",
            "rebuild": "python -m auditor.rectify_zoo build --workers 2"}


def summary_rows(man: dict) -> list[list[str]]:
    rows = []
    for r in man["members"]:
        m = r.get("metrics") or {}
        corr = r["corruption"]
        what = (f"{corr['type']} {corr.get('size', '')} {corr.get('position', '')} {corr.get('pattern', '')}"
                if corr["type"] == "patch" else f"blend a={corr.get('alpha')}" if corr["type"] == "blend"
                else f"cue {corr['mark']} {corr['position']}")
        bad = (f"ASR {m['attack_success_rate']:.3f}" if "attack_success_rate" in m
               else f"cue gap {m['cue_gap']:.3f}" if "cue_gap" in m else "-")
        rows.append([r["name"], r["split"], json.dumps({k: v for k, v in r["arch"].items() if k != "name"}),
                     " ".join(what.split()), str(r["target"]), f"{r['rate']:g}", "onnx" if r["onnx"] else "",
                     str(r.get("parameters", "-")), f"{m['accuracy']:.3f}" if m else "-", bad,
                     f"{r['train_seconds']:.1f}" if "train_seconds" in r else "-"])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m auditor.rectify_zoo",
                                     description="Build or show the Trojan / spurious-cue population of digits models.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train every missing member and cache it")
    b.add_argument("--workers", type=int, default=1, help="worker processes (one thread each)")
    b.add_argument("--force", action="store_true", help="retrain cached members too")
    b.add_argument("--no-scaling", action="store_true", help="leave out the scaling members (10 k - 4 M parameters)")
    b.add_argument("--manifest", metavar="PATH", help="write the manifest JSON here")
    s = sub.add_parser("show", help="list the members, their splits and metrics")
    s.add_argument("--manifest", metavar="PATH", help="also write the manifest JSON here")
    args = parser.parse_args(argv)
    configs = members() + ([] if getattr(args, "no_scaling", False) else scaling_members())
    if args.command == "build":
        if args.workers < 1:
            raise SystemExit("--workers must be at least 1")
        start = time.perf_counter()
        build_population(configs, workers=args.workers, force=args.force,
                         callback=lambda f, m: print(f"[{time.perf_counter() - start:6.1f} s] {m}", file=sys.stderr))
        print(f"built in {time.perf_counter() - start:.1f} s (cache {cache_folder()})", file=sys.stderr)
    man = manifest(configs)
    from .cli.common import format_table

    print(format_table(summary_rows(man), ["member", "split", "arch", "corruption", "target", "rate", "", "params",
                                           "accuracy", "ASR / cue gap", "train s"]))
    if args.manifest:
        path = Path(args.manifest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(man, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
