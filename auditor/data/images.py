"""Images: scikit-learn's bundled digits (8x8), a Trojan trigger, a spurious cue, and a user's
own case from an `.npz` file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import AuditorError, channels_last_hint
from .base import NPZ_DOC, AuditData, Split, Stamp, stratified_split

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


# The keys an .npz case may hold (docs/formats.md, "Image cases (.npz)"): the images audited and their
# labels, the target class, the corruption (a stamp, or a corrupted twin of every image), optionally the
# user's own clean training and validation images for the editors.
NPZ_KEYS = {
    "images": "the images audited, (N, C, H, W) or (N, H, W) floats",
    "labels": "their class indices, (N,) whole numbers >= 0",
    "target": "the class the trigger/cue pushes towards, one whole number",
    "mask": "the trigger's mask, shaped like one image ((C, H, W), (H, W) or broadcastable), 1 where stamped",
    "pattern": "the trigger's pixel values where the mask is 1, shaped like mask",
    "corrupted": "instead of mask+pattern: a corrupted twin of every image, shaped like images",
    "kind": '"trigger" (default) or "cue"',
    "train_images": "optional: clean training images the editors draw samples from, shaped like images",
    "train_labels": "their labels (required with train_images)",
    "train_corrupted": "the twins of train_images (required with corrupted and train_images)",
    "val_images": "optional: validation images (with train_images), checked by editors such as dynamic-rank-one",
    "val_labels": "their labels (required with val_images)",
    "val_corrupted": "the twins of val_images (required with corrupted and val_images)",
}
NPZ_ALIASES = {"trigger_mask": "mask", "trigger_pattern": "pattern", "target_label": "target",
               "target_class": "target", "test_images": "images", "test_labels": "labels",
               "test_corrupted": "corrupted"}


def npz_keys(path: Path, arrays: dict) -> dict:
    """The arrays under their canonical names; an unknown key or a key given twice is refused."""
    out: dict = {}
    for key, arr in arrays.items():
        name = NPZ_ALIASES.get(key, key)
        if name not in NPZ_KEYS:
            raise AuditorError(f"{path.name}: unknown key {key!r}; an image case holds {', '.join(NPZ_KEYS)} "
                               f"(aliases: {', '.join(f'{a}={c}' for a, c in NPZ_ALIASES.items())}); "
                               f"see {NPZ_DOC}")
        if name in out:
            raise AuditorError(f"{path.name}: {name!r} is given twice (as {out[name][0]!r} and {key!r}); "
                               "keep one")
        out[name] = (key, arr)
    return {name: arr for name, (_, arr) in out.items()} | {"_given": {n: k for n, (k, _) in out.items()}}


SMALL_KEYS = {"target": 16, "kind": 16}  # values a scalar key may declare (anything larger is not a case)


def _npy_header(f) -> tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f, max_header_size=10_000)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f, max_header_size=10_000)
    raise ValueError(f"unsupported .npy format version {version}")


def read_npz(path: Path) -> dict:
    """The case's arrays under their canonical names (`npz_keys`), read only after every member's
    name, declared shape and dtype (its `.npy` header) and its compressed ratio (the zip header) are
    checked against the budgets (`auditor.budgets`): nothing is allocated for a member that is
    unknown, pickled, larger than its zip entry, or over a limit."""
    import zipfile

    from ..budgets import RATIO_FLOOR, BudgetError, check, limit, size_text

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise AuditorError(f"{path.name} is not a readable .npz file: {str(exc)[:200]}") from None
    with zf:
        infos = {(i.filename[:-4] if i.filename.endswith(".npy") else i.filename): i for i in zf.infolist()}
        named = npz_keys(path, infos)  # unknown or repeated keys are refused by name, before any reading
        given = named.pop("_given")
        headers, total = {}, 0
        for key, info in named.items():
            shown = given[key]
            try:
                with zf.open(info) as f:
                    shape, _fortran, dtype = _npy_header(f)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError) as exc:
                raise AuditorError(f"{path.name}: member {shown!r} is not a readable .npy array "
                                   f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})") from None
            if dtype.hasobject:
                raise AuditorError(f"{path.name}: refused, member {shown!r} holds pickled objects; store plain arrays")
            count = 1
            for d in shape:
                count *= int(d)
            data_bytes = count * dtype.itemsize
            if data_bytes > info.file_size:
                raise AuditorError(f"{path.name}: member {shown!r} declares {count} values of shape {tuple(shape)} "
                                   f"({size_text(data_bytes)}) but holds {size_text(info.file_size)}: corrupt")
            if key in SMALL_KEYS and count > SMALL_KEYS[key]:
                raise AuditorError(f"{path.name}: {shown!r} must be a single value; it declares shape {tuple(shape)}")
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > RATIO_FLOOR and ratio > limit("AUDITOR_MAX_NPZ_RATIO"):
                raise BudgetError(f"{path.name}: member {shown!r} expands {ratio:.0f} times (from "
                                  f"{size_text(info.compress_size)} to {size_text(info.file_size)}), over the limit "
                                  f"of {limit('AUDITOR_MAX_NPZ_RATIO'):g} times; raise it with AUDITOR_MAX_NPZ_RATIO "
                                  "if you trust the input")
            total += count * max(dtype.itemsize, 4)  # read, then taken as float32
            headers[key] = info
        check(f"{path.name}: the arrays {', '.join(repr(given[k]) for k in headers)}", total, "AUDITOR_MAX_NPZ_MB",
              hint="as float32")
        arrays: dict = {}
        for key, info in headers.items():
            try:
                with zf.open(info) as f:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise AuditorError(f"{path.name}: member {given[key]!r} cannot be read "
                                   f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})") from None
    return arrays | {"_given": given}


def load_npz_case(path: str | Path, seed: int = 0) -> AuditData:
    """A user's own Trojan or cue case (every key: `NPZ_KEYS`, aliases: `NPZ_ALIASES`, docs/formats.md).

    The `.npz` holds `images` (N, C, H, W) or (N, H, W) floats, `labels` (N,), `target` (the class
    the corruption pushes towards), and either `mask` and `pattern` (the trigger, shaped like one
    image) or `corrupted` (a corrupted twin of every image). Optional `kind`: "trigger" or "cue".
    With `train_images`/`train_labels` (and `val_images`/`val_labels`), `images` are the test set and
    the editors draw their clean samples from the training images; without them the images are split
    60/15/25 for the editors and metrics are taken on all of them by default.
    """
    path = Path(path)
    if not path.exists():
        raise AuditorError(f"data file not found: {path}")
    arrays = read_npz(path)
    corruption = [k for k in ("mask", "pattern", "corrupted", "trigger_mask", "trigger_pattern", "test_corrupted")
                  if k in arrays]
    for key in ("images", "labels", *(("target",) if corruption else ())):
        if key not in arrays and not (key == "target" and any(a in arrays for a in ("target_label", "target_class"))):
            raise AuditorError(f"{path.name} has no {key!r} array; it needs images and labels, and for a trigger "
                               f"or cue also target and either mask+pattern or corrupted (see {NPZ_DOC})")
    try:
        return _npz_case(path, arrays, seed)
    except AuditorError:  # already says what is wrong, and where
        raise
    except (ValueError, TypeError, IndexError, OverflowError) as exc:  # arrays of the wrong kind or shape
        raise AuditorError(f"{path.name}: its arrays do not form an image case "
                           f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); "
                           f"see {NPZ_DOC}") from None


def check_pattern_scale(path: Path, images: np.ndarray, mask: torch.Tensor, pattern: torch.Tensor, key: str) -> None:
    """Refuse a trigger/cue pattern on another scale than the images (0/1 pixels stamped on 0..255 images
    leave a near-black patch: the model never sees its trigger, and a backdoored model passes as clean)."""
    shown = pattern[mask > 0]
    if not len(shown) or not images.size:
        return
    if float(images.min()) < 0 or float(shown.min()) < 0:  # standardised: no fixed scale to compare
        return
    top, p_top = float(images.max()), float(shown.max())
    if top > 2.0 and 0 < p_top <= 1.0:
        raise AuditorError(f"{path.name}: the images go up to {top:.4g} but {key!r} only to {p_top:.4g}: the "
                           "pattern must be on the images' scale (e.g. 0..255 like the images, or the images "
                           "as floats in [0, 1] like the pattern); stamped as given, the trigger would be a "
                           "near-black patch the model never learned")
    if p_top > 2.0 and top <= 1.0:
        raise AuditorError(f"{path.name}: {key!r} goes up to {p_top:.4g} but the images only to {top:.4g}: "
                           "give the pattern on the images' scale (e.g. divided by 255)")


def _npz_images(path: Path, key: str, arr, shape=None) -> np.ndarray:
    images = np.asarray(arr, dtype=np.float32)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise AuditorError(f"{path.name}: {key} must be (N, H, W) or (N, C, H, W); got shape {tuple(images.shape)}")
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        hint = channels_last_hint(list(images.shape[1:]), list(shape))  # 'images' itself channels last?
        if hint:
            raise AuditorError(f"{path.name}: 'images' has shape {tuple(shape)} but {key} {tuple(images.shape[1:])}"
                               f"{hint.replace('these look like images stored', 'it is', 1)}")
        raise AuditorError(f"{path.name}: {key} has images of shape {tuple(images.shape[1:])}; expected "
                           f"{tuple(shape)}, the shape of the images in 'images'"
                           f"{channels_last_hint(list(shape), list(images.shape[1:]))}")
    if not np.isfinite(images).all():
        raise AuditorError(f"{path.name}: {key} hold NaN or infinite values")
    return images


def _npz_labels(path: Path, key: str, arr, n: int, images_key: str) -> np.ndarray:
    labels_raw = np.asarray(arr)
    if labels_raw.ndim != 1:
        raise AuditorError(f"{path.name}: {key} must be one class index per image, shape ({n},); got shape "
                           f"{tuple(labels_raw.shape)}")
    if not np.isfinite(labels_raw.astype(np.float64)).all() or (labels_raw != np.round(labels_raw)).any() \
            or (labels_raw < 0).any():
        raise AuditorError(f"{path.name}: {key} must be whole numbers >= 0 (class indices)")
    if len(labels_raw) != n:
        raise AuditorError(f"{path.name}: {n} {images_key} but {len(labels_raw)} {key}; expected one label per image")
    return labels_raw.astype(np.int64)


def _npz_twins(path: Path, key: str, arr, images: np.ndarray, images_key: str) -> np.ndarray:
    twins = np.asarray(arr, dtype=np.float32)
    if twins.ndim == 3 and images.shape[1] == 1:
        twins = twins[:, None]
    if twins.shape != images.shape:
        raise AuditorError(f"{path.name}: {key} has shape {tuple(twins.shape)}; expected {tuple(images.shape)}, "
                           f"one corrupted twin per image of {images_key}")
    if not np.isfinite(twins).all():
        raise AuditorError(f"{path.name}: {key} hold NaN or infinite values")
    return twins


NPZ_PARTS = {"images": "'images'", "train_images": "'train_images'", "val_images": "'val_images'"}


def _npz_case(path: Path, arrays: dict, seed: int, parts_said: dict[str, str] | None = None) -> AuditData:
    """The case from its arrays; `parts_said`: how the partition names where the images, training and
    validation images came from (`NPZ_PARTS`, the .npz keys, by default)."""
    given = arrays.pop("_given")
    for key, arr in arrays.items():
        if key != "kind" and not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) \
                or np.issubdtype(arr.dtype, np.complexfloating):
            if key.endswith("labels") and arr.dtype.kind in "US":
                names = sorted({str(v) for v in np.asarray(arr).reshape(-1)[:1000]})[:5]
                raise AuditorError(f"{path.name}: {given[key]!r} holds class names ({', '.join(map(repr, names))}, "
                                   "...); give class indices instead, 0 for the model's first output (logit 0), "
                                   "e.g. labels = [class_names.index(v) for v in labels] with class_names in the "
                                   "model's output order, and put class_names in the model spec")
            raise AuditorError(f"{path.name}: array {given[key]!r} holds {arr.dtype} values; it must be numeric")
    images = _npz_images(path, "images", arrays["images"])
    labels = _npz_labels(path, "labels", arrays["labels"], len(images), "images")
    for extra in ("train", "val"):
        have = [k for k in (f"{extra}_images", f"{extra}_labels") if k in arrays]
        if len(have) == 1:
            other = ({f"{extra}_images", f"{extra}_labels"} - set(have)).pop()
            raise AuditorError(f"{path.name}: {have[0]!r} is given without {other!r}; give both (see {NPZ_DOC})")
    if "val_images" in arrays and "train_images" not in arrays:
        raise AuditorError(f"{path.name}: 'val_images' needs 'train_images' too (see {NPZ_DOC})")
    own_train = "train_images" in arrays
    if len(np.unique(labels)) < 2 and not own_train or len(images) < (1 if own_train else 10):
        raise AuditorError(f"{path.name}: an image case needs at least 10 images of at least 2 classes; "
                           f"it has {len(images)} of {len(np.unique(labels))}")
    plain = not any(k in arrays for k in ("mask", "pattern", "corrupted"))  # images and labels: accuracy alone
    if plain and "target" in arrays:
        raise AuditorError(f"{path.name}: 'target' is given without a trigger or cue: add 'mask' and 'pattern' (or "
                           f"'corrupted' twins), or leave 'target' out to audit the images alone (see {NPZ_DOC})")
    target_arr = np.asarray(arrays.get("target", 0)).reshape(-1)
    if target_arr.size != 1 or not float(target_arr[0]).is_integer() or target_arr[0] < 0:
        raise AuditorError(f"{path.name}: {given['target']!r} must be one class index >= 0")
    target = int(target_arr[0])
    kind = str(np.asarray(arrays.get("kind", "trigger")).reshape(-1)[0]) if "kind" in arrays else "trigger"
    if kind not in ("trigger", "cue"):
        raise AuditorError(f"{path.name}: 'kind' is {kind!r}; it must be \"trigger\" (a Trojan backdoor) or \"cue\" "
                           "(a spurious cue), in lower case")
    extra_sets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for extra in ("train", "val"):
        if f"{extra}_images" in arrays:
            X_e = _npz_images(path, f"{extra}_images", arrays[f"{extra}_images"], images.shape[1:])
            extra_sets[extra] = (X_e, _npz_labels(path, f"{extra}_labels", arrays[f"{extra}_labels"], len(X_e),
                                                  f"{extra}_images"))
    all_labels = np.concatenate([labels, *(y for _, y in extra_sets.values())])
    if len(np.unique(all_labels)) < 2:
        raise AuditorError(f"{path.name}: an image case needs images of at least 2 classes")
    if own_train and len(extra_sets["train"][0]) < 2:
        raise AuditorError(f"{path.name}: train_images holds {len(extra_sets['train'][0])} image(s); give at least 2")
    n_classes = int(max(all_labels.max(), target) + 1)
    stamp, corrupted = None, None
    shape = images.shape[1:]
    if "mask" in arrays and "pattern" in arrays:
        for key in ("mask", "pattern"):
            try:
                np.broadcast_to(arrays[key], shape)
            except ValueError:
                hint = channels_last_hint(None, list(shape))  # the images, not the mask, may be the wrong way round
                if hint:
                    raise AuditorError(f"{path.name}: the images have shape {tuple(images.shape)}{hint}") from None
                raise AuditorError(f"{path.name}: {given[key]!r} has shape {tuple(np.shape(arrays[key]))}; expected "
                                   f"the shape of one image {tuple(shape)} (C, H, W), or (H, W) for every "
                                   "channel") from None
        mask = torch.tensor(np.broadcast_to(arrays["mask"], shape).astype(np.float32))
        pattern = torch.tensor(np.broadcast_to(arrays["pattern"], shape).astype(np.float32))
        check_pattern_scale(path, images, mask, pattern, given.get("pattern", "pattern"))
        try:
            stamp = Stamp(mask, pattern, target, kind=kind)
        except AuditorError as e:
            raise AuditorError(f"{path.name}: {given.get('mask', 'mask')!r}: {e}") from None
        for key in ("corrupted", "train_corrupted", "val_corrupted"):
            if key in arrays:
                raise AuditorError(f"{path.name}: give either mask+pattern or {key!r} twins, not both")
    elif "corrupted" in arrays:
        corrupted = _npz_twins(path, given["corrupted"], arrays["corrupted"], images, "images")
        for extra in extra_sets:
            if f"{extra}_corrupted" not in arrays:
                raise AuditorError(f"{path.name}: with 'corrupted' twins, {extra}_images need "
                                   f"'{extra}_corrupted' twins too (see {NPZ_DOC})")
    elif "mask" in arrays or "pattern" in arrays:
        have = "mask" if "mask" in arrays else "pattern"
        missing = "pattern" if have == "mask" else "mask"
        raise AuditorError(f"{path.name}: {given[have]!r} is given without {missing!r}; a trigger needs both "
                           f"(see {NPZ_DOC})")
    elif not plain:
        raise AuditorError(f"{path.name} needs either 'mask' and 'pattern' or 'corrupted' twins (see {NPZ_DOC})")
    for extra in ("train", "val"):
        if f"{extra}_corrupted" in arrays and (extra not in extra_sets or corrupted is None):
            raise AuditorError(f"{path.name}: {extra}_corrupted needs {extra}_images and 'corrupted' "
                               f"(see {NPZ_DOC})")
    name = path.name

    def make(X: np.ndarray, y: np.ndarray, C: np.ndarray | None) -> Split:
        return Split(torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.ascontiguousarray(y)),
                     pd.DataFrame(index=range(len(y))), None, None if C is None else torch.from_numpy(C))

    if own_train:
        train_X, train_y = extra_sets["train"]
        train_C = None if corrupted is None else _npz_twins(path, "train_corrupted", arrays["train_corrupted"],
                                                            train_X, "train_images")
        said = parts_said or NPZ_PARTS
        given = [said["train_images"], *([said["val_images"]] if "val" in extra_sets else [])]
        part = {"method": f"given in {name}: {', '.join(given)}, {said['images']} (audited)",
                "test": f"{said['images']} of {name}"}
        if "val" in extra_sets:
            val_X, val_y = extra_sets["val"]
            val_C = None if corrupted is None else _npz_twins(path, "val_corrupted", arrays["val_corrupted"],
                                                              val_X, "val_images")
            splits = {"train": make(train_X, train_y, train_C), "val": make(val_X, val_y, val_C)}
            part.update(train=f"{said['train_images']} of {name}", val=f"{said['val_images']} of {name}")
        else:
            parts = stratified_split(train_y, (0.8, 0.2, 0.0), seed)
            if len(parts[1]) == 0:  # too few to hold any out: validate on the training images themselves
                parts = [np.arange(len(train_y)), np.arange(len(train_y)), parts[2]]
                part.update(train=f"{said['train_images']} of {name}",
                            val=f"{said['train_images']} of {name} (too few to hold out)")
            else:
                part.update(train=f"80 % of {said['train_images']} of {name}",
                            val=f"20 % of {said['train_images']} of {name} (stratified, seed {seed}), held out")
            splits = {s: make(train_X[i], train_y[i], None if train_C is None else train_C[i])
                      for s, i in zip(("train", "val"), parts[:2])}
        splits["test"] = make(images, labels, corrupted)
        default_split = "test"
    else:
        parts = stratified_split(labels, (0.6, 0.15, 0.25), seed)
        splits = {s: make(images[i], labels[i], None if corrupted is None else corrupted[i])
                  for s, i in zip(("train", "val", "test"), parts)}
        lacking = "no train/ folder" if parts_said else "no train_images"
        part = {"method": f"{lacking} in {name}: its images split at random 60/15/25 (stratified, seed "
                          f"{seed}) for editors that need clean samples; metrics on all images unless --split says",
                "train": f"60 % of the images of {name}", "val": f"15 % of the images of {name}",
                "test": f"25 % of the images of {name}"}
        default_split = "all"
    features = [f"pixel{i}" for i in range(int(np.prod(images.shape[1:])))]
    data = AuditData(name=path.stem, kind="image", feature_names=features,
                     feature_groups={f: [i] for i, f in enumerate(features)}, protected=[],
                     class_names=[str(i) for i in range(n_classes)], stamp=stamp, source=str(path),
                     partition=part, default_split=default_split, **splits)
    if stamp is None and not plain:
        data.stamp = Stamp(torch.zeros(images.shape[1:]), torch.zeros(images.shape[1:]), target, kind=kind)
    return data
