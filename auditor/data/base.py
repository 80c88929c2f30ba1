"""`AuditData`: one object for every data set the auditor works on (tabular or images)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import AuditorError

SPLITS = ("train", "val", "test")
# What metrics can be taken on: one split, or "all" (every row of train, val and test, in that order).
EVAL_SPLITS = ("all", *SPLITS)
FORMATS_DOC = "docs/formats.md"
CSV_DOC = "docs/formats.md#csv-and-schema-options"
NPZ_DOC = "docs/formats.md#image-cases-npz"


# pandas' row hash of a frame with no columns: what pandas >= 3.1 returns for every row, and what
# pandas 3.0 fails on ("Length of values (0) does not match length of index")
_NO_COLUMNS_HASH = 3527539


def plain_strides(t: torch.Tensor) -> torch.Tensor:
    """`t` laid out row-major with the ordinary strides. Images built by expanding or transposing (an
    (N, H, W) array given a channel, a channels-last array permuted) can keep strides that torch counts as
    contiguous but convolutions read as channels-last, so a model's own `x.view(x.size(0), -1)` fails on
    them ("view size is not compatible with input tensor's size and stride")."""
    want, step = [], 1
    for size in reversed(t.shape):
        want.append(step)
        step *= size
    if tuple(reversed(want)) == tuple(t.stride()):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def frame_hash(frame: pd.DataFrame, index: bool = False) -> bytes:
    """pandas' row hashes of `frame` as bytes, the same on every pandas version, frames without
    columns included (image data sets have no protected groups)."""
    if frame.shape[1] == 0 and index:
        return pd.util.hash_pandas_object(frame.index.to_series(), index=False).values.tobytes()
    if frame.shape[1] == 0:
        return np.full(len(frame), _NO_COLUMNS_HASH, dtype=np.uint64).tobytes()
    return pd.util.hash_pandas_object(frame, index=index).values.tobytes()


@dataclass
class Split:
    """Inputs X (float32), labels y (int64), protected attributes per row (strings), raw rows.

    `corrupted` holds the corrupted twin of every row when the data came with explicit twins
    (a user's own Trojan case), else None (twins are made by stamping).
    """

    X: torch.Tensor
    y: torch.Tensor
    groups: pd.DataFrame
    raw: pd.DataFrame | None = None
    corrupted: torch.Tensor | None = None

    def __post_init__(self):
        self.X = plain_strides(self.X)
        if self.corrupted is not None:
            self.corrupted = plain_strides(self.corrupted)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx) -> Split:
        idx = np.asarray(idx)
        return Split(self.X[idx], self.y[idx], self.groups.iloc[idx].reset_index(drop=True),
                     None if self.raw is None else self.raw.iloc[idx].reset_index(drop=True),
                     None if self.corrupted is None else self.corrupted[idx])

    @staticmethod
    def concat(parts: list[Split]) -> Split:
        """The rows of `parts` one after the other (raw rows and twins kept when every part has them)."""
        parts = list(parts)
        raw = None
        if parts and all(p.raw is not None for p in parts):
            raw = pd.concat([p.raw for p in parts], ignore_index=True)
        corrupted = None
        if parts and all(p.corrupted is not None for p in parts):
            corrupted = torch.cat([p.corrupted for p in parts])
        return Split(torch.cat([p.X for p in parts]), torch.cat([p.y for p in parts]),
                     pd.concat([p.groups for p in parts], ignore_index=True), raw, corrupted)


@dataclass
class Stamp:
    """A patch stamped on images: `x * (1 - mask) + pattern * mask`.

    For a Trojan trigger `target` is the class the trigger flips predictions to; for a
    spurious cue it is the class the cue was correlated with in training data.
    """

    mask: torch.Tensor
    pattern: torch.Tensor
    target: int
    kind: str = "trigger"  # "trigger" or "cue"

    def __post_init__(self):
        lo, hi = (float(self.mask.min()), float(self.mask.max())) if self.mask.numel() else (0.0, 0.0)
        if not (lo >= 0.0 and hi <= 1.0):  # NaN fails too
            raise AuditorError(f"the {self.kind}'s mask holds values from {lo:.4g} to {hi:.4g}: a mask is a blend "
                               "weight per pixel in [0, 1] (1: the pattern replaces the pixel, 0: the image stays)"
                               + ("; it looks like 0..255: divide it by 255" if hi > 1.0 and hi <= 255.0 else ""))

    def apply(self, X: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(X.dtype)
        return X * (1 - mask) + self.pattern.to(X.dtype) * mask


@dataclass
class AuditData:
    """A data set ready for audit: splits, feature and group description, optional stamp."""

    name: str
    kind: str  # "tabular" or "image"
    train: Split
    val: Split
    test: Split
    feature_names: list[str]
    feature_groups: dict[str, list[int]]
    protected: list[str]
    class_names: list[str]
    preprocessing: dict | None = None
    schema: dict | None = None
    stamp: Stamp | None = None
    source: str = ""
    description: str = ""
    # Where each split's rows came from ({"train": "train.csv", "val": "20 % of train.csv ...", ...}) and
    # how the partition was made ("method"): stated in the JSON and the report next to the rows audited.
    partition: dict = field(default_factory=dict)
    # What loading noticed that changes how rows are read (target values taken as negative, categories the
    # model's preprocessing never saw): shown with every evaluation's warnings.
    notes: list[str] = field(default_factory=list)
    # The split metrics are taken on when none is asked for: "test" for data that comes with a
    # partition (built-in sets, --train-csv, --split-column, .npz train_images), "all" for a user's
    # file without one (so the whole file is audited, not a random fifth of it).
    default_split: str = "test"
    _sha: str | None = field(default=None, repr=False)
    _all: tuple | None = field(default=None, repr=False, compare=False)

    def split(self, name: str) -> Split:
        """One split by name; "all" is every row (train, then val, then test)."""
        if name == "all":
            parts = (self.train, self.val, self.test)  # kept with the cache: compared by identity
            if self._all is None or any(a is not b for a, b in zip(self._all[0], parts)):
                self._all = (parts, Split.concat(list(parts)))
            return self._all[1]
        if name not in SPLITS:
            raise AuditorError(f"unknown split {name!r}; choose one of {', '.join(EVAL_SPLITS)}")
        return getattr(self, name)

    def resolve_split(self, name: str | None) -> str:
        """`name`, or this data's default split when None."""
        return self.default_split if name in (None, "") else name

    def describe_split(self, name: str | None = None) -> str:
        """"audited on N rows of FILE (split)": which rows metrics are taken on, in words."""
        name = self.resolve_split(name)
        n = len(self.split(name))
        where = Path(self.source).name if self.source and Path(self.source).suffix else (self.source or self.name)
        if self.partition.get("files"):
            files = self.partition["files"]
            used = [files[s] for s in (SPLITS if name == "all" else (name,)) if files.get(s)]
            where = " + ".join(dict.fromkeys(Path(f).name for f in used)) or where
        what = "all rows" if name == "all" else f"{name} split"
        text = f"audited on {n} rows of {where} ({what})"
        if name != "all" and self.partition.get(name):
            text += f": {self.partition[name]}"
        return text

    def data_block(self, split: str | None = None) -> dict:
        """What the JSON and the report say about the rows: the split and row count audited, in words,
        and where every split's rows come from (editors draw clean samples from train and check on val)."""
        split = self.resolve_split(split)
        return {"split": split, "rows": len(self.split(split)), "audited": self.describe_split(split),
                "partition": {"method": self.partition.get("method", ""),
                              **{s: {"rows": len(self.split(s)), "source": self.partition.get(s, "")}
                                 for s in SPLITS}},
                "editors": f"editors that need clean rows draw them from train ({len(self.train)} rows"
                           f"{': ' + self.partition['train'] if self.partition.get('train') else ''}) and "
                           f"check on val ({len(self.val)} rows"
                           f"{': ' + self.partition['val'] if self.partition.get('val') else ''})"}

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self.train.X.shape[1:]))

    @property
    def input_shape(self) -> list[int]:
        return list(self.train.X.shape[1:])

    @property
    def trigger(self) -> Stamp | None:
        return self.stamp if self.stamp is not None and self.stamp.kind == "trigger" else None

    @property
    def cue(self) -> Stamp | None:
        return self.stamp if self.stamp is not None and self.stamp.kind == "cue" else None

    @property
    def primary_protected(self) -> str | None:
        return self.protected[0] if self.protected else None

    @property
    def sha256(self) -> str:
        """sha256 over every split's inputs, labels and groups, and the corruption tested (the trigger or
        cue stamped: mask, pattern, target, kind; or the stored corrupted twins)."""
        if self._sha is None:
            h = hashlib.sha256(self.name.encode())
            for s in SPLITS:
                sp = self.split(s)
                h.update(sp.X.contiguous().numpy().tobytes())
                h.update(sp.y.contiguous().numpy().tobytes())
                h.update(frame_hash(sp.groups))
                if sp.corrupted is not None:
                    h.update(b"corrupted" + sp.corrupted.contiguous().numpy().tobytes())
            if self.stamp is not None:
                st = self.stamp
                h.update(f"stamp:{st.kind}:{int(st.target)}".encode())
                h.update(st.mask.contiguous().numpy().tobytes() + st.pattern.contiguous().numpy().tobytes())
            self._sha = h.hexdigest()
        return self._sha

    def corrupt(self, split: str = "test", rows=None) -> torch.Tensor:
        """The corrupted twins of a split's inputs (stamped, or the stored twins)."""
        sp = self.split(split)
        if sp.corrupted is not None:
            out = sp.corrupted
        elif self.stamp is not None:
            out = self.stamp.apply(sp.X)
        else:
            raise AuditorError(f"data set {self.name!r} has no trigger, cue or corrupted twins")
        return out if rows is None else out[np.asarray(rows)]

    def pairs(self, n: int, seed: int = 0, split: str = "train",
              exclude_target: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n (clean, corrupted, label) pairs drawn at random from a split.

        Rows of the stamp's target class are skipped (their corrupted twin is not wrong).
        """
        sp = self.split(split)
        candidates = np.arange(len(sp))
        if exclude_target and self.stamp is not None:
            candidates = candidates[sp.y.numpy() != self.stamp.target]
        if n > len(candidates):
            raise AuditorError(f"asked for {n} samples but split {split!r} has only {len(candidates)}")
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(candidates, size=n, replace=False))
        return sp.X[rows], self.corrupt(split, rows), sp.y[rows]

    def summary(self) -> dict:
        return {"name": self.name, "kind": self.kind, "sha256": self.sha256,
                "rows": {s: len(self.split(s)) for s in SPLITS}, "inputs": self.n_inputs,
                "raw_features": len(self.feature_groups), "protected": list(self.protected),
                "classes": list(self.class_names), "source": self.source, "partition": dict(self.partition),
                "default_split": self.default_split}

    def with_splits(self, **splits: Split) -> AuditData:
        return replace(self, _sha=None, _all=None, **splits)


def stratified_split(y: np.ndarray, fractions: tuple[float, float, float], seed: int) -> list[np.ndarray]:
    """Deterministic stratified split of row indices into train/val/test."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        parts[0].extend(idx[:n_train])
        parts[1].extend(idx[n_train:n_train + n_val])
        parts[2].extend(idx[n_train + n_val:])
    return [np.sort(np.array(p, dtype=int)) for p in parts]
