"""Load and save model files without ever running code from them.

Formats: native `.safetensors` (spec in the metadata), a PyTorch state dict (`.pt`, `.pth`,
`.bin`) read with `torch.load(weights_only=True)` plus a spec. Anything that needs arbitrary
unpickling is refused. Extra formats (ONNX) and the user's own architectures (behind a trust
flag) live in `onnx_format.py` and `custom.py`; the safe readers and checks that this module and
`custom.py` share live in `reading.py`, `ModelBundle` in `bundle.py` (so `custom.py` never imports
this module, which imports it lazily).

Files written by `save_model` carry a checksum over weights and metadata (`auditor.checksum`),
so a flipped bit anywhere in them is an error rather than a silently different model.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import AuditorError
from .adapters import build_model, check_adapters_saveable
from .architectures import ARCHITECTURES
from .bundle import ModelBundle, weights_sha256
from .precision import half_dtype, state_in, stored_float_dtype
from .reading import (
    CHECKSUM_KEY,
    CHECKSUMMED,
    CHECKSUMMED_KEY,
    DEFAULT_MAX_BYTES,
    MAX_ARCH_JSON,
    SPEC_KEY,
    TORCH_SUFFIXES,
    _check_finite,
    _check_size,
    _load_safetensors,
    _load_torch_state,
    _read_safetensors_header,
    check_state_matches,
    file_checksum,
    fit_state,
    load_state_into,
    resolve_spec,
)
from .spec import ModelSpec

# Re-exported: callers import these from here (the readers live in `reading.py`, which `custom.py`
# shares without importing this module).
__all__ = ["CHECKSUM_KEY", "CHECKSUMMED", "CHECKSUMMED_KEY", "DEFAULT_MAX_BYTES", "LOADERS", "MAX_ARCH_JSON",
           "SAVERS", "SAVE_CHECKS", "SPEC_KEY", "TORCH_SUFFIXES", "ModelBundle", "bundle_from_state", "check_saveable",
           "check_state_matches", "fit_state", "model_suffixes",
           "file_checksum", "load_model", "load_state_into", "read_metadata", "resolve_spec", "save_model",
           "weights_sha256"]


def _custom_arch_hint(arch) -> str | None:
    if isinstance(arch, dict) and arch.get("name") == "custom":
        return (f"this model's architecture is your own code (class {arch.get('class', '?')!r} in "
                f"{arch.get('file', '?')!r}); load it with --trust-code --arch-file FILE.py --arch-class NAME")
    if isinstance(arch, dict) and arch.get("name") == "onnx":
        return "this model's architecture is an ONNX graph; save and load it as .onnx"
    if isinstance(arch, dict) and arch.get("name") == "pt2":
        return "this model's architecture is a torch.export program; save and load it as .pt2"
    return None


def bundle_from_state(state: dict, spec: ModelSpec, source: str = "", fmt: str = "safetensors") -> ModelBundle:
    """Build the spec's architecture and load `state` into it strictly (clear error on mismatch).

    Shapes are checked on a skeleton on the meta device first, so a spec that claims a huge
    architecture fails before any memory is allocated.
    """
    hint = _custom_arch_hint(spec.arch)
    if hint:
        raise AuditorError(hint)
    if len(json.dumps(spec.arch, default=str)) > MAX_ARCH_JSON:
        raise AuditorError(f"model spec: the architecture description is over {MAX_ARCH_JSON} characters; "
                           "refused as implausible")
    if spec.arch.get("name") == "sequential" and "layers" not in spec.arch:
        from .infer import infer_layers

        layers, _ = infer_layers(state, spec.input.get("shape") or
                                 ([spec.arch["in_features"]] if spec.arch.get("in_features") else None))
        spec = copy.deepcopy(spec)
        spec.arch["layers"] = layers  # written out, so a saved copy needs no inference
    with torch.device("meta"):
        state = fit_state(build_model(spec, state), state)  # prefixes, nn.Sequential names
    model = load_state_into(build_model(spec, state), state)  # with its adapters (a codebook)
    stored = stored_float_dtype(state)
    if stored != spec.weights_dtype:
        spec = copy.deepcopy(spec)
        spec.weights_dtype = stored
    return ModelBundle(model, spec, source, fmt)


def loadable_suffixes() -> tuple[str, ...]:
    """The file suffixes models are read from (`.safetensors`, state dicts and every registered loader's)."""
    return tuple(sorted({".safetensors", *TORCH_SUFFIXES, *LOADERS}))


def model_suffixes() -> tuple[str, ...]:
    """The file suffixes models are saved as (`.safetensors` and every registered saver's)."""
    return tuple(sorted({".safetensors", *SAVERS}))


def check_saveable(bundle: ModelBundle, path: str | os.PathLike) -> None:
    """Refuse (before an edit runs) to write `bundle` in a format that could not be loaded again:
    a `.safetensors` file needs an architecture the spec can rebuild (registered, or the user's own
    class); an ONNX graph that is no registered architecture goes back to `.onnx`."""
    path = Path(path)
    suffix = path.suffix.lower()
    known = model_suffixes()
    if suffix not in known:
        raise AuditorError(f"models are saved as {', '.join(known)}; got {path.name}")
    check_adapters_saveable(bundle, suffix)
    if suffix in SAVE_CHECKS:
        SAVE_CHECKS[suffix](bundle, path)
    if suffix != ".safetensors":
        return
    name = bundle.spec.arch.get("name") if isinstance(bundle.spec.arch, dict) else None
    if name == "custom":
        return  # loads again with --arch-file and --trust-code
    rebuildable = name in ARCHITECTURES
    if rebuildable:
        try:
            with torch.device("meta"):
                check_state_matches(build_model(bundle.spec, bundle.model.state_dict()), bundle.model.state_dict())
        except AuditorError:
            rebuildable = False
    if not rebuildable:
        if name == "pt2":
            raise AuditorError(f"{path.name}: this model is a torch.export program that a .safetensors file cannot "
                               "rebuild; write it as .pt2 or .onnx instead "
                               f"(e.g. --out {path.with_suffix('.pt2').name})")
        origin = "an ONNX graph" if bundle.format == "onnx" or name == "onnx" else f"architecture {name!r}"
        raise AuditorError(f"{path.name}: this model is {origin} that a .safetensors file cannot rebuild; "
                           f"write it as .onnx instead (e.g. --out {path.with_suffix('.onnx').name})")


def load_model(path: str | os.PathLike, spec: ModelSpec | dict | str | None = None,
               max_bytes: int = DEFAULT_MAX_BYTES, *, arch_file: str | os.PathLike | None = None,
               arch_class: str | None = None, trust_code: bool = False) -> ModelBundle:
    """Load a model file safely. `spec` (object, dict or path to JSON) overrides a stored one.

    `arch_file`/`arch_class` name the user's own `nn.Module` class; its code runs only with
    `trust_code=True` (see `auditor.models.custom`).
    """
    bundle = _load(Path(path), spec, max_bytes, arch_file, arch_class, trust_code)
    if bundle.spec.single_logit:
        from .custom import read_single_logit

        read_single_logit(bundle.model)
    return bundle


def _load(path: Path, spec, max_bytes: int, arch_file, arch_class, trust_code: bool) -> ModelBundle:
    if arch_file is not None or arch_class is not None:
        from .custom import load_custom_model
        return load_custom_model(path, arch_file, arch_class, spec, trust_code=trust_code, max_bytes=max_bytes)
    _check_size(path, max_bytes)
    spec = resolve_spec(spec)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state, spec = _load_safetensors(path, spec)
        fmt = "safetensors"
    elif suffix in TORCH_SUFFIXES:
        from .export_format import is_pt2_archive

        if is_pt2_archive(path):  # torch.export.save writes any name it is given: read by content
            return LOADERS[".pt2"](path, spec)
        state, spec = _load_torch_state(path, spec)
        fmt = "torch-state-dict"
    elif suffix in LOADERS:
        return LOADERS[suffix](path, spec)
    else:
        raise AuditorError(f"unknown model format {suffix or '(no suffix)'!r} for {path.name}; "
                           f"known: {', '.join(loadable_suffixes())}")
    _check_finite(state, path)
    return bundle_from_state(state, spec, str(path), fmt)


# Extra formats (e.g. ONNX) register a loader here: suffix -> (path, spec) -> ModelBundle,
# and a saver: suffix -> (bundle, path, extra_metadata) -> Path.
LOADERS: dict = {}
SAVERS: dict = {}
SAVE_CHECKS: dict = {}  # suffix -> (bundle, path) -> None, raising when that format cannot hold the bundle


@torch.no_grad()
def mark_unused_inputs(bundle: ModelBundle) -> ModelBundle:
    """The bundle with its stored preprocessing marking each raw input column the model no longer reads
    (`"unused": true`: changing that column's values changes no output, as after a data-minimisation edit),
    so data without those columns can be audited; a copy, the bundle's own spec untouched."""
    prep = bundle.spec.preprocessing
    if not prep or not prep.get("columns") or bundle.spec.input_kind != "tabular":
        return bundle
    from ..data.tabular import describe_inputs

    names, groups = describe_inputs(prep)
    model = bundle.model
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    X = torch.randn(8, len(names), generator=torch.Generator().manual_seed(0))
    was = model.training
    model.eval()
    try:
        base = model(X.to(device))
        unused = set()
        for c in prep["columns"]:
            X2 = X.clone()
            X2[:, groups[c["name"]]] = torch.randn(8, len(groups[c["name"]]),
                                                   generator=torch.Generator().manual_seed(1)) * 3
            if torch.equal(model(X2.to(device)), base):
                unused.add(c["name"])
    except Exception:  # noqa: BLE001 - a model that cannot run on such rows is saved as it is
        return bundle
    finally:
        model.train(was)
    spec = copy.deepcopy(bundle.spec)
    for c in spec.preprocessing["columns"]:
        c.pop("unused", None)
        if c["name"] in unused:
            c["unused"] = True
    return ModelBundle(bundle.model, spec, bundle.source, bundle.format, bundle.history, bundle.origin)


def save_model(bundle: ModelBundle, path: str | os.PathLike, extra_metadata: dict | None = None) -> Path:
    """Write one `.safetensors` file with the spec (and any provenance) in its metadata; raw inputs the
    model no longer reads are marked in its stored preprocessing (`mark_unused_inputs`)."""
    path = Path(path)
    bundle = mark_unused_inputs(bundle)
    check_adapters_saveable(bundle, path.suffix)
    if path.suffix.lower() in SAVERS:
        if bundle.spec.weights_dtype:  # ONNX, torch.export and skops files are written in float32
            spec = copy.deepcopy(bundle.spec)
            spec.weights_dtype = None
            bundle = ModelBundle(bundle.model, spec, bundle.source, bundle.format, bundle.history, bundle.origin)
        return SAVERS[path.suffix.lower()](bundle, path, extra_metadata)
    check_saveable(bundle, path)
    state = state_in({k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()},
                     half_dtype(bundle.spec))  # a half-precision file is written in its own precision
    meta = {SPEC_KEY: bundle.spec.to_json()}
    for k, v in (extra_metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    meta[CHECKSUMMED_KEY] = CHECKSUMMED
    meta[CHECKSUM_KEY] = file_checksum(state, meta)
    from ..atomic import replacing

    with replacing(path) as tmp:  # unpredictable O_EXCL name beside `path`: never follows a planted link
        save_file(state, str(tmp), metadata=meta)
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The string-to-string metadata of a safetensors file (spec, edit provenance)."""
    header = _read_safetensors_header(Path(path))
    return dict(header.get("__metadata__") or {})
