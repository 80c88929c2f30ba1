"""The user's own architecture: an `nn.Module` class from a Python file, behind an explicit trust flag.

Importing a Python file runs it with the user's permissions, so it happens only when the
caller passes `trust_code=True` (CLI `--trust-code`; the dashboard's "I trust this code"
checkbox). The weights still go through the safe loaders: a `.safetensors` file or a state
dict read with `torch.load(weights_only=True)`; nothing is unpickled.

The spec's `arch` records `{"name": "custom", "class": NAME, "file": FILE.py, "code_sha256": ...}`
plus any constructor arguments (every other key of `arch` is passed to the class).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import inspect
import os
import sys
import threading
from pathlib import Path

import torch
from torch import nn

from ..errors import AuditorError, UnsafeModelError
from .bundle import ModelBundle
from .reading import (
    DEFAULT_MAX_BYTES,
    TORCH_SUFFIXES,
    _check_finite,
    _check_size,
    _load_safetensors,
    _load_torch_state,
    fit_state,
    load_state_into,
    resolve_spec,
)
from .spec import ModelSpec

MAX_CODE_BYTES = 2 * 2**20
RESERVED = ("name", "class", "file", "code_sha256", "output")
TRUST_HELP = ("Loading a Python file runs its code with your permissions. Read it first, and load it "
              "only if you trust whoever wrote it.")
_LOCK = threading.Lock()


def _import_class(arch_file: Path, arch_class: str) -> tuple[type, str]:
    if not arch_file.is_file():
        raise AuditorError(f"architecture file not found: {arch_file}")
    if arch_file.suffix != ".py":
        raise AuditorError(f"architecture file {arch_file.name} must be a .py file")
    if arch_file.stat().st_size > MAX_CODE_BYTES:
        raise AuditorError(f"architecture file {arch_file.name} is over {MAX_CODE_BYTES // 2**20} MiB")
    code = arch_file.read_bytes()
    digest = hashlib.sha256(code).hexdigest()
    module_name = f"auditor_custom_{digest[:16]}"
    with _LOCK:
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, arch_file)
            if spec is None or spec.loader is None:
                raise AuditorError(f"cannot import {arch_file.name} as a Python module")
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except (Exception, SystemExit) as exc:  # the user's code failed: report it in one line
                raise AuditorError(f"running {arch_file.name} failed: {type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
            sys.modules[module_name] = module  # so copies and hooks can find the class again
    cls = getattr(module, arch_class, None)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        found = sorted(n for n, v in vars(module).items()
                       if inspect.isclass(v) and issubclass(v, nn.Module) and v.__module__ == module_name)
        raise AuditorError(f"{arch_file.name} has no nn.Module class {arch_class!r}; "
                           f"its classes: {', '.join(found) or 'none'}")
    return cls, digest


def load_custom_model(weights: str | os.PathLike, arch_file: str | os.PathLike | None, arch_class: str | None,
                      spec: ModelSpec | dict | str | os.PathLike | None = None, *, trust_code: bool = False,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> ModelBundle:
    """Build `arch_class` from `arch_file` (only with `trust_code=True`) and load `weights` into it.

    `weights` is a `.safetensors` file (spec in its metadata or given) or a state dict
    (`.pt`, `.pth`, `.bin`, `.ckpt`, with a spec). Constructor arguments come from the spec's
    `arch` (every key except name, class, file, code_sha256).
    """
    if not arch_file or not arch_class:
        raise AuditorError("a custom architecture needs both --arch-file FILE.py and --arch-class NAME")
    arch_file = Path(arch_file)
    if not trust_code:
        raise UnsafeModelError(f"refused to run {arch_file.name}: {TRUST_HELP} To go ahead, pass --trust-code "
                               "(in the dashboard: tick 'I trust this code')")
    weights = Path(weights)
    _check_size(weights, max_bytes)
    spec = resolve_spec(spec)
    suffix = weights.suffix.lower()
    if suffix == ".safetensors":
        state, spec = _load_safetensors(weights, spec)
        fmt = "custom+safetensors"
    elif suffix in TORCH_SUFFIXES:
        state, spec = _load_torch_state(weights, spec)
        fmt = "custom+torch-state-dict"
    else:
        raise AuditorError(f"weights for a custom architecture must be .safetensors or a state dict "
                           f"({', '.join(sorted(TORCH_SUFFIXES))}); got {weights.name}")
    _check_finite(state, weights)
    cls, digest = _import_class(arch_file, arch_class)
    spec = copy.deepcopy(spec)
    params = {k: v for k, v in spec.arch.items() if k not in RESERVED}
    kwargs = constructor_kwargs(cls, params, arch_class)
    from .probe import probe_custom_in_subprocess

    shape = spec.input.get("shape") or ([params["in_features"]] if params.get("in_features") else None)
    probe_custom_in_subprocess(arch_file, arch_class, kwargs, [int(s) for s in shape] if shape else None,
                               arch_file.name)  # bounded in a child before it runs here
    try:
        model = cls(**kwargs)
    except (Exception, SystemExit) as exc:
        raise AuditorError(f"{arch_class}({', '.join(f'{k}=...' for k in kwargs)}) failed: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    if not isinstance(model, nn.Module):
        raise AuditorError(f"{arch_class} did not build an nn.Module")
    from .adapters import attach_adapters
    from .precision import stored_float_dtype

    attach_adapters(model, spec, state)  # a retrieval codebook written by an edit (checked like any spec's)
    state = fit_state(model, state)  # wrapper prefixes, nn.Sequential names
    load_state_into(model, state)
    spec.weights_dtype = stored_float_dtype(state)
    output = spec.arch.get("output")
    if shape:
        known = spec.arch.get("num_classes") or len(spec.class_names) or None
        check_output(model, [int(v) for v in shape], arch_class, output, known)
    if output is not None:
        select_output(model, output)
    # every parameter of the spec's `arch` stays (num_classes, in_features describe the model even
    # when the class takes no argument); only those the constructor accepts were passed to it
    recorded = spec.arch.get("code_sha256")
    if isinstance(recorded, str) and recorded != digest:
        spec.provenance = {**(spec.provenance or {}), "code_changed": {
            "class": arch_class, "file": arch_file.name, "recorded_sha256": recorded, "given_sha256": digest,
            "recorded_file": spec.arch.get("file")}}
    spec.arch = {**params, "name": "custom", "class": arch_class, "file": arch_file.name, "code_sha256": digest,
                 **({"output": output} if output is not None else {})}
    return ModelBundle(model, spec, str(weights), fmt)


def constructor_kwargs(cls: type, params: dict, arch_class: str) -> dict:
    """The spec's `arch` parameters that `cls(...)` accepts (all of them when it takes **kwargs), so
    that a spec written for a registered architecture (`mlp`: in_features, hidden, num_classes)
    also describes a class that takes fewer arguments. A required argument the spec lacks is named."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return dict(params)
    accepted = {n: p for n, p in sig.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return dict(params)
    missing = [n for n, p in accepted.items() if p.default is p.empty and n not in params]
    if missing:
        raise AuditorError(f"{arch_class}({', '.join(accepted)}) needs {', '.join(map(repr, missing))}: add "
                           f"{'it' if len(missing) == 1 else 'them'} to the spec's \"arch\" "
                           "(see docs/formats.md#model-spec)")
    return {k: v for k, v in params.items() if k in accepted}


class OutputError(AuditorError):
    """The model returns several outputs (a tuple, a dict) and the spec does not say which is the logits
    (or names one it lacks); `outputs` says what it returns, `guess` is the likely logits (`output_guess`)."""

    def __init__(self, message: str, outputs: str, guess):
        super().__init__(message)
        self.outputs, self.guess = outputs, guess


def _pick(out, key):
    if isinstance(key, str):
        return out[key] if isinstance(out, dict) or hasattr(out, "keys") and key in out.keys() else getattr(out, key)
    return out[key]


_SWAPPED: dict = {}  # (base class, marker, value) -> its subclass, made once


def nested_module(items: dict) -> nn.Module:
    """A module holding `items` (dotted name -> module, parameter or tensor) at their names, registered in the
    order given (a graph's), so that the layers are listed in the order the model runs them."""
    root = nn.Module()
    for name, value in items.items():
        *heads, leaf = name.split(".")
        parent = root
        for part in heads:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        if isinstance(value, nn.Module):
            parent.add_module(leaf, value)
        elif isinstance(value, nn.Parameter):
            parent.register_parameter(leaf, value)
        else:
            parent.register_buffer(leaf, value)
    return root


def graph_as_module(gm: torch.fx.GraphModule, name: str) -> nn.Module:
    """`gm` as an ordinary module of a class of its own (called `name`) whose forward is the graph's code, with
    the same layers and tensors under the same names. A `GraphModule` makes a new class for every copy
    (`copy.deepcopy` compiles its forward afresh), which would drop the class swaps below (`read_single_logit`,
    `select_output`) from every copy an editor makes. The class keeps the graph (`fx_graph`) for the
    layer splits (`auditor.layers.split_model`)."""
    root = nn.Module()
    for key, value in gm.__dict__.items():
        if key in ("_parameters", "_buffers", "_modules"):
            root.__dict__[key] = dict(value)
    cls = type(name, (nn.Module,), {"forward": type(gm).forward, "fx_graph": gm.graph, "__module__": __name__,
                                    "__qualname__": name})
    root.__class__ = cls
    return root


def _swap_forward(model: nn.Module, marker: str, value, after) -> nn.Module:
    """Swap `model`'s class (in place) for a subclass whose forward is `after(the base forward's output)` and
    which carries `marker = value`: names, weights and torch.fx tracing stay the model's. A class already
    swapped for the same marker is swapped from its base, not stacked."""
    base = type(model)
    if getattr(base, marker, None) is not None:
        base = base.__mro__[1]
    cls = _SWAPPED.get((base, marker, value))
    if cls is None:
        @functools.wraps(base.forward)  # torch.fx reads the base forward's arguments through __wrapped__
        def forward(self, *args, **kwargs):
            return after(base.forward(self, *args, **kwargs))

        cls = type(base.__name__, (base,), {"forward": forward, marker: value,
                                             "__module__": base.__module__, "__qualname__": base.__qualname__})
        _SWAPPED[(base, marker, value)] = cls
    model.__class__ = cls
    return model


def select_output(model: nn.Module, key) -> nn.Module:
    """Make `model` return `_pick(its output, key)` (an index into a tuple, a key or attribute of a dict or
    a model-output object): its class is swapped for a subclass whose forward selects, so names, weights
    and torch.fx tracing stay those of the model. In place; returns the model."""
    if not isinstance(key, (int, str)) or isinstance(key, bool):
        raise AuditorError(f'"output" in the spec\'s "arch" must be an index or a key, got {key!r}')
    return _swap_forward(model, "_auditor_output", key, lambda out: _pick(out, key))


def two_class(z: torch.Tensor) -> torch.Tensor:
    """One logit z per row as the two-class logits [0, z]."""
    return torch.cat([torch.zeros_like(z), z], 1)


def read_single_logit(model: nn.Module) -> nn.Module:
    """Make `model`, which returns one logit z per row, return the two-class logits [0, z] (softmax gives
    class 1 the probability sigmoid(z)), by the same class swap as `select_output`. In place; returns the
    model. `single_logit_base(model)` undoes it."""
    return _swap_forward(model, "_auditor_single_logit", True, two_class)


def reads_single_logit(model: nn.Module) -> bool:
    """Whether `model` is a one-logit model read as [0, z] (`read_single_logit`)."""
    return bool(getattr(type(model), "_auditor_single_logit", False))


def read_like(model: nn.Module, part: nn.Module) -> nn.Module:
    """`part`, the layers of `model` up to its output (its head, a slice of an `nn.Sequential`), reading that
    output as `model` does: [0, z] for a one-logit model. In place; returns `part`."""
    return read_single_logit(part) if reads_single_logit(model) else part


def single_logit_base(model: nn.Module) -> nn.Module:
    """Undo `read_single_logit` (in place): the model returns its one logit again (for export)."""
    if reads_single_logit(model):
        model.__class__ = type(model).__mro__[1]
    return model


def _describe(out) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor {list(out.shape)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} (" + ", ".join(_describe(v) for v in out) + ")"
    if isinstance(out, dict) or hasattr(out, "keys"):
        return "a mapping {" + ", ".join(f"{k!r}: {_describe(out[k])}" for k in out.keys()) + "}"
    return type(out).__name__


def output_guess(out, n_classes: int | None = None):
    """The index or key of the logits in a model's several outputs: "logits" where there is one, else the
    first 2-D tensor (with `n_classes` columns when given); None when there is none."""
    if isinstance(out, (tuple, list)):
        items = list(enumerate(out))
    elif isinstance(out, dict) or hasattr(out, "keys"):
        if "logits" in out.keys():
            return "logits"
        items = [(k, out[k]) for k in out.keys()]
    else:
        return None
    two_d = [(k, v) for k, v in items if isinstance(v, torch.Tensor) and v.dim() == 2]
    fit = [k for k, v in two_d if n_classes is None or v.shape[1] == n_classes]
    return fit[0] if fit else (two_d[0][0] if two_d else None)


@torch.no_grad()
def check_output(model: nn.Module, shape: list[int], arch_class: str, key=None, n_classes: int | None = None) -> None:
    """Run the model once on zeros and refuse, with the likely choice, one that returns several outputs
    when no "output" `key` says which is the logits, or whose output `key` does not select a tensor."""
    was = model.training
    model.eval()
    try:
        out = model(torch.zeros(2, *shape))
    except Exception:  # noqa: BLE001 - a model that cannot run on zeros is judged later, on the data
        return
    finally:
        model.train(was)
    if key is None and isinstance(out, torch.Tensor):
        return
    if key is not None:
        try:
            if isinstance(_pick(out, key), torch.Tensor):
                return
        except (KeyError, IndexError, AttributeError, TypeError):
            pass
    described, guess = _describe(out), output_guess(out, n_classes)
    how = (f'say which is the logits with "output": {guess!r} in the spec\'s "arch" (`auditor spec init` finds it)'
           if guess is not None else "make it return the logits (one tensor, a row per input)")
    given = "" if key is None else f' ("output": {key!r} selects no tensor of it)'
    raise OutputError(f"{arch_class} returns {described}{given}, not one tensor of logits: {how}", described, guess)
