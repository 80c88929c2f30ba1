"""Load and save model files without ever running code from them.

Formats: native `.safetensors` (spec in the metadata), a PyTorch state dict (`.pt`, `.pth`,
`.bin`) read with `torch.load(weights_only=True)` plus a spec. Anything that needs arbitrary
unpickling is refused.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import AuditorError, UnsafeModelError
from .architectures import build_architecture, count_parameters
from .spec import ModelSpec

SPEC_KEY = "auditor.spec"
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}


def weights_sha256(model_or_state: nn.Module | dict) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class ModelBundle:
    """A loaded model: the module, its spec, where it came from, and its weights' hash."""

    model: nn.Module
    spec: ModelSpec
    source: str = ""
    format: str = "safetensors"
    history: list = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return weights_sha256(self.model)

    @property
    def n_parameters(self) -> int:
        return count_parameters(self.model)

    @property
    def name(self) -> str:
        return Path(self.source).stem if self.source else self.spec.provenance.get("name", "model")

    def copy(self) -> "ModelBundle":
        """A deep copy: editing it never touches this bundle."""
        return ModelBundle(copy.deepcopy(self.model), copy.deepcopy(self.spec), self.source,
                           self.format, list(self.history))

    def to(self, device) -> "ModelBundle":
        self.model.to(device)
        return self


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
        raise AuditorError(f"{path.name} is not a readable safetensors file: {exc}") from None
    if spec is None:
        if SPEC_KEY not in meta:
            raise AuditorError(f"{path.name} has no model spec in its metadata; pass one with --spec SPEC.json")
        spec = ModelSpec.from_json(meta[SPEC_KEY])
    return state, spec


def _load_torch_state(path: Path, spec: ModelSpec | None) -> tuple[dict, ModelSpec]:
    if spec is None:
        raise AuditorError(f"{path.name} is a PyTorch state dict: pass its spec with --spec SPEC.json "
                           "(architecture, input description, class names)")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeModelError(
            f"refused {path.name}: it needs unpickling arbitrary Python objects, which could run code "
            f"({str(exc).splitlines()[0][:160]}). Convert it where you trust it: load it, then "
            "`safetensors.torch.save_file(model.state_dict(), 'model.safetensors')` and pass a spec"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, struct.error) as exc:
        raise AuditorError(f"{path.name} is not a readable PyTorch file: {str(exc).splitlines()[0][:200]}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AuditorError(f"{path.name} does not hold a state dict (a mapping of names to tensors); "
                           "save `model.state_dict()` rather than the model object")
    return obj, spec


def bundle_from_state(state: dict, spec: ModelSpec, source: str = "", fmt: str = "safetensors") -> ModelBundle:
    """Build the spec's architecture and load `state` into it strictly (clear error on mismatch)."""
    model = build_architecture(spec.arch)
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
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.eval()
    return ModelBundle(model, spec, source, fmt)


def load_model(path: str | os.PathLike, spec: ModelSpec | dict | str | None = None,
               max_bytes: int = DEFAULT_MAX_BYTES) -> ModelBundle:
    """Load a model file safely. `spec` (object, dict or path to JSON) overrides a stored one."""
    path = Path(path)
    _check_size(path, max_bytes)
    if isinstance(spec, (str, os.PathLike)):
        spec_path = Path(spec)
        if not spec_path.exists():
            raise AuditorError(f"spec file not found: {spec_path}")
        spec = ModelSpec.from_json(spec_path.read_text())
    elif isinstance(spec, dict):
        spec = ModelSpec.from_dict(spec)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state, spec = _load_safetensors(path, spec)
        fmt = "safetensors"
    elif suffix in TORCH_SUFFIXES:
        state, spec = _load_torch_state(path, spec)
        fmt = "torch-state-dict"
    elif suffix in LOADERS:
        return LOADERS[suffix](path, spec)
    else:
        known = sorted({".safetensors", *TORCH_SUFFIXES, *LOADERS})
        raise AuditorError(f"unknown model format {suffix or '(no suffix)'!r} for {path.name}; "
                           f"known: {', '.join(known)}")
    _check_finite(state, path)
    return bundle_from_state(state, spec, str(path), fmt)


# Extra formats (e.g. ONNX) register a loader here: suffix -> (path, spec) -> ModelBundle.
LOADERS: dict = {}


def save_model(bundle: ModelBundle, path: str | os.PathLike, extra_metadata: dict | None = None) -> Path:
    """Write one `.safetensors` file with the spec (and any provenance) in its metadata."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise AuditorError(f"models are saved as .safetensors; got {path.name}")
    state = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
    meta = {SPEC_KEY: bundle.spec.to_json()}
    for k, v in (extra_metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The string-to-string metadata of a safetensors file (spec, edit provenance)."""
    header = _read_safetensors_header(Path(path))
    return dict(header.get("__metadata__") or {})
