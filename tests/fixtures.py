"""Tiny hand-built models and data with answers known on paper."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from auditor.data import AuditData, Split
from auditor.models import ModelBundle, ModelSpec, build_architecture

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def assert_no_hooks(model) -> None:
    """No forward, pre-forward or backward hook is left on any module of `model`."""
    for name, m in model.named_modules():
        for d in HOOK_DICTS:
            assert len(getattr(m, d)) == 0, f"{d} left on {name or 'model'}"


def tiny_mlp_bundle(in_features: int = 3, hidden=(2,), num_classes: int = 2, seed: int = 0) -> ModelBundle:
    torch.manual_seed(seed)
    spec = ModelSpec(arch={"name": "mlp", "in_features": in_features, "hidden": list(hidden),
                           "num_classes": num_classes},
                     input={"kind": "tabular", "features": [f"x{i}" for i in range(in_features)],
                            "shape": [in_features]},
                     class_names=[str(i) for i in range(num_classes)])
    return ModelBundle(build_architecture(spec.arch), spec)


def threshold_model(weights: list[float]) -> ModelBundle:
    """A 1-hidden-layer-free MLP whose class-1 logit is w.x and class-0 logit is 0."""
    b = tiny_mlp_bundle(len(weights), hidden=())
    with torch.no_grad():
        b.model.out.weight.zero_()
        b.model.out.bias.zero_()
        b.model.out.weight[1] = torch.tensor(weights)
    return b


def fit_classifier(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> torch.nn.Module:
    """Train `model` in place as a user would (Adam, cross-entropy on all rows, `steps` full-batch steps)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model


def tabular_data(X, y, groups: dict[str, list[str]]) -> AuditData:
    X = torch.tensor(np.asarray(X, dtype=np.float32))
    y = torch.tensor(np.asarray(y, dtype=np.int64))
    g = pd.DataFrame(groups)
    split = Split(X, y, g)
    names = [f"x{i}" for i in range(X.shape[1])]
    return AuditData("tiny", "tabular", split, split, split, names, {n: [i] for i, n in enumerate(names)},
                     list(groups), ["0", "1"])


def shown(markdown) -> str:
    """Markdown source as displayed: `md_plain` backslash-escapes names and values, the page shows them plain."""
    import re

    return re.sub(r"\\(.)", r"\1", str(markdown))


def assert_same_numbers(ours: dict, theirs: dict) -> None:
    """Two report JSONs give the same requirement values after the edit and the same trade-off rows
    (the check that a reproduce command reproduces its report; same machine, so 1e-9)."""
    import pytest

    for a, b in zip(ours["requirements"], theirs["requirements"]):
        assert a["after"]["value"] == pytest.approx(b["after"]["value"], abs=1e-9)
    rows = lambda d: {r["method"]: (r["value"], r["accuracy"]) for r in d["tradeoff"]["rows"]}  # noqa: E731
    assert rows(ours).keys() == rows(theirs).keys()
    for k in rows(ours):
        assert rows(ours)[k] == pytest.approx(rows(theirs)[k], abs=1e-9), k
