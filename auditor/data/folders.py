"""A user's own images as files: a folder, or a .zip of one, of class subfolders (torchvision's
`ImageFolder` layout), optionally split into train/, val/ and test/, with an optional trigger.json
naming the Trojan trigger or spurious cue (docs/formats.md, "Image folders").

The files are read into the same arrays an `.npz` case holds and checked by the same code
(`images._npz_case`); what this module adds is reading them: the class of each folder, the pixels
onto the model's input scale, and the trigger's files.
"""
from __future__ import annotations

import json
import tempfile
import warnings
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..errors import AuditorError
from .base import AuditData

FOLDER_DOC = "docs/formats.md#image-folders"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
SPLIT_DIRS = ("train", "val", "test")
CASE_FILE = "trigger.json"
CASE_KEYS = {"target": "the class the trigger or cue pushes towards: a class folder's name (or its index)",
             "kind": '"trigger" (default) or "cue"',
             "mask": "an image file: white where the trigger is stamped, black elsewhere (grey blends)",
             "pattern": "an image file: the trigger's pixels (read like the images)",
             "corrupted": "instead of mask + pattern: a folder holding a corrupted twin of every image, at the "
                          "same relative path"}
MAX_ZIP_BYTES = 4 * 2**30  # what a .zip may unpack to
MAX_FILES = 500_000
_IGNORED = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}


def is_image_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() or path.suffix.lower() == ".zip"


def load_image_folder(path: str | Path, spec=None, seed: int = 0) -> AuditData:
    """The images under `path` (a folder or a .zip of one) as an image case. With a model `spec`, the
    images are read as its input (`input.shape`: channels and size; `input.value_range`: 0..255 maps
    onto it, [0, 1] by default; `input.normalize`: per-channel mean and std after that) and the class
    folders are matched to its `class_names`."""
    path = Path(path)
    if not path.exists():
        raise AuditorError(f"data not found: {path}")
    if path.is_dir():
        return _load(path, path, spec, seed)
    with tempfile.TemporaryDirectory(prefix="auditor_images_") as tmp:
        root = unpack_zip(path, Path(tmp))
        return _load(path, root, spec, seed)


def unpack_zip(path: Path, into: Path) -> Path:
    """Unpack a .zip safely (no path outside `into`, no links, bounded size) and return the folder that
    holds the images: the one top-level folder when the archive wraps everything in one."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise AuditorError(f"{path.name} is not a readable .zip archive ({exc})") from None
    with archive:
        for e in archive.infolist():
            name = PurePosixPath(e.filename.replace("\\", "/"))
            if name.is_absolute() or ".." in name.parts or (name.parts and ":" in name.parts[0]):
                raise AuditorError(f"{path.name}: entry {e.filename!r} points outside the archive; refused")
            if (e.external_attr >> 16) & 0o170000 == 0o120000:
                raise AuditorError(f"{path.name}: entry {e.filename!r} is a symbolic link; refused")
        entries = [e for e in archive.infolist() if not e.is_dir() and not _ignored(PurePosixPath(e.filename))]
        if len(entries) > MAX_FILES:
            raise AuditorError(f"{path.name} holds {len(entries)} files; at most {MAX_FILES} are read")
        if sum(e.file_size for e in entries) > MAX_ZIP_BYTES:
            raise AuditorError(f"{path.name} unpacks to more than {MAX_ZIP_BYTES // 2**30} GiB")
        for e in entries:
            name = PurePosixPath(e.filename.replace("\\", "/"))
            target = into.joinpath(*name.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(e) as src, open(target, "wb") as dst:
                left = e.file_size + 1
                while chunk := src.read(min(1 << 20, left)):
                    left -= len(chunk)
                    if left <= 0:
                        raise AuditorError(f"{path.name}: entry {e.filename!r} unpacks to more than it declares")
                    dst.write(chunk)
    if not entries:
        raise AuditorError(f"{path.name} holds no files")
    tops = [p for p in into.iterdir() if not _ignored(p)]
    if len(tops) == 1 and tops[0].is_dir() and tops[0].name not in SPLIT_DIRS:  # one folder wrapping it all
        return tops[0]
    return into


def _ignored(p: PurePosixPath | Path) -> bool:
    return any(part in _IGNORED or part.startswith(".") for part in p.parts)


def _check_budget(name: str, reader, files: dict, twins) -> None:
    """The arrays the images become (float32, the model's channels and size; twice with corrupted twins),
    before any is read: a folder of photos can be far more than memory holds."""
    from ..budgets import check

    count = sum(len(f) for per in files.values() for f in per.values())
    first = next((f[0] for per in files.values() for f in per.values() if f), None)
    if first is None:
        return
    if reader.channels is None or reader.size is None:
        reader._open(first)  # channels and size from the first image, as the reader takes them
    pixels = reader.channels * reader.size[0] * reader.size[1]
    check(f"{name}: {count:,} images of {reader.channels}x{reader.size[1]}x{reader.size[0]} pixels as float32"
          f"{' with their corrupted twins' if twins else ''}", count * pixels * 4 * (2 if twins else 1),
          "AUDITOR_MAX_IMAGES_MB", hint="or audit a sample of them: a test/ folder of a few thousand images")


def _subfolders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not _ignored(Path(p.name))), key=lambda p: p.name)


def _load(source: Path, root: Path, spec, seed: int) -> AuditData:
    from .images import _npz_case

    name = source.name
    case = _read_case(name, root)
    twins = case.get("corrupted")
    folders = [p for p in _subfolders(root) if p.name != twins]
    splits = [p.name for p in folders if p.name in SPLIT_DIRS]
    if splits:
        others = [p.name for p in folders if p.name not in SPLIT_DIRS]
        if others:
            raise AuditorError(f"{name}: it mixes split folders ({', '.join(splits)}) with other folders "
                               f"({', '.join(others[:5])}): put every class folder under train/, val/ or test/ "
                               f"(see {FOLDER_DOC})")
        if "test" not in splits:
            raise AuditorError(f"{name}: with split folders, test/ holds the images audited; it has only "
                               f"{', '.join(splits)}/ (see {FOLDER_DOC})")
        if "val" in splits and "train" not in splits:
            raise AuditorError(f"{name}: val/ needs train/ too (see {FOLDER_DOC})")
        layout = {s: root / s for s in SPLIT_DIRS if s in splits}
    else:
        layout = {"test": root}
    own = {twins, *(case.get(k) for k in ("mask", "pattern"))} - {None}  # the trigger's own files and folder
    files = {s: _class_files(name, folder, s if splits else None, skip=own) for s, folder in layout.items()}
    classes = sorted({c for per in files.values() for c in per})
    index, named, note = _class_index(name, classes, spec)
    reader = _Reader(name, spec)
    _check_budget(name, reader, files, twins)
    arrays: dict = {}
    keys = {"test": ("images", "labels"), "train": ("train_images", "train_labels"),
            "val": ("val_images", "val_labels")}
    twin_arrays: dict = {}
    for s, per in files.items():
        paths = [(f, c) for c in sorted(per) for f in per[c]]
        if not paths:
            raise AuditorError(f"{name}: {s + '/' if splits else 'the folder'} holds no image files "
                               f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        img_key, lab_key = keys[s]
        arrays[img_key] = np.stack([reader.image(f) for f, _ in paths])
        arrays[lab_key] = np.array([index[c] for _, c in paths], dtype=np.int64)
        if twins:
            twin_arrays[s] = np.stack([reader.image(_twin(name, root, twins, f)) for f, _ in paths])
    if "target" in case:
        arrays["target"] = np.array(_target(name, case["target"], index, named))
        arrays["kind"] = np.array(case.get("kind", "trigger"))
    if "mask" in case:
        arrays["mask"] = reader.mask(_case_file(name, root, case["mask"], "mask"))
        arrays["pattern"] = reader.image(_case_file(name, root, case["pattern"], "pattern"), resize=False)
    for s, arr in twin_arrays.items():
        arrays[{"test": "corrupted", "train": "train_corrupted", "val": "val_corrupted"}[s]] = arr
    arrays["_given"] = {k: k for k in arrays}
    said = {"images": "test/" if splits else "the class folders", "train_images": "train/", "val_images": "val/"}
    data = _npz_case(source, arrays, seed, said)
    n = len(data.class_names)
    data.class_names = [named[i] if i < len(named) else str(i) for i in range(n)]
    data.name = source.stem if source.suffix.lower() == ".zip" else source.name
    data.source = str(source)
    data.notes = [*reader.notes, *([note] if note else []), *data.notes]
    return data


def _class_files(name: str, folder: Path, split: str | None, skip: set = frozenset()) -> dict[str, list[Path]]:
    where = f"{split}/" if split else "the folder"
    classes = [c for c in _subfolders(folder) if split or c.name not in skip]
    loose = [f.name for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
             and (split or f.name not in skip)]
    if loose:
        raise AuditorError(f"{name}: {where} holds image files outside class folders ({', '.join(loose[:3])}); put "
                           f"each image in a folder named after its class, e.g. {split or '.'}/cat/{loose[0]} "
                           f"(see {FOLDER_DOC})")
    if not classes:
        raise AuditorError(f"{name}: {where} has no class folders; put each image in a folder named after its "
                           f"class (see {FOLDER_DOC})")
    out = {}
    for c in classes:
        out[c.name] = sorted((f for f in c.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                              and not _ignored(f.relative_to(c))), key=lambda f: f.relative_to(c).as_posix())
    return out


def _class_index(name: str, classes: list[str], spec) -> tuple[dict[str, int], list[str], str | None]:
    """Each class folder's output index, the class names by index, and a note on how they were matched."""
    own = list(getattr(spec, "class_names", None) or [])
    if own and not set(classes) & set(own) and all(c.isdigit() and int(c) < len(own) for c in classes):
        index = {c: int(c) for c in classes}
        return index, own, (f"{name}: the class folders are numbered, so folder i holds the model's class i "
                            f"({', '.join(f'{c}={own[i]}' for c, i in list(index.items())[:10])})")
    if own:
        unknown = [c for c in classes if c not in own]
        if unknown:
            raise AuditorError(f"{name}: class folder(s) {', '.join(map(repr, unknown[:5]))} are not among the "
                               f"model's classes ({', '.join(map(repr, own[:12]))}); name each folder after one of "
                               "them (the model spec's class_names)")
        return {c: own.index(c) for c in classes}, own, None
    if all(c.isdigit() for c in classes):
        index = {c: int(c) for c in classes}
        names = [str(i) for i in range(max(index.values()) + 1)]
        return index, names, None
    index = {c: i for i, c in enumerate(classes)}
    note = (f"{name}: the model names no classes, so the class folders are taken in sorted order as its outputs "
            f"({', '.join(f'{c}={i}' for c, i in list(index.items())[:10])}); put class_names in the model spec if "
            "its output order differs")
    return index, classes, note


def _read_case(name: str, root: Path) -> dict:
    file = root / CASE_FILE
    if not file.exists():
        return {}
    try:
        case = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AuditorError(f"{name}: {CASE_FILE} is not valid JSON ({exc})") from None
    if not isinstance(case, dict):
        raise AuditorError(f"{name}: {CASE_FILE} must be a JSON object with {', '.join(CASE_KEYS)}")
    unknown = sorted(set(case) - set(CASE_KEYS))
    if unknown:
        raise AuditorError(f"{name}: {CASE_FILE} has unknown key(s) {', '.join(map(repr, unknown))}; it takes "
                           + "; ".join(f"{k}: {v}" for k, v in CASE_KEYS.items()))
    has_stamp = "mask" in case or "pattern" in case
    if "target" not in case:
        raise AuditorError(f"{name}: {CASE_FILE} needs 'target' (the class the trigger or cue pushes towards)")
    if has_stamp and "corrupted" in case:
        raise AuditorError(f"{name}: {CASE_FILE} gives both mask/pattern and corrupted; give one")
    if has_stamp and not ("mask" in case and "pattern" in case):
        raise AuditorError(f"{name}: {CASE_FILE} needs both 'mask' and 'pattern' (or 'corrupted' instead)")
    if not has_stamp and "corrupted" not in case:
        raise AuditorError(f"{name}: {CASE_FILE} needs 'mask' and 'pattern' image files, or a 'corrupted' folder")
    for key in ("mask", "pattern", "corrupted", "kind"):
        if key in case and not isinstance(case[key], str):
            raise AuditorError(f"{name}: {CASE_FILE}: {key!r} must be a string")
    if "corrupted" in case and not (root / case["corrupted"]).is_dir():
        raise AuditorError(f"{name}: {CASE_FILE} names the folder {case['corrupted']!r} for the corrupted twins; "
                           "there is no such folder")
    return case


def _case_file(name: str, root: Path, rel: str, key: str) -> Path:
    file = (root / rel).resolve()
    if root.resolve() not in file.parents or not file.is_file():
        raise AuditorError(f"{name}: {CASE_FILE}: {key!r} names {rel!r}, which is not a file inside the folder")
    return file


def _twin(name: str, root: Path, twins: str, file: Path) -> Path:
    twin = root / twins / file.relative_to(root)
    if not twin.is_file():
        raise AuditorError(f"{name}: no corrupted twin of {file.relative_to(root).as_posix()}: expected "
                           f"{twin.relative_to(root).as_posix()} (every image needs one at the same path)")
    return twin


def _target(name: str, target, index: dict[str, int], named: list[str]) -> int:
    if isinstance(target, bool) or not isinstance(target, (str, int)):
        raise AuditorError(f"{name}: {CASE_FILE}: 'target' must be a class name or index")
    if isinstance(target, str) and target in index:
        return index[target]
    if isinstance(target, str) and target in named:
        return named.index(target)
    if isinstance(target, int) or target.isdigit():
        return int(target)
    raise AuditorError(f"{name}: {CASE_FILE}: 'target' is {target!r}, not a class folder "
                       f"({', '.join(map(repr, list(index)[:10]))})")


def read_onto(x, lo: float, hi: float, mean, std):
    """Pixels in [0, 1] (one image (C, H, W) or a batch (N, C, H, W), array or tensor) as the model reads
    them: onto [lo, hi] (`input.value_range`), then (x - mean[c]) / std[c] (`input.normalize`)."""
    channels = x.shape[-3]
    mean, std = (np.asarray(v, np.float32).reshape(-1, 1, 1) for v in (mean, std))
    for key, v in (("mean", mean), ("std", std)):
        if len(v) not in (1, channels):
            raise AuditorError(f"the model spec's input.normalize.{key} has {len(v)} values for "
                               f"{channels}-channel images; give one per channel (or one for all)")
    if isinstance(x, np.ndarray):
        return ((x * (hi - lo) + lo - mean) / std).astype(np.float32)
    return (x * (hi - lo) + lo - torch.from_numpy(mean)) / torch.from_numpy(std)


class MixedImageSizes(AuditorError):
    """Image files of several sizes and no `input.resize` to read them at one size."""


class _Reader:
    """Reads image files as the model's input: channels and size from the spec (else the first image),
    0..255 onto `input.value_range`, then `input.normalize` per channel."""

    def __init__(self, name: str, spec):
        inp = getattr(spec, "input", None) or {}
        shape = inp.get("shape") if inp.get("kind") == "image" else None
        self.name = name
        self.channels = int(shape[0]) if shape and len(shape) == 3 else None
        if self.channels is not None and self.channels not in _CHANNELS:
            raise AuditorError(f"the model reads {self.channels}-channel images; image files give 1, 3 or 4 channels")
        self.size = (int(shape[2]), int(shape[1])) if shape and len(shape) == 3 else None  # PIL: (width, height)
        lo, hi = inp.get("value_range") or (0.0, 1.0)
        self.lo, self.hi = float(lo), float(hi)
        norm = inp.get("normalize") or {}
        self.mean, self.std = norm.get("mean", 0.0), norm.get("std", 1.0)
        self.resize = inp.get("resize")
        if self.resize is not None and self.size is None:
            raise AuditorError("input.resize needs input.shape: the size the images are cropped to")
        self.notes: list[str] = []
        self.first: Path | None = None

    def _resized(self, img, file: Path):
        """torchvision's Resize(resize) then CenterCrop(shape): the shorter side to `resize` (an int, keeping
        the aspect) or exactly [height, width], bilinear; then the centre of the model's size."""
        from PIL import Image

        w, h = img.size
        if isinstance(self.resize, int):
            scale = self.resize / min(w, h)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
        else:
            size = (int(self.resize[1]), int(self.resize[0]))
        img = img.resize(size, Image.BILINEAR) if size != img.size else img
        (w, h), (tw, th) = img.size, self.size
        if w < tw or h < th:
            raise AuditorError(f"{self.name}: {file.name} resized to {w}x{h} pixels is smaller than the model's "
                               f"{tw}x{th}: input.resize must be at least the input's size")
        left, top = round((w - tw) / 2), round((h - th) / 2)
        return img.crop((left, top, left + tw, top + th))

    def _open(self, file: Path, resize: bool = False):
        from PIL import Image, UnidentifiedImageError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(file)
                img.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as exc:
            raise AuditorError(f"{self.name}: {file.name} cannot be read as an image ({exc})") from None
        if self.channels is None:
            grey = img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
            self.channels = 1 if grey else 3
            self.first = file
        if self.size is None:
            self.size = img.size
            self.first = self.first or file
        if resize and self.resize is not None:
            return self._resized(img, file)
        if img.size != self.size:
            whence = f"the first image, {self.first.name}," if self.first else "the model"
            how = ("the trigger's files are in the model's input size, after input.resize" if self.resize is not None
                   else "resize the images first, or give the spec input.shape and input.resize (resize, then crop "
                        "the centre, as torchvision's Resize and CenterCrop do; spec init takes them with --spec)")
            raise (AuditorError if self.resize is not None else MixedImageSizes)(
                f"{self.name}: {file.name} is {img.size[0]}x{img.size[1]} pixels; {whence} reads "
                f"{self.size[0]}x{self.size[1]}: {how}")
        return img

    def _pixels(self, img, channels: int) -> np.ndarray:
        """The image as (C, H, W) floats in [0, 1]."""
        if img.mode in ("I", "I;16", "I;16B", "I;16L") and channels == 1:
            arr = np.asarray(img, dtype=np.float64) / 65535.0
        elif img.mode == "F" and channels == 1:
            arr = np.asarray(img, dtype=np.float64)
        else:
            arr = np.asarray(img.convert(_CHANNELS[channels]), dtype=np.float64) / 255.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return arr.astype(np.float32)

    def image(self, file: Path, resize: bool = True) -> np.ndarray:
        """A data image (resized and cropped as `input.resize` says), or, with `resize=False`, one already in
        the model's size (a trigger's pattern)."""
        img = self._open(file, resize)
        return read_onto(self._pixels(img, self.channels), self.lo, self.hi, self.mean, self.std)

    def mask(self, file: Path) -> np.ndarray:
        """White (1) where the trigger is stamped, black (0) elsewhere; one channel for all, or one each."""
        img = self._open(file)
        grey = img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
        return self._pixels(img, 1 if grey or self.channels == 1 else self.channels)
