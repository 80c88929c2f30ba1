"""Mistakes to fix: `Fixes` (inputs, requested labels, equivalent inputs) built from data rows.

Equivalent inputs measure generality: an edit that fixes "this image is a 3" should also fix the
same image shifted by half a pixel (linear interpolation) or with a little noise; for a tabular
row, the same row with its numeric features nudged by a small fraction of their spread
(categorical one-hot inputs are kept). Half a pixel, not one: on 8x8 digits a one-pixel shift is
not equivalent for a small CNN trained without augmentation (the shipped digits_cnn keeps its
own correct prediction on only 42-70% of one-pixel shifted test images, on 81-97% at half a
pixel, and on 99% with the noise).

    >>> from auditor.data import load_data
    >>> data = load_data("digits")
    >>> fixes = parse_fixes(["12=3", "40=7"], data)        # rows 12 and 40 of the test split
    >>> fixes.X.shape, fixes.X_equiv.shape
    (torch.Size([2, 1, 8, 8]), torch.Size([16, 1, 8, 8]))
"""
from __future__ import annotations

import numpy as np
import torch

from .data.base import EVAL_SPLITS, AuditData
from .errors import AuditorError
from .requirements import Fixes

IMAGE_SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (rows, cols): down, up, right, left by one pixel


def shift_images(X: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Images (N, C, H, W) shifted by (dy, dx) pixels; uncovered pixels are zero (the background)."""
    out = torch.zeros_like(X)
    H, W = X.shape[-2:]
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    out[..., yd, xd] = X[..., ys, xs]
    return out


def numeric_columns(data: AuditData) -> list[int]:
    """Input indices of numeric (not one-hot) features: from the stored preprocessing, else every
    input whose training values are not all 0/1."""
    prep = data.preprocessing
    if prep and prep.get("columns"):
        return sorted(i for c in prep["columns"] if c.get("type") == "numeric"
                      for i in data.feature_groups.get(c["name"], []))
    X = data.train.X.reshape(len(data.train), -1)
    binary = ((X == 0) | (X == 1)).all(0)
    return [int(i) for i in torch.nonzero(~binary).flatten()]


def equivalents(data: AuditData, X: torch.Tensor, n_noise: int = 4, noise: float | None = None,
                seed: int = 0, shift: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Equivalent copies of each row of X and the index of the row each copy came from.

    Images: shifts by `shift` pixels (0 < shift <= 1, linear interpolation) up, down, left and
    right, and `n_noise` copies with Gaussian noise (std `noise`, default 0.05 of the [0, 1]
    range), clipped to [0, 1]. Tabular: `n_noise + 4` copies whose numeric inputs move by
    Gaussian noise of `noise` (default 0.1) times their training spread.
    """
    g = torch.Generator().manual_seed(seed)
    n = len(X)
    if data.kind == "image":
        noise = 0.05 if noise is None else noise
        if not 0 < shift <= 1:
            raise AuditorError(f"shift must be in (0, 1] pixels, got {shift}")
        copies = [(1 - shift) * X + shift * shift_images(X, dy, dx) for dy, dx in IMAGE_SHIFTS]
        for _ in range(n_noise):
            copies.append((X + noise * torch.randn(X.shape, generator=g)).clamp(0.0, 1.0))
    else:
        noise = 0.1 if noise is None else noise
        cols = numeric_columns(data)
        flat = data.train.X.reshape(len(data.train), -1)
        spread = flat[:, cols].std(0) if cols else torch.zeros(0)
        copies = []
        for _ in range(n_noise + len(IMAGE_SHIFTS)):
            c = X.clone().reshape(n, -1)
            if cols:
                c[:, cols] += noise * spread * torch.randn((n, len(cols)), generator=g)
            copies.append(c.reshape(X.shape))
    X_equiv = torch.cat(copies) if copies else X[:0]
    source = torch.arange(n).repeat(len(copies))
    return X_equiv, source


def make_fixes(data: AuditData, X: torch.Tensor, y, n_noise: int = 4, noise: float | None = None,
               seed: int = 0) -> Fixes:
    """`Fixes` for inputs X with requested labels y, equivalents built automatically."""
    y = torch.as_tensor(np.asarray(y), dtype=torch.int64).reshape(-1)
    if len(y) != len(X):
        raise AuditorError(f"{len(X)} inputs but {len(y)} requested labels")
    n_classes = len(data.class_names)
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise AuditorError(f"requested labels must be class indices 0..{n_classes - 1}")
    X_equiv, source = equivalents(data, X, n_noise=n_noise, noise=noise, seed=seed)
    return Fixes(X=X, y=y, X_equiv=X_equiv, y_equiv=y[source])


def parse_label(text: str, class_names: list[str]) -> int:
    """A class name (exact match first) or a class index."""
    text = text.strip()
    if text in class_names:
        return class_names.index(text)
    try:
        idx = int(text)
    except ValueError:
        idx = -1
    if 0 <= idx < len(class_names):
        return idx
    raise AuditorError(f"unknown label {text!r}; use a class name ({', '.join(class_names)}) "
                       f"or an index 0..{len(class_names) - 1}")


def parse_fix(spec: str, data: AuditData, split: str = "test") -> tuple[str, int, int]:
    """`ROW=LABEL` or `SPLIT:ROW=LABEL` -> (split, row, label index)."""
    if "=" not in spec:
        raise AuditorError(f"bad fix {spec!r}: write ROW=LABEL, e.g. 12=3 (row 12 of the {split} split "
                           "should get label 3)")
    row_text, label_text = spec.split("=", 1)
    row_text = row_text.strip()
    if ":" in row_text:
        split, row_text = (s.strip() for s in row_text.split(":", 1))
    if split not in EVAL_SPLITS:
        raise AuditorError(f"bad fix {spec!r}: unknown split {split!r}; choose one of {', '.join(EVAL_SPLITS)}")
    n = len(data.split(split))
    try:
        row = int(row_text)
    except ValueError:
        raise AuditorError(f"bad fix {spec!r}: row {row_text!r} is not an integer index into the "
                           f"{split} split (0..{n - 1})") from None
    if not 0 <= row < n:
        raise AuditorError(f"bad fix {spec!r}: row {row} is outside the {split} split (0..{n - 1})")
    return split, row, parse_label(label_text, data.class_names)


def parse_fixes(specs: list[str], data: AuditData, split: str = "test", seed: int = 0) -> Fixes:
    """`Fixes` from specs such as `["12=3", "train:40=>50K"]` (row index into `split` unless the
    spec names one; label by class name or index), with equivalents built automatically."""
    if not specs:
        raise AuditorError("no fixes given: pass at least one ROW=LABEL")
    parsed = [parse_fix(s, data, split) for s in specs]
    X = torch.stack([data.split(sp).X[row] for sp, row, _ in parsed])
    return make_fixes(data, X, [label for _, _, label in parsed], seed=seed)
