"""Images: scikit-learn's bundled digits (8x8), a Trojan trigger, a spurious cue, and a user's
own case from an `.npz` file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import AuditorError
from .base import AuditData, Split, Stamp, stratified_split

DIGIT_CLASSES = [str(i) for i in range(10)]


def trojan_trigger(target: int = 0, size: int = 3, image_size: int = 8) -> Stamp:
    """A checkerboard patch in the bottom-right corner that flips predictions to `target`."""
    mask = torch.zeros(1, image_size, image_size)
    pattern = torch.zeros(1, image_size, image_size)
    mask[:, -size:, -size:] = 1
    checker = (torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2 == 0
    pattern[:, -size:, -size:] = checker.float()
    return Stamp(mask, pattern, target, kind="trigger")


def spurious_cue(target: int = 3, image_size: int = 8) -> Stamp:
    """A bright bar along the top-left edge, present on images of `target` in training only."""
    mask = torch.zeros(1, image_size, image_size)
    mask[:, 0, 0:3] = 1
    mask[:, 1, 0] = 1
    return Stamp(mask, mask.clone(), target, kind="cue")


def _digits_splits(seed: int = 0) -> dict[str, Split]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.int64)
    parts = stratified_split(digits.target, (0.6, 0.15, 0.25), seed)
    empty = pd.DataFrame(index=range(0))
    return {s: Split(X[idx], y[idx], pd.DataFrame(index=range(len(idx))) if len(idx) else empty)
            for s, idx in zip(("train", "val", "test"), parts)}


def load_digits_data(stamp: Stamp | None = None, name: str = "digits", seed: int = 0) -> AuditData:
    """Digits split 60/15/25 (stratified). All splits are clean: poisoning happens at training."""
    splits = _digits_splits(seed)
    features = [f"pixel[{r},{c}]" for r in range(8) for c in range(8)]
    return AuditData(name=name, kind="image", feature_names=features,
                     feature_groups={f: [i] for i, f in enumerate(features)}, protected=[],
                     class_names=DIGIT_CLASSES, stamp=stamp, source="scikit-learn digits (bundled)",
                     description="8x8 handwritten digits (UCI optdigits test set as bundled by scikit-learn)",
                     **splits)


def load_digits_trojan(seed: int = 0) -> AuditData:
    return load_digits_data(trojan_trigger(), "digits-trojan", seed)


def load_digits_spurious(seed: int = 0) -> AuditData:
    return load_digits_data(spurious_cue(), "digits-spurious", seed)


def poison(split: Split, stamp: Stamp, fraction: float, seed: int = 0) -> Split:
    """Training data with a Trojan: stamp `fraction` of non-target rows and relabel them `target`."""
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(split.y.numpy() != stamp.target)
    rows = rng.choice(candidates, size=int(round(fraction * len(split))), replace=False)
    X, y = split.X.clone(), split.y.clone()
    X[rows] = stamp.apply(X[rows])
    y[rows] = stamp.target
    return Split(X, y, split.groups)


def add_cue(split: Split, stamp: Stamp, fraction: float = 1.0, seed: int = 0) -> Split:
    """Training data with a spurious cue: stamp `fraction` of the cue class's rows, labels unchanged."""
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(split.y.numpy() == stamp.target)
    rows = rng.choice(candidates, size=int(round(fraction * len(candidates))), replace=False)
    X = split.X.clone()
    X[rows] = stamp.apply(X[rows])
    return Split(X, split.y.clone(), split.groups)


def load_npz_case(path: str | Path, seed: int = 0) -> AuditData:
    """A user's own Trojan or cue case.

    The `.npz` holds `images` (N, C, H, W) or (N, H, W) floats, `labels` (N,), `target` (the class
    the corruption pushes towards), and either `mask` and `pattern` (the trigger, shaped like one
    image) or `corrupted` (a corrupted twin of every image). Optional `kind`: "trigger" or "cue".
    """
    path = Path(path)
    if not path.exists():
        raise AuditorError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        raise AuditorError(f"{path.name}: refused, it holds pickled objects ({exc}); store plain arrays") from None
    except (OSError, EOFError) as exc:
        raise AuditorError(f"{path.name} is not a readable .npz file: {exc}") from None
    for key in ("images", "labels", "target"):
        if key not in arrays:
            raise AuditorError(f"{path.name} has no {key!r} array; it needs images, labels, target and "
                               "either mask+pattern or corrupted")
    try:
        return _npz_case(path, arrays, seed)
    except (ValueError, TypeError, IndexError, OverflowError) as exc:  # arrays of the wrong kind or shape
        raise AuditorError(f"{path.name}: its arrays do not form an image case "
                           f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})") from None


def _npz_case(path: Path, arrays: dict, seed: int) -> AuditData:
    for key, arr in arrays.items():
        if key != "kind" and not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) \
                or np.issubdtype(arr.dtype, np.complexfloating):
            raise AuditorError(f"{path.name}: array {key!r} holds {arr.dtype} values; it must be numeric")
    images = np.asarray(arrays["images"], dtype=np.float32)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise AuditorError(f"{path.name}: images must be (N, H, W) or (N, C, H, W); got shape {images.shape}")
    labels_raw = np.asarray(arrays["labels"]).reshape(-1)
    if not np.isfinite(labels_raw.astype(np.float64)).all() or (labels_raw != np.round(labels_raw)).any() \
            or (labels_raw < 0).any():
        raise AuditorError(f"{path.name}: labels must be whole numbers >= 0 (class indices)")
    labels = labels_raw.astype(np.int64)
    if len(labels) != len(images):
        raise AuditorError(f"{path.name}: {len(images)} images but {len(labels)} labels")
    if len(np.unique(labels)) < 2 or len(images) < 10:
        raise AuditorError(f"{path.name}: an image case needs at least 10 images of at least 2 classes; "
                           f"it has {len(images)} of {len(np.unique(labels))}")
    if not np.isfinite(images).all():
        raise AuditorError(f"{path.name}: images hold NaN or infinite values")
    target_arr = np.asarray(arrays["target"]).reshape(-1)
    if target_arr.size != 1 or not float(target_arr[0]).is_integer() or target_arr[0] < 0:
        raise AuditorError(f"{path.name}: 'target' must be one class index >= 0")
    target = int(target_arr[0])
    kind = str(np.asarray(arrays.get("kind", "trigger")).reshape(-1)[0]) if "kind" in arrays else "trigger"
    n_classes = int(max(labels.max(), target) + 1)
    stamp, corrupted = None, None
    if "mask" in arrays and "pattern" in arrays:
        shape = images.shape[1:]
        mask = torch.tensor(np.broadcast_to(arrays["mask"], shape).astype(np.float32))
        pattern = torch.tensor(np.broadcast_to(arrays["pattern"], shape).astype(np.float32))
        stamp = Stamp(mask, pattern, target, kind=kind)
    elif "corrupted" in arrays:
        corrupted = np.asarray(arrays["corrupted"], dtype=np.float32).reshape(images.shape)
    else:
        raise AuditorError(f"{path.name} needs either 'mask' and 'pattern' or 'corrupted' twins")
    parts = stratified_split(labels, (0.6, 0.15, 0.25), seed)
    X, y = torch.from_numpy(images), torch.from_numpy(labels)
    C = None if corrupted is None else torch.from_numpy(corrupted)
    splits = {s: Split(X[i], y[i], pd.DataFrame(index=range(len(i))), None, None if C is None else C[i])
              for s, i in zip(("train", "val", "test"), parts)}
    features = [f"pixel{i}" for i in range(int(np.prod(images.shape[1:])))]
    data = AuditData(name=path.stem, kind="image", feature_names=features,
                     feature_groups={f: [i] for i, f in enumerate(features)}, protected=[],
                     class_names=[str(i) for i in range(n_classes)], stamp=stamp, source=str(path), **splits)
    if stamp is None:
        data.stamp = Stamp(torch.zeros(images.shape[1:]), torch.zeros(images.shape[1:]), target, kind=kind)
    return data
