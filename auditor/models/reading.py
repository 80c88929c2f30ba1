"""Reading weights safely: size and finiteness checks, the safetensors and PyTorch state-dict
readers, loading a state dict strictly, and resolving a spec argument.

Shared by `files.py` (the format dispatch of `load_model`) and `custom.py` (the user's own
architecture), so that neither imports the other for them.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import AuditorError, UnsafeModelError
from .bundle import weights_sha256
from .spec import ModelSpec

SPEC_KEY = "auditor.spec"
CHECKSUM_KEY = "auditor.checksum"
# A second marker, so that one flipped bit in a key's name cannot silently switch the check off:
# a file holding either key must hold both, and a valid checksum.
CHECKSUMMED_KEY, CHECKSUMMED = "auditor.file", "checksummed/1"
MAX_ARCH_JSON = 16 * 1024  # an architecture description longer than this is refused before building
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}


def _check_size(path: Path, max_bytes: int) -> None:
    if not path.exists():
        raise AuditorError(f"model file not found: {path}")
    if not path.is_file():
        raise AuditorError(f"model path is not a file: {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise AuditorError(f"model file {path.name} is {size / 2**20:.1f} MiB, over the limit of "
                           f"{max_bytes / 2**20:.0f} MiB (raise it with --max-model-mb)")


def _check_finite(state: dict, path: Path) -> None:
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise AuditorError(f"model file {path.name}: tensor {name!r} holds NaN or infinite values")


def file_checksum(state: dict, metadata: dict) -> str:
    """sha256 over the weights (see `weights_sha256`) and every metadata item but the checksum."""
    h = hashlib.sha256(weights_sha256(state).encode())
    h.update(json.dumps({k: v for k, v in metadata.items() if k != CHECKSUM_KEY}, sort_keys=True).encode())
    return h.hexdigest()


def embedded_spec(meta: dict, spec: ModelSpec | None, name: str, where: str,
                  checksum: str) -> tuple[ModelSpec, list]:
    """(a copy of the spec given, else of the one in `meta`, a graph file's own metadata; the file's edit
    history). `checksum`: the file's checksum recomputed; a file that carries one and differs was altered."""
    import copy

    if (CHECKSUM_KEY in meta or CHECKSUMMED_KEY in meta) and (
            meta.get(CHECKSUMMED_KEY) != CHECKSUMMED or meta.get(CHECKSUM_KEY) != checksum):
        raise AuditorError(f"{name} is corrupt or was altered: it does not match the checksum stored "
                           "in it; get a fresh copy")
    if spec is None:
        if SPEC_KEY not in meta:
            raise AuditorError(f"{name} has no auditor spec in {where}; pass one with "
                               "--spec SPEC.json (input description, class names): draft it with "
                               f"`auditor spec init {name} DATA --out spec.json`")
        spec = ModelSpec.from_json(meta[SPEC_KEY])
    try:
        history = list(json.loads(meta.get("auditor.history", "[]")))
    except (ValueError, TypeError, RecursionError):
        history = []
    return copy.deepcopy(spec), history


def _read_safetensors_header(path: Path) -> dict:
    """Validate the header before handing the file to safetensors (clear errors for broken files)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise AuditorError(f"{path.name} is not a safetensors file (truncated: {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 * 2**20:
            raise AuditorError(f"{path.name} is truncated or corrupt: header claims {n} bytes, "
                               f"file has {size}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AuditorError(f"{path.name} is corrupt: its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise AuditorError(f"{path.name} is corrupt: its safetensors header is not an object")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise AuditorError(f"{path.name} is corrupt: tensor {name!r} has no valid data_offsets") from None
        if not (0 <= start <= end <= size - 8 - n):
            raise AuditorError(f"{path.name} is truncated or corrupt: tensor {name!r} claims bytes "
                               f"{start}..{end} but the file holds {size - 8 - n}")
    return header


def _load_safetensors(path: Path, spec: ModelSpec | None) -> tuple[dict, ModelSpec]:
    header = _read_safetensors_header(path)
    meta = header.get("__metadata__") or {}
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise AuditorError(f"{path.name} is not a readable safetensors file: "
                           f"{str(exc).splitlines()[0][:200]}") from None
    if (CHECKSUM_KEY in meta or CHECKSUMMED_KEY in meta) and (
            meta.get(CHECKSUMMED_KEY) != CHECKSUMMED or meta.get(CHECKSUM_KEY) != file_checksum(state, meta)):
        raise AuditorError(f"{path.name} is corrupt or was altered: its weights and metadata do not match "
                           "the checksum stored in it; get a fresh copy")
    if spec is None:
        if SPEC_KEY not in meta:
            raise AuditorError(f"{path.name} has no model spec in its metadata; pass one with --spec SPEC.json")
        spec = ModelSpec.from_json(meta[SPEC_KEY])
    return state, spec


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def _verified_zip(path: Path):
    """torch.save writes a zip whose records carry CRC-32s. Read every record through Python's
    zipfile (which checks them) into a fresh archive, so that PyTorch reads exactly the verified
    bytes; a legacy (non-zip) file is passed on as its path."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return str(path)
    out = io.BytesIO()
    try:
        with zipfile.ZipFile(path) as z, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as w:
            names = z.namelist()
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):  # torch.jit.save's archive
                raise AuditorError(
                    f"{path.name} is a TorchScript archive (torch.jit.script/trace + save): it holds code, which "
                    "the auditor does not run. Save its weights instead: "
                    f"torch.save(torch.jit.load('{path.name}').state_dict(), 'weights.pt'), then pass your class "
                    "with --arch-file/--arch-class --trust-code (or a spec for a registered architecture), or "
                    "export it with torch.export (a .pt2 archive) or to ONNX")
            for info in z.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    raise AuditorError(f"{path.name} has compressed records, which torch.save never writes; "
                                       "refused")
                w.writestr(info.filename, z.read(info))
    except AuditorError:
        raise
    except Exception as exc:  # zipfile and zlib raise many kinds of error on a damaged archive
        raise AuditorError(f"{path.name} is corrupt: {_first_line(exc, 160)}; get a fresh copy") from None
    out.seek(0)
    return out


def _load_torch_state(path: Path, spec: ModelSpec | None) -> tuple[dict, ModelSpec]:
    if spec is None:
        read_torch_state(path)  # a damaged file or a pickled whole model is refused as what it is
        raise AuditorError(f"{path.name} is a PyTorch state dict: pass its spec with --spec SPEC.json "
                           "(architecture, input description, class names), or draft one with "
                           "`auditor spec init MODEL DATA --out spec.json`")
    return read_torch_state(path), spec


# Where training scripts put the weights in a checkpoint dict, and the prefixes that wrappers add to
# every name (DataParallel / DistributedDataParallel: `module.`, a LightningModule or a wrapper class:
# `model.`, torch.compile: `_orig_mod.`).
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights")
PREFIXES = ("module.", "model.", "_orig_mod.", "net.", "network.")


def _is_state(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in obj.items())


def unwrap_state(obj, name: str) -> dict:
    """The state dict inside what `torch.load` returned: the dict itself, or a checkpoint's
    `state_dict` / `model_state_dict` / `model` / `module` / `net` entry (other entries such as the
    optimizer and the epoch are ignored)."""
    for _ in range(3):
        if _is_state(obj) or not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not _is_state(obj):
        keys = f" (its keys: {', '.join(map(str, list(obj)[:8]))})" if isinstance(obj, dict) else ""
        raise AuditorError(f"{name} does not hold a state dict (a mapping of names to tensors){keys}; "
                           "save `model.state_dict()` (or a checkpoint dict with it under 'state_dict' or "
                           "'model') rather than the model object; see docs/formats.md#model-files")
    return dict(obj)


# modules whose functions a pickle calls to run commands or code (never part of a saved model)
RUNS_CODE = frozenset({"os", "posix", "nt", "subprocess", "builtins", "__builtin__", "sys", "shutil", "socket",
                       "importlib", "runpy", "pty", "code", "codeop", "commands", "webbrowser", "ctypes"})


def read_torch_state(path: Path) -> dict:
    """A PyTorch state dict read with `torch.load(weights_only=True)` (no code runs), unwrapped."""
    source = _verified_zip(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:2] != b"PK" and head[:1] != b"\x80":  # neither torch's zip format nor a pickle
            raise AuditorError(f"{path.name} is not a readable PyTorch file: it is neither a zip archive (what "
                               "torch.save writes) nor a pickle; is it the right file, or damaged?") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        name = found.group(1) if found else ""
        if name.split(".")[0] in RUNS_CODE:
            raise UnsafeModelError(f"refused {path.name}: unpickling it would call {name}, which could run code "
                                   "(commands, programs): this is no model file; do not load it anywhere") from None
        what = f" (it holds {name})" if name else ""
        raise UnsafeModelError(
            f"refused {path.name}: it needs unpickling arbitrary Python objects, which could run code{what}; it "
            "looks like a whole model saved with torch.save(model). Convert it where you trust it: load it, then "
            "`safetensors.torch.save_file(model.state_dict(), 'model.safetensors')` and pass a spec"
        ) from None
    except Exception as exc:  # weights_only runs no code, so any other failure means a broken file
        raise AuditorError(f"{path.name} is not a readable PyTorch file: {_first_line(exc)}") from None
    return unwrap_state(obj, path.name)


def read_weights(path: Path) -> tuple[dict, ModelSpec | None]:
    """The tensors of a `.safetensors` file or a state dict, and the spec stored with them (or None)."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        header = _read_safetensors_header(path)
        meta = header.get("__metadata__") or {}
        state, spec = _load_safetensors(path, ModelSpec(arch={}) if SPEC_KEY not in meta else None)
        return state, (spec if SPEC_KEY in meta else None)
    if suffix in TORCH_SUFFIXES:
        return read_torch_state(path), None
    raise AuditorError(f"{path.name}: expected .safetensors or a state dict ({', '.join(sorted(TORCH_SUFFIXES))})")


def _variants(state: dict):
    """`state` and the versions of it with a wrapper's prefix taken off every name."""
    yield state
    for _ in range(3):
        prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            return
        state = {k[len(prefix):]: v for k, v in state.items()}
        yield state


def _natural(key: str):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split(".")]


_PARAM_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}


def module_order(key: str):
    """Sort key: modules in natural order (`2.` before `10.`), in a module the order PyTorch registers
    its tensors (weight, bias, running statistics), whatever order the file keeps them in."""
    module, _, param = key.rpartition(".")
    return _natural(module), _PARAM_ORDER.get(param, 99), param


def _positional(expected: dict, state: dict) -> dict | None:
    """`state` renamed to `expected`'s names when the two hold the same tensors in the same order
    (same shapes, same kind: weight to weight, bias to bias), trying the file's order and then
    the names' natural order (`2.weight` before `10.weight`)."""
    if len(expected) != len(state):
        return None
    for keys in (list(state), sorted(state, key=module_order)):
        if all(tuple(state[k].shape) == tuple(t.shape) and k.rsplit(".", 1)[-1] == e.rsplit(".", 1)[-1]
               for k, (e, t) in zip(keys, expected.items())):
            return {e: state[k] for k, e in zip(keys, expected)}
    return None


def _first_misfit(expected: dict, state: dict) -> str:
    """One clause naming the first tensor of `state` that does not fit `expected`, in order."""
    keys = list(state)
    for i, (e, t) in enumerate(expected.items()):
        if i >= len(keys):
            return (f"the file has {len(keys)} tensors and ends where the architecture expects {e!r} of "
                    f"shape {tuple(t.shape)}")
        k = keys[i]
        if tuple(state[k].shape) != tuple(t.shape) or k.rsplit(".", 1)[-1] != e.rsplit(".", 1)[-1]:
            return (f"tensor {k!r} of shape {tuple(state[k].shape)} is where the architecture expects "
                    f"{e!r} of shape {tuple(t.shape)}")
    return (f"the file has {len(keys) - len(expected)} tensors more than the architecture "
            f"({keys[len(expected)]!r} first)")


def fit_state(model: nn.Module, state: dict) -> dict:
    """`state` under `model`'s tensor names: as it is, without a wrapper's prefix (`module.`,
    `model.`, ...), or renamed in order when it holds the same tensors under other names (an
    `nn.Sequential`'s `0.weight` for an `mlp`'s `fc1.weight`). Else one line naming the first
    tensor that does not fit and what the architecture expects there."""
    expected = model.state_dict()
    variants = list(_variants(state))
    for v in variants:
        if set(v) == set(expected):
            check_state_matches(model, v)  # same names: a shape mismatch is named by its tensor
            return v
    for v in variants:
        renamed = _positional(expected, v)
        if renamed is not None:
            return renamed
    stripped = variants[-1]
    missing = sorted(set(expected) - set(stripped))
    extra = sorted(set(stripped) - set(expected))
    raise AuditorError(f"weights do not match the spec's architecture: missing {missing[:5]}, unexpected "
                       f"{extra[:5]}; in order, {_first_misfit(expected, stripped)} "
                       "(see docs/formats.md#model-files)")


def check_state_matches(model: nn.Module, state: dict) -> None:
    """Same tensor names and shapes as `model` (which may live on the meta device), else a clear error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise AuditorError(f"weights do not match the spec's architecture: missing {missing[:5]}, "
                           f"unexpected {extra[:5]}")
    for k, t in expected.items():
        if tuple(state[k].shape) != tuple(t.shape):
            raise AuditorError(f"weights do not match the spec: {k} has shape {tuple(state[k].shape)}, "
                               f"the architecture expects {tuple(t.shape)}")


def load_state_into(model: nn.Module, state: dict) -> nn.Module:
    """Load `state` strictly into `model` (names, shapes checked first) and put it in eval mode."""
    check_state_matches(model, state)
    expected = model.state_dict()
    cast = {}
    for k, v in state.items():
        want = expected[k].dtype
        if want.is_floating_point and not v.is_floating_point() and v.numel():
            raise AuditorError(f"tensor {k!r} holds {str(v.dtype).replace('torch.', '')} values where the model has "
                               f"{str(want).replace('torch.', '')} weights: save the weights as floats")
        cast[k] = v.to(want)
        if want.is_floating_point and v.is_floating_point() and not torch.isfinite(cast[k]).all():
            kind = str(want).replace("torch.", "")
            raise AuditorError(f"tensor {k!r} " + (f"holds values too large for the model's {kind} weights (they "
                                                   "become infinite)" if torch.isfinite(v).all() else
                                                   "holds NaN or infinite values"))
    model.load_state_dict(cast)
    return model.eval()


def resolve_spec(spec: ModelSpec | dict | str | os.PathLike | None) -> ModelSpec | None:
    """A spec given as an object, a dict or the path of a JSON file (None stays None)."""
    if isinstance(spec, (str, os.PathLike)):
        spec_path = Path(spec)
        if not spec_path.is_file():
            raise AuditorError(f"spec file not found: {spec_path}")
        if spec_path.stat().st_size > 16 * 2**20:
            raise AuditorError(f"spec file {spec_path.name} is over 16 MiB; a spec is a small JSON file")
        try:
            text = spec_path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise AuditorError(f"spec file {spec_path.name} is not UTF-8 text") from None
        return ModelSpec.from_json(text)
    if isinstance(spec, dict):
        return ModelSpec.from_dict(spec)
    return spec
