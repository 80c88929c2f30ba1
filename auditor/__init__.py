"""Audit and edit PyTorch models against requirements.

    >>> from auditor import load_model, load_data, evaluate
    >>> bundle = load_model("sample_models/adult_mlp.safetensors")
    >>> data = load_data("adult", spec=bundle.spec)
    >>> evaluate(bundle, data, ["demographic_parity <= 0.05"]).passed
    False

The public names are imported on first use (PEP 562), so `import auditor`, `import auditor.cli`
and `import auditor.store` do not load torch, pandas or scikit-learn.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

from .errors import AuditorError, UnsafeModelError

# public name -> the submodule that defines it (imported on first access)
_LAZY = {
    "AuditData": "data", "TabularSchema": "data", "load_data": "data",
    "Evaluation": "evaluate", "check_compatible": "evaluate", "evaluate": "evaluate",
    "ModelBundle": "models", "ModelSpec": "models", "load_model": "models", "save_model": "models",
    "weights_sha256": "models",
    "METRICS": "requirements", "Requirement": "requirements", "parse_requirement": "requirements",
}

__all__ = ["METRICS", "AuditData", "AuditorError", "Evaluation", "ModelBundle", "ModelSpec", "Requirement",
           "TabularSchema", "UnsafeModelError", "check_compatible", "evaluate", "load_data", "load_model",
           "parse_requirement", "save_model", "weights_sha256"]

if TYPE_CHECKING:
    from .data import AuditData, TabularSchema, load_data
    from .evaluate import Evaluation, check_compatible, evaluate
    from .models import ModelBundle, ModelSpec, load_model, save_model, weights_sha256
    from .requirements import METRICS, Requirement, parse_requirement


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """`auditor.evaluate` is the function, as `from auditor import evaluate` promises, even after the
    submodule of the same name is imported (the import system then sets the package's attribute to
    the submodule; `sys.modules["auditor.evaluate"]` still holds the module)."""

    def __setattr__(self, name, value):
        if name == "evaluate" and isinstance(value, types.ModuleType):
            value = value.evaluate
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
