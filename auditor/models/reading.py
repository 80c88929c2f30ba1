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
        raise AuditorError(f"{path.name} is a PyTorch state dict: pass its spec with --spec SPEC.json "
                           "(architecture, input description, class names)")
    source = _verified_zip(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeModelError(
            f"refused {path.name}: it needs unpickling arbitrary Python objects, which could run code "
            f"({str(exc).splitlines()[0][:160]}). Convert it where you trust it: load it, then "
            "`safetensors.torch.save_file(model.state_dict(), 'model.safetensors')` and pass a spec"
        ) from None
    except Exception as exc:  # weights_only runs no code, so any other failure means a broken file
        raise AuditorError(f"{path.name} is not a readable PyTorch file: {_first_line(exc)}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AuditorError(f"{path.name} does not hold a state dict (a mapping of names to tensors); "
                           "save `model.state_dict()` rather than the model object")
    return obj, spec


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
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
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
