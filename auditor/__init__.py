"""Audit and edit PyTorch models against requirements.

    >>> from auditor import load_model, load_data, evaluate
    >>> bundle = load_model("sample_models/adult_mlp.safetensors")
    >>> data = load_data("adult", spec=bundle.spec)
    >>> evaluate(bundle, data, ["demographic_parity <= 0.05"]).passed
    False
"""
from .data import AuditData, TabularSchema, load_data
from .errors import AuditorError, UnsafeModelError
from .evaluate import Evaluation, check_compatible, evaluate
from .models import ModelBundle, ModelSpec, load_model, save_model, weights_sha256
from .requirements import METRICS, Requirement, parse_requirement

__all__ = ["METRICS", "AuditData", "AuditorError", "Evaluation", "ModelBundle", "ModelSpec", "Requirement",
           "TabularSchema", "UnsafeModelError", "check_compatible", "evaluate", "load_data", "load_model",
           "parse_requirement", "save_model", "weights_sha256"]
